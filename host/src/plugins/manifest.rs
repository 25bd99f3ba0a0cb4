//! A plugin's manifest (`plugin.toml`), parsed once into typed data: which component,
//! which capabilities it is granted, its limits and its configuration.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::capabilities::outgoing_http::OutboundGrant;

/// The manifest's file name inside a plugin's folder.
pub const MANIFEST_FILE: &str = "plugin.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    component: PathBuf,
    #[serde(default)]
    grants: Grants,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    compile: CompileSettings,
    #[serde(default)]
    config: toml::Table,
}

/// How the host compiles the component (`[compile]`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompileSettings {
    #[serde(default)]
    pub inlining: Inlining,
}

/// Cranelift's inlining: faster code, at a compile cost that grows steeply with the
/// component (an interpreter bundled by componentize-py or componentize-js).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Inlining {
    /// On for components up to `loader::INLINING_MAX_BYTES`, off above.
    #[default]
    Auto,
    On,
    Off,
}

impl Inlining {
    pub fn inlines(self, component_bytes: usize) -> bool {
        match self {
            Inlining::Auto => component_bytes <= super::loader::INLINING_MAX_BYTES,
            Inlining::On => true,
            Inlining::Off => false,
        }
    }
}

/// What a plugin may do beyond reading the history and logging.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// A directory the plugin sees as `/data`.
    #[serde(default)]
    pub data_dir: Option<DataDirGrant>,
    /// Where the host serves the plugin's HTTP handler.
    #[serde(default)]
    pub listen: Option<ListenGrant>,
    /// The URLs (scheme://host[:port], host may be `*.domain`) the plugin may call.
    #[serde(default)]
    pub outbound: Vec<OutboundGrant>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDirGrant {
    /// Resolves against the host's `runtime.data_dir`: relative, without `..`, so one
    /// plugin's folder never reaches the history, the cache or another plugin's folder.
    pub path: PathBuf,
    #[serde(default)]
    pub access: Access,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    #[default]
    ReadWrite,
}

/// Either an address of its own or a path prefix on the host's HTTP server.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenGrant {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory the plugin may grow to, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Longest a single call into the plugin may run, in milliseconds.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Instances answering HTTP requests side by side. With more than one, requests go
    /// to instances of their own that get `start` and `stop` but never `update`: only
    /// for handlers that answer from the history and their configuration alone. They
    /// answer on the HTTP server's workers, called asynchronously (`handler_pool`).
    #[serde(default = "default_http_instances")]
    pub http_instances: u32,
    /// Handles an instance may hold at once: open files and directories, streams,
    /// pollables, outgoing requests. Past it the call traps (the plugin's error); the host
    /// keeps the rest of its descriptors for itself.
    #[serde(default = "default_handles")]
    pub handles: u32,
    /// Space the plugin may take in its writable data directory, in MiB
    /// (`capabilities::disk_quota`). Past it a write fails in the plugin as on a full disk.
    /// The default keeps one plugin from filling the disk the history lives on.
    #[serde(default = "default_disk_mb")]
    pub disk_mb: u64,
}

fn default_disk_mb() -> u64 {
    1024
}

fn default_handles() -> u32 {
    256
}

fn default_http_instances() -> u32 {
    1
}
fn default_memory_mb() -> u64 {
    256
}
fn default_call_timeout_ms() -> u64 {
    10_000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: default_memory_mb(),
            call_timeout_ms: default_call_timeout_ms(),
            http_instances: default_http_instances(),
            handles: default_handles(),
            disk_mb: default_disk_mb(),
        }
    }
}

