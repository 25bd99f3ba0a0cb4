//! Host-side bindings of the WIT contract in `wit/`.

/// The `connector` and `http-connector` worlds: every import but `outgoing-http`, and both
/// exports (a plain connector simply lacks `http-handler`).
pub mod connector {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "http-connector",
    });
}

/// The `outbound-connector` world, sharing every type with [`connector`].
pub mod outbound {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "outbound-connector",
        with: {
            "telemetry:connector/types": super::connector::telemetry::connector::types,
            "telemetry:connector/history": super::connector::telemetry::connector::history,
            "telemetry:connector/log": super::connector::telemetry::connector::log,
            "telemetry:connector/http-types": super::connector::telemetry::connector::http_types,
        },
    });
}

/// The `http-connector` world with its exports called asynchronously, for the handler
/// instances of a pool, which answer on the HTTP server's workers and yield to them while
/// they compute (imports shared with [`connector`]).
pub mod connector_async {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "http-connector",
        exports: { default: async },
        with: {
            "telemetry:connector/types": super::connector::telemetry::connector::types,
            "telemetry:connector/history": super::connector::telemetry::connector::history,
            "telemetry:connector/log": super::connector::telemetry::connector::log,
            "telemetry:connector/http-types": super::connector::telemetry::connector::http_types,
        },
    });
}

pub use connector::exports::telemetry::connector::http_handler;
pub use connector::exports::telemetry::connector::telemetry_connector;
pub use connector::telemetry::connector::{history, http_types, log, types};
pub use outbound::telemetry::connector::outgoing_http;

/// The interface names a component may import or export, as they appear in its type.
pub mod names {
    pub const PACKAGE: &str = "telemetry:connector";
    pub const VERSION: &str = "0.1.0";
    pub const CONNECTOR: &str = "telemetry:connector/telemetry-connector@0.1.0";
    pub const HTTP_HANDLER: &str = "telemetry:connector/http-handler@0.1.0";
    pub const OUTGOING_HTTP: &str = "telemetry:connector/outgoing-http@0.1.0";
}
