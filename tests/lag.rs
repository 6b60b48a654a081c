//! Lag, stalls and readiness as an operator watching Prometheus and the probes sees
//! them: lag rises while a handler is slow and returns to 0, a revoked partition's
//! series leave `/metrics`, a stalled partition is named and recovers, and `/readyz`
//! follows the broker.

#![cfg(feature = "fault-injection")]

mod common;

use std::time::Duration;

use common::*;

/// The partitions `metric` has a series for in `eventd`'s page.
fn partitions_with(eventd: &Eventd, metric: &str) -> Vec<String> {
    let mut partitions: Vec<String> = eventd
        .scrape()
        .lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .filter_map(|line| {
            let (_, rest) = line.split_once("partition=\"")?;
            Some(rest.split_once('"')?.0.to_owned())
        })
        .collect();
    partitions.sort();
    partitions
}

#[test]
fn lag_rises_while_a_handler_is_slow_and_returns_to_zero() {
    let broker = Broker::start(1, &["like", "out"]);
    let total = 150;
    broker.produce("like", &events(total, 5));
    // The harness writes [metrics] itself: the interval comes from the environment.
    let eventd = start_eventd_with_env(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["like"]
max_in_flight = 20

[[handlers]]
name = "slow"
kind = "fault"
consumer = "main"
action = "sleep"
sleep = "60ms"
every = 1
output = "out"
"#,
        &[("EVENTD__METRICS__LAG_INTERVAL", "200ms".to_owned())],
    );
    let labels = [("consumer", "main"), ("topic", "like"), ("partition", "0")];
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| {
            e.metric_if_present("eventd_consumer_lag_messages", &labels)
                .is_some_and(|lag| lag >= 20.0)
                && e.metric_if_present("eventd_consumer_lag_seconds", &labels)
                    .is_some_and(|seconds| seconds > 0.0)
        }),
        "no lag seen while the handler is slow; {}",
        eventd.scrape()
    );
    broker.expect_every_id("out", total, Duration::from_secs(60), &eventd);
    assert!(
        eventd.wait_until(Duration::from_secs(10), |e| {
            e.metric_if_present("eventd_consumer_lag_messages", &labels) == Some(0.0)
                && e.metric_if_present("eventd_consumer_lag_seconds", &labels) == Some(0.0)
        }),
        "lag did not return to 0; {}",
        eventd.scrape()
    );
}

#[test]
fn a_revoked_partitions_lag_series_leave_metrics() {
    let broker = Broker::start(2, &["like", "out"]);
    broker.produce("like", &events(20, 4));
    let env = [("EVENTD__METRICS__LAG_INTERVAL", "300ms".to_owned())];
    // Eager range assignment: one rebalance gives each member one partition, where the
    // mock cluster was seen to leave a cooperative newcomer without one for 30 s.
    let body = COPY_LIKE_TO_OUT.replace(
        "topics = [\"like\"]\n",
        "topics = [\"like\"]\nassignment = \"range\"\n",
    );
    assert_ne!(body, COPY_LIKE_TO_OUT);
    let first = start_eventd_with_env(&broker, &body, &env);
    assert!(
        first.wait_until(Duration::from_secs(20), |e| {
            partitions_with(e, "eventd_consumer_lag_messages") == ["0", "1"]
                && partitions_with(e, "eventd_consumer_lag_seconds") == ["0", "1"]
        }),
        "{}",
        first.scrape()
    );
    // A second member takes one partition; the first keeps series for one only.
    let second = start_eventd_with_env(&broker, &body, &env);
    assert!(
        second.wait_until(Duration::from_secs(30), |e| {
            partitions_with(e, "eventd_consumer_lag_seconds").len() == 1
        }),
        "the second member got no partition; {}",
        second.logs()
    );
    let taken = partitions_with(&second, "eventd_consumer_lag_seconds");
    assert!(
        first.wait_until(Duration::from_secs(5), |e| {
            let kept = partitions_with(e, "eventd_consumer_lag_messages");
            kept.len() == 1
                && kept != taken
                && partitions_with(e, "eventd_partition_stalled") == kept
        }),
        "the first member still shows {:?} (second has {taken:?}); {}",
        partitions_with(&first, "eventd_consumer_lag_messages"),
        first.scrape()
    );
}

