//! The filesystem a plugin sees: WASI p2 with its granted data directory preopened as
//! `/data` and nothing else: no environment, no arguments, no sockets, no stdin; stderr
//! through the host's logger (`stderr`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime_wasi::{FsPerms, WasiCtx};

use crate::plugins::manifest::{Access, DataDirGrant};

/// Where the granted directory appears inside the plugin.
pub const GUEST_DATA_DIR: &str = "/data";

/// The host path of a data directory grant, created if it does not exist.
pub fn prepare_data_dir(grant: &DataDirGrant, data_root: &Path) -> Result<PathBuf> {
    let path = if grant.path.is_absolute() { grant.path.clone() } else { data_root.join(&grant.path) };
    if grant.access == Access::ReadWrite {
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create data directory {}", path.display()))?;
    }
    anyhow::ensure!(path.is_dir(), "data directory {} does not exist", path.display());
    Ok(path)
}

/// The WASI context of one plugin instance.
/// The plugin's stderr goes to `stderr` (the host's logger), never to the host's own.
pub fn wasi_context(data_dir: Option<(&Path, Access)>, stderr: super::stderr::PluginStderr) -> Result<WasiCtx> {
    let mut builder = WasiCtx::builder();
    builder.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    // Plugin calls run on their own threads: file I/O may block there.
    builder.stderr(stderr).allow_blocking_current_thread(true);
    if let Some((path, access)) = data_dir {
        let perms = match access {
            Access::ReadOnly => FsPerms::ReadOnly,
            Access::ReadWrite => FsPerms::ReadWrite,
        };
        builder
            .preopened_dir(path, GUEST_DATA_DIR, perms)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot open data directory {}", path.display()))?;
    }
    Ok(builder.build())
}
