//! Reloading the plugin directory in a running host: a new folder is loaded and started
//! from its cursor, a changed manifest or component is compiled while the old version
//! runs and then swapped for it between two updates, a removed folder is stopped (its
//! cursor kept). What changed is decided by the content's hash, never by file times.
//!
//! A swap keeps every row exactly once: the old version is stopped (it receives every
//! row committed so far, then `stop`, and its cursor is synced), the new one starts at
//! that cursor. A new version that fails to compile, to validate against its manifest or
//! to `start` leaves the old one running (started again at the same cursor).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::manifest::{self, Discovered, Manifest};
use super::runner::PluginRunner;
use super::{Admitted, Member, PluginSet, admit, prefix_of, set_prefix};

/// The hash of a plugin's manifest and component, as they were read.
pub type Fingerprint = [u8; 32];

/// The hash of `manifest`'s file and of its component file.
pub fn fingerprint(manifest: &Manifest) -> Result<Fingerprint> {
    let mut hash = Sha256::new();
    for path in [&manifest.source, &manifest.component] {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Ok(hash.finalize().into())
}

/// What one reload did, as the log, `POST /v1/plugins/reload` and
/// `telemetry-host plugin reload` report it.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    pub failed: Vec<ReloadFailure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadFailure {
    /// The plugin's name, when its manifest says it.
    pub plugin: Option<String>,
    pub folder: PathBuf,
    pub error: String,
    /// The version that ran before runs on.
    pub previous_version_kept: bool,
}

/// A reload's bookkeeping: one at a time, what each plugin's reloads came to, and the
/// versions that failed to compile (not compiled again until they change).
#[derive(Default)]
pub struct ReloadState {
    one_at_a_time: Mutex<()>,
    outcomes: Mutex<BTreeMap<(String, &'static str), u64>>,
    broken: Mutex<HashMap<PathBuf, (Fingerprint, String)>>,
}

impl ReloadState {
    fn count(&self, plugin: &str, outcome: &'static str) {
        *self.outcomes.lock().expect("reload lock").entry((plugin.to_string(), outcome)).or_default() += 1;
    }

