//! The handler actor: one member of a pool. It handles batches strictly in the order
//! they arrive and tells the partition worker which offsets it finished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::kinds::{Behaviour, SlotMemory};
use super::{Batch, HandlerMsg, HandlerPool};
use crate::actors::consumer::partition_worker::PartitionWorkerMsg;
use crate::actors::producer::ProducerHandle;
use crate::telemetry::metrics::{EVENTS_HANDLED, HANDLER_DURATION};

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
            pool: args.pool,
            slot: args.slot,
            behaviour,
            ticker,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<HandlerMsg>,
        message: HandlerMsg,
        state: &mut HandlerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HandlerMsg::Batch(batch) => handle_batch(state, batch).await?,
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

async fn handle_batch(state: &mut HandlerState, batch: Batch) -> Result<(), ActorProcessingErr> {
    let Some(first) = batch.events.first() else {
        return Ok(());
    };
    let topic = first.source.topic.clone();
    let started = Instant::now();
    let outcome = state.behaviour.handle(&state.pool, &batch).await?;
    let count = batch.events.len();
    let average = started.elapsed().as_secs_f64() / count as f64;
    metrics::histogram!(HANDLER_DURATION, "handler" => state.pool.name.to_string())
        .record_many(average, count);
    let labels = |outcome: &'static str| {
        [
            ("handler", state.pool.name.to_string()),
            ("topic", topic.to_string()),
            ("outcome", outcome.to_owned()),
        ]
    };
    let skipped = outcome.skipped as u64;
    if skipped > 0 {
        metrics::counter!(EVENTS_HANDLED, &labels("skipped")).increment(skipped);
    }
    metrics::counter!(EVENTS_HANDLED, &labels("ok")).increment(count as u64 - skipped);
    // The worker may be gone (partition revoked); then nothing waits for this report.
    let _ = batch.reply_to.send_message(PartitionWorkerMsg::Finished {
        handler: batch.handler,
        slot: batch.slot,
        offsets: batch.events.iter().map(|e| e.source.offset).collect(),
        holds: outcome.holds,
    });
    Ok(())
}

/// What a behaviour reports about a batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Events the handler chose not to act on (no group_by value, not sampled...).
    pub skipped: usize,
    /// Count windows now holding offsets of this partition: (window start, first offset).
    pub holds: Vec<(i64, i64)>,
}

/// How often `count` checks for windows to close.
pub fn tick_period_for(window: Duration) -> Duration {
    (window / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
