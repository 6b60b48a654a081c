//! What a config file may say: one serde struct per section, each with the defaults
//! that apply when a key is left out, and the accessors that fill in what a key leaves
//! unset (a consumer's group id, a handler's topics). Unknown keys are refused, so a
//! misspelt key fails the load instead of being silently ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bytes::ByteSize;
use super::security;

/// The whole daemon configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub embedded: EmbeddedConfig,
    pub demo: DemoConfig,
    pub producer: ProducerConfig,
    pub consumers: Vec<ConsumerConfig>,
    pub handlers: Vec<HandlerConfig>,
    pub dead_letter: DeadLetterConfig,
    pub supervision: SupervisionConfig,
    pub metrics: MetricsConfig,
    pub health: HealthConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub reload: ReloadConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers; unset runs the embedded broker.
    pub brokers: Option<String>,
    pub client_id: String,
    /// librdkafka's `session.timeout.ms` (its default is 45s).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Raw librdkafka properties applied to every client.
    pub options: BTreeMap<String, String>,
    /// Authentication and encryption of every client.
    pub security: security::SecurityConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            client_id: "eventd".to_owned(),
            session_timeout: Duration::from_secs(45),
            options: BTreeMap::new(),
            security: security::SecurityConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Partitions of every topic the embedded broker creates.
    pub partitions: i32,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self { partitions: 4 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub enabled: bool,
    /// Events per second over all four demo topics.
    pub rate: u32,
    /// Distinct item ids.
    pub keys: u32,
    /// Topics the demo writes to, in the order browse, like, favorite, comment.
    pub topics: DemoTopics,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            rate: 200,
            keys: 1000,
            topics: DemoTopics::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoTopics {
    pub browse: String,
    pub like: String,
    pub favorite: String,
    pub comment: String,
}

impl Default for DemoTopics {
    fn default() -> Self {
        Self {
            browse: "browse".to_owned(),
            like: "like".to_owned(),
            favorite: "favorite".to_owned(),
            comment: "comment".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Acks {
    #[serde(rename = "0")]
    None,
    #[serde(rename = "1")]
    Leader,
    All,
}

impl Acks {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProducerMode {
    /// Each send waits for its delivery report before the caller goes on.
    Sync,
    /// Sends are pipelined; each one's acknowledgement resolves from its delivery report.
    Async,
}

impl ProducerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProducerMode::Sync => "sync",
            ProducerMode::Async => "async",
        }
    }
}

/// How an event's partition is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionerKind {
    /// FNV-1a 32-bit of the key, placed as sarama's default partitioner does.
    Hash,
    /// murmur2 of the key, placed as the Java client's default partitioner does.
    Murmur2,
    Random,
    RoundRobin,
    /// The partition comes from a JSON field of the event, or is fixed in the config.
    Manual,
}

impl PartitionerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionerKind::Hash => "hash",
            PartitionerKind::Murmur2 => "murmur2",
            PartitionerKind::Random => "random",
            PartitionerKind::RoundRobin => "round_robin",
            PartitionerKind::Manual => "manual",
        }
    }
}

/// Partitioner settings, for the whole producer or for one output topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionerConfig {
    pub partitioner: PartitionerKind,
    /// `manual`: the JSON field holding the partition number.
    pub partition_field: Option<String>,
    /// `manual`: one partition for every event.
    pub partition: Option<i32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    pub mode: ProducerMode,
    pub acks: Acks,
    pub idempotence: bool,
    /// librdkafka's `linger.ms`; unset means 0 in sync mode and 5ms in async mode.
    #[serde(with = "humantime_serde")]
    pub linger: Option<Duration>,
    pub compression: Compression,
    /// librdkafka's `message.max.bytes`.
    pub max_message_bytes: u32,
    /// How long librdkafka keeps trying to deliver one event (`message.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// Retries of a failed produce request (`message.send.max.retries`), within
    /// `message_timeout`.
    pub retries: u32,
    /// First retry delay (`retry.backoff.ms`); doubles up to `max_retry_backoff`.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_retry_backoff: Duration,
    /// Events sent and not yet acknowledged; a sender waits while this many are out.
    pub max_in_flight: usize,
    /// Bytes of events librdkafka may hold unacknowledged
    /// (`queue.buffering.max.kbytes`); a sender waits while it is full.
    pub max_buffer: ByteSize,
    pub partitioner: PartitionerKind,
    /// `partitioner = "manual"`: the JSON field holding the partition number.
    pub partition_field: Option<String>,
    /// `partitioner = "manual"`: one partition for every event.
    pub partition: Option<i32>,
    /// Partitioner per output topic, overriding the producer's.
    pub outputs: BTreeMap<String, PartitionerConfig>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            mode: ProducerMode::Async,
            acks: Acks::All,
            idempotence: true,
            linger: None,
            compression: Compression::Lz4,
            max_message_bytes: 1_048_576,
            message_timeout: Duration::from_secs(30),
            retries: 2_147_483_647,
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(1),
            max_in_flight: 10_000,
            max_buffer: ByteSize::mib(32),
            partitioner: PartitionerKind::Hash,
            partition_field: None,
            partition: None,
            outputs: BTreeMap::new(),
        }
    }
}

