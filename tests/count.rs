//! The `count` handler end to end: tumbling windows emitted to an output topic with the
//! right totals, offsets held at a window's first offset so a crash recounts instead of
//! losing, and open windows flushed as partial on a clean shutdown.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

const INPUT: &str = "like";
const OUTPUT: &str = "item_stats";
const HANDLER: &str = "likes-per-item";

/// item-a ×30, item-b ×20, item-c ×5, interleaved, unique event ids, key = item id.
fn known_input() -> (Vec<(String, String)>, BTreeMap<String, u64>) {
    let mut plan: Vec<&str> = Vec::new();
    for i in 0..30 {
        plan.push("item-a");
        if i < 20 {
            plan.push("item-b");
        }
        if i < 5 {
            plan.push("item-c");
        }
    }
    let mut expected = BTreeMap::new();
    let events = plan
        .iter()
        .enumerate()
        .map(|(id, item)| {
            *expected.entry(item.to_string()).or_insert(0u64) += 1;
            (item.to_string(), event(id, item))
        })
        .collect();
    (events, expected)
}

const GROUP: &str = "eventd-count-test";
/// A topic only a `log` handler takes: its offsets are committed at once.
const MARKER: &str = "marker";

/// `config(window)` with the consumer also reading `MARKER`, which the count handler
/// does not take.
fn config_with_marker(window: &str) -> String {
    config(window)
        .replace(
            &format!("topics = [\"{INPUT}\"]\nmembers"),
            &format!("topics = [\"{INPUT}\", \"{MARKER}\"]\nmembers"),
        )
        .replace(
            "kind = \"count\"",
            &format!("kind = \"count\"\ntopics = [\"{INPUT}\"]"),
        )
        + &format!(
            r#"
[[handlers]]
name = "markers"
kind = "log"
consumer = "analytics"
topics = ["{MARKER}"]
"#
        )
}

fn config(window: &str) -> String {
    format!(
        r#"
[[consumers]]
name = "analytics"
mode = "group"
group_id = "{GROUP}"
topics = ["{INPUT}"]
members = 1
drain_timeout = "5s"

[[handlers]]
name = "{HANDLER}"
kind = "count"
consumer = "analytics"
group_by = "item_id"
window = "{window}"
output = "{OUTPUT}"
"#
    )
}

/// Sum of `count` per `value` over every record of the output topic.
fn sums(records: &[Record]) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for record in records {
        let json = record.json();
        let value = json["value"]
            .as_str()
            .unwrap_or_else(|| panic!("record without a string value: {json}"));
        let count = json["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("record without a numeric count: {json}"));
        *sums.entry(value.to_owned()).or_insert(0) += count;
    }
    sums
}

fn covers(sums: &BTreeMap<String, u64>, expected: &BTreeMap<String, u64>) -> bool {
    expected
        .iter()
        .all(|(value, n)| sums.get(value).copied().unwrap_or(0) >= *n)
}

fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

/// Every output record has the documented shape, its key is its value and its window
/// is `window_ms` long and aligned to the wall clock.
fn check_shape(records: &[Record], window_ms: i64) {
    for record in records {
        let json = record.json();
        assert_eq!(json["group_by"], "item_id", "group_by of {json}");
        let value = json["value"].as_str().expect("value");
        assert_eq!(
            record.key.as_deref(),
            Some(value),
            "record key must be the counted value: {json}"
        );
        let topics: Vec<&str> = json["topics"]
            .as_array()
            .unwrap_or_else(|| panic!("topics is not an array: {json}"))
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        assert!(
            topics.contains(&INPUT),
            "topics of {json} must contain {INPUT:?}"
        );
        let start = millis(json["window_start"].as_str().expect("window_start"));
        let end = millis(json["window_end"].as_str().expect("window_end"));
        assert_eq!(end - start, window_ms, "window length of {json}");
        assert_eq!(
            start.rem_euclid(window_ms),
            0,
            "window not aligned to the clock: {json}"
        );
        assert!(
            json["partial"].is_boolean(),
            "partial must be a boolean: {json}"
        );
    }
}

