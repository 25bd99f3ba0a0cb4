//! Serving HTTP from a connector written with [`telemetry_plugin`]: implement
//! [`HttpHandler`] beside [`Connector`] and export both with
//! [`export_http_connector!`](crate::export_http_connector). The manifest then needs a
//! `listen` grant.
//!
//! A crate of its own because a component's world is the union of the worlds its crates
//! were built with: one that exports `http-handler` belongs only in a plugin that serves.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "http-connector",
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "telemetry_plugin_http::bindings",
        // The same types as `telemetry_plugin`'s, so a `Request` is one type for both.
        with: {
            "telemetry:connector/types@0.1.0": telemetry_plugin::types,
            "telemetry:connector/history@0.1.0": telemetry_plugin::history,
            "telemetry:connector/log@0.1.0": telemetry_plugin::log,
            "telemetry:connector/http-types@0.1.0": telemetry_plugin::http_types,
        },
    });
}

pub use telemetry_plugin;
pub use telemetry_plugin::http_types::{Request, Response};
use telemetry_plugin::{Connector, instance};

/// A connector that answers HTTP requests under its `listen` grant.
///
/// With `limits.http_instances` above 1, requests go to instances of their own that get
/// `start` and `stop` but never `update`: answer from the configuration and the history.
pub trait HttpHandler: Connector {
    fn handle(&mut self, request: Request) -> Response;
}

/// The answer to a request that arrives before `start` succeeded.
#[doc(hidden)]
pub fn handle<C: HttpHandler>(request: Request) -> Response {
    instance::with::<C, _>(|connector| Ok(connector.handle(request))).unwrap_or_else(|_| Response {
        status: 503,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: b"not started".to_vec(),
    })
}

/// Exports a type implementing [`Connector`] and [`HttpHandler`] as the component's
/// `telemetry-connector` and `http-handler`.
#[macro_export]
macro_rules! export_http_connector {
    ($connector:ty) => {
        const _: () = {
            struct Export;
            impl $crate::bindings::exports::telemetry::connector::telemetry_connector::Guest for Export {
                fn start(
                    context: $crate::telemetry_plugin::StartContext,
                ) -> ::core::result::Result<(), $crate::telemetry_plugin::ConnectorError> {
                    $crate::telemetry_plugin::instance::start::<$connector>(context)
                }
                fn update(rows: $crate::telemetry_plugin::Rows) -> ::core::result::Result<(), $crate::telemetry_plugin::ConnectorError> {
                    $crate::telemetry_plugin::instance::update::<$connector>(rows)
                }
                fn stop() -> ::core::result::Result<(), $crate::telemetry_plugin::ConnectorError> {
                    $crate::telemetry_plugin::instance::stop::<$connector>()
                }
            }
            impl $crate::bindings::exports::telemetry::connector::http_handler::Guest for Export {
                fn handle(request: $crate::Request) -> $crate::Response {
                    $crate::handle::<$connector>(request)
                }
            }
    $crate::bindings::export_world!(Export with_types_in $crate::bindings);
        };
    };
}
