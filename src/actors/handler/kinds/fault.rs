//! `fault` (builds with the `fault-injection` feature only): fails, panics or sleeps on
//! chosen events so tests drive failures through config. With `output` it then forwards
//! the events it let through, which shows tests what was handled and in which order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ractor::ActorProcessingErr;

use super::super::actor::BatchOutcome;
use super::super::{Batch, HandlerPool, Transient};
use super::forward::Forward;
use crate::actors::producer::ProducerHandle;
use crate::config::{FaultAction, HandlerConfig};
use crate::event::Event;

/// Pool-wide memory that survives restarts, so `once`, `times` and `lasting` hold
/// across them.
#[derive(Default)]
pub struct FaultMemory {
    seen: AtomicU64,
    fired: Mutex<HashMap<(String, i32, i64), u32>>,
    first_action: Mutex<Option<Instant>>,
    /// Slots whose actor started once: a later start is a restart.
    started: Mutex<HashSet<usize>>,
}

pub struct Fault {
    action: FaultAction,
    every: Option<u64>,
    offsets: HashSet<i64>,
    /// Most actions per chosen event.
    times: Option<u32>,
    lasting: Option<Duration>,
    sleep: Duration,
    memory: Arc<FaultMemory>,
    rng: fastrand::Rng,
    forward: Option<Forward>,
    producer: ProducerHandle,
    /// How long this actor takes to start: `restart_delay` when it is a restart.
    start_delay: Option<Duration>,
}

impl Fault {
    pub fn new(
        config: &HandlerConfig,
        slot: usize,
        memory: Arc<FaultMemory>,
        forward: Forward,
        producer: ProducerHandle,
    ) -> Self {
        let restarted = !memory.started.lock().insert(slot);
        Self {
            start_delay: config.restart_delay.filter(|_| restarted),
            action: config.action.unwrap_or(FaultAction::Fail),
            every: config.every,
            offsets: config.offsets.iter().flatten().copied().collect(),
            times: config.times.or(config.once.then_some(1)),
            lasting: config.lasting,
            sleep: config.sleep.unwrap_or_default(),
            memory,
            rng: fastrand::Rng::with_seed(0x5eed + slot as u64),
            forward: config.output.is_some().then_some(forward),
            producer,
        }
    }

    pub fn start_delay(&self) -> Option<Duration> {
        self.start_delay
    }

    fn chosen(&self, event: &Event) -> bool {
        let nth = self.memory.seen.fetch_add(1, Ordering::Relaxed) + 1;
        let chosen = self.every.is_some_and(|every| nth % every == 0)
            || self.offsets.contains(&event.source.offset);
        if !chosen {
            return false;
        }
        if let Some(lasting) = self.lasting {
            let first = *self
                .memory
                .first_action
                .lock()
                .get_or_insert_with(Instant::now);
            if first.elapsed() > lasting {
                return false;
            }
        }
        let Some(times) = self.times else {
            return true;
        };
        let id = (
            event.source.topic.to_string(),
            event.source.partition,
            event.source.offset,
        );
        let mut fired = self.memory.fired.lock();
        let count = fired.entry(id).or_default();
        *count += 1;
        *count <= times
    }

    pub async fn handle(
        &mut self,
        pool: &HandlerPool,
        batch: &Batch,
    ) -> Result<BatchOutcome, ActorProcessingErr> {
        for event in batch.events.iter() {
            if !self.chosen(event) {
                continue;
            }
            let at = format!(
                "{}/{}@{}",
                event.source.topic, event.source.partition, event.source.offset
            );
            match self.action {
                FaultAction::Fail => return Err(format!("injected failure at {at}").into()),
                FaultAction::Unavailable => {
                    return Err(Transient(format!("injected outage at {at}")).into())
                }
                FaultAction::Panic => panic!("injected panic at {at}"),
                FaultAction::FailPartition => batch
                    .reply_to
                    .inject_failure(format!("injected partition worker failure at {at}")),
                FaultAction::Sleep => {
                    let micros = self.rng.u64(0..=self.sleep.as_micros() as u64);
                    tokio::time::sleep(Duration::from_micros(micros)).await;
                }
                FaultAction::ProducerFatal => {
                    let injected = self
                        .producer
                        .inject_fatal_error(&format!("injected fatal error at {at}"));
                    tracing::warn!(handler = %pool.name, consumer = %pool.consumer, topic = %event.source.topic,
                        partition = event.source.partition, offset = event.source.offset, injected,
                        "fault: fatal producer error");
                }
            }
        }
        let settling = match &self.forward {
            Some(forward) => Some(forward.forward(batch, None).await?),
            None => None,
        };
        Ok(BatchOutcome {
            settling,
            ..BatchOutcome::default()
        })
    }
}
