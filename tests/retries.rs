//! Handler failures an operator sees: an event a handler fails on is retried with
//! backoff while other keys flow, then dead-lettered with where it came from and why;
//! a panic counts as an attempt; a transient outage dead-letters nothing. Failures come
//! from the `fault` handler kind.

#![cfg(feature = "fault-injection")]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const GROUP: &str = "eventd-main";

/// Records of `topic` by their `event_id`.
fn by_id(records: &[Record]) -> HashMap<String, Vec<&Record>> {
    let mut ids: HashMap<String, Vec<&Record>> = HashMap::new();
    for record in records {
        if let Some(id) = record.field("event_id") {
            ids.entry(id).or_default().push(record);
        }
    }
    ids
}

fn header<'a>(record: &'a Record, name: &str) -> &'a str {
    record
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no header {name} on {record:?}"))
}

#[test]
fn an_event_failing_twice_is_handled_once_on_its_third_attempt_before_its_keys_later_events() {
    let broker = Broker::start(1, &["like", "out", "dlq"]);
    // Offset 5 has key item-1, as have 7, 9, ...; the even offsets are item-0.
    let total = 20;
    broker.produce("like", &events(total, 2));
    let eventd = start_eventd(
        &broker,
        r#"
[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "flaky"
kind = "fault"
consumer = "main"
action = "fail"
offsets = [5]
times = 2
output = "out"
[handlers.retry]
backoff = "300ms"
"#,
    );
    let out = broker.expect_every_id("out", total, Duration::from_secs(30), &eventd);
    let ids = by_id(&out);
    assert_eq!(ids["e-5"].len(), 1, "e-5 written once: {out:?}");
    let position = |id: usize| {
        out.iter()
            .position(|r| r.field("event_id").as_deref() == Some(&format!("e-{id}")))
            .expect("written")
    };
    for later in (7..total).step_by(2) {
        assert!(
            position(later) > position(5),
            "e-{later} (same key as e-5) was written before it: {:?}",
            out.iter().map(|r| r.field("event_id")).collect::<Vec<_>>()
        );
    }
    let handled = eventd.log_lines("event handled after retries");
    assert!(
        handled
            .iter()
            .any(|line| line["offset"] == 5 && line["attempts"] == 3),
        "no 'handled after retries' line for offset 5 with attempts 3: {handled:?}\n{}",
        eventd.logs()
    );
    assert!(broker.read_all("dlq").is_empty(), "nothing dead-lettered");
    // Only e-5 failed on its own: the other events of its failed batch are neither
    // retries nor `retried`.
    assert_eq!(
        eventd.metric("eventd_handler_retries_total", &[("handler", "flaky")]),
        2.0,
        "{}",
        eventd.scrape()
    );
    assert_eq!(
        eventd.metric(
            "eventd_events_handled_total",
            &[("handler", "flaky"), ("outcome", "retried")]
        ),
        1.0
    );
    broker.expect_moved_on("main", "like", &eventd);
}

#[test]
fn the_committed_offset_waits_at_a_retrying_event_across_a_restart_until_it_is_dead_lettered() {
    let broker = Broker::start(1, &["like", "out", "dlq"]);
    // Offsets 0, 1 and 2 share a key; 3 has another.
    let produced: Vec<(String, String)> =
        [(0, "item-a"), (1, "item-a"), (2, "item-a"), (3, "item-b")]
            .into_iter()
            .map(|(id, item)| (item.to_owned(), event(id, item)))
            .collect();
    broker.produce("like", &produced);
    let mut eventd = start_eventd(
        &broker,
        r#"
[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]
commit_interval = "100ms"
drain_timeout = "1s"

[[handlers]]
name = "picky"
kind = "fault"
consumer = "main"
action = "fail"
offsets = [2]
output = "out"
[handlers.retry]
max_attempts = 3
backoff = "8s"
max_backoff = "8s"
"#,
    );
    // 3 is of another key: it is not held back by 2.
    let out = broker.wait_for("out", Duration::from_secs(20), |r| ids(r).len() >= 3);
    let written = ids(&out);
    for id in ["e-0", "e-1", "e-3"] {
        assert!(
            written.contains(id),
            "{id} missing from {written:?}; {}",
            eventd.logs()
        );
    }
    assert!(!written.contains("e-2"));
    let at_two = || broker.committed(GROUP, "like") == vec![(0, Some(2))];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !at_two() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        at_two(),
        "committed {:?}, expected 2 while offset 2 retries; {}",
        broker.committed(GROUP, "like"),
        eventd.logs()
    );
    assert!(
        broker.read_all("dlq").is_empty(),
        "2 still has attempts left"
    );

    eventd.terminate(Duration::from_secs(20));
    assert_eq!(
        broker.committed(GROUP, "like"),
        vec![(0, Some(2))],
        "kept across the stop"
    );
    let eventd = eventd.restart();
    let dlq = broker.wait_for("dlq", Duration::from_secs(40), |r| !r.is_empty());
    assert_eq!(dlq.len(), 1, "{dlq:?}; {}", eventd.logs());
    assert_eq!(dlq[0].field("event_id").as_deref(), Some("e-2"));
    assert_eq!(header(&dlq[0], "eventd.attempts"), "3");
    let redelivered = eventd.log_lines("handler failed on an event; retrying it");
    assert!(
        redelivered.iter().any(|line| line["offset"] == 2),
        "the restarted daemon did not retry offset 2: {}",
        eventd.logs()
    );
    broker.expect_committed_to_end(GROUP, "like", Duration::from_secs(20), &eventd);
}

