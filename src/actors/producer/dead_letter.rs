//! Dead-letter copies and the blocked marker of a partition. A dead-letter write must
//! land before the offset may move, so one that keeps failing is retried with the
//! backoff of `[handlers.retry]` and is loud: each failure is counted, the source
//! partition is shown blocked, and the reason is logged while the backoff grows. A
//! liveness restart cannot fix a missing or forbidden topic, so `/healthz` stays as
//! it is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

use metrics::Gauge;

use super::{Outgoing, ProducerHandle};
use crate::config::RetryConfig;
use crate::event::{headers, Headers, Source};
use crate::telemetry::metrics::{DEAD_LETTER_FAILURES, EVENTS_DEAD_LETTERED, PARTITION_BLOCKED};

/// Once the backoff stopped growing, every this many failures is logged again.
const LOG_EVERY_AT_MAX: u32 = 6;

/// Why an event was dead-lettered: the `reason` label of
/// `eventd_events_dead_lettered_total`, a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Undecodable,
    HandlerError,
    HandlerPanic,
    ProduceRejected,
    TooLarge,
    /// A webhook refused the event (a 4xx for it alone).
    WebhookRejected,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::HandlerError => "handler_error",
            Reason::HandlerPanic => "handler_panic",
            Reason::ProduceRejected => "produce_rejected",
            Reason::TooLarge => "too_large",
            Reason::WebhookRejected => "webhook_rejected",
        }
    }
}

/// Why and by whom an event was given up, written on its dead-letter copy.
pub struct Provenance<'a> {
    /// The handler that gave up; `None` for an event no handler could read.
    pub handler: Option<&'a str>,
    pub reason: Reason,
    pub error: &'a str,
    /// Attempts made, for a handler's failure.
    pub attempts: Option<u32>,
}

/// The dead-letter copy of an event: its key, value and headers as read, plus where
/// it was read (`eventd.source.*`) and why it was given up.
pub fn dead_letter_copy(
    topic: &str,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    mut kafka_headers: Headers,
    source: &Source,
    provenance: &Provenance<'_>,
) -> Outgoing {
    kafka_headers.extend(headers::source(source));
    if let Some(handler) = provenance.handler {
        kafka_headers.push((headers::HANDLER.into(), handler.as_bytes().to_vec()));
    }
    kafka_headers.push((headers::ERROR.into(), provenance.error.as_bytes().to_vec()));
    if let Some(attempts) = provenance.attempts {
        kafka_headers.push((headers::ATTEMPTS.into(), attempts.to_string().into_bytes()));
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    kafka_headers.push((headers::FAILED_AT.into(), now.into_bytes()));
    Outgoing {
        topic: topic.to_owned(),
        key,
        payload,
        headers: kafka_headers,
    }
}

/// Whether a partition has writes that keep failing; `eventd_partition_blocked` is 1
/// while any of them does. One per owner of the partition (its partition worker): a new
/// owner takes the series over, and only the current owner sets or clears it, so an
/// old worker's leftovers (which no longer retry anything) cannot clear what the new
/// one shows.
pub struct Blocked {
    /// The consumer reading the partition, for log lines.
    consumer: String,
    stuck: AtomicUsize,
    gauge: Gauge,
    /// (consumer, topic, partition): the series' labels.
    series: (String, String, i32),
    /// Which owner of the series this is.
    owner: u64,
}

/// The current owner of each partition's blocked series.
static OWNERS: LazyLock<Mutex<HashMap<(String, String, i32), u64>>> = LazyLock::new(Mutex::default);
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

impl Blocked {
    /// The blocked marker of a new owner of the partition, which takes over its series.
    pub fn new(consumer: &str, topic: &str, partition: i32) -> Self {
        let series = (consumer.to_owned(), topic.to_owned(), partition);
        let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
        let gauge = metrics::gauge!(PARTITION_BLOCKED,
            "consumer" => consumer.to_owned(),
            "topic" => topic.to_owned(),
            "partition" => partition.to_string());
        OWNERS.lock().insert(series.clone(), owner);
        gauge.set(0.0);
        Self {
            consumer: consumer.to_owned(),
            stuck: AtomicUsize::new(0),
            gauge,
            series,
            owner,
        }
    }

    /// Marks the partition blocked until the returned mark is dropped.
    pub fn hold(self: &Arc<Self>) -> BlockedMark {
        self.enter();
        BlockedMark(self.clone())
    }

    fn enter(&self) {
        if self.stuck.fetch_add(1, Ordering::AcqRel) == 0 {
            self.show(1.0);
        }
    }

    fn leave(&self) {
        if self.stuck.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.show(0.0);
        }
    }

    fn show(&self, value: f64) {
        // Under the lock, so a new owner's takeover cannot fall between check and set.
        let owners = OWNERS.lock();
        if owners.get(&self.series) == Some(&self.owner) {
            self.gauge.set(value);
        }
    }

    /// Whether the series shows this owner blocked (and it is the current owner).
    #[cfg(test)]
    fn shown(&self) -> bool {
        OWNERS.lock().get(&self.series) == Some(&self.owner)
            && self.stuck.load(Ordering::Acquire) > 0
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        let mut owners = OWNERS.lock();
        if owners.get(&self.series) == Some(&self.owner) {
            owners.remove(&self.series);
            self.gauge.set(0.0);
        }
    }
}

