//! Rules that span several keys. Each broken rule becomes one `ConfigIssue` naming the
//! key, and all of them are reported at once so a config is fixed in one pass.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use super::{
    options, Acks, ByteSize, Config, ConsumerMode, FaultAction, HandlerConfig, HandlerKind,
    PartitionerConfig, PartitionerKind, StartPosition,
};

use crate::waits::SHUTDOWN_MARGIN;

/// One broken rule: the key at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn into_result(self) -> Result<(), Vec<ConfigIssue>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }

    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
        });
    }
}

fn validate_partitioner(config: &PartitionerConfig, prefix: &str, issues: &mut Issues) {
    let key = |field: &str| format!("{prefix}.{field}");
    if config.partitioner == PartitionerKind::Manual {
        if config.partition_field.is_some() && config.partition.is_some() {
            issues.push(
                key("partition"),
                format!(
                    "set {} or {}, not both",
                    key("partition"),
                    key("partition_field")
                ),
            );
        }
    } else {
        let kind = config.partitioner.as_str();
        for (field, set) in [
            ("partition", config.partition.is_some()),
            ("partition_field", config.partition_field.is_some()),
        ] {
            if set {
                issues.push(
                    key(field),
                    format!("only applies to partitioner = \"manual\", not {kind:?}"),
                );
            }
        }
    }
    if config.partition.is_some_and(|p| p < 0) {
        issues.push(key("partition"), "must not be negative");
    }
}

