//! Loading plugins: the engine, one linker with every capability, and the checks that a
//! component is one of ours and asks only for what its manifest grants, all before it is
//! instantiated.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use wasmtime::component::{InstancePre, Linker};
use wasmtime::{Config, Engine};

use super::cache::{ComponentCache, Origin};
use super::instance::PluginState;
use super::manifest::{Access, Manifest};
use crate::bindings::connector_async::exports::telemetry::connector::{http_handler, telemetry_connector};
use crate::bindings::names;
use crate::capabilities;
use crate::capabilities::disk_quota::DiskQuota;

/// How often the epoch advances: the granularity of call time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The engines and linkers every plugin shares, and the epoch ticker behind call limits.
/// Every instance is called asynchronously (WASI's asynchronous side), so that a call
/// waiting in WASI can be abandoned at its time limit.
pub struct Runtime {
    inlining: Backend,
    plain: Backend,
    cache: ComponentCache,
    ticker_running: Arc<AtomicBool>,
}

/// An engine and the linker of every capability for it. Inlining is an engine setting, so
/// the host keeps one engine that inlines and one that does not, and each component is
/// compiled by the one its size (or its manifest) calls for.
struct Backend {
    engine: Engine,
    linker: Linker<PluginState>,
}

/// Components up to this size are compiled with Cranelift's inlining. Measured here on an
/// 18.5 MB componentize-py component: 40 s of CPU and 8 GB of memory with inlining, 10.6 s
/// and 371 MB without. The Rust connectors (0.2-1 MB) compile in under a second either way
/// and their hot paths gain from it.
pub const INLINING_MAX_BYTES: usize = 4 << 20;

/// A component compiled (or found in the cache) and ready to link.
pub struct Compiled {
    pub component: wasmtime::component::Component,
    pub shape: ComponentShape,
    pub origin: Origin,
    /// Whether Cranelift inlined across functions.
    pub inlined: bool,
    /// The component file's size in bytes.
    pub size: usize,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_running.store(false, Ordering::Relaxed);
    }
}

/// A plugin whose component passed every check and is ready to instantiate.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub manifest: Manifest,
    pub pre: InstancePre<PluginState>,
    pub connector: telemetry_connector::GuestIndices,
    pub http_handler: Option<http_handler::GuestIndices>,
    /// The host path of the granted data directory.
    pub data_dir: Option<PathBuf>,
    /// The plugin's allowance in its data directory, when it may write there; shared by
    /// all its instances.
    pub disk_quota: Option<Arc<DiskQuota>>,
    pub load_time: Duration,
    pub origin: Origin,
    /// Whether it was compiled with Cranelift's inlining (`compile.inlining`).
    pub inlined: bool,
}

/// What a component imports and exports, as `plugin inspect` shows it.
#[derive(Debug, Clone)]
pub struct ComponentShape {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl ComponentShape {
    /// The imports and exports of a component's bytes, read without compiling it.
    pub fn read(bytes: &[u8]) -> Result<ComponentShape> {
        let mut shape = ComponentShape { imports: Vec::new(), exports: Vec::new() };
        // Nested modules and components come inline in the payloads: only the outermost
        // component's own imports and exports count.
        let mut depth = 0usize;
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            match payload.context("cannot parse the component")? {
                wasmparser::Payload::ModuleSection { .. } | wasmparser::Payload::ComponentSection { .. } => depth += 1,
                wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
                wasmparser::Payload::ComponentImportSection(imports) if depth == 0 => {
                    for import in imports {
                        shape.imports.push(import.context("cannot parse the component's imports")?.name.name.to_string());
                    }
                }
                wasmparser::Payload::ComponentExportSection(exports) if depth == 0 => {
                    for export in exports {
                        shape.exports.push(export.context("cannot parse the component's exports")?.name.name.to_string());
                    }
                }
                _ => {}
            }
        }
        Ok(shape)
    }

