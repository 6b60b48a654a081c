//! `eventd replay`: the handler that dead-lettered an event, and only it, handles it
//! again after a fix; progress is kept, so a second run does nothing new; events that
//! fail again stay in the dead-letter topic and the command says so.

#![cfg(feature = "fault-injection")]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};

/// Two handlers, each failing for good on one offset and dead-lettering it.
const FAILING: &str = r#"
[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]
commit_interval = "100ms"

[[handlers]]
name = "x"
kind = "fault"
consumer = "main"
action = "fail"
offsets = [2]
output = "out-x"
[handlers.retry]
max_attempts = 1

[[handlers]]
name = "y"
kind = "fault"
consumer = "main"
action = "fail"
offsets = [5]
output = "out-y"
[handlers.retry]
max_attempts = 1
"#;

/// The same, with handler x fixed: it now forwards every event.
const X_FIXED: &str = r#"
[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "x"
kind = "forward"
consumer = "main"
output = "out-x"

[[handlers]]
name = "y"
kind = "fault"
consumer = "main"
action = "fail"
offsets = [5]
output = "out-y"
[handlers.retry]
max_attempts = 1
"#;

fn config_file(dir: &Path, name: &str, broker: &Broker, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = format!("[kafka]\nbrokers = \"{}\"\n\n{body}", broker.bootstrap());
    std::fs::write(&path, text).expect("write config");
    path
}

fn replay(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventd"))
        .arg("replay")
        .arg("--config")
        .arg(config)
        .args(["--from", "dlq"])
        .args(args)
        .output()
        .expect("eventd replay runs")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts the exit code of a replay and that its stdout and stderr hold these texts.
fn expect_outcome(output: &Output, code: i32, on_stdout: &[&str], on_stderr: &[&str]) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(code), "{}", text(output));
    for wanted in on_stdout {
        assert!(
            stdout.contains(wanted),
            "wanted {wanted:?} on stdout: {}",
            text(output)
        );
    }
    for wanted in on_stderr {
        assert!(
            stderr.contains(wanted),
            "wanted {wanted:?} on stderr: {}",
            text(output)
        );
    }
}

/// Ids (`event_id`) of `topic`'s records, in order.
fn id_list(broker: &Broker, topic: &str) -> Vec<String> {
    broker
        .read_all(topic)
        .iter()
        .filter_map(|r| r.field("event_id"))
        .collect()
}

const TOPICS: &[&str] = &["like", "out-x", "out-y", "dlq"];

#[test]
fn replay_runs_only_the_named_handler_once_and_leaves_what_fails_again() {
    replay_runs_only_the_named_handler(Broker::start(1, TOPICS), &[]);
}

#[test]
fn on_tansu_replay_runs_only_the_named_handler_once() {
    replay_runs_only_the_named_handler(
        Broker::tansu(1, TOPICS),
        &[("EVENTD__KAFKA__SESSION_TIMEOUT", "45s".to_owned())],
    );
}