impl Config {
    /// Checks every cross-field rule; returns all broken ones.
    pub fn validate(&self) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Issues(Vec::new());
        self.validate_kafka(&mut issues);
        self.validate_consumers(&mut issues);
        self.validate_handlers(&mut issues);
        self.validate_written_topics(&mut issues);
        self.validate_client_configs(&mut issues);
        issues.into_result()
    }

    /// The rules `eventd produce` needs: Kafka and producer settings only.
    pub fn validate_producer_side(&self) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Issues(Vec::new());
        self.validate_kafka(&mut issues);
        self.validate_client_configs(&mut issues);
        issues.into_result()
    }

    /// Raw options must not take over what eventd owns, and every client configuration
    /// must build (names and values librdkafka accepts).
    fn validate_client_configs(&self, issues: &mut Issues) {
        let mut owned_set = false;
        for property in self.kafka.options.keys() {
            if let Some(instead) = options::owned(property) {
                owned_set = true;
                issues.push(
                    format!("kafka.options.{property:?}"),
                    format!("is set by eventd; use {instead}"),
                );
            }
        }
        // The clients are built from [kafka.security] too: a value refused there would
        // come back from librdkafka as a second, vaguer error.
        let security_refused = issues
            .0
            .iter()
            .any(|issue| issue.key.starts_with("kafka.security."));
        if !owned_set && !security_refused {
            issues.0.extend(crate::kafka::check_client_configs(self));
        }
    }

    /// Topics written must not feed back into what is read, and must be named.
    fn validate_written_topics(&self, issues: &mut Issues) {
        if let Some(topic) = &self.dead_letter.topic {
            if topic.trim().is_empty() {
                issues.push(
                    "dead_letter.topic",
                    "must not be empty; remove it to log and count undecodable events only",
                );
            }
            for consumer in &self.consumers {
                if consumer.topics.contains(topic) {
                    issues.push(
                        "dead_letter.topic",
                        format!("{topic:?} is read by consumer {:?}: its dead-lettered events would be read again", consumer.name),
                    );
                }
            }
        }
        for (i, handler) in self.handlers.iter().enumerate() {
            let Some(topic) = &handler.dead_letter else {
                continue;
            };
            let key = format!("handlers[{i}].dead_letter");
            if topic.trim().is_empty() {
                issues.push(
                    key.as_str(),
                    "must not be empty; remove it to use [dead_letter] topic",
                );
            }
            for consumer in &self.consumers {
                if consumer.topics.contains(topic) {
                    issues.push(
                        key.as_str(),
                        format!("{topic:?} is read by consumer {:?}: its dead-lettered events would be read again", consumer.name),
                    );
                }
            }
        }
        for (i, handler) in self.handlers.iter().enumerate() {
            let (Some(output), Some(consumer)) =
                (&handler.output, self.consumer(&handler.consumer))
            else {
                continue;
            };
            if consumer.topics.contains(output) {
                issues.push(
                    format!("handlers[{i}].output"),
                    format!("{output:?} is read by consumer {:?}, which feeds this handler: every event would loop", consumer.name),
                );
            }
        }
        // Dead-letter copies and count records carry no partition field of their own, so
        // the partitioner that places them (their topic's own, else the producer's) may
        // not read one: "manual" with a fixed partition is fine, a field is not.
        let mut exposed: Vec<(String, &String)> = self
            .handlers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.kind == HandlerKind::Count)
            .filter_map(|(i, h)| Some((format!("handlers[{i}].output"), h.output.as_ref()?)))
            .collect();
        if let Some(topic) = &self.dead_letter.topic {
            exposed.push(("dead_letter.topic".to_owned(), topic));
        }
        for (i, handler) in self.handlers.iter().enumerate() {
            if let Some(topic) = &handler.dead_letter {
                exposed.push((format!("handlers[{i}].dead_letter"), topic));
            }
        }
        for (key, topic) in exposed {
            match self.producer.outputs.get(topic) {
                Some(own)
                    if own.partitioner == PartitionerKind::Manual && own.partition.is_none() =>
                {
                    issues.push(
                        format!("producer.outputs.{topic:?}.partitioner"),
                        format!(
                            "\"manual\" reads a partition field, which the records of {key} = {topic:?} do not have; set a fixed partition or another partitioner"
                        ),
                    );
                }
                Some(_) => {}
                None if self.producer.partitioner == PartitionerKind::Manual
                    && self.producer.partition.is_none() =>
                {
                    issues.push(
                        "producer.partitioner",
                        format!(
                            "\"manual\" would also place {key} = {topic:?}; set it per topic in [producer.outputs.\"<topic>\"] instead, or give {topic:?} its own partitioner there"
                        ),
                    );
                }
                None => {}
            }
        }
    }

    fn validate_kafka(&self, issues: &mut Issues) {
        issues.0.extend(self.kafka.security.validate());
        if let Some(brokers) = &self.kafka.brokers {
            if brokers.trim().is_empty() {
                issues.push(
                    "kafka.brokers",
                    "is empty; remove it to run the embedded broker",
                );
            }
        }
        if self.kafka.session_timeout.is_zero() {
            issues.push("kafka.session_timeout", "must be above zero");
        }
        if !(1..=1000).contains(&self.embedded.partitions) {
            issues.push("embedded.partitions", "must be between 1 and 1000");
        }
        if self.producer.acks == Acks::None {
            issues.push(
                "producer.acks",
                "\"0\" gives up at-least-once: a write counts as done before any broker has it; use \"1\" or \"all\"",
            );
        }
        if let Err(reason) = crate::logging::check_level(&self.log.level) {
            issues.push("log.level", reason);
        }
        if self.producer.idempotence && self.producer.acks != Acks::All {
            issues.push(
                "producer.idempotence",
                "requires producer.acks = \"all\" (set producer.idempotence = false to use fewer acks)",
            );
        }
        self.validate_producer(issues);
        if self.demo.enabled && self.demo.keys == 0 {
            issues.push("demo.keys", "must be at least 1");
        }
        if self.supervision.restart_window.is_zero() {
            issues.push("supervision.restart_window", "must be above zero");
        }
        if self.supervision.backoff > self.supervision.max_backoff {
            issues.push(
                "supervision.backoff",
                "must not exceed supervision.max_backoff",
            );
        }
        if self.shutdown.grace.is_zero() {
            issues.push("shutdown.grace", "must be above zero");
        }
        if self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            issues.push(
                "metrics.listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:9464",
                    self.metrics.listen
                ),
            );
        }
    }

    fn validate_producer(&self, issues: &mut Issues) {
        let producer = &self.producer;
        if producer.max_message_bytes < 1000 {
            issues.push("producer.max_message_bytes", "must be at least 1000");
        }
        if producer.idempotence && producer.retries == 0 {
            issues.push(
                "producer.retries",
                "must be above 0 while producer.idempotence = true",
            );
        }
        // librdkafka takes whole milliseconds, and reads a timeout of 0 as "never".
        if producer.message_timeout < Duration::from_millis(1) {
            issues.push("producer.message_timeout", "must be at least 1ms");
        }
        if producer.effective_linger() >= producer.message_timeout {
            issues.push("producer.linger", "must be below producer.message_timeout");
        }
        if producer.retries > i32::MAX as u32 {
            issues.push("producer.retries", format!("must be at most {}", i32::MAX));
        }
        if producer.retry_backoff < Duration::from_millis(1) {
            issues.push("producer.retry_backoff", "must be at least 1ms");
        }
        if producer.retry_backoff > producer.max_retry_backoff {
            issues.push(
                "producer.retry_backoff",
                "must not exceed producer.max_retry_backoff",
            );
        }
        if producer.max_in_flight == 0 {
            issues.push("producer.max_in_flight", "must be at least 1");
        }
        // librdkafka's limits for queue.buffering.max.messages and .kbytes.
        if producer.max_in_flight > 2_147_483_647 {
            issues.push("producer.max_in_flight", "must be at most 2147483647");
        }
        if producer.max_buffer.bytes() < u64::from(producer.max_message_bytes) {
            issues.push(
                "producer.max_buffer",
                format!(
                    "{} is below producer.max_message_bytes ({}): the largest event would never fit",
                    producer.max_buffer, producer.max_message_bytes
                ),
            );
        }
        if producer.max_buffer.kib_ceil() > 2_147_483_647 {
            issues.push("producer.max_buffer", "must be below 2048GiB");
        }
        validate_partitioner(&producer.default_partitioner(), "producer", issues);
        for (topic, output) in &producer.outputs {
            validate_partitioner(output, &format!("producer.outputs.{topic:?}"), issues);
        }
    }

    fn validate_consumers(&self, issues: &mut Issues) {
        if self.consumers.is_empty() {
            issues.push("consumers", "at least one [[consumers]] entry is required");
        }
        let mut names = HashSet::new();
        for (i, consumer) in self.consumers.iter().enumerate() {
            let key = |field: &str| format!("consumers[{i}].{field}");
            if consumer.name.trim().is_empty() {
                issues.push(key("name"), "must not be empty");
            } else if !names.insert(consumer.name.as_str()) {
                issues.push(
                    key("name"),
                    format!("{:?} is used by another consumer", consumer.name),
                );
            }
            if consumer.topics.is_empty() {
                issues.push(key("topics"), "at least one topic is required");
            }
            if consumer.topics.iter().any(|t| t.trim().is_empty()) {
                issues.push(key("topics"), "topic names must not be empty");
            }
            if consumer.max_in_flight == 0 {
                issues.push(key("max_in_flight"), "must be at least 1");
            }
            // librdkafka's bounds for queued.max.messages.kbytes and
            // fetch.message.max.bytes.
            if consumer.fetch_buffer < ByteSize::kib(1)
                || consumer.fetch_buffer > ByteSize::mib(1000)
            {
                issues.push(
                    key("fetch_buffer"),
                    format!("{} must be between 1KiB and 1000MiB", consumer.fetch_buffer),
                );
            }
            if consumer.drain_timeout + SHUTDOWN_MARGIN > self.shutdown.grace {
                issues.push(
                    "shutdown.grace",
                    format!(
                        "{} must exceed {} ({}) by at least {}: the final commit, close and producer flush follow the drain",
                        humantime::format_duration(self.shutdown.grace),
                        key("drain_timeout"),
                        humantime::format_duration(consumer.drain_timeout),
                        humantime::format_duration(SHUTDOWN_MARGIN)
                    ),
                );
            }
            if consumer.commit_interval < Duration::from_millis(1) {
                issues.push(key("commit_interval"), "must be at least 1ms");
            }
            if consumer.drain_timeout >= self.kafka.session_timeout {
                issues.push(
                    key("drain_timeout"),
                    format!(
                        "{} must be below kafka.session_timeout ({}), or the group evicts the member while it drains",
                        humantime::format_duration(consumer.drain_timeout),
                        humantime::format_duration(self.kafka.session_timeout)
                    ),
                );
            }
            match consumer.mode {
                ConsumerMode::Group => {
                    if consumer.members() == 0 {
                        issues.push(key("members"), "must be at least 1");
                    }
                    if !matches!(consumer.start, StartPosition::Named(_)) {
                        issues.push(
                            key("start"),
                            "a group starts at \"earliest\" or \"latest\"; offsets and timestamps are for mode = \"partitions\"",
                        );
                    }
                    if consumer.commit_group.is_some() {
                        issues.push(
                            key("commit_group"),
                            "only for mode = \"partitions\"; a group commits under group_id",
                        );
                    }
                }
                ConsumerMode::Partitions => {
                    for (field, set) in [
                        ("members", consumer.members.is_some()),
                        ("assignment", consumer.assignment.is_some()),
                        ("static_membership", consumer.static_membership),
                    ] {
                        if set {
                            issues.push(
                                key(field),
                                "only for mode = \"group\"; a partitions consumer reads every partition itself",
                            );
                        }
                    }
                    if consumer.group_id.is_some() {
                        issues.push(
                            key("group_id"),
                            "only for mode = \"group\"; use commit_group to keep positions",
                        );
                    }
                    if let StartPosition::Timestamp { timestamp } = &consumer.start {
                        if chrono::DateTime::parse_from_rfc3339(timestamp).is_err() {
                            issues.push(
                                key("start.timestamp"),
                                format!("{timestamp:?} is not an RFC 3339 time"),
                            );
                        }
                    }
                    if let StartPosition::Offset { offset } = consumer.start {
                        if offset < 0 {
                            issues.push(key("start.offset"), "must not be negative");
                        }
                    }
                }
            }
        }
    }

    fn validate_handlers(&self, issues: &mut Issues) {
        let mut names = HashSet::new();
        for (i, handler) in self.handlers.iter().enumerate() {
            let key = |field: &str| format!("handlers[{i}].{field}");
            if handler.name.trim().is_empty() {
                issues.push(key("name"), "must not be empty");
            } else if !names.insert(handler.name.as_str()) {
                issues.push(
                    key("name"),
                    format!("{:?} is used by another handler", handler.name),
                );
            }
            for (below, reason) in handler.filter.problems() {
                issues.push(key(&format!("filter.{below}")), reason);
            }
            match self.consumer(&handler.consumer) {
                None => issues.push(
                    key("consumer"),
                    format!("{:?} names no [[consumers]] entry", handler.consumer),
                ),
                Some(consumer) => {
                    for topic in &handler.topics {
                        if !consumer.topics.contains(topic) {
                            issues.push(
                                key("topics"),
                                format!(
                                    "{topic:?} is not read by consumer {:?} (it reads {:?})",
                                    consumer.name, consumer.topics
                                ),
                            );
                        }
                    }
                }
            }
            if handler.concurrency == 0 {
                issues.push(key("concurrency"), "must be at least 1");
            }
            self.validate_retry(handler, &key, issues);
            validate_kind_fields(handler, &key, issues);
        }
    }
}

