//! `log`: one structured line per sampled event.

use super::super::actor::BatchOutcome;
use super::super::{Batch, HandlerPool};

pub struct Log {
    /// Seeded per slot so sampling is repeatable in tests.
    rng: fastrand::Rng,
}

impl Log {
    pub fn new(slot: usize) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(slot as u64),
        }
    }

    pub fn handle(&mut self, pool: &HandlerPool, batch: &Batch) -> BatchOutcome {
        let sample = pool.settings.load().sample;
        let mut outcome = BatchOutcome::default();
        for event in batch.events.iter() {
            if sample < 1.0 && self.rng.f64() >= sample {
                outcome.skipped += 1;
                continue;
            }
            let key = event.key.as_deref().map(String::from_utf8_lossy);
            tracing::info!(
                handler = %pool.name,
                consumer = %pool.consumer,
                topic = %event.source.topic,
                partition = event.source.partition,
                offset = event.source.offset,
                key = key.as_deref().unwrap_or(""),
                event = event.body.as_str(),
                "event"
            );
        }
        outcome
    }
}
