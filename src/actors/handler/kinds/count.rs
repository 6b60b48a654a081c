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
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use ractor::{ActorId, ActorProcessingErr};
use serde_json::json;

use super::super::actor::BatchOutcome;
use super::super::{Batch, BatchSource, HandlerPool};
use crate::actors::producer::dead_letter::Reason;
use crate::actors::producer::{Outgoing, ProduceError, ProducerHandle};
use crate::config::HandlerConfig;
use crate::event::{headers, Event};
use crate::telemetry::metrics::{COUNT_WINDOWS_EMITTED, EVENTS_DEAD_LETTERED};

/// Open windows of one slot, by start time in epoch milliseconds.
#[derive(Default)]
pub struct CountWindows {
    windows: BTreeMap<i64, Window>,
}

#[derive(Default)]
struct Window {
    /// Keyed by event values: foldhash, randomly seeded per map, is several times
    /// cheaper than SipHash for the short values counted per event.
    counts: HashMap<String, u64, foldhash::fast::RandomState>,
    topics: BTreeSet<String>,
    /// Workers whose offsets this window holds; told when it is emitted.
    contributors: HashMap<ActorId, Arc<dyn BatchSource>>,
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
        outcome.holds.push((start, first.source.offset));
        let mut store = self.windows.lock();
        let window = store.windows.entry(start).or_default();
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
            .or_insert_with(|| batch.reply_to.clone());
        Ok(outcome)
    }

    /// Emits closed windows, or all of them with `early`, and waits for the broker;
    /// then tells contributing workers their offsets are free. A failed emit keeps the
    /// window for the next try.
    pub async fn emit(
        &mut self,
        pool: &HandlerPool,
        slot: usize,
        early: bool,
    ) -> Result<(), ActorProcessingErr> {
        let now = Utc::now().timestamp_millis();
        let window_ms = self.window_ms();
        let due: Vec<(i64, Window)> = {
            let mut store = self.windows.lock();
            let starts: Vec<i64> = store
                .windows
                .keys()
                .copied()
                .filter(|start| early || start + window_ms <= now)
                .collect();
            starts
                .into_iter()
                .filter_map(|start| store.windows.remove(&start).map(|w| (start, w)))
                .collect()
        };
        for (start, window) in due {
            let partial = start + window_ms > now;
            if let Err(error) = self.emit_window(start, &window, partial).await {
                self.windows
                    .lock()
                    .windows
                    .entry(start)
                    .or_default()
                    .merge(window);
                return Err(error);
            }
            metrics::counter!(COUNT_WINDOWS_EMITTED, "handler" => pool.name.to_string(),
                "partial" => if partial { "true" } else { "false" })
            .increment(1);
            tracing::debug!(handler = %pool.name, slot, window_start = start, values = window.counts.len(), partial, "count window emitted");
            for worker in window.contributors.values() {
                worker.released(pool.index, slot, start);
            }
        }
        Ok(())
    }

    async fn emit_window(
        &self,
        start: i64,
        window: &Window,
        partial: bool,
    ) -> Result<(), ActorProcessingErr> {
        let end = start + self.window_ms();
        let topics: Vec<&String> = window.topics.iter().collect();
        let mut pending = Vec::with_capacity(window.counts.len());
        let mut refused = Vec::new();
        for (value, count) in &window.counts {
            let record = json!({
                "group_by": self.group_by,
                "value": value,
                "window_start": rfc3339(start),
                "window_end": rfc3339(end),
                "count": count,
                "topics": topics,
                "partial": partial,
            });
            let record = Outgoing {
                topic: self.output.clone(),
                key: Some(value.as_bytes().to_vec()),
                payload: record.to_string().into_bytes(),
                headers: Vec::new(),
            };
            match self.producer.enqueue(record.clone()).await {
                Ok(delivery) => pending.push((record, delivery)),
                Err(error) if error.is_permanent() => refused.push((record, error)),
                Err(error) => return Err(error.into()),
            }
        }
        for (record, delivery) in pending {
            match delivery.wait().await {
                Ok(_) => {}
                Err(error) if error.is_permanent() => refused.push((record, error)),
                Err(error) => return Err(error.into()),
            }
        }
        for (record, error) in refused {
            self.set_aside(record, &error).await?;
        }
        Ok(())
    }

    /// A record the broker refuses for good (a resend would fail the same way, and
    /// failing the actor would restart it into the same refusal until the meltdown): to
    /// the dead-letter topic with the reason. With no dead-letter topic the error
    /// stands, so the window is kept and its offsets stay held.
    async fn set_aside(
        &self,
        mut record: Outgoing,
        error: &ProduceError,
    ) -> Result<(), ActorProcessingErr> {
        let Some(topic) = &self.dead_letter else {
            return Err(
                format!("{error} (no [dead_letter] topic is set to take the record)").into(),
            );
        };
        tracing::error!(handler = %self.handler, output = %self.output, %error, dead_letter = %topic,
            "count record refused by the broker, dead-lettered");
        record.topic = topic.clone();
        // No `eventd.handler`: a window record is no event to replay.
        record
            .headers
            .push((headers::ERROR.into(), error.to_string().into_bytes()));
        self.producer
            .enqueue_dead_letter(record)
            .await?
            .wait()
            .await?;
        let reason = match error {
            ProduceError::TooLarge { .. } => Reason::TooLarge,
            _ => Reason::ProduceRejected,
        };
        metrics::counter!(EVENTS_DEAD_LETTERED,
            "topic" => self.output.clone(),
            "handler" => self.handler.to_string(),
            "reason" => reason.as_str())
        .increment(1);
        Ok(())
    }
}

impl Window {
    fn merge(&mut self, other: Window) {
        for (value, count) in other.counts {
            *self.counts.entry(value).or_default() += count;
        }
        self.topics.extend(other.topics);
        self.contributors.extend(other.contributors);
    }
}

fn rfc3339(epoch_ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(epoch_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}
