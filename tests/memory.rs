//! Memory follows the configuration, not the backlog: librdkafka fetches ahead at most
//! `fetch_buffer` per partition (plus one fetch), so a backlog far larger than that
//! leaves eventd's peak resident memory within the README's budget.

mod common;

use std::time::Duration;

use common::*;

const TOPICS: [&str; 4] = ["browse", "like", "favorite", "comment"];
const PARTITIONS: i32 = 4;
/// Per partition; 3,000 events of ~1.1 KiB stay under the mock cluster's ~5 MiB
/// retention, so nothing is dropped before it is read. The harness writes them in
/// batches of at most 16 KiB: a fetch returns whole batches, so the writer's batch size
/// bounds the overshoot past fetch_buffer (the README's formula says so).
const EVENTS_PER_PARTITION: usize = 3_000;
const MAX_IN_FLIGHT: u64 = 50;
const FETCH_BUFFER: u64 = 64 * 1024;

/// A ~1 KiB event: padding in a `text` field.
fn large_event(id: usize, item: &str) -> String {
    let mut body: serde_json::Value = serde_json::from_str(&event(id, item)).expect("event json");
    body["text"] = "x".repeat(1000).into();
    body.to_string()
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
    // Assigned and idle: what the process needs before any backlog.
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| e.metric_reaches(
            "eventd_rebalances_total",
            &[("consumer", "main"), ("kind", "assign")],
            1.0
        )),
        "no assignment; logs:\n{}",
        eventd.logs()
    );
    let (idle, _) = eventd.memory();

    let per_topic = EVENTS_PER_PARTITION * PARTITIONS as usize;
    let mut total = 0;
    for topic in TOPICS {
        let batch: Vec<(String, String)> = (total..total + per_topic)
            .map(|id| {
                let item = format!("item-{}", id % 64);
                (item.clone(), large_event(id, &item))
            })
            .collect();
        broker.produce(topic, &batch);
        total += per_topic;
    }
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
    let backlog = total as u64 * 1100;
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
