//! A broker outage under a running daemon: tansu is stopped (or killed) and started
//! again on the same port and sqlite storage while eventd consumes and forwards. Every
//! event produced before the outage and after it must reach the output topic at least
//! once, and the daemon must ride the outage out instead of exiting.

mod common;

use std::time::{Duration, Instant};

use common::*;

// librdkafka's group protocol log (with RUST_LOG below), shown only when the test
// fails: it tells a broker that never answers a rejoin from a consumer that never asks.
//
// Idempotence is off: tansu 0.6 panics on an idempotent producer's first write after
// a restart ("more or less than one row" in its idempotent_message_check), and its
// storage service then answers no request at all, which no client can ride out.
const CONFIG: &str = r#"
[kafka.options]
debug = "cgrp"

[producer]
idempotence = false

[[consumers]]
name = "main"
group_id = "eventd-outage"
topics = ["like"]
max_in_flight = 200

[[handlers]]
name = "copy"
kind = "forward"
consumer = "main"
output = "out"
"#;

/// Events handled before the outage starts.
const SETTLED: usize = 2_000;
/// Events produced just before the broker goes away, so it goes away while eventd is
/// still fetching, handling, producing copies and committing them.
const IN_FLIGHT: usize = 2_000;
/// Events produced once the broker is back.
const AFTER: usize = 2_000;

#[derive(Debug, Clone, Copy)]
enum Outage {
    /// SIGTERM: tansu shuts down on its own terms.
    Stop,
    /// SIGKILL: nothing tansu has not written to sqlite yet survives.
    Crash,
}

/// A clean broker restart well within the session timeout, as in a rolling restart:
/// the group keeps its member. The session timeout is raised to 45s here because
/// tansu takes up to 5s more to stop on SIGTERM, and because of a tansu quirk: when a
/// member's session expires across a SIGTERM restart, tansu can keep the dead member as
/// the group's leader, and every SyncGroup then answers "rebalance in progress" for
/// good (seen with librdkafka's group log: JoinGroup names the old member as leader).
/// A session that expires across a crash is the next test.
#[test]
fn every_event_is_handled_across_a_broker_restart() {
    every_event_is_handled_across(Outage::Stop, Duration::from_secs(5));
}

/// Longer than `kafka.session_timeout`: the member's session has expired by the time
/// the broker is back, so the consumer has to join the group again.
#[test]
fn every_event_is_handled_across_a_broker_crash_longer_than_the_session_timeout() {
    every_event_is_handled_across(Outage::Crash, Duration::from_secs(15));
}

fn every_event_is_handled_across(outage: Outage, downtime: Duration) {
    let broker = Broker::tansu(2, &["like", "out"]);
    let total = SETTLED + IN_FLIGHT + AFTER;
    let all = events(total, 100);
    broker.produce("like", &all[..SETTLED]);
    let mut env = vec![("RUST_LOG", "info,librdkafka=debug".to_owned())];
    if matches!(outage, Outage::Stop) {
        env.push(("EVENTD__KAFKA__SESSION_TIMEOUT", "45s".to_owned()));
    }
    let mut eventd = start_eventd_with_env(&broker, CONFIG, &env);
    let settled = broker.wait_for("out", Duration::from_secs(60), |records| {
        ids(records).len() >= SETTLED
    });
    let missing = missing_ids(&settled, SETTLED);
    assert!(
        missing.is_empty(),
        "before any outage, {} of the first {SETTLED} events were not forwarded, e.g. {:?}; \
         eventd logs:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        eventd.logs()
    );

    broker.produce("like", &all[SETTLED..SETTLED + IN_FLIGHT]);
    match outage {
        Outage::Stop => broker.stop(),
        Outage::Crash => broker.kill(),
    }
    let down_since = Instant::now();
    while down_since.elapsed() < downtime {
        assert_running(&mut eventd, "while the broker was down");
        std::thread::sleep(Duration::from_millis(200));
    }
    broker.restart();
    assert_running(&mut eventd, "right after the broker restarted");

    // What was produced before the outage must still be there, or a missing id below
    // would blame eventd for the broker's loss.
    let stored: i64 = broker
        .watermarks("like")
        .iter()
        .map(|(_, low, high)| high - low)
        .sum();
    assert_eq!(
        stored,
        (SETTLED + IN_FLIGHT) as i64,
        "tansu did not keep the input across its {outage:?} and restart; broker log:\n{}",
        broker.log_tail(30)
    );

    broker.produce("like", &all[SETTLED + IN_FLIGHT..]);
    let out = out_after_restart(&broker, total, Duration::from_secs(120));
    let missing = missing_ids(&out, total);
    let phase = |id: &usize| match *id {
        id if id < SETTLED => "settled before the outage",
        id if id < SETTLED + IN_FLIGHT => "in flight at the outage",
        _ => "produced after the restart",
    };
    assert!(
        missing.is_empty(),
        "{} of {total} ids never reached `out` after a {downtime:?} {outage:?}, e.g. {:?}; \
         eventd logs:\n{}\nbroker log:\n{}",
        missing.len(),
        missing
            .iter()
            .take(10)
            .map(|id| format!("e-{id} ({})", phase(id)))
            .collect::<Vec<_>>(),
        eventd.logs(),
        broker.log_tail(30)
    );
    assert_running(&mut eventd, "after catching up");
}

