//! The outbox of a handler actor: one ordered queue per key (source partition worker,
//! partition and routing key) for events whose work failed. Every failure of a
//! handler's work takes this one path, whatever failed: the handler, a copy the broker
//! did not acknowledge, a dead-letter write. The key is parked: its event waits out
//! its backoff under the handler's `[handlers.retry]`, later events of the key queue
//! behind it in offset order, and every other key goes on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;

use super::{Batch, HandlerMsg};
use crate::actors::producer::dead_letter::{BlockedMark, Reason};
use crate::actors::producer::Outgoing;
use crate::event::Event;
use crate::telemetry::metrics::{HANDLER_PARKED_KEYS, HANDLER_PARKED_OLDEST};

/// Events are retried in order per source partition and routing key. The partition
/// worker is part of the key: after a revoke and a new assignment, the new worker's
/// events must not queue behind the old worker's, which nobody waits for any more.
pub type ParkKey = (ractor::ActorId, i32, Vec<u8>);

pub fn park_key(batch: &Batch, event: &Event) -> ParkKey {
    (
        batch.reply_to.id(),
        event.source.partition,
        event.routing_key().into_owned(),
    )
}

/// An event waiting for a retry, or behind one of its key.
pub struct Parked {
    /// The event alone, with its partition's reply handle.
    pub batch: Batch,
    /// Held while the event cannot go anywhere (attempts used and no dead-letter
    /// topic, or its dead-letter write failing): its partition shows blocked.
    pub blocked: Option<BlockedMark>,
    pub work: Work,
}

impl Parked {
    /// An event queued behind its key's parked one, to be handled in its turn.
    pub fn new(batch: Batch) -> Self {
        Self {
            batch,
            blocked: None,
            work: Work::Handle,
        }
    }

    fn offset(&self) -> i64 {
        self.batch.events[0].source.offset
    }
}

/// What is still to be done for a parked event.
pub enum Work {
    /// Run the handler on it (again), writes included.
    Handle,
    /// Write its dead-letter copy again.
    DeadLetter(Box<LetterState>),
}

/// A dead-letter copy on its way.
pub struct LetterState {
    pub copy: Outgoing,
    pub reason: Reason,
    /// Failed writes of it, for the backoff.
    pub failures: u32,
}

/// The parked keys of one actor.
pub struct Outbox {
    /// Each key's queue and since when the key has been parked.
    queues: HashMap<ParkKey, (VecDeque<Parked>, Instant)>,
    shown: Arc<ParkedShown>,
    slot: usize,
}

impl Outbox {
    pub fn new(shown: Arc<ParkedShown>, slot: usize) -> Self {
        // A restarted actor starts with no parked key: its predecessor's are gone.
        shown.set(slot, 0, None);
        Self {
            queues: HashMap::new(),
            shown,
            slot,
        }
    }

    pub fn is_parked(&self, key: &ParkKey) -> bool {
        self.queues.contains_key(key)
    }

    /// Queues `parked` behind its key's parked event.
    pub fn queue_behind(&mut self, key: &ParkKey, parked: Parked) {
        if let Some((queue, _)) = self.queues.get_mut(key) {
            queue.push_back(parked);
        }
    }

    /// Moves events whose key is parked to the back of that key's queue; returns the
    /// rest, if any.
    pub fn divert(&mut self, batch: Batch) -> Option<Batch> {
        if self.queues.is_empty() {
            return Some(batch);
        }
        let mut fresh = Vec::with_capacity(batch.events.len());
        for event in batch.events.iter() {
            match self.queues.get_mut(&park_key(&batch, event)) {
                Some((queue, _)) => queue.push_back(Parked::new(batch_of_one(&batch, event))),
                None => fresh.push(event.clone()),
            }
        }
        if fresh.is_empty() {
            return None;
        }
        if fresh.len() == batch.events.len() {
            return Some(batch);
        }
        Some(Batch {
            events: fresh.into(),
            ..batch
        })
    }

    /// Parks `parked` in its key's queue at its offset's place (a copy that failed
    /// after later events of its key were queued goes before them), and schedules the
    /// key's retry after `delay` when the key was not parked yet.
    pub fn park(
        &mut self,
        myself: &ActorRef<HandlerMsg>,
        key: ParkKey,
        parked: Parked,
        delay: Duration,
    ) {
        if let Some((queue, _)) = self.queues.get_mut(&key) {
            let at = queue
                .iter()
                .position(|other| other.offset() > parked.offset())
                .unwrap_or(queue.len());
            queue.insert(at, parked);
            return;
        }
        self.park_queue(
            myself,
            key,
            (VecDeque::from([parked]), Instant::now()),
            delay,
        );
    }

    /// Parks a key's queue (and since when it is parked), its head to be retried
    /// after `delay`.
    pub fn park_queue(
        &mut self,
        myself: &ActorRef<HandlerMsg>,
        key: ParkKey,
        queue: (VecDeque<Parked>, Instant),
        delay: Duration,
    ) {
        self.queues.insert(key.clone(), queue);
        myself.send_after(delay, move || HandlerMsg::Retry(key));
        self.show();
    }

    /// Puts back a queue taken for a retry that must wait, with no retry scheduled:
    /// whoever held the retry back runs it.
    pub fn restore(&mut self, key: ParkKey, queue: (VecDeque<Parked>, Instant)) {
        self.queues.insert(key, queue);
        self.show();
    }

    /// Takes a key's queue to retry it; it is parked again if its head fails again.
    pub fn take(&mut self, key: &ParkKey) -> Option<(VecDeque<Parked>, Instant)> {
        let taken = self.queues.remove(key);
        self.show();
        taken
    }

    fn show(&self) {
        let oldest = self.queues.values().map(|(_, since)| *since).min();
        self.shown.set(self.slot, self.queues.len(), oldest);
    }
}

/// What `/metrics` shows of a pool's parked keys: their number and the age of the
/// oldest, over every slot, read at each scrape so the age grows between failures.
pub struct ParkedShown {
    slots: parking_lot::Mutex<Vec<(usize, Option<Instant>)>>,
}

impl ParkedShown {
    pub fn new(handler: &str, slots: usize) -> Arc<Self> {
        let shown = Arc::new(Self {
            slots: parking_lot::Mutex::new(vec![(0, None); slots]),
        });
        let keys = metrics::gauge!(HANDLER_PARKED_KEYS, "handler" => handler.to_owned());
        let oldest = metrics::gauge!(HANDLER_PARKED_OLDEST, "handler" => handler.to_owned());
        let source = Arc::downgrade(&shown);
        crate::telemetry::metrics::sample_on_scrape(move || {
            let Some(shown) = source.upgrade() else {
                return false;
            };
            let slots = shown.slots.lock();
            keys.set(slots.iter().map(|(keys, _)| *keys).sum::<usize>() as f64);
            let since = slots.iter().filter_map(|(_, since)| *since).min();
            oldest.set(since.map_or(0.0, |since| since.elapsed().as_secs_f64()));
            true
        });
        shown
    }

    fn set(&self, slot: usize, keys: usize, oldest: Option<Instant>) {
        if let Some(entry) = self.slots.lock().get_mut(slot) {
            *entry = (keys, oldest);
        }
    }
}

/// `batch` with only `event`.
pub fn batch_of_one(batch: &Batch, event: &Arc<Event>) -> Batch {
    Batch {
        events: Arc::from([event.clone()]),
        reply_to: batch.reply_to.clone(),
        blocked: batch.blocked.clone(),
        handler: batch.handler,
        slot: batch.slot,
    }
}
