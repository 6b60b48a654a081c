//! `count`: processing-time tumbling windows, aligned to the wall clock, counting events
//! per value of `group_by`. At window close one JSON record per value goes to `output`.
//!
//! Counting finishes an event for `max_in_flight`, but the partition's stored offset is
//! held at the first offset of the oldest window not yet emitted and acknowledged, so a
//! crash recounts rather than loses. Windows live outside the actor and survive its
//! restarts. Counts are per process: with several processes (or an early emit on
//! revoke and shutdown) one (value, window) may appear in several records, which sum.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use ractor::{ActorId, ActorProcessingErr};
use serde_json::json;

use super::super::actor::BatchOutcome;
use super::super::{Batch, BatchSource, HandlerPool};
use crate::actors::producer::dead_letter::{Blocked, BlockedMark, Reason};
use crate::actors::producer::{Outgoing, PendingDelivery, ProduceError, ProducerHandle};
use crate::config::{HandlerConfig, RetryConfig};
use crate::event::{headers, Event};
use crate::telemetry::metrics::{
    COUNT_WINDOWS_EMITTED, DEAD_LETTER_FAILURES, EVENTS_DEAD_LETTERED,
};

/// Windows of one slot: open ones by start time in epoch milliseconds, and closed ones
/// whose records are not all acknowledged yet.
#[derive(Default)]
pub struct CountWindows {
    windows: BTreeMap<i64, Window>,
    closing: Vec<Closing>,
    /// The id of the next window opened.
    next_id: i64,
}

#[derive(Default)]
struct Window {
    /// Names the window in the offset holds of its partitions: a window closed early
    /// (revoke, shutdown) and the one opened after it for the same start are two
    /// windows, and releasing the first must not free the offsets the second holds.
    id: i64,
    /// Keyed by event values: foldhash, randomly seeded per map, is several times
    /// cheaper than SipHash for the short values counted per event.
    counts: HashMap<String, u64, foldhash::fast::RandomState>,
    topics: BTreeSet<String>,
    /// Workers whose offsets this window holds; told when it is emitted.
    contributors: HashMap<ActorId, Contributor>,
}

/// A partition whose offsets a window holds.
#[derive(Clone)]
struct Contributor {
    worker: Arc<dyn BatchSource>,
    /// Shown blocked while a record of the window cannot be written anywhere.
    blocked: Arc<Blocked>,
}

/// A closed window: its records, each acknowledged on its own, and the partitions it
/// frees once the last one is.
struct Closing {
    id: i64,
    start: i64,
    partial: bool,
    records: Vec<RecordWrite>,
    contributors: Vec<Contributor>,
}

/// One record of a closed window on its way to the broker.
struct RecordWrite {
    /// To `output`, or to the dead-letter topic once the broker refused it for good.
    record: Outgoing,
    state: WriteState,
    /// Failed attempts of the current destination, for the backoff.
    failures: u32,
    /// Set once the record goes to the dead-letter topic, with why.
    dead_letter: Option<Reason>,
    /// The contributors shown blocked while the record cannot be written anywhere.
    blocked: Vec<BlockedMark>,
}

enum WriteState {
    /// To be sent at (or after) this time.
    Due(Instant),
    /// Acknowledged by the broker.
    Landed,
    /// Queued in the producer since this time; never sent again while it may still land,
    /// so a window's record is not written twice.
    Queued(PendingDelivery, Instant),
}

pub struct Count {
    handler: Arc<str>,
    group_by: String,
    window: Duration,
    output: String,
    producer: ProducerHandle,
    windows: Arc<Mutex<CountWindows>>,
    /// Where a record the broker refuses for good goes, so its window can close.
    dead_letter: Option<String>,
    /// Backoff of records that failed: the handler's `[handlers.retry]`.
    retry: RetryConfig,
}

