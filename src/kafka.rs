//! librdkafka client settings shared by every consumer and the producer, built from the
//! config so each client differs only where its role needs it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

pub mod holder;
pub mod login;

use crate::config::options::{applies_to, is_secret, Role};
use crate::config::{Config, ConfigIssue, ConsumerConfig, NamedStart, StartPosition};

/// Settings common to every client. `kafka.options` is applied last, each property
/// only to the clients it is for; the properties eventd owns are refused there by
/// validation, so an option never overrides them.
fn base(config: &Config, brokers: &Brokers) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &brokers.bootstrap)
        .set("client.id", &config.kafka.client_id);
    for (property, value) in config.kafka.security.properties() {
        client.set(property, value);
    }
    login::LOGINS.apply_to(&mut client);
    client
}

fn apply_options(config: &Config, client: &mut ClientConfig, role: Role) {
    for (key, value) in &config.kafka.options {
        if applies_to(key, role) {
            client.set(key, value);
        }
    }
}

/// The brokers of a one-shot command (`produce`, `tail`, `offsets`, `replay`), or
/// `None` after saying on stderr that the config names none: the embedded broker lives
/// only inside `eventd run`. `flag` is the command's own option for them, if it has one.
pub fn command_brokers(config: &Config, command: &str, flag: Option<&str>) -> Option<Brokers> {
    let Some(bootstrap) = config.kafka.brokers.clone() else {
        let or_flag = flag
            .map(|flag| format!(" or pass {flag}"))
            .unwrap_or_default();
        eprintln!(
            "eventd {command}: no broker: set kafka.brokers in the config{or_flag} (the embedded broker lives only inside `eventd run`)"
        );
        return None;
    };
    Some(Brokers {
        bootstrap,
        embedded: false,
    })
}

/// Where the daemon's clients connect.
#[derive(Debug, Clone)]
pub struct Brokers {
    pub bootstrap: String,
    /// True when eventd runs its own in-process broker.
    pub embedded: bool,
}

/// The longest session of a member of the embedded broker's groups.
const EMBEDDED_SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Consumer settings for at-least-once: offsets are stored by eventd only after every
/// handler finished an event, and auto-commit sends what was stored.
pub fn consumer_config(
    config: &Config,
    brokers: &Brokers,
    consumer: &ConsumerConfig,
    group_id: Option<&str>,
    instance_id: Option<&str>,
) -> ClientConfig {
    let mut client = base(config, brokers);
    client
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            consumer.commit_interval.as_millis().max(1).to_string(),
        )
        .set(
            "session.timeout.ms",
            config.kafka.session_timeout.as_millis().to_string(),
        )
        .set(
            "partition.assignment.strategy",
            consumer.assignment().as_librdkafka(),
        )
        .set(
            "auto.offset.reset",
            match consumer.start {
                StartPosition::Named(NamedStart::Latest) => "latest",
                _ => "earliest",
            },
        )
        // librdkafka's default of 1s stalls a busy partition after its local queue fills.
        .set("fetch.queue.backoff.ms", "20")
        // Prefetch per partition is bounded by fetch_buffer (librdkafka's defaults are
        // 64 MiB and 100,000 events per partition); one fetch response may add one
        // more fetch_buffer before the queue counts as full.
        .set(
            "queued.max.messages.kbytes",
            consumer.fetch_buffer.kib_ceil().to_string(),
        )
        .set(
            "fetch.message.max.bytes",
            consumer.fetch_buffer.bytes().to_string(),
        )
        // Enough queued events for two refills of a full partition.
        .set(
            "queued.min.messages",
            (consumer.max_in_flight.max(1) * 2).to_string(),
        )
        .set("enable.partition.eof", "false")
        // Lag per owned partition and broker states come with the statistics.
        .set(
            "statistics.interval.ms",
            config.metrics.lag_interval.as_millis().max(1).to_string(),
        )
        // librdkafka's default, set because eventd's promise depends on it: aborted
        // transactions are never handed to handlers.
        .set("isolation.level", "read_committed");
    // The default comes from the log filter, but offset resets are counted from
    // librdkafka's warning: it must reach the log callback whatever is printed.
    if (client.log_level as i32) < (RDKafkaLogLevel::Warning as i32) {
        client.set_log_level(RDKafkaLogLevel::Warning);
    }
    if brokers.embedded {
        // The embedded broker answers an empty fetch only after fetch.wait.max.ms.
        client.set("fetch.wait.max.ms", "10");
        // It also holds every rebalance of a group that had formed open for the session
        // timeout less a second, rejoined or not (librdkafka's rdkafka_mock_cgrp.c):
        // with 45s, a member that missed the first generation waited 44s for its
        // partitions, once per rebalance. Its members all live in this process, so a
        // short session costs nothing; its data is gone at exit either way.
        let session = config.kafka.session_timeout.min(EMBEDDED_SESSION_TIMEOUT);
        client
            .set("session.timeout.ms", session.as_millis().max(1).to_string())
            .set(
                "heartbeat.interval.ms",
                (session.as_millis() / 3).max(1).to_string(),
            );
    }
    if let Some(group_id) = group_id {
        client.set("group.id", group_id);
    }
    if let Some(instance_id) = instance_id {
        client.set("group.instance.id", instance_id);
    }
    apply_options(config, &mut client, Role::Consumer);
    client
}

