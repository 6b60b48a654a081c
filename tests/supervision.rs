//! Handler failures: restart with backoff, redelivery of what the failed actor held,
//! and meltdown (exit 70) when restarts never end. Failures come from the `fault`
//! handler kind, configured like any other handler.

#![cfg(feature = "fault-injection")]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_panicking_handler_is_restarted_and_gets_its_events_again() {
    let broker = Broker::start(2, &["like", "out"]);
    let total = 2_000;
    broker.produce("like", &events(total, 40));
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
action = "panic"
offsets = [10, 400]
once = true
output = "out"
concurrency = 2
"#,
    );
    broker.expect_every_id("out", total, Duration::from_secs(40), &eventd);
    let restarts = eventd.metric("eventd_actor_restarts_total", &[("actor", "handler/flaky")]);
    // Offsets 10 and 400 exist in both partitions: four panics, four restarts.
    assert_eq!(restarts, 4.0, "restart counter; logs: {}", eventd.logs());
    assert!(eventd.logs().contains("redelivering to restarted handler"));
}

/// A handler that panics on every event, with a restart budget of 3 and a 50 ms restart
/// delay (down from 10 and 100 ms only so the tests end in seconds; the rule is the
/// same at any size), on 50 events; `dead_letter` is empty or a `[dead_letter]` section.
fn start_always_panicking(broker: &Broker, dead_letter: &str) -> Eventd {
    broker.produce("like", &events(50, 5));
    start_eventd(
        broker,
        &format!(
            r#"{dead_letter}
[supervision]
max_restarts = 3
restart_window = "60s"
backoff = "50ms"

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "broken"
kind = "fault"
consumer = "main"
action = "panic"
every = 1
[handlers.retry]
max_attempts = 2
"#
        ),
    )
}

/// Without a dead-letter topic the first event is never skipped: each panic past its
/// `retry.max_attempts` counts one more towards the meltdown.
#[test]
fn a_handler_that_always_fails_ends_the_daemon_with_70() {
    let broker = Broker::start(1, &["like"]);
    let mut eventd = start_always_panicking(&broker, "");
    let status = eventd
        .wait_exit(Duration::from_secs(30))
        .expect("the daemon gives up");
    assert_eq!(status.code(), Some(70), "{}", eventd.logs());
    assert!(eventd.logs().contains("supervision meltdown"));
}

/// With a dead-letter topic each panicking event is dead-lettered after its attempts,
/// but a handler that panics on event after event, never succeeding between them, is
/// broken: `max_restarts` such events in a row end the daemon.
#[test]
fn a_handler_that_panics_on_every_event_ends_the_daemon_even_with_a_dead_letter_topic() {
    let broker = Broker::start(1, &["like", "dlq"]);
    let mut eventd = start_always_panicking(&broker, "[dead_letter]\ntopic = \"dlq\"\n");
    let status = eventd
        .wait_exit(Duration::from_secs(30))
        .expect("the daemon gives up");
    assert_eq!(status.code(), Some(70), "{}", eventd.logs());
    let dead_lettered = broker.read_all("dlq").len();
    // The first events were given up one by one (the last copy may not have landed
    // before the exit); the meltdown came long before every event was.
    assert!(
        (1..10).contains(&dead_lettered),
        "{dead_lettered} events dead-lettered before the meltdown"
    );
}

/// A group member fails with one of its partition workers, and ractor kills the
/// member's other workers without their `post_stop`. Their partitions' series must go
/// with them: until the member is back this process reads no partition, and a lag or
/// stall series left behind would name partitions another process may own by then.
#[test]
fn a_failed_group_member_leaves_no_series_of_the_partitions_it_read() {
    let broker = Broker::start(4, &["like"]);
    // The restart delay is long (default 100 ms) so the test can look at the process
    // while the member is down; lag_interval is short (default 5 s) only so the series
    // show sooner. Neither changes what a failed member leaves behind.
    let eventd = start_eventd_with_env(
        &broker,
        r#"
[supervision]
backoff = "60s"
max_backoff = "60s"

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "breaker"
kind = "fault"
consumer = "main"
action = "fail_partition"
offsets = [3]
lasting = "1s"
"#,
        &[("EVENTD__METRICS__LAG_INTERVAL", "200ms".to_owned())],
    );
    let lag_series = |eventd: &Eventd| {
        (0..4)
            .filter(|partition| {
                eventd
                    .metric_if_present(
                        "eventd_consumer_lag_seconds",
                        &[("consumer", "main"), ("partition", &partition.to_string())],
                    )
                    .is_some()
            })
            .count()
    };
    assert!(
        eventd.wait_until(Duration::from_secs(30), |eventd| lag_series(eventd) == 4),
        "every owned partition shows its lag: {}",
        eventd.scrape()
    );
    broker.produce("like", &events(80, 16));
    assert!(
        eventd.wait_until(Duration::from_secs(30), |eventd| eventd
            .logs()
            .contains("injected partition worker failure")
            && eventd.logs().contains("actor failed, restarting")),
        "{}",
        eventd.logs()
    );
    assert!(
        eventd.wait_until(Duration::from_secs(10), |eventd| lag_series(eventd) == 0),
        "the member is down for a minute, yet /metrics shows partitions: {}",
        eventd.scrape()
    );
    let (status, body) = eventd.http_get("/healthz").expect("healthz answers");
    assert_eq!(status, 200, "{body}");
}
