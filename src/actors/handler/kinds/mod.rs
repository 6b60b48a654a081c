//! What each handler kind does with a batch. Kinds are a closed set chosen by config,
//! so they are an enum rather than trait objects.

mod count;
#[cfg(feature = "fault-injection")]
mod fault;
mod forward;
mod log;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorProcessingErr;

use super::actor::{tick_period_for, BatchOutcome, HandlerArgs};
use super::{Batch, HandlerPool};
use crate::config::HandlerKind;

pub use count::CountWindows;
#[cfg(feature = "fault-injection")]
pub use fault::FaultMemory;
pub use webhook::{WebhookFailure, WebhookTarget};

/// State of a slot that must survive its actor's restarts.
#[derive(Clone)]
pub enum SlotMemory {
    None,
    Count(Arc<parking_lot::Mutex<CountWindows>>),
    /// The webhook's client (its connections) and settings, shared by every slot.
    Webhook(Arc<WebhookTarget>),
    #[cfg(feature = "fault-injection")]
    Fault(Arc<FaultMemory>),
}

impl SlotMemory {
    /// Memory for a new slot; `shared` is the pool-wide memory handed to every slot.
    pub fn for_slot(kind: HandlerKind, shared: &SlotMemory) -> SlotMemory {
        match kind {
            HandlerKind::Count => SlotMemory::Count(Arc::default()),
            _ => shared.clone(),
        }
    }

    /// Memory shared by every slot of a pool.
    pub fn for_pool(pool: &HandlerPool) -> SlotMemory {
        match pool.kind {
            HandlerKind::Webhook => {
                SlotMemory::Webhook(Arc::new(WebhookTarget::new(&pool.name, &pool.config)))
            }
            #[cfg(feature = "fault-injection")]
            HandlerKind::Fault => SlotMemory::Fault(Arc::default()),
            _ => SlotMemory::None,
        }
    }
}

pub enum Behaviour {
    Log(log::Log),
    Forward(forward::Forward),
    Count(count::Count),
    Webhook(webhook::Webhook),
    #[cfg(feature = "fault-injection")]
    Fault(fault::Fault),
}

impl Behaviour {
    pub fn new(args: &HandlerArgs) -> Behaviour {
        let config = &args.pool.config;
        match (config.kind, &args.memory) {
            (HandlerKind::Count, SlotMemory::Count(windows)) => {
                Behaviour::Count(count::Count::new(
                    config,
                    args.producer.clone(),
                    windows.clone(),
                    args.dead_letter.clone(),
                ))
            }
            #[cfg(feature = "fault-injection")]
            (HandlerKind::Fault, SlotMemory::Fault(memory)) => Behaviour::Fault(fault::Fault::new(
                config,
                args.slot,
                memory.clone(),
                forward::Forward::new(config, args.producer.clone()),
                args.producer.clone(),
            )),
            (HandlerKind::Webhook, SlotMemory::Webhook(target)) => {
                Behaviour::Webhook(webhook::Webhook::new(target.clone()))
            }
            (HandlerKind::Forward, _) => {
                Behaviour::Forward(forward::Forward::new(config, args.producer.clone()))
            }
            // Validation refuses `fault` in builds without fault injection.
            _ => Behaviour::Log(log::Log::new(args.slot)),
        }
    }

    /// How long the actor takes to start (tests drive a slow start through `fault`).
    pub fn start_delay(&self) -> Option<Duration> {
        match self {
            #[cfg(feature = "fault-injection")]
            Behaviour::Fault(fault) => fault.start_delay(),
            _ => None,
        }
    }

    /// Whether its writes go to Kafka, whose producer keeps their order only when
    /// idempotent.
    pub fn writes_to_kafka(&self) -> bool {
        !matches!(self, Behaviour::Webhook(_))
    }

    /// The failures of one settled batch were parked (or given up): a writer that
    /// holds later work behind them may go on.
    pub fn failures_parked(&self) {
        if let Behaviour::Webhook(webhook) = self {
            webhook.failures_parked();
        }
    }

    pub fn tick_period(&self) -> Option<Duration> {
        match self {
            Behaviour::Count(count) => Some(tick_period_for(count.window())),
            _ => None,
        }
    }

    pub async fn handle(
        &mut self,
        pool: &HandlerPool,
        batch: &Batch,
    ) -> Result<BatchOutcome, ActorProcessingErr> {
        match self {
            Behaviour::Log(log) => Ok(log.handle(pool, batch)),
            Behaviour::Forward(forward) => forward.handle(pool, batch).await,
            Behaviour::Count(count) => count.handle(batch),
            Behaviour::Webhook(webhook) => Ok(webhook.handle(batch)),
            #[cfg(feature = "fault-injection")]
            Behaviour::Fault(fault) => fault.handle(pool, batch).await,
        }
    }

    /// Moves count windows on: closes those whose end passed, sends their records.
    pub async fn tick(&mut self, pool: &HandlerPool, slot: usize) {
        if let Behaviour::Count(count) = self {
            count.emit(pool, slot, false).await;
        }
    }

    /// Closes every count window now, even unfinished ones (revoke, shutdown), and
    /// gives their records until the producer's deadline to land; returns how many
    /// did not.
    pub async fn flush(&mut self, pool: &HandlerPool, slot: usize) -> usize {
        match self {
            Behaviour::Count(count) => {
                count.emit(pool, slot, true).await;
                count.unacknowledged()
            }
            _ => 0,
        }
    }
}
