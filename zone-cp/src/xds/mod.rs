pub mod cache;
pub mod crosszone;
pub mod describe;
pub mod metrics;
pub mod rbac;
pub mod server;
pub mod tls;
pub mod translate;
