//! Named secrets, read by the host from files or its own environment, each granted to the
//! plugins the host configuration binds it to. Plugins never read them: the host attaches
//! them to granted outgoing requests.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, bail, ensure};

use crate::config::SecretSource;

/// Secrets resolved once at start-up, by name.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Arc<BTreeMap<String, String>>,
    /// Declared secrets that were not found, each with where the host looked.
    missing: Arc<Vec<String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    /// Reads the secrets `plugin`'s manifest names (`names`). Each must be declared in the
    /// host configuration (`[secrets.<name>]`) and bound to the plugin there (`plugins`):
    /// a manifest cannot name a file or an environment variable of the host, nor another
    /// plugin's secret. A declared secret that is not found is left out and listed in
    /// [`Secrets::missing`].
    pub fn resolve<'a>(
        plugin: &str,
        names: impl IntoIterator<Item = &'a str>,
        sources: &BTreeMap<String, SecretSource>,
    ) -> Result<Secrets> {
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        for name in names {
            let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            ensure!(plain, "secret name `{name}` must be ASCII letters, digits, `_` or `-`");
            let Some(source) = sources.get(name).filter(|source| source.plugins.iter().any(|bound| bound == plugin)) else {
                bail!(
                    "plugin `{plugin}` asks for the secret `{name}`, which the host configuration does not grant it: add \
                     [secrets.{name}] with file = \"...\" or env = \"...\" and plugins = [\"{plugin}\"]"
                );
            };
            let from_file = source.file.as_ref().and_then(|path| std::fs::read_to_string(path).ok());
            let from_env = || source.env.as_ref().and_then(|var| std::env::var(var).ok());
            match from_file.or_else(from_env).map(|value| value.trim().to_string()).filter(|value| !value.is_empty()) {
                Some(value) => {
                    values.insert(name.to_string(), value);
                }
                None => {
                    let places: Vec<String> = source
                        .file
                        .iter()
                        .map(|path| format!("file {}", path.display()))
                        .chain(source.env.iter().map(|var| format!("${var}")))
                        .collect();
                    missing.push(format!(
                        "the secret `{name}` is not set (looked in {})",
                        if places.is_empty() { "nowhere: no file or variable configured".to_string() } else { places.join(" and ") }
                    ));
                }
            }
        }
        Ok(Secrets { values: Arc::new(values), missing: Arc::new(missing) })
    }

    /// Secrets given directly, for tests and the test kit.
    pub fn from_values(values: impl IntoIterator<Item = (String, String)>) -> Secrets {
        Secrets { values: Arc::new(values.into_iter().collect()), missing: Arc::default() }
    }

    /// Declared secrets that were not found, each said with where the host looked.
    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

/// Takes a plugin's secrets, in every form the host sends them in, out of text the host
/// logs or hands back: a granted server that echoes a request header must not put the key
/// in the host's log through the plugin's messages or errors. (It cannot stop a plugin
/// that transforms what it was sent before logging it.)
#[derive(Clone, Default, Debug)]
pub struct Scrubber {
    /// (text to hide, the name of its secret).
    forms: Arc<Vec<(String, String)>>,
}

/// Shorter values are not searched for: hiding them would garble ordinary text.
const SHORTEST_SCRUBBED: usize = 4;

impl Scrubber {
    pub fn new(forms: impl IntoIterator<Item = (String, String)>) -> Scrubber {
        let mut forms: Vec<(String, String)> = forms.into_iter().filter(|(form, _)| form.len() >= SHORTEST_SCRUBBED).collect();
        // A longer form first, so one containing another is hidden whole.
        forms.sort_by_key(|(form, _)| std::cmp::Reverse(form.len()));
        Scrubber { forms: Arc::new(forms) }
    }

    /// `text` with every form replaced by `[secret NAME]`.
    pub fn scrub(&self, text: String) -> String {
        self.forms.iter().fold(text, |text, (form, name)| match text.contains(form.as_str()) {
            true => text.replace(form.as_str(), &format!("[secret {name}]")),
            false => text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_a_secret_is_hidden() {
        let scrubber = Scrubber::new([
            ("s3cr3t-key".into(), "key".into()),
            ("YXBpOnMzY3IzdC1rZXk=".into(), "key".into()),
            ("ab".into(), "short".into()),
        ]);
        let text = "echo: authorization: Basic YXBpOnMzY3IzdC1rZXk= and s3cr3t-key; ab stays".to_string();
        assert_eq!(scrubber.scrub(text), "echo: authorization: Basic [secret key] and [secret key]; ab stays");
    }

    fn sources() -> BTreeMap<String, SecretSource> {
        let source = |var: &str, plugins: &[&str]| SecretSource {
            file: None,
            env: Some(var.into()),
            plugins: plugins.iter().map(|name| name.to_string()).collect(),
        };
        BTreeMap::from([("key".to_string(), source("PATH", &["wandb"])), ("other".to_string(), source("HOME", &["file"]))])
    }

    #[test]
    fn a_plugin_gets_only_the_secrets_bound_to_it() {
        let secrets = Secrets::resolve("wandb", ["key"], &sources()).unwrap();
        assert_eq!(secrets.get("key"), std::env::var("PATH").ok().as_deref());
        for (plugin, name, expected) in [
            ("wandb", "other", "plugin `wandb` asks for the secret `other`, which the host configuration does not grant it"),
            ("evil", "key", "plugin `evil` asks for the secret `key`"),
            ("wandb", "AWS_SECRET_ACCESS_KEY", "does not grant it"),
            ("wandb", "../../etc/shadow", "must be ASCII letters, digits"),
        ] {
            let error = Secrets::resolve(plugin, [name], &sources()).err().unwrap().to_string();
            assert!(error.contains(expected), "{plugin} {name}: {error}");
        }
    }
}