const ALWAYS_FAILING_TOPICS: &[&str] = &["like", "out", "flaky.dlq", "dlq"];

#[test]
fn an_always_failing_event_is_dead_lettered_with_its_provenance_while_its_partition_flows() {
    always_failing_event_is_dead_lettered(Broker::start(2, ALWAYS_FAILING_TOPICS), &[]);
}

#[test]
fn on_tansu_an_always_failing_event_is_dead_lettered_with_its_provenance() {
    always_failing_event_is_dead_lettered(
        Broker::tansu(2, ALWAYS_FAILING_TOPICS),
        &[("EVENTD__KAFKA__SESSION_TIMEOUT", "45s".to_owned())],
    );
}

fn always_failing_event_is_dead_lettered(broker: Broker, env: &[(&str, String)]) {
    let total = 30;
    let produced = events(total, 5);
    for (key, payload) in &produced {
        // Each carries an `origin: test` header, which the dead-letter copy keeps.
        broker.produce_raw("like", key, payload.as_bytes());
    }
    let eventd = start_eventd_with_env(
        &broker,
        r#"
[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]
commit_interval = "100ms"

[[handlers]]
name = "flaky"
kind = "fault"
consumer = "main"
action = "fail"
offsets = [3]
output = "out"
dead_letter = "flaky.dlq"
[handlers.retry]
backoff = "50ms"
"#,
        env,
    );
    let failing: Vec<usize> = (0..2)
        .filter(|p| broker.watermarks("like")[*p as usize].2 > 3)
        .collect();
    let dlq = broker.wait_for("flaky.dlq", Duration::from_secs(30), |r| {
        r.len() >= failing.len()
    });
    assert_eq!(dlq.len(), failing.len(), "{dlq:?}; {}", eventd.logs());
    broker.expect_committed_to_end(GROUP, "like", Duration::from_secs(20), &eventd);
    let originals = by_id(&broker.read_all("like"))
        .into_iter()
        .map(|(id, records)| (id, records[0].clone()))
        .collect::<HashMap<_, _>>();
    for copy in &dlq {
        let id = copy.field("event_id").expect("the whole event");
        let original = &originals[&id];
        assert_eq!(header(copy, "eventd.source.topic"), "like");
        assert_eq!(
            header(copy, "eventd.source.partition"),
            original.partition.to_string()
        );
        assert_eq!(header(copy, "eventd.source.offset"), "3");
        assert_eq!(original.offset, 3);
        assert_eq!(header(copy, "eventd.handler"), "flaky");
        assert!(
            header(copy, "eventd.error").contains("injected failure"),
            "{copy:?}"
        );
        assert_eq!(header(copy, "eventd.attempts"), "3");
        let failed_at = header(copy, "eventd.failed_at");
        assert!(
            chrono::DateTime::parse_from_rfc3339(failed_at).is_ok(),
            "eventd.failed_at {failed_at:?} is not RFC 3339"
        );
        assert_eq!(
            header(copy, "origin"),
            "test",
            "the event's own header is kept"
        );
        assert_eq!(copy.key, original.key);
        assert_eq!(
            copy.payload, original.payload,
            "the value is kept byte for byte"
        );
    }
    assert!(
        broker.read_all("dlq").is_empty(),
        "the handler's own topic is used"
    );
    eventd.assert_log_lines_are_searchable();
    let out = broker.wait_for("out", Duration::from_secs(20), |r| {
        ids(r).len() >= total - failing.len()
    });
    let mut missing: Vec<String> = missing_ids(&out, total)
        .into_iter()
        .map(|id| format!("e-{id}"))
        .collect();
    let mut dead: Vec<String> = dlq.iter().filter_map(|r| r.field("event_id")).collect();
    missing.sort();
    dead.sort();
    assert_eq!(missing, dead, "every other event was forwarded");
    let labels = [("handler", "flaky"), ("reason", "handler_error")];
    assert_eq!(
        eventd.metric("eventd_events_dead_lettered_total", &labels),
        failing.len() as f64,
        "{}",
        eventd.scrape()
    );
    assert_eq!(
        eventd.metric(
            "eventd_events_handled_total",
            &[("handler", "flaky"), ("outcome", "dead_lettered")]
        ),
        failing.len() as f64
    );
}

