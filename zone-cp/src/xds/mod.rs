pub mod cache;
pub mod describe;
pub mod metrics;
pub mod server;
pub mod translate;
