//! Compiled components on disk, keyed by the component's hash and the engine's
//! compatibility, so a restart with unchanged plugins loads each in a fraction of a
//! millisecond instead of compiling it for hundreds.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct ComponentCache {
    dir: Option<PathBuf>,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cached,
}

impl ComponentCache {
    /// A cache in `dir` (created when first written); `None` compiles every time.
    pub fn new(dir: Option<PathBuf>) -> ComponentCache {
        ComponentCache { dir }
    }

    pub fn load(&self, engine: &Engine, bytes: &[u8]) -> Result<(Component, Origin)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, bytes)?, Origin::Compiled));
        };
        let path = dir.join(format!("{}.cwasm", cache_key(engine, bytes)));
        // Read into memory rather than mapped: a file changed under a mapping would crash
        // the host (SIGBUS), a changed file read once is merely refused.
        if let Ok(serialized) = std::fs::read(&path) {
            // SAFETY: only this host writes files named by this key (a hash of the
            // component and of the engine's configuration), atomically, into its cache;
            // wasmtime checks the header and the engine compatibility of what it reads.
            match unsafe { Component::deserialize(engine, &serialized) } {
                Ok(component) => return Ok((component, Origin::Cached)),
                Err(error) => tracing::warn!("ignoring unreadable cache entry {}: {error:#}", path.display()),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(error) = store(dir, &path, &component) {
            tracing::warn!("cannot cache the compiled component in {}: {error:#}", dir.display());
        }
        Ok((component, Origin::Compiled))
    }
}

fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let mut engine_hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut engine_hasher);
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{hex}-{:016x}", engine_hasher.finish())
}

fn store(dir: &Path, path: &Path, component: &Component) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let serialized = component.serialize()?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(&serialized)?;
    file.as_file().sync_all()?;
    file.persist(path).context("cannot move the cache entry into place")?;
    Ok(())
}
