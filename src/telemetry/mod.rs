//! What operators see from outside: Prometheus metrics and the health endpoints.

pub mod http;
pub mod metrics;
pub mod partitions;

pub use http::{serve, Health, Starting};
