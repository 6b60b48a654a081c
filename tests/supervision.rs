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