/// Producer settings from `[producer]`.
pub fn producer_config(config: &Config, brokers: &Brokers) -> ClientConfig {
    let producer = &config.producer;
    let mut client = base(config, brokers);
    client
        // A topic deleted or misnamed is refused (and the event dead-lettered), not
        // created with the broker's defaults by the first write to it.
        .set("allow.auto.create.topics", "false")
        .set("acks", producer.acks.as_librdkafka())
        .set("enable.idempotence", producer.idempotence.to_string())
        .set(
            "linger.ms",
            producer.effective_linger().as_millis().to_string(),
        )
        .set("compression.type", producer.compression.as_librdkafka())
        .set("message.max.bytes", producer.max_message_bytes.to_string())
        .set(
            "queue.buffering.max.kbytes",
            producer.max_buffer.kib_ceil().to_string(),
        )
        // The handle's permits bound the count; librdkafka's own count must not be lower.
        .set(
            "queue.buffering.max.messages",
            producer.max_in_flight.max(1).to_string(),
        )
        // With idempotence librdkafka keeps trying an event for as long as it takes
        // (0: no timeout), so it never fails one while later events of its partition
        // land; eventd's own deadline (`message_timeout`) decides when a write failed.
        .set(
            "message.timeout.ms",
            if producer.idempotence {
                "0".to_owned()
            } else {
                producer.message_timeout.as_millis().to_string()
            },
        )
        .set("message.send.max.retries", producer.retries.to_string())
        .set(
            "retry.backoff.ms",
            producer.retry_backoff.as_millis().to_string(),
        )
        .set(
            "retry.backoff.max.ms",
            producer.max_retry_backoff.as_millis().to_string(),
        );
    apply_options(config, &mut client, Role::Producer);
    client
}

/// Admin and metadata clients.
pub fn plain_config(config: &Config, brokers: &Brokers) -> ClientConfig {
    let mut client = base(config, brokers);
    apply_options(config, &mut client, Role::Plain);
    client
}

/// Builds every client configuration the daemon would use (each consumer entry, the
/// producer) without creating a client or connecting, so a misspelled property or a
/// bad value is reported by `check-config`, naming the key. A secret's value is never
/// repeated in the message.
pub fn check_client_configs(config: &Config) -> Vec<ConfigIssue> {
    let brokers = Brokers {
        bootstrap: config
            .kafka
            .brokers
            .clone()
            .unwrap_or_else(|| "localhost:9092".to_owned()),
        embedded: config.kafka.brokers.is_none(),
    };
    let mut clients: Vec<ClientConfig> = config
        .consumers
        .iter()
        .map(|consumer| consumer_config(config, &brokers, consumer, Some("check"), None))
        .collect();
    clients.push(producer_config(config, &brokers));
    let mut issues: Vec<ConfigIssue> = Vec::new();
    for client in clients {
        let Err(error) = client.create_native_config() else {
            continue;
        };
        let issue = config_issue(config, error);
        if !issues.contains(&issue) {
            issues.push(issue);
        }
    }
    issues
}

