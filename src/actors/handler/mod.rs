//! Handler side of the tree: the HandlerSupervisor runs one pool of handler actors per
//! `[[handlers]]` entry and restarts failed ones with backoff.
//!
//! Partition workers reach pools through a `Router`, which picks the handlers of an
//! event (topic and filter) and the actor within each pool (key hash, so events of one
//! key are handled in order). Events travel in batches, and each batch is remembered by
//! the worker until the actor reports it finished; an actor that dies loses its
//! mailbox, so the worker resends what it still holds to the restarted actor, in offset
//! order, before anything newer (see `partition_worker`).
//!
//! Whatever fails in a handler's work (the handler, a copy it writes, a count record, a
//! dead-letter copy) takes one path, the actor's outbox: the event's key is parked and
//! retried with the handler's backoff, holding back only the later events of its key,
//! and the event is dead-lettered after `retry.max_attempts`. Only a panic restarts an
//! actor; it counts as an attempt for every event of the batch being handled.

mod actor;
mod failures;
mod kinds;
mod outbox;
mod pool;
mod standalone;
mod supervisor;

pub use actor::{HandlerActor, HandlerArgs};
pub use failures::Failures;
pub use outbox::ParkKey;
pub use pool::{HandlerPool, HandlerSettings, Route, Router};
pub use standalone::{Standalone, StandaloneError};
pub use supervisor::{build_pools, HandlerSupervisor, HandlerSupervisorArgs, HandlerSupervisorMsg};

use std::sync::Arc;

use ractor::{ActorId, RpcReplyPort};

use crate::actors::producer::dead_letter::{Blocked, BlockedMark};
use crate::event::Event;

/// Messages of a handler actor.
pub enum HandlerMsg {
    /// Events to handle in the order given; the sender is told when they are finished.
    Batch(Batch),
    /// Emit every open count window now, even unfinished ones (revoke, shutdown), and
    /// reply once the broker acknowledged them (or at the producer's deadline) with
    /// how many records are not acknowledged. Other kinds reply 0 at once.
    Flush(RpcReplyPort<usize>),
    /// Periodic: close count windows whose end has passed.
    Tick,
    /// Writes of an earlier batch were not all acknowledged: the failed ones take the
    /// failure path of the outbox.
    Settled(Box<actor::Unsettled>),
    /// A dead-letter write failed: parked and tried again after the backoff.
    DeadLetterFailed(
        Box<(Batch, outbox::LetterState, Option<BlockedMark>)>,
        crate::actors::producer::ProduceError,
    ),
    /// The backoff of the event at the head of this key's retry queue has passed.
    Retry(ParkKey),
    /// Writes sent to a producer since replaced were settled: held work may go on.
    ProducerCaughtUp,
}

/// Why count windows were not all written at a hand-back: the records are still
/// held (the broker did not acknowledge them in time) or nobody answered.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("handler {handler}: {records} count records not acknowledged by the broker in time")]
    Unacknowledged { handler: String, records: usize },
    #[error("handler {handler}: no answer to the flush in time")]
    TimedOut { handler: String },
    #[error("handler {handler}: the actor stopped during the flush")]
    Stopped { handler: String },
}

/// Why one write of a batch (a copy to Kafka, a delivery to a webhook) did not land.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteFailure {
    #[error(transparent)]
    Produce(#[from] crate::actors::producer::ProduceError),
    #[error(transparent)]
    Webhook(#[from] kinds::WebhookFailure),
}

/// What the failure path does with a write that failed.
pub(crate) enum Disposition {
    /// Not the event's fault and nothing was attempted (a producer being replaced, a
    /// delivery held behind an earlier failure): tried again after the first backoff,
    /// no attempt charged.
    NotCharged,
    /// Refused for good: dead-lettered for this reason.
    Permanent(crate::actors::producer::dead_letter::Reason),
    /// eventd's own config is at fault (a webhook answering 401 or 403): the partition
    /// is shown blocked and the event retried at the longest backoff, never
    /// dead-lettered, since every other event would fail the same way.
    Misconfigured,
    /// May pass: charged under `retry.transient`, waiting at least `retry_after`.
    Transient {
        retry_after: Option<std::time::Duration>,
    },
}

impl WriteFailure {
    pub(crate) fn disposition(&self) -> Disposition {
        use crate::actors::producer::{dead_letter::Reason, ProduceError};
        match self {
            WriteFailure::Produce(ProduceError::Replaced) => Disposition::NotCharged,
            WriteFailure::Produce(ProduceError::TooLarge { .. }) => {
                Disposition::Permanent(Reason::TooLarge)
            }
            WriteFailure::Produce(error) if error.is_permanent() => {
                Disposition::Permanent(Reason::ProduceRejected)
            }
            WriteFailure::Produce(_) => Disposition::Transient { retry_after: None },
            WriteFailure::Webhook(failure) => failure.disposition(),
        }
    }
}

/// An error a handler marks as one that may pass (a downstream unavailable, a
/// timeout): retried under `retry.transient` instead of `retry.max_attempts`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

/// The partition a batch came from, as handlers see it: where they report what they
/// finished. The partition worker implements it; the handler layer knows no more of it.
pub trait BatchSource: Send + Sync + 'static {
    /// `offsets` of one batch are finished; `holds` lists count windows that now hold
    /// offsets of this partition (window id, first offset).
    fn finished(&self, handler: usize, slot: usize, offsets: Vec<i64>, holds: Vec<(i64, i64)>);
    /// A count window (by id) that held offsets of this partition was emitted and
    /// acknowledged.
    fn released(&self, handler: usize, slot: usize, window: i64);
    /// False once the partition is gone (revoked, stopped): nothing waits on its writes.
    fn is_open(&self) -> bool;
    /// Tells sources apart, so a count window remembers each contributor once.
    fn id(&self) -> ActorId;
    /// Fails the source as a defect in it would (tests drive this through `fault`).
    #[cfg(feature = "fault-injection")]
    fn inject_failure(&self, _reason: String) {}
}

/// A run of events of one partition for one handler actor.
#[derive(Clone)]
pub struct Batch {
    /// Shared, so a writer settling the batch beside its actor holds it at no cost per event.
    pub events: Arc<[Arc<Event>]>,
    pub reply_to: Arc<dyn BatchSource>,
    /// The source partition's blocked marker, for writes its offset waits on.
    pub blocked: Arc<Blocked>,
    /// Which pool and which actor in it, echoed back in the finished report.
    pub handler: usize,
    pub slot: usize,
}
