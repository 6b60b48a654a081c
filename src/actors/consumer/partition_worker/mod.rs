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

mod inflight;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::context::{KafkaConsumer, KafkaPartitionQueue};
use crate::actors::handler::{Batch, BatchSource, HandlerMsg, HandlerSettings, Router};
use crate::actors::producer::dead_letter::{
    dead_letter_copy, write_dead_letter, Blocked, Provenance, Reason,
};
use crate::actors::producer::ProducerHandle;
use crate::event::{Body, DecodeError, Event, FieldNames, Source};
use crate::telemetry::metrics::{
    EVENTS_CONSUMED, EVENTS_HANDLED, EVENTS_INVALID, PARTITION_IN_FLIGHT, PARTITION_REPEATS,
    PARTITION_REWINDS,
};
use crate::telemetry::partitions::{PartitionKey, BOARD};

pub use inflight::{Arrival, InFlight};

/// An event below every offset this worker dispatched.
#[derive(Debug, Clone, Copy)]
pub struct Behind {
    offset: i64,
    next: i64,
}

/// A handler pool's index and a slot in it.
type SlotKey = (usize, usize);

/// Handler id of dead-letter writes in finished reports.
const DEAD_LETTER: usize = usize::MAX;
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
}

/// Messages of a PartitionWorker.
pub enum PartitionWorkerMsg {
    /// Read what the partition queue has, within the in-flight budget.
    Poll,
    /// An event of this partition that arrived on the consumer's main queue.
    Stray(OwnedMessage),
    /// A handler actor finished these offsets of one batch; `holds` lists count
    /// windows that now hold offsets of this partition (window start, first offset).
    Finished {
        handler: usize,
        slot: usize,
        offsets: Vec<i64>,
        holds: Vec<(i64, i64)>,
    },
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
}

/// Where a partition stands when it is handed back.
#[derive(Debug, Clone, Copy)]
pub struct FinalPosition {
    pub stored: Option<i64>,
    pub in_flight: usize,
    pub held_windows: usize,
}

/// Events sent to one handler slot and not yet reported finished.
#[derive(Default)]
struct Outstanding {
    /// Slot generation the events were sent to; a different one means resend.
    generation: u64,
    events: SentEvents,
}

/// Events of one slot in offset order; finished ones are emptied in place and leave
/// from the front, so sending and finishing cost no map insert or removal.
#[derive(Default)]
struct SentEvents {
    events: VecDeque<(i64, Option<Arc<Event>>)>,
    unfinished: usize,
}

impl SentEvents {
    fn push(&mut self, event: Arc<Event>) {
        let offset = event.source.offset;
        match self.events.back() {
            Some((last, _)) if *last >= offset => {
                // Not reached while offsets are dispatched in order; kept sorted anyway.
                match self.events.binary_search_by_key(&offset, |(o, _)| *o) {
                    Ok(at) => {
                        if self.events[at].1.replace(event).is_none() {
                            self.unfinished += 1;
                        }
                    }
                    Err(at) => {
                        self.events.insert(at, (offset, Some(event)));
                        self.unfinished += 1;
                    }
                }
            }
            _ => {
                self.events.push_back((offset, Some(event)));
                self.unfinished += 1;
            }
        }
    }

    /// Whether `offset` was held here (and is now released).
    fn finish(&mut self, offset: i64) -> bool {
        let Ok(at) = self.events.binary_search_by_key(&offset, |(o, _)| *o) else {
            return false;
        };
        if self.events[at].1.take().is_none() {
            return false;
        }
        self.unfinished -= 1;
        while self
            .events
            .front()
            .is_some_and(|(_, event)| event.is_none())
        {
            self.events.pop_front();
        }
        // As in InFlight: a long-unfinished event must not keep every later one's slot.
        if self.events.len() > 2 * self.unfinished + inflight::COMPACT_SLACK {
            self.events.retain(|(_, event)| event.is_some());
        }
        true
    }

    fn unfinished(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.events.iter().filter_map(|(_, event)| event.as_ref())
    }

    fn is_empty(&self) -> bool {
        self.unfinished == 0
    }
}

/// One decoded (or undecodable) message, detached from librdkafka's buffer.
struct Taken {
    offset: i64,
    key: Option<Vec<u8>>,
    headers: crate::event::Headers,
    timestamp: Option<i64>,
    body: Result<Body, Undecodable>,
}

