//! Forwarding a backlog: the release `eventd` binary with one `forward` handler against
//! a bare rdkafka loop doing the same job (consume, produce a copy, store the offset
//! once the copy is acknowledged), side by side on one embedded mock cluster.
//!
//! The backlog is keyed events over 4 partitions with `max_in_flight = 200`, the case
//! in which a partition that is refilled one event at a time turns throughput into one
//! event per producer linger. Each side reads the same input topic with its own group
//! and writes its own output topic; the rate is events over the time from the first
//! copy to the last.
//!
//! `cargo bench --bench forward`. Settings: `EVENTD_BENCH_FORWARD_EVENTS` (40000).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{env_count, events, start_eventd, Broker};

const PARTITIONS: i32 = 4;
const KEYS: usize = 500;
const MAX_IN_FLIGHT: usize = 200;
const PATIENCE: Duration = Duration::from_secs(120);

fn main() {
    let total = env_count("EVENTD_BENCH_FORWARD_EVENTS", 40_000);
    let broker = Broker::start(PARTITIONS, &["like", "out-eventd", "out-bare"]);
    broker.produce("like", &events(total, KEYS));
    eprintln!(
        "mock cluster {} | {total} events, {KEYS} keys, {PARTITIONS} partitions, max_in_flight {MAX_IN_FLIGHT}",
        broker.bootstrap()
    );

    let bare = bare_forward(&broker, total);
    let eventd = eventd_forward(&broker, total);
    println!("| variant | events | seconds | events/s | ratio to bare |");
    println!("|---|---|---|---|---|");
    for (name, seconds) in [("bare rdkafka forward", bare), ("eventd forward", eventd)] {
        println!(
            "| {name} | {total} | {seconds:.3} | {:.0} | {:.2} |",
            total as f64 / seconds,
            bare / seconds
        );
    }
}

/// Seconds eventd took from its first forwarded copy to its last.
fn eventd_forward(broker: &Broker, total: usize) -> f64 {
    let eventd = start_eventd(
        broker,
        &format!(
            r#"
[[consumers]]
name = "bench"
group_id = "bench-eventd"
topics = ["like"]
max_in_flight = {MAX_IN_FLIGHT}

[[handlers]]
name = "copy"
kind = "forward"
consumer = "bench"
output = "out-eventd"
"#
        ),
    );
    let handled = |e: &common::Eventd| {
        e.metric_if_present("eventd_events_handled_total", &[("handler", "copy")])
            .unwrap_or_default()
    };
    let deadline = Instant::now() + PATIENCE;
    while handled(&eventd) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "eventd forwarded nothing: {}",
            eventd.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let first = Instant::now();
    while handled(&eventd) < total as f64 {
        assert!(
            Instant::now() < deadline,
            "eventd forwarded {} of {total}: {}",
            handled(&eventd),
            eventd.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = first.elapsed().as_secs_f64();
    let high: i64 = broker
        .watermarks("out-eventd")
        .iter()
        .map(|(_, _, h)| h)
        .sum();
    assert!(high >= total as i64, "out-eventd holds {high} of {total}");
    seconds
}

/// Counts acknowledged copies and remembers, per partition, the source offsets whose
/// copies were acknowledged, so offsets are stored only after the broker has the copy.
struct Acks {
    delivered: AtomicU64,
    done: parking_lot::Mutex<Vec<(i32, i64)>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<(i32, i64)>;

    fn delivery(&self, result: &DeliveryResult<'_>, source: Self::DeliveryOpaque) {
        if result.is_ok() {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            self.done.lock().push(*source);
        }
    }
}

/// Seconds a bare BaseConsumer + ThreadedProducer loop took from its first copy to its
/// last, with eventd's producer settings (acks=all, idempotence, lz4, 5 ms linger). It
/// stores each partition's highest acknowledged offset: a floor that skips eventd's
/// bookkeeping of the lowest unfinished one.
fn bare_forward(broker: &Broker, total: usize) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "bench-bare")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.queue.backoff.ms", "20")
        .create()
        .expect("bare consumer");
    consumer.subscribe(&["like"]).expect("subscribe");
    let acks = Acks {
        delivered: AtomicU64::new(0),
        done: parking_lot::Mutex::new(Vec::new()),
    };
    let producer: Arc<ThreadedProducer<Acks>> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .create_with_context(acks)
            .expect("bare producer"),
    );
    let deadline = Instant::now() + PATIENCE;
    let mut first = None;
    let mut stored: HashMap<i32, i64> = HashMap::new();
    while producer.context().delivered.load(Ordering::Relaxed) < total as u64 {
        assert!(Instant::now() < deadline, "bare forward did not finish");
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(1)) {
            first.get_or_insert_with(Instant::now);
            let mut record = BaseRecord::with_opaque_to(
                "out-bare",
                Box::new((message.partition(), message.offset())),
            )
            .payload(message.payload().unwrap_or_default());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            while let Err((_, back)) = producer.send(record) {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let done = std::mem::take(&mut *producer.context().done.lock());
        if !done.is_empty() {
            for (partition, offset) in done {
                let next = stored.entry(partition).or_insert(0);
                *next = (*next).max(offset + 1);
            }
            let mut list = TopicPartitionList::new();
            for (partition, next) in &stored {
                let _ = list.add_partition_offset("like", *partition, Offset::Offset(*next));
            }
            let _ = consumer.store_offsets(&list);
        }
    }
    first.map_or(0.0, |first| first.elapsed().as_secs_f64())
}
