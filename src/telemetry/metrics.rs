//! Every metric eventd exports: names, descriptions and histogram buckets in one place.
//! Labels come only from bounded sets (consumer, topic, partition, handler, outcome,
//! kind, actor, version), never from event contents.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS_CONSUMED: &str = "eventd_events_consumed_total";
pub const EVENTS_HANDLED: &str = "eventd_events_handled_total";
pub const EVENTS_INVALID: &str = "eventd_events_invalid_total";
pub const EVENTS_DEAD_LETTERED: &str = "eventd_events_dead_lettered_total";
pub const HANDLER_DURATION: &str = "eventd_handler_duration_seconds";
pub const HANDLER_BATCH_SIZE: &str = "eventd_handler_batch_size";
pub const HANDLER_RETRIES: &str = "eventd_handler_retries_total";
pub const HANDLER_PANICS: &str = "eventd_handler_panics_total";
pub const HANDLER_PARKED_KEYS: &str = "eventd_handler_parked_keys";
pub const HANDLER_PARKED_OLDEST: &str = "eventd_handler_parked_oldest_seconds";
pub const PARTITION_IN_FLIGHT: &str = "eventd_partition_in_flight";
pub const PARTITION_BLOCKED: &str = "eventd_partition_blocked";
pub const DEAD_LETTER_FAILURES: &str = "eventd_dead_letter_failures_total";
pub const REBALANCES: &str = "eventd_rebalances_total";
pub const OFFSETS_COMMITTED: &str = "eventd_offsets_committed_total";
pub const COMMIT_FAILURES: &str = "eventd_commit_failures_total";
pub const OFFSET_RESETS: &str = "eventd_offset_resets_total";
pub const CONSUMER_FENCED: &str = "eventd_consumer_fenced_total";
pub const CONFIG_RELOADS: &str = "eventd_config_reloads_total";
pub const PARTITION_REWINDS: &str = "eventd_partition_rewinds_total";
pub const PARTITION_REPEATS: &str = "eventd_partition_repeats_total";
pub const PRODUCER_MESSAGES: &str = "eventd_producer_messages_total";
pub const PRODUCER_QUEUE_DEPTH: &str = "eventd_producer_queue_depth";
pub const PRODUCER_DELIVERY: &str = "eventd_producer_delivery_seconds";
pub const ACTOR_RESTARTS: &str = "eventd_actor_restarts_total";
pub const COUNT_WINDOWS_EMITTED: &str = "eventd_count_windows_emitted_total";
pub const WEBHOOK_DURATION: &str = "eventd_webhook_request_duration_seconds";
pub const WEBHOOK_RESPONSES: &str = "eventd_webhook_responses_total";
pub const BUILD_INFO: &str = "eventd_build_info";
pub const TLS_VERIFICATION_DISABLED: &str = "eventd_tls_verification_disabled";

/// Handler latency buckets: sub-millisecond log lines up to multi-second broker waits.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Batch size buckets: single events (a starved partition) up to the largest read.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Delivery latency buckets: a linger of milliseconds up to retries that run into
/// `producer.message_timeout` (30s by default).
const DELIVERY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Gauges read from where their value lives when /metrics is scraped, so no hot path
/// keeps a gauge of its own up to date per event. Each returns false once its source
/// is gone, and is then dropped.
type Sampler = Box<dyn Fn() -> bool + Send>;
static SCRAPE_SAMPLERS: parking_lot::Mutex<Vec<Sampler>> = parking_lot::const_mutex(Vec::new());

/// Calls `sample` before every scrape, until it returns false.
pub fn sample_on_scrape(sample: impl Fn() -> bool + Send + 'static) {
    SCRAPE_SAMPLERS.lock().push(Box::new(sample));
}

/// Brings every scrape-time gauge up to date.
pub fn sample_gauges() {
    SCRAPE_SAMPLERS.lock().retain(|sample| sample());
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Folds histogram samples into their buckets every second. The exporter keeps every
/// sample until then (one per delivery report, one per handled event), so without
/// this, memory would grow with the events between two scrapes, without bound when
/// nothing scrapes.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            handle.run_upkeep();
        }
    })
}

/// Installs the global Prometheus recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HANDLER_DURATION.to_owned()), DURATION_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(HANDLER_BATCH_SIZE.to_owned()),
            BATCH_SIZE_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(PRODUCER_DELIVERY.to_owned()),
            DELIVERY_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(WEBHOOK_DURATION.to_owned()), DELIVERY_BUCKETS)?
        .install_recorder()?;
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