fn replay_runs_only_the_named_handler(broker: Broker, env: &[(&str, String)]) {
    let total = 8;
    broker.produce("like", &events(total, 3));
    let dir = tempfile::tempdir().expect("tempdir");
    let eventd = start_eventd_with_env(&broker, FAILING, env);
    let dlq = broker.wait_for("dlq", Duration::from_secs(30), |r| r.len() >= 2);
    assert_eq!(dlq.len(), 2, "{}", eventd.logs());
    broker.expect_committed_to_end("eventd-main", "like", Duration::from_secs(20), &eventd);
    drop(eventd);
    assert!(!id_list(&broker, "out-x").contains(&"e-2".to_owned()));

    // A truncated copy of x's cannot be replayed: it is reported and skipped.
    let producer = broker.producer();
    let truncated_headers = [
        ("eventd.handler", "x"),
        ("eventd.truncated", "true"),
        ("eventd.source.size", "2000000"),
        ("eventd.source.topic", "like"),
        ("eventd.source.partition", "0"),
        ("eventd.source.offset", "7"),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    });
    producer
        .send(
            BaseRecord::to("dlq")
                .key("item-1")
                .payload(r#"{"event_id":"e-7","us"#)
                .headers(truncated_headers),
        )
        .map_err(|(error, _)| error)
        .expect("send");
    producer.flush(Duration::from_secs(10)).expect("flush");

    let fixed = config_file(dir.path(), "fixed.toml", &broker, X_FIXED);
    let dry = replay(&fixed, &["--handler", "x", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("would replay like/0@2"),
        "{}",
        text(&dry)
    );
    assert!(
        id_list(&broker, "out-x").iter().all(|id| id != "e-2"),
        "a dry run handles nothing"
    );

    // Both of x's copies were written just now: an hour ago is before them.
    let earlier = replay(&fixed, &["--handler", "x", "--until", "1h"]);
    assert_eq!(earlier.status.code(), Some(0), "{}", text(&earlier));
    // The partition stops at x's first copy, after --until: y's copy is passed over
    // only if it came before it.
    let earlier_out = String::from_utf8_lossy(&earlier.stdout);
    assert!(
        earlier_out.contains("replayed 0, failed 0, skipped 1 (other handler 0, truncated 0, outside --since/--until 1)")
            || earlier_out.contains("replayed 0, failed 0, skipped 2 (other handler 1, truncated 0, outside --since/--until 1)"),
        "{}",
        text(&earlier)
    );
    let bad_time = replay(&fixed, &["--handler", "x", "--since", "yesterday"]);
    assert_eq!(bad_time.status.code(), Some(2), "{}", text(&bad_time));
    assert!(String::from_utf8_lossy(&bad_time.stderr).contains("RFC 3339"));

    let first = replay(&fixed, &["--handler", "x"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let stdout = String::from_utf8_lossy(&first.stdout);
    // The --until run moved past y's copy if it came before x's first one.
    assert!(
        stdout.contains("replayed 1, failed 0, skipped 2 (other handler 1, truncated 1")
            || stdout.contains("replayed 1, failed 0, skipped 1 (other handler 0, truncated 1"),
        "{}",
        text(&first)
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("truncated copy of like/0@7"));
    let out_x = broker.read_all("out-x");
    let replayed: Vec<_> = out_x
        .iter()
        .filter(|r| r.field("event_id").as_deref() == Some("e-2"))
        .collect();
    assert_eq!(replayed.len(), 1, "{out_x:?}");
    assert_eq!(
        replayed[0]
            .headers
            .get("eventd.source.offset")
            .map(String::as_str),
        Some("2")
    );
    assert!(
        !replayed[0].headers.contains_key("eventd.error"),
        "the copy is the event, not the dead-letter record: {:?}",
        replayed[0].headers
    );
    assert!(
        id_list(&broker, "out-y").iter().all(|id| id != "e-5"),
        "y's event was not handled by x's replay"
    );

    let second = replay(&fixed, &["--handler", "x"]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("replayed 0, failed 0, skipped 0"),
        "{}",
        text(&second)
    );
    assert_eq!(
        id_list(&broker, "out-x")
            .iter()
            .filter(|id| *id == "e-2")
            .count(),
        1,
        "a second replay handles nothing again"
    );

    // Another group is a separate pass: it starts from the beginning again.
    let separate = replay(
        &fixed,
        &[
            "--handler",
            "x",
            "--group",
            "eventd-replay-second-pass",
            "--dry-run",
        ],
    );
    assert_eq!(separate.status.code(), Some(0), "{}", text(&separate));
    assert!(
        String::from_utf8_lossy(&separate.stdout).contains("would replay like/0@2"),
        "{}",
        text(&separate)
    );

    // y is not fixed: its event fails again, stays, and the command says so.
    let unfixed = replay(&fixed, &["--handler", "y"]);
    assert_eq!(unfixed.status.code(), Some(1), "{}", text(&unfixed));
    assert!(
        String::from_utf8_lossy(&unfixed.stderr).contains("failed again"),
        "{}",
        text(&unfixed)
    );
    let still = replay(&fixed, &["--handler", "y"]);
    assert_eq!(
        still.status.code(),
        Some(1),
        "not committed past: {}",
        text(&still)
    );
    assert_eq!(broker.read_all("dlq").len(), 3, "replay deletes nothing");
    assert!(id_list(&broker, "out-y").iter().all(|id| id != "e-5"));
}

#[test]
fn replay_refuses_a_handler_the_config_does_not_have() {
    let broker = Broker::start(1, TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), "eventd.toml", &broker, X_FIXED);
    let output = replay(&config, &["--handler", "z"]);
    assert_eq!(output.status.code(), Some(78), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"z\"") && stderr.contains("\"x\""),
        "{stderr}"
    );
}

/// Writes a dead-letter copy of the `like` event at `source_offset` (id `e-<offset>`),
/// as handler `handler` would have, to `partition` of `dlq`; `padding` bytes of
/// extra field make it as large as wanted.
fn dead_letter_copy(
    broker: &Broker,
    partition: i32,
    handler: &str,
    source_offset: usize,
    padding: usize,
) {
    let mut event: serde_json::Value =
        serde_json::from_str(&event(source_offset, "item-1")).expect("event json");
    if padding > 0 {
        event["note"] = serde_json::Value::String("x".repeat(padding));
    }
    let source_offset = source_offset.to_string();
    let failed_at = chrono::Utc::now().to_rfc3339();
    let copy_headers = [
        ("eventd.handler", handler),
        ("eventd.error", "injected"),
        ("eventd.failed_at", failed_at.as_str()),
        ("eventd.source.topic", "like"),
        ("eventd.source.partition", "0"),
        ("eventd.source.offset", source_offset.as_str()),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    });
    let payload = event.to_string();
    let producer = broker.producer();
    producer
        .send(
            BaseRecord::to("dlq")
                .partition(partition)
                .key("item-1")
                .payload(&payload)
                .headers(copy_headers),
        )
        .map_err(|(error, _)| error)
        .expect("send");
    producer.flush(Duration::from_secs(10)).expect("flush");
}

