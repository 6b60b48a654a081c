//! Memory follows the configuration, not the backlog: librdkafka fetches ahead at most
//! `fetch_buffer` per partition (plus one fetch), so a backlog far larger than that
//! leaves eventd's peak resident memory within the README's budget.

mod common;

use std::time::Duration;

use common::*;

const TOPICS: [&str; 4] = ["browse", "like", "favorite", "comment"];
const PARTITIONS: i32 = 4;
/// Per partition, after the warm-up; 3,200 events of ~1.1 KiB in all stay under the mock cluster's ~5 MiB
/// retention, so nothing is dropped before it is read. The harness writes them in
/// batches of at most 16 KiB: a fetch returns whole batches, so the writer's batch size
/// bounds the overshoot past fetch_buffer (the README's formula says so).
const EVENTS_PER_PARTITION: usize = 3_000;
const MAX_IN_FLIGHT: u64 = 50;
/// Enough to fill each partition's fetch buffer once (more than 2 x 64 KiB), far less
/// than the backlog after it.
const WARM_UP_PER_PARTITION: usize = 200;
const FETCH_BUFFER: u64 = 64 * 1024;

/// A ~1 KiB event: padding in a `text` field.
fn large_event(id: usize, item: &str) -> String {
    let mut body: serde_json::Value = serde_json::from_str(&event(id, item)).expect("event json");
    body["text"] = "x".repeat(1000).into();
    body.to_string()
}

/// Writes `per_topic` events made by `make` to each topic, with ids from `first` on;
/// returns the next id.
fn produce_to_each_topic(
    broker: &Broker,
    first: usize,
    per_topic: usize,
    make: fn(usize, &str) -> String,
) -> usize {
    let mut next = first;
    for topic in TOPICS {
        let batch: Vec<(String, String)> = (next..next + per_topic)
            .map(|id| {
                let item = format!("item-{}", id % 64);
                (item.clone(), make(id, &item))
            })
            .collect();
        broker.produce(topic, &batch);
        next += per_topic;
    }
    next
}

/// With a slow handler and a backlog of ~50 MiB over 16 partitions, the peak resident
/// memory grows by no more than twice the README's budget for these settings
/// (16 x (2 x fetch_buffer x (1 + 200 B / 1100 B) + max_in_flight x 4 KiB) = 5.5 MiB).
/// librdkafka's default
/// (64 MiB per partition) would fetch the whole backlog ahead.
#[test]
fn a_large_backlog_stays_within_the_memory_budget() {
    let broker = Broker::start(PARTITIONS, &TOPICS);
    let mut eventd = start_eventd(
        &broker,
        &format!(
            r#"
[[consumers]]
name = "main"
topics = ["browse", "like", "favorite", "comment"]
max_in_flight = {MAX_IN_FLIGHT}
fetch_buffer = "{}KiB"

[[handlers]]
name = "slow"
kind = "fault"
consumer = "main"
action = "sleep"
every = 1
sleep = "2ms"
concurrency = 8
"#,
            FETCH_BUFFER / 1024
        ),
    );
    // Assigned.
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| e.metric_reaches(
            "eventd_rebalances_total",
            &[("consumer", "main"), ("kind", "assign")],
            1.0
        )),
        "no assignment; logs:\n{}",
        eventd.logs()
    );
    // A first few events per partition warm the process up: the allocator keeps pages
    // for librdkafka's threads once they have fetched, a base cost that does not grow
    // with the backlog. Memory after them is the base the budget adds to.
    let warm = produce_to_each_topic(
        &broker,
        0,
        WARM_UP_PER_PARTITION * PARTITIONS as usize,
        large_event,
    );
    assert!(
        eventd.wait_until(Duration::from_secs(60), |e| e.metric_reaches(
            "eventd_events_handled_total",
            &[("handler", "slow")],
            warm as f64
        )),
        "the warm-up was not handled; logs:\n{}",
        eventd.logs()
    );
    let (idle, _) = eventd.memory();

    let per_topic = EVENTS_PER_PARTITION * PARTITIONS as usize;
    let total = produce_to_each_topic(&broker, warm, per_topic, large_event);
    assert!(
        eventd.wait_until(Duration::from_secs(120), |e| e.metric_reaches(
            "eventd_events_handled_total",
            &[("handler", "slow")],
            total as f64
        )),
        "handled {:?} of {total}; logs:\n{}",
        eventd.metric_if_present("eventd_events_handled_total", &[("handler", "slow")]),
        eventd.logs()
    );
    let (_, peak) = eventd.memory();
    let partitions = TOPICS.len() as u64 * PARTITIONS as u64;
    // The README's formula; S = 1100 B per event.
    let budget = partitions * (2 * FETCH_BUFFER * (1100 + 200) / 1100 + MAX_IN_FLIGHT * 4096);
    let backlog = (total - warm) as u64 * 1100;
    let grew = peak.saturating_sub(idle);
    eprintln!(
        "idle {} KiB, peak {} KiB, grew {} KiB, budget {} KiB, backlog {} KiB",
        idle >> 10,
        peak >> 10,
        grew >> 10,
        budget >> 10,
        backlog >> 10
    );
    assert!(
        grew <= 2 * budget,
        "peak resident memory grew by {} MiB (idle {} MiB, peak {} MiB) over a {} MiB backlog; \
         the budget for these settings is {:.1} MiB",
        grew >> 20,
        idle >> 20,
        peak >> 20,
        backlog >> 20,
        budget as f64 / (1 << 20) as f64
    );
    eventd.terminate(Duration::from_secs(30));
}

