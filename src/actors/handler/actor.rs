//! The handler actor: one member of a pool. It handles batches strictly in the order
//! they arrive and tells the partition worker which offsets it finished.
//!
//! A batch that wrote events is finished only once the broker acknowledged them, but
//! the actor does not wait for that before taking the next batch: with an idempotent
//! producer librdkafka keeps each partition's order, so later copies cannot overtake
//! earlier ones. Waiting would cost one producer linger per batch, and with small
//! batches throughput would fall to one batch per linger. The acknowledgements are
//! awaited beside the actor; a failed one fails the actor, as a failed write inside
//! `handle` would, and its restart redelivers what was not finished.
//!
//! When the handler fails on a batch, its events are tried again one at a time, so the
//! failing event is known and the others finish. A failing event waits out its backoff
//! in a queue of its key (source partition and routing key): later events of that key
//! queue behind it, every other key goes on. After `retry.max_attempts` it goes to the
//! dead-letter topic, and its offset is finished once that write is acknowledged.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::failures::{Failed, Failure, Failures};
use super::kinds::{Behaviour, SlotMemory};
use super::{Batch, BatchSource, HandlerMsg, HandlerPool, Transient};
use crate::actors::producer::dead_letter::{
    dead_letter_copy, write_dead_letter, BlockedMark, Provenance, Reason,
};
use crate::actors::producer::ProducerHandle;
use crate::config::RetryConfig;
use crate::event::Event;
use crate::telemetry::metrics::{
    EVENTS_HANDLED, HANDLER_BATCH_SIZE, HANDLER_DURATION, HANDLER_RETRIES,
};

pub struct HandlerActor;

pub struct HandlerArgs {
    pub pool: Arc<HandlerPool>,
    pub slot: usize,
    pub producer: ProducerHandle,
    /// State that outlives one actor: count windows, fault bookkeeping.
    pub memory: SlotMemory,
    /// Failed attempts of events, kept across restarts of the slot's actor.
    pub failures: Arc<Failures>,
    /// This handler's dead-letter topic.
    pub dead_letter: Option<String>,
}

/// Events are retried in order per source partition and routing key. The partition
/// worker is part of the key: after a revoke and a new assignment, the new worker's
/// events must not queue behind the old worker's, which nobody waits for any more.
pub type ParkKey = (ractor::ActorId, i32, Vec<u8>);

fn park_key(batch: &Batch, event: &Event) -> ParkKey {
    (
        batch.reply_to.id(),
        event.source.partition,
        event.routing_key().into_owned(),
    )
}

/// An event waiting for its retry, or behind one of its key.
struct Parked {
    /// The event alone, with its partition's reply handle.
    batch: Batch,
    /// Held while the event has used its attempts and has no dead-letter topic.
    blocked: Option<BlockedMark>,
}

pub struct HandlerState {
    pool: Arc<HandlerPool>,
    slot: usize,
    behaviour: Behaviour,
    metrics: HandlerMetrics,
    /// Drives window closing for `count`.
    ticker: Option<JoinHandle<()>>,
    producer: ProducerHandle,
    dead_letter: Option<String>,
    retry: RetryConfig,
    failures: Arc<Failures>,
    /// Keys with an event waiting for a retry; its later events queue behind it.
    parked: HashMap<ParkKey, VecDeque<Parked>>,
}

