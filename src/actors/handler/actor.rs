//! The handler actor: one member of a pool. It handles batches strictly in the order
//! they arrive and tells the partition worker which offsets it finished.
//!
//! A batch that wrote events is finished only once the broker acknowledged them, but
//! the actor does not wait for that before taking the next batch: with an idempotent
//! producer librdkafka keeps each partition's order (and, with no message timeout of
//! its own, never gives up on an event behind later ones), so later copies cannot
//! overtake earlier ones. Waiting would cost one producer linger per batch. The
//! acknowledgements are awaited beside the actor; copies not acknowledged by the
//! producer's deadline come back here and take the one failure path (see `outbox`).
//!
//! When the handler fails on a batch, its events are tried again one at a time, so the
//! failing event is known and the others finish. A failing event waits out its backoff
//! in its key's queue of the outbox: later events of that key queue behind it, every
//! other key goes on. After `retry.max_attempts` it goes to the dead-letter topic, and
//! its offset is finished once that write is acknowledged. Only a panic fails the actor.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::failures::{Failed, Failure, Failures};
use super::kinds::{Behaviour, SlotMemory};
use super::outbox::{batch_of_one, park_key, LetterState, Outbox, Parked, Work};
use super::{Batch, BatchSource, Disposition, HandlerMsg, HandlerPool, Transient, WriteFailure};
use crate::actors::producer::dead_letter::{dead_letter_copy, BlockedMark, Provenance, Reason};
use crate::actors::producer::{ProduceError, ProducerHandle};
use crate::config::RetryConfig;
use crate::telemetry::metrics::{
    DEAD_LETTER_FAILURES, EVENTS_DEAD_LETTERED, EVENTS_HANDLED, HANDLER_BATCH_SIZE,
    HANDLER_DURATION, HANDLER_RETRIES,
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
    outbox: Outbox,
    /// Batches whose writes are not settled, by the producer generation they went to.
    writes: Arc<UnsettledWrites>,
    /// Work that waits while writes sent to a replaced producer are not settled:
    /// those may fail and be sent again, and nothing newer may overtake them.
    held: std::collections::VecDeque<Held>,
}

/// Work held back until writes to a replaced producer are settled.
enum Held {
    Batch(Batch),
    Retry(super::ParkKey),
}

/// Batches with writes not yet settled, counted per producer generation.
#[derive(Default)]
struct UnsettledWrites {
    by_generation: parking_lot::Mutex<std::collections::BTreeMap<u64, usize>>,
}

impl UnsettledWrites {
    fn sent(&self, generation: u64) {
        *self.by_generation.lock().entry(generation).or_default() += 1;
    }

    fn settled(&self, generation: u64) {
        let mut by_generation = self.by_generation.lock();
        if let Some(count) = by_generation.get_mut(&generation) {
            *count -= 1;
            if *count == 0 {
                by_generation.remove(&generation);
            }
        }
    }