/// Why an event could not be decoded, with its original payload for the dead-letter copy.
type Undecodable = (DecodeError, Option<Vec<u8>>);

/// What this partition's handlers read of each event, as their settings stand now;
/// the events read with it are routed by the same settings.
struct Wanted {
    settings: Vec<Option<Arc<HandlerSettings>>>,
    names: Arc<FieldNames>,
    /// Kafka headers are copied out only for handlers that pass them on.
    headers: bool,
}

impl Taken {
    fn from_message<M: Message>(message: &M, wanted: &Wanted) -> Taken {
        let body = Event::decode(message.payload(), &wanted.names)
            .map_err(|error| (error, message.payload().map(<[u8]>::to_vec)));
        // An undecodable event's dead-letter copy keeps its headers.
        let headers = if wanted.headers || body.is_err() {
            message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            (
                                Cow::Owned(h.key.to_owned()),
                                h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        } else {
            crate::event::Headers::new()
        };
        Taken {
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            headers,
            timestamp: message.timestamp().to_millis(),
            body,
        }
    }
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
        let wanted = self.wanted();
        let mut taken = Vec::with_capacity(budget.min(64));
        while taken.len() < budget {
            match queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => taken.push(Taken::from_message(&message, &wanted)),
                Some(Err(error)) => {
                    tracing::warn!(consumer = %self.consumer_name, topic = %self.topic,
                        partition = self.partition, %error, "consume error");
                    break;
                }
            }
        }
        let more_waiting = taken.len() == MAX_READ;
        self.dispatch(myself, taken, &wanted)?;
        if more_waiting {
            self.queue_poll(myself);
        }
        Ok(())
    }

    fn board_key(&self) -> PartitionKey {
        (
            self.consumer_name.to_string(),
            self.topic.to_string(),
            self.partition,
        )
    }

    /// Age of the oldest unfinished event (its Kafka timestamp to now) and whether the
    /// partition is stalled, for `/metrics` and `/healthz`.
    fn measure(&mut self) {
        let oldest = self
            .outstanding
            .values()
            .filter_map(|o| o.events.unfinished().next())
            .min_by_key(|event| event.source.offset)
            .and_then(|event| event.timestamp);
        let lag_seconds = match (self.inflight.is_empty(), oldest) {
            (true, _) | (false, None) => 0.0,
            (false, Some(at)) => {
                (chrono::Utc::now().timestamp_millis() - at).max(0) as f64 / 1000.0
            }
        };
        let stalled =
            !self.inflight.is_empty() && self.last_progress.elapsed() >= self.stall_timeout;
        if stalled != self.stalled {
            self.stalled = stalled;
            if stalled {
                tracing::warn!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
                    in_flight = self.inflight.len(), since_s = self.last_progress.elapsed().as_secs(),
                    "partition stalled: events unfinished and none finished for health.stall_timeout");
            } else {
                tracing::info!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
                    "partition no longer stalled");
            }
        }
        BOARD.set_worker(self.board_key(), lag_seconds, stalled);
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

    fn wanted(&self) -> Wanted {
        let settings = self.router.snapshot(&self.topic);
        Wanted {
            names: Arc::new(self.router.field_names(&settings)),
            headers: self.router.reads_headers(&settings),
            settings,
        }
    }

    /// Hands `taken` to the handlers, skipping repeats; stops at an event below
    /// anything dispatched here.
    fn dispatch(
        &mut self,
        myself: &ActorRef<PartitionWorkerMsg>,
        taken: Vec<Taken>,
        wanted: &Wanted,
    ) -> Result<(), Behind> {
        if taken.is_empty() {
            return Ok(());
        }
        if self.inflight.is_empty() {
            // Nothing was waiting: a stall counts from now.
            self.last_progress = Instant::now();
        }
        let settings = &wanted.settings;
        // A few (handler, slot) pairs at most: a list searched in place beats hashing
        // the pair for every event.
        let mut batches: Vec<(SlotKey, Vec<Arc<Event>>)> = Vec::new();
        let mut behind = None;
        let mut repeats = Vec::new();
        let mut consumed = 0;
        // Per batch, on the stack for the few routes a consumer has.
        let mut filtered: smallvec::SmallVec<[u64; 8]> =
            smallvec::smallvec![0; self.router.routes.len()];
        for message in taken {
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

    /// An event arrived below the first offset this worker dispatched: it was never
    /// dispatched, and the offsets stored since may have passed it. Skipping it could
    /// lose it, so the stored and committed offset go back to no later than it, and the
    /// worker fails: its member restarts and reads the partition again from there.
    async fn rewind(&mut self, behind: Behind) -> ActorProcessingErr {
        metrics::counter!(PARTITION_REWINDS, "consumer" => self.consumer_name.to_string(), "topic" => self.topic.to_string())
            .increment(1);
        let restart_at = self
            .inflight
            .committable()
            .map_or(behind.offset, |stored| stored.min(behind.offset));
        tracing::error!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
            offset = behind.offset, next = behind.next, restart_at,
            "event below the partition's first dispatched offset; restarting the partition from an earlier offset");
        if let (true, Some((_, client))) = (self.store_offsets, &self.source) {
            let mut list = TopicPartitionList::with_capacity(1);
            if list
                .add_partition_offset(&self.topic, self.partition, Offset::Offset(restart_at))
                .is_ok()
            {
                let client = client.clone();
                let committed = tokio::task::spawn_blocking(move || {
                    client.store_offsets(&list)?;
                    client.commit(&list, CommitMode::Sync)
                })
                .await;
                if !matches!(committed, Ok(Ok(()))) {
                    tracing::error!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
                        restart_at, result = ?committed, "cannot commit the earlier offset; the restart resumes from the last commit");
                }
            }
        }
        format!(
            "{}/{}: offset {} arrived below the offsets dispatched (next {})",
            self.topic, self.partition, behind.offset, behind.next
        )
        .into()
    }

    /// Sends `fresh` to a slot, preceded by everything the slot's previous actor held.
    fn send(&mut self, handler: usize, slot: usize, fresh: Vec<Arc<Event>>) {
        let Some(route) = self.router.routes.iter().find(|r| r.pool.index == handler) else {
            return;
        };
        let target = &route.pool.slots[slot];
        let current = target.current();
        let generation = current.generation;
        let outstanding = self.outstanding.entry((handler, slot)).or_default();
        let mut events: Vec<Arc<Event>> = if outstanding.generation != generation {
            outstanding.events.unfinished().cloned().collect()
        } else {
            Vec::with_capacity(fresh.len())
        };
        if !events.is_empty() {
            tracing::info!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
                handler = %route.pool.name, slot, events = events.len(), "redelivering to restarted handler");
        }
        for event in fresh {
            outstanding.events.push(event.clone());
            events.push(event);
        }
        outstanding.generation = generation;
        if events.is_empty() {
            return;
        }
        let delivered = current.actor.is_some_and(|actor| {
            actor
                .send_message(HandlerMsg::Batch(Batch {
                    events: events.into(),
                    reply_to: self.source_handle.clone(),
                    blocked: self.blocked.clone(),
                    handler,
                    slot,
                }))
                .is_ok()
        });
        if !delivered {
            // The actor is down; its replacement gets a new generation and everything.
            outstanding.generation = u64::MAX;
        }
    }

    /// Resends to slots whose actor was replaced since the events were sent.
    fn resend_to_restarted(&mut self) {
        let stale: Vec<(usize, usize)> = self
            .outstanding
            .iter()
            .filter(|(_, o)| !o.events.is_empty())
            .filter(|((handler, slot), o)| {
                self.router
                    .routes
                    .iter()
                    .find(|r| r.pool.index == *handler)
                    .is_some_and(|r| r.pool.slots[*slot].generation() != o.generation)
            })
            .map(|(key, _)| *key)
            .collect();
        for (handler, slot) in stale {
            self.send(handler, slot, Vec::new());
        }
    }

    fn invalid_event(
        &mut self,
        myself: &ActorRef<PartitionWorkerMsg>,
        offset: i64,
        key: Option<Vec<u8>>,
        kafka_headers: crate::event::Headers,
        payload: Option<Vec<u8>>,
        error: DecodeError,
    ) {
        self.invalid.increment(1);
        tracing::warn!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
            offset, %error, dead_letter = self.dead_letter.as_deref().unwrap_or("none"), "invalid event");
        let Some(topic) = self.dead_letter.clone() else {
            self.inflight.dispatched(offset, 0);
            return;
        };
        self.inflight.dispatched(offset, 1);
        let source = Source {
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
        };
        let error = error.to_string();
        let outgoing = dead_letter_copy(
            &topic,
            key,
            payload.unwrap_or_default(),
            kafka_headers,
            &source,
            &Provenance {
                handler: None,
                reason: Reason::Undecodable,
                error: &error,
                attempts: None,
            },
        );
        let producer = self.producer.clone();
        let worker = myself.clone();
        let blocked = self.blocked.clone();
        tokio::spawn(async move {
            // The offset stays unstored until the dead-letter write is acknowledged.
            let written = write_dead_letter(
                &producer,
                outgoing,
                &source,
                &blocked,
                ("", Reason::Undecodable),
                || worker.get_status() == ractor::ActorStatus::Running,
            )
            .await;
            if written {
                let _ = worker.send_message(PartitionWorkerMsg::Finished {
                    handler: DEAD_LETTER,
                    slot: 0,
                    offsets: vec![offset],
                    holds: Vec::new(),
                });
            }
        });
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
        if handler == DEAD_LETTER {
            offsets
                .into_iter()
                .for_each(|offset| self.inflight.finished(offset));
        } else if let Some(outstanding) = self.outstanding.get_mut(&(handler, slot)) {
            for offset in offsets {
                // A repeat report (after a resend) must not finish an offset twice.
                if outstanding.events.finish(offset) {
                    self.inflight.finished(offset);
                }
            }
        }
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

    fn store_if_moved(&mut self) {
        let Some(offset) = self.inflight.committable() else {
            return;
        };
        if self.stored == Some(offset) {
            return;
        }
        if !self.store_offsets {
            self.stored = Some(offset);
            return;
        }
        let mut list = TopicPartitionList::with_capacity(1);
        if list
            .add_partition_offset(&self.topic, self.partition, Offset::Offset(offset))
            .is_err()
        {
            return;
        }
        let Some((_, client)) = &self.source else {
            return;
        };
        // `store_offsets` stores exactly what it is given: the next offset to read.
        match client.store_offsets(&list) {
            Ok(()) => self.stored = Some(offset),
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                tracing::debug!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition, "partition no longer assigned, offset not stored");
            }
            Err(error) => {
                tracing::warn!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition, offset, %error, "cannot store offset");
            }
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
                    let wanted = state.wanted();
                    let taken = Taken::from_message(&message, &wanted);
                    if let Err(behind) = state.dispatch(&myself, vec![taken], &wanted) {
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
        state.waker.abort();
        state.measuring.abort();
        BOARD.remove(&state.board_key());
        // The queue and the client close the consumer if they are its last references.
        if let Some(source) = state.source.take() {
            crate::actors::drop_off_runtime(source);
        }
        state.in_flight_gauge.set(0.0);
        tracing::info!(consumer = %state.consumer_name, topic = %state.topic, partition = state.partition,
            stored = state.stored, in_flight = state.inflight.len(), "partition worker stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event as event;

    fn offsets(sent: &SentEvents) -> Vec<i64> {
        sent.unfinished().map(|e| e.source.offset).collect()
    }

    #[test]
    fn events_finished_behind_a_stuck_one_do_not_pile_up() {
        let mut sent = SentEvents::default();
        for offset in 0..20_000 {
            sent.push(event(offset));
            if offset > 0 {
                assert!(sent.finish(offset));
            }
        }
        assert!(
            sent.events.len() <= 2 + inflight::COMPACT_SLACK,
            "{} kept",
            sent.events.len()
        );
        assert_eq!(offsets(&sent), [0]);
        assert!(sent.finish(0) && sent.is_empty());
    }

    #[test]
    fn sent_events_resend_what_is_unfinished_in_offset_order() {
        let mut sent = SentEvents::default();
        for offset in [10, 11, 12, 14] {
            sent.push(event(offset));
        }
        assert!(sent.finish(12));
        assert!(!sent.finish(12), "a repeat report finishes nothing");
        assert!(!sent.finish(13), "never sent");
        assert_eq!(offsets(&sent), [10, 11, 14]);
        assert!(sent.finish(10));
        assert!(sent.finish(11));
        assert_eq!(offsets(&sent), [14]);
        sent.push(event(13));
        assert_eq!(offsets(&sent), [13, 14], "kept in order even if sent late");
        assert!(sent.finish(14) && sent.finish(13));
        assert!(sent.is_empty());
    }
}
