//! Batches a worker sent and handler actors have not reported finished. When a slot
//! gets a new actor (its generation moved), everything still held for it is sent again
//! first, in offset order, then newer events follow: an actor's mailbox dies with it.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{inflight, PartitionWorkerState};
use crate::actors::handler::{Batch, HandlerMsg};
use crate::event::Event;

/// Events sent to one handler slot and not yet reported finished.
#[derive(Default)]
pub(super) struct Outstanding {
    /// Slot generation the events were sent to; a different one means resend.
    pub(super) generation: u64,
    pub(super) events: SentEvents,
}

/// Events of one slot in offset order; finished ones are emptied in place and leave
/// from the front, so sending and finishing cost no map insert or removal.
#[derive(Default)]
pub(super) struct SentEvents {
    pub(super) events: VecDeque<(i64, Option<Arc<Event>>)>,
    pub(super) unfinished: usize,
}

impl SentEvents {
    pub(super) fn push(&mut self, event: Arc<Event>) {
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
    pub(super) fn finish(&mut self, offset: i64) -> bool {
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

    pub(super) fn unfinished(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.events.iter().filter_map(|(_, event)| event.as_ref())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.unfinished == 0
    }
}

impl PartitionWorkerState {
    /// Sends `fresh` to a slot, preceded by everything the slot's previous actor held.
    pub(super) fn send(&mut self, handler: usize, slot: usize, fresh: Vec<Arc<Event>>) {
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
    pub(super) fn resend_to_restarted(&mut self) {
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