/// The partition stays marked blocked while this lives.
pub struct BlockedMark(Arc<Blocked>);

impl Drop for BlockedMark {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Writes `copy` to the dead-letter topic until the broker acknowledges it, backing off
/// under `retry` between attempts; returns false if `keep_trying` says the source
/// partition is gone first. `handler` (empty for undecodable events) and `reason`
/// label the count of dead-lettered events. For the partition worker's undecodable
/// events; a handler's dead-letter copies go through its outbox instead.
pub async fn write_dead_letter(
    producer: &ProducerHandle,
    copy: Outgoing,
    source: &Source,
    blocked: &Blocked,
    (handler, reason): (&str, Reason),
    retry: &RetryConfig,
    keep_trying: impl Fn() -> bool,
) -> bool {
    let failures_total = metrics::counter!(DEAD_LETTER_FAILURES, "topic" => copy.topic.clone());
    let mut failures = 0u32;
    let written = loop {
        if !keep_trying() {
            break false;
        }
        let sent = match producer.enqueue_dead_letter(copy.clone()).await {
            Ok(pending) => pending.wait().await,
            Err(error) => Err(error),
        };
        let error = match sent {
            Ok(_) => {
                metrics::counter!(EVENTS_DEAD_LETTERED,
                    "topic" => source.topic.to_string(),
                    "handler" => handler.to_owned(),
                    "reason" => reason.as_str())
                .increment(1);
                break true;
            }
            Err(error) => error,
        };
        failures += 1;
        failures_total.increment(1);
        if failures == 1 {
            blocked.enter();
        }
        let delay = retry.delay_after(failures);
        // Logged while the backoff grows, then every few failures at the longest.
        if delay < retry.max_backoff.mul_f64(0.75) || failures % LOG_EVERY_AT_MAX == 0 {
            tracing::error!(consumer = %blocked.consumer, topic = %source.topic, partition = source.partition,
                writing_to = %copy.topic, offset = source.offset, failures,
                retry_in_ms = delay.as_millis() as u64, reason = %error,
                "dead-letter write failed; the partition cannot move past it");
        }
        tokio::time::sleep(delay).await;
    };
    if failures > 0 {
        blocked.leave();
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_current_owner_of_a_partition_sets_or_clears_its_blocked_series() {
        let old = Arc::new(Blocked::new("main", "blocked-test", 3));
        let old_mark = old.hold();
        assert!(old.shown());
        // The partition is reassigned: a new worker takes the series over, at 0.
        let new = Arc::new(Blocked::new("main", "blocked-test", 3));
        assert!(!old.shown(), "the old owner no longer shows");
        let new_mark = new.hold();
        // The old worker's write finally lands: that must not clear the new one's mark.
        drop(old_mark);
        assert!(new.shown(), "the new owner's mark stands");
        drop(old);
        assert!(
            new.shown(),
            "dropping the old owner leaves the series alone"
        );
        drop(new_mark);
        assert!(!new.shown());
    }
}