fn wait_handled(eventd: &Eventd, n: usize) {
    let consumed = &[("consumer", "analytics"), ("topic", INPUT)];
    let handled = &[("handler", HANDLER)];
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| {
            e.metric_reaches("eventd_events_consumed_total", consumed, n as f64)
        }),
        "eventd consumed {:?} of {n} events within 20s; logs:\n{}",
        eventd.metric_if_present("eventd_events_consumed_total", consumed),
        eventd.logs()
    );
    assert!(
        eventd.wait_until(Duration::from_secs(10), |e| {
            e.metric_reaches("eventd_events_handled_total", handled, n as f64)
        }),
        "handler {HANDLER} finished {:?} of {n} events within 10s; logs:\n{}",
        eventd.metric_if_present("eventd_events_handled_total", handled),
        eventd.logs()
    );
}

#[test]
fn count_emits_correct_totals_per_value() {
    let broker = Broker::start(4, &[INPUT, OUTPUT]);
    let (input, expected) = known_input();
    broker.produce(INPUT, &input);
    let mut eventd = start_eventd(&broker, &config("2s"));

    let records = broker.wait_for(OUTPUT, Duration::from_secs(25), |records| {
        covers(&sums(records), &expected)
    });
    let got = sums(&records);
    assert_eq!(
        got,
        expected,
        "counts per value emitted to {OUTPUT}; logs:\n{}",
        eventd.logs()
    );
    check_shape(&records, 2000);
    assert!(
        eventd.child.try_wait().expect("try_wait").is_none(),
        "eventd exited while counting"
    );

    eventd.terminate(Duration::from_secs(30));
    // Nothing is counted twice by the shutdown flush either.
    let after = sums(&broker.read_all(OUTPUT));
    assert_eq!(after, expected, "counts per value after shutdown");
}

#[test]
fn count_recounts_after_sigkill_and_never_loses() {
    let broker = Broker::start(4, &[INPUT, OUTPUT, MARKER]);
    let (input, expected) = known_input();
    broker.produce(INPUT, &input);

    // A 1h window: nothing closes (nor is emitted) before the crash.
    let eventd = start_eventd(&broker, &config_with_marker("1h"));
    wait_handled(&eventd, input.len());
    // Markers on a second topic of the same consumer are stored at once, and the
    // auto-commit that sends them sends whatever was stored for `like` before: once the
    // markers are committed, an unheld `like` offset would have been committed too.
    broker.produce(MARKER, &events(3, 1));
    broker.expect_committed_to_end(GROUP, MARKER, Duration::from_secs(20), &eventd);
    let committed = broker.committed(GROUP, INPUT);
    for (partition, _, high) in broker.watermarks(INPUT) {
        let at = committed
            .iter()
            .find(|(p, _)| *p == partition)
            .and_then(|(_, offset)| *offset);
        assert!(
            high == 0 || at.is_none_or(|at| at < high),
            "{INPUT}/{partition}: committed {at:?} of {high} while its window is open; \
             the window must hold the offset"
        );
    }
    eventd.signal("KILL");
    let mut eventd = eventd;
    assert!(
        eventd.wait_exit(Duration::from_secs(5)).is_some(),
        "eventd survived SIGKILL"
    );
    let emitted_before = broker.read_all(OUTPUT);
    drop(eventd);

    // Same broker, same group, a short window: whatever was not emitted is counted again.
    let started = Instant::now();
    let eventd = start_eventd(&broker, &config_with_marker("2s"));
    let records = broker.wait_for(OUTPUT, Duration::from_secs(35), |records| {
        covers(&sums(records), &expected)
    });
    let got = sums(&records);
    for (value, n) in &expected {
        let sum = got.get(value).copied().unwrap_or(0);
        assert!(
            sum >= *n,
            "{value}: {sum} counted after the crash and restart, {n} produced (lost {}); \
             records before restart: {}; waited {:?}; logs of the second run:\n{}",
            n - sum,
            emitted_before.len(),
            started.elapsed(),
            eventd.logs()
        );
    }
}

