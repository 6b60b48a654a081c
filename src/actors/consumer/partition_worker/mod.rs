//! The PartitionWorker: one per assigned partition. It reads the partition's own queue
//! (split from the consumer), decodes events, hands them to handler actors in batches,
//! and stores the offset below which every event is finished.
//!
//! - Backpressure: with `max_in_flight` unfinished events it stops reading its queue;
//!   the consumer keeps polling its main queue, so the member stays in the group. A
//!   full partition is read again only once its unfinished events fall to the low mark
//!   (half of `max_in_flight`): refilling as soon as one event finishes would read one
//!   event at a time, and batches of one make every handler pay a round trip per event.
//! - Order: events leave in offset order, and a pool sends one key to one actor.
//! - Redelivery: each batch stays here until its actor reports it finished. When a
//!   slot has a new actor (its generation moved), everything still held for that slot
//!   is resent first, in offset order, then newer events follow.
//! - Undecodable events are counted, logged and written to the dead-letter topic; the
//!   offset moves past them only once the broker acknowledged that write.

mod dead_letter;
mod decode;
mod health;
mod inflight;
mod offsets;
mod redelivery;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::message::OwnedMessage;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::context::{KafkaConsumer, KafkaPartitionQueue};
use crate::actors::handler::{BatchSource, Router};
use crate::actors::producer::dead_letter::Blocked;
use crate::actors::producer::ProducerHandle;
use crate::event::{Event, Source};
use crate::telemetry::metrics::{
    EVENTS_CONSUMED, EVENTS_HANDLED, EVENTS_INVALID, PARTITION_IN_FLIGHT, PARTITION_REPEATS,
};
use crate::telemetry::partitions::{Seat, BOARD};

use decode::{ReadEvent, ReadPlan};
use offsets::Behind;
use redelivery::Outstanding;

pub use inflight::{Arrival, InFlight};

/// A handler pool's index and a slot in it.
type SlotKey = (usize, usize);

/// Most events read per `Poll`, so acknowledgements interleave with reading.
const MAX_READ: usize = 512;
/// Wake-up when librdkafka's non-empty signal is missed, and for resends.
const IDLE_WAKE: Duration = Duration::from_millis(200);

pub struct PartitionWorker;

/// Where a full partition resumes reading: half of `max_in_flight`, so each refill is
/// a batch of at least that many events.
fn low_mark(max_in_flight: usize) -> usize {
    max_in_flight / 2
}

pub struct PartitionWorkerArgs {
    pub consumer_name: Arc<str>,
    pub topic: Arc<str>,
    pub partition: i32,
    pub queue: KafkaPartitionQueue,
    pub client: Arc<KafkaConsumer>,
    pub router: Router,
    pub producer: ProducerHandle,
    pub dead_letter: Option<String>,
    pub max_in_flight: usize,
    /// False when nothing is committed (a `partitions` consumer without commit_group).
    pub store_offsets: bool,
    /// How often lag and stall are measured.
    pub lag_interval: Duration,
    /// Unfinished events of which none finished for this long: stalled.
    pub stall_timeout: Duration,
    /// Set for a `partitions` consumer under `commit_group`, which no group membership
    /// shows: its commits name this process, and an idle partition recommits.
    pub heartbeat: Option<CommitHeartbeat>,
}

/// How a `partitions` consumer keeps its commits showing it runs (`kafka::holder`).
pub struct CommitHeartbeat {
    /// `commit_interval`: an idle partition recommits this often.
    pub every: Duration,
    /// The offset committed under `commit_group` when the partition was assigned.
    pub committed_at_start: Option<i64>,
}

struct HeartbeatState {
    every: Duration,
    committed_at_start: Option<i64>,
    /// What was stored at the previous tick: a partition whose stored offset did not
    /// move for a whole interval had it committed by auto-commit already.
    seen_at_last_tick: Option<i64>,
    timer: JoinHandle<()>,
}