fn stalled_partition_is_reported_and_recovers(fails_liveness: bool) {
    let broker = Broker::start(1, &["like", "out"]);
    broker.produce("like", &events(1, 1));
    let eventd = start_eventd_with_env(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "waiting"
kind = "fault"
consumer = "main"
action = "unavailable"
offsets = [0]
lasting = "5s"
output = "out"
"#,
        &[
            ("EVENTD__METRICS__LAG_INTERVAL", "200ms".to_owned()),
            ("EVENTD__HEALTH__STALL_TIMEOUT", "1s".to_owned()),
            (
                "EVENTD__HEALTH__STALL_FAILS_LIVENESS",
                fails_liveness.to_string(),
            ),
        ],
    );
    let labels = [("consumer", "main"), ("topic", "like"), ("partition", "0")];
    assert!(
        eventd.wait_until(Duration::from_secs(10), |e| {
            e.metric_if_present("eventd_partition_stalled", &labels) == Some(1.0)
        }),
        "{}",
        eventd.scrape()
    );
    let (status, body) = eventd.http_get("/healthz").expect("/healthz answers");
    assert_eq!(body, "stalled partitions: main:like/0\n");
    assert_eq!(status, if fails_liveness { 503 } else { 200 });
    assert!(!eventd
        .log_lines(
            "partition stalled: events unfinished and none finished for health.stall_timeout"
        )
        .is_empty());
    broker.expect_every_id("out", 1, Duration::from_secs(20), &eventd);
    assert!(
        eventd.wait_until(Duration::from_secs(5), |e| {
            e.metric_if_present("eventd_partition_stalled", &labels) == Some(0.0)
                && e.http_get("/healthz") == Some((200, "ok\n".to_owned()))
        }),
        "{}",
        eventd.scrape()
    );
    assert!(!eventd.log_lines("partition no longer stalled").is_empty());
}

#[test]
fn a_stalled_partition_is_named_in_healthz_and_recovers() {
    stalled_partition_is_reported_and_recovers(false);
}

#[test]
fn a_stall_fails_liveness_when_configured_to() {
    stalled_partition_is_reported_and_recovers(true);
}

#[test]
fn readiness_follows_the_broker_through_an_outage() {
    let broker = Broker::tansu(1, &["like", "out"]);
    let eventd = start_eventd_with_env(
        &broker,
        COPY_LIKE_TO_OUT,
        &[
            ("EVENTD__METRICS__LAG_INTERVAL", "300ms".to_owned()),
            ("EVENTD__HEALTH__BROKER_TIMEOUT", "2s".to_owned()),
            ("EVENTD__KAFKA__SESSION_TIMEOUT", "45s".to_owned()),
        ],
    );
    let ready = |e: &Eventd| {
        e.http_get("/readyz")
            .is_some_and(|(status, _)| status == 200)
    };
    assert!(
        eventd.wait_until(Duration::from_secs(30), ready),
        "{}",
        eventd.logs()
    );
    broker.stop();
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| {
            e.http_get("/readyz").is_some_and(|(status, body)| {
                status == 503 && body.starts_with("not ready: no broker answered for")
            })
        }),
        "/readyz {:?} with the broker down",
        eventd.http_get("/readyz")
    );
    assert_eq!(
        eventd.http_get("/healthz").map(|r| r.0),
        Some(200),
        "liveness stays"
    );
    broker.restart();
    assert!(
        eventd.wait_until(Duration::from_secs(60), ready),
        "/readyz {:?} after the broker came back; {}",
        eventd.http_get("/readyz"),
        eventd.logs()
    );
}
