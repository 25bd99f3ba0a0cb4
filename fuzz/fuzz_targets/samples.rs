//! Any bytes, as an NDJSON line or as a parsed sample, through the default transforms:
//! never a panic, and a sample is either stored as one row or refused.

#![no_main]

use libfuzzer_sys::fuzz_target;
use telemetry_host::callbacks::Callbacks;
use telemetry_host::config::HostConfig;
use telemetry_host::history::History;
use telemetry_host::ingest::transforms::series_names;
use telemetry_host::ingest::{Ingest, Outcome};

fuzz_target!(|data: &[u8]| {
    let config = HostConfig::builtin_default();
    let history = History::new(series_names(&config.telemetry.transforms)).shared();
    let mut ingest = Ingest::new(&config.telemetry, history.clone(), Callbacks::none());
    let outcome = ingest.accept_line(data, "fuzz");
    ingest.commit().expect("an in-memory history commits");
    let rows = history.read().expect("history lock").row_count();
    match outcome {
        Outcome::Accepted { .. } => assert_eq!(rows, 1),
        Outcome::Refused(_) => assert_eq!(rows, 0),
    }
});