fn describe() {
    describe_counter!(
        EVENTS_CONSUMED,
        "Events read from Kafka, valid or not, per consumer and topic"
    );
    describe_counter!(
        EVENTS_HANDLED,
        "Events per handler and topic by outcome: ok, skipped (not sampled, no group_by value), filtered (a filter did not match), retried (handled after failed attempts), dead_lettered (attempts used up)"
    );
    describe_counter!(
        HANDLER_RETRIES,
        "Attempts a handler made again on an event it had failed on"
    );
    describe_counter!(
        HANDLER_PANICS,
        "Panics of a handler's actors (each restarts the actor; eventd_actor_restarts_total counts the restarts)"
    );
    describe_gauge!(
        HANDLER_PARKED_KEYS,
        "Keys of a handler with an event waiting for a retry (its later events wait behind it), per handler"
    );
    describe_gauge!(
        HANDLER_PARKED_OLDEST,
        "How long the longest-waiting parked event of a handler has been waiting for its retries, 0 when none is parked"
    );
    describe_counter!(
        EVENTS_INVALID,
        "Events that could not be decoded; logged and sent to the dead-letter topic when one is set"
    );
    describe_counter!(
        EVENTS_DEAD_LETTERED,
        "Events written to a dead-letter topic, by source topic, handler (empty for undecodable events) and reason: undecodable, handler_error, handler_panic, produce_rejected, too_large"
    );
    describe_histogram!(
        HANDLER_DURATION,
        Unit::Seconds,
        "Time from a batch reaching its handler actor until it is finished (including the broker's acknowledgement of what it wrote), per event, averaged over the batch; one observation per batch"
    );
    describe_histogram!(
        HANDLER_BATCH_SIZE,
        Unit::Count,
        "Events per batch a handler actor received; batches of one from a busy partition mean it is starved"
    );
    describe_gauge!(
        PARTITION_IN_FLIGHT,
        "Events of a partition dispatched but not yet finished by every handler"
    );
    describe_gauge!(
        PARTITION_BLOCKED,
        "1 while a write the partition's offset waits on keeps failing (a dead-letter write, or a rejected write with no dead-letter topic)"
    );
    describe_counter!(
        DEAD_LETTER_FAILURES,
        "Failed attempts to write to the dead-letter topic; each is retried with backoff"
    );
    describe_counter!(
        REBALANCES,
        "Consumer group rebalances seen by a member, by kind (assign, revoke, error)"
    );
    describe_counter!(
        OFFSETS_COMMITTED,
        "Partition offsets the broker confirmed as committed"
    );
    describe_counter!(COMMIT_FAILURES, "Offset commits the broker refused");
    describe_counter!(
        CONFIG_RELOADS,
        "SIGHUP reloads by outcome: applied (every change in effect), partial (some keys need a restart), refused (invalid config kept out), failed"
    );
    describe_counter!(
        CONSUMER_FENCED,
        "Static group members fenced because another consumer joined with the same group.instance.id"
    );
    describe_counter!(
        OFFSET_RESETS,
        "Partitions whose stored offset no longer existed (retention deleted it), so auto.offset.reset moved them and skipped events"
    );
    describe_counter!(
        PARTITION_REWINDS,
        "Events that arrived below every offset a partition worker dispatched (they reached the main queue first); the partition restarts from an offset no later than theirs"
    );
    describe_counter!(
        PARTITION_REPEATS,
        "Events delivered again at an offset their partition worker had dispatched already (librdkafka fetches again after some broker errors); not dispatched twice"
    );
    describe_counter!(
        PRODUCER_MESSAGES,
        "Events produced, by topic and outcome (delivered, failed)"
    );
    describe_gauge!(
        PRODUCER_QUEUE_DEPTH,
        "Events handed to the producer and not yet acknowledged or failed"
    );
    describe_histogram!(
        PRODUCER_DELIVERY,
        Unit::Seconds,
        "Time from handing an event to the producer to its delivery report; of a batch sent together, its first event only"
    );
    describe_counter!(
        ACTOR_RESTARTS,
        "Actors restarted by their supervisor after a failure"
    );
    describe_counter!(
        COUNT_WINDOWS_EMITTED,
        "Count windows emitted, by handler and whether they closed early (partial)"
    );
    describe_gauge!(
        TLS_VERIFICATION_DISABLED,
        "1 while the brokers' TLS certificates are not verified (kafka.security.verify_certificates = false), else 0"
    );
    describe_histogram!(
        WEBHOOK_DURATION,
        Unit::Seconds,
        "Time from sending a webhook request to its answer (or its failure), by handler"
    );
    describe_counter!(
        WEBHOOK_RESPONSES,
        "Webhook requests by handler and answer: class 2xx, 3xx, 4xx, 5xx, or error (no answer: connection refused, timeout)"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs"
    );
}
