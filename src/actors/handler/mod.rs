//! Handler side of the tree: the HandlerSupervisor runs one pool of handler actors per
//! `[[handlers]]` entry and restarts failed ones with backoff.
//!
//! Partition workers reach pools through a `Router`, which picks the handlers of an
//! event (topic and filter) and the actor within each pool (key hash, so events of one
//! key are handled in order). Events travel in batches, and each batch is remembered by
//! the worker until the actor reports it finished; an actor that dies loses its
//! mailbox, so the worker resends what it still holds to the restarted actor, in offset
//! order, before anything newer (see `partition_worker`).

mod actor;
mod kinds;
mod pool;
mod supervisor;

pub use actor::{HandlerActor, HandlerArgs};
pub use pool::{HandlerPool, HandlerSettings, Route, Router};
pub use supervisor::{build_pools, HandlerSupervisor, HandlerSupervisorArgs, HandlerSupervisorMsg};

use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};

use crate::actors::consumer::partition_worker::PartitionWorkerMsg;
use crate::actors::producer::dead_letter::Blocked;
use crate::event::Event;

/// Messages of a handler actor.
pub enum HandlerMsg {
    /// Events to handle in the order given; the sender is told when they are finished.
    Batch(Batch),
    /// Emit every open count window now, even unfinished ones (revoke, shutdown), and
    /// reply once the broker acknowledged them. Other kinds reply at once.
    Flush(RpcReplyPort<()>),
    /// Periodic: close count windows whose end has passed.
    Tick,
    /// A write of an earlier batch failed after `handle` returned; the actor fails so
    /// its restart gets everything unfinished again.
    WriteFailed(String),
}

/// A run of events of one partition for one handler actor.
pub struct Batch {
    pub events: Vec<Arc<Event>>,
    pub reply_to: ActorRef<PartitionWorkerMsg>,
    /// The source partition's blocked marker, for writes its offset waits on.
    pub blocked: Arc<Blocked>,
    /// Which pool and which actor in it, echoed back in the finished report.
    pub handler: usize,
    pub slot: usize,
}
