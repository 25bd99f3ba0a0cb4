//! What a plugin can be granted, one module per capability. Each has its state type, its
//! WIT host implementation and an `add_to_linker`; granting is decided by the manifest.

pub mod disk_quota;
pub mod filesystem;
pub mod history;
pub mod http_server;
pub mod log;
pub mod outgoing_http;
pub mod secrets;
pub mod stderr;