#[test]
fn an_event_that_always_panics_its_handler_is_dead_lettered_and_the_daemon_keeps_running() {
    let broker = Broker::start(1, &["like", "out", "dlq"]);
    let total = 40;
    broker.produce("like", &events(total, 4));
    let eventd = start_eventd(
        &broker,
        r#"
[supervision]
max_restarts = 10
backoff = "50ms"

[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]
commit_interval = "100ms"

[[handlers]]
name = "crashy"
kind = "fault"
consumer = "main"
action = "panic"
offsets = [4]
output = "out"
"#,
    );
    let dlq = broker.wait_for("dlq", Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(dlq.len(), 1, "{dlq:?}; {}", eventd.logs());
    assert_eq!(dlq[0].field("event_id").as_deref(), Some("e-4"));
    assert_eq!(header(&dlq[0], "eventd.handler"), "crashy");
    assert!(
        header(&dlq[0], "eventd.error").contains("injected panic"),
        "{:?}",
        dlq[0]
    );
    assert_eq!(header(&dlq[0], "eventd.attempts"), "3");
    let out = broker.wait_for("out", Duration::from_secs(20), |r| {
        ids(r).len() >= total - 1
    });
    assert_eq!(
        missing_ids(&out, total),
        [4],
        "every other event was forwarded"
    );
    broker.expect_committed_to_end(GROUP, "like", Duration::from_secs(20), &eventd);
    assert!(eventd.is_running(), "{}", eventd.logs());
    eventd.assert_log_lines_are_searchable();
    assert_eq!(
        eventd.metric(
            "eventd_events_dead_lettered_total",
            &[("handler", "crashy"), ("reason", "handler_panic")]
        ),
        1.0
    );
    assert_eq!(
        eventd.metric(
            "eventd_actor_restarts_total",
            &[("actor", "handler/crashy")]
        ),
        3.0,
        "one restart per attempt"
    );
}

#[test]
fn a_dead_letter_copy_too_large_for_the_producer_arrives_truncated() {
    let broker = Broker::start(1, &["like", "dlq"]);
    let text = "x".repeat(20_000);
    let payload = serde_json::json!({
        "event_id": "e-0", "user_id": "u", "item_id": "i", "ts": 1, "text": text,
    })
    .to_string();
    broker.produce_raw("like", "i", payload.as_bytes());
    let eventd = start_eventd(
        &broker,
        r#"
[producer]
max_message_bytes = 4096

[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]
commit_interval = "100ms"

[[handlers]]
name = "refuser"
kind = "fault"
consumer = "main"
action = "fail"
offsets = [0]
[handlers.retry]
max_attempts = 1
"#,
    );
    let dlq = broker.wait_for("dlq", Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(dlq.len(), 1, "{}", eventd.logs());
    let copy = &dlq[0];
    assert_eq!(header(copy, "eventd.truncated"), "true");
    assert_eq!(
        header(copy, "eventd.source.size"),
        payload.len().to_string()
    );
    assert_eq!(header(copy, "eventd.handler"), "refuser");
    assert!(
        copy.payload.len() < 4096 && !copy.payload.is_empty(),
        "{} bytes",
        copy.payload.len()
    );
    assert!(
        payload.as_bytes().starts_with(&copy.payload),
        "the copy is the start of the original value"
    );
    broker.expect_committed_to_end(GROUP, "like", Duration::from_secs(20), &eventd);
}

#[test]
fn a_transient_outage_of_20_seconds_dead_letters_nothing_and_loses_nothing() {
    let broker = Broker::start(2, &["like", "out", "dlq"]);
    let total = 300;
    broker.produce("like", &events(total, 30));
    let eventd = start_eventd(
        &broker,
        r#"
[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]
commit_interval = "100ms"

[[handlers]]
name = "downstream"
kind = "fault"
consumer = "main"
action = "unavailable"
every = 1
lasting = "20s"
output = "out"
[handlers.retry]
max_attempts = 2
backoff = "100ms"
max_backoff = "2s"
"#,
    );
    let started = Instant::now();
    assert!(
        eventd.wait_until(Duration::from_secs(10), |e| {
            e.metric_reaches(
                "eventd_handler_retries_total",
                &[("handler", "downstream")],
                1.0,
            )
        }),
        "no retries during the outage; {}",
        eventd.logs()
    );
    let out = broker.expect_every_id("out", total, Duration::from_secs(60), &eventd);
    assert!(
        started.elapsed() >= Duration::from_secs(15),
        "everything was written before the outage ended: the fault did not hold"
    );
    assert!(
        broker.read_all("dlq").is_empty(),
        "a transient outage dead-lettered events"
    );
    assert_eq!(ids(&out).len(), total);
    broker.expect_committed_to_end(GROUP, "like", Duration::from_secs(20), &eventd);
}

#[test]
fn events_a_filter_refuses_are_counted_as_filtered() {
    let broker = Broker::start(1, &["like", "out"]);
    let mut produced = events(10, 2);
    for (i, (_, payload)) in produced.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
        *payload = payload.replace("\"add\"", "\"remove\"");
        assert!(payload.contains("remove"), "event {i}");
    }
    broker.produce("like", &produced);
    let eventd = start_eventd(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "adds"
kind = "forward"
consumer = "main"
output = "out"
[handlers.filter]
action = { equals = "add" }
"#,
    );
    let labels = |outcome| [("handler", "adds"), ("topic", "like"), ("outcome", outcome)];
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| {
            e.metric_reaches("eventd_events_handled_total", &labels("ok"), 5.0)
                && e.metric_reaches("eventd_events_handled_total", &labels("filtered"), 5.0)
        }),
        "{}",
        eventd.scrape()
    );
    assert_eq!(
        eventd.metric("eventd_events_handled_total", &labels("filtered")),
        5.0
    );
    assert_eq!(
        eventd.metric("eventd_events_handled_total", &labels("ok")),
        5.0
    );
}

