//! At-least-once delivery across restarts, publish-subscribe between consumers, and
//! undecodable events, against the real binary on the embedded broker and, for the
//! first two, on tansu as well.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;

#[test]
fn sigterm_mid_stream_then_restart_covers_every_event() {
    sigterm_mid_stream_then_restart_covers_every_event_against(
        Broker::start(4, &["like", "out"]),
        40_000,
        Duration::from_secs(60),
    );
}

/// Fewer events than on the embedded broker: tansu's sqlite storage scans every header
/// it holds for each record it serves (every forwarded copy adds three), so 40,000
/// events took 105s here against 8s for 10,000. A quarter still stops the first run
/// mid-stream, which the test asserts.
#[test]
fn sigterm_mid_stream_then_restart_covers_every_event_on_tansu() {
    sigterm_mid_stream_then_restart_covers_every_event_against(
        Broker::tansu(4, &["like", "out"]),
        10_000,
        Duration::from_secs(120),
    );
}

const GROUP: &str = "eventd-resume";
const MAX_IN_FLIGHT: usize = 200;

fn sigterm_mid_stream_then_restart_covers_every_event_against(
    broker: Broker,
    total: usize,
    second_run_patience: Duration,
) {
    broker.produce("like", &events(total, 500));
    let mut eventd = start_eventd(
        &broker,
        &format!(
            r#"
[[consumers]]
name = "main"
group_id = "{GROUP}"
topics = ["like"]
max_in_flight = {MAX_IN_FLIGHT}
drain_timeout = "5s"

[[handlers]]
name = "copy"
kind = "forward"
consumer = "main"
output = "out"
"#
        ),
    );
    // Copies below the commit a restart may repeat: at most what was in flight.
    let slack = MAX_IN_FLIGHT * broker.partitions as usize;
    // Past the slack, so a restart from the beginning could not hide inside it.
    let first_part = (total / 5).max(2 * slack);
    assert!(
        eventd.wait_until(Duration::from_secs(60), |e| e.metric_reaches(
            "eventd_events_handled_total",
            &[("handler", "copy")],
            first_part as f64
        )),
        "first run did not handle {first_part} events: {}",
        eventd.logs()
    );
    let logs = eventd.terminate(Duration::from_secs(25));
    // The last commit at shutdown finds nothing new when auto-commit just sent it all.
    assert!(
        logs.contains("offsets committed") || logs.contains("no new offsets to commit"),
        "no final commit logged at shutdown: {logs}"
    );
    let committed: HashMap<i32, i64> = broker
        .committed(GROUP, "like")
        .into_iter()
        .map(|(partition, offset)| (partition, offset.unwrap_or(0)))
        .collect();
    let first_run = broker.read_all("out");
    let first_ids = ids(&first_run);
    assert!(
        !first_ids.is_empty() && first_ids.len() < total,
        "first run handled {} of {total}",
        first_ids.len()
    );
    let committed_total: i64 = committed.values().sum();
    assert!(
        committed_total as usize > slack,
        "the first run committed {committed_total} offsets ({committed:?}), not more than the slack {slack}"
    );
    let first_end: HashMap<i32, i64> = broker
        .watermarks("out")
        .into_iter()
        .map(|(partition, _, high)| (partition, high))
        .collect();

    let eventd = eventd.restart();
    let out = broker.expect_every_id("out", total, second_run_patience, &eventd);
    // The second run resumed from the commit: its copies of events below the committed
    // offsets are at most what could have been in flight.
    let repeated = out
        .iter()
        .filter(|record| record.offset >= first_end[&record.partition])
        .filter(|record| {
            let partition: i32 = record.headers["eventd.source.partition"]
                .parse()
                .expect("source partition");
            let offset: i64 = record.headers["eventd.source.offset"]
                .parse()
                .expect("source offset");
            offset < committed[&partition]
        })
        .count();
    assert!(
        repeated <= slack,
        "the second run copied {repeated} events below the offsets committed at shutdown \
         ({committed:?}); at most {slack} may repeat: the restart did not resume from the commit"
    );
}

const FAN_OUT_TOPICS: [&str; 4] = ["comment", "out-a", "out-b", "out-audit"];