/// A rolling restart on a real broker: member A is draining (its handler holds events
/// for seconds) when member B leaves, so the cooperative group hands B's partitions,
/// with a backlog of tens of MiB behind them, to A during its drain. A cannot handle
/// them any more; what it reads of them would wait, unbounded, in its member's mailbox
/// until it exits. Its peak resident memory must stay within the budget for its
/// settings, as it does with no drain.
#[test]
fn partitions_assigned_during_the_drain_are_not_read_into_memory() {
    let broker = Broker::tansu(PARTITIONS, &TOPICS);
    let config = |handler: &str| {
        format!(
            r#"
[shutdown]
grace = "30s"

[[consumers]]
name = "main"
topics = ["browse", "like", "favorite", "comment"]
max_in_flight = {MAX_IN_FLIGHT}
fetch_buffer = "{}KiB"
drain_timeout = "11s"

[[handlers]]
name = "slow"
kind = "fault"
consumer = "main"
action = "sleep"
every = 1
{handler}
"#,
            FETCH_BUFFER / 1024
        )
    };
    let mut total = 0;
    let assigned = |e: &Eventd, at_least: f64| {
        e.metric_reaches(
            "eventd_rebalances_total",
            &[("consumer", "main"), ("kind", "assign")],
            at_least,
        )
    };
    // B starts first and A takes half of its partitions: the half A is given later has
    // never been A's. (librdkafka keeps a partition queue that eventd split once away
    // from the client's own queue even after a revoke, so only such partitions show
    // what a member does with partitions it is given while it drains.) B reads slowly,
    // so its partitions keep their backlog until it leaves.
    let mut leaving = start_eventd(&broker, &config("sleep = \"5ms\""));
    assert!(
        leaving.wait_until(Duration::from_secs(60), |e| assigned(e, 1.0)),
        "B got no assignment; logs:\n{}",
        leaving.logs()
    );
    // A's drain lasts its drain_timeout: each event sleeps up to 20 s.
    let mut draining = start_eventd(&broker, &config("sleep = \"20s\""));
    assert!(
        draining.wait_until(Duration::from_secs(60), |e| assigned(e, 1.0)),
        "A got no assignment; logs:\n{}",
        draining.logs()
    );
    // A few events per partition until A has some in its handler: what is sent before
    // the group has moved half of B's partitions to A goes to B.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while draining
        .metric_if_present("eventd_partition_in_flight", &[])
        .is_none_or(|in_flight| in_flight < 1.0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "A has no event in its handler; logs:\n{}",
            draining.logs()
        );
        total = produce_to_each_topic(&broker, total, 16, event);
        draining.wait_until(Duration::from_secs(2), |e| {
            e.metric_if_present("eventd_partition_in_flight", &[])
                .is_some_and(|in_flight| in_flight >= 1.0)
        });
    }
    let per_topic = 16_000;
    produce_to_each_topic(&broker, total, per_topic, large_event);
    draining.signal("TERM");
    assert!(
        draining.wait_until(Duration::from_secs(10), |e| e
            .logs()
            .contains("\"draining\"")),
        "A did not start draining; logs:\n{}",
        draining.logs()
    );
    let assigns_before = draining.metric(
        "eventd_rebalances_total",
        &[("consumer", "main"), ("kind", "assign")],
    );
    let (_, before) = draining.memory();
    leaving.terminate(Duration::from_secs(60));
    assert!(
        draining.wait_until(Duration::from_secs(20), |e| assigned(e, assigns_before + 1.0)),
        "the group gave A nothing during its drain after B left, so this test showed nothing; logs:\n{}",
        draining.logs()
    );
    let mut peak = before;
    while draining.is_running() && !draining.logs().contains("shutdown complete") {
        peak = peak.max(draining.memory().1);
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = draining
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("A did not exit; logs:\n{}", draining.logs()));
    let partitions = TOPICS.len() as u64 * PARTITIONS as u64;
    let budget = partitions * (2 * FETCH_BUFFER * (1100 + 200) / 1100 + MAX_IN_FLIGHT * 4096);
    let backlog = (per_topic * TOPICS.len()) as u64 * 1100;
    let grew = peak.saturating_sub(before);
    eprintln!(
        "before B left {} KiB, peak {} KiB, grew {} KiB, budget {} KiB, backlog {} KiB",
        before >> 10,
        peak >> 10,
        grew >> 10,
        budget >> 10,
        backlog >> 10
    );
    assert!(
        grew <= 2 * budget,
        "A's peak resident memory grew by {} MiB during its drain with a {} MiB backlog in its topics \
         (half of it on the partitions it was given); the budget for its settings is {:.1} MiB; logs:\n{}",
        grew >> 20,
        backlog >> 20,
        budget as f64 / (1 << 20) as f64,
        draining.logs()
    );
    assert_eq!(
        status.code(),
        Some(0),
        "A's exit; logs:\n{}",
        draining.logs()
    );
}