impl ProducerConfig {
    pub fn effective_linger(&self) -> Duration {
        self.linger.unwrap_or(match self.mode {
            ProducerMode::Sync => Duration::ZERO,
            ProducerMode::Async => Duration::from_millis(5),
        })
    }

    /// The producer-wide partitioner settings.
    pub fn default_partitioner(&self) -> PartitionerConfig {
        PartitionerConfig {
            partitioner: self.partitioner,
            partition_field: self.partition_field.clone(),
            partition: self.partition,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerMode {
    Group,
    Partitions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Assignment {
    #[serde(rename = "range")]
    Range,
    #[serde(rename = "roundrobin")]
    RoundRobin,
    #[serde(rename = "cooperative-sticky")]
    CooperativeSticky,
}

impl Assignment {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Assignment::Range => "range",
            Assignment::RoundRobin => "roundrobin",
            Assignment::CooperativeSticky => "cooperative-sticky",
        }
    }
}

/// Where a consumer starts when it has no committed position.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum StartPosition {
    Named(NamedStart),
    Offset { offset: i64 },
    Timestamp { timestamp: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedStart {
    Earliest,
    Latest,
}

impl Default for StartPosition {
    fn default() -> Self {
        StartPosition::Named(NamedStart::Earliest)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub name: String,
    #[serde(default = "default_consumer_mode")]
    pub mode: ConsumerMode,
    /// Consumer group of `mode = "group"`; defaults to `eventd-<name>`.
    pub group_id: Option<String>,
    pub topics: Vec<String>,
    /// Group members this process runs for this consumer (group mode; 1 if unset).
    pub(crate) members: Option<usize>,
    /// Group mode; cooperative-sticky if unset.
    pub(crate) assignment: Option<Assignment>,
    #[serde(default)]
    pub start: StartPosition,
    /// Unfinished events per partition; a full partition is read again once half finished.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long a revoke or shutdown waits for in-flight events.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often stored offsets are committed (`auto.commit.interval.ms`): after a
    /// crash, events handled since the last commit are delivered again.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Bytes librdkafka may fetch ahead per assigned partition
    /// (`queued.max.messages.kbytes`, and `fetch.message.max.bytes` per fetch), so
    /// memory follows the config rather than the backlog.
    #[serde(default = "default_fetch_buffer")]
    pub fetch_buffer: ByteSize,
    /// `group.instance.id = <client_id>-<name>-<member index>`.
    #[serde(default)]
    pub static_membership: bool,
    /// `mode = "partitions"`: commit positions under this group id and resume from them.
    pub commit_group: Option<String>,
}

const fn default_consumer_mode() -> ConsumerMode {
    ConsumerMode::Group
}
const fn default_members() -> usize {
    1
}
const fn default_assignment() -> Assignment {
    Assignment::CooperativeSticky
}
const fn default_max_in_flight() -> usize {
    1000
}
const fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
/// sarama's `Offsets.CommitInterval`; librdkafka's default is 5s.
const fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
/// librdkafka's own default is 64 MiB per partition (`queued.max.messages.kbytes`).
const fn default_fetch_buffer() -> ByteSize {
    ByteSize::mib(1)
}

impl ConsumerConfig {
    pub fn members(&self) -> usize {
        self.members.unwrap_or(default_members())
    }

    pub fn assignment(&self) -> Assignment {
        self.assignment.unwrap_or(default_assignment())
    }

    pub fn group_id(&self) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("eventd-{}", self.name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerKind {
    Log,
    Forward,
    Count,
    Webhook,
    Fault,
}

impl HandlerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerKind::Log => "log",
            HandlerKind::Forward => "forward",
            HandlerKind::Count => "count",
            HandlerKind::Webhook => "webhook",
            HandlerKind::Fault => "fault",
        }
    }
}

impl fmt::Display for HandlerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    Fail,
    Panic,
    Sleep,
    /// Break the producer as a fatal librdkafka error would.
    ProducerFatal,
    /// Fail with an error marked transient, as a downstream being unavailable would.
    Unavailable,
    /// Fail the partition worker that sent the event, as a defect in it would: its
    /// group member fails with it and is restarted.
    FailPartition,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    pub name: String,
    pub kind: HandlerKind,
    /// The `[[consumers]]` entry whose events this handler takes.
    pub consumer: String,
    /// Topics taken; defaults to every topic of the consumer.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Every condition must hold for an event to reach the handler.
    #[serde(default)]
    pub filter: super::filter::Filter,
    /// Handler actors in the pool; events with the same key go to the same actor.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// `log`: share of events logged, 0.0 to 1.0.
    pub sample: Option<f64>,
    /// `forward`, `count`, `fault`: topic written to.
    pub output: Option<String>,
    /// `forward`: keep only these fields.
    pub fields: Option<Vec<String>>,
    /// `count`: the field whose values are counted.
    pub group_by: Option<String>,
    /// `count`: tumbling window length, aligned to the wall clock.
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// `webhook`: where batches of events are POSTed.
    pub url: Option<String>,
    /// `webhook`: most events in one request.
    pub batch: Option<usize>,
    /// `webhook`: longest an event waits for its request to fill.
    #[serde(default, with = "humantime_serde")]
    pub max_wait: Option<Duration>,
    /// `webhook`: longest a request may take, answer included.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// `webhook`: headers of every request; values may be `env:NAME` or `file:PATH`.
    pub headers: Option<std::collections::BTreeMap<String, super::security::Secret>>,
    /// `fault`: what to do.
    pub action: Option<FaultAction>,
    /// `fault`: act on every Nth event the pool sees.
    pub every: Option<u64>,
    /// `fault`: act on events at these offsets.
    pub offsets: Option<Vec<i64>>,
    /// `fault`: act at most once per chosen event, even across restarts.
    #[serde(default)]
    pub once: bool,
    /// `fault`: act at most this many times per chosen event, even across restarts.
    pub times: Option<u32>,
    /// `fault`: act only within this long of the pool's first action (an outage).
    #[serde(default, with = "humantime_serde")]
    pub lasting: Option<Duration>,
    /// `fault` with `action = "sleep"`: sleep a random time up to this.
    #[serde(default, with = "humantime_serde")]
    pub sleep: Option<Duration>,
    /// `fault`: a restarted actor of this handler takes this long to start, and its
    /// supervisor waits on it (a handler whose start is slow).
    #[serde(default, with = "humantime_serde")]
    pub restart_delay: Option<Duration>,
    /// How an event the handler fails on is tried again.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Where events this handler gave up on go; defaults to `[dead_letter] topic`.
    pub dead_letter: Option<String>,
}

/// `[handlers.retry]`: attempts and backoff for an event a handler failed on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included, before the event is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles with each further one, with jitter.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Attempts allowed for errors the handler marks transient (a downstream
    /// unavailable, a timeout): `"forever"` or a number.
    pub transient: TransientRetries,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            transient: TransientRetries::Forever,
        }
    }
}

