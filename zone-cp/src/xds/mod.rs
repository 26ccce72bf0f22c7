pub mod cache;
pub mod crosszone;
pub mod describe;
pub mod metrics;
pub mod server;
pub mod tls;
pub mod trace;
pub mod translate;