    /// `(plugin, outcome)` -> reloads, outcome one of added, replaced, removed, failed.
    pub fn outcomes(&self) -> Vec<((String, &'static str), u64)> {
        self.outcomes.lock().expect("reload lock").iter().map(|(key, count)| (key.clone(), *count)).collect()
    }
}

/// A plugin to compile in a reload: new, or the next version of a running one.
struct Candidate {
    admitted: Admitted,
    fingerprint: Fingerprint,
    /// The running plugin it replaces (same folder, same name).
    replaces: bool,
}

/// What the reload knows of a running plugin.
struct Current {
    folder: Option<PathBuf>,
    name: String,
    fingerprint: Option<super::Fingerprint>,
    prefix: Option<String>,
}

impl PluginSet {
    /// Brings the running plugins in line with the plugin directory; returns what changed.
    /// Reloads run one at a time; ingest, HTTP and the other plugins go on meanwhile.
    pub fn reload(&self) -> Result<ReloadReport> {
        let _one_at_a_time = self.reload.one_at_a_time.lock().expect("reload lock");
        let sources = self.sources()?;
        let mut report = ReloadReport::default();
        if self.is_closed() {
            return Ok(report);
        }
        let found = manifest::discover(&sources.dir)?;
        let current: Vec<Current> = self
            .members()
            .iter()
            .map(|member| Current {
                folder: member.folder.clone(),
                name: member.name().to_string(),
                fingerprint: member.fingerprint,
                prefix: prefix_of(&member.plugin.manifest),
            })
            .collect();
        let mut removals: Vec<String> = current
            .iter()
            .filter(|plugin| plugin.folder.as_ref().is_some_and(|folder| !found.iter().any(|found| found.folder == *folder)))
            .map(|plugin| plugin.name.clone())
            .collect();
        let mut candidates = Vec::new();
        for Discovered { folder, manifest } in found {
            let running = current.iter().find(|plugin| plugin.folder.as_ref() == Some(&folder));
            let failure = |plugin: Option<&str>, error: String| ReloadFailure {
                plugin: plugin.map(str::to_string),
                folder: folder.clone(),
                error,
                previous_version_kept: running.is_some(),
            };
            let manifest = match manifest.and_then(|manifest| fingerprint(&manifest).map(|hash| (manifest, hash))) {
                Ok(manifest) => manifest,
                Err(error) => {
                    report.failed.push(failure(running.map(|plugin| plugin.name.as_str()), format!("{error:#}")));
                    continue;
                }
            };
            let (manifest, hash) = manifest;
            let name = manifest.name.clone();
            let same_plugin = running.is_some_and(|plugin| plugin.name == name);
            if same_plugin && running.is_some_and(|plugin| plugin.fingerprint == Some(hash)) {
                report.unchanged.push(name);
                continue;
            }
            if let Some((broken, error)) = self.reload.broken.lock().expect("reload lock").get(&folder)
                && *broken == hash
            {
                report.failed.push(failure(Some(&name), error.clone()));
                continue;
            }
            // A plugin renamed in its folder is the old one removed and a new one added.
            if let Some(plugin) = running.filter(|_| !same_plugin) {
                removals.push(plugin.name.clone());
            }
            let conflict = self.conflict(&manifest, &current, &removals, same_plugin);
            if let Some(conflict) = conflict {
                report.failed.push(failure(Some(&name), conflict));
                continue;
            }
            match admit(manifest, &folder, &sources.config) {
                Ok(Some(admitted)) => candidates.push(Candidate { admitted, fingerprint: hash, replaces: same_plugin }),
                Ok(None) => {}
                Err(error) => report.failed.push(failure(Some(&name), format!("{error:#}"))),
            }
        }
        for name in &removals {
            self.remove(name);
            report.removed.push(name.clone());
        }
        let added: Vec<(String, Option<String>)> = candidates
            .iter()
            .filter(|candidate| !candidate.replaces)
            .map(|candidate| (candidate.admitted.manifest.name.clone(), prefix_of(&candidate.admitted.manifest)))
            .collect();
        // New plugins are answered "starting" while they compile; replaced ones serve on.
        self.publish(|view| {
            for (name, prefix) in &added {
                view.compiling.push(name.clone());
                set_prefix(view, name, prefix.clone());
            }
        });
        let compiled: Vec<_> = std::thread::scope(|scope| {
            let compiles: Vec<_> = candidates
                .into_iter()
                .map(|candidate| {
                    scope.spawn(move || {
                        let (name, folder) = (candidate.admitted.manifest.name.clone(), candidate.admitted.folder.clone());
                        (name, folder, candidate.fingerprint, candidate.replaces, self.compile(candidate.admitted))
                    })
                })
                .collect();
            compiles.into_iter().map(|compile| compile.join().expect("a compile thread panicked")).collect()
        });
        for (name, folder, hash, replaces, compiled) in compiled {
            let outcome = compiled
                .inspect_err(|error| {
                    self.reload.broken.lock().expect("reload lock").insert(folder.clone(), (hash, format!("{error:#}")));
                })
                .map_err(|error| format!("{error:#}"))
                .and_then(|(plugin, env)| {
                    self.reload.broken.lock().expect("reload lock").remove(&folder);
                    if replaces {
                        self.swap(&name, folder.clone(), hash, plugin, env)
                    } else {
                        let cursor = self.open_cursor(&name).map_err(|error| format!("{error:#}"))?;
                        self.install(Some(folder.clone()), Some(hash), plugin, env, cursor).map_err(|error| format!("{error:#}"))
                    }
                });
            if !replaces {
                self.publish(|view| {
                    view.compiling.retain(|compiling| *compiling != name);
                    if outcome.is_err() {
                        view.prefixes.retain(|(_, plugin)| *plugin != name);
                    }
                });
            }
            match outcome {
                Ok(()) if replaces => report.replaced.push(name),
                Ok(()) => report.added.push(name),
                Err(error) => report.failed.push(ReloadFailure { plugin: Some(name), folder, error, previous_version_kept: replaces }),
            }
        }
        self.log_and_count(&report);
        Ok(report)
    }

    /// Why `manifest` cannot run beside the plugins that stay, if it cannot: a name or a
    /// prefix another plugin holds, or an address of its own the host did not bind at start.
    fn conflict(&self, manifest: &Manifest, current: &[Current], removals: &[String], replaces: bool) -> Option<String> {
        let staying = || current.iter().filter(|plugin| !removals.contains(&plugin.name));
        if !replaces && let Some(other) = staying().find(|plugin| plugin.name == manifest.name) {
            let folder = other.folder.as_deref().map(Path::display).map(|folder| folder.to_string()).unwrap_or_default();
            return Some(format!("the plugin name `{}` is already taken by the running plugin of {folder}", manifest.name));
        }
        let prefix = prefix_of(manifest);
        if let Some(other) = staying().find(|plugin| plugin.name != manifest.name && prefix.is_some() && plugin.prefix == prefix) {
            return Some(format!("grants.listen.prefix `{}` is already granted to `{}`", prefix.unwrap_or_default(), other.name));
        }
        let address = manifest.grants.listen.as_ref().and_then(|listen| listen.address.clone())?;
        let bound = self.listen_grants().iter().any(|(grant, name)| *name == manifest.name && grant.address.as_deref() == Some(&address));
        (!bound).then(|| {
            format!(
                "grants.listen.address `{address}` was not served when the host started: a new address needs a restart of the host \
                 (or serve the plugin under a prefix of the host's server: listen = {{ prefix = \"/{}\" }})",
                manifest.name
            )
        })
    }

