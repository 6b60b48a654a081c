//! A librdkafka producer with a thread of its own serving delivery reports.
//!
//! rust-rdkafka's `ThreadedProducer` polls in rounds of 100 ms, and its poll truncates
//! the time left to whole milliseconds and polls again until the round is over: the
//! first wait is 99 ms, and the last millisecond of every round is a busy loop, about
//! 1% of a core on an idle daemon. A round one microsecond over a whole number of
//! milliseconds is waited whole (100 ms), and the wake-up comes later than that
//! microsecond, so an idle round ends on its first wait.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, ProducerContext};
use rdkafka::ClientConfig;

/// How long one poll of the report thread lasts; the stop flag is read between polls.
const POLL_ROUND: Duration = Duration::from_micros(100_001);

pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    pub fn new(config: &ClientConfig, context: C) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<C>> = Arc::new(config.create_with_context(context)?);
        crate::kafka::login::LOGINS.register(&producer);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let producer = producer.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("producer reports".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        producer.poll(POLL_ROUND);
                    }
                })
                .map_err(|error| {
                    KafkaError::ClientCreation(format!("cannot start the report thread: {error}"))
                })?
        };
        Ok(Self {
            producer,
            stop,
            thread: Some(thread),
        })
    }
}

impl<C: ProducerContext + 'static> Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    /// Stops the report thread within one round; the producer itself (purge, last
    /// reports) is then dropped here.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("the producer's report thread panicked");
            }
        }
    }
}