/// Messages of a PartitionWorker.
pub enum PartitionWorkerMsg {
    /// Read what the partition queue has, within the in-flight budget.
    Poll,
    /// An event of this partition that arrived on the consumer's main queue.
    Stray(OwnedMessage),
    /// A handler actor finished these offsets of one batch; `holds` lists count
    /// windows that now hold offsets of this partition (window id, first offset).
    Finished {
        handler: usize,
        slot: usize,
        offsets: Vec<i64>,
        holds: Vec<(i64, i64)>,
    },
    /// The dead-letter copy of the undecodable event at this offset was acknowledged.
    DeadLettered(i64),
    /// A count window was emitted and acknowledged; its offsets may be stored.
    Released {
        handler: usize,
        slot: usize,
        window: i64,
    },
    /// Stop reading; reply once nothing is in flight.
    Drain(RpcReplyPort<()>),
    /// Store the final offset and reply with it, with the number of events unfinished.
    StoreFinal(RpcReplyPort<FinalPosition>),
    /// Every `metrics.lag_interval`: measure lag in seconds and look for a stall.
    Measure,
    /// Fail now, as a defect would (`fault` handlers with `action = "fail_partition"`).
    #[cfg(feature = "fault-injection")]
    InjectedFailure(String),
    /// Every `commit_interval` with a heartbeat: recommit an idle partition's offset.
    Heartbeat,
}

/// Where a partition stands when it is handed back.
#[derive(Debug, Clone, Copy)]
pub struct FinalPosition {
    pub stored: Option<i64>,
    pub in_flight: usize,
    pub held_windows: usize,
}

pub struct PartitionWorkerState {
    consumer_name: Arc<str>,
    topic: Arc<str>,
    partition: i32,
    /// The partition's queue and its consumer; released in `post_stop`, because ractor
    /// hands a stopped actor's state to its supervisor, and the consumer can close
    /// only once every reference to it is gone.
    source: Option<(KafkaPartitionQueue, Arc<KafkaConsumer>)>,
    router: Router,
    producer: ProducerHandle,
    dead_letter: Option<String>,
    max_in_flight: usize,
    /// A full partition is read again only at or below this many unfinished events.
    low_mark: usize,
    /// Reached `max_in_flight` and not yet back down to `low_mark`.
    full: bool,
    store_offsets: bool,
    inflight: InFlight,
    outstanding: HashMap<(usize, usize), Outstanding>,
    /// Last offset handed to librdkafka's store.
    stored: Option<i64>,
    /// Set by `Drain`: no more reading.
    draining: bool,
    drained: Option<RpcReplyPort<()>>,
    /// A `Poll` is queued; the waker does not queue another.
    poll_queued: Arc<AtomicBool>,
    waker: JoinHandle<()>,
    consumed: Counter,
    invalid: Counter,
    /// `eventd_events_handled_total{outcome="filtered"}` per route of `router`,
    /// registered when first counted so handlers not taking this topic show none.
    filtered: Vec<Option<Counter>>,
    in_flight_gauge: Gauge,
    /// Marked while a write this partition's offset waits on keeps failing.
    blocked: Arc<Blocked>,
    /// This worker as the handlers of its batches see it.
    source_handle: Arc<WorkerHandle>,
    /// When an offset last finished, or unfinished events began after none were.
    last_progress: Instant,
    stall_timeout: Duration,
    stalled: bool,
    measuring: JoinHandle<()>,
    /// This worker's claim on the partition's series.
    seat: Seat,
    heartbeat: Option<HeartbeatState>,
}

/// A partition worker as the handlers of its batches see it.
struct WorkerHandle {
    actor: ActorRef<PartitionWorkerMsg>,
    /// False from the moment the partition is being handed back (revoke, shutdown):
    /// no retry, resend or dead-letter copy is made for it from then on; its next
    /// owner reads those events again from the committed offset.
    owned: AtomicBool,
}

impl BatchSource for WorkerHandle {
    fn finished(&self, handler: usize, slot: usize, offsets: Vec<i64>, holds: Vec<(i64, i64)>) {
        // The worker may be gone (partition revoked); then nothing waits for this report.
        let _ = self.actor.send_message(PartitionWorkerMsg::Finished {
            handler,
            slot,
            offsets,
            holds,
        });
    }

    fn released(&self, handler: usize, slot: usize, window: i64) {
        let _ = self.actor.send_message(PartitionWorkerMsg::Released {
            handler,
            slot,
            window,
        });
    }