/// The issue for a property librdkafka refused, naming the key; a secret's value is
/// cut from librdkafka's message, which quotes it.
fn config_issue(config: &Config, error: KafkaError) -> ConfigIssue {
    let key_of = |property: &str| {
        if config.kafka.options.contains_key(property) {
            format!("kafka.options.{property:?}")
        } else {
            format!("librdkafka property {property:?} (set by eventd)")
        }
    };
    match error {
        KafkaError::ClientConfig(_, description, property, value) => ConfigIssue {
            key: key_of(&property),
            message: if is_secret(&property) && !value.is_empty() {
                description.replace(&value, "<redacted>")
            } else {
                description
            },
        },
        // A NUL byte in a name or value; the error says where, not what.
        other => ConfigIssue {
            key: "kafka.options".to_owned(),
            message: format!("cannot be passed to librdkafka: {other}"),
        },
    }
}

/// Context of a short-lived client that keeps librdkafka's last error, so a failed
/// request can say why the brokers did not answer ("SASL authentication error: SASL
/// SCRAM authentication failed", "SSL handshake failed: certificate verify failed")
/// instead of only "BrokerTransportFailure".
#[derive(Default)]
pub struct Diagnosis {
    last_error: Mutex<Option<String>>,
    /// A broker that closes the connection instead of answering ("Disconnected:
    /// connection reset by peer") raises no error event, only this log line.
    last_failure_logged: Mutex<Option<String>>,
}

fn remember(slot: &Mutex<Option<String>>, reason: &str) {
    let mut slot = match slot.lock() {
        Ok(slot) => slot,
        Err(poisoned) => poisoned.into_inner(),
    };
    *slot = Some(reason.to_owned());
}

fn recall(slot: &Mutex<Option<String>>) -> Option<String> {
    match slot.lock() {
        Ok(slot) => slot.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl Diagnosis {
    fn last_error(&self) -> Option<String> {
        recall(&self.last_error).or_else(|| recall(&self.last_failure_logged))
    }
}

/// `error`, followed by the last error librdkafka reported to `client`, if any. The
/// client's errors and logs wait in its main queue until served, so they are served
/// here first; call it only on a client that has no partitions assigned (a message
/// polled here would be dropped).
pub fn explain_failure(client: &BaseConsumer<Diagnosis>, error: &dyn std::fmt::Display) -> String {
    // A served log or error event also returns None, so None does not mean empty; the
    // bound is there because a client that keeps failing keeps queueing.
    for _ in 0..1000 {
        let _ = client.poll(Duration::ZERO);
    }
    match client.context().last_error() {
        Some(reason) => format!("{error} (last broker error: {reason})"),
        None => error.to_string(),
    }
}

/// What a healthy cluster says on its way up, which librdkafka retries by itself: a
/// coordinator still loading its state after a broker start.
fn is_start_up_noise(message: &str) -> bool {
    message.contains("Coordinator load in progress")
}

/// How long start-up noise may go on before it is a warning again: a coordinator
/// loads in seconds; one still loading after this needs an operator's look.
pub const START_UP_NOISE_PATIENCE: Duration = Duration::from_secs(30);

/// How loud a librdkafka log line is here: its own level, except for start-up noise,
/// which is information until it has lasted `START_UP_NOISE_PATIENCE` (`lasted`).
pub fn log_level(level: RDKafkaLogLevel, message: &str, lasted: Duration) -> tracing::Level {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::Level::ERROR,
        RDKafkaLogLevel::Warning
            if is_start_up_noise(message) && lasted < START_UP_NOISE_PATIENCE =>
        {
            tracing::Level::INFO
        }
        RDKafkaLogLevel::Warning => tracing::Level::WARN,
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::Level::INFO,
        RDKafkaLogLevel::Debug => tracing::Level::DEBUG,
    }
}

/// One run of repeated lines: when the first and the latest arrived. Lines further
/// apart than `START_UP_NOISE_PATIENCE` start a new run.
#[derive(Default)]
pub struct Repeats {
    run: Mutex<Option<(Instant, Instant)>>,
}

impl Repeats {
    /// Notes a line at `now`; how long its run has lasted.
    pub fn lasted(&self, now: Instant) -> Duration {
        let mut run = self
            .run
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = match *run {
            Some((first, latest))
                if now.saturating_duration_since(latest) < START_UP_NOISE_PATIENCE =>
            {
                first
            }
            _ => now,
        };
        *run = Some((first, now));
        now.saturating_duration_since(first)
    }
}

/// Start-up noise of every client of this process: one cluster coming up.
static START_UP_NOISE: std::sync::LazyLock<Repeats> = std::sync::LazyLock::new(Repeats::default);

/// Logs a librdkafka line at the level `log_level` gives it, with `fac` and `message`
/// as fields and the consumer it belongs to, if any. Start-up noise that is a warning
/// again says for how long it has gone on.
pub fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str, consumer: Option<&str>) {
    let lasted = if is_start_up_noise(message) {
        START_UP_NOISE.lasted(Instant::now())
    } else {
        Duration::ZERO
    };
    log_lasted(level, fac, message, consumer, lasted);
}

