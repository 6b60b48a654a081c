//! The configuration users write, split by duty: `schema` (the serde structs and their
//! defaults), `loader` (built-in defaults, then the `--config` file, then `EVENTD__*`
//! environment variables, with errors naming the file), `placeholders` (`${NAME}` in
//! per-replica keys), `security` (authentication, and secrets read from the environment
//! or files), `validate` (the rules that span several keys) and `reload` (what changed
//! between the running config and a reloaded one).
//!
//! Every error names the file and the key at fault, so an operator can fix a config
//! without reading the code. Everything is re-exported here, so callers name
//! `crate::config::X` whichever file `X` lives in.

mod bytes;
mod filter;
mod loader;
pub mod options;
mod placeholders;
mod reload;
mod schema;
pub mod security;
mod validate;

pub use bytes::ByteSize;
pub use filter::{Condition, Filter, Subject};
pub use loader::{ConfigError, EXIT_CONFIG};
pub use reload::reread_headers;
pub use schema::{
    Acks, Assignment, Compression, Config, ConsumerConfig, ConsumerMode, DeadLetterConfig,
    DemoConfig, DemoTopics, EmbeddedConfig, FaultAction, HandlerConfig, HandlerKind, HealthConfig,
    KafkaConfig, LogConfig, LogFormat, MetricsConfig, NamedStart, PartitionerConfig,
    PartitionerKind, ProducerConfig, ProducerMode, RetryConfig, ShutdownConfig, StartPosition,
    SupervisionConfig, TransientRetries,
};
pub use validate::ConfigIssue;
