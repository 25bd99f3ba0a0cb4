//! telemetry-host: collects telemetry samples of a distributed training run into a
//! history of named series and fans every update out to connectors that run as
//! sandboxed WebAssembly components.
//!
//! - [`ingest`]: samples in, transforms, moving averages;
//! - [`history`]: the durable columnar history and its downsampled reads;
//! - [`callbacks`]: the original node's callbacks (`SaveBest`);
//! - [`plugins`]: manifests, loading, instances, runners;
//! - [`capabilities`]: what a plugin may be granted, one module each;
//! - [`node`]: the `run` command tying them together;
//! - [`metrics`]: the host's own figures for Prometheus;
//! - [`admin`]: the operator's routes (reloading the plugin directory);
//! - [`http_error`]: the error answer of every HTTP route;
//! - [`isolation`]: one plugin alone, for `plugin test` and the test kit.

pub mod admin;
pub mod bindings;
pub mod callbacks;
pub mod capabilities;
pub mod config;
pub mod history;
pub mod http_error;
pub mod ingest;
pub mod isolation;
pub mod metrics;
pub mod node;
pub mod plugins;
pub mod scaffold;
