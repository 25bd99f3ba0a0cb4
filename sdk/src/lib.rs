//! Writing a telemetry-host connector in Rust.
//!
//! Implement [`Connector`] on a type holding the connector's state and export it:
//!
//! ```ignore
//! use telemetry_plugin::{Connector, ConnectorError, Rows, Start};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { prefix: String }
//!
//! struct Printer { prefix: String }
//!
//! impl Connector for Printer {
//!     type Config = Config;
//!     fn start(start: Start<Config>) -> Result<Self, ConnectorError> {
//!         Ok(Printer { prefix: start.config.prefix })
//!     }
//!     fn update(&mut self, rows: Rows) -> Result<(), ConnectorError> {
//!         telemetry_plugin::log::write(telemetry_plugin::log::Level::Info, &format!("{} {} rows", self.prefix, rows.timestamps_ms.len()));
//!         Ok(())
//!     }
//! }
//!
//! telemetry_plugin::export_connector!(Printer);
//! ```
//!
//! Build the crate as a `cdylib` for `wasm32-wasip2`. The bindings are those of the
//! `outbound-connector` world; a component imports only what it calls, so a connector that
//! never calls [`outgoing_http`] is a plain `connector` and needs no outbound grant.

pub mod row_file;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "outbound-connector",
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "telemetry_plugin::bindings",
    });
}

pub use bindings::telemetry::connector::{history, http_types, log, outgoing_http, types};
pub use row_file::{RowFile, RowFormat};
pub use types::{ConnectorError, Rows, StartContext};

/// What `start` receives, with the plugin's configuration parsed into `C`.
pub struct Start<C> {
    /// The `[config]` of the manifest merged with the host's `[plugins.NAME.config]`.
    pub config: C,
    /// Everything else the host said: series names and order, the step series, the row
    /// this instance receives first (`next_row`), the run's start.
    pub context: StartContext,
}

impl<C> Start<C> {
    /// The column index of each named series, or the error that names the unknown ones
    /// and lists what the host has; `None` selects every series.
    pub fn columns(&self, names: Option<&[String]>) -> Result<Vec<usize>, ConnectorError> {
        let series = &self.context.series;
        let Some(names) = names else { return Ok((0..series.len()).collect()) };
        let unknown: Vec<&str> = names.iter().filter(|name| !series.contains(name)).map(String::as_str).collect();
        if !unknown.is_empty() {
            return Err(ConnectorError::InvalidConfig(format!(
                "config.series: no series {}; the host has {}",
                unknown.join(", "),
                series.join(", ")
            )));
        }
        Ok(names.iter().filter_map(|name| series.iter().position(|known| known == name)).collect())
    }
}

/// A connector: its state is `Self`, built by `start`, updated in place, stopped once.
///
/// The host calls one instance from one thread; `update` gets only the rows since the
/// previous one (and an empty batch after a second of silence). Return
/// [`ConnectorError::Unavailable`] to be offered the same rows again after a backoff,
/// [`ConnectorError::Rejected`] to skip them, [`ConnectorError::Internal`] (or panic) to be
/// restarted from the cursor; an [`ConnectorError::InvalidConfig`] from `start` disables
/// the plugin with its message.
pub trait Connector: Sized + 'static {
    /// The plugin's configuration; a `serde_json::Value` takes anything. A field it lacks or
    /// cannot hold is an `invalid-config` naming the key.
    type Config: serde::de::DeserializeOwned;

    fn start(start: Start<Self::Config>) -> Result<Self, ConnectorError>;

    fn update(&mut self, rows: Rows) -> Result<(), ConnectorError>;

    /// Flushes everything; the instance is dropped afterwards.
    fn stop(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// Exports a [`Connector`] as the component's `telemetry-connector`.
#[macro_export]
macro_rules! export_connector {
    ($connector:ty) => {
        const _: () = {
            struct Export;
            impl $crate::bindings::exports::telemetry::connector::telemetry_connector::Guest for Export {
                fn start(context: $crate::StartContext) -> ::core::result::Result<(), $crate::ConnectorError> {
                    $crate::instance::start::<$connector>(context)
                }
                fn update(rows: $crate::Rows) -> ::core::result::Result<(), $crate::ConnectorError> {
                    $crate::instance::update::<$connector>(rows)
                }
                fn stop() -> ::core::result::Result<(), $crate::ConnectorError> {
                    $crate::instance::stop::<$connector>()
                }
            }
    $crate::bindings::export_world!(Export with_types_in $crate::bindings);
        };
    };
}

/// The one instance of the exported connector, between `start` and `stop`.
#[doc(hidden)]
pub mod instance {
    use std::any::Any;
    use std::cell::RefCell;

    use super::{Connector, ConnectorError, Rows, Start, StartContext};

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn start<C: Connector>(context: StartContext) -> Result<(), ConnectorError> {
        let config = crate::parse_config::<C::Config>(&context.config_json)?;
        let connector = C::start(Start { config, context })?;
        INSTANCE.with(|instance| *instance.borrow_mut() = Some(Box::new(connector)));
        Ok(())
    }

    pub fn update<C: Connector>(rows: Rows) -> Result<(), ConnectorError> {
        with::<C, _>(|connector| connector.update(rows))
    }

    pub fn stop<C: Connector>() -> Result<(), ConnectorError> {
        let stopped = with::<C, _>(|connector| connector.stop());
        INSTANCE.with(|instance| instance.borrow_mut().take());
        stopped
    }

    pub fn with<C: Connector, R>(call: impl FnOnce(&mut C) -> Result<R, ConnectorError>) -> Result<R, ConnectorError> {
        INSTANCE.with(|instance| match instance.borrow_mut().as_mut().and_then(|any| any.downcast_mut::<C>()) {
            Some(connector) => call(connector),
            None => Err(ConnectorError::Internal("update or stop before start".into())),
        })
    }
}

/// A failed read or write is a dependency (a disk) unavailable right now: the host offers
/// the same rows again after a backoff.
impl From<std::io::Error> for ConnectorError {
    fn from(error: std::io::Error) -> ConnectorError {
        ConnectorError::Unavailable(error.to_string())
    }
}

/// The plugin's JSON configuration as `C`; the error names the key at fault.
pub fn parse_config<C: serde::de::DeserializeOwned>(json: &str) -> Result<C, ConnectorError> {
    let mut reader = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut reader).map_err(|error| {
        let key = error.path().to_string();
        let inner = error.into_inner();
        ConnectorError::InvalidConfig(if key == "." { format!("config: {inner}") } else { format!("config.{key}: {inner}") })
    })
}

/// Appends `value` as a JSON number, in the shortest text that reads back as the same
/// `f64` (ryu: `3.0`, `1e20`); NaN as `nan_token` (`null`, or `NaN` as Python's json
/// writes it), infinities as `null`, or as `Infinity` beside `NaN`.
pub fn push_number(out: &mut String, value: f64, nan_token: &str) {
    if value.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(value));
    } else if value.is_nan() || nan_token != "NaN" {
        out.push_str(nan_token);
    } else {
        out.push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
    }
}