/// `log_librdkafka` for a line whose run of start-up noise has `lasted` so long.
fn log_lasted(
    level: RDKafkaLogLevel,
    fac: &str,
    message: &str,
    consumer: Option<&str>,
    lasted: Duration,
) {
    match log_level(level, message, lasted) {
        tracing::Level::ERROR => tracing::error!(consumer, fac, message, "librdkafka"),
        tracing::Level::WARN if lasted > Duration::ZERO => tracing::warn!(
            consumer,
            fac,
            message,
            lasting = %humantime::format_duration(Duration::from_secs(lasted.as_secs())),
            "librdkafka"
        ),
        tracing::Level::WARN => tracing::warn!(consumer, fac, message, "librdkafka"),
        tracing::Level::INFO => tracing::info!(consumer, fac, message, "librdkafka"),
        _ => tracing::debug!(consumer, fac, message, "librdkafka"),
    }
}

/// Whether a client error is news to an operator: reaching the end of a partition is
/// how a reader learns it caught up, not a failure.
pub fn is_worth_a_warning(error: &KafkaError) -> bool {
    error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF)
}

impl ClientContext for Diagnosis {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL" {
            remember(&self.last_failure_logged, message);
        }
        log_librdkafka(level, fac, message, None);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !is_worth_a_warning(&error) {
            tracing::debug!(%error, reason, "librdkafka");
            return;
        }
        tracing::warn!(%error, reason, "librdkafka");
        // "1/1 brokers are down" follows the reason they are down.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            return;
        }
        remember(&self.last_error, reason);
    }
}

impl ConsumerContext for Diagnosis {}

/// Why eventd cannot start writing: a topic it writes to is missing, or no broker told.
#[derive(Debug, thiserror::Error)]
pub enum TopicCheckError {
    #[error("{key}: topic {topic:?} does not exist on the brokers ({reason}); create it, eventd does not")]
    Missing {
        key: String,
        topic: String,
        reason: String,
    },
    #[error("cannot read topic metadata from {bootstrap}: {reason}")]
    Unreachable { bootstrap: String, reason: String },
}

/// Topics eventd writes to, each with the config key that names it.
pub fn written_topics(config: &Config) -> Vec<(String, String)> {
    let mut topics: Vec<(String, String)> = config
        .handlers
        .iter()
        .enumerate()
        .flat_map(|(i, handler)| {
            let output = handler
                .output
                .as_ref()
                .map(|output| (format!("handlers[{i}].output"), output.clone()));
            let dead_letter = handler
                .dead_letter
                .as_ref()
                .map(|topic| (format!("handlers[{i}].dead_letter"), topic.clone()));
            output.into_iter().chain(dead_letter)
        })
        .collect();
    if let Some(topic) = &config.dead_letter.topic {
        topics.push(("dead_letter.topic".to_owned(), topic.clone()));
    }
    topics
}

/// Every topic a config reads or writes, once, with what uses it first, in config
/// order: inputs, then outputs and dead-letter topics.
pub fn used_topics(config: &Config) -> Vec<(String, String)> {
    let mut used: Vec<(String, String)> = Vec::new();
    let mut add = |topic: &str, use_: String| {
        if !used.iter().any(|(t, _)| t == topic) {
            used.push((topic.to_owned(), use_));
        }
    };
    for (i, consumer) in config.consumers.iter().enumerate() {
        for topic in &consumer.topics {
            add(topic, format!("read (consumers[{i}].topics)"));
        }
    }
    for (key, topic) in written_topics(config) {
        add(&topic, format!("written ({key})"));
    }
    used
}