impl Actor for HandlerActor {
    type Msg = HandlerMsg;
    type State = HandlerState;
    type Arguments = HandlerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HandlerMsg>,
        args: HandlerArgs,
    ) -> Result<HandlerState, ActorProcessingErr> {
        let behaviour = Behaviour::new(&args);
        let ticker = behaviour
            .tick_period()
            .map(|period| myself.send_interval(period, || HandlerMsg::Tick));
        Ok(HandlerState {
            metrics: HandlerMetrics::new(&args.pool.name),
            retry: args.pool.config.retry.clone(),
            pool: args.pool,
            slot: args.slot,
            behaviour,
            ticker,
            producer: args.producer,
            dead_letter: args.dead_letter,
            failures: args.failures,
            parked: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HandlerMsg>,
        message: HandlerMsg,
        state: &mut HandlerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HandlerMsg::Batch(batch) => handle_batch(&myself, state, batch).await,
            HandlerMsg::Retry(key) => retry_parked(&myself, state, key).await,
            HandlerMsg::WriteFailed(error) => return Err(error.into()),
            HandlerMsg::Flush(reply) => {
                state.behaviour.flush(&state.pool, state.slot).await?;
                let _ = reply.send(());
            }
            HandlerMsg::Tick => state.behaviour.tick(&state.pool, state.slot).await?,
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HandlerMsg>,
        state: &mut HandlerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
        Ok(())
    }
}

async fn handle_batch(myself: &ActorRef<HandlerMsg>, state: &mut HandlerState, batch: Batch) {
    if batch.events.is_empty() {
        return;
    }
    state.metrics.batch_size.record(batch.events.len() as f64);
    let Some(batch) = state.divert_to_parked(batch) else {
        return;
    };
    // Events that failed before (a panic, a restart while retrying) go one at a time.
    if !state.failures.knows_any(&batch.events, &batch.reply_to) {
        let started = Instant::now();
        state.failures.begin(&batch.events, &batch.reply_to);
        let result = state.behaviour.handle(&state.pool, &batch).await;
        state.failures.end();
        match result {
            Ok(outcome) => {
                state.complete(myself, &batch, outcome, started, false);
                return;
            }
            Err(error) => {
                let (message, transient) = describe(&error);
                tracing::warn!(handler = %state.pool.name, consumer = %state.pool.consumer, topic = %batch.events[0].source.topic,
                    partition = batch.events[0].source.partition, events = batch.events.len(),
                    error = %message, transient, "handler failed on a batch; trying its events one at a time");
                let alone_in_batch = batch.events.len() == 1;
                let mut failed = None;
                for event in batch.events.iter() {
                    failed = Some(state.failures.failed(
                        event,
                        &batch.reply_to,
                        Failed::Error {
                            message: &message,
                            transient,
                            alone: alone_in_batch,
                        },
                    ));
                }
                // A batch of one failed on its own: its backoff starts now, rather
                // than after a second attempt made at once.
                if let (true, Some(failure)) = (alone_in_batch, failed) {
                    let event = &batch.events[0];
                    let key = park_key(&batch, event);
                    let one = alone(&batch, event);
                    if let Some((parked, delay)) =
                        state.after_failure(one, &failure, &message, transient, None)
                    {
                        state.park(myself, key, VecDeque::from([parked]), delay);
                    }
                    return;
                }
            }
        }
    }
    for event in batch.events.iter() {
        let one = alone(&batch, event);
        let key = park_key(&batch, event);
        if let Some(queue) = state.parked.get_mut(&key) {
            queue.push_back(Parked {
                batch: one,
                blocked: None,
            });
            continue;
        }
        if let Some((parked, delay)) = state.try_alone(myself, one, None).await {
            state.park(myself, key, VecDeque::from([parked]), delay);
        }
    }
}

/// The backoff of `key`'s first event passed: try it again, then the events behind it
/// in order, until one fails or the queue is empty.
async fn retry_parked(myself: &ActorRef<HandlerMsg>, state: &mut HandlerState, key: ParkKey) {
    let Some(mut queue) = state.parked.remove(&key) else {
        return;
    };
    while let Some(head) = queue.pop_front() {
        if !head.batch.reply_to.is_open() {
            // The partition is gone; whoever owns it now reads this event again.
            state
                .failures
                .forget(&head.batch.events[0], &head.batch.reply_to);
            continue;
        }
        if let Some((parked, delay)) = state.try_alone(myself, head.batch, head.blocked).await {
            queue.push_front(parked);
            state.park(myself, key, queue, delay);
            return;
        }
    }
}

/// `batch` with only `event`.
fn alone(batch: &Batch, event: &Arc<Event>) -> Batch {
    Batch {
        events: Arc::from([event.clone()]),
        reply_to: batch.reply_to.clone(),
        blocked: batch.blocked.clone(),
        handler: batch.handler,
        slot: batch.slot,
    }
}

/// The error's text, and whether the handler marked it transient.
fn describe(error: &ActorProcessingErr) -> (String, bool) {
    (
        error.to_string(),
        error.downcast_ref::<Transient>().is_some(),
    )
}

impl HandlerState {
    /// Moves events whose key has an event waiting for a retry to the back of that
    /// key's queue; returns the rest, if any.
    fn divert_to_parked(&mut self, batch: Batch) -> Option<Batch> {
        if self.parked.is_empty() {
            return Some(batch);
        }
        let mut fresh = Vec::with_capacity(batch.events.len());
        for event in batch.events.iter() {
            match self.parked.get_mut(&park_key(&batch, event)) {
                Some(queue) => queue.push_back(Parked {
                    batch: alone(&batch, event),
                    blocked: None,
                }),
                None => fresh.push(event.clone()),
            }
        }
        if fresh.is_empty() {
            return None;
        }
        if fresh.len() == batch.events.len() {
            return Some(batch);
        }
        Some(Batch {
            events: fresh.into(),
            ..batch
        })
    }

    fn park(
        &mut self,
        myself: &ActorRef<HandlerMsg>,
        key: ParkKey,
        queue: VecDeque<Parked>,
        delay: Duration,
    ) {
        self.parked.insert(key.clone(), queue);
        myself.send_after(delay, move || HandlerMsg::Retry(key));
    }

    /// Whether `failure` used up the attempts its kind of error is allowed. An event is
    /// given up only after failing alone: a failed batch's attempt counts for each of
    /// its events, but may have been another event's failure.
    fn exhausted(&self, failure: &Failure) -> bool {
        if !failure.alone {
            return false;
        }
        if failure.last_transient {
            !self.retry.transient.allows(failure.transient)
        } else {
            failure.attempts >= self.retry.max_attempts
        }
    }

    /// Handles `one` (a single event) unless it already used its attempts. Returns it
    /// with its backoff when it failed and is to be tried again.
    async fn try_alone(
        &mut self,
        myself: &ActorRef<HandlerMsg>,
        one: Batch,
        blocked: Option<BlockedMark>,
    ) -> Option<(Parked, Duration)> {
        let event = one.events[0].clone();
        let known = self.failures.get(&event, &one.reply_to);
        // Only an event that failed on its own is retried: one in a failed batch may
        // have been another event's failure.
        let retried = known.as_ref().is_some_and(|f| f.alone_failures > 0);
        if let Some(failure) = &known {
            // A panic ends the actor before it can give up: the attempts were counted
            // by its supervisor, and the event is set aside here, unhandled.
            if self.exhausted(failure) && self.dead_letter.is_some() {
                self.give_up(one, failure);
                return None;
            }
        }
        if retried {
            self.metrics.retries.increment(1);
        }
        let started = Instant::now();
        self.failures.begin(&one.events, &one.reply_to);
        let result = self.behaviour.handle(&self.pool, &one).await;
        self.failures.end();
        let error = match result {
            Ok(outcome) => {
                if let Some(failure) = &known {
                    self.failures.forget(&event, &one.reply_to);
                    if retried {
                        tracing::info!(handler = %self.pool.name, consumer = %self.pool.consumer, topic = %event.source.topic,
                            partition = event.source.partition, offset = event.source.offset,
                            attempts = failure.total() + 1, "event handled after retries");
                    }
                }
                drop(blocked);
                self.complete(myself, &one, outcome, started, retried);
                return None;
            }
            Err(error) => error,
        };
        let (message, transient) = describe(&error);
        let failure = self.failures.failed(
            &event,
            &one.reply_to,
            Failed::Error {
                message: &message,
                transient,
                alone: true,
            },
        );
        if failure.alone_failures == 1 && failure.total() > 1 {
            // Its first failure alone shows the failed batch was its own: this
            // attempt, made because the batch failed, was a retry of it.
            self.metrics.retries.increment(1);
        }
        self.after_failure(one, &failure, &message, transient, blocked)
    }

    /// After `one` failed on its own: dead-letters it if it used its attempts, else
    /// returns it with its backoff (the longest, and its partition marked blocked,
    /// when it used them and there is no dead-letter topic).
    fn after_failure(
        &mut self,
        one: Batch,
        failure: &Failure,
        message: &str,
        transient: bool,
        blocked: Option<BlockedMark>,
    ) -> Option<(Parked, Duration)> {
        let event = one.events[0].clone();
        let exhausted = self.exhausted(failure);
        if exhausted && self.dead_letter.is_some() {
            self.give_up(one, failure);
            return None;
        }
        let delay = if exhausted {
            self.retry.max_backoff
        } else {
            self.retry.delay_after(failure.alone_failures)
        };
        let blocked = match blocked {
            Some(mark) => Some(mark),
            None if exhausted => {
                tracing::error!(handler = %self.pool.name, consumer = %self.pool.consumer, topic = %event.source.topic,
                    partition = event.source.partition, offset = event.source.offset,
                    attempts = failure.total(), error = %message,
                    "handler keeps failing on an event and no dead-letter topic is set; retrying it, the partition cannot move past it");
                Some(one.blocked.hold())
            }
            None => {
                tracing::warn!(handler = %self.pool.name, consumer = %self.pool.consumer, topic = %event.source.topic,
                    partition = event.source.partition, offset = event.source.offset,
                    attempt = failure.total(), error = %message, transient,
                    retry_in_ms = delay.as_millis() as u64, "handler failed on an event; retrying it");
                None
            }
        };
        Some((
            Parked {
                batch: one,
                blocked,
            },
            delay,
        ))
    }

    /// Writes `one`'s event to the dead-letter topic, then reports it finished.
    fn give_up(&mut self, one: Batch, failure: &Failure) {
        let Some(topic) = self.dead_letter.clone() else {
            return;
        };
        let event = one.events[0].clone();
        let reason = if failure.panicked {
            Reason::HandlerPanic
        } else {
            Reason::HandlerError
        };
        tracing::error!(handler = %self.pool.name, consumer = %self.pool.consumer, topic = %event.source.topic,
            partition = event.source.partition, offset = event.source.offset,
            attempts = failure.total(), error = %failure.last_error, dead_letter = %topic,
            reason = reason.as_str(), "handler gave up on an event, dead-lettered");
        let copy = dead_letter_copy(
            &topic,
            event.key.clone(),
            event.body.bytes().to_vec(),
            event.headers.clone(),
            &event.source,
            &Provenance {
                handler: Some(&self.pool.name),
                reason,
                error: &failure.last_error,
                attempts: Some(failure.total()),
            },
        );
        let producer = self.producer.clone();
        let failures = self.failures.clone();
        let handler = self.pool.name.clone();
        let dead_lettered = self.metrics.handled(&event.source.topic).dead_lettered;
        tokio::spawn(async move {
            let source = one.reply_to.clone();
            let written = write_dead_letter(
                &producer,
                copy,
                &event.source,
                &one.blocked,
                (&handler, reason),
                || source.is_open(),
            )
            .await;
            failures.forget(&event, &one.reply_to);
            if written {
                dead_lettered.increment(1);
                one.reply_to
                    .finished(one.handler, one.slot, vec![event.source.offset], Vec::new());
            }
        });
    }

    /// Reports `batch` finished, once its writes are settled.
    fn complete(
        &mut self,
        myself: &ActorRef<HandlerMsg>,
        batch: &Batch,
        outcome: BatchOutcome,
        started: Instant,
        retried: bool,
    ) {
        let report = FinishedReport {
            handler_name: self.pool.name.clone(),
            handled: self.metrics.handled(&batch.events[0].source.topic),
            duration: self.metrics.duration.clone(),
            started,
            count: batch.events.len(),
            skipped: outcome.skipped,
            retried,
            reply_to: batch.reply_to.clone(),
            handler: batch.handler,
            slot: batch.slot,
            offsets: batch.events.iter().map(|e| e.source.offset).collect(),
            holds: outcome.holds,
        };
        let Some(settling) = outcome.settling else {
            report.send();
            return;
        };
        let myself = myself.clone();
        tokio::spawn(async move {
            match settling.await {
                Ok(()) => report.send(),
                // The actor restarts and the worker resends what this batch held.
                Err(error) => {
                    let _ = myself.send_message(HandlerMsg::WriteFailed(format!(
                        "handler {}: {error}",
                        report.handler_name
                    )));
                }
            }
        });
    }
}

/// Metric handles of one actor, registered once rather than looked up per batch.
struct HandlerMetrics {
    handler: Arc<str>,
    batch_size: Histogram,
    duration: Histogram,
    retries: Counter,
    /// `eventd_events_handled_total` by topic and outcome.
    handled: HashMap<Arc<str>, Handled>,
}

#[derive(Clone)]
struct Handled {
    ok: Counter,
    skipped: Counter,
    retried: Counter,
    dead_lettered: Counter,
}

impl HandlerMetrics {
    fn new(handler: &Arc<str>) -> Self {
        Self {
            handler: handler.clone(),
            batch_size: metrics::histogram!(HANDLER_BATCH_SIZE, "handler" => handler.to_string()),
            duration: metrics::histogram!(HANDLER_DURATION, "handler" => handler.to_string()),
            retries: metrics::counter!(HANDLER_RETRIES, "handler" => handler.to_string()),
            handled: HashMap::new(),
        }
    }

    fn handled(&mut self, topic: &Arc<str>) -> Handled {
        if let Some(handled) = self.handled.get(topic) {
            return handled.clone();
        }
        let labels = |outcome: &'static str| {
            [
                ("handler", self.handler.to_string()),
                ("topic", topic.to_string()),
                ("outcome", outcome.to_owned()),
            ]
        };
        let handled = Handled {
            ok: metrics::counter!(EVENTS_HANDLED, &labels("ok")),
            skipped: metrics::counter!(EVENTS_HANDLED, &labels("skipped")),
            retried: metrics::counter!(EVENTS_HANDLED, &labels("retried")),
            dead_lettered: metrics::counter!(EVENTS_HANDLED, &labels("dead_lettered")),
        };
        self.handled.insert(topic.clone(), handled.clone());
        handled
    }
}