    #[cfg(feature = "fault-injection")]
    fn inject_failure(&self, reason: String) {
        let _ = self
            .actor
            .send_message(PartitionWorkerMsg::InjectedFailure(reason));
    }

    fn is_open(&self) -> bool {
        self.owned.load(Ordering::Acquire)
            && self.actor.get_status() == ractor::ActorStatus::Running
    }

    fn id(&self) -> ractor::ActorId {
        self.actor.get_id()
    }
}

impl PartitionWorkerState {
    fn read(&mut self, myself: &ActorRef<PartitionWorkerMsg>) -> Result<(), Behind> {
        if self.full {
            if self.inflight.len() > self.low_mark {
                return Ok(());
            }
            self.full = false;
        }
        let budget = self
            .max_in_flight
            .saturating_sub(self.inflight.len())
            .min(MAX_READ);
        let Some((queue, _)) = &self.source else {
            return Ok(());
        };
        let plan = self.plan();
        let mut read = Vec::with_capacity(budget.min(64));
        while read.len() < budget {
            match queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => read.push(ReadEvent::from_message(&message, &plan)),
                Some(Err(error)) => {
                    tracing::warn!(consumer = %self.consumer_name, topic = %self.topic,
                        partition = self.partition, %error, "consume error");
                    break;
                }
            }
        }
        let more_waiting = read.len() == MAX_READ;
        self.dispatch(myself, read, &plan)?;
        if more_waiting {
            self.queue_poll(myself);
        }
        Ok(())
    }

    fn filtered_counter(&mut self, route: usize) -> &Counter {
        let (router, topic) = (&self.router, &self.topic);
        self.filtered[route].get_or_insert_with(|| {
            metrics::counter!(EVENTS_HANDLED,
                "handler" => router.routes[route].pool.name.to_string(),
                "topic" => topic.to_string(),
                "outcome" => "filtered")
        })
    }

    /// Hands `read` to the handlers, skipping repeats; stops at an event below
    /// anything dispatched here.
    fn dispatch(
        &mut self,
        myself: &ActorRef<PartitionWorkerMsg>,
        read: Vec<ReadEvent>,
        plan: &ReadPlan,
    ) -> Result<(), Behind> {
        if read.is_empty() {
            return Ok(());
        }
        if self.inflight.is_empty() {
            // Nothing was waiting: a stall counts from now.
            self.last_progress = Instant::now();
        }
        let settings = &plan.settings;
        // A few (handler, slot) pairs at most: a list searched in place beats hashing
        // the pair for every event.
        let mut batches: Vec<(SlotKey, Vec<Arc<Event>>)> = Vec::new();
        let mut behind = None;
        let mut repeats = Vec::new();
        let mut consumed = 0;
        // Per batch, on the stack for the few routes a consumer has.
        let mut filtered: smallvec::SmallVec<[u64; 8]> =
            smallvec::smallvec![0; self.router.routes.len()];
        for message in read {
            match self.inflight.arrival(message.offset) {
                Arrival::InOrder => {}
                Arrival::Repeat => {
                    repeats.push(message.offset);
                    continue;
                }
                Arrival::Behind { next } => {
                    behind = Some(Behind {
                        offset: message.offset,
                        next,
                    });
                    break;
                }
            }
            consumed += 1;
            let body = match message.body {
                Ok(body) => body,
                Err((error, payload)) => {
                    self.invalid_event(
                        myself,
                        message.offset,
                        message.key,
                        message.headers,
                        payload,
                        error,
                    );
                    continue;
                }
            };
            let event = Arc::new(Event {
                source: Source {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    offset: message.offset,
                },
                key: message.key,
                headers: message.headers,
                timestamp: message.timestamp,
                body,
            });
            let mut handlers = 0;
            self.router.route(settings, &event, |route, slot| {
                let Some(slot) = slot else {
                    filtered[route] += 1;
                    return;
                };
                let target = (self.router.routes[route].pool.index, slot);
                match batches.iter_mut().find(|(key, _)| *key == target) {
                    Some((_, events)) => events.push(event.clone()),
                    None => batches.push((target, vec![event.clone()])),
                }
                handlers += 1;
            });
            self.inflight.dispatched(message.offset, handlers);
        }
        self.consumed.increment(consumed);
        for (route, filtered) in filtered.into_iter().enumerate() {
            if filtered > 0 {
                self.filtered_counter(route).increment(filtered);
            }
        }
        for ((handler, slot), events) in batches {
            self.send(handler, slot, events);
        }
        if let (Some(first), Some(last)) = (repeats.first(), repeats.last()) {
            // Offsets never change what they hold, so an offset between the first
            // dispatched and the next was handed out already or never existed.
            metrics::counter!(PARTITION_REPEATS, "consumer" => self.consumer_name.to_string(), "topic" => self.topic.to_string())
                .increment(repeats.len() as u64);
            tracing::info!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
                first, last, events = repeats.len(), "events delivered again below the next offset; dispatched before, not again");
        }
        if self.inflight.len() >= self.max_in_flight {
            self.full = true;
        }
        self.in_flight_gauge.set(self.inflight.len() as f64);
        match behind {
            Some(behind) => Err(behind),
            None => {
                self.store_if_moved();
                Ok(())
            }
        }
    }

    fn finished(
        &mut self,
        myself: &ActorRef<PartitionWorkerMsg>,
        handler: usize,
        slot: usize,
        offsets: Vec<i64>,
        holds: Vec<(i64, i64)>,
    ) {
        for (window, offset) in holds {
            self.inflight.hold((handler, slot, window), offset);
        }
        if let Some(outstanding) = self.outstanding.get_mut(&(handler, slot)) {
            for offset in offsets {
                // A repeat report (after a resend) must not finish an offset twice.
                if outstanding.events.finish(offset) {
                    self.inflight.finished(offset);
                }
            }
        }
        self.progressed(myself);
    }

    /// An undecodable event's dead-letter copy was acknowledged.
    fn dead_lettered(&mut self, myself: &ActorRef<PartitionWorkerMsg>, offset: i64) {
        self.inflight.finished(offset);
        self.progressed(myself);
    }

    /// Offsets finished: store what moved, answer a drain, read again below the mark.
    fn progressed(&mut self, myself: &ActorRef<PartitionWorkerMsg>) {
        self.last_progress = Instant::now();
        self.in_flight_gauge.set(self.inflight.len() as f64);
        self.store_if_moved();
        if self.inflight.is_empty() {
            if let Some(reply) = self.drained.take() {
                let _ = reply.send(());
            }
        }
        if self.full && self.inflight.len() <= self.low_mark && !self.draining {
            self.queue_poll(myself);
        }
    }

    fn queue_poll(&self, myself: &ActorRef<PartitionWorkerMsg>) {
        if !self.poll_queued.swap(true, Ordering::AcqRel) {
            let _ = myself.send_message(PartitionWorkerMsg::Poll);
        }
    }
}

