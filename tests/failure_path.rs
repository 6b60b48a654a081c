//! The one failure path of handler work, seen from outside: whatever fails (the handler,
//! a copy or count record it writes, a dead-letter copy) parks the event's key and
//! backs off, never ends the daemon unless the handler panics on event after event,
//! and never reorders a key or writes for a partition this process no longer owns.

#![cfg(feature = "fault-injection")]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::checker::{produced_ids, Delivery};
use common::*;
use rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;

/// Sum of the `count` fields of count records.
fn counted(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|r| {
            r.json()["count"]
                .as_u64()
                .expect("count record has a count")
        })
        .sum()
}

/// Five events whose `item_id` is ~450 bytes long: a count record keyed by it is over
/// a 1000-byte `producer.max_message_bytes`, while a truncated dead-letter copy fits.
fn produce_long_items(broker: &Broker) {
    let long_item = "i".repeat(450);
    broker.produce(
        "like",
        &(0..5)
            .map(|id| (long_item.clone(), event(id, &long_item)))
            .collect::<Vec<_>>(),
    );
}

/// The count handler of both tests below: windows of 1 s, records to `counts`.
const TALLY_TOO_SMALL_FOR_ITS_RECORDS: &str = r#"
[producer]
max_message_bytes = 1000

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "tally"
kind = "count"
consumer = "main"
group_by = "item_id"
window = "1s"
output = "counts"
"#;

/// A count record keyed by a ~450-byte `group_by` value is over a 1000-byte
/// `producer.max_message_bytes`, so the broker-bound write is refused for good. With no
/// dead-letter topic nothing can take it: the daemon stays up and shows the partition
/// blocked, however often the record is tried (more often here than the restart budget,
/// which a failing actor would use up).
#[test]
fn a_count_record_too_large_without_a_dead_letter_topic_blocks_its_partition_and_the_daemon_stays_up(
) {
    let broker = Broker::start(1, &["like", "counts"]);
    produce_long_items(&broker);
    // A short longest backoff so the refusal is tried more often than the restart budget
    // (10 in a minute by default) within seconds; the budget itself keeps its default.
    let mut eventd = start_eventd(
        &broker,
        &format!("{TALLY_TOO_SMALL_FOR_ITS_RECORDS}[handlers.retry]\nmax_backoff = \"500ms\"\n"),
    );
    let blocked = [("topic", "like"), ("partition", "0")];
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| {
            e.metric_reaches("eventd_partition_blocked", &blocked, 1.0)
        }),
        "the partition was not shown blocked; logs:\n{}",
        eventd.logs()
    );
    let refused = "count record refused by the broker and no [dead_letter] topic is set; \
                   retrying it, its partitions' offsets held";
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| e.log_lines(refused).len() > 12),
        "the refused record was not retried again and again; logs:\n{}",
        eventd.logs()
    );
    assert!(
        eventd.is_running(),
        "the daemon ended over a record it cannot write; logs:\n{}",
        eventd.logs()
    );
    assert_eq!(eventd.metric("eventd_partition_blocked", &blocked), 1.0);
    assert_eq!(
        eventd.metric_if_present("eventd_actor_restarts_total", &[("actor", "handler/tally")]),
        None,
        "the count handler was restarted over a write failure; logs:\n{}",
        eventd.logs()
    );
    assert!(broker.read_all("counts").is_empty());
    eventd.terminate(Duration::from_secs(30));
}

/// The same refusal with a dead-letter topic: the record goes there (truncated to fit,
/// with the reason), and the partition's offsets move on to its end.
#[test]
fn a_count_record_too_large_goes_to_the_dead_letter_topic_and_the_partition_commits_on() {
    let broker = Broker::start(1, &["like", "counts", "dlq"]);
    produce_long_items(&broker);
    let eventd = start_eventd(
        &broker,
        &format!("[dead_letter]\ntopic = \"dlq\"\n{TALLY_TOO_SMALL_FOR_ITS_RECORDS}"),
    );
    let dlq = broker.wait_for("dlq", Duration::from_secs(30), |records| {
        !records.is_empty()
    });
    assert!(
        !dlq.is_empty(),
        "no count record dead-lettered; logs:\n{}",
        eventd.logs()
    );
    assert!(
        dlq.iter().all(|r| r
            .headers
            .get("eventd.error")
            .is_some_and(|e| e.contains("max_message_bytes"))),
        "dead-lettered count records carry the reason: {dlq:?}"
    );
    broker.expect_moved_on("main", "like", &eventd);
    assert!(eventd.is_running());
}

