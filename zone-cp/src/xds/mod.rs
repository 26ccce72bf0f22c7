pub mod cache;
pub mod crosszone;
pub mod describe;
pub mod metrics;
pub mod policies;
pub mod server;
pub mod tls;
pub mod translate;
