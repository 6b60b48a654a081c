//! What a slot remembers of the events it failed on, across its actor's restarts: how
//! many attempts each had and why the last one failed. A panic ends the actor before it
//! can record anything, so the actor notes which events it is handling before it calls
//! the handler, and the supervisor turns that note into an attempt when the actor fails.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::BatchSource;
use crate::actors::producer::dead_letter::Reason;
use crate::event::Event;

/// An event, by the partition worker that sent it and its offset: a partition read
/// again by a new worker (after a revoke, or a rewind) starts its events' counts anew,
/// and the old worker's leftovers cannot erase them.
pub type EventId = (ractor::ActorId, i64);

pub fn id_of(event: &Event, source: &Arc<dyn BatchSource>) -> EventId {
    (source.id(), event.source.offset)
}

/// Entries kept before those of partitions no longer here are first swept out; after
/// that, a sweep runs each time the entries doubled since the last one.
const SWEEP_ABOVE: usize = 4096;

/// Failed attempts of one event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failure {
    /// Failed attempts that count towards `retry.max_attempts` (errors and panics).
    pub attempts: u32,
    /// Failed attempts the handler marked transient; counted against `retry.transient`.
    pub transient: u32,
    pub last_error: String,
    /// The last failure was a panic of the handler.
    pub panicked: bool,
    /// The last failure was transient.
    pub last_transient: bool,
    /// The last failure was of the event handled alone, so it is the event's own: one
    /// in a failed batch may have been another event's.
    pub own: bool,
    /// Failures of the event handled by itself: its own, for backoff and retry counts.
    pub own_failures: u32,
}

impl Failure {
    /// Why the event is given up, when it is.
    pub fn reason(&self) -> Reason {
        if self.panicked {
            Reason::HandlerPanic
        } else {
            Reason::HandlerError
        }
    }

    /// Attempts in all, failed ones and the one under way.
    pub fn total(&self) -> u32 {
        self.attempts + self.transient
    }
}

/// How a failed attempt ended.
pub enum Failed<'a> {
    Error {
        message: &'a str,
        transient: bool,
        /// The event was handled by itself, so the failure is its own.
        own: bool,
    },
    Panic {
        message: &'a str,
        own: bool,
    },
}

#[derive(Default)]
pub struct Failures {
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// Events being handled now, and the partition they came from.
    handling: Option<(Arc<[Arc<Event>]>, Arc<dyn BatchSource>)>,
    events: HashMap<EventId, (Failure, Arc<dyn BatchSource>)>,
    /// Entries at which the next sweep runs.
    sweep_at: usize,
    /// The panics since the slot's handler last succeeded, by what they panicked on.
    streak: PanicStreak,
}

/// What a slot panicked on since its handler last succeeded: a handler that panics on
/// event after event is broken, while one that panics on some events between
/// successes only meets bad events, which are dead-lettered one by one.
#[derive(Default)]
struct PanicStreak {
    /// Events that panicked (a batch counts as its first event: its events are then
    /// tried alone, and the one that panics again is charged on its own).
    events: std::collections::HashSet<EventId>,
    /// Panics with no event being handled (a tick, a flush, a start), and panics of
    /// an event past its `retry.max_attempts` (no dead-letter topic takes it): each is
    /// one more step towards the meltdown.
    other: usize,
    /// The handler succeeded since the last panic.
    recovered: bool,
}

impl PanicStreak {
    fn len(&self) -> usize {
        self.events.len() + self.other
    }
}

impl Failures {
    /// The actor is about to hand `events` to the handler.
    pub fn begin(&self, events: &Arc<[Arc<Event>]>, source: &Arc<dyn BatchSource>) {
        self.ledger.lock().handling = Some((events.clone(), source.clone()));
    }

    /// The handler returned; `succeeded` when it handled its events.
    pub fn end(&self, succeeded: bool) {
        let mut ledger = self.ledger.lock();
        ledger.handling = None;
        if succeeded && !ledger.streak.recovered {
            ledger.streak = PanicStreak {
                recovered: true,
                ..PanicStreak::default()
            };
        }
    }

    /// The slot's actor stopped without a panic: nothing it was handling failed.
    pub fn actor_stopped(&self) {
        self.ledger.lock().handling = None;
    }