    /// Stops one plugin (it receives what is left, then `stop`); its cursor stays.
    fn remove(&self, name: &str) {
        let mut members = self.members();
        let Some(index) = members.iter().position(|member| member.name() == name) else { return };
        let member = members.remove(index);
        self.publish(|view| {
            view.running.retain(|running| running.name != name);
            view.prefixes.retain(|(_, plugin)| plugin != name);
        });
        member.runner.stop();
    }

    /// Swaps the running `name` for its new version: the old one is stopped (every row
    /// committed so far, `stop`, cursor synced), the new one started at that cursor. If it
    /// fails to start, the old version is started again at the same cursor. Requests for
    /// the plugin wait meanwhile (`Endpoint::Swapping`).
    fn swap(
        &self,
        name: &str,
        folder: PathBuf,
        hash: super::Fingerprint,
        plugin: super::LoadedPlugin,
        env: super::PluginEnv,
    ) -> Result<(), String> {
        let mut members = self.members();
        if self.is_closed() {
            return Err("the host is stopping".into());
        }
        let index = members.iter().position(|member| member.name() == name).ok_or_else(|| format!("plugin `{name}` no longer runs"))?;
        let old = members.remove(index);
        let started = std::time::Instant::now();
        self.publish(|view| view.swapping.push(name.to_string()));
        let old_stats = old.runner.stats.clone();
        old.runner.stop();
        let options = old.options;
        let (member, outcome) = match self
            .open_cursor(name)
            .map_err(|error| format!("{error:#}"))
            .and_then(|cursor| PluginRunner::spawn_checked(plugin.clone(), env.clone(), cursor, options))
        {
            Ok(runner) => (Some(Member { folder: Some(folder), fingerprint: Some(hash), plugin, env, options, runner }), Ok(())),
            Err(error) => {
                tracing::error!(plugin = name, "the new version failed: {error}; the previous version runs on");
                let restarted = self
                    .open_cursor(name)
                    .and_then(|cursor| Ok(PluginRunner::spawn(old.plugin.clone(), old.env.clone(), cursor, options)?))
                    .map(|runner| Member { runner, ..old });
                match restarted {
                    Ok(member) => (Some(member), Err(error)),
                    Err(again) => (None, Err(format!("{error}; and the previous version could not be started again: {again:#}"))),
                }
            }
        };
        if let Some(member) = &member {
            carry_counters(&old_stats, &member.runner.stats);
        }
        let running = member.as_ref().map(Member::running);
        let prefix = member.as_ref().and_then(|member| prefix_of(&member.plugin.manifest));
        members.extend(member);
        drop(members);
        self.publish(|view| {
            view.swapping.retain(|swapping| swapping != name);
            view.running.retain(|running| running.name != name);
            set_prefix(view, name, prefix);
            view.running.extend(running);
        });
        self.notify_all();
        if outcome.is_ok() {
            tracing::info!(
                plugin = name,
                "swapped in {:.1} ms (old version stopped, new one started at its cursor)",
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        outcome
    }

    fn log_and_count(&self, report: &ReloadReport) {
        for (names, outcome) in [(&report.added, "added"), (&report.replaced, "replaced"), (&report.removed, "removed")] {
            for name in names {
                self.reload.count(name, outcome);
                tracing::info!(plugin = %name, "reload: {outcome}");
            }
        }
        for failure in &report.failed {
            let plugin = failure.plugin.clone().unwrap_or_else(|| failure.folder.display().to_string());
            self.reload.count(&plugin, "failed");
            let kept = if failure.previous_version_kept { "; the previous version runs on" } else { "" };
            tracing::error!(plugin = %plugin, "reload failed: {}{kept}", failure.error);
        }
        tracing::info!(
            "plugin directory reloaded: {} added, {} replaced, {} removed, {} unchanged, {} failed",
            report.added.len(),
            report.replaced.len(),
            report.removed.len(),
            report.unchanged.len(),
            report.failed.len()
        );
    }

    /// What each plugin's reloads came to, for `/metrics`.
    pub fn reload_outcomes(&self) -> Vec<((String, &'static str), u64)> {
        self.reload.outcomes()
    }
}

/// A plugin's counters go on across versions (Prometheus counters do not reset in a swap).
fn carry_counters(old: &super::PluginStats, new: &super::PluginStats) {
    use std::sync::atomic::Ordering::Relaxed;
    for (from, to) in [
        (&old.rows_delivered, &new.rows_delivered),
        (&old.rows_rejected, &new.rows_rejected),
        (&old.calls, &new.calls),
        (&old.call_nanos, &new.call_nanos),
        (&old.traps, &new.traps),
        (&old.restarts, &new.restarts),
    ] {
        to.fetch_add(from.load(Relaxed), Relaxed);
    }
}
