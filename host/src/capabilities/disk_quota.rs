//! `limits.disk_mb`: the space a plugin may take in its data directory. Every write, new
//! file, directory and link made through `wasi:filesystem` is counted against it before it
//! reaches the disk; past it the write fails in the plugin as on a full disk
//! (`insufficient-space`, "No space left on device"), the host logs a warning naming the
//! plugin and the limit, and `telemetry_plugin_disk_refused_total` counts it.
//!
//! Counting is conservative: an overwrite counts as growth, and a deleted, truncated or
//! replaced file gives nothing back at once. Before refusing, the host measures the
//! directory again, which gives back what was freed: at once if the plugin has deleted,
//! truncated or renamed anything since the last measure, otherwise at most every second (so a
//! plugin cannot make the host walk its tree on every write). A measure counts the blocks each entry holds and at least one block per
//! entry, so a plugin cannot exhaust inodes with empty files either.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::bindings::filesystem::types::{self, Descriptor, DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags};
use wasmtime_wasi::p2::{DynOutputStream, OutputStream, Pollable, StreamError, StreamResult};

/// What a new file, directory or link costs: the block it takes at least.
const ENTRY_BYTES: u64 = 4096;
/// The shortest time between two measures of the directory when nothing was freed.
const REMEASURE_EVERY: Duration = Duration::from_secs(1);
/// `ENOSPC` (28 on Linux and macOS): wasmtime-wasi reports it to the guest as
/// `insufficient-space`, which every guest library treats as a full disk.
const NO_SPACE: i32 = 28;
/// The `wasi:filesystem/types` instance `wasmtime_wasi::p2::add_to_linker_async` defines.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// One plugin's allowance, shared by all its instances.
#[derive(Debug)]
pub struct DiskQuota {
    plugin: String,
    dir: PathBuf,
    limit_bytes: u64,
    used_bytes: AtomicU64,
    refused: AtomicU64,
    /// Something may have been freed since the last measure.
    freed: AtomicBool,
    last_measured: Mutex<Instant>,
}

impl DiskQuota {
    /// The allowance of `plugin` in `dir`, starting from what the directory holds now.
    pub fn measure(plugin: &str, dir: &Path, limit_mb: u64) -> std::io::Result<DiskQuota> {
        Ok(DiskQuota {
            plugin: plugin.to_string(),
            dir: dir.to_path_buf(),
            limit_bytes: limit_mb.saturating_mul(1 << 20),
            used_bytes: AtomicU64::new(directory_bytes(dir)?),
            refused: AtomicU64::new(0),
            freed: AtomicBool::new(false),
            last_measured: Mutex::new(Instant::now()),
        })
    }

    /// Bytes counted as in use.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Writes refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the allowance, or refuses them (a warning at the first refusal and
    /// at every power of two after it).
    fn take(&self, bytes: u64) -> bool {
        if self.try_take(bytes) || (self.remeasure() && self.try_take(bytes)) {
            return true;
        }
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            tracing::warn!(
                plugin = %self.plugin,
                "a write of {bytes} bytes to its data directory {} was refused: {} bytes of limits.disk_mb = {} MiB in use ({refused} refused so far)",
                self.dir.display(),
                self.used_bytes(),
                self.limit_bytes >> 20,
            );
        }
        false
    }

    fn try_take(&self, bytes: u64) -> bool {
        let limit = self.limit_bytes;
        self.used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(bytes).filter(|total| *total <= limit))
            .is_ok()
    }

    /// Gives back what a failed operation had taken.
    fn give_back(&self, bytes: u64) {
        let _ = self.used_bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(bytes)));
    }

    /// The plugin deleted, truncated or replaced something: the next refusal measures first.
    fn note_freed(&self) {
        self.freed.store(true, Ordering::Release);
    }

    /// Measures the directory again unless nothing was freed since a moment ago; true if it
    /// was measured.
    fn remeasure(&self) -> bool {
        let Ok(mut last) = self.last_measured.lock() else { return false };
        if !self.freed.swap(false, Ordering::AcqRel) && last.elapsed() < REMEASURE_EVERY {
            return false;
        }
        *last = Instant::now();
        match directory_bytes(&self.dir) {
            Ok(bytes) => {
                self.used_bytes.store(bytes, Ordering::Release);
                true
            }
            Err(error) => {
                tracing::warn!(plugin = %self.plugin, "cannot measure its data directory {}: {error}", self.dir.display());
                false
            }
        }
    }
}

/// The space the entries under `dir` take: their blocks, at least one block each. Links are
/// not followed.
fn directory_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let metadata = entry.path().symlink_metadata()?;
            total = total.saturating_add((metadata.blocks() * 512).max(ENTRY_BYTES));
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// A store whose plugin may have a disk allowance.
pub trait DiskQuotaView: WasiFilesystemView {
    /// None when the plugin has no writable data directory.
    fn disk_quota(&self) -> Option<&Arc<DiskQuota>>;
}