impl Config {
    fn validate_retry(
        &self,
        handler: &HandlerConfig,
        key: &dyn Fn(&str) -> String,
        issues: &mut Issues,
    ) {
        let retry = &handler.retry;
        if retry.max_attempts == 0 {
            issues.push(key("retry.max_attempts"), "must be at least 1");
        }
        if retry.backoff.is_zero() {
            issues.push(key("retry.backoff"), "must be at least 1ms");
        }
        if retry.max_backoff < retry.backoff {
            issues.push(
                key("retry.max_backoff"),
                format!(
                    "must not be below retry.backoff ({})",
                    humantime::format_duration(retry.backoff)
                ),
            );
        }
    }
}

/// Keys every handler takes, whatever its kind.
const HANDLER_KEYS: &[&str] = &[
    "name",
    "kind",
    "consumer",
    "topics",
    "filter",
    "concurrency",
    "retry",
    "dead_letter",
];

/// The keys a kind needs, and all the keys of its own it takes.
fn kind_keys(kind: HandlerKind) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        HandlerKind::Log => (&[], &["sample"]),
        HandlerKind::Forward => (&["output"], &["output", "fields"]),
        HandlerKind::Count => (
            &["output", "group_by", "window"],
            &["output", "group_by", "window"],
        ),
        HandlerKind::Webhook => (
            &["url"],
            &["url", "batch", "max_wait", "timeout", "headers"],
        ),
        HandlerKind::Fault => (
            &["action"],
            &[
                "action",
                "every",
                "offsets",
                "once",
                "times",
                "lasting",
                "sleep",
                "restart_delay",
                "output",
            ],
        ),
    }
}