    /// The actor panicked: whatever it was handling had one more attempt. Returns how
    /// many distinct events the slot panicked on in a row with no success between
    /// them (eventless panics, and those of an event past its `max_attempts`, count
    /// one each), and whether it succeeded since its last panic.
    pub fn actor_failed(&self, reason: &str, max_attempts: u32) -> (usize, bool) {
        let mut ledger = self.ledger.lock();
        let recovered = std::mem::replace(&mut ledger.streak.recovered, false);
        let Some((events, source)) = ledger.handling.take() else {
            ledger.streak.other += 1;
            return (ledger.streak.len(), recovered);
        };
        ledger.streak.events.insert(id_of(&events[0], &source));
        let own = events.len() == 1;
        for event in events.iter() {
            let failure = ledger.record(
                event,
                &source,
                &Failed::Panic {
                    message: reason,
                    own,
                },
            );
            if own && failure.attempts > max_attempts {
                ledger.streak.other += 1;
            }
        }
        (ledger.streak.len(), recovered)
    }

    /// Whether any of `events` failed before: then they are handled one at a time.
    pub fn knows_any(&self, events: &[Arc<Event>], source: &Arc<dyn BatchSource>) -> bool {
        let ledger = self.ledger.lock();
        !ledger.events.is_empty()
            && events
                .iter()
                .any(|event| ledger.events.contains_key(&id_of(event, source)))
    }

    pub fn get(&self, event: &Event, source: &Arc<dyn BatchSource>) -> Option<Failure> {
        let ledger = self.ledger.lock();
        if ledger.events.is_empty() {
            return None;
        }
        ledger
            .events
            .get(&id_of(event, source))
            .map(|(f, _)| f.clone())
    }

    /// Records a failed attempt of `event`; returns its failures so far.
    pub fn failed(&self, event: &Event, source: &Arc<dyn BatchSource>, how: Failed<'_>) -> Failure {
        self.ledger.lock().record(event, source, &how)
    }