/// Reads `out` until it holds `total` ids or `patience` passes.
fn out_after_restart(broker: &Broker, total: usize, patience: Duration) -> Vec<Record> {
    broker.wait_for("out", patience, |records| ids(records).len() >= total)
}

fn assert_running(eventd: &mut Eventd, when: &str) {
    let status = eventd.child.try_wait().expect("try_wait on eventd");
    assert!(
        status.is_none(),
        "eventd exited {when} with {status:?}; logs:\n{}",
        eventd.logs()
    );
}

/// **Shutdown inside a broker outage.** tansu (sqlite) stops while events are in
/// flight and eventd gets SIGTERM while it is down: eventd ends within the grace with
/// exit 1 and logs which step could not finish (the final commit, the close); once
/// tansu is back on the same port and storage, a restarted eventd forwards every
/// event, so the shutdown lost nothing.
#[test]
fn shutdown_inside_a_broker_outage_exits_1_within_the_grace_and_loses_nothing() {
    let broker = Broker::tansu(2, &["like", "out"]);
    let total = SETTLED + IN_FLIGHT;
    let all = events(total, 100);
    broker.produce("like", &all[..SETTLED]);
    let config = CONFIG.replace(
        "max_in_flight = 200",
        "max_in_flight = 200\ndrain_timeout = \"3s\"",
    ) + "\n[shutdown]\ngrace = \"10s\"\n";
    let mut eventd = start_eventd(&broker, &config);
    broker.expect_every_id("out", SETTLED, Duration::from_secs(60), &eventd);
    broker.produce("like", &all[SETTLED..]);
    broker.stop();
    let signalled = Instant::now();
    eventd.signal("TERM");
    let status = eventd.wait_exit(Duration::from_secs(11));
    let took = signalled.elapsed();
    let logs = eventd.logs();
    let status = status.unwrap_or_else(|| {
        panic!("eventd still runs {took:?} after SIGTERM (grace 10s); logs:\n{logs}")
    });
    assert_eq!(
        status.code(),
        Some(1),
        "exit after {took:?} with the broker down; logs:\n{logs}"
    );
    let unfinished: Vec<&str> = logs
        .lines()
        .filter(|line| {
            line.contains("shutdown step not finished") || line.contains("shutdown grace expired")
        })
        .collect();
    assert!(
        unfinished.iter().any(|line| line.contains("main")),
        "no log line names the consumer whose commit or close could not finish; logs:\n{logs}"
    );
    eprintln!("shutdown in an outage: exit 1 after {took:?}: {unfinished:?}");

    broker.restart();
    let eventd = eventd.restart();
    let out = out_after_restart(&broker, total, Duration::from_secs(120));
    let missing = missing_ids(&out, total);
    assert!(
        missing.is_empty(),
        "{} of {total} ids never reached `out` after a shutdown inside an outage, e.g. {:?}; \
         eventd logs:\n{}\nbroker log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        eventd.logs(),
        broker.log_tail(30)
    );
}
