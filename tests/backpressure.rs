//! Backpressure without a convoy: a full partition is refilled in large batches, and a
//! handler goes on writing while earlier writes await the broker's acknowledgement.
//! Either regression turns throughput into one event per producer linger, which these
//! tests see in what eventd exports, never in a timing.

mod common;

use std::time::Duration;

use common::*;

/// A partition at `max_in_flight` is read again only below its low mark, so batches
/// stay large. Refilling as soon as one event finished made batches of one (the
/// partition's in-flight events are spread over several actors, which finish at
/// different times): from then on every batch cost a producer linger.
#[test]
fn a_full_partition_refills_in_large_batches() {
    let broker = Broker::start(4, &["like", "out"]);
    let total = 20_000;
    broker.produce("like", &events(total, 500));
    let eventd = start_eventd(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["like"]
max_in_flight = 200

[[handlers]]
name = "copy"
kind = "forward"
consumer = "main"
output = "out"
concurrency = 4
"#,
    );
    broker.expect_every_id("out", total, Duration::from_secs(120), &eventd);
    let labels = [("handler", "copy")];
    let batches = eventd.metric("eventd_handler_batch_size_count", &labels);
    let events = eventd.metric("eventd_handler_batch_size_sum", &labels);
    let singles = eventd.metric(
        "eventd_handler_batch_size_bucket",
        &[("handler", "copy"), ("le", "1")],
    );
    assert!(
        events >= total as f64,
        "batches carried {events} events for {total} produced"
    );
    // While the backlog lasts each refill reads at least max_in_flight - low mark = 100
    // events, which the key hash splits over 4 actors: about 25 per batch. Refilling
    // per finished event decays to about one.
    let mean = events / batches;
    eprintln!("{batches} batches, {events} events, mean {mean:.1}, {singles} of one event");
    assert!(
        mean >= 12.0,
        "{batches} batches for {events} events (mean {mean:.1}, {singles} of one event): \
         a full partition is being refilled a few events at a time"
    );
    assert!(
        singles <= batches * 0.05,
        "{singles} of {batches} batches held a single event (mean {mean:.1})"
    );
}

/// With the output's leader down, a handler must still take and write the batches
/// after the first: they queue in the producer behind the first batch's copies. A
/// handler that awaits each batch's acknowledgement before the next holds at most one
/// batch (512 events at most per read) in the producer.
#[test]
fn a_handler_keeps_writing_while_earlier_writes_await_the_broker() {
    let broker = Broker::start_cluster(2, 1, &["like", "out"]);
    let cluster = broker.embedded();
    cluster.set_leader("like", 0, 1).expect("like on broker 1");
    cluster.set_leader("out", 0, 2).expect("out on broker 2");
    let total = 1_000;
    broker.produce("like", &events(total, 50));
    cluster
        .set_broker_available(2, false)
        .expect("broker 2 down");
    let eventd = start_eventd(
        &broker,
        r#"
[producer]
message_timeout = "120s"

[[consumers]]
name = "audit"
mode = "partitions"
topics = ["like"]
start = "earliest"
max_in_flight = 1000

[[handlers]]
name = "copy"
kind = "forward"
consumer = "audit"
output = "out"
"#,
    );
    let queued = eventd.wait_until(Duration::from_secs(30), |e| {
        e.metric_reaches("eventd_producer_queue_depth", &[], total as f64)
    });
    assert!(
        queued,
        "only {:?} of {total} copies reached the producer while the output's broker was \
         down (batch sizes: {:?} events in {:?} batches): the handler waited for the \
         broker before taking its next batch; logs:\n{}",
        eventd.metric_if_present("eventd_producer_queue_depth", &[]),
        eventd.metric_if_present("eventd_handler_batch_size_sum", &[("handler", "copy")]),
        eventd.metric_if_present("eventd_handler_batch_size_count", &[("handler", "copy")]),
        eventd.logs()
    );
    cluster.set_broker_available(2, true).expect("broker 2 up");
    let out = broker.expect_every_id("out", total, Duration::from_secs(60), &eventd);
    // Copies of one key keep their source order.
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for record in &out {
        let key = record.key.clone().unwrap_or_default();
        let offset: i64 = record.headers["eventd.source.offset"]
            .parse()
            .expect("source offset");
        if let Some(previous) = last.insert(key.clone(), offset) {
            assert!(
                offset > previous,
                "key {key}: source offset {offset} written after {previous}"
            );
        }
    }
}