    /// The world of the contract this component targets, from what it imports and exports.
    pub fn world(&self) -> &'static str {
        match (self.exports.iter().any(|e| e == names::HTTP_HANDLER), self.imports.iter().any(|i| i == names::OUTGOING_HTTP)) {
            (true, true) => "http-connector + outbound-connector",
            (true, false) => "http-connector",
            (false, true) => "outbound-connector",
            (false, false) => "connector",
        }
    }

    /// The manifest lines the component needs, one per capability beyond the basics.
    pub fn needed_grants(&self) -> Vec<String> {
        let mut grants = Vec::new();
        if self.exports.iter().any(|e| e == names::HTTP_HANDLER) {
            grants.push("[grants] listen = { prefix = \"/NAME\" }  (or { address = \"127.0.0.1:PORT\" })".into());
        }
        if self.imports.iter().any(|i| i == names::OUTGOING_HTTP) {
            grants.push("[[grants.outbound]] url = \"https://HOST\"  (one per host it calls)".into());
        }
        if self.imports.iter().any(|i| i.starts_with("wasi:filesystem/")) {
            grants.push("[grants] data_dir = { path = \"NAME\", access = \"read-write\" }  (only if it uses files; Rust's std always imports wasi:filesystem)".into());
        }
        grants
    }
}

impl Runtime {
    /// `cache_dir`: where compiled components are kept; `None` compiles every time.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Runtime> {
        let (inlining, plain) = (Backend::new(wasmtime::Inlining::Yes)?, Backend::new(wasmtime::Inlining::No)?);
        let ticker_running = Arc::new(AtomicBool::new(true));
        let engines = [inlining.engine.weak(), plain.engine.weak()];
        let running = ticker_running.clone();
        std::thread::Builder::new().name("epoch-ticker".into()).spawn(move || {
            while running.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                for weak in &engines {
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            }
        })?;
        Ok(Runtime { inlining, plain, cache: ComponentCache::new(cache_dir), ticker_running })
    }

    /// Reads a component file and what it imports and exports, with a clear error for
    /// anything that is not a component; nothing is compiled yet.
    pub fn read_component(path: &Path) -> Result<(Vec<u8>, ComponentShape)> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        check_component_bytes(&bytes).with_context(|| format!("{} is not a telemetry-host plugin", path.display()))?;
        let shape = ComponentShape::read(&bytes).with_context(|| format!("{} is not a valid WebAssembly component", path.display()))?;
        Ok((bytes, shape))
    }

    /// Checks what a plugin's component imports and exports against the host and the
    /// manifest (before the compile, which can take seconds), then compiles it, or loads it
    /// from the cache, with the inlining its manifest and size call for.
    pub fn compile(&self, manifest: &Manifest) -> Result<Compiled> {
        let context = || format!("plugin `{}` ({})", manifest.name, manifest.source.display());
        let (bytes, shape) = Runtime::read_component(&manifest.component).with_context(context)?;
        check_against_manifest(&shape, manifest).with_context(context)?;
        let inlined = manifest.compile.inlining.inlines(bytes.len());
        let backend = if inlined { &self.inlining } else { &self.plain };
        let (component, origin) = self
            .cache
            .load(&backend.engine, &bytes)
            .with_context(|| format!("{} is not a valid WebAssembly component", manifest.component.display()))
            .with_context(context)?;
        Ok(Compiled { component, shape, origin, inlined, size: bytes.len() })
    }

    /// Loads one plugin: compiles it (`compile`), prepares its data directory and its
    /// instantiation.
    pub fn load(&self, manifest: Manifest, data_root: &Path) -> Result<LoadedPlugin> {
        let started = Instant::now();
        let Compiled { component, shape, origin, inlined, .. } = self.compile(&manifest)?;
        let context = || format!("plugin `{}` ({})", manifest.name, manifest.source.display());
        let data_dir = match &manifest.grants.data_dir {
            Some(grant) => Some(capabilities::filesystem::prepare_data_dir(grant, data_root).with_context(context)?),
            None => None,
        };
        let disk_quota = match (&data_dir, &manifest.grants.data_dir) {
            (Some(dir), Some(grant)) if grant.access == Access::ReadWrite => Some(Arc::new(
                DiskQuota::measure(&manifest.name, dir, manifest.limits.disk_mb)
                    .with_context(|| format!("cannot measure data directory {}", dir.display()))
                    .with_context(context)?,
            )),
            _ => None,
        };
        let linker = if inlined { &self.inlining.linker } else { &self.plain.linker };
        let pre = linker.instantiate_pre(&component).map_err(anyhow::Error::from).with_context(context)?;
        let connector = telemetry_connector::GuestIndices::new(&pre).map_err(anyhow::Error::from).with_context(context)?;
        let http_handler = match shape.exports.iter().any(|e| e == names::HTTP_HANDLER) {
            true => Some(http_handler::GuestIndices::new(&pre).map_err(anyhow::Error::from).with_context(context)?),
            false => None,
        };
        Ok(LoadedPlugin { manifest, pre, connector, http_handler, data_dir, disk_quota, load_time: started.elapsed(), origin, inlined })
    }
}

