//! Dead-letter writes that must land before an offset may move: an undecodable event,
//! or one whose write the broker refused for good. Such a write is retried until the
//! broker acknowledges it, with doubling backoff, and a write that keeps failing is
//! loud: each failure is counted, the source partition is marked blocked, and the
//! reason is logged each time the backoff doubles. A liveness restart cannot fix a
//! missing or forbidden topic, so `/healthz` stays as it is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics::Gauge;

use super::{Outgoing, ProducerHandle};
use crate::event::Source;
use crate::telemetry::metrics::{DEAD_LETTER_FAILURES, EVENTS_DEAD_LETTERED, PARTITION_BLOCKED};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Once the backoff stopped doubling, every this many failures is logged again.
const LOG_EVERY_AT_MAX: u32 = 6;

/// Whether a partition has writes that keep failing; `eventd_partition_blocked` is 1
/// while any of them does.
pub struct Blocked {
    stuck: AtomicUsize,
    gauge: Gauge,
}

impl Blocked {
    pub fn new(consumer: &str, topic: &str, partition: i32) -> Self {
        let gauge = metrics::gauge!(PARTITION_BLOCKED,
            "consumer" => consumer.to_owned(),
            "topic" => topic.to_owned(),
            "partition" => partition.to_string());
        gauge.set(0.0);
        Self {
            stuck: AtomicUsize::new(0),
            gauge,
        }
    }

    fn enter(&self) {
        if self.stuck.fetch_add(1, Ordering::AcqRel) == 0 {
            self.gauge.set(1.0);
        }
    }

    fn leave(&self) {
        if self.stuck.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.gauge.set(0.0);
        }
    }
}

/// Retries of one write: the backoff, how many failed, and whether the partition was
/// marked blocked for it.
pub struct Retry<'a> {
    blocked: &'a Blocked,
    backoff: Duration,
    failures: u32,
}

impl<'a> Retry<'a> {
    pub fn new(blocked: &'a Blocked) -> Self {
        Self {
            blocked,
            backoff: FIRST_BACKOFF,
            failures: 0,
        }
    }

    /// Records a failure (logged when the backoff doubles) and sleeps the backoff.
    pub async fn failed(&mut self, what: &str, topic: &str, source: &Source, reason: &str) {
        self.failures += 1;
        if self.failures == 1 {
            self.blocked.enter();
        }
        let doubling = self.backoff < MAX_BACKOFF;
        if doubling || self.failures % LOG_EVERY_AT_MAX == 0 {
            tracing::error!(topic, source_topic = %source.topic, partition = source.partition,
                offset = source.offset, failures = self.failures,
                retry_in_ms = self.backoff.as_millis() as u64, reason,
                "{what} failed; the partition cannot move past it");
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// The write landed, or is given up because its partition is gone.
    pub fn done(self) {
        if self.failures > 0 {
            self.blocked.leave();
        }
    }
}

/// Writes `copy` to the dead-letter topic until the broker acknowledges it; returns
/// false if `keep_trying` says the source partition is gone first.
pub async fn write_dead_letter(
    producer: &ProducerHandle,
    copy: Outgoing,
    source: &Source,
    blocked: &Blocked,
    keep_trying: impl Fn() -> bool,
) -> bool {
    let failures = metrics::counter!(DEAD_LETTER_FAILURES, "topic" => copy.topic.clone());
    let mut retry = Retry::new(blocked);
    loop {
        let sent = match producer.enqueue_dead_letter(copy.clone()).await {
            Ok(pending) => pending.wait().await,
            Err(error) => Err(error),
        };
        match sent {
            Ok(_) => {
                metrics::counter!(EVENTS_DEAD_LETTERED, "topic" => source.topic.to_string())
                    .increment(1);
                retry.done();
                return true;
            }
            Err(error) => {
                failures.increment(1);
                retry
                    .failed("dead-letter write", &copy.topic, source, &error.to_string())
                    .await;
                if !keep_trying() {
                    retry.done();
                    return false;
                }
            }
        }
    }
}
