//! `run --watch`: the plugin directory is looked at a few times a second and reloaded once
//! it has settled. Editors and `cargo build` write a file in several steps (truncate,
//! write, rename), so a change is acted on only after the directory has looked the same
//! for `SETTLE`; the reload then compares content hashes, so a file only touched changes
//! nothing. Polling file sizes and times costs a few `stat`s per plugin and works the same
//! on every file system (network mounts and containers included).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::PluginSet;
use super::manifest::{MANIFEST_FILE, Manifest};

/// How often the directory is looked at.
const POLL: Duration = Duration::from_millis(200);
/// How long it must look the same before a reload.
const SETTLE: Duration = Duration::from_millis(400);

/// Size and modification time of every file that makes a plugin: what each folder holds
/// (one level) and the component its manifest names, wherever that is.
type Signature = BTreeMap<PathBuf, (u64, Option<SystemTime>)>;

fn signature(dir: &Path) -> Signature {
    let mut files = Signature::new();
    let mut stat = |path: PathBuf| {
        if let Ok(meta) = std::fs::metadata(&path) {
            files.insert(path, (meta.len(), meta.modified().ok()));
        }
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return Signature::new() };
    for folder in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).filter(|path| path.is_dir()) {
        if let Ok(inside) = std::fs::read_dir(&folder) {
            inside.filter_map(|entry| entry.ok().map(|entry| entry.path())).filter(|path| path.is_file()).for_each(&mut stat);
        }
        if let Ok(manifest) = Manifest::load(&folder.join(MANIFEST_FILE)) {
            stat(manifest.component);
        }
    }
    files
}

/// Watches `dir` on a thread of its own until the set stops, reloading it after changes.
pub fn spawn(set: Arc<PluginSet>, dir: PathBuf) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("plugin-watch".into()).spawn(move || {
        tracing::info!("watching {} for plugin changes", dir.display());
        let mut seen = signature(&dir);
        let mut changed_at: Option<Instant> = None;
        while !set.is_closed() {
            std::thread::sleep(POLL);
            let now = signature(&dir);
            if now != seen {
                seen = now;
                changed_at = Some(Instant::now());
                continue;
            }
            if changed_at.is_some_and(|at| at.elapsed() >= SETTLE) {
                changed_at = None;
                if let Err(error) = set.reload() {
                    tracing::error!("reloading {}: {error:#}", dir.display());
                }
            }
        }
    })
}