fn no_space() -> std::io::Error {
    std::io::Error::from_raw_os_error(NO_SPACE)
}

/// A file's output stream whose writes are counted first.
struct CountedStream {
    inner: DynOutputStream,
    quota: Arc<DiskQuota>,
}

impl CountedStream {
    fn take(&self, bytes: usize) -> StreamResult<()> {
        match self.quota.take(bytes as u64) {
            true => Ok(()),
            false => Err(StreamError::LastOperationFailed(no_space().into())),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CountedStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CountedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(bytes.len())?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(bytes.len())?;
        self.inner.blocking_write_and_flush(bytes).await
    }

    fn write_zeroes(&mut self, count: usize) -> StreamResult<()> {
        self.take(count)?;
        self.inner.write_zeroes(count)
    }
}

type FsOutcome<T> = wasmtime::Result<(Result<T, ErrorCode>,)>;

/// What a wasmtime-wasi filesystem call came to, as the guest receives it.
fn outcome<T>(view: &mut impl types::Host, result: wasmtime_wasi::p2::FsResult<T>) -> FsOutcome<T> {
    Ok((match result {
        Ok(value) => Ok(value),
        Err(error) => Err(view.convert_error_code(error)?),
    },))
}

/// Replaces wasmtime-wasi's definitions of the `wasi:filesystem/types` functions that take
/// space with counted ones; everything else stays as wasmtime-wasi defines it. Must follow
/// `wasmtime_wasi::p2::add_to_linker_async`.
pub fn add_to_linker<T: DiskQuotaView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap_async("[method]descriptor.write", |mut store, (fd, buffer, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
        Box::new(async move {
            let charged = match Charged::take(store.data(), buffer.len() as u64) {
                Ok(charged) => charged,
                Err(refused) => return Ok((Err(refused),)),
            };
            let mut view = store.data_mut().filesystem();
            let result = HostDescriptor::write(&mut view, fd, buffer, offset).await;
            charged.settle(result.is_ok());
            outcome(&mut view, result)
        })
    })?;
    types.func_wrap_async("[method]descriptor.write-via-stream", |mut store, (fd, offset): (Resource<Descriptor>, u64)| {
        Box::new(async move {
            let mut view = store.data_mut().filesystem();
            let result = HostDescriptor::write_via_stream(&mut view, fd, offset);
            let result = count_stream(store.data_mut(), result);
            outcome(&mut store.data_mut().filesystem(), result)
        })
    })?;
    types.func_wrap_async("[method]descriptor.append-via-stream", |mut store, (fd,): (Resource<Descriptor>,)| {
        Box::new(async move {
            let mut view = store.data_mut().filesystem();
            let result = HostDescriptor::append_via_stream(&mut view, fd);
            let result = count_stream(store.data_mut(), result);
            outcome(&mut store.data_mut().filesystem(), result)
        })
    })?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store, (fd, path_flags, path, open_flags, flags): (Resource<Descriptor>, PathFlags, String, OpenFlags, DescriptorFlags)| {
            Box::new(async move {
                if open_flags.contains(OpenFlags::TRUNCATE) {
                    note_freed(store.data());
                }
                let entry = if open_flags.contains(OpenFlags::CREATE) { ENTRY_BYTES } else { 0 };
                let charged = match Charged::take(store.data(), entry) {
                    Ok(charged) => charged,
                    Err(refused) => return Ok((Err(refused),)),
                };
                let mut view = store.data_mut().filesystem();
                let result = HostDescriptor::open_at(&mut view, fd, path_flags, path, open_flags, flags).await;
                charged.settle(result.is_ok());
                outcome(&mut store.data_mut().filesystem(), result)
            })
        },
    )?;
    types.func_wrap_async("[method]descriptor.create-directory-at", |mut store, (fd, path): (Resource<Descriptor>, String)| {
        Box::new(async move {
            let charged = match Charged::take(store.data(), ENTRY_BYTES) {
                Ok(charged) => charged,
                Err(refused) => return Ok((Err(refused),)),
            };
            let mut view = store.data_mut().filesystem();
            let result = HostDescriptor::create_directory_at(&mut view, fd, path).await;
            charged.settle(result.is_ok());
            outcome(&mut store.data_mut().filesystem(), result)
        })
    })?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store, (fd, old_path, new_path): (Resource<Descriptor>, String, String)| {
            Box::new(async move {
                let charged = match Charged::take(store.data(), ENTRY_BYTES) {
                    Ok(charged) => charged,
                    Err(refused) => return Ok((Err(refused),)),
                };
                let mut view = store.data_mut().filesystem();
                let result = HostDescriptor::symlink_at(&mut view, fd, old_path, new_path).await;
                charged.settle(result.is_ok());
                outcome(&mut store.data_mut().filesystem(), result)
            })
        },
    )?;
    types.func_wrap_async("[method]descriptor.set-size", |mut store, (fd, size): (Resource<Descriptor>, u64)| {
        Box::new(async move {
            // Growing leaves a hole that takes no blocks; shrinking frees them.
            note_freed(store.data());
            let mut view = store.data_mut().filesystem();
            let result = HostDescriptor::set_size(&mut view, fd, size).await;
            outcome(&mut view, result)
        })
    })?;
    types.func_wrap_async("[method]descriptor.unlink-file-at", |mut store, (fd, path): (Resource<Descriptor>, String)| {
        Box::new(async move {
            note_freed(store.data());
            let mut view = store.data_mut().filesystem();
            let result = HostDescriptor::unlink_file_at(&mut view, fd, path).await;
            outcome(&mut view, result)
        })
    })?;
    types.func_wrap_async("[method]descriptor.remove-directory-at", |mut store, (fd, path): (Resource<Descriptor>, String)| {
        Box::new(async move {
            note_freed(store.data());
            let mut view = store.data_mut().filesystem();
            let result = HostDescriptor::remove_directory_at(&mut view, fd, path).await;
            outcome(&mut view, result)
        })
    })?;
    types.func_wrap_async(
        "[method]descriptor.rename-at",
        |mut store, (fd, old_path, new_fd, new_path): (Resource<Descriptor>, String, Resource<Descriptor>, String)| {
            Box::new(async move {
                // A rename over an existing file frees it.
                note_freed(store.data());
                let mut view = store.data_mut().filesystem();
                let result = HostDescriptor::rename_at(&mut view, fd, old_path, new_fd, new_path).await;
                outcome(&mut view, result)
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn note_freed<T: DiskQuotaView>(state: &T) {
    if let Some(quota) = state.disk_quota() {
        quota.note_freed();
    }
}

/// Bytes taken from a plugin's allowance for one operation, given back if it fails.
struct Charged {
    quota: Option<Arc<DiskQuota>>,
    bytes: u64,
}

impl Charged {
    /// Takes `bytes` from the allowance of `state`'s plugin (nothing when it has none), or
    /// refuses them as a full disk would.
    fn take<T: DiskQuotaView>(state: &T, bytes: u64) -> Result<Charged, ErrorCode> {
        let quota = state.disk_quota().filter(|_| bytes > 0).cloned();
        match &quota {
            Some(quota) if !quota.take(bytes) => Err(ErrorCode::InsufficientSpace),
            _ => Ok(Charged { quota, bytes }),
        }
    }

    fn settle(self, succeeded: bool) {
        if let (Some(quota), false) = (self.quota, succeeded) {
            quota.give_back(self.bytes);
        }
    }
}

/// Puts a new file stream behind the plugin's allowance.
fn count_stream<T: DiskQuotaView>(
    state: &mut T,
    result: wasmtime_wasi::p2::FsResult<Resource<DynOutputStream>>,
) -> wasmtime_wasi::p2::FsResult<Resource<DynOutputStream>> {
    let Some(quota) = state.disk_quota().cloned() else { return result };
    let stream = result?;
    let view = state.filesystem();
    let inner = view.table.delete(stream)?;
    let counted: DynOutputStream = Box::new(CountedStream { inner, quota });
    Ok(view.table.push(counted)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deletion_makes_the_next_refusal_measure_again_and_gives_its_space_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), vec![1u8; 64 << 10]).unwrap();
        let quota = DiskQuota::measure("p", dir.path(), 1).unwrap();
        assert!(quota.used_bytes() >= 64 << 10, "{}", quota.used_bytes());
        assert!(quota.take(900 << 10));
        // Past the limit while the last measure is fresh: refused without walking the tree.
        assert!(!quota.take(200 << 10));
        assert_eq!(quota.refused(), 1);
        std::fs::remove_file(dir.path().join("old")).unwrap();
        quota.note_freed();
        // The measure finds the file gone: the write fits.
        assert!(quota.take(200 << 10));
        quota.give_back(200 << 10);
        assert!(quota.used_bytes() < 4096, "{}", quota.used_bytes());
    }

    #[test]
    fn empty_files_count_a_block_each() {
        let dir = tempfile::tempdir().unwrap();
        for index in 0..10 {
            std::fs::write(dir.path().join(index.to_string()), b"").unwrap();
        }
        assert_eq!(directory_bytes(dir.path()).unwrap(), 10 * ENTRY_BYTES);
    }
}