/// Handler x forwards to out-x; `producer` is the config's [producer] table.
fn forwarding_x(producer: &str) -> String {
    format!(
        r#"
[producer]
{producer}

[dead_letter]
topic = "dlq"

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "x"
kind = "forward"
consumer = "main"
output = "out-x"
"#
    )
}

#[test]
fn replay_reports_a_copy_refused_for_good_and_stops_its_partition_there() {
    let broker = Broker::start(1, TOPICS);
    dead_letter_copy(&broker, 0, "x", 0, 3000);
    dead_letter_copy(&broker, 0, "x", 1, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let small = config_file(
        dir.path(),
        "small.toml",
        &broker,
        &forwarding_x("max_message_bytes = 2000"),
    );

    let refused = replay(&small, &["--handler", "x"]);
    expect_outcome(
        &refused,
        1,
        &["replayed 0, failed 1"],
        &["dlq/0@0", "above producer.max_message_bytes"],
    );
    assert!(
        id_list(&broker, "out-x").is_empty(),
        "the copy after the failure is left for the next run: {:?}",
        id_list(&broker, "out-x")
    );
    assert_eq!(
        broker.read_all("dlq").len(),
        2,
        "a copy that fails again stays where it is, and is not dead-lettered again"
    );

    // An output topic that does not exist is neither created nor waited for: the
    // copy is left for the next run, named, and the replay ends at once.
    let nowhere = config_file(
        dir.path(),
        "nowhere.toml",
        &broker,
        &forwarding_x("").replace("out-x", "nowhere"),
    );
    let started = std::time::Instant::now();
    let unknown = replay(&nowhere, &["--handler", "x", "--timeout", "20s"]);
    expect_outcome(
        &unknown,
        69,
        &["not finished 1"],
        &["dlq/0@0", "\"nowhere\""],
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let lister: rdkafka::consumer::BaseConsumer =
        broker.client_config().create().expect("metadata client");
    let listed = lister
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    assert!(
        listed.topics().iter().all(|t| t.name() != "nowhere"),
        "eventd creates no topics"
    );

    // Once the limit is raised, the next run handles both, from the failed one on.
    let large = config_file(dir.path(), "large.toml", &broker, &forwarding_x(""));
    let fixed = replay(&large, &["--handler", "x"]);
    expect_outcome(&fixed, 0, &["replayed 2, failed 0"], &[]);
    assert_eq!(id_list(&broker, "out-x"), vec!["e-0", "e-1"]);
}

/// Handler x meets `action` on source offset 1 (`extra` sets it up); it forwards
/// everything else to out-x.
fn x_faulting_at_1(action: &str, extra: &str) -> String {
    format!(
        r#"
[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "x"
kind = "fault"
consumer = "main"
action = "{action}"
offsets = [1]
{extra}
output = "out-x"
"#
    )
}

#[test]
fn replay_leaves_a_copy_an_outage_holds_up_for_the_next_run() {
    let broker = Broker::start(1, TOPICS);
    dead_letter_copy(&broker, 0, "x", 1, 0);
    let dir = tempfile::tempdir().expect("tempdir");

    // An outage: the copy is not retried here (the next run is the retry), it is named,
    // nothing is committed past it, and the exit code says it may pass.
    let outage = config_file(
        dir.path(),
        "outage.toml",
        &broker,
        &x_faulting_at_1("unavailable", ""),
    );
    let unfinished = replay(&outage, &["--handler", "x"]);
    expect_outcome(
        &unfinished,
        69,
        &["replayed 0, failed 0", "not finished 1"],
        &["dlq/0@0", "injected outage", "next run"],
    );
    assert_eq!(
        broker.committed("eventd-replay-x", "dlq"),
        vec![(0, None)],
        "nothing committed past a copy not finished"
    );

    // A handler slower than --timeout: the replay does not wait past it.
    let slow = config_file(
        dir.path(),
        "slow.toml",
        &broker,
        &x_faulting_at_1("sleep", "sleep = \"1h\""),
    );
    let started = std::time::Instant::now();
    let timed_out = replay(&slow, &["--handler", "x", "--timeout", "2s"]);
    expect_outcome(&timed_out, 69, &[], &["not finished within --timeout 2s"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded by --timeout: {:?}",
        started.elapsed()
    );

    // Once it can pass, the next run replays it.
    let passing = config_file(dir.path(), "passing.toml", &broker, &forwarding_x(""));
    let passed = replay(&passing, &["--handler", "x"]);
    expect_outcome(&passed, 0, &["replayed 1, failed 0"], &[]);
    assert_eq!(id_list(&broker, "out-x"), vec!["e-1"]);
}

#[test]
fn replay_reads_each_partition_only_up_to_where_it_ended_at_the_start() {
    let broker = Broker::start(2, TOPICS);
    // Partition 0's copy goes through at once; partition 1's handler sleeps up to 4 s,
    // which may leave the test time to add a copy to partition 0 meanwhile.
    dead_letter_copy(&broker, 0, "x", 0, 0);
    dead_letter_copy(&broker, 1, "x", 1, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(
        dir.path(),
        "eventd.toml",
        &broker,
        &x_faulting_at_1("sleep", "sleep = \"4s\""),
    );
    let mut running = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .arg("replay")
        .arg("--config")
        .arg(&config)
        .args(["--from", "dlq", "--handler", "x"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("eventd replay starts");
    broker.wait_for("out-x", Duration::from_secs(30), |records| {
        records
            .iter()
            .any(|r| r.field("event_id").as_deref() == Some("e-0"))
    });
    dead_letter_copy(&broker, 0, "x", 2, 0);
    let status = running.wait().expect("replay ends");
    let mut stdout = String::new();
    std::io::Read::read_to_string(running.stdout.as_mut().expect("stdout"), &mut stdout)
        .expect("read stdout");
    assert_eq!(status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("replayed 2, failed 0"), "{stdout}");
    assert!(
        !id_list(&broker, "out-x").contains(&"e-2".to_owned()),
        "a copy written after the replay started is left for the next one: {:?}",
        id_list(&broker, "out-x")
    );
    let next = replay(&config, &["--handler", "x"]);
    expect_outcome(&next, 0, &["replayed 1, failed 0"], &[]);
    assert!(id_list(&broker, "out-x").contains(&"e-2".to_owned()));
}