impl Backend {
    fn new(inlining: wasmtime::Inlining) -> Result<Backend> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true).compiler_inlining(inlining);
        // `perf record` then names the plugins' functions (of a guest built without `strip`).
        if std::env::var_os("TELEMETRY_HOST_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        capabilities::disk_quota::add_to_linker(&mut linker)?;
        capabilities::log::add_to_linker(&mut linker, |state: &mut PluginState| &mut state.log)?;
        capabilities::history::add_to_linker(&mut linker, |state: &mut PluginState| &mut state.history)?;
        capabilities::outgoing_http::add_to_linker(&mut linker, |state: &mut PluginState| &mut state.outgoing)?;
        Ok(Backend { engine, linker })
    }
}

/// WebAssembly files start with `\0asm` and a version: 1 for core modules, a layer of 1
/// for components.
fn check_component_bytes(bytes: &[u8]) -> Result<()> {
    match bytes.get(..8) {
        Some([0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]) => Ok(()),
        Some([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]) => {
            bail!(
                "it is a core WebAssembly module, not a component: build it for the wasm32-wasip2 target (or wrap it with `wasm-tools component new`)"
            )
        }
        _ => bail!("it is not WebAssembly at all (no `\\0asm` header)"),
    }
}

/// The WASI 0.2 packages the host links (`wasmtime_wasi::p2::add_to_linker_async`).
const WASI_PROVIDED: [&str; 6] = ["wasi:cli/", "wasi:clocks/", "wasi:filesystem/", "wasi:io/", "wasi:random/", "wasi:sockets/"];

fn check_against_manifest(shape: &ComponentShape, manifest: &Manifest) -> Result<()> {
    let source = manifest.source.display();
    if !shape.exports.iter().any(|e| e == names::CONNECTOR) {
        let ours: Vec<&String> = shape.exports.iter().filter(|e| e.starts_with(names::PACKAGE)).collect();
        bail!(
            "the component does not export `{}`{}; build it against a world of this host's wit/ (connector, http-connector or outbound-connector)",
            names::CONNECTOR,
            if ours.is_empty() { String::new() } else { format!(" (it exports {ours:?}: another version of the contract?)") }
        );
    }
    for import in &shape.imports {
        if import.starts_with("wasi:http/") {
            bail!(
                "the component imports `{import}`: this host has no WASI HTTP; call out through {} (the outbound-connector world) \
                 and build without WASI HTTP (componentize-js: `--disable http --disable fetch-event`; componentize-py: a world that does not import it)",
                names::OUTGOING_HTTP
            );
        }
        let known = WASI_PROVIDED.iter().any(|interface| import.starts_with(interface))
            || [
                names::OUTGOING_HTTP,
                "telemetry:connector/log@0.1.0",
                "telemetry:connector/history@0.1.0",
                "telemetry:connector/types@0.1.0",
                "telemetry:connector/http-types@0.1.0",
            ]
            .contains(&import.as_str());
        anyhow::ensure!(
            known,
            "the component imports `{import}`, which this host does not provide (it provides {}@{} and WASI 0.2's {}); \
             build it against the host's contract (`wit/`)",
            names::PACKAGE,
            names::VERSION,
            WASI_PROVIDED.join(", ").replace('/', "")
        );
        if import == names::OUTGOING_HTTP && manifest.grants.outbound.is_empty() {
            bail!(
                "the component imports `{import}` but the manifest grants no outbound host; add to {source}:\n  [[grants.outbound]]\n  url = \"https://HOST\"  # each host it may call"
            );
        }
    }
    if shape.exports.iter().any(|e| e == names::HTTP_HANDLER) && manifest.grants.listen.is_none() {
        bail!(
            "the component exports `{}` but the manifest grants nowhere to serve it; add to {source}:\n  [grants]\n  listen = {{ prefix = \"/{}\" }}  # or {{ address = \"127.0.0.1:PORT\" }}",
            names::HTTP_HANDLER,
            manifest.name
        );
    }
    if manifest.grants.listen.is_some() && !shape.exports.iter().any(|e| e == names::HTTP_HANDLER) {
        tracing::warn!(plugin = %manifest.name, "the manifest grants `listen` but the component exports no `{}`; nothing will be served", names::HTTP_HANDLER);
    }
    Ok(())
}