#[test]
fn without_a_dead_letter_topic_a_failing_event_blocks_its_partition_loudly_until_it_passes() {
    let broker = Broker::start(1, &["like", "out"]);
    let total = 10;
    broker.produce("like", &events(total, 2));
    let eventd = start_eventd(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["like"]
commit_interval = "100ms"

[[handlers]]
name = "stuck"
kind = "fault"
consumer = "main"
action = "fail"
offsets = [3]
lasting = "6s"
output = "out"
[handlers.retry]
max_attempts = 2
backoff = "50ms"
max_backoff = "500ms"
"#,
    );
    let blocked = [("consumer", "main"), ("topic", "like"), ("partition", "0")];
    assert!(
        eventd.wait_until(Duration::from_secs(10), |e| {
            e.metric_if_present("eventd_partition_blocked", &blocked) == Some(1.0)
        }),
        "the partition is not shown blocked; {}",
        eventd.logs()
    );
    // What finished before offset 3 is committed at the next commit_interval, and
    // nothing past it while it fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let committed = broker.committed(GROUP, "like");
        if committed == vec![(0, Some(3))] {
            break;
        }
        assert!(
            committed.iter().all(|(_, at)| at.is_none_or(|at| at < 3)),
            "committed past the failing event at 3: {committed:?}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "offsets before the failing event were not committed: {committed:?}; {}",
            eventd.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !eventd
            .log_lines("handler keeps failing on an event and no dead-letter topic is set; retrying it, the partition cannot move past it")
            .is_empty(),
        "{}",
        eventd.logs()
    );
    // The fault ends: the event is handled, nothing was lost, and the mark clears.
    broker.expect_every_id("out", total, Duration::from_secs(30), &eventd);
    broker.expect_committed_to_end(GROUP, "like", Duration::from_secs(20), &eventd);
    assert!(
        eventd.wait_until(Duration::from_secs(10), |e| {
            e.metric_if_present("eventd_partition_blocked", &blocked) == Some(0.0)
        }),
        "{}",
        eventd.scrape()
    );
}