impl RetryConfig {
    /// Delay before attempt `attempt + 1` after `attempt` failed ones: doubling from
    /// `backoff`, capped at `max_backoff`, with up to a quarter taken off at random so
    /// events that failed together do not retry together.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
            .min(self.max_backoff);
        doubled.mul_f64(1.0 - fastrand::f64() * 0.25)
    }
}

/// How often a transient failure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransientRetries {
    Forever,
    Attempts(u32),
}

impl TransientRetries {
    pub fn allows(self, attempts: u32) -> bool {
        match self {
            TransientRetries::Forever => true,
            TransientRetries::Attempts(limit) => attempts < limit,
        }
    }
}

impl Serialize for TransientRetries {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TransientRetries::Forever => serializer.serialize_str("forever"),
            TransientRetries::Attempts(n) => serializer.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for TransientRetries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Word(String),
            Count(u32),
        }
        match Written::deserialize(deserializer) {
            Ok(Written::Word(word)) if word == "forever" => Ok(TransientRetries::Forever),
            Ok(Written::Count(n)) if n > 0 => Ok(TransientRetries::Attempts(n)),
            _ => Err(serde::de::Error::custom(
                "must be \"forever\" or a number of attempts of at least 1",
            )),
        }
    }
}

const fn default_concurrency() -> usize {
    1
}

