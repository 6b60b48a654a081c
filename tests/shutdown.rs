//! Shutdown ends within `shutdown.grace`, whatever the group does meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Two members share one partition's group: on SIGTERM the idle member leaves at once,
/// so the group revokes the busy member's partition while that member is still
/// draining a slow backlog. The revoke must not wait on the busy member (which is
/// shutting down and hands every partition back itself), so the group's rebalance is
/// not held up, and eventd exits 0 within the grace.
#[test]
fn a_revoke_during_shutdown_does_not_hold_it_past_the_grace() {
    let broker = Broker::start(1, &["like"]);
    broker.produce("like", &events(1_000, 10));
    let mut eventd = start_eventd(
        &broker,
        r#"
[shutdown]
grace = "10s"

[[consumers]]
name = "main"
topics = ["like"]
members = 2
assignment = "range"
drain_timeout = "5s"
max_in_flight = 20

[[handlers]]
name = "slow"
kind = "fault"
consumer = "main"
action = "sleep"
every = 1
sleep = "500ms"
"#,
    );
    // The group has settled once both members had their first assignment (the second
    // one joins a moment later and rebalances the first): only then does the SIGTERM
    // below meet a busy member that still owns its partition.
    assert!(
        eventd.wait_until(Duration::from_secs(60), |e| {
            e.http_get("/readyz").map(|r| r.0) == Some(200)
        }),
        "the group did not settle; logs:\n{}",
        eventd.logs()
    );
    let before = eventd
        .metric_if_present("eventd_events_handled_total", &[("handler", "slow")])
        .unwrap_or(0.0);
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| e.metric_reaches(
            "eventd_events_handled_total",
            &[("handler", "slow")],
            before + 2.0
        )),
        "nothing handled after the group settled; logs:\n{}",
        eventd.logs()
    );
    let signalled = Instant::now();
    eventd.signal("TERM");
    let status = eventd.wait_exit(Duration::from_secs(30));
    let took = signalled.elapsed();
    let logs = eventd.logs();
    eprintln!("{logs}");
    let status =
        status.unwrap_or_else(|| panic!("eventd still runs 30s after SIGTERM; logs:\n{logs}"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after {took:?} (grace 10s); logs:\n{logs}"
    );
    assert!(
        took <= Duration::from_secs(11),
        "shutdown took {took:?}, past the 10s grace; logs:\n{logs}"
    );
    let after_signal = logs
        .split_once("\"message\":\"draining\"")
        .map(|(_, after)| after)
        .unwrap_or_else(|| panic!("no draining logged:\n{logs}"));
    let busy = serde_json::json!({"topic": "like", "partition": 0});
    assert!(
        after_signal.lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|line| {
                line["message"] == "partitions revoked"
                    && line["partitions"]
                        .as_array()
                        .is_some_and(|partitions| partitions.contains(&busy))
            })
        }),
        "the group did not revoke the busy partition during the shutdown, so this test showed nothing; logs:\n{logs}"
    );
    // Waiting on the busy member would hold the whole group's rebalance (the next
    // owner gets nothing meanwhile) for up to drain_timeout + 2s.
    assert!(
        !logs.contains("revoke did not finish in time"),
        "the revoke waited on the member that was shutting down; logs:\n{logs}"
    );
}

/// A reload that takes long (a 200 MB config file: seconds of parsing) holds up neither
/// the SIGTERM that follows nor the shutdown: draining starts before the reload ends,
/// and eventd exits 0 within the grace.
#[test]
fn a_slow_reload_does_not_hold_up_sigterm() {
    let broker = Broker::start(1, &["like"]);
    let mut eventd = start_eventd(
        &broker,
        r#"
[shutdown]
grace = "10s"

[[consumers]]
name = "main"
topics = ["like"]
drain_timeout = "2s"

[[handlers]]
name = "activity-log"
kind = "log"
consumer = "main"
"#,
    );
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| {
            e.http_get("/readyz").map(|r| r.0) == Some(200)
        }),
        "/readyz not 200 within 20s; logs:\n{}",
        eventd.logs()
    );
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&eventd.config)
            .expect("open config");
        let line = format!("#{}\n", "x".repeat(99));
        let block = line.repeat(10_000);
        for _ in 0..200 {
            file.write_all(block.as_bytes()).expect("grow config");
        }
    }
    eventd.signal("HUP");
    assert!(
        eventd.wait_until(Duration::from_secs(10), |e| e
            .logs()
            .contains("reload requested")),
        "SIGHUP not taken; logs:\n{}",
        eventd.logs()
    );
    let logs = eventd.terminate(Duration::from_secs(11));
    let (before_draining, _) = logs
        .split_once("\"message\":\"draining\"")
        .unwrap_or_else(|| panic!("no draining logged:\n{logs}"));
    assert!(
        !before_draining.contains("config reloaded") && !before_draining.contains("reload refused"),
        "the shutdown waited for the reload to end; logs:\n{logs}"
    );
    assert!(
        logs.contains("shutdown complete"),
        "no \"shutdown complete\"; logs:\n{logs}"
    );
}

/// A consumer that handled nothing has nothing to commit at shutdown, and says so:
/// "offsets committed" is logged only for a commit that happened.
#[test]
fn an_idle_consumer_commits_nothing_and_says_so() {
    let broker = Broker::start(1, &["like"]);
    let mut eventd = start_eventd(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["like"]
drain_timeout = "2s"

[[handlers]]
name = "activity-log"
kind = "log"
consumer = "main"
"#,
    );
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| e.metric_reaches(
            "eventd_rebalances_total",
            &[("consumer", "main"), ("kind", "assign")],
            1.0
        )),
        "no assignment; logs:\n{}",
        eventd.logs()
    );
    let logs = eventd.terminate(Duration::from_secs(25));
    assert!(
        logs.contains("no new offsets to commit"),
        "the final commit of an idle consumer is not reported; logs:\n{logs}"
    );
    assert!(
        !logs.contains("\"offsets committed\""),
        "a commit was reported though nothing was handled; logs:\n{logs}"
    );
    assert_eq!(broker.committed("eventd-main", "like"), vec![(0, None)]);
}