/// Shutdown inside a broker outage: the open windows cannot be written, and the log
/// says so, with how many records the broker did not acknowledge, rather than taking
/// the hand-back's flush for done.
#[test]
fn count_records_the_broker_did_not_take_at_shutdown_are_named_in_the_log() {
    let broker = Broker::start(4, &[INPUT, OUTPUT]);
    let (input, _) = known_input();
    broker.produce(INPUT, &input);
    // message_timeout is 2 s (default 30 s) so the handler gives its records up inside
    // the hand-back's wait; with the default the hand-back stops waiting first, and the
    // log names a flush not answered instead.
    // The forward handler makes the producer learn the output topic before the outage,
    // so the count records are queued, not held up asking for metadata.
    let config = format!(
        "[producer]\nmessage_timeout = \"2s\"\n{}\n[[handlers]]\nname = \"warm\"\nkind = \"forward\"\nconsumer = \"analytics\"\noutput = \"{OUTPUT}\"\n",
        config("1h")
    );
    let mut eventd = start_eventd(&broker, &config);
    wait_handled(&eventd, input.len());
    broker
        .embedded()
        .set_available(false)
        .expect("take the broker down");
    eventd.signal("TERM");
    let status = eventd.wait_exit(Duration::from_secs(40));
    let logs = eventd.logs();
    assert!(status.is_some(), "eventd did not stop; logs:\n{logs}");
    let said = eventd.log_lines("count windows not emitted; their events will be recounted");
    assert!(
        said.iter().any(|line| line["error"]
            .as_str()
            .is_some_and(|error| error.contains("count records not acknowledged by the broker"))),
        "no log line names the records the broker did not take; logs:\n{logs}"
    );
}

#[test]
fn partial_windows_are_emitted_on_shutdown() {
    let broker = Broker::start(4, &[INPUT, OUTPUT]);
    let (input, expected) = known_input();
    broker.produce(INPUT, &input);
    let mut eventd = start_eventd(&broker, &config("1h"));
    wait_handled(&eventd, input.len());

    eventd.terminate(Duration::from_secs(30));
    let records = broker.read_all(OUTPUT);
    assert!(
        !records.is_empty(),
        "no count record emitted on shutdown; logs:\n{}",
        eventd.logs()
    );
    check_shape(&records, 3_600_000);
    // Unless an hour boundary passed during the test, every record is an early (partial) emit.
    let now = chrono::Utc::now().timestamp_millis();
    for record in &records {
        let json = record.json();
        let end = millis(json["window_end"].as_str().expect("window_end"));
        if end > now {
            assert_eq!(
                json["partial"], true,
                "window still open at shutdown must be partial: {json}"
            );
        }
    }
    assert!(
        records.iter().any(|r| r.json()["partial"] == true),
        "no partial record emitted on shutdown: {records:?}"
    );
    assert_eq!(
        sums(&records),
        expected,
        "counts per value flushed on shutdown; logs:\n{}",
        eventd.logs()
    );
}

#[test]
fn a_malformed_event_under_count_alone_is_dead_lettered_with_its_headers() {
    let broker = Broker::start(1, &[INPUT, OUTPUT, "dlq"]);
    broker.produce_raw(INPUT, "bad", b"{not json");
    broker.produce(INPUT, &known_input().0);
    let eventd = start_eventd(
        &broker,
        &format!("{}\n[dead_letter]\ntopic = \"dlq\"\n", config("1s")),
    );
    let dead = broker.wait_for("dlq", Duration::from_secs(25), |records| {
        !records.is_empty()
    });
    assert_eq!(dead[0].payload, b"{not json", "logs:\n{}", eventd.logs());
    assert_eq!(
        dead[0].headers.get("origin").map(String::as_str),
        Some("test"),
        "the dead-letter copy keeps the event's headers though count reads none: {:?}",
        dead[0].headers
    );
}
