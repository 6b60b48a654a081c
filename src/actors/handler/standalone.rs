//! One handler of a config run outside the actor tree, on one event at a time, for
//! `eventd replay`: the same behaviour the daemon runs, so a fix is re-applied by the
//! handler that failed, and nothing else.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;

use super::actor::HandlerArgs;
use super::kinds::{Behaviour, SlotMemory};
use super::{Batch, BatchSource, HandlerPool, HandlerSettings, Route, Router};
use crate::actors::producer::dead_letter::Blocked;
use crate::actors::producer::ProducerHandle;
use crate::config::{Config, HandlerConfig};
use crate::event::{Event, FieldNames};

pub struct Standalone {
    pool: Arc<HandlerPool>,
    behaviour: Behaviour,
    source: Arc<dyn BatchSource>,
    blocked: Arc<Blocked>,
}

/// Where a standalone handler reports: nobody waits on its offsets.
struct NoPartition;

impl BatchSource for NoPartition {
    fn finished(&self, _: usize, _: usize, _: Vec<i64>, _: Vec<(i64, i64)>) {}
    fn released(&self, _: usize, _: usize, _: i64) {}
    fn is_open(&self) -> bool {
        true
    }
    fn id(&self) -> ractor::ActorId {
        ractor::ActorId::Local(0)
    }
}

impl Standalone {
    pub fn new(config: &Config, handler: &HandlerConfig, producer: ProducerHandle) -> Self {
        let pool = Arc::new(HandlerPool::new(0, config, handler));
        let memory = SlotMemory::for_slot(pool.kind, &SlotMemory::for_pool(pool.kind));
        let behaviour = Behaviour::new(&HandlerArgs {
            pool: pool.clone(),
            slot: 0,
            producer,
            memory,
            failures: Arc::default(),
            dead_letter: config.handler_dead_letter(handler).cloned(),
        });
        Self {
            blocked: Arc::new(Blocked::new("replay", &handler.name, 0)),
            pool,
            behaviour,
            source: Arc::new(NoPartition),
        }
    }

    /// The fields this handler reads, for decoding events to give it.
    pub fn field_names(&self) -> FieldNames {
        let router = Router {
            routes: vec![Route {
                pool: self.pool.clone(),
            }],
        };
        let settings: Arc<HandlerSettings> = self.pool.settings.load_full();
        router.field_names(&[Some(settings)])
    }

    /// Handles `event` and waits until whatever it wrote is acknowledged. A panic of
    /// the handler is an error here, as it is an attempt in the daemon.
    pub async fn handle(&mut self, event: Arc<Event>) -> Result<(), String> {
        let batch = Batch {
            events: Arc::from([event]),
            reply_to: self.source.clone(),
            blocked: self.blocked.clone(),
            handler: 0,
            slot: 0,
        };
        let handled = AssertUnwindSafe(self.behaviour.handle(&self.pool, &batch))
            .catch_unwind()
            .await
            .map_err(|panic| format!("handler panicked: {}", panic_text(&panic)))?;
        let outcome = handled.map_err(|error| error.to_string())?;
        if let Some(settling) = outcome.settling {
            if let Some((_, error)) = settling.await.into_iter().next() {
                return Err(error.to_string());
            }
        }
        Ok(())
    }

    /// Emits what the handler still holds (count windows) and waits for the broker.
    pub async fn flush(&mut self) -> Result<(), String> {
        match self.behaviour.flush(&self.pool, 0).await {
            0 => Ok(()),
            left => Err(format!(
                "{left} count records not acknowledged by the broker"
            )),
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "no message".to_owned())
}
