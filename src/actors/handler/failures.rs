//! What a slot remembers of the events it failed on, across its actor's restarts: how
//! many attempts each had and why the last one failed. A panic ends the actor before it
//! can record anything, so the actor notes which events it is handling before it calls
//! the handler, and the supervisor turns that note into an attempt when the actor fails.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::BatchSource;
use crate::event::Event;

/// An event, by where it was read.
pub type EventId = (Arc<str>, i32, i64);

pub fn id_of(event: &Event) -> EventId {
    (
        event.source.topic.clone(),
        event.source.partition,
        event.source.offset,
    )
}

/// Entries kept before those of partitions no longer here are swept out.
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
    pub alone: bool,
}

impl Failure {
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
        alone: bool,
    },
    Panic {
        message: &'a str,
        alone: bool,
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
}

impl Failures {
    /// The actor is about to hand `events` to the handler.
    pub fn begin(&self, events: &Arc<[Arc<Event>]>, source: &Arc<dyn BatchSource>) {
        self.ledger.lock().handling = Some((events.clone(), source.clone()));
    }

    /// The handler returned.
    pub fn end(&self) {
        self.ledger.lock().handling = None;
    }

    /// The actor failed: whatever it was handling had one more attempt.
    pub fn actor_failed(&self, reason: &str) {
        let mut ledger = self.ledger.lock();
        let Some((events, source)) = ledger.handling.take() else {
            return;
        };
        let alone = events.len() == 1;
        for event in events.iter() {
            ledger.record(
                event,
                &source,
                &Failed::Panic {
                    message: reason,
                    alone,
                },
            );
        }
    }

    /// Whether any of `events` failed before: then they are handled one at a time.
    pub fn knows_any(&self, events: &[Arc<Event>]) -> bool {
        let ledger = self.ledger.lock();
        !ledger.events.is_empty()
            && events
                .iter()
                .any(|event| ledger.events.contains_key(&id_of(event)))
    }

    pub fn get(&self, event: &Event) -> Option<Failure> {
        let ledger = self.ledger.lock();
        if ledger.events.is_empty() {
            return None;
        }
        ledger.events.get(&id_of(event)).map(|(f, _)| f.clone())
    }

    /// Records a failed attempt of `event`; returns its failures so far.
    pub fn failed(&self, event: &Event, source: &Arc<dyn BatchSource>, how: Failed<'_>) -> Failure {
        self.ledger.lock().record(event, source, &how)
    }

    /// `event` is finished (handled or dead-lettered): nothing more to remember.
    pub fn forget(&self, event: &Event) {
        let mut ledger = self.ledger.lock();
        if !ledger.events.is_empty() {
            ledger.events.remove(&id_of(event));
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
        if self.events.len() >= SWEEP_ABOVE {
            // Events of a revoked partition are read again elsewhere, from the start.
            self.events.retain(|_, (_, source)| source.is_open());
        }
        let (failure, _) = self
            .events
            .entry(id_of(event))
            .or_insert_with(|| (Failure::default(), source.clone()));
        match how {
            Failed::Error {
                message,
                transient,
                alone,
            } => {
                if *transient {
                    failure.transient += 1;
                } else {
                    failure.attempts += 1;
                }
                failure.last_error = (*message).to_owned();
                failure.panicked = false;
                failure.last_transient = *transient;
                failure.alone = *alone;
            }
            Failed::Panic { message, alone } => {
                failure.attempts += 1;
                failure.last_error = (*message).to_owned();
                failure.panicked = true;
                failure.last_transient = false;
                failure.alone = *alone;
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

    struct Partition(AtomicBool);

    impl BatchSource for Partition {
        fn finished(&self, _: usize, _: usize, _: Vec<i64>, _: Vec<(i64, i64)>) {}
        fn released(&self, _: usize, _: usize, _: i64) {}
        fn is_open(&self) -> bool {
            self.0.load(Ordering::Acquire)
        }
        fn id(&self) -> ractor::ActorId {
            ractor::ActorId::Local(1)
        }
    }

    #[test]
    fn a_failed_actor_counts_an_attempt_for_every_event_it_was_handling() {
        let failures = Failures::default();
        let source: Arc<dyn BatchSource> = Arc::new(Partition(AtomicBool::new(true)));
        let batch: Arc<[Arc<Event>]> = (0..3).map(event).collect();
        failures.begin(&batch, &source);
        failures.actor_failed("panic: injected");
        for offset in 0..3 {
            let failure = failures.get(&event(offset)).expect("recorded");
            assert_eq!((failure.attempts, failure.panicked), (1, true));
            assert!(
                !failure.alone,
                "charged with two others: not its own failure yet"
            );
            assert_eq!(failure.last_error, "panic: injected");
        }
        // A batch the handler returned from is not charged when the actor fails later.
        failures.begin(&batch, &source);
        failures.end();
        failures.actor_failed("write failed");
        assert_eq!(failures.get(&event(0)).map(|f| f.attempts), Some(1));
        failures.forget(&event(1));
        assert_eq!(failures.get(&event(1)), None);
    }

    #[test]
    fn transient_failures_are_counted_apart_from_attempts() {
        let failures = Failures::default();
        let source: Arc<dyn BatchSource> = Arc::new(Partition(AtomicBool::new(true)));
        let e = event(7);
        failures.failed(
            &e,
            &source,
            Failed::Error {
                message: "down",
                transient: true,
                alone: true,
            },
        );
        let failure = failures.failed(
            &e,
            &source,
            Failed::Error {
                message: "bad",
                transient: false,
                alone: true,
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
        let gone = Arc::new(Partition(AtomicBool::new(true)));
        let gone_source: Arc<dyn BatchSource> = gone.clone();
        for offset in 0..SWEEP_ABOVE as i64 {
            failures.failed(
                &event(offset),
                &gone_source,
                Failed::Error {
                    message: "x",
                    transient: false,
                    alone: true,
                },
            );
        }
        gone.0.store(false, Ordering::Release);
        let here: Arc<dyn BatchSource> = Arc::new(Partition(AtomicBool::new(true)));
        failures.failed(
            &event(-1),
            &here,
            Failed::Error {
                message: "x",
                transient: false,
                alone: true,
            },
        );
        assert_eq!(failures.len(), 1);
    }
}
