//! Writes that cannot succeed never stop a partition for good, and never silently:
//! a write the broker rejects for good is dead-lettered with the reason; a missing
//! output or dead-letter topic stops startup with 69; a dead-letter write that keeps
//! failing is retried, counted and shown as a blocked partition.
//!
//! Rejections come from a two-broker mock cluster with errors injected on one broker
//! only, so they hit one topic's writes and not the dead-letter writes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use rdkafka::bindings::rd_kafka_resp_err_t::{
    RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
};

const COPY_WITH_DEAD_LETTER: &str = r#"
[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "copy"
kind = "forward"
consumer = "main"
output = "out"
"#;

/// A copy the broker refuses for good (the topic's own size limit, a denied topic)
/// is dead-lettered with the broker's reason; the handler is not restarted over it,
/// every other event is forwarded and the partition's offset reaches its end.
#[test]
fn a_write_the_broker_rejects_for_good_is_dead_lettered() {
    let broker = Broker::start_cluster(2, 1, &["like", "out", "dlq"]);
    let cluster = broker.embedded();
    cluster.set_leader("like", 0, 1).expect("like on broker 1");
    cluster.set_leader("dlq", 0, 1).expect("dlq on broker 1");
    cluster.set_leader("out", 0, 2).expect("out on broker 2");
    cluster
        .fail_produce_requests_on(
            2,
            &[
                RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
                RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            ],
        )
        .expect("inject");
    let total = 200;
    broker.produce("like", &events(total, 20));
    let eventd = start_eventd(&broker, COPY_WITH_DEAD_LETTER);

    let everywhere = |out: &[Record], dlq: &[Record]| {
        let mut seen = ids(out);
        seen.extend(ids(dlq));
        seen
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (out, dlq) = loop {
        let (out, dlq) = (broker.read_all("out"), broker.read_all("dlq"));
        if everywhere(&out, &dlq).len() >= total || std::time::Instant::now() >= deadline {
            break (out, dlq);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let seen = everywhere(&out, &dlq);
    assert_eq!(
        seen.len(),
        total,
        "{} of {total} ids forwarded or dead-lettered; logs:\n{}",
        seen.len(),
        eventd.logs()
    );
    assert!(
        !dlq.is_empty(),
        "nothing dead-lettered though the broker rejected writes; logs:\n{}",
        eventd.logs()
    );
    let reasons: HashSet<&str> = dlq
        .iter()
        .map(|r| {
            r.headers
                .get("eventd.error")
                .map(String::as_str)
                .unwrap_or("none")
        })
        .collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("Message size too large")
                || r.contains("Topic authorization failed")),
        "dead-letter reasons: {reasons:?}"
    );
    // One rejection of each kind: the size one arrives in delivery reports, the
    // authorization one also at enqueue for later writes to the topic.
    assert!(
        reasons.iter().any(|r| r.contains("Message size too large")),
        "no copy dead-lettered for the broker's size rejection: {reasons:?}"
    );
    assert!(
        dlq.iter()
            .all(|r| r.headers.get("eventd.source.topic").map(String::as_str) == Some("like")),
        "dead-lettered copies name their source"
    );
    assert_eq!(
        eventd.metric_if_present("eventd_actor_restarts_total", &[("actor", "handler/copy")]),
        None,
        "the handler was restarted over a permanent rejection; logs:\n{}",
        eventd.logs()
    );
    broker.expect_moved_on("main", "like", &eventd);
}

/// A count record the broker refuses for good is dead-lettered with the reason instead
/// of failing the handler (whose restart would meet the same refusal until the
/// meltdown); no count is lost and the partition's offset reaches its end.
#[test]
fn a_count_record_the_broker_rejects_for_good_is_dead_lettered() {
    let broker = Broker::start_cluster(2, 1, &["like", "counts", "dlq"]);
    let cluster = broker.embedded();
    cluster.set_leader("like", 0, 1).expect("like on broker 1");
    cluster.set_leader("dlq", 0, 1).expect("dlq on broker 1");
    cluster
        .set_leader("counts", 0, 2)
        .expect("counts on broker 2");
    cluster
        .fail_produce_requests_on(2, &[RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE])
        .expect("inject");
    let total = 200;
    broker.produce("like", &events(total, 5));
    let eventd = start_eventd(
        &broker,
        r#"
[dead_letter]
topic = "dlq"

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
"#,
    );
    let counted = |records: &[Record]| -> u64 {
        records
            .iter()
            .map(|r| {
                let json: serde_json::Value =
                    serde_json::from_slice(&r.payload).expect("count record is JSON");
                json["count"].as_u64().expect("count record has a count")
            })
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (out, dlq) = loop {
        let (out, dlq) = (broker.read_all("counts"), broker.read_all("dlq"));
        if counted(&out) + counted(&dlq) >= total as u64 || std::time::Instant::now() >= deadline {
            break (out, dlq);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !dlq.is_empty(),
        "no count record dead-lettered though the broker rejected one; logs:\n{}",
        eventd.logs()
    );
    assert!(
        dlq.iter().all(|r| r
            .headers
            .get("eventd.error")
            .is_some_and(|e| e.contains("Message size too large"))),
        "dead-lettered count records carry the broker's reason"
    );
    assert_eq!(
        counted(&out) + counted(&dlq),
        total as u64,
        "counts emitted ({}) and dead-lettered ({}) add up to the events produced",
        counted(&out),
        counted(&dlq)
    );
    assert_eq!(
        eventd.metric_if_present("eventd_actor_restarts_total", &[("actor", "handler/tally")]),
        None,
        "the count handler was restarted over a permanent rejection; logs:\n{}",
        eventd.logs()
    );
    broker.expect_moved_on("main", "like", &eventd);
}

/// An output or dead-letter topic that does not exist stops startup with 69 (worth a
/// restart once the topic exists, unlike 78), naming the key; eventd does not create it.
#[test]
fn a_missing_output_or_dead_letter_topic_stops_startup_with_69() {
    let broker = Broker::start(1, &["like"]);
    let mut eventd = start_eventd(&broker, COPY_WITH_DEAD_LETTER);
    let status = eventd
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("eventd kept running; logs:\n{}", eventd.logs()));
    let logs = eventd.logs();
    assert_eq!(status.code(), Some(69), "exit status; logs:\n{logs}");
    for key in ["handlers[0].output", "dead_letter.topic"] {
        assert!(logs.contains(key), "the error names {key}:\n{logs}");
    }
    let client: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("metadata client");
    let metadata =
        rdkafka::consumer::Consumer::fetch_metadata(&client, None, Duration::from_secs(10))
            .expect("metadata");
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    assert!(
        !names.contains(&"out") && !names.contains(&"dlq"),
        "the check created topics: {names:?}"
    );
}

/// A dead-letter write that keeps failing is retried with backoff, counted in
/// eventd_dead_letter_failures_total and shown by eventd_partition_blocked = 1, while
/// /healthz stays 200 (a restart cannot fix it); once a write lands the partition is
/// unblocked and moves on.
#[test]
fn a_failing_dead_letter_write_blocks_its_partition_visibly_until_it_lands() {
    let broker = Broker::start_cluster(2, 1, &["like", "out", "dlq"]);
    let cluster = broker.embedded();
    cluster.set_leader("like", 0, 1).expect("like on broker 1");
    cluster.set_leader("out", 0, 1).expect("out on broker 1");
    cluster.set_leader("dlq", 0, 2).expect("dlq on broker 2");
    cluster
        .fail_produce_requests_on(2, &[RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 6])
        .expect("inject");
    broker.produce("like", &events(10, 2));
    broker.produce_raw("like", "bad", b"{not json");
    let eventd = start_eventd(&broker, COPY_WITH_DEAD_LETTER);
    let blocked = [("consumer", "main"), ("topic", "like"), ("partition", "0")];
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| {
            e.metric_if_present("eventd_partition_blocked", &blocked) == Some(1.0)
        }),
        "partition not shown blocked (blocked {:?}, failures {:?}); logs:\n{}",
        eventd.metric_if_present("eventd_partition_blocked", &blocked),
        eventd.metric_if_present("eventd_dead_letter_failures_total", &[("topic", "dlq")]),
        eventd.logs()
    );
    assert!(eventd.metric("eventd_dead_letter_failures_total", &[("topic", "dlq")]) >= 1.0);
    assert_eq!(
        eventd.http_get("/healthz").map(|r| r.0),
        Some(200),
        "/healthz while a dead-letter write fails"
    );
    let dlq = broker.wait_for("dlq", Duration::from_secs(60), |records| {
        !records.is_empty()
    });
    assert_eq!(dlq.len(), 1, "{}", eventd.logs());
    assert!(
        eventd.wait_until(Duration::from_secs(10), |e| {
            e.metric_if_present("eventd_partition_blocked", &blocked) == Some(0.0)
        }),
        "partition still shown blocked after the write landed"
    );
    let logs = eventd.logs();
    assert!(
        logs.contains("dead-letter write failed") && logs.contains("retry_in_ms"),
        "failures are logged with the backoff:\n{logs}"
    );
    broker.expect_moved_on("main", "like", &eventd);
}