/// A checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    /// The manifest file itself, for error messages.
    pub source: PathBuf,
    /// The component, resolved against the manifest's folder.
    pub component: PathBuf,
    pub grants: Grants,
    pub limits: Limits,
    pub compile: CompileSettings,
    pub config: toml::Table,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read plugin manifest {}", path.display()))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let raw: RawManifest = toml::from_str(text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let manifest = Manifest {
            name: raw.name,
            source: path.to_path_buf(),
            component: folder.join(raw.component),
            grants: raw.grants,
            limits: raw.limits,
            compile: raw.compile,
            config: raw.config,
        };
        manifest.check().with_context(|| format!("{}: invalid plugin manifest", path.display()))?;
        Ok(manifest)
    }

    fn check(&self) -> Result<()> {
        let valid_name = !self.name.is_empty() && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        anyhow::ensure!(valid_name, "name `{}` must be non-empty ASCII letters, digits, `-` or `_`", self.name);
        anyhow::ensure!(self.limits.memory_mb >= 1, "limits.memory_mb must be at least 1");
        anyhow::ensure!(self.limits.call_timeout_ms >= 1, "limits.call_timeout_ms must be at least 1");
        anyhow::ensure!((1..=64).contains(&self.limits.http_instances), "limits.http_instances must be between 1 and 64");
        anyhow::ensure!((16..=4096).contains(&self.limits.handles), "limits.handles must be between 16 and 4096");
        anyhow::ensure!(self.limits.disk_mb >= 1, "limits.disk_mb must be at least 1");
        if let Some(listen) = &self.grants.listen {
            match (&listen.address, &listen.prefix) {
                (Some(_), Some(_)) | (None, None) => bail!("grants.listen needs exactly one of `address` or `prefix`"),
                (None, Some(prefix)) => anyhow::ensure!(
                    prefix.starts_with('/') && prefix.len() > 1 && !prefix.ends_with('/'),
                    "grants.listen.prefix `{prefix}` must start with `/`, not end with `/`, and not be `/` alone"
                ),
                (Some(address), None) => {
                    address
                        .parse::<std::net::SocketAddr>()
                        .with_context(|| format!("grants.listen.address `{address}` is not an IP address and port"))?;
                }
            }
        }
        if let Some(grant) = &self.grants.data_dir {
            use std::path::Component;
            let plain = grant.path.components().all(|part| matches!(part, Component::Normal(_) | Component::CurDir));
            anyhow::ensure!(
                plain && grant.path.components().any(|part| matches!(part, Component::Normal(_))),
                "grants.data_dir.path `{}` must be a relative folder without `..` (it resolves inside runtime.data_dir)",
                grant.path.display()
            );
        }
        if let Some(prefix) = self.grants.listen.as_ref().and_then(|listen| listen.prefix.as_deref()) {
            let shadowed = HOST_ROUTES.iter().find(|route| route.starts_with(prefix) || prefix.starts_with(*route));
            anyhow::ensure!(
                shadowed.is_none(),
                "grants.listen.prefix `{prefix}` would shadow the host's own route {}",
                shadowed.unwrap_or(&"")
            );
        }
        for grant in &self.grants.outbound {
            grant.check()?;
        }
        Ok(())
    }
}

/// The host's own routes on its HTTP server, which no plugin prefix may cover.
const HOST_ROUTES: [&str; 2] = ["/v1", "/metrics"];

/// One folder of the plugin directory and what its manifest says.
pub struct Discovered {
    pub folder: PathBuf,
    /// The manifest, or why it cannot be used (it does not parse, or it claims a name or a
    /// prefix a folder before it claimed).
    pub manifest: Result<Manifest>,
}

/// Refuses manifests that claim a name or a listen prefix another one claimed first (in
/// folder order), naming both folders: two plugins of one name would share a cursor.
fn refuse_duplicates(found: Vec<Discovered>) -> Vec<Discovered> {
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    let mut prefixes: Vec<(String, PathBuf)> = Vec::new();
    let mut check = |manifest: Result<Manifest>| -> Result<Manifest> {
        let manifest = manifest?;
        if let Some((_, first)) = names.iter().find(|(name, _)| *name == manifest.name) {
            bail!(
                "{}: the plugin name `{}` is already taken by {}; rename one of them",
                manifest.source.display(),
                manifest.name,
                first.display()
            );
        }
        let prefix = manifest.grants.listen.as_ref().and_then(|listen| listen.prefix.clone());
        if let Some(prefix) = &prefix
            && let Some((_, first)) = prefixes.iter().find(|(taken, _)| taken == prefix)
        {
            bail!("{}: grants.listen.prefix `{prefix}` is already granted to {}", manifest.source.display(), first.display());
        }
        names.push((manifest.name.clone(), manifest.source.clone()));
        if let Some(prefix) = prefix {
            prefixes.push((prefix, manifest.source.clone()));
        }
        Ok(manifest)
    };
    found.into_iter().map(|Discovered { folder, manifest }| Discovered { folder, manifest: check(manifest) }).collect()
}

