//! Raw librdkafka properties in `[kafka.options]`: which ones eventd owns (and so
//! refuses there, naming its own key), which belong to consumers or to the producer
//! only (each client gets only its own), and which hold secrets (never echoed back).

/// Properties eventd sets itself, with the key to use instead. Setting them raw would
/// switch off at-least-once (offset store, commits), bypass a check (session timeout
/// against drain_timeout) or silently override a first-class key.
pub const OWNED: &[(&str, &str)] = &[
    (
        "enable.auto.offset.store",
        "nothing: eventd stores an offset only after every handler finished it",
    ),
    ("enable.auto.commit", "consumers[].commit_interval"),
    ("auto.commit.enable", "consumers[].commit_interval"),
    ("auto.commit.interval.ms", "consumers[].commit_interval"),
    ("session.timeout.ms", "kafka.session_timeout"),
    (
        "group.id",
        "consumers[].group_id (or commit_group for mode = \"partitions\")",
    ),
    ("group.instance.id", "consumers[].static_membership"),
    ("partition.assignment.strategy", "consumers[].assignment"),
    (
        "isolation.level",
        "nothing: eventd reads committed records only (read_committed)",
    ),
    ("auto.offset.reset", "consumers[].start"),
    (
        "enable.partition.eof",
        "nothing: eventd reads partitions as streams",
    ),
    ("queued.max.messages.kbytes", "consumers[].fetch_buffer"),
    (
        "queued.min.messages",
        "consumers[].fetch_buffer and max_in_flight",
    ),
    ("fetch.message.max.bytes", "consumers[].fetch_buffer"),
    ("max.partition.fetch.bytes", "consumers[].fetch_buffer"),
    ("bootstrap.servers", "kafka.brokers"),
    ("metadata.broker.list", "kafka.brokers"),
    ("client.id", "kafka.client_id"),
    ("enable.idempotence", "producer.idempotence"),
    ("acks", "producer.acks"),
    ("request.required.acks", "producer.acks"),
    ("linger.ms", "producer.linger"),
    ("queue.buffering.max.ms", "producer.linger"),
    ("compression.type", "producer.compression"),
    ("compression.codec", "producer.compression"),
    ("message.max.bytes", "producer.max_message_bytes"),
    ("statistics.interval.ms", "metrics.lag_interval"),
    ("message.timeout.ms", "producer.message_timeout"),
    ("delivery.timeout.ms", "producer.message_timeout"),
    ("message.send.max.retries", "producer.retries"),
    ("retries", "producer.retries"),
    ("retry.backoff.ms", "producer.retry_backoff"),
    ("retry.backoff.max.ms", "producer.max_retry_backoff"),
    ("queue.buffering.max.kbytes", "producer.max_buffer"),
    ("queue.buffering.max.messages", "producer.max_in_flight"),
    ("partitioner", "producer.partitioner"),
    (
        "transactional.id",
        "nothing: eventd does not write transactionally",
    ),
];

/// Consumer-only properties (librdkafka's CONFIGURATION.md, C/P = C).
pub const CONSUMER_ONLY: &[&str] = &[
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "check.crcs",
    "consume.callback.max.messages",
    "coordinator.query.interval.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "fetch.error.backoff.ms",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "fetch.min.bytes",
    "fetch.queue.backoff.ms",
    "fetch.wait.max.ms",
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.protocol.type",
    "group.remote.assignor",
    "heartbeat.interval.ms",
    "isolation.level",
    "max.partition.fetch.bytes",
    "max.poll.interval.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "partition.assignment.strategy",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "session.timeout.ms",
];

/// Producer-only properties (librdkafka's CONFIGURATION.md, C/P = P).
pub const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "batch.num.messages",
    "batch.size",
    "compression.codec",
    "compression.level",
    "compression.type",
    "delivery.report.only.error",
    "delivery.timeout.ms",
    "enable.gapless.guarantee",
    "enable.idempotence",
    "linger.ms",
    "message.send.max.retries",
    "message.timeout.ms",
    "partitioner",
    "produce.offset.report",
    "queue.buffering.backpressure.threshold",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "queuing.strategy",
    "request.required.acks",
    "request.timeout.ms",
    "retries",
    "sticky.partitioning.linger.ms",
    "transaction.timeout.ms",
    "transactional.id",
];

/// Properties whose values are secrets: an error about them never shows the value.
pub const SECRET: &[&str] = &[
    "sasl.password",
    "sasl.username",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl_key",
];

/// What to use instead of a property eventd owns.
pub fn owned(property: &str) -> Option<&'static str> {
    OWNED
        .iter()
        .chain(super::security::PROPERTIES)
        .find(|(name, _)| *name == property)
        .map(|(_, instead)| *instead)
}

pub fn is_secret(property: &str) -> bool {
    SECRET.contains(&property)
}

/// The clients a property is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
    /// Metadata and admin lookups.
    Plain,
}

/// True when `property` applies to a client of `role`.
pub fn applies_to(property: &str, role: Role) -> bool {
    match role {
        Role::Consumer => !PRODUCER_ONLY.contains(&property),
        Role::Producer => !CONSUMER_ONLY.contains(&property),
        Role::Plain => !PRODUCER_ONLY.contains(&property) && !CONSUMER_ONLY.contains(&property),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_only_its_own_properties() {
        assert!(applies_to("fetch.wait.max.ms", Role::Consumer));
        assert!(!applies_to("fetch.wait.max.ms", Role::Producer));
        assert!(applies_to("batch.size", Role::Producer));
        assert!(!applies_to("batch.size", Role::Consumer));
        assert!(applies_to("socket.keepalive.enable", Role::Producer));
        assert!(applies_to("socket.keepalive.enable", Role::Consumer));
        assert!(!applies_to("batch.size", Role::Plain));
    }

    #[test]
    fn owned_properties_name_the_key_to_use() {
        assert_eq!(owned("session.timeout.ms"), Some("kafka.session_timeout"));
        assert_eq!(
            owned("enable.auto.commit"),
            Some("consumers[].commit_interval")
        );
        assert_eq!(owned("socket.keepalive.enable"), None);
        for verification in [
            "enable.ssl.certificate.verification",
            "ssl.endpoint.identification.algorithm",
        ] {
            assert!(owned(verification)
                .is_some_and(|instead| instead.starts_with("kafka.security.verify_certificates")));
        }
    }
}
