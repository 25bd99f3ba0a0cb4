//! Named secrets, read by the host from files or its own environment. Plugins never read
//! them: the host attaches them to granted outgoing requests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::SecretSource;

/// Secrets resolved once at start-up, by name.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Arc<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    /// Reads every secret `names` lists: from the configured source, or by default from
    /// `/run/secrets/<name>` then the environment variable `<NAME>` (upper case).
    pub fn resolve<'a>(names: impl IntoIterator<Item = &'a str>, sources: &BTreeMap<String, SecretSource>) -> Secrets {
        let mut values = BTreeMap::new();
        for name in names {
            let source = sources.get(name).cloned().unwrap_or_else(|| SecretSource {
                file: Some(PathBuf::from("/run/secrets").join(name)),
                env: Some(name.to_ascii_uppercase()),
            });
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
                    tracing::warn!(
                        secret = name,
                        "secret not found (looked in {}); requests that need it go without it",
                        if places.is_empty() { "nowhere: no file or variable configured".to_string() } else { places.join(" and ") }
                    )
                }
            }
        }
        Secrets { values: Arc::new(values) }
    }

    /// Secrets given directly, for tests and the test kit.
    pub fn from_values(values: impl IntoIterator<Item = (String, String)>) -> Secrets {
        Secrets { values: Arc::new(values.into_iter().collect()) }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}