impl HandlerConfig {
    /// `webhook`: events per request unless `batch` is set.
    pub fn webhook_batch(&self) -> usize {
        self.batch.unwrap_or(100)
    }

    /// `webhook`: how long a request waits to fill unless `max_wait` is set.
    pub fn webhook_max_wait(&self) -> Duration {
        self.max_wait.unwrap_or(Duration::from_millis(100))
    }

    /// `webhook`: a request's time limit unless `timeout` is set.
    pub fn webhook_timeout(&self) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs(10))
    }

    /// Reads every `env:` and `file:` header value; an issue per one that cannot be
    /// read, named by `key`.
    pub fn resolve_headers(&mut self, key: &dyn Fn(&str) -> String) -> Vec<super::ConfigIssue> {
        let mut issues = Vec::new();
        for (name, secret) in self.headers.iter_mut().flatten() {
            if let Err(message) = secret.resolve() {
                issues.push(super::ConfigIssue {
                    key: key(&format!("headers.{name}")),
                    message,
                });
            }
        }
        issues
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Where events that cannot be decoded are written; unset logs and counts them only.
    pub topic: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// More restarts than this within `restart_window` ends the daemon (exit 70).
    pub max_restarts: usize,
    #[serde(with = "humantime_serde")]
    pub restart_window: Duration,
    /// First restart delay; doubles with each consecutive failure of the same actor.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            max_restarts: 10,
            restart_window: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of /metrics, /healthz and /readyz.
    pub listen: String,
    /// How often consumer lag and stalls are measured (librdkafka's statistics.interval.ms).
    #[serde(with = "humantime_serde")]
    pub lag_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".to_owned(),
            lag_interval: Duration::from_secs(5),
        }
    }
}

/// `[health]`: what `/healthz` and `/readyz` report.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// A partition with unfinished events of which none finished for this long is stalled.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Whether a stalled partition also fails `/healthz` (a liveness restart).
    pub stall_fails_liveness: bool,
    /// `/readyz` is 503 while no broker answered for this long.
    #[serde(with = "humantime_serde")]
    pub broker_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(120),
            stall_fails_liveness: false,
            broker_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Reload, as SIGHUP does, when the config file or a file it names (`file:`
    /// secrets, TLS files) changes its contents.
    pub watch_config: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Everything after SIGTERM must finish within this, or the daemon exits 1.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(25),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, pretty otherwise.
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `eventd=debug,rdkafka=warn`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".to_owned(),
        }
    }
}

impl Config {
    pub fn consumer(&self, name: &str) -> Option<&ConsumerConfig> {
        self.consumers.iter().find(|c| c.name == name)
    }

    /// Topics of `handler`, falling back to every topic of its consumer.
    pub fn handler_topics(&self, handler: &HandlerConfig) -> Vec<String> {
        if !handler.topics.is_empty() {
            return handler.topics.clone();
        }
        self.consumer(&handler.consumer)
            .map(|c| c.topics.clone())
            .unwrap_or_default()
    }

    /// The dead-letter topic of `handler`: its own, else `[dead_letter] topic`.
    pub fn handler_dead_letter<'a>(&'a self, handler: &'a HandlerConfig) -> Option<&'a String> {
        handler
            .dead_letter
            .as_ref()
            .or(self.dead_letter.topic.as_ref())
    }

    /// Every topic the config names: consumed, written and dead-letter topics.
    pub fn all_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = Vec::new();
        let mut add = |topic: &str| {
            if !topics.iter().any(|t| t == topic) {
                topics.push(topic.to_owned());
            }
        };
        for consumer in &self.consumers {
            consumer.topics.iter().for_each(|t| add(t));
        }
        for handler in &self.handlers {
            if let Some(output) = &handler.output {
                add(output);
            }
            if let Some(topic) = &handler.dead_letter {
                add(topic);
            }
        }
        if let Some(topic) = &self.dead_letter.topic {
            add(topic);
        }
        if self.demo.enabled {
            let t = &self.demo.topics;
            [&t.browse, &t.like, &t.favorite, &t.comment]
                .into_iter()
                .for_each(|topic| add(topic));
        }
        topics
    }
}