impl Count {
    pub fn new(
        config: &HandlerConfig,
        producer: ProducerHandle,
        windows: Arc<Mutex<CountWindows>>,
        dead_letter: Option<String>,
    ) -> Self {
        Self {
            handler: Arc::from(config.name.as_str()),
            group_by: config.group_by.clone().unwrap_or_default(),
            window: config.window.unwrap_or(Duration::from_secs(60)),
            output: config.output.clone().unwrap_or_default(),
            producer,
            windows,
            dead_letter,
            retry: config.retry.clone(),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn window_ms(&self) -> i64 {
        self.window.as_millis().max(1) as i64
    }

    pub fn handle(&mut self, batch: &Batch) -> Result<BatchOutcome, ActorProcessingErr> {
        let now = Utc::now().timestamp_millis();
        let start = now - now.rem_euclid(self.window_ms());
        let mut outcome = BatchOutcome::default();
        let counted: Vec<(Cow<'_, str>, &Event)> = batch
            .events
            .iter()
            .filter_map(|event| Some((event.field_text(&self.group_by)?, &**event)))
            .collect();
        outcome.skipped = batch.events.len() - counted.len();
        let Some((_, first)) = counted.first() else {
            return Ok(outcome);
        };
        let mut store = self.windows.lock();
        let CountWindows {
            windows, next_id, ..
        } = &mut *store;
        let window = windows.entry(start).or_insert_with(|| {
            *next_id += 1;
            Window {
                id: *next_id,
                ..Window::default()
            }
        });
        outcome.holds.push((window.id, first.source.offset));
        let mut last_topic: Option<&Arc<str>> = None;
        for (value, event) in counted {
            // Most values are counted already: no key allocation for them.
            match window.counts.get_mut(&*value) {
                Some(count) => *count += 1,
                None => {
                    window.counts.insert(value.into_owned(), 1);
                }
            }
            // A batch comes from one partition: its topic is looked up once.
            let topic = &event.source.topic;
            if last_topic.is_none_or(|last| !Arc::ptr_eq(last, topic)) {
                if !window.topics.contains(&**topic) {
                    window.topics.insert(topic.to_string());
                }
                last_topic = Some(topic);
            }
        }
        window
            .contributors
            .entry(batch.reply_to.id())
            .or_insert_with(|| Contributor {
                worker: batch.reply_to.clone(),
                blocked: batch.blocked.clone(),
            });
        Ok(outcome)
    }

    /// Closes the windows whose end has passed, or all of them with `early`, and moves
    /// every closed window's records on: each record is acknowledged on its own, a
    /// failed one is sent again after its backoff, one refused for good goes to the
    /// dead-letter topic. A window frees its partitions' offsets once every record
    /// landed. Never fails: what cannot be written waits, visibly, holding its offsets.
    pub async fn emit(&mut self, pool: &HandlerPool, slot: usize, early: bool) {
        let now_ms = Utc::now().timestamp_millis();
        let now = Instant::now();
        let window_ms = self.window_ms();
        let mut closing = {
            let mut store = self.windows.lock();
            let due: Vec<i64> = store
                .windows
                .keys()
                .copied()
                .filter(|start| early || start + window_ms <= now_ms)
                .collect();
            for start in due {
                if let Some(window) = store.windows.remove(&start) {
                    let closed = self.close(start, window, start + window_ms > now_ms, now);
                    store.closing.push(closed);
                }
            }
            std::mem::take(&mut store.closing)
        };
        for window in &mut closing {
            for write in &mut window.records {
                self.advance(write, &window.contributors, now).await;
            }
        }
        if early {
            // Revoke or shutdown: give what was just sent until the producer's deadline
            // (the caller bounds it further by what is left of its own) to land now.
            let until = tokio::time::Instant::now() + self.producer.deadline();
            for window in &mut closing {
                for write in &mut window.records {
                    if let WriteState::Queued(pending, _) = &mut write.state {
                        let _ = tokio::time::timeout_at(
                            until,
                            futures::future::poll_fn(|cx| pending.poll_report(cx)),
                        )
                        .await;
                    }
                    self.advance(write, &window.contributors, now).await;
                }
            }
        }
        closing.retain_mut(|window| {
            window.records.retain(|write| !write.landed());
            if !window.records.is_empty() {
                return true;
            }
            metrics::counter!(COUNT_WINDOWS_EMITTED, "handler" => pool.name.to_string(),
                "partial" => if window.partial { "true" } else { "false" })
            .increment(1);
            tracing::debug!(handler = %pool.name, slot, window_start = window.start, partial = window.partial, "count window emitted");
            for contributor in &window.contributors {
                contributor.worker.released(pool.index, slot, window.id);
            }
            false
        });
        let mut store = self.windows.lock();
        closing.append(&mut store.closing);
        store.closing = closing;
    }

    /// Records of closed windows not acknowledged yet.
    pub fn unacknowledged(&self) -> usize {
        let store = self.windows.lock();
        store
            .closing
            .iter()
            .map(|window| window.records.len())
            .sum()
    }

    /// A window that ends its counting: one record per value, all due now.
    fn close(&self, start: i64, window: Window, partial: bool, now: Instant) -> Closing {
        let end = start + self.window_ms();
        let topics: Vec<&String> = window.topics.iter().collect();
        let records = window
            .counts
            .iter()
            .map(|(value, count)| {
                let record = json!({
                    "group_by": self.group_by,
                    "value": value,
                    "window_start": rfc3339(start),
                    "window_end": rfc3339(end),
                    "count": count,
                    "topics": topics,
                    "partial": partial,
                });
                RecordWrite {
                    record: Outgoing {
                        topic: self.output.clone(),
                        key: Some(value.as_bytes().to_vec()),
                        payload: record.to_string().into_bytes(),
                        headers: Vec::new(),
                    },
                    state: WriteState::Due(now),
                    failures: 0,
                    dead_letter: None,
                    blocked: Vec::new(),
                }
            })
            .collect();
        Closing {
            id: window.id,
            start,
            partial,
            records,
            contributors: window.contributors.into_values().collect(),
        }
    }

    /// Moves one record on: sends it when due, reads its report when it came.
    async fn advance(&self, write: &mut RecordWrite, contributors: &[Contributor], now: Instant) {
        let report = match &mut write.state {
            WriteState::Due(at) if *at <= now => {
                let sent = match write.dead_letter {
                    Some(_) => {
                        self.producer
                            .enqueue_dead_letter(write.record.clone())
                            .await
                    }
                    None => self.producer.enqueue(write.record.clone()).await,
                };
                match sent {
                    Ok(mut pending) => match pending.try_report() {
                        // Sync mode, or a refusal known at once.
                        Some(report) => report,
                        None => {
                            write.state = WriteState::Queued(pending, now);
                            return;
                        }
                    },
                    Err(error) => Err(error),
                }
            }
            WriteState::Due(_) | WriteState::Landed => return,
            WriteState::Queued(pending, sent_at) => match pending.try_report() {
                Some(report) => report,
                None => {
                    if now.duration_since(*sent_at) >= self.producer.deadline()
                        && write.blocked.is_empty()
                    {
                        tracing::warn!(handler = %self.handler, output = %write.record.topic,
                            waited_ms = now.duration_since(*sent_at).as_millis() as u64,
                            "count record not acknowledged within producer.message_timeout; waiting for it, its partitions' offsets held");
                        write.blocked = contributors.iter().map(|c| c.blocked.hold()).collect();
                    }
                    return;
                }
            },
        };
        match report {
            Ok(_) => {
                if let Some(reason) = write.dead_letter {
                    metrics::counter!(EVENTS_DEAD_LETTERED,
                        "topic" => self.output.clone(),
                        "handler" => self.handler.to_string(),
                        "reason" => reason.as_str())
                    .increment(1);
                }
                write.blocked.clear();
                write.state = WriteState::Landed;
            }
            Err(error) => self.failed(write, contributors, &error, now),
        }
    }

    /// A record was not written: after its backoff it is sent again, or, refused for
    /// good, sent to the dead-letter topic; with none set it is retried at the longest
    /// backoff and its partitions shown blocked, since dropping it would lose counts.
    fn failed(
        &self,
        write: &mut RecordWrite,
        contributors: &[Contributor],
        error: &ProduceError,
        now: Instant,
    ) {
        write.failures += 1;
        let refused = error.is_permanent() && write.dead_letter.is_none();
        if refused {
            if let Some(topic) = &self.dead_letter {
                tracing::error!(handler = %self.handler, output = %self.output, %error, dead_letter = %topic,
                    "count record refused by the broker, dead-lettered");
                write.record.topic = topic.clone();
                // No `eventd.handler`: a window record is no event to replay.
                write
                    .record
                    .headers
                    .push((headers::ERROR.into(), error.to_string().into_bytes()));
                write.dead_letter = Some(match error {
                    ProduceError::TooLarge { .. } => Reason::TooLarge,
                    _ => Reason::ProduceRejected,
                });
                write.failures = 0;
                write.state = WriteState::Due(now);
                return;
            }
        }
        let delay = if refused {
            self.retry.max_backoff
        } else {
            self.retry.delay_after(write.failures)
        };
        if write.dead_letter.is_some() {
            metrics::counter!(DEAD_LETTER_FAILURES, "topic" => write.record.topic.clone())
                .increment(1);
        }
        if write.blocked.is_empty() && (refused || write.dead_letter.is_some()) {
            write.blocked = contributors.iter().map(|c| c.blocked.hold()).collect();
        }
        if refused {
            tracing::error!(handler = %self.handler, output = %self.output, %error, failures = write.failures,
                retry_in_ms = delay.as_millis() as u64,
                "count record refused by the broker and no [dead_letter] topic is set; retrying it, its partitions' offsets held");
        } else {
            tracing::warn!(handler = %self.handler, writing_to = %write.record.topic, %error, failures = write.failures,
                retry_in_ms = delay.as_millis() as u64, "count record not written; sending it again");
        }
        write.state = WriteState::Due(now + delay);
    }
}

impl RecordWrite {
    fn landed(&self) -> bool {
        matches!(self.state, WriteState::Landed)
    }
}

fn rfc3339(epoch_ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(epoch_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}
