use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use std::io::{IsTerminal, Write};

use telemetry_host::config::{DEFAULT_CONFIG, HostConfig};
use telemetry_host::history::stats_file;
use telemetry_host::isolation::{IsolatedPlugin, IsolationOptions};
use telemetry_host::node::{self, Input, NodeOptions};
use telemetry_host::plugins::loader::Runtime;
use telemetry_host::scaffold;

/// A telemetry node for distributed training runs: samples in, named series out to
/// sandboxed WebAssembly connectors.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the node: ingest, history, and every plugin of the plugin directory.
    Run {
        /// The host configuration (TOML); the built-in default if omitted.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The plugin directory: one folder per plugin, each with a plugin.toml.
        #[arg(long, default_value = "plugins")]
        plugins: PathBuf,
        /// Samples as NDJSON: a file, `-` for stdin, `demo` for a generated run, or `none`
        /// (HTTP and Redis only).
        #[arg(long, default_value = "-")]
        input: String,
        /// Samples per second of the `demo` input.
        #[arg(long, default_value_t = 50)]
        demo_rate: u32,
        /// Keep serving after the input ends, until SIGINT or SIGTERM.
        #[arg(long)]
        wait: bool,
        /// Reload a plugin whenever its folder changes (new, rebuilt, edited or removed),
        /// as SIGHUP and `plugin reload` do on demand.
        #[arg(long)]
        watch: bool,
    },
    /// Works with one plugin.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Prints the built-in default configuration.
    DefaultConfig,
    /// Writes the plugin contract (the WIT package this host implements) into a folder.
    Wit {
        /// The folder to write `connector.wit` into.
        #[arg(long, default_value = "wit")]
        out: PathBuf,
    },
    /// Imports the original node's stats file (a JSON object of columns) into an empty
    /// history, so the old run continues.
    ImportStats {
        /// The stats file, e.g. `checkpoint/SoulsAIStats.json`.
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Writes the history as the original node's stats file.
    ExportStats {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The file to write; stdout if omitted.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Tells a running host to reload its plugin directory and prints what changed.
    Reload {
        /// The running host's configuration (for http.listen and http.admin_token).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The host's address instead of the configuration's http.listen.
        #[arg(long)]
        url: Option<String>,
    },
    /// Writes a new plugin folder that builds, loads and passes `plugin test` as written.
    New {
        /// The plugin's name: its folder, component and manifest name.
        name: String,
        /// The language of the plugin.
        #[arg(long, value_enum)]
        lang: scaffold::Language,
        /// Where to create the folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Compiles a plugin into the host's compile cache, so its first start does not wait
    /// for the compile; prints the time and peak memory it took.
    Compile {
        /// A component (.wasm), its folder, or its plugin.toml.
        file: PathBuf,
        /// Host configuration (its runtime.cache_dir); the built-in default if omitted.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Shows a component's world, imports, exports and the grants it needs.
    Inspect {
        /// A component (.wasm).
        file: PathBuf,
    },
    /// Runs one plugin alone on samples and prints what it wrote, sent and logged.
    Test {
        /// A component (.wasm), its folder, or its plugin.toml.
        file: PathBuf,
        /// Samples as NDJSON.
        #[arg(long)]
        input: PathBuf,
        /// Plugin configuration (TOML table), merged over the manifest's [config].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Host configuration (transforms); the built-in default if omitted.
        #[arg(long)]
        host_config: Option<PathBuf>,
        /// Keep the plugin's files here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// This process's peak resident memory (VmHWM), in MB.
fn peak_memory_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024)
}

fn load_config(path: Option<&PathBuf>) -> Result<HostConfig> {
    match path {
        Some(path) => HostConfig::load(path),
        None => Ok(HostConfig::builtin_default()),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config, plugins, input, demo_rate, wait, watch } => {
            let input = match input.as_str() {
                "-" => Input::Stdin,
                "demo" => Input::Demo { per_second: demo_rate },
                "none" => Input::None,
                path => Input::File(path.into()),
            };
            let options = NodeOptions {
                config: load_config(config.as_ref())?,
                plugins_dir: plugins,
                input,
                wait_after_input: wait,
                watch_plugins: watch,
            };
            let summary = node::run(options)?;
            anyhow::ensure!(
                summary.failed_plugins.is_empty(),
                "{} plugin(s) failed to load or refused their configuration: {}",
                summary.failed_plugins.len(),
                summary.failed_plugins.join("; ")
            );
            Ok(())
        }
        Command::ImportStats { file, config } => {
            let config = load_config(config.as_ref())?;
            let mut history = node::open_history(&config)?;
            let rows = stats_file::import(&mut history, &file, telemetry_host::ingest::now_ms())?;
            eprintln!("imported {rows} rows from {} into {}", file.display(), config.runtime.history_dir.display());
            Ok(())
        }
        Command::ExportStats { config, output } => {
            let config = load_config(config.as_ref())?;
            // Read-only, beside a running host if there is one: no lock, no recovery.
            let history = telemetry_host::history::History::read_only(
                &config.runtime.history_dir,
                telemetry_host::ingest::transforms::series_names(&config.telemetry.transforms),
            )?;
            match &output {
                Some(path) => {
                    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
                    let mut out = std::io::BufWriter::new(file);
                    stats_file::export(&history, &mut out).and_then(|()| Ok(out.flush()?))
                }
                None => stats_file::export(&history, &mut std::io::BufWriter::new(std::io::stdout().lock())),
            }
        }
        Command::DefaultConfig => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
        Command::Wit { out } => {
            println!("wrote {}", scaffold::write_wit(&out)?.display());
            Ok(())
        }
        Command::Plugin { command: PluginCommand::New { name, lang, dir } } => {
            let folder = scaffold::new_plugin(&dir, &name, lang)?;
            println!(
                "wrote {0}\nbuild:  {0}/build.sh\ntry:    telemetry-host plugin test {0} --input {0}/samples.ndjson",
                folder.display()
            );
            Ok(())
        }
        Command::Plugin { command: PluginCommand::Compile { file, config } } => {
            let cache_dir = load_config(config.as_ref())?.runtime.cache_dir;
            let manifest = telemetry_host::isolation::manifest_beside(&file)?;
            let started = std::time::Instant::now();
            let compiled = Runtime::new(Some(cache_dir.clone()))?.compile(&manifest)?;
            let what = match compiled.origin {
                telemetry_host::plugins::cache::Origin::Cached => "was already in the cache",
                telemetry_host::plugins::cache::Origin::Compiled => "compiled",
            };
            println!(
                "{} ({:.1} MB, inlining {}) {what} in {:.2} s, peak memory {} MB; cache {}",
                manifest.name,
                compiled.size as f64 / 1e6,
                if compiled.inlined { "on" } else { "off" },
                started.elapsed().as_secs_f64(),
                peak_memory_mb().map_or("unknown".into(), |mb| mb.to_string()),
                cache_dir.display()
            );
            Ok(())
        }
        Command::Plugin { command: PluginCommand::Reload { config, url } } => reload_running_host(&load_config(config.as_ref())?, url),
        Command::Plugin { command: PluginCommand::Inspect { file } } => {
            // What a component imports and exports is in its bytes: no compile.
            let (_, shape) = Runtime::read_component(&file)?;
            println!("component: {}", file.display());
            println!("world: {}", shape.world());
            println!("imports:");
            shape.imports.iter().for_each(|name| println!("  {name}"));
            println!("exports:");
            shape.exports.iter().for_each(|name| println!("  {name}"));
            println!("grants it needs in plugin.toml:");
            let grants = shape.needed_grants();
            if grants.is_empty() {
                println!("  none");
            }
            grants.iter().for_each(|grant| println!("  {grant}"));
            Ok(())
        }
        Command::Plugin { command: PluginCommand::Test { file, input, config, host_config, data_dir } } => {
            let plugin_config = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                    toml::from_str(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?
                }
                None => toml::Table::new(),
            };
            let host_config = load_config(host_config.as_ref())?;
            // The host's compile cache: a plugin tested again, or then run, is not compiled again.
            let cache_dir = Some(host_config.runtime.cache_dir.clone());
            let options = IsolationOptions { host_config, plugin_config, data_dir, cache_dir, ..IsolationOptions::default() };
            let mut plugin = IsolatedPlugin::load(&file, options)?;
            let samples = std::fs::read_to_string(&input).with_context(|| format!("cannot read {}", input.display()))?;
            let refused = plugin.push_ndjson(&samples);
            let outcome = plugin.start().and_then(|()| plugin.deliver()).and_then(|()| plugin.stop());
            print!("{}", plugin.report());
            if refused > 0 {
                println!("{refused} sample(s) refused (see the log above)");
            }
            outcome.map_err(|failure| anyhow::anyhow!("plugin `{}` failed: {failure}", plugin.name()))
        }
    }
}

/// `POST /v1/plugins/reload` to the host `config` describes; fails when a plugin failed.
fn reload_running_host(config: &HostConfig, url: Option<String>) -> Result<()> {
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            // A host listening on every address is reached on this machine's loopback.
            let listen = config.http.listen.replace("0.0.0.0:", "127.0.0.1:").replace("[::]:", "[::1]:");
            format!("http://{listen}")
        }
    };
    // A Python component can take a minute to compile.
    let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(600)).build()?;
    let mut request = client.post(format!("{base}/v1/plugins/reload"));
    if let Some(token) = &config.http.admin_token {
        request = request.bearer_auth(token);
    }
    let response = request.send().with_context(|| format!("no host answers at {base}"))?;
    let status = response.status();
    let text = response.text()?;
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    println!("{}", serde_json::to_string_pretty(&body)?);
    anyhow::ensure!(status.is_success(), "the reload did not apply everywhere ({status}): see `failed` above");
    Ok(())
}
