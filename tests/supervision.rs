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

/// Without a dead-letter topic the first event is never skipped: each panic past its
/// `retry.max_attempts` counts one more towards the meltdown.
#[test]
fn a_handler_that_always_fails_ends_the_daemon_with_70() {
    let broker = Broker::start(1, &["like"]);
    broker.produce("like", &events(50, 5));
    let mut eventd = start_eventd(
        &broker,
        r#"
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
"#,
    );
    let status = eventd
        .wait_exit(Duration::from_secs(30))
        .expect("the daemon gives up");
    assert_eq!(status.code(), Some(70), "{}", eventd.logs());
    assert!(eventd.logs().contains("supervision meltdown"));
}

/// With a dead-letter topic each panicking event is dead-lettered after its attempts,
/// but a handler that panics on event after event, never succeeding between them, is
/// broken: `max_restarts` such events in a row end the daemon. The budget is lowered
/// from the default 10 (and the restart delay shortened) only so the test ends in
/// seconds; the rule is the same at any size.
#[test]
fn a_handler_that_panics_on_every_event_ends_the_daemon_even_with_a_dead_letter_topic() {
    let broker = Broker::start(1, &["like", "dlq"]);
    broker.produce("like", &events(50, 5));
    let mut eventd = start_eventd(
        &broker,
        r#"
[dead_letter]
topic = "dlq"

[supervision]
max_restarts = 3
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
"#,
    );
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