    /// `event` is finished (handled or dead-lettered): nothing more to remember.
    pub fn forget(&self, event: &Event, source: &Arc<dyn BatchSource>) {
        let mut ledger = self.ledger.lock();
        if !ledger.events.is_empty() {
            ledger.events.remove(&id_of(event, source));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ledger.lock().events.len()
    }
}

impl Ledger {
    fn record(
        &mut self,
        event: &Event,
        source: &Arc<dyn BatchSource>,
        how: &Failed<'_>,
    ) -> Failure {
        if self.events.len() >= self.sweep_at.max(SWEEP_ABOVE) {
            // Events of a revoked partition are read again elsewhere, from the start.
            self.events.retain(|_, (_, source)| source.is_open());
            self.sweep_at = 2 * self.events.len();
        }
        let (failure, _) = self
            .events
            .entry(id_of(event, source))
            .or_insert_with(|| (Failure::default(), source.clone()));
        match how {
            Failed::Error {
                message,
                transient,
                own,
            } => {
                if *transient {
                    failure.transient += 1;
                } else {
                    failure.attempts += 1;
                }
                if *own {
                    failure.own_failures += 1;
                }
                failure.last_error = (*message).to_owned();
                failure.panicked = false;
                failure.last_transient = *transient;
                failure.own = *own;
            }
            Failed::Panic { message, own } => {
                failure.attempts += 1;
                if *own {
                    failure.own_failures += 1;
                }
                failure.last_error = (*message).to_owned();
                failure.panicked = true;
                failure.last_transient = false;
                failure.own = *own;
            }
        }
        failure.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::event::test_event as event;

    struct Partition(AtomicBool, u64);

    impl BatchSource for Partition {
        fn finished(&self, _: usize, _: usize, _: Vec<i64>, _: Vec<(i64, i64)>) {}
        fn released(&self, _: usize, _: usize, _: i64) {}
        fn is_open(&self) -> bool {
            self.0.load(Ordering::Acquire)
        }
        fn id(&self) -> ractor::ActorId {
            ractor::ActorId::Local(self.1)
        }
    }

    #[test]
    fn a_failed_actor_counts_an_attempt_for_every_event_it_was_handling() {
        let failures = Failures::default();
        let source: Arc<dyn BatchSource> = Arc::new(Partition(AtomicBool::new(true), 1));
        let batch: Arc<[Arc<Event>]> = (0..3).map(event).collect();
        failures.begin(&batch, &source);
        assert_eq!(failures.actor_failed("panic: injected", 3).0, 1);
        for offset in 0..3 {
            let failure = failures.get(&event(offset), &source).expect("recorded");
            assert_eq!((failure.attempts, failure.panicked), (1, true));
            assert!(
                !failure.own,
                "charged with two others: not its own failure yet"
            );
            assert_eq!(failure.last_error, "panic: injected");
        }
        // A batch the handler returned from is not charged when the actor fails later.
        failures.begin(&batch, &source);
        failures.end(false);
        failures.actor_failed("tick panicked", 3);
        assert_eq!(
            failures.get(&event(0), &source).map(|f| f.attempts),
            Some(1)
        );
        failures.forget(&event(1), &source);
        assert_eq!(failures.get(&event(1), &source), None);
    }

    #[test]
    fn transient_failures_are_counted_apart_from_attempts() {
        let failures = Failures::default();
        let source: Arc<dyn BatchSource> = Arc::new(Partition(AtomicBool::new(true), 1));
        let e = event(7);
        failures.failed(
            &e,
            &source,
            Failed::Error {
                message: "down",
                transient: true,
                own: true,
            },
        );
        let failure = failures.failed(
            &e,
            &source,
            Failed::Error {
                message: "bad",
                transient: false,
                own: true,
            },
        );
        assert_eq!(
            (failure.attempts, failure.transient, failure.total()),
            (1, 1, 2)
        );
        assert!(!failure.last_transient && failure.last_error == "bad");
    }

    #[test]
    fn entries_of_partitions_gone_are_swept() {
        let failures = Failures::default();
        let gone = Arc::new(Partition(AtomicBool::new(true), 1));
        let gone_source: Arc<dyn BatchSource> = gone.clone();
        for offset in 0..SWEEP_ABOVE as i64 {
            failures.failed(
                &event(offset),
                &gone_source,
                Failed::Error {
                    message: "x",
                    transient: false,
                    own: true,
                },
            );
        }
        gone.0.store(false, Ordering::Release);
        let here: Arc<dyn BatchSource> = Arc::new(Partition(AtomicBool::new(true), 2));
        failures.failed(
            &event(-1),
            &here,
            Failed::Error {
                message: "x",
                transient: false,
                own: true,
            },
        );
        assert_eq!(failures.len(), 1);
    }

    #[test]
    fn a_new_worker_of_a_partition_starts_its_events_counts_anew() {
        let failures = Failures::default();
        let old: Arc<dyn BatchSource> = Arc::new(Partition(AtomicBool::new(true), 1));
        let new: Arc<dyn BatchSource> = Arc::new(Partition(AtomicBool::new(true), 2));
        let how = || Failed::Error {
            message: "x",
            transient: false,
            own: true,
        };
        failures.failed(&event(5), &old, how());
        failures.failed(&event(5), &old, how());
        assert_eq!(failures.failed(&event(5), &new, how()).attempts, 1);
        failures.forget(&event(5), &old);
        assert_eq!(failures.get(&event(5), &new).map(|f| f.attempts), Some(1));
    }

    #[test]
    fn panics_on_distinct_events_in_a_row_make_a_streak_that_a_success_ends() {
        let failures = Failures::default();
        let source: Arc<dyn BatchSource> = Arc::new(Partition(AtomicBool::new(true), 1));
        let one = |offset| -> Arc<[Arc<Event>]> { Arc::from([event(offset)]) };
        for attempt in 0..3 {
            failures.begin(&one(1), &source);
            assert_eq!(
                failures.actor_failed("boom", 3),
                (1, false),
                "attempt {attempt} of one event, no success between"
            );
        }
        // Past its attempts (no dead-letter topic took it), each panic is a step.
        failures.begin(&one(1), &source);
        assert_eq!(failures.actor_failed("boom", 3), (2, false));
        failures.begin(&one(2), &source);
        assert_eq!(failures.actor_failed("boom", 3), (3, false));
        failures.begin(&one(3), &source);
        failures.end(true);
        failures.begin(&one(4), &source);
        assert_eq!(
            failures.actor_failed("boom", 3),
            (1, true),
            "a success ended the streak"
        );
        assert_eq!(
            failures.actor_failed("tick", 3),
            (2, false),
            "a panic with no event counts"
        );
    }
}
