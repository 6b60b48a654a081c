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

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::kinds::{Behaviour, SlotMemory};
use super::{Batch, BatchSource, HandlerMsg, HandlerPool};
use crate::actors::producer::ProducerHandle;
use crate::telemetry::metrics::{EVENTS_HANDLED, HANDLER_BATCH_SIZE, HANDLER_DURATION};

pub struct HandlerActor;

pub struct HandlerArgs {
    pub pool: Arc<HandlerPool>,
    pub slot: usize,
    pub producer: ProducerHandle,
    /// State that outlives one actor: count windows, fault bookkeeping.
    pub memory: SlotMemory,
    pub dead_letter: Option<String>,
}

pub struct HandlerState {
    pool: Arc<HandlerPool>,
    slot: usize,
    behaviour: Behaviour,
    metrics: HandlerMetrics,
    /// Drives window closing for `count`.
    ticker: Option<JoinHandle<()>>,
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
            pool: args.pool,
            slot: args.slot,
            behaviour,
            ticker,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HandlerMsg>,
        message: HandlerMsg,
        state: &mut HandlerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HandlerMsg::Batch(batch) => handle_batch(&myself, state, batch).await?,
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

async fn handle_batch(
    myself: &ActorRef<HandlerMsg>,
    state: &mut HandlerState,
    batch: Batch,
) -> Result<(), ActorProcessingErr> {
    let Some(first) = batch.events.first() else {
        return Ok(());
    };
    let handled = state.metrics.handled(&first.source.topic);
    let started = Instant::now();
    state.metrics.batch_size.record(batch.events.len() as f64);
    let outcome = state.behaviour.handle(&state.pool, &batch).await?;
    let report = FinishedReport {
        handler_name: state.pool.name.clone(),
        handled,
        duration: state.metrics.duration.clone(),
        started,
        count: batch.events.len(),
        skipped: outcome.skipped,
        reply_to: batch.reply_to,
        handler: batch.handler,
        slot: batch.slot,
        offsets: batch.events.iter().map(|e| e.source.offset).collect(),
        holds: outcome.holds,
    };
    let Some(settling) = outcome.settling else {
        report.send();
        return Ok(());
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
    Ok(())
}

/// Metric handles of one actor, registered once rather than looked up per batch.
struct HandlerMetrics {
    handler: Arc<str>,
    batch_size: Histogram,
    duration: Histogram,
    /// `eventd_events_handled_total` by topic: (ok, skipped).
    handled: HashMap<Arc<str>, Handled>,
}

#[derive(Clone)]
struct Handled {
    ok: Counter,
    skipped: Counter,
}

impl HandlerMetrics {
    fn new(handler: &Arc<str>) -> Self {
        Self {
            handler: handler.clone(),
            batch_size: metrics::histogram!(HANDLER_BATCH_SIZE, "handler" => handler.to_string()),
            duration: metrics::histogram!(HANDLER_DURATION, "handler" => handler.to_string()),
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
        self.handled.ok.increment(self.count as u64 - skipped);
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