#[test]
fn every_consumer_entry_receives_every_event() {
    every_consumer_entry_receives_every_event_against(
        Broker::start(3, &FAN_OUT_TOPICS),
        Duration::from_secs(40),
    );
}

#[test]
fn every_consumer_entry_receives_every_event_on_tansu() {
    every_consumer_entry_receives_every_event_against(
        Broker::tansu(3, &FAN_OUT_TOPICS),
        Duration::from_secs(90),
    );
}

fn every_consumer_entry_receives_every_event_against(broker: Broker, patience: Duration) {
    let total = 3_000;
    broker.produce("comment", &events(total, 50));
    let eventd = start_eventd(
        &broker,
        r#"
[[consumers]]
name = "a"
group_id = "group-a"
topics = ["comment"]
members = 2
assignment = "range"

[[consumers]]
name = "b"
group_id = "group-b"
topics = ["comment"]

[[consumers]]
name = "audit"
mode = "partitions"
topics = ["comment"]
start = "earliest"

[[handlers]]
name = "to-a"
kind = "forward"
consumer = "a"
output = "out-a"

[[handlers]]
name = "to-b"
kind = "forward"
consumer = "b"
output = "out-b"

[[handlers]]
name = "to-audit"
kind = "forward"
consumer = "audit"
output = "out-audit"
fields = ["event_id", "item_id"]
"#,
    );
    for topic in ["out-a", "out-b", "out-audit"] {
        let out = broker.wait_for(topic, patience, |records| ids(records).len() >= total);
        assert_eq!(
            ids(&out).len(),
            total,
            "{topic} lacks events; logs: {}",
            eventd.logs()
        );
    }
    // `fields` reduced what the audit copy carries.
    let audit = broker.read_all("out-audit");
    assert!(audit
        .iter()
        .all(|r| r.json().as_object().is_some_and(|o| o.len() == 2)));
    // Forwarded copies name their source for de-duplication downstream.
    let a = broker.read_all("out-a");
    assert!(a
        .iter()
        .all(
            |r| r.headers.get("eventd.source.topic").map(String::as_str) == Some("comment")
                && r.headers.contains_key("eventd.source.partition")
                && r.headers.contains_key("eventd.source.offset")
        ));
}

