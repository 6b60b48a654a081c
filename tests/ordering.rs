//! Per-key order with concurrent handler actors and random handler delays, on the
//! embedded broker and on tansu.

#![cfg(feature = "fault-injection")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

#[test]
fn events_of_one_key_are_handled_in_offset_order_while_keys_interleave() {
    events_of_one_key_are_handled_in_offset_order_while_keys_interleave_against(
        Broker::start(4, &["like", "ordered"]),
        Duration::from_secs(90),
    );
}

/// Tansu hands every partition to the member that joins first and rebalances when the
/// second one joins, while events are already flowing: order must hold across that
/// handover too, which the embedded broker (with its short join delay) rarely shows.
#[test]
fn events_of_one_key_are_handled_in_offset_order_while_keys_interleave_on_tansu() {
    events_of_one_key_are_handled_in_offset_order_while_keys_interleave_against(
        Broker::tansu(4, &["like", "ordered"]),
        Duration::from_secs(180),
    );
}

fn events_of_one_key_are_handled_in_offset_order_while_keys_interleave_against(
    broker: Broker,
    patience: Duration,
) {
    let total = 4_000;
    broker.produce("like", &events(total, 300));
    let eventd = start_eventd(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["like"]
members = 2
max_in_flight = 400

[[handlers]]
name = "slow"
kind = "fault"
consumer = "main"
action = "sleep"
every = 1
sleep = "2ms"
concurrency = 4
output = "ordered"
"#,
    );
    let out = broker.wait_for("ordered", patience, |records| ids(records).len() >= total);
    assert_eq!(
        ids(&out).len(),
        total,
        "not every event was handled: {}",
        eventd.logs()
    );

    // Per output partition the records are in the order the handlers finished them.
    let mut last_offset: HashMap<(String, String), i64> = HashMap::new();
    let mut interleaved = false;
    let mut last_in_source: HashMap<(i32, String), i64> = HashMap::new();
    let mut out = out;
    out.sort_by_key(|r| (r.partition, r.offset));
    for record in &out {
        let key = record.key.clone().expect("key kept");
        let source_partition = record.headers["eventd.source.partition"].clone();
        let offset: i64 = record.headers["eventd.source.offset"]
            .parse()
            .expect("offset header");
        if let Some(previous) = last_offset.insert((key.clone(), source_partition.clone()), offset)
        {
            assert!(
                offset > previous,
                "key {key}: offset {offset} handled after {previous}"
            );
        }
        // Different keys of one source partition finishing out of offset order shows
        // that they ran concurrently.
        let slot = (record.partition, source_partition);
        if let Some(previous) = last_in_source.insert(slot, offset) {
            interleaved |= offset < previous;
        }
    }
    assert!(
        interleaved,
        "keys never interleaved: handlers did not run concurrently"
    );
}