/// Every key a handler of `kind` (as written in the file) takes, for an error naming
/// an unknown one; only the common keys for a kind that does not exist.
pub fn handler_keys(kind: &str) -> Vec<&'static str> {
    let own = match kind {
        "log" => kind_keys(HandlerKind::Log).1,
        "forward" => kind_keys(HandlerKind::Forward).1,
        "count" => kind_keys(HandlerKind::Count).1,
        "webhook" => kind_keys(HandlerKind::Webhook).1,
        #[cfg(feature = "fault-injection")]
        "fault" => kind_keys(HandlerKind::Fault).1,
        _ => &[],
    };
    HANDLER_KEYS.iter().chain(own).copied().collect()
}

/// Each kind has its own keys: the ones it needs must be set, the others must not be,
/// so a key that would be silently ignored is reported instead.
fn validate_kind_fields(
    handler: &HandlerConfig,
    key: &dyn Fn(&str) -> String,
    issues: &mut Issues,
) {
    let kind = handler.kind;
    let set = [
        ("sample", handler.sample.is_some()),
        ("output", handler.output.is_some()),
        ("fields", handler.fields.is_some()),
        ("group_by", handler.group_by.is_some()),
        ("window", handler.window.is_some()),
        ("action", handler.action.is_some()),
        ("every", handler.every.is_some()),
        ("offsets", handler.offsets.is_some()),
        ("once", handler.once),
        ("times", handler.times.is_some()),
        ("lasting", handler.lasting.is_some()),
        ("sleep", handler.sleep.is_some()),
        ("restart_delay", handler.restart_delay.is_some()),
        ("url", handler.url.is_some()),
        ("batch", handler.batch.is_some()),
        ("max_wait", handler.max_wait.is_some()),
        ("timeout", handler.timeout.is_some()),
        ("headers", handler.headers.is_some()),
    ];
    let (required, allowed) = kind_keys(kind);
    for (field, is_set) in set {
        if is_set && !allowed.contains(&field) {
            issues.push(key(field), format!("is not a key of kind = \"{kind}\""));
        }
    }
    for field in required {
        if !set.iter().any(|(name, is_set)| name == field && *is_set) {
            issues.push(key(field), format!("is required for kind = \"{kind}\""));
        }
    }
    if let Some(sample) = handler.sample {
        if !(0.0..=1.0).contains(&sample) {
            issues.push(key("sample"), "must be between 0.0 and 1.0");
        }
    }
    if let Some(output) = &handler.output {
        if output.trim().is_empty() {
            issues.push(key("output"), "must not be empty");
        }
    }
    if let Some(window) = handler.window {
        if window.as_millis() < 10 {
            issues.push(key("window"), "must be at least 10ms");
        }
    }
    if kind == HandlerKind::Webhook {
        validate_webhook(handler, key, issues);
    }
    if kind == HandlerKind::Fault {
        if !cfg!(feature = "fault-injection") {
            issues.push(
                key("kind"),
                "\"fault\" needs a build with the fault-injection feature",
            );
        }
        if handler.every.is_none() && handler.offsets.is_none() {
            issues.push(key("every"), "kind = \"fault\" needs every or offsets");
        }
        if handler.every == Some(0) {
            issues.push(key("every"), "must be at least 1");
        }
        if handler.once && handler.times.is_some() {
            issues.push(key("times"), "set either once or times, not both");
        }
        if handler.times == Some(0) {
            issues.push(key("times"), "must be at least 1");
        }
        if handler.action == Some(FaultAction::Sleep) && handler.sleep.is_none() {
            issues.push(key("sleep"), "is required for action = \"sleep\"");
        }
    }
}