/// Everything needed to tell a worker that a batch is finished, once it is.
struct FinishedReport {
    handler_name: Arc<str>,
    handled: Handled,
    duration: Histogram,
    started: Instant,
    count: usize,
    skipped: usize,
    /// Handled after failed attempts: counted as `retried`, not `ok`.
    retried: bool,
    reply_to: Arc<dyn BatchSource>,
    handler: usize,
    slot: usize,
    offsets: Vec<i64>,
    holds: Vec<(i64, i64)>,
}

impl FinishedReport {
    fn send(self) {
        let average = self.started.elapsed().as_secs_f64() / self.count as f64;
        self.duration.record_many(average, self.count);
        let skipped = self.skipped as u64;
        if skipped > 0 {
            self.handled.skipped.increment(skipped);
        }
        let handled = self.count as u64 - skipped;
        if self.retried {
            self.handled.retried.increment(handled);
        } else {
            self.handled.ok.increment(handled);
        }
        // The worker may be gone (partition revoked); then nothing waits for this report.
        self.reply_to
            .finished(self.handler, self.slot, self.offsets, self.holds);
    }
}

/// What a behaviour reports about a batch.
#[derive(Default)]
pub struct BatchOutcome {
    /// Events the handler chose not to act on (no group_by value, not sampled...).
    pub skipped: usize,
    /// Count windows now holding offsets of this partition: (window start, first offset).
    pub holds: Vec<(i64, i64)>,
    /// Writes still to be settled (acknowledged, or set aside); the batch is finished
    /// when this resolves.
    pub settling: Option<Settling>,
}

/// Resolves once every write of a batch is settled; an error fails the actor.
pub type Settling = Pin<Box<dyn Future<Output = Result<(), ActorProcessingErr>> + Send>>;

/// How often `count` checks for windows to close.
pub fn tick_period_for(window: Duration) -> Duration {
    (window / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