    fn oldest(&self) -> Option<u64> {
        self.by_generation.lock().keys().next().copied()
    }
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
        if let Some(delay) = behaviour.start_delay() {
            tracing::warn!(handler = %args.pool.name, slot = args.slot, delay = ?delay, "fault: slow restart");
            tokio::time::sleep(delay).await;
        }
        let ticker = behaviour
            .tick_period()
            .map(|period| myself.send_interval(period, || HandlerMsg::Tick));
        Ok(HandlerState {
            metrics: HandlerMetrics::new(&args.pool.name),
            retry: args.pool.config.retry.clone(),
            outbox: Outbox::new(args.pool.parked.clone(), args.slot),
            writes: Arc::default(),
            held: std::collections::VecDeque::new(),
            pool: args.pool,
            slot: args.slot,
            behaviour,
            ticker,
            producer: args.producer,
            dead_letter: args.dead_letter,
            failures: args.failures,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HandlerMsg>,
        message: HandlerMsg,
        state: &mut HandlerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HandlerMsg::Batch(batch) => {
                state.metrics.batch_size.record(batch.events.len() as f64);
                if state.behind_a_producer_restart() {
                    state.held.push_back(Held::Batch(batch));
                } else {
                    handle_batch(&myself, state, batch).await;
                }
            }
            HandlerMsg::Retry(key) if state.behind_a_producer_restart() => {
                state.held.push_back(Held::Retry(key));
            }
            HandlerMsg::Retry(key) => retry_parked(&myself, state, key).await,
            HandlerMsg::ProducerCaughtUp => {
                // Held work goes on in the order it came, while nothing holds it again.
                while state.writes_to_replaced_producer_settled() {
                    match state.held.pop_front() {
                        Some(Held::Batch(batch)) => handle_batch(&myself, state, batch).await,
                        Some(Held::Retry(key)) => retry_parked(&myself, state, key).await,
                        None => break,
                    }
                }
            }
            HandlerMsg::Settled(unsettled) => state.settled(&myself, *unsettled),
            HandlerMsg::DeadLetterFailed(letter, error) => {
                state.dead_letter_failed(&myself, *letter, &error)
            }
            HandlerMsg::Flush(reply) => {
                let unacknowledged = state.behaviour.flush(&state.pool, state.slot).await;
                let _ = reply.send(unacknowledged);
            }
            HandlerMsg::Tick => state.behaviour.tick(&state.pool, state.slot).await,
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
    let Some(batch) = state.outbox.divert(batch) else {
        return;
    };
    // Events that failed before (a panic, a restart while retrying) go one at a time.
    if !state.failures.knows_any(&batch.events, &batch.reply_to) {
        let started = Instant::now();
        let generation = state.producer.generation();
        state.failures.begin(&batch.events, &batch.reply_to);
        let result = state.behaviour.handle(&state.pool, &batch).await;
        state.failures.end(result.is_ok());
        match result {
            Ok(outcome) => {
                state
                    .complete(myself, &batch, outcome, (started, generation), false, None)
                    .await;
                return;
            }
            Err(error) => {
                let (message, transient) = describe(&error);
                tracing::warn!(handler = %state.pool.name, consumer = %state.pool.consumer, topic = %batch.events[0].source.topic,
                    partition = batch.events[0].source.partition, events = batch.events.len(),
                    error = %message, transient, "handler failed on a batch; trying its events one at a time");
                let single_event_batch = batch.events.len() == 1;
                let mut failed = None;
                for event in batch.events.iter() {
                    failed = Some(state.failures.failed(
                        event,
                        &batch.reply_to,
                        Failed::Error {
                            message: &message,
                            transient,
                            own: single_event_batch,
                        },
                    ));
                }
                // A batch of one failed on its own: its backoff starts now, rather
                // than after a second attempt made at once.
                if let (true, Some(failure)) = (single_event_batch, failed) {
                    let event = &batch.events[0];
                    let key = park_key(&batch, event);
                    let one = batch_of_one(&batch, event);
                    if let Some((parked, delay)) =
                        state.after_failure(myself, one, &failure, &message, transient, None)
                    {
                        state.outbox.park(myself, key, parked, delay);
                    }
                    return;
                }
            }
        }
    }
    for (index, event) in batch.events.iter().enumerate() {
        let one = batch_of_one(&batch, event);
        let key = park_key(&batch, event);
        if state.outbox.is_parked(&key) {
            state.outbox.queue_behind(&key, Parked::new(one));
            continue;
        }
        if !state.writes_to_replaced_producer_settled() {
            // The producer was replaced meanwhile: the rest waits, first in line.
            state.held.push_front(Held::Batch(Batch {
                events: batch.events[index..].into(),
                ..batch.clone()
            }));
            return;
        }
        if let Some((parked, delay)) = state.try_alone(myself, one, None).await {
            state.outbox.park(myself, key, parked, delay);
        }
    }
}

/// The backoff of `key`'s first event passed: try it again, then the events behind it
/// in order, until one fails or the queue is empty.
async fn retry_parked(
    myself: &ActorRef<HandlerMsg>,
    state: &mut HandlerState,
    key: super::ParkKey,
) {
    let Some((mut queue, since)) = state.outbox.take(&key) else {
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
        if !state.writes_to_replaced_producer_settled() {
            // The producer was replaced meanwhile: the key stays parked until it caught up.
            queue.push_front(head);
            state.outbox.restore(key.clone(), (queue, since));
            state.held.push_back(Held::Retry(key));
            return;
        }
        let failed = match head.work {
            Work::Handle => state.try_alone(myself, head.batch, head.blocked).await,
            Work::DeadLetter(letter) => {
                state.write_dead_letter(myself, head.batch, *letter, head.blocked);
                None
            }
        };
        if let Some((parked, delay)) = failed {
            queue.push_front(parked);
            state.outbox.park_queue(myself, key, (queue, since), delay);
            return;
        }
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
    /// Whether new work must wait: earlier work is held, or writes sent to a producer
    /// since replaced (after a fatal error) are not all settled. Those may fail and be
    /// sent again, and no newer copy of their keys may land first.
    fn behind_a_producer_restart(&self) -> bool {
        !self.held.is_empty() || !self.writes_to_replaced_producer_settled()
    }

    fn writes_to_replaced_producer_settled(&self) -> bool {
        self.writes
            .oldest()
            .is_none_or(|oldest| oldest >= self.producer.generation())
    }

    /// Whether `failure` used up the attempts its kind of error is allowed. An event is
    /// given up only after failing own: a failed batch's attempt counts for each of
    /// its events, but may have been another event's failure.
    fn exhausted(&self, failure: &Failure) -> bool {
        if !failure.own {
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
        let retried = known.as_ref().is_some_and(|f| f.own_failures > 0);
        if let Some(failure) = &known {
            // A panic ends the actor before it can give up: the attempts were counted
            // by its supervisor, and the event is set aside here, unhandled.
            if self.exhausted(failure) && self.dead_letter.is_some() {
                self.give_up(
                    myself,
                    one,
                    failure.reason(),
                    &failure.last_error.clone(),
                    Some(failure.total()),
                    blocked,
                );
                return None;
            }
        }
        if retried {
            self.metrics.retries.increment(1);
        }
        let started = Instant::now();
        let generation = self.producer.generation();
        self.failures.begin(&one.events, &one.reply_to);
        let result = self.behaviour.handle(&self.pool, &one).await;
        self.failures.end(result.is_ok());
        let error = match result {
            Ok(outcome) => {
                if let Some(failure) = &known {
                    if outcome.settling.is_some() {
                        // Its writes are not settled yet: should they fail, the attempts
                        // made so far still count, for its backoff and its limit.
                        let retry = SettledRetry {
                            failures: self.failures.clone(),
                            event: event.clone(),
                            attempts: retried.then(|| failure.total() + 1),
                            handler: self.pool.name.clone(),
                        };
                        drop(blocked);
                        self.complete(
                            myself,
                            &one,
                            outcome,
                            (started, generation),
                            retried,
                            Some(retry),
                        )
                        .await;
                        return None;
                    }
                    self.failures.forget(&event, &one.reply_to);
                    if retried {
                        tracing::info!(handler = %self.pool.name, consumer = %self.pool.consumer, topic = %event.source.topic,
                            partition = event.source.partition, offset = event.source.offset,
                            attempts = failure.total() + 1, "event handled after retries");
                    }
                }
                drop(blocked);
                self.complete(myself, &one, outcome, (started, generation), retried, None)
                    .await;
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
                own: true,
            },
        );
        if failure.own_failures == 1 && failure.total() > 1 {
            // Its first failure alone shows the failed batch was its own: this
            // attempt, made because the batch failed, was a retry of it.
            self.metrics.retries.increment(1);
        }
        self.after_failure(myself, one, &failure, &message, transient, blocked)
    }

    /// After `one` failed on its own: dead-letters it if it used its attempts, else
    /// returns it with its backoff (the longest, and its partition marked blocked,
    /// when it used them and there is no dead-letter topic).
    fn after_failure(
        &mut self,
        myself: &ActorRef<HandlerMsg>,
        one: Batch,
        failure: &Failure,
        message: &str,
        transient: bool,
        blocked: Option<BlockedMark>,
    ) -> Option<(Parked, Duration)> {
        let event = one.events[0].clone();
        let exhausted = self.exhausted(failure);
        if exhausted && self.dead_letter.is_some() {
            self.give_up(
                myself,
                one,
                failure.reason(),
                message,
                Some(failure.total()),
                blocked,
            );
            return None;
        }
        let delay = if exhausted {
            self.retry.max_backoff
        } else {
            self.retry.delay_after(failure.own_failures)
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
                work: Work::Handle,
            },
            delay,
        ))
    }

    /// Gives up on `one`'s event: writes it to the dead-letter topic, then reports it
    /// finished. Nothing is written for a partition this worker no longer owns: its
    /// next owner reads the event again from the committed offset.
    fn give_up(
        &mut self,
        myself: &ActorRef<HandlerMsg>,
        one: Batch,
        reason: Reason,
        error: &str,
        attempts: Option<u32>,
        blocked: Option<BlockedMark>,
    ) {
        let event = one.events[0].clone();
        if !one.reply_to.is_open() {
            self.failures.forget(&event, &one.reply_to);
            return;
        }
        let Some(topic) = self.dead_letter.clone() else {
            return;
        };
        tracing::error!(handler = %self.pool.name, consumer = %self.pool.consumer, topic = %event.source.topic,
            partition = event.source.partition, offset = event.source.offset,
            attempts, error, dead_letter = %topic,
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
                error,
                attempts,
            },
        );
        let letter = LetterState {
            copy,
            reason,
            failures: 0,
        };
        self.write_dead_letter(myself, one, letter, blocked);
    }

    /// Sends a dead-letter copy; its acknowledgement finishes the event, its failure
    /// comes back to the actor to be parked like any other.
    fn write_dead_letter(
        &mut self,
        myself: &ActorRef<HandlerMsg>,
        one: Batch,
        letter: LetterState,
        blocked: Option<BlockedMark>,
    ) {
        let producer = self.producer.clone();
        let failures = self.failures.clone();
        let handler = self.pool.name.clone();
        let dead_lettered = self
            .metrics
            .handled(&one.events[0].source.topic)
            .dead_lettered;
        let myself = myself.clone();
        tokio::spawn(async move {
            let sent = match producer.enqueue_dead_letter(letter.copy.clone()).await {
                Ok(pending) => pending.wait().await.map(|_| ()),
                Err(error) => Err(error),
            };
            let event = &one.events[0];
            match sent {
                Ok(()) => {
                    drop(blocked);
                    failures.forget(event, &one.reply_to);
                    dead_lettered.increment(1);
                    metrics::counter!(EVENTS_DEAD_LETTERED,
                        "topic" => event.source.topic.to_string(),
                        "handler" => handler.to_string(),
                        "reason" => letter.reason.as_str())
                    .increment(1);
                    one.reply_to.finished(
                        one.handler,
                        one.slot,
                        vec![event.source.offset],
                        Vec::new(),
                    );
                }
                Err(error) => {
                    // A restarted actor gets the event again from its worker and, its
                    // attempts used, gives it up anew.
                    let _ = myself.send_message(HandlerMsg::DeadLetterFailed(
                        Box::new((one, letter, blocked)),
                        error,
                    ));
                }
            }
        });
    }

    /// A dead-letter write failed: the event waits in its key's queue and the write is
    /// tried again after the handler's backoff, its partition shown blocked meanwhile.
    fn dead_letter_failed(
        &mut self,
        myself: &ActorRef<HandlerMsg>,
        (one, mut letter, blocked): (Batch, LetterState, Option<BlockedMark>),
        error: &ProduceError,
    ) {
        let event = one.events[0].clone();
        if !one.reply_to.is_open() {
            self.failures.forget(&event, &one.reply_to);
            return;
        }
        letter.failures += 1;
        metrics::counter!(DEAD_LETTER_FAILURES, "topic" => letter.copy.topic.clone()).increment(1);
        let delay = self.retry.delay_after(letter.failures);
        tracing::error!(handler = %self.pool.name, consumer = %self.pool.consumer, topic = %event.source.topic,
            partition = event.source.partition, offset = event.source.offset,
            writing_to = %letter.copy.topic, failures = letter.failures, %error,
            retry_in_ms = delay.as_millis() as u64,
            "dead-letter write failed; the partition cannot move past it");
        let blocked = blocked.or_else(|| Some(one.blocked.hold()));
        let key = park_key(&one, &event);
        let parked = Parked {
            batch: one,
            blocked,
            work: Work::DeadLetter(Box::new(letter)),
        };
        self.outbox.park(myself, key, parked, delay);
    }

    /// Copies of a batch the broker did not acknowledge: the others are finished; each
    /// of these parks its key, to be sent again after its backoff (the resend lands
    /// before any later copy of its key, which waits behind it), or, refused for good,
    /// goes to the dead-letter topic.
    fn settled(&mut self, myself: &ActorRef<HandlerMsg>, unsettled: Unsettled) {
        let Unsettled {
            mut report,
            batch,
            failed,
            counted,
        } = unsettled;
        let failed_offsets: Vec<i64> = failed
            .iter()
            .map(|(index, _)| batch.events[*index].source.offset)
            .collect();
        report
            .offsets
            .retain(|offset| !failed_offsets.contains(offset));
        report.count = report.count.saturating_sub(failed.len());
        if report.count > 0 || !report.holds.is_empty() {
            report.send();
        }
        for (index, error) in failed {
            let event = batch.events[index].clone();
            let one = batch_of_one(&batch, &event);
            if !one.reply_to.is_open() {
                self.failures.forget(&event, &one.reply_to);
                continue;
            }
            let key = park_key(&batch, &event);
            let message = error.to_string();
            let retry_after = match error.disposition() {
                Disposition::NotCharged => {
                    // No fault of the event's, so no attempt is charged. It waits its
                    // turn like any parked key.
                    self.outbox
                        .park(myself, key, Parked::new(one), self.retry.backoff);
                    continue;
                }
                Disposition::Misconfigured => {
                    tracing::error!(handler = %self.pool.name, consumer = %self.pool.consumer, topic = %event.source.topic,
                        partition = event.source.partition, offset = event.source.offset, error = %message,
                        retry_in_ms = self.retry.max_backoff.as_millis() as u64,
                        "the handler's own settings are refused (not the event); retrying it, the partition cannot move past it until they are fixed");
                    let blocked = Some(one.blocked.hold());
                    let parked = Parked {
                        batch: one,
                        blocked,
                        work: Work::Handle,
                    };
                    self.outbox
                        .park(myself, key, parked, self.retry.max_backoff);
                    continue;
                }
                Disposition::Permanent(reason) if self.dead_letter.is_some() => {
                    self.give_up(myself, one, reason, &message, None, None);
                    continue;
                }
                Disposition::Permanent(_) => None,
                Disposition::Transient { retry_after } => Some(retry_after),
            };
            let permanent = retry_after.is_none();
            let failure = self.failures.failed(
                &event,
                &one.reply_to,
                Failed::Error {
                    message: &message,
                    transient: !permanent,
                    own: true,
                },
            );
            let parked = if permanent {
                // No dead-letter topic: retried at the longest backoff, shown blocked.
                tracing::error!(handler = %self.pool.name, consumer = %self.pool.consumer, topic = %event.source.topic,
                    partition = event.source.partition, offset = event.source.offset, error = %message,
                    "write refused for good and no dead-letter topic is set; retrying it, the partition cannot move past it");
                let blocked = Some(one.blocked.hold());
                Some((
                    Parked {
                        batch: one,
                        blocked,
                        work: Work::Handle,
                    },
                    self.retry.max_backoff,
                ))
            } else {
                self.after_failure(myself, one, &failure, &message, true, None)
                    .map(|(parked, delay)| {
                        // The service said when to come back (`Retry-After`).
                        (parked, delay.max(retry_after.flatten().unwrap_or_default()))
                    })
            };
            if let Some((parked, delay)) = parked {
                self.outbox.park(myself, key, parked, delay);
            }
        }
        // The writer held later work back until these failures were parked.
        self.behaviour.failures_parked();
        if let Some(generation) = counted {
            self.writes.settled(generation);
        }
    }

    /// Reports `batch` finished, once its writes are settled; `generation` is the
    /// producer's its writes went to.
    async fn complete(
        &mut self,
        myself: &ActorRef<HandlerMsg>,
        batch: &Batch,
        outcome: BatchOutcome,
        (started, generation): (Instant, u64),
        retried: bool,
        retry: Option<SettledRetry>,
    ) {
        let report = FinishedReport {
            retry,
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
        if !self.producer.keeps_partition_order() && self.behaviour.writes_to_kafka() {
            // Without idempotence librdkafka's own retries may reorder a key's copies:
            // the next batch is sent only once this one's are settled.
            let failed = settling.await;
            if failed.is_empty() {
                report.send();
            } else {
                self.settled(
                    myself,
                    Unsettled {
                        report,
                        batch: batch.clone(),
                        failed,
                        counted: None,
                    },
                );
            }
            return;
        }
        let myself = myself.clone();
        let batch = batch.clone();
        let writes = self.writes.clone();
        let producer = self.producer.clone();
        writes.sent(generation);
        tokio::spawn(async move {
            let failed = settling.await;
            if failed.is_empty() {
                writes.settled(generation);
                report.send();
            } else {
                // The actor counts these writes settled once it parked the failed ones,
                // so no newer copy of their keys is sent in between. If the actor is
                // gone, its replacement gets the batch again from the worker.
                let _ = myself.send_message(HandlerMsg::Settled(Box::new(Unsettled {
                    report,
                    batch,
                    failed,
                    counted: Some(generation),
                })));
            }
            if producer.generation() != generation {
                let _ = myself.send_message(HandlerMsg::ProducerCaughtUp);
            }
        });
    }
}

/// A batch some of whose copies were not acknowledged, back at its actor.
pub struct Unsettled {
    report: FinishedReport,
    batch: Batch,
    /// By index in the batch, in batch order.
    failed: Vec<(usize, WriteFailure)>,
    /// The producer generation under which the batch is counted unsettled, if it is.
    counted: Option<u64>,
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
    /// A retried event whose writes were pending: its failures are forgotten once they
    /// are settled.
    retry: Option<SettledRetry>,
}

/// A retried event handled alone, whose failure record is kept until its writes land.
struct SettledRetry {
    failures: Arc<Failures>,
    event: Arc<crate::event::Event>,
    /// Attempts in all, when it had failed on its own before (logged).
    attempts: Option<u32>,
    handler: Arc<str>,
}

impl FinishedReport {
    fn send(self) {
        if let Some(retry) = &self.retry {
            retry.failures.forget(&retry.event, &self.reply_to);
            if let Some(attempts) = retry.attempts {
                let source = &retry.event.source;
                tracing::info!(handler = %retry.handler, topic = %source.topic,
                    partition = source.partition, offset = source.offset,
                    attempts, "event handled after retries");
            }
        }
        // One observation per batch: the exporter stores each observation with a clock
        // reading until its next upkeep, which per event cost more than the handling.
        let average = self.started.elapsed().as_secs_f64() / self.count as f64;
        self.duration.record(average);
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
    /// Count windows now holding offsets of this partition: (window id, first offset).
    pub holds: Vec<(i64, i64)>,
    /// Writes still to be settled (acknowledged, or set aside); the batch is finished
    /// when this resolves.
    pub settling: Option<Settling>,
}

/// Resolves once every write of a batch is settled, to the writes that failed, by
/// index in the batch.
pub type Settling = Pin<Box<dyn Future<Output = Vec<(usize, WriteFailure)>> + Send>>;

/// How often `count` checks for windows to close.
pub fn tick_period_for(window: Duration) -> Duration {
    (window / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
