//! What a plugin author starts from without this repository: `telemetry-host wit --out`
//! (the contract) and `telemetry-host plugin new` (a plugin folder that builds, loads and
//! passes `plugin test` as generated).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The contract, as the host was built against it.
pub const CONNECTOR_WIT: &str = include_str!("../../../wit/connector.wit");

/// The WASI packages the `file-connector` world imports, at the version the host
/// implements: `deps/` beside the contract.
const WASI_DEPS: [(&str, &str); 3] = [
    ("clocks.wit", include_str!("../../../wit/deps/clocks.wit")),
    ("filesystem.wit", include_str!("../../../wit/deps/filesystem.wit")),
    ("io.wit", include_str!("../../../wit/deps/io.wit")),
];

/// The languages `plugin new` writes a plugin in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// The `telemetry-plugin` crate, built for wasm32-wasip2 by cargo.
    Rust,
    /// componentize-py (PyPI), the `connector` world, files in the granted data directory.
    Python,
    /// componentize-js (npm), the `file-connector` world, without WASI HTTP.
    Js,
}

/// A template file: its name in the new folder, its text with `{{name}}` for the
/// plugin's name (`{{crate_name}}` for it as a Rust crate names its output), and whether
/// it is a script to make executable.
struct TemplateFile {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

/// Every language's folder has these: the manifest and sample input for `plugin test`.
const COMMON: &[TemplateFile] = &[
    TemplateFile { path: "plugin.toml", text: include_str!("plugin.toml"), executable: false },
    TemplateFile { path: "samples.ndjson", text: include_str!("samples.ndjson"), executable: false },
];

const RUST: &[TemplateFile] = &[
    TemplateFile { path: "Cargo.toml", text: include_str!("rust/Cargo.toml"), executable: false },
    TemplateFile { path: "src/lib.rs", text: include_str!("rust/lib.rs"), executable: false },
    TemplateFile { path: "build.sh", text: include_str!("rust/build.sh"), executable: true },
];

const JS: &[TemplateFile] = &[
    TemplateFile { path: "app.js", text: include_str!("js/app.js"), executable: false },
    TemplateFile { path: "build.sh", text: include_str!("js/build.sh"), executable: true },
];

const PYTHON: &[TemplateFile] = &[
    TemplateFile { path: "app.py", text: include_str!("python/app.py"), executable: false },
    TemplateFile { path: "build.sh", text: include_str!("python/build.sh"), executable: true },
];

/// Writes the WIT package into `dir` (created if missing), with the WASI packages its
/// worlds import in `dir/deps`; returns the contract's file.
pub fn write_wit(dir: &Path) -> Result<PathBuf> {
    let deps = dir.join("deps");
    std::fs::create_dir_all(&deps).with_context(|| format!("cannot create {}", deps.display()))?;
    let path = dir.join("connector.wit");
    std::fs::write(&path, CONNECTOR_WIT).with_context(|| format!("cannot write {}", path.display()))?;
    for (name, text) in WASI_DEPS {
        let dep = deps.join(name);
        std::fs::write(&dep, text).with_context(|| format!("cannot write {}", dep.display()))?;
    }
    Ok(path)
}

/// Writes a new plugin folder `parent/name` from the template of `language`, with the WIT
/// in `wit/`; refuses a folder that exists. Returns the folder.
pub fn new_plugin(parent: &Path, name: &str, language: Language) -> Result<PathBuf> {
    check_name(name)?;
    let folder = parent.join(name);
    if folder.exists() {
        bail!("{} exists already: choose another name or remove it", folder.display());
    }
    let files = match language {
        Language::Rust => RUST,
        Language::Python => PYTHON,
        Language::Js => JS,
    };
    for file in COMMON.iter().chain(files) {
        let path = folder.join(file.path);
        std::fs::create_dir_all(path.parent().unwrap_or(&folder)).with_context(|| format!("cannot create {}", folder.display()))?;
        let text = file.text.replace("{{crate_name}}", &name.replace('-', "_")).replace("{{name}}", name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if file.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    write_wit(&folder.join("wit"))?;
    Ok(folder)
}

/// A name that is a folder, a file stem, a Python module and a manifest name at once.
fn check_name(name: &str) -> Result<()> {
    let valid = name.chars().next().is_some_and(|first| first.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid {
        bail!("plugin name `{name}`: use lowercase letters, digits, `-` and `_`, starting with a letter");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_folder_has_every_template_file_named_and_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let folder = new_plugin(dir.path(), "csv-out", Language::Python).unwrap();
        let manifest = std::fs::read_to_string(folder.join("plugin.toml")).unwrap();
        assert!(manifest.starts_with("name = \"csv-out\"\ncomponent = \"csv-out.wasm\"\n"), "{manifest}");
        assert!(!std::fs::read_to_string(folder.join("app.py")).unwrap().contains("{{"));
        let rust = new_plugin(dir.path(), "csv-rs", Language::Rust).unwrap();
        assert!(std::fs::read_to_string(rust.join("build.sh")).unwrap().contains("release/csv_rs.wasm\" csv-rs.wasm"));
        assert!(std::fs::read_to_string(rust.join("src/lib.rs")).unwrap().contains("\"/data/csv-rs.csv\""));
        assert_eq!(std::fs::read_to_string(folder.join("wit/connector.wit")).unwrap(), CONNECTOR_WIT);
        assert!(std::fs::read_to_string(folder.join("wit/deps/filesystem.wit")).unwrap().starts_with("package wasi:filesystem@0.2.12;"));
        let js = new_plugin(dir.path(), "csv-js", Language::Js).unwrap();
        assert!(std::fs::read_to_string(js.join("app.js")).unwrap().contains("const FILE = 'csv-js.csv';"));
        let again = new_plugin(dir.path(), "csv-out", Language::Python).unwrap_err();
        assert!(format!("{again:#}").contains("exists already"), "{again:#}");
    }

    #[test]
    fn a_name_that_cannot_be_a_file_or_module_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", "../up", "Caps", "9lives", "a b"] {
            let refused = new_plugin(dir.path(), name, Language::Python).unwrap_err();
            assert!(format!("{refused:#}").contains("use lowercase letters"), "{name}: {refused:#}");
        }
    }
}
