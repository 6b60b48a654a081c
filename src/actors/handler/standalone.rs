//! One handler of a config run outside the actor tree, on one event at a time, for
//! `eventd replay`: the same behaviour the daemon runs, so a fix is re-applied by the
//! handler that failed, and nothing else.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use super::actor::HandlerArgs;
use super::kinds::{Behaviour, SlotMemory};
use super::{
    Batch, BatchSource, Disposition, FlushError, HandlerPool, HandlerSettings, Route, Router,
    Transient,
};
use crate::actors::producer::dead_letter::Blocked;
use crate::actors::producer::ProducerHandle;
use crate::config::{Config, HandlerConfig, HandlerKind};
use crate::event::{Event, FieldNames};

pub struct Standalone {
    pool: Arc<HandlerPool>,
    behaviour: Behaviour,
    source: Arc<NoPartition>,
    blocked: Arc<Blocked>,
}

/// Why a standalone handler did not finish an event: the caller decides whether to
/// try again (an outage) or to report the event as failed.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// The handler or the broker refused the event for good: trying again cannot help.
    #[error("{0}")]
    Refused(String),
    /// An outage or a slow broker: the same event may pass later.
    #[error("{0}")]
    Transient(String),
    #[error("handler panicked: {0}")]
    Panicked(String),
}

/// Where a standalone handler reports: nobody waits on its offsets. It stays open
/// until its user gives up, so work that waits while its partition is owned (a
/// dead-letter write, a record with nowhere to go) ends then.
struct NoPartition {
    open: AtomicBool,
}

impl BatchSource for NoPartition {
    fn finished(&self, _: usize, _: usize, _: Vec<i64>, _: Vec<(i64, i64)>) {}
    fn released(&self, _: usize, _: usize, _: i64) {}
    fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }
    fn id(&self) -> ractor::ActorId {
        ractor::ActorId::Local(0)
    }
}

impl Standalone {
    pub fn new(config: &Config, handler: &HandlerConfig, producer: ProducerHandle) -> Self {
        let mut handler = handler.clone();
        if handler.kind == HandlerKind::Webhook {
            // Events come one at a time, each awaited: a request waiting to fill would
            // only wait.
            handler.max_wait = Some(Duration::ZERO);
        }
        let handler = &handler;
        let pool = Arc::new(HandlerPool::new(0, config, handler));
        let memory = SlotMemory::for_slot(pool.kind, &SlotMemory::for_pool(&pool));
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
            source: Arc::new(NoPartition {
                open: AtomicBool::new(true),
            }),
        }
    }

    /// Ends whatever still waits on behalf of this handler's events.
    pub fn give_up(&self) {
        self.source.open.store(false, Ordering::Relaxed);
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
    pub async fn handle(&mut self, event: Arc<Event>) -> Result<(), StandaloneError> {
        let batch = Batch {
            events: Arc::from([event]),
            reply_to: self.source.clone() as Arc<dyn BatchSource>,
            blocked: self.blocked.clone(),
            handler: 0,
            slot: 0,
        };
        let handled = AssertUnwindSafe(self.behaviour.handle(&self.pool, &batch))
            .catch_unwind()
            .await
            .map_err(|panic| StandaloneError::Panicked(panic_text(&panic)))?;
        let outcome = handled.map_err(|error| match error.downcast_ref::<Transient>() {
            Some(transient) => StandaloneError::Transient(transient.0.clone()),
            None => StandaloneError::Refused(error.to_string()),
        })?;
        if let Some(settling) = outcome.settling {
            if let Some((_, error)) = settling.await.into_iter().next() {
                // The writer holds later events back until a failure is taken in.
                self.behaviour.failures_parked();
                return Err(match error.disposition() {
                    Disposition::Permanent(_) => StandaloneError::Refused(error.to_string()),
                    // Settings eventd must be given anew, or an outage: a later run may pass.
                    Disposition::Misconfigured
                    | Disposition::NotCharged
                    | Disposition::Transient { .. } => {
                        StandaloneError::Transient(error.to_string())
                    }
                });
            }
        }
        Ok(())
    }

    /// Emits what the handler still holds (count windows) and waits until the broker
    /// acknowledged every record, sending again what failed after its backoff. It
    /// ends only when all landed: the caller bounds it, then calls `give_up`.
    pub async fn flush(&mut self) -> Result<(), FlushError> {
        loop {
            match self.behaviour.flush(&self.pool, 0).await {
                0 => return Ok(()),
                // Records in their backoff are sent by the next pass once due.
                _ if self.source.is_open() => tokio::time::sleep(FLUSH_PASS).await,
                records => {
                    return Err(FlushError::Unacknowledged {
                        handler: self.pool.name.to_string(),
                        records,
                    })
                }
            }
        }
    }
}

/// Between two passes over records waiting for their backoff.
const FLUSH_PASS: Duration = Duration::from_millis(50);

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "no message".to_owned())
}