impl Actor for PartitionWorker {
    type Msg = PartitionWorkerMsg;
    type State = PartitionWorkerState;
    type Arguments = PartitionWorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PartitionWorkerMsg>,
        mut args: PartitionWorkerArgs,
    ) -> Result<PartitionWorkerState, ActorProcessingErr> {
        let notify = Arc::new(Notify::new());
        let signal = notify.clone();
        args.queue
            .set_nonempty_callback(move || signal.notify_one());
        let poll_queued = Arc::new(AtomicBool::new(false));
        let waker = {
            let poll_queued = poll_queued.clone();
            let myself = myself.clone();
            tokio::spawn(async move {
                loop {
                    if !poll_queued.swap(true, Ordering::AcqRel)
                        && myself.send_message(PartitionWorkerMsg::Poll).is_err()
                    {
                        return;
                    }
                    let _ = tokio::time::timeout(IDLE_WAKE, notify.notified()).await;
                }
            })
        };
        let labels = [
            ("consumer", args.consumer_name.to_string()),
            ("topic", args.topic.to_string()),
        ];
        let in_flight_gauge = metrics::gauge!(PARTITION_IN_FLIGHT,
            "consumer" => args.consumer_name.to_string(),
            "topic" => args.topic.to_string(),
            "partition" => args.partition.to_string());
        tracing::info!(consumer = %args.consumer_name, topic = %args.topic, partition = args.partition, "partition worker started");
        let measuring = myself.send_interval(args.lag_interval, || PartitionWorkerMsg::Measure);
        let seat = BOARD.claim((
            args.consumer_name.to_string(),
            args.topic.to_string(),
            args.partition,
        ));
        let heartbeat = args.heartbeat.map(|beat| HeartbeatState {
            every: beat.every,
            committed_at_start: beat.committed_at_start,
            seen_at_last_tick: beat.committed_at_start,
            timer: myself.send_interval(beat.every, || PartitionWorkerMsg::Heartbeat),
        });
        if heartbeat.is_some() {
            // The last commit may be a stopped process's: show this one runs now, not
            // an interval from now, or a reset meanwhile would rewind a running process.
            let _ = myself.send_message(PartitionWorkerMsg::Heartbeat);
        }
        Ok(PartitionWorkerState {
            source_handle: Arc::new(WorkerHandle {
                actor: myself.clone(),
                owned: AtomicBool::new(true),
            }),
            blocked: Arc::new(Blocked::new(
                &args.consumer_name,
                &args.topic,
                args.partition,
            )),
            filtered: vec![None; args.router.routes.len()],
            consumed: metrics::counter!(EVENTS_CONSUMED, &labels),
            invalid: metrics::counter!(EVENTS_INVALID, &labels),
            in_flight_gauge,
            consumer_name: args.consumer_name,
            topic: args.topic,
            partition: args.partition,
            source: Some((args.queue, args.client)),
            router: args.router,
            producer: args.producer,
            dead_letter: args.dead_letter,
            max_in_flight: args.max_in_flight,
            low_mark: low_mark(args.max_in_flight),
            full: false,
            store_offsets: args.store_offsets,
            inflight: InFlight::default(),
            outstanding: HashMap::new(),
            stored: None,
            draining: false,
            drained: None,
            poll_queued,
            waker,
            last_progress: Instant::now(),
            stall_timeout: args.stall_timeout,
            stalled: false,
            measuring,
            seat,
            heartbeat,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PartitionWorkerMsg>,
        message: PartitionWorkerMsg,
        state: &mut PartitionWorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PartitionWorkerMsg::Poll => {
                state.poll_queued.store(false, Ordering::Release);
                state.resend_to_restarted();
                if !state.draining {
                    if let Err(behind) = state.read(&myself) {
                        return Err(state.rewind(behind).await);
                    }
                }
            }
            PartitionWorkerMsg::Stray(message) => {
                if !state.draining {
                    let plan = state.plan();
                    let read = ReadEvent::from_message(&message, &plan);
                    if let Err(behind) = state.dispatch(&myself, vec![read], &plan) {
                        return Err(state.rewind(behind).await);
                    }
                }
            }
            PartitionWorkerMsg::Finished {
                handler,
                slot,
                offsets,
                holds,
            } => {
                state.finished(&myself, handler, slot, offsets, holds);
            }
            PartitionWorkerMsg::DeadLettered(offset) => state.dead_lettered(&myself, offset),
            PartitionWorkerMsg::Released {
                handler,
                slot,
                window,
            } => {
                state.inflight.release((handler, slot, window));
                state.store_if_moved();
            }
            PartitionWorkerMsg::Drain(reply) => {
                state.draining = true;
                state.source_handle.owned.store(false, Ordering::Release);
                if state.inflight.is_empty() {
                    let _ = reply.send(());
                } else {
                    state.drained = Some(reply);
                }
            }
            PartitionWorkerMsg::Measure => state.measure(),
            #[cfg(feature = "fault-injection")]
            PartitionWorkerMsg::InjectedFailure(reason) => return Err(reason.into()),
            PartitionWorkerMsg::Heartbeat => state.heartbeat(),
            PartitionWorkerMsg::StoreFinal(reply) => {
                state.store_if_moved();
                let _ = reply.send(FinalPosition {
                    stored: state.stored,
                    in_flight: state.inflight.len(),
                    held_windows: state.inflight.holds(),
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PartitionWorkerMsg>,
        state: &mut PartitionWorkerState,
    ) -> Result<(), ActorProcessingErr> {
        state.release();
        tracing::info!(consumer = %state.consumer_name, topic = %state.topic, partition = state.partition,
            stored = state.stored, in_flight = state.inflight.len(), "partition worker stopped");
        Ok(())
    }
}