/// The manifests of every plugin folder in `dir` (`dir/*/plugin.toml`), sorted by folder
/// name. A manifest that does not parse is returned as an error beside the others.
pub fn discover(dir: &Path) -> Result<Vec<Discovered>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read plugin directory {}", dir.display()))?;
    let mut folders: Vec<PathBuf> =
        entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).filter(|path| path.join(MANIFEST_FILE).is_file()).collect();
    folders.sort();
    let found = folders.into_iter().map(|folder| Discovered { manifest: Manifest::load(&folder.join(MANIFEST_FILE)), folder }).collect();
    Ok(refuse_duplicates(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_manifest_parses() {
        let text = r#"
            name = "wandb"
            component = "wandb.wasm"
            [grants]
            data_dir = { path = "wandb", access = "read-write" }
            outbound = [{ url = "https://api.wandb.ai", credential = { secret = "wandb_api_key", scheme = "basic", username = "api" } }]
            [limits]
            memory_mb = 64
            [config]
            project = "p"
        "#;
        let manifest = Manifest::parse(text, Path::new("/plugins/wandb/plugin.toml")).unwrap();
        assert_eq!(manifest.component, Path::new("/plugins/wandb/wandb.wasm"));
        assert_eq!(manifest.limits.memory_mb, 64);
        assert_eq!(manifest.limits.call_timeout_ms, 10_000);
        assert_eq!(manifest.config["project"].as_str(), Some("p"));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let error =
            Manifest::parse("name = \"x\"\ncomponent = \"x.wasm\"\n[grants]\nlisten = { prefix = \"nope\" }\n", Path::new("p/plugin.toml"))
                .unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("p/plugin.toml") && text.contains("grants.listen.prefix"), "{text}");
        let error =
            Manifest::parse("name = \"x\"\ncomponent = \"x.wasm\"\n[limits]\nmemory = 3\n", Path::new("q/plugin.toml")).unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("q/plugin.toml") && text.contains("line 4") && text.contains("memory"), "{text}");
        let error = Manifest::parse("name = \"x\"\ncomponent = \"x.wasm\"\n[limits]\nhttp_instances = 0\n", Path::new("r/plugin.toml"))
            .unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("r/plugin.toml") && text.contains("limits.http_instances must be between 1 and 64"), "{text}");
        for path in ["../history", "/etc", "a/../../b", "."] {
            let text = format!("name = \"x\"\ncomponent = \"x.wasm\"\n[grants]\ndata_dir = {{ path = {path:?} }}\n");
            let error = format!("{:#}", Manifest::parse(&text, Path::new("s/plugin.toml")).unwrap_err());
            assert!(error.contains("must be a relative folder without `..`"), "{path}: {error}");
        }
        let error =
            Manifest::parse("name = \"x\"\ncomponent = \"x.wasm\"\n[grants]\nlisten = { prefix = \"/v1\" }\n", Path::new("t/plugin.toml"));
        assert!(format!("{:#}", error.unwrap_err()).contains("would shadow the host's own route /v1"));
    }

    #[test]
    fn two_folders_claiming_one_name_or_prefix_are_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        for (folder, name) in [("a", "same"), ("b", "same"), ("c", "other")] {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
            let text = format!("name = {name:?}\ncomponent = \"x.wasm\"\n[grants]\nlisten = {{ prefix = \"/p\" }}\n");
            std::fs::write(dir.path().join(folder).join(MANIFEST_FILE), text).unwrap();
        }
        let found: Vec<Result<Manifest>> = discover(dir.path()).unwrap().into_iter().map(|found| found.manifest).collect();
        assert!(found[0].is_ok());
        let second = format!("{:#}", found[1].as_ref().unwrap_err());
        assert!(second.contains("b/plugin.toml") && second.contains("already taken by") && second.contains("a/plugin.toml"), "{second}");
        let third = format!("{:#}", found[2].as_ref().unwrap_err());
        assert!(third.contains("`/p` is already granted to"), "{third}");
    }
}