/// The partitions of each of `topics` on the brokers (`None`: it does not exist),
/// without creating any. Blocking; for `check-config --topics`.
pub fn partitions_of_topics(
    config: &Config,
    brokers: &Brokers,
    topics: &[String],
) -> Result<Vec<Option<usize>>, String> {
    let client: BaseConsumer<Diagnosis> = plain_config(config, brokers)
        .set("allow.auto.create.topics", "false")
        .create_with_context(Diagnosis::default())
        .map_err(|error| error.to_string())?;
    let metadata = client
        .fetch_metadata(None, crate::waits::METADATA_TIMEOUT)
        .map_err(|error| explain_failure(&client, &error))?;
    Ok(topics
        .iter()
        .map(|topic| {
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len())
        })
        .collect())
}

/// Checks that every topic eventd writes to exists, without creating any: a metadata
/// request may create a topic on brokers with auto-creation on, and a dead-letter
/// topic made that way (one partition, default retention) is not one an operator chose.
/// Blocking; run it off the async threads.
pub fn check_written_topics(config: &Config, brokers: &Brokers) -> Vec<TopicCheckError> {
    let topics = written_topics(config);
    if topics.is_empty() {
        return Vec::new();
    }
    let client: BaseConsumer<Diagnosis> = match plain_config(config, brokers)
        .set("allow.auto.create.topics", "false")
        .create_with_context(Diagnosis::default())
    {
        Ok(client) => client,
        Err(error) => {
            return vec![TopicCheckError::Unreachable {
                bootstrap: brokers.bootstrap.clone(),
                reason: error.to_string(),
            }]
        }
    };
    let mut problems = Vec::new();
    for (key, topic) in topics {
        match client.fetch_metadata(Some(&topic), crate::waits::METADATA_TIMEOUT) {
            Err(error) => {
                return vec![TopicCheckError::Unreachable {
                    bootstrap: brokers.bootstrap.clone(),
                    reason: explain_failure(&client, &error),
                }]
            }
            Ok(metadata) => {
                let found = metadata.topics().iter().find(|t| t.name() == topic);
                let reason = match found {
                    None => Some("not listed".to_owned()),
                    Some(t) => match t.error() {
                        Some(error) => Some(RDKafkaErrorCode::from(error).to_string()),
                        None if t.partitions().is_empty() => Some("no partitions".to_owned()),
                        None => None,
                    },
                };
                if let Some(reason) = reason {
                    problems.push(TopicCheckError::Missing { key, topic, reason });
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOADING: &str =
        "Failed to acquire idempotence PID from broker: Coordinator load in progress: retrying";

    #[test]
    fn a_healthy_cluster_on_its_way_up_is_not_a_warning() {
        assert_eq!(
            log_level(RDKafkaLogLevel::Warning, LOADING, Duration::ZERO),
            tracing::Level::INFO
        );
        assert_eq!(
            log_level(
                RDKafkaLogLevel::Warning,
                "Connection refused",
                Duration::ZERO
            ),
            tracing::Level::WARN
        );
        assert!(!is_worth_a_warning(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(is_worth_a_warning(&KafkaError::Global(
            RDKafkaErrorCode::AllBrokersDown
        )));
    }

    #[test]
    fn start_up_noise_that_lasts_is_a_warning_again() {
        let repeats = Repeats::default();
        let start = Instant::now();
        let second = Duration::from_secs(1);
        // A coordinator retried every few seconds for longer than the patience.
        let mut level = tracing::Level::INFO;
        for at in (0..=40).step_by(5) {
            let lasted = repeats.lasted(start + at * second);
            assert_eq!(lasted, at * second);
            level = log_level(RDKafkaLogLevel::Warning, LOADING, lasted);
            let expected = if lasted < START_UP_NOISE_PATIENCE {
                tracing::Level::INFO
            } else {
                tracing::Level::WARN
            };
            assert_eq!(level, expected, "after {lasted:?}");
        }
        assert_eq!(level, tracing::Level::WARN);
        // Quiet for longer than the patience: the next line starts a new run.
        let later = start + 40 * second + START_UP_NOISE_PATIENCE;
        assert_eq!(repeats.lasted(later), Duration::ZERO);
        assert_eq!(
            log_level(
                RDKafkaLogLevel::Warning,
                LOADING,
                repeats.lasted(later + second)
            ),
            tracing::Level::INFO
        );
    }

    #[test]
    fn start_up_noise_that_lasts_says_for_how_long() {
        let lines = crate::logging::tests::json_lines(|| {
            let long = Duration::from_millis(35_400);
            log_lasted(RDKafkaLogLevel::Warning, "FAIL", LOADING, None, long);
            let short = Duration::from_secs(3);
            log_lasted(RDKafkaLogLevel::Warning, "FAIL", LOADING, None, short);
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["lasting"], "35s", "{lines:?}");
        assert_eq!(lines[1]["level"], "INFO");
        assert!(lines[1].get("lasting").is_none(), "{lines:?}");
    }

    use rdkafka::types::RDKafkaConfRes;

    #[test]
    fn a_refused_secret_is_named_but_not_shown() {
        let mut config = Config::default();
        config
            .kafka
            .options
            .insert("ssl.key.password".to_owned(), "hunter2".to_owned());
        let issue = config_issue(
            &config,
            KafkaError::ClientConfig(
                RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                "Invalid value \"hunter2\" for configuration property \"ssl.key.password\""
                    .to_owned(),
                "ssl.key.password".to_owned(),
                "hunter2".to_owned(),
            ),
        );
        assert_eq!(issue.key, "kafka.options.\"ssl.key.password\"");
        assert!(!issue.message.contains("hunter2"), "{}", issue.message);
        assert!(issue.message.contains("<redacted>"));
    }

    #[test]
    fn each_client_gets_only_its_own_options() {
        let mut config = Config::default();
        for (key, value) in [("fetch.wait.max.ms", "50"), ("batch.size", "16384")] {
            config
                .kafka
                .options
                .insert(key.to_owned(), value.to_owned());
        }
        let brokers = Brokers {
            bootstrap: "localhost:9092".to_owned(),
            embedded: false,
        };
        let producer = producer_config(&config, &brokers);
        assert_eq!(producer.get("fetch.wait.max.ms"), None);
        assert_eq!(producer.get("batch.size"), Some("16384"));
        let consumer = consumer_config(
            &config,
            &brokers,
            &config
                .consumers
                .first()
                .cloned()
                .unwrap_or_else(test_consumer),
            None,
            None,
        );
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(consumer.get("batch.size"), None);
    }

    #[test]
    fn commit_interval_and_fetch_buffer_reach_librdkafka() {
        let config = Config::default();
        let brokers = Brokers {
            bootstrap: "localhost:9092".to_owned(),
            embedded: false,
        };
        let consumer: ConsumerConfig = serde_json::from_value(serde_json::json!({
            "name": "c", "topics": ["t"], "commit_interval": "250ms", "fetch_buffer": "256KiB"
        }))
        .unwrap_or_else(|error| panic!("consumer config: {error}"));
        let client = consumer_config(&config, &brokers, &consumer, Some("g"), None);
        assert_eq!(client.get("auto.commit.interval.ms"), Some("250"));
        assert_eq!(client.get("queued.max.messages.kbytes"), Some("256"));
        assert_eq!(client.get("fetch.message.max.bytes"), Some("262144"));
        assert_eq!(client.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(client.get("isolation.level"), Some("read_committed"));
    }

    #[test]
    fn the_embedded_broker_gets_a_short_session_so_a_rebalance_ends_in_seconds() {
        let config = Config::default();
        let consumer = test_consumer();
        let on = |embedded| {
            let brokers = Brokers {
                bootstrap: "localhost:9092".to_owned(),
                embedded,
            };
            let client = consumer_config(&config, &brokers, &consumer, Some("g"), None);
            (
                client.get("session.timeout.ms").map(str::to_owned),
                client.get("heartbeat.interval.ms").map(str::to_owned),
            )
        };
        assert_eq!(on(false), (Some("45000".to_owned()), None));
        assert_eq!(on(true), (Some("6000".to_owned()), Some("2000".to_owned())));

        let mut shorter = Config::default();
        shorter.kafka.session_timeout = Duration::from_secs(3);
        let brokers = Brokers {
            bootstrap: "localhost:9092".to_owned(),
            embedded: true,
        };
        let client = consumer_config(&shorter, &brokers, &consumer, Some("g"), None);
        assert_eq!(client.get("session.timeout.ms"), Some("3000"));
        assert_eq!(client.get("heartbeat.interval.ms"), Some("1000"));
    }

    fn test_consumer() -> ConsumerConfig {
        serde_json::from_value(serde_json::json!({"name": "c", "topics": ["t"]}))
            .unwrap_or_else(|error| panic!("consumer config: {error}"))
    }
}