/// Headers eventd sets itself on every webhook request.
const WEBHOOK_OWN_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "idempotency-key",
    "transfer-encoding",
    "connection",
];

/// Longest a webhook request may wait to fill.
const WEBHOOK_MAX_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

fn validate_webhook(handler: &HandlerConfig, key: &dyn Fn(&str) -> String, issues: &mut Issues) {
    if let Some(url) = &handler.url {
        match reqwest::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
                if !parsed.username().is_empty() || parsed.password().is_some() {
                    issues.push(
                        key("url"),
                        "must not hold credentials: set them in headers (env: or file:)",
                    );
                }
            }
            Ok(_) => issues.push(key("url"), "must be an http:// or https:// address"),
            Err(error) => issues.push(key("url"), format!("is not an address: {error}")),
        }
    }
    if handler.batch == Some(0) {
        issues.push(key("batch"), "must be at least 1");
    }
    if handler
        .timeout
        .is_some_and(|timeout| timeout.as_millis() < 1)
    {
        issues.push(key("timeout"), "must be at least 1ms");
    }
    if handler
        .max_wait
        .is_some_and(|wait| wait > WEBHOOK_MAX_WAIT_LIMIT)
    {
        issues.push(key("max_wait"), "must be at most 60s");
    }
    let mut seen = std::collections::HashSet::new();
    for (name, value) in handler.headers.iter().flatten() {
        let header_key = key(&format!("headers.{name}"));
        if !seen.insert(name.to_ascii_lowercase()) {
            issues.push(header_key, "is set twice (header names ignore case)");
        } else if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            issues.push(header_key, "is not a valid HTTP header name");
        } else if WEBHOOK_OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            issues.push(header_key, "is set by eventd on every request");
        } else if reqwest::header::HeaderValue::from_str(value.value()).is_err() {
            // The value is a secret: only where it comes from is named.
            issues.push(
                header_key,
                "holds a character an HTTP header cannot carry (a line break, a control character)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Subject, TransientRetries};
    use std::time::Duration;

    fn parse(toml: &str) -> Config {
        let layered = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .unwrap();
        serde_path_to_error::deserialize(layered).unwrap()
    }

    fn keys(config: &Config) -> Vec<String> {
        config
            .validate()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|issue| issue.key)
            .collect()
    }

    const BASE: &str = r#"
        [[consumers]]
        name = "analytics"
        topics = ["like", "comment"]

        [[handlers]]
        name = "log-all"
        kind = "log"
        consumer = "analytics"
    "#;

    #[test]
    fn minimal_config_is_valid() {
        assert!(parse(BASE).validate().is_ok());
    }

    #[test]
    fn retries_are_at_least_one_attempt_with_a_backoff_that_grows() {
        let retry = |attempts: u32| {
            parse(&format!(
                "{BASE}\n[handlers.retry]\nmax_attempts = {attempts}\n"
            ))
        };
        // Panics are budgeted per slot by events in a row, not by attempts: any number
        // of attempts is allowed, none is not.
        assert_eq!(keys(&retry(30)), Vec::<String>::new());
        assert_eq!(keys(&retry(0)), vec!["handlers[0].retry.max_attempts"]);
        let backoff = parse(&format!(
            "{BASE}\n[handlers.retry]\nbackoff = \"2s\"\nmax_backoff = \"1s\"\n"
        ));
        assert_eq!(keys(&backoff), vec!["handlers[0].retry.max_backoff"]);
    }

    #[test]
    fn transient_retries_are_forever_or_a_number() {
        let transient = |value: &str| {
            let toml = format!("{BASE}\n[handlers.retry]\ntransient = {value}\n");
            let layered = config::Config::builder()
                .add_source(config::File::from_str(&toml, config::FileFormat::Toml))
                .build()
                .unwrap();
            serde_path_to_error::deserialize::<_, Config>(layered)
                .map(|config| config.handlers[0].retry.transient)
                .map_err(|error| error.to_string())
        };
        assert_eq!(transient("\"forever\""), Ok(TransientRetries::Forever));
        assert_eq!(transient("5"), Ok(TransientRetries::Attempts(5)));
        for bad in ["\"always\"", "0"] {
            let error = transient(bad).unwrap_err();
            assert!(error.contains("forever"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_handler_dead_letter_topic_must_not_be_read_back() {
        let config = parse(&format!("{BASE}dead_letter = \"like\"\n"));
        assert_eq!(keys(&config), vec!["handlers[0].dead_letter"]);
        let own = parse(&format!("{BASE}dead_letter = \"log-all.dlq\"\n"));
        assert_eq!(keys(&own), Vec::<String>::new());
        assert_eq!(
            own.handler_dead_letter(&own.handlers[0])
                .map(String::as_str),
            Some("log-all.dlq")
        );
        let inherited = parse(&format!("{BASE}\n[dead_letter]\ntopic = \"dlq\"\n"));
        assert_eq!(
            inherited
                .handler_dead_letter(&inherited.handlers[0])
                .map(String::as_str),
            Some("dlq")
        );
    }

    #[test]
    fn the_grace_leaves_room_after_the_longest_drain() {
        let mut config = parse(BASE);
        config.shutdown.grace = Duration::from_secs(12);
        config.consumers[0].drain_timeout = Duration::from_secs(8);
        assert_eq!(keys(&config), vec!["shutdown.grace"]);
        config.consumers[0].drain_timeout = Duration::from_secs(7);
        assert_eq!(keys(&config), Vec::<String>::new());
    }

    #[test]
    fn group_only_keys_are_refused_on_a_partitions_consumer() {
        let config = parse(
            &BASE.replace(
                "topics = [\"like\", \"comment\"]",
                "topics = [\"like\", \"comment\"]\nmode = \"partitions\"\nmembers = 2\nassignment = \"range\"\nstatic_membership = true",
            ),
        );
        assert_eq!(
            keys(&config),
            vec![
                "consumers[0].members",
                "consumers[0].assignment",
                "consumers[0].static_membership"
            ]
        );
    }

    #[test]
    fn written_topics_must_not_loop_into_what_is_read() {
        let config = parse(&format!(
            "{BASE}\n[[handlers]]\nname = \"copy\"\nkind = \"forward\"\nconsumer = \"analytics\"\noutput = \"like\"\n[dead_letter]\ntopic = \"comment\"\n"
        ));
        assert_eq!(
            keys(&config),
            vec!["dead_letter.topic", "handlers[1].output"]
        );
        let empty = parse(&format!("{BASE}\n[dead_letter]\ntopic = \"\"\n"));
        assert_eq!(keys(&empty), vec!["dead_letter.topic"]);
    }

    #[test]
    fn a_producer_wide_manual_partitioner_must_spare_dead_letters_and_counts() {
        let manual = "[producer]\npartitioner = \"manual\"\npartition_field = \"shard\"\n";
        let config = parse(&format!("{manual}{BASE}\n[dead_letter]\ntopic = \"dlq\"\n"));
        assert_eq!(keys(&config), vec!["producer.partitioner"]);
        let exempt = parse(&format!(
            "{manual}[producer.outputs.dlq]\npartitioner = \"hash\"\n{BASE}\n[dead_letter]\ntopic = \"dlq\"\n"
        ));
        assert_eq!(keys(&exempt), Vec::<String>::new());
        let own_manual = parse(&format!(
            "[producer.outputs.dlq]\npartitioner = \"manual\"\npartition_field = \"shard\"\n{BASE}\n[dead_letter]\ntopic = \"dlq\"\n"
        ));
        assert_eq!(
            keys(&own_manual),
            vec!["producer.outputs.\"dlq\".partitioner"]
        );
        let fixed = parse(&format!(
            "[producer.outputs.dlq]\npartitioner = \"manual\"\npartition = 0\n{BASE}\n[dead_letter]\ntopic = \"dlq\"\n"
        ));
        assert_eq!(keys(&fixed), Vec::<String>::new());
    }

    #[test]
    fn raw_options_eventd_owns_are_refused() {
        let config = parse(&format!(
            "[kafka.options]\n\"enable.auto.commit\" = \"false\"\n\"socket.keepalive.enable\" = \"true\"\n{BASE}"
        ));
        let issues = config.validate().unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "kafka.options.\"enable.auto.commit\"");
        assert!(issues[0].message.contains("consumers[].commit_interval"));
    }

    #[test]
    fn drain_timeout_must_be_below_session_timeout() {
        let mut config = parse(BASE);
        config.consumers[0].drain_timeout = Duration::from_secs(45);
        config.shutdown.grace = Duration::from_secs(60);
        assert_eq!(keys(&config), vec!["consumers[0].drain_timeout"]);
    }

    #[test]
    fn handler_must_name_an_existing_consumer_and_its_topics() {
        let config = parse(&format!(
            "{BASE}\n[[handlers]]\nname = \"x\"\nkind = \"log\"\nconsumer = \"nobody\"\n\
             [[handlers]]\nname = \"y\"\nkind = \"log\"\nconsumer = \"analytics\"\ntopics = [\"browse\"]\n"
        ));
        assert_eq!(
            keys(&config),
            vec!["handlers[1].consumer", "handlers[2].topics"]
        );
    }

    #[test]
    fn names_must_be_unique() {
        let config = parse(&format!(
            "{BASE}\n[[handlers]]\nname = \"log-all\"\nkind = \"log\"\nconsumer = \"analytics\"\n"
        ));
        assert_eq!(keys(&config), vec!["handlers[1].name"]);
    }

    #[test]
    fn kind_specific_keys_are_required_and_foreign_ones_refused() {
        let config = parse(&format!(
            "{BASE}\n[[handlers]]\nname = \"c\"\nkind = \"count\"\nconsumer = \"analytics\"\nsample = 0.5\n"
        ));
        assert_eq!(
            keys(&config),
            vec![
                "handlers[1].sample",
                "handlers[1].output",
                "handlers[1].group_by",
                "handlers[1].window"
            ]
        );
    }

    #[test]
    fn idempotence_needs_acks_all() {
        let config = parse(&format!("[producer]\nacks = \"1\"\n{BASE}"));
        assert_eq!(keys(&config), vec!["producer.idempotence"]);
    }

    #[test]
    fn partitioner_keys_are_checked_where_they_are_set() {
        let config = parse(&format!(
            "[producer]\npartition = 3\n\
             [producer.outputs.\"comments.moderation\"]\npartitioner = \"manual\"\npartition = 1\npartition_field = \"p\"\n\
             [producer.outputs.b]\npartitioner = \"manual\"\npartition = -1\n{BASE}"
        ));
        assert_eq!(
            keys(&config),
            vec![
                "producer.partition",
                "producer.outputs.\"b\".partition",
                "producer.outputs.\"comments.moderation\".partition"
            ]
        );
    }

    #[test]
    fn idempotence_needs_retries() {
        let config = parse(&format!("[producer]\nretries = 0\n{BASE}"));
        assert_eq!(keys(&config), vec!["producer.retries"]);
    }

    #[test]
    fn filter_conditions_match_fields() {
        let config = parse(&format!(
            "{BASE}\n[handlers.filter]\naction = {{ equals = \"add\" }}\nkind = {{ in = [\"a\", \"b\"] }}\n"
        ));
        let filter = &config.handlers[0].filter.fields;
        let json = |raw| Some(Subject::Json(raw));
        assert!(filter["action"].matches(json(r#""add""#)));
        assert!(
            filter["action"].matches(json(r#""\u0061dd""#)),
            "escapes are read"
        );
        assert!(!filter["action"].matches(json(r#""added""#)));
        assert!(!filter["action"].matches(json(r#"["add"]"#)));
        assert!(!filter["action"].matches(None));
        assert!(filter["kind"].matches(json(r#""b""#)));
        assert!(!filter["kind"].matches(json(r#""c""#)));
        let numbers = parse(&format!(
            "{BASE}\n[handlers.filter]\nn = {{ equals = 1 }}\nseen = {{ exists = true }}\n"
        ));
        let filter = &numbers.handlers[0].filter.fields;
        assert!(filter["n"].matches(json("1")));
        assert!(
            !filter["n"].matches(json("1.0")),
            "as serde_json compares numbers"
        );
        assert!(!filter["n"].matches(json(r#""1""#)));
        assert!(filter["seen"].matches(json("null")), "a null field exists");
        assert!(!filter["seen"].matches(None));
    }

    #[test]
    fn a_filter_condition_that_cannot_decide_is_refused_naming_its_key() {
        let config = parse(&format!(
            "{BASE}\n[handlers.filter]\naction = {{}}\nheaders = {{ source = {{ any = [] }} }}\n"
        ));
        assert_eq!(
            keys(&config),
            vec![
                "handlers[0].filter.action",
                "handlers[0].filter.headers.source.any"
            ]
        );
    }

    #[test]
    fn group_start_cannot_be_an_offset() {
        let config = parse(&BASE.replace(
            "topics = [\"like\", \"comment\"]",
            "topics = [\"like\"]\nstart = { offset = 3 }",
        ));
        assert_eq!(keys(&config), vec!["consumers[0].start"]);
    }
}
