pub mod cache;
pub mod metrics;
pub mod server;
pub mod translate;
