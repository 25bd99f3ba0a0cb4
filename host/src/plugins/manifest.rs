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
    config: toml::Table,
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
    /// Relative paths resolve against the host's `runtime.data_dir`.
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
        Limits { memory_mb: default_memory_mb(), call_timeout_ms: default_call_timeout_ms(), http_instances: default_http_instances() }
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
        for grant in &self.grants.outbound {
            grant.check()?;
        }
        Ok(())
    }
}

/// The manifests of every plugin folder in `dir` (`dir/*/plugin.toml`), sorted by folder
/// name. A manifest that does not parse is returned as an error beside the others.
pub fn discover(dir: &Path) -> Result<Vec<Result<Manifest>>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read plugin directory {}", dir.display()))?;
    let mut folders: Vec<PathBuf> =
        entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).filter(|path| path.join(MANIFEST_FILE).is_file()).collect();
    folders.sort();
    Ok(folders.iter().map(|folder| Manifest::load(&folder.join(MANIFEST_FILE))).collect())
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
    }
}