/// Six count slots and a 30 s outage of the only broker with a 2 s
/// `producer.message_timeout`: windows close during the outage and their records cannot
/// land. No slot fails for it (six failing slots used to reach the meltdown), every
/// count is emitted once the broker is back, and no window's record is written twice.
#[test]
fn six_count_slots_ride_out_a_broker_outage_and_emit_every_count_once() {
    let broker = Broker::start(4, &["like", "counts"]);
    let total = 600;
    broker.produce("like", &events(total, 60));
    let mut eventd = start_eventd(
        &broker,
        r#"
[producer]
message_timeout = "2s"

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "tally"
kind = "count"
consumer = "main"
group_by = "item_id"
window = "1s"
output = "counts"
concurrency = 6
"#,
    );
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| {
            e.metric_reaches(
                "eventd_events_handled_total",
                &[("handler", "tally"), ("outcome", "ok")],
                total as f64,
            )
        }),
        "not every event was counted; logs:\n{}",
        eventd.logs()
    );
    broker.embedded().set_available(false).expect("broker down");
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(30) {
        assert!(
            eventd.is_running(),
            "the daemon ended during the outage; logs:\n{}",
            eventd.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    broker.embedded().set_available(true).expect("broker up");
    let records = broker.wait_for("counts", Duration::from_secs(60), |records| {
        counted(records) >= total as u64
    });
    assert_eq!(
        counted(&records),
        total as u64,
        "counts emitted after the outage do not add up to the events produced; logs:\n{}",
        eventd.logs()
    );
    let mut seen = HashSet::new();
    for record in &records {
        let json = record.json();
        let window = (
            json["value"].as_str().unwrap_or_default().to_owned(),
            json["window_start"].as_str().unwrap_or_default().to_owned(),
            json["partial"].as_bool(),
        );
        assert!(
            seen.insert(window.clone()),
            "the record of {window:?} was written twice"
        );
    }
    assert!(eventd.is_running());
    assert_eq!(
        eventd.metric_if_present("eventd_actor_restarts_total", &[("actor", "handler/tally")]),
        None,
        "a count slot was restarted over the outage; logs:\n{}",
        eventd.logs()
    );
    eventd.terminate(Duration::from_secs(30));
}

/// Keyed events forwarded through a two-broker mock cluster whose output partition's
/// leader is down for 5 s, with the default idempotent producer and a 2 s
/// `producer.message_timeout` (with the default 30 s the copies would only wait): the
/// copies not acknowledged in time are sent again, yet the first copy of each event
/// reaches the output in source order per key, and none is missing.
#[test]
fn forwarded_copies_keep_their_keys_order_across_an_output_leader_outage() {
    let broker = Broker::start_cluster(2, 1, &["like", "out"]);
    let cluster = broker.embedded();
    cluster.set_leader("like", 0, 1).expect("like on broker 1");
    cluster.set_leader("out", 0, 2).expect("out on broker 2");
    let total = 3_000;
    let all = events(total, 20);
    broker.produce("like", &all[..total / 3]);
    let eventd = start_eventd(
        &broker,
        r#"
[producer]
message_timeout = "2s"

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "copy"
kind = "forward"
consumer = "main"
output = "out"
"#,
    );
    broker.wait_for("out", Duration::from_secs(30), |records| {
        !records.is_empty()
    });
    cluster
        .set_broker_available(2, false)
        .expect("broker 2 down");
    let down = Instant::now();
    broker.produce("like", &all[total / 3..2 * total / 3]);
    // Down for 5 s, past the 2 s deadline of the copies written meanwhile.
    while down.elapsed() < Duration::from_secs(5) {
        assert!(
            eventd.is_running(),
            "the daemon ended; logs:\n{}",
            eventd.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.set_broker_available(2, true).expect("broker 2 up");
    broker.produce("like", &all[2 * total / 3..]);
    broker.expect_every_id("out", total, Duration::from_secs(60), &eventd);
    let delivery = Delivery::check(&produced_ids(total), &broker.read_all("out"));
    eprintln!("leader outage: {}", delivery.summary());
    delivery.assert_at_least_once_in_order("across the output leader's outage");
}

/// A handler that fails on 20 events and another that panics on 5, spread among 500
/// good ones, with the default supervision and retry settings: every failing event is
/// dead-lettered with its headers, every other one handled, and the daemon stops
/// cleanly. Five events that each cost `retry.max_attempts` restarts used to use up
/// the restart budget shared by every slot (exit 70).
#[test]
fn events_that_fail_or_panic_among_good_ones_are_dead_lettered_and_the_daemon_keeps_running() {
    let broker = Broker::start(1, &["like", "failed_out", "panicked_out", "dlq"]);
    let total = 500;
    broker.produce("like", &events(total, 50));
    let failing: Vec<i64> = (0..20).map(|i| 10 + i * 24).collect();
    let panicking: Vec<i64> = (0..5).map(|i| 17 + i * 97).collect();
    let mut eventd = start_eventd(
        &broker,
        &format!(
            r#"
[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "failing"
kind = "fault"
consumer = "main"
action = "fail"
offsets = {failing:?}
output = "failed_out"

[[handlers]]
name = "panicking"
kind = "fault"
consumer = "main"
action = "panic"
offsets = {panicking:?}
output = "panicked_out"
"#
        ),
    );
    let dlq = broker.wait_for("dlq", Duration::from_secs(120), |records| {
        records.len() >= failing.len() + panicking.len()
    });
    let by_handler = |handler: &str| -> Vec<i64> {
        let mut offsets: Vec<i64> = dlq
            .iter()
            .filter(|r| r.headers.get("eventd.handler").map(String::as_str) == Some(handler))
            .map(|r| {
                r.headers["eventd.source.offset"]
                    .parse()
                    .expect("source offset header")
            })
            .collect();
        offsets.sort_unstable();
        offsets
    };
    assert_eq!(
        by_handler("failing"),
        failing,
        "dead-lettered by the failing handler; logs:\n{}",
        eventd.logs()
    );
    assert_eq!(
        by_handler("panicking"),
        panicking,
        "dead-lettered by the panicking handler; logs:\n{}",
        eventd.logs()
    );
    assert!(dlq.iter().all(|r| r.headers.contains_key("eventd.error")
        && r.headers.contains_key("eventd.attempts")
        && r.headers["eventd.source.topic"] == "like"));
    for (topic, skipped) in [("failed_out", &failing), ("panicked_out", &panicking)] {
        let written = ids(&broker.wait_for(topic, Duration::from_secs(30), |records| {
            ids(records).len() >= total - skipped.len()
        }));
        let expected: HashSet<String> = (0..total as i64)
            .filter(|offset| !skipped.contains(offset))
            .map(|offset| format!("e-{offset}"))
            .collect();
        assert_eq!(written, expected, "{topic} holds every other event");
    }
    // A panic on a batch counts an attempt for each of its events, so an event costs
    // at most retry.max_attempts (3) panics, fewer when it panicked in a batch first.
    let panics = eventd.metric("eventd_handler_panics_total", &[("handler", "panicking")]);
    assert!(
        (panicking.len() as f64..=3.0 * panicking.len() as f64).contains(&panics),
        "{panics} panics for {} panicking events",
        panicking.len()
    );
    broker.expect_moved_on("main", "like", &eventd);
    eventd.terminate(Duration::from_secs(30));
}

/// Keyless events whose `item_id` is a number key by that number: one event that keeps
/// failing holds back only the events of its own id, not every keyless numeric one.
#[test]
fn a_failing_keyless_event_with_a_numeric_item_id_holds_back_only_its_own_id() {
    let broker = Broker::start(1, &["like", "out"]);
    let total = 30;
    let keyless: Vec<String> = (0..total)
        .map(|id| {
            serde_json::json!({
                "event_id": format!("e-{id}"),
                "user_id": "u1",
                "item_id": 1000 + id,
                "ts": 1_764_000_000_000i64 + id as i64,
            })
            .to_string()
        })
        .collect();
    broker.produce_keyless("like", &keyless);
    let eventd = start_eventd(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "flaky"
kind = "fault"
consumer = "main"
action = "fail"
offsets = [0]
times = 2
output = "out"
# A long backoff keeps offset 0 parked while the test looks at the other events.
[handlers.retry]
backoff = "30s"
max_backoff = "30s"
"#,
    );
    let out = broker.wait_for("out", Duration::from_secs(20), |records| {
        ids(records).len() >= total - 1
    });
    let written = ids(&out);
    assert!(
        !written.contains("e-0"),
        "offset 0 was written before its retries: {written:?}"
    );
    assert_eq!(
        written.len(),
        total - 1,
        "events with other numeric item ids waited behind the failing one; logs:\n{}",
        eventd.logs()
    );
    // What waits is shown: one parked key, whose age grows between scrapes.
    let flaky = [("handler", "flaky")];
    assert_eq!(
        eventd.metric("eventd_handler_parked_keys", &flaky),
        1.0,
        "{}",
        eventd.scrape()
    );
    let age = eventd.metric("eventd_handler_parked_oldest_seconds", &flaky);
    assert!(
        eventd.wait_until(Duration::from_secs(5), |e| {
            e.metric("eventd_handler_parked_oldest_seconds", &flaky) >= age + 1.0
        }),
        "the parked age does not grow: {age}; {}",
        eventd.scrape()
    );
}

/// `eventd_partition_blocked` belongs to the partition's current worker. Undecodable
/// events on both partitions, and a dead-letter topic whose broker refuses every write:
/// both partitions are blocked. A second member joins and eager assignment gives each
/// member one partition, each read by a new worker (in the first process too). For
/// as long as the writes keep failing, every process shows each partition it owns
/// blocked, steadily: an old worker giving up its retries when its partition went
/// must not clear the series the new worker set.
#[test]
fn the_blocked_gauge_follows_the_partitions_current_worker() {
    let broker = Broker::start_cluster(2, 2, &["like", "dlq"]);
    let cluster = broker.embedded();
    for partition in 0..2 {
        cluster
            .set_leader("like", partition, 1)
            .expect("like on broker 1");
        cluster
            .set_leader("dlq", partition, 2)
            .expect("dlq on broker 2");
    }
    cluster
        .fail_produce_requests_on(2, &[RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 5_000])
        .expect("inject");
    for key in ["a", "b", "c", "d", "e", "f"] {
        broker.produce_raw("like", key, b"{not json");
    }
    assert!(
        broker
            .watermarks("like")
            .iter()
            .all(|(_, low, high)| high > low),
        "the malformed events did not reach both partitions"
    );
    let config = r#"
[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]
assignment = "range"

[[handlers]]
name = "audit"
kind = "log"
consumer = "main"
"#;
    fn blocked(partition: &str) -> [(&'static str, &str); 2] {
        [("topic", "like"), ("partition", partition)]
    }
    let owned = |e: &Eventd| -> Vec<String> {
        ["0", "1"]
            .into_iter()
            .filter(|p| {
                samples(
                    &e.scrape(),
                    "eventd_consumer_lag_seconds",
                    &[("partition", p)],
                )
                .is_some()
            })
            .map(str::to_owned)
            .collect()
    };
    let shows_owned_blocked = |e: &Eventd| {
        let owned = owned(e);
        !owned.is_empty()
            && owned
                .iter()
                .all(|p| e.metric_if_present("eventd_partition_blocked", &blocked(p)) == Some(1.0))
    };
    let first = start_eventd(&broker, config);
    assert!(
        first.wait_until(Duration::from_secs(20), |e| owned(e).len() == 2
            && shows_owned_blocked(e)),
        "failing dead-letter writes did not block both partitions; {}",
        first.scrape()
    );
    let second = start_eventd(&broker, config);
    // The rebalance waits for the first member's revoke, whose drain waits out
    // `drain_timeout` (10 s) on its blocked partitions, and the lag series of a new
    // owner come with the next lag interval: 24 s to the assignment was seen.
    assert!(
        second.wait_until(Duration::from_secs(60), |second| {
            let (mine, theirs) = (owned(second), owned(&first));
            mine.len() == 1 && theirs.len() == 1 && mine != theirs
        }),
        "the partitions were not shared out; second member's logs:\n{}",
        second.logs()
    );
    for member in [&first, &second] {
        assert!(
            member.wait_until(Duration::from_secs(10), shows_owned_blocked),
            "a new worker does not show its blocked partition; {}",
            member.scrape()
        );
    }
    // Long enough for the old workers' retries (backoff doubling towards 10 s) to end.
    let failures = |e: &Eventd| e.metric("eventd_dead_letter_failures_total", &[("topic", "dlq")]);
    let (first_failures, second_failures) = (failures(&first), failures(&second));
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        for member in [&first, &second] {
            assert!(
                shows_owned_blocked(member),
                "a partition's blocked series went to 0 while its dead-letter writes still fail; {}",
                member.scrape()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        failures(&first) > first_failures && failures(&second) > second_failures,
        "the dead-letter writes stopped failing, so the check above proved nothing"
    );
}

/// An event parked for a retry when its partition is revoked: the old owner drops it
/// (no retry, no dead-letter copy), and the partition's next owner reads it again from
/// the committed offset and dead-letters it once. The retry's backoff ends while the
/// old owner is still draining, when a retry would still find its worker running.
#[test]
fn a_partition_revoked_while_an_event_is_parked_gets_no_dead_letter_copy_from_its_old_owner() {
    let broker = Broker::start(1, &["like", "out", "dlq"]);
    broker.produce("like", &events(6, 1));
    let config = r#"
[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]
assignment = "range"

[[handlers]]
name = "flaky"
kind = "fault"
consumer = "main"
action = "fail"
offsets = [2]
output = "out"
# The batch's attempt, then offset 2 alone, then 5 s later its last: the revoke comes
# before that, and the default 10 s drain is still waiting for offset 2 when it is due.
[handlers.retry]
max_attempts = 3
backoff = "5s"
max_backoff = "5s"
"#;
    let first = start_eventd(&broker, config);
    let retrying = "handler failed on an event; retrying it";
    assert!(
        first.wait_until(Duration::from_secs(20), |e| !e
            .log_lines(retrying)
            .is_empty()),
        "offset 2 did not fail; logs:\n{}",
        first.logs()
    );
    let second = start_eventd(&broker, config);
    assert!(
        first.wait_until(Duration::from_secs(10), |e| e
            .logs()
            .contains("partitions revoked")),
        "the second member's join revoked nothing; logs:\n{}",
        first.logs()
    );
    let dlq = broker.wait_for("dlq", Duration::from_secs(60), |records| {
        !records.is_empty()
    });
    assert!(!dlq.is_empty(), "offset 2 was never dead-lettered");
    // Whoever owns the partition now finishes it: the committed offset reaches the end.
    broker.expect_committed_to_end("eventd-main", "like", Duration::from_secs(60), &second);
    let dlq = broker.read_all("dlq");
    assert_eq!(
        dlq.len(),
        1,
        "offset 2 was dead-lettered {} times: the old owner wrote a copy for a partition it \
         was handing back; first member's logs:\n{}",
        dlq.len(),
        first.logs()
    );
}

/// A fatal producer error mid-stream (the idempotent producer is replaced, and what it
/// still held fails): the copies it held are sent again before any newer copy of
/// their keys, so the first copies keep source order per key, and none is missing.
#[test]
fn forwarded_copies_keep_their_keys_order_across_a_producer_restart() {
    let broker = Broker::start(1, &["like", "out"]);
    let total = 6_000;
    broker.produce("like", &events(total, 40));
    let eventd = start_eventd(
        &broker,
        &format!(
            r#"{COPY_LIKE_TO_OUT}
[[handlers]]
name = "breaker"
kind = "fault"
consumer = "main"
action = "producer_fatal"
offsets = [2500]
once = true
"#
        ),
    );
    broker.expect_every_id("out", total, Duration::from_secs(60), &eventd);
    assert!(
        eventd.metric_reaches("eventd_actor_restarts_total", &[("actor", "producer")], 1.0),
        "the producer was not restarted; logs:\n{}",
        eventd.logs()
    );
    let delivery = Delivery::check(&produced_ids(total), &broker.read_all("out"));
    eprintln!("producer restart: {}", delivery.summary());
    delivery.assert_at_least_once_in_order("across a producer restart");
}