#[test]
fn malformed_events_go_to_the_dead_letter_topic_and_do_not_stop_the_partition() {
    let broker = Broker::start(1, &["like", "out", "dlq"]);
    let good_before = events(100, 10);
    let good_after: Vec<(String, String)> = (100..200)
        .map(|id| {
            (
                format!("item-{}", id % 10),
                event(id, &format!("item-{}", id % 10)),
            )
        })
        .collect();
    broker.produce("like", &good_before);
    broker.produce_raw("like", "bad-1", b"{not json");
    broker.produce_raw("like", "bad-2", br#"{"user_id":"u1","ts":1}"#);
    broker.produce("like", &good_after);
    let eventd = start_eventd(
        &broker,
        &format!("{COPY_LIKE_TO_OUT}\n[dead_letter]\ntopic = \"dlq\"\n"),
    );
    let out = broker.wait_for("out", Duration::from_secs(30), |records| {
        ids(records).len() >= 200
    });
    assert_eq!(
        ids(&out).len(),
        200,
        "events after the malformed ones were not handled: {}",
        eventd.logs()
    );
    let dlq = broker.wait_for("dlq", Duration::from_secs(10), |records| records.len() >= 2);
    let keys: HashSet<String> = dlq.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(
        keys,
        HashSet::from(["bad-1".to_owned(), "bad-2".to_owned()])
    );
    let bad = dlq
        .iter()
        .find(|r| r.key.as_deref() == Some("bad-1"))
        .expect("bad-1 dead-lettered");
    assert_eq!(
        bad.payload, b"{not json",
        "the dead-letter copy keeps the original bytes"
    );
    assert!(bad
        .headers
        .get("eventd.error")
        .is_some_and(|e| e.contains("not JSON")));
    assert_eq!(
        bad.headers.get("eventd.source.offset").map(String::as_str),
        Some("100")
    );
    assert_eq!(
        bad.headers.get("origin").map(String::as_str),
        Some("test"),
        "original headers are kept"
    );
    assert!(dlq.iter().any(|r| r
        .headers
        .get("eventd.error")
        .is_some_and(|e| e.contains("item_id"))));
    assert!(eventd.wait_until(Duration::from_secs(5), |e| e.metric(
        "eventd_events_invalid_total",
        &[("consumer", "main"), ("topic", "like")]
    ) == 2.0));
    // The partition moved on past the dead-lettered events, not just around them.
    broker.expect_moved_on("main", "like", &eventd);
    let logs = eventd.logs();
    assert!(
        logs.contains("invalid event") && logs.contains("\"offset\":101"),
        "the log names the offset: {logs}"
    );
}

/// A committed offset the broker no longer has (retention deleted it) is reset by
/// `auto.offset.reset`: events are skipped by policy, so eventd logs the reset with the
/// old and new positions and counts it, whatever the log filter hides of librdkafka's
/// own lines.
#[test]
fn an_offset_reset_is_logged_and_counted() {
    let broker = Broker::start(1, &["like", "out"]);
    broker.produce("like", &events(20, 4));
    // Past the end: as if the broker had deleted everything up to offset 1000.
    broker.commit("eventd-main", "like", 0, 1000);
    let eventd = start_eventd_with_env(
        &broker,
        COPY_LIKE_TO_OUT,
        &[("EVENTD__LOG__LEVEL", "info,librdkafka=off".to_owned())],
    );
    broker.expect_every_id("out", 20, Duration::from_secs(30), &eventd);
    assert!(
        eventd.wait_until(Duration::from_secs(10), |e| e.metric_reaches(
            "eventd_offset_resets_total",
            &[("consumer", "main"), ("topic", "like")],
            1.0
        )),
        "no offset reset counted; logs:\n{}",
        eventd.logs()
    );
    let logs = eventd.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("offset reset"))
        .unwrap_or_else(|| panic!("no offset reset logged:\n{logs}"));
    assert!(
        line.contains("offset 1000")
            && line.contains("BEGINNING")
            && line.contains("\"partition\":0"),
        "the log line names the partition and both positions: {line}"
    );
}

/// A forwarded copy is the payload as it arrived, byte for byte (field order, spacing
/// and number spelling kept); with `fields` it is an object of those fields in the
/// order listed, each value as written.
#[test]
fn forward_writes_the_payload_as_it_arrived_and_fields_in_their_listed_order() {
    let broker = Broker::start(1, &["like", "out", "out-fields"]);
    let payloads: Vec<String> = (0..20)
        .map(|id| {
            format!(
                r#"{{ "zeta": 1.50, "ts": 1764000000000, "item_id" : "item-{id}", "user_id":"u\u0031", "event_id": "e-{id}", "note": "caf\u00e9" }}"#
            )
        })
        .collect();
    for (id, payload) in payloads.iter().enumerate() {
        broker.produce_raw("like", &format!("item-{id}"), payload.as_bytes());
    }
    let eventd = start_eventd(
        &broker,
        &format!(
            r#"{COPY_LIKE_TO_OUT}
[[handlers]]
name = "reduced"
kind = "forward"
consumer = "main"
output = "out-fields"
fields = ["zeta", "event_id", "absent", "item_id"]
"#
        ),
    );
    let patience = Duration::from_secs(30);
    let whole = broker.wait_for("out", patience, |records| records.len() >= payloads.len());
    let reduced = broker.wait_for("out-fields", patience, |records| {
        records.len() >= payloads.len()
    });
    let copies: Vec<String> = whole
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    assert_eq!(copies, payloads, "logs: {}", eventd.logs());
    for copy in whole.iter().chain(&reduced) {
        assert_eq!(
            copy.headers.get("origin").map(String::as_str),
            Some("test"),
            "a copy keeps the headers its event arrived with, beside eventd's: {:?}",
            copy.headers
        );
    }
    let fields: Vec<String> = reduced
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    let expected: Vec<String> = (0..payloads.len())
        .map(|id| format!(r#"{{"zeta":1.50,"event_id":"e-{id}","item_id":"item-{id}"}}"#))
        .collect();
    assert_eq!(fields, expected, "logs: {}", eventd.logs());
}
