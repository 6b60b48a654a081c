//! librdkafka client settings shared by every consumer and the producer, built from the
//! config so each client differs only where its role needs it.

use rdkafka::ClientConfig;

use crate::config::{Config, ConsumerConfig, NamedStart, StartPosition};

/// Settings common to every client; `kafka.options` is applied last so operators can
/// override anything eventd sets.
fn base(config: &Config, brokers: &Brokers) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &brokers.bootstrap)
        .set("client.id", &config.kafka.client_id);
    if brokers.embedded {
        // The embedded broker answers an empty fetch only after fetch.wait.max.ms.
        client.set("fetch.wait.max.ms", "10");
    }
    client
}

fn apply_options(config: &Config, client: &mut ClientConfig) {
    for (key, value) in &config.kafka.options {
        client.set(key, value);
    }
}

/// Where the daemon's clients connect.
#[derive(Debug, Clone)]
pub struct Brokers {
    pub bootstrap: String,
    /// True when eventd runs its own in-process broker.
    pub embedded: bool,
}

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
        .set("auto.commit.interval.ms", "1000")
        .set(
            "session.timeout.ms",
            config.kafka.session_timeout.as_millis().to_string(),
        )
        .set(
            "partition.assignment.strategy",
            consumer.assignment.as_librdkafka(),
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
        .set("enable.partition.eof", "false");
    if let Some(group_id) = group_id {
        client.set("group.id", group_id);
    }
    if let Some(instance_id) = instance_id {
        client.set("group.instance.id", instance_id);
    }
    apply_options(config, &mut client);
    client
}

/// Producer settings from `[producer]`.
pub fn producer_config(config: &Config, brokers: &Brokers) -> ClientConfig {
    let producer = &config.producer;
    let mut client = base(config, brokers);
    client
        .set("acks", producer.acks.as_librdkafka())
        .set("enable.idempotence", producer.idempotence.to_string())
        .set(
            "linger.ms",
            producer.effective_linger().as_millis().to_string(),
        )
        .set("compression.type", producer.compression.as_librdkafka())
        .set("message.max.bytes", producer.max_message_bytes.to_string())
        .set(
            "message.timeout.ms",
            producer.message_timeout.as_millis().to_string(),
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
    apply_options(config, &mut client);
    client
}

/// Admin and metadata clients.
pub fn plain_config(config: &Config, brokers: &Brokers) -> ClientConfig {
    let mut client = base(config, brokers);
    apply_options(config, &mut client);
    client
}
