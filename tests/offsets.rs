//! `eventd offsets show|reset`: what a consumer group committed and how far behind it
//! is, and moving a stopped group's offsets, refused while the group is running.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const GROUP: &str = "eventd-main";

fn offsets(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventd"))
        .arg("offsets")
        .args(args)
        .arg("--config")
        .arg(config)
        .args(["--consumer", "main"])
        .output()
        .expect("eventd offsets runs")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// (partition, committed, high, lag) of every partition, from `show --json`.
fn shown(config: &Path) -> Vec<(i64, Option<i64>, i64, i64)> {
    let output = offsets(config, &["show", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let document: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert!(
        document["group"] == GROUP || document["group"] == COMMIT_GROUP,
        "{document}"
    );
    document["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|row| {
            assert_eq!(row["topic"], "like");
            (
                row["partition"].as_i64().expect("partition"),
                row["committed"].as_i64(),
                row["high"].as_i64().expect("high"),
                row["lag"].as_i64().expect("lag"),
            )
        })
        .collect()
}

fn offsets_show_and_reset(broker: Broker, env: &[(&str, String)]) {
    let total = 40;
    broker.produce("like", &events(total, 8));
    let body = format!("[[consumers]]\nname = \"main\"\ntopics = [\"like\"]\ncommit_interval = \"100ms\"\n\n[[handlers]]\nname = \"copy\"\nkind = \"forward\"\nconsumer = \"main\"\noutput = \"out\"\n");
    let mut eventd = start_eventd_with_env(&broker, &body, env);
    broker.expect_every_id("out", total, Duration::from_secs(60), &eventd);
    broker.expect_committed_to_end(GROUP, "like", Duration::from_secs(30), &eventd);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("eventd.toml");
    std::fs::write(
        &config,
        format!("[kafka]\nbrokers = \"{}\"\n\n{body}", broker.bootstrap()),
    )
    .expect("config");

    let marks = broker.watermarks("like");
    let at_end = shown(&config);
    assert_eq!(at_end.len(), marks.len());
    for ((partition, committed, high, lag), (p, _, h)) in at_end.iter().zip(&marks) {
        assert_eq!(
            (*partition, *committed, *high, *lag),
            (*p as i64, Some(*h), *h, 0)
        );
    }
    let table = offsets(&config, &["show"]);
    let table_text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table_text.contains("TOPIC") && table_text.contains("LAG") && table_text.contains("like"),
        "{}",
        text(&table)
    );

    if !broker.is_tansu() {
        // The mock cluster does not describe groups, but refuses a commit from
        // outside a group it knows, as Kafka does while the group has members. A dry
        // run commits nothing, so it cannot ask: it says so and moves nothing. The
        // mock keeps every group for its whole life, though, so a stopped group's
        // offsets cannot be moved there: that half runs on tansu, which (0.6) neither
        // describes groups nor refuses such commits.
        let refused = offsets(&config, &["reset", "--to", "earliest"]);
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("live member"),
            "{}",
            text(&refused)
        );
        let dry = offsets(&config, &["reset", "--to", "earliest", "--dry-run"]);
        assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
        assert!(
            String::from_utf8_lossy(&dry.stderr).contains("this dry run cannot tell"),
            "{}",
            text(&dry)
        );
        assert!(shown(&config).iter().all(|row| row.3 == 0), "nothing moved");
        return;
    }
    eventd.terminate(Duration::from_secs(30));
    let dry = offsets(&config, &["reset", "--to", "earliest", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("RESET TO"),
        "{}",
        text(&dry)
    );
    assert!(
        shown(&config).iter().all(|row| row.3 == 0),
        "a dry run moves nothing"
    );

    let to_three = offsets(&config, &["reset", "--to", "3"]);
    assert_eq!(to_three.status.code(), Some(0), "{}", text(&to_three));
    for (_, committed, high, lag) in shown(&config) {
        assert_eq!(committed, Some(3.min(high)));
        assert_eq!(lag, high - 3.min(high));
    }
    let to_start = offsets(&config, &["reset", "--to", "earliest"]);
    assert_eq!(to_start.status.code(), Some(0), "{}", text(&to_start));
    for (_, committed, high, lag) in shown(&config) {
        assert_eq!((committed, lag), (Some(0), high));
    }

    // The group reads everything again from where it was moved.
    let eventd = eventd.restart();
    let again = broker.wait_for("out", Duration::from_secs(60), |r| r.len() >= 2 * total);
    assert_eq!(again.len(), 2 * total, "{}", eventd.logs());
}

#[test]
fn offsets_show_and_a_refused_reset_of_a_live_group_on_the_embedded_broker() {
    offsets_show_and_reset(Broker::start(2, &["like", "out"]), &[]);
}

#[test]
fn offsets_show_and_reset_a_stopped_group_on_tansu() {
    offsets_show_and_reset(
        Broker::tansu(2, &["like", "out"]),
        &[("EVENTD__KAFKA__SESSION_TIMEOUT", "45s".to_owned())],
    );
}

#[test]
fn offsets_refuses_an_unknown_consumer() {
    let broker = Broker::start(1, &["like", "out"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("eventd.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n\n{COPY_LIKE_TO_OUT}",
            broker.bootstrap()
        ),
    )
    .expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .args(["offsets", "show", "--consumer", "nope", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(78), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"nope\""));
}

/// A `partitions` consumer of `like` committing under `commit_group`, with the default
/// `commit_interval`.
const PARTITIONS_BODY: &str = "[[consumers]]\nname = \"main\"\nmode = \"partitions\"\ntopics = [\"like\"]\nstart = \"earliest\"\ncommit_group = \"audit-commits\"\n\n[[handlers]]\nname = \"copy\"\nkind = \"forward\"\nconsumer = \"main\"\noutput = \"out\"\n";
const COMMIT_GROUP: &str = "audit-commits";

/// `show --json` of the partitions consumer.
fn shown_document(config: &Path) -> serde_json::Value {
    let output = offsets(config, &["show", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    serde_json::from_slice(&output.stdout).expect("one JSON document")
}

fn partitions_of(document: &serde_json::Value) -> Vec<serde_json::Value> {
    document["partitions"]
        .as_array()
        .expect("partitions")
        .clone()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// A running partitions consumer that handled `total` events and committed them,
/// with the `offsets` config file for it.
fn partitions_consumer_at_the_end(
    broker: &Broker,
    total: usize,
) -> (Eventd, tempfile::TempDir, std::path::PathBuf) {
    broker.produce("like", &events(total, 8));
    let eventd = start_eventd(broker, PARTITIONS_BODY);
    broker.expect_every_id("out", total, Duration::from_secs(60), &eventd);
    broker.expect_committed_to_end(COMMIT_GROUP, "like", Duration::from_secs(30), &eventd);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("eventd.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n\n{PARTITIONS_BODY}",
            broker.bootstrap()
        ),
    )
    .expect("config");
    (eventd, dir, config)
}

/// An idle partitions consumer joins no group and sends no new offsets: only its
/// heartbeat commits show it runs. `reset` refuses then, naming the process, unless
/// `--force`; after a clean stop it resets at once, saving what it replaced, and the
/// saved file puts it back. (Mock cluster: tansu 0.6 returns no commit metadata.)
#[test]
fn reset_refuses_while_an_idle_partitions_consumer_runs_and_saves_what_it_replaces() {
    let broker = Broker::start(2, &["like", "out"]);
    let (mut eventd, dir, config) = partitions_consumer_at_the_end(&broker, 40);
    let idle_since = now_ms();
    let marks = broker.watermarks("like");

    // Idle for longer than a stopped process counts as running (5 s at the default
    // commit_interval): only a commit made while idle can be this recent.
    let beyond_freshness = idle_since + 6_000;
    let mut document = shown_document(&config);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !partitions_of(&document).iter().all(|row| {
        row["committed_by"]["at_ms"]
            .as_i64()
            .is_some_and(|at| at > beyond_freshness)
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "an idle consumer's commits stopped naming it as running: {document}\nlogs:\n{}",
            eventd.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
        document = shown_document(&config);
    }
    for row in partitions_of(&document) {
        let holder = &row["committed_by"];
        assert_eq!(
            holder["pid"].as_u64(),
            Some(eventd.child.id() as u64),
            "{row}"
        );
        assert_eq!(holder["consumer"], "main");
        assert_eq!(holder["running"], true);
        let (_, _, high) = marks[row["partition"].as_u64().expect("partition") as usize];
        assert_eq!(
            row["committed"].as_i64(),
            Some(high),
            "the heartbeat moved nothing"
        );
    }

    let pid = format!("pid {}", eventd.child.id());
    let refused = offsets(&config, &["reset", "--to", "earliest"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&pid) && stderr.contains("\"main\"") && stderr.contains("--force"),
        "{}",
        text(&refused)
    );
    // A dry run is a preview: it shows the reset, marked as one the live group refuses.
    let preview = offsets(&config, &["reset", "--to", "earliest", "--dry-run"]);
    assert_eq!(preview.status.code(), Some(0), "{}", text(&preview));
    let stderr = String::from_utf8_lossy(&preview.stderr);
    assert!(
        stderr.contains("DRY RUN OF A LIVE GROUP")
            && stderr.contains(&pid)
            && stderr.contains("the real reset would be refused"),
        "{}",
        text(&preview)
    );
    assert!(
        String::from_utf8_lossy(&preview.stdout).contains("RESET TO"),
        "{}",
        text(&preview)
    );
    assert!(
        shown(&config).iter().all(|row| row.3 == 0),
        "a refused reset moved nothing"
    );

    let forced = offsets(&config, &["reset", "--to", "earliest", "--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced));
    assert!(
        String::from_utf8_lossy(&forced.stderr).contains(&pid),
        "{}",
        text(&forced)
    );
    // The process still runs, so its heartbeat commits its own position over the
    // reset, as the warning said.
    broker.expect_committed_to_end(COMMIT_GROUP, "like", Duration::from_secs(30), &eventd);

    // A clean stop says so in its last commit: no waiting, no --force.
    eventd.terminate(Duration::from_secs(30));
    for row in partitions_of(&shown_document(&config)) {
        assert_eq!(row["committed_by"]["running"], false, "{row}");
    }
    let save = dir.path().join("before-reset.json");
    let save_arg = save.to_str().expect("utf-8 path");
    let dry = offsets(
        &config,
        &["reset", "--to", "3", "--dry-run", "--save", save_arg],
    );
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert!(!save.exists(), "a dry run writes no file: {}", text(&dry));

    let to_three = offsets(&config, &["reset", "--to", "3", "--save", save_arg]);
    assert_eq!(to_three.status.code(), Some(0), "{}", text(&to_three));
    let printed = String::from_utf8_lossy(&to_three.stdout);
    assert!(
        printed.contains("COMMITTED") && printed.contains("RESET TO"),
        "old and new offsets printed: {}",
        text(&to_three)
    );
    assert!(
        String::from_utf8_lossy(&to_three.stderr).contains("--from-file"),
        "says how to undo: {}",
        text(&to_three)
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&save).expect("saved file")).expect("JSON");
    assert_eq!(saved["group"], COMMIT_GROUP);
    let mut saved_offsets: Vec<(i64, Option<i64>)> = saved["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().expect("partition"),
                p["committed"].as_i64(),
            )
        })
        .collect();
    saved_offsets.sort();
    let ends: Vec<(i64, Option<i64>)> = marks
        .iter()
        .map(|(p, _, h)| (*p as i64, Some(*h)))
        .collect();
    assert_eq!(saved_offsets, ends, "the file holds the offsets replaced");
    for (_, committed, high, _) in shown(&config) {
        assert_eq!(committed, Some(3.min(high)));
    }

    let again = offsets(&config, &["reset", "--to", "earliest", "--save", save_arg]);
    assert_eq!(again.status.code(), Some(73), "{}", text(&again));
    for (_, committed, high, _) in shown(&config) {
        assert_eq!(
            committed,
            Some(3.min(high)),
            "nothing committed without its save"
        );
    }

    let other_group = dir.path().join("other-group.json");
    std::fs::write(
        &other_group,
        r#"{"group":"someone-else","partitions":[{"topic":"like","partition":0,"committed":0}]}"#,
    )
    .expect("file");
    let refused = offsets(
        &config,
        &[
            "reset",
            "--from-file",
            other_group.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(refused.status.code(), Some(78), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("\"someone-else\""),
        "{}",
        text(&refused)
    );

    let undo = offsets(&config, &["reset", "--from-file", save_arg]);
    assert_eq!(undo.status.code(), Some(0), "{}", text(&undo));
    for (partition, committed, high, _) in shown(&config) {
        assert_eq!(
            committed,
            Some(high),
            "partition {partition} back where it was"
        );
    }
}

/// A broker that does not describe the group (the mock cluster has no DescribeGroups,
/// tansu 0.6 drops the connection) leaves a dry run unable to check for members; it
/// must still write nothing (it used to commit the offsets it had read, as a probe:
/// with a running group, that moved the group back to where it was when read). The
/// commit metadata shows any write: a commit from `offsets` carries none.
#[test]
fn a_dry_run_writes_nothing_when_the_broker_does_not_describe_the_group() {
    let broker = Broker::start(2, &["like", "out"]);
    let (mut eventd, _dir, config) = partitions_consumer_at_the_end(&broker, 20);
    let logs = eventd.terminate(Duration::from_secs(30));
    let before = shown_document(&config);
    assert!(
        partitions_of(&before)
            .iter()
            .all(|row| row["committed_by"]["running"] == false),
        "{before}\nlogs:\n{logs}"
    );

    let dry = offsets(&config, &["reset", "--to", "earliest", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let stderr = String::from_utf8_lossy(&dry.stderr);
    assert!(
        stderr.contains("did not describe group") && stderr.contains("nothing committed"),
        "{}",
        text(&dry)
    );
    assert_eq!(shown_document(&config), before, "{}", text(&dry));
}

/// tansu 0.6 keeps no commit metadata it could return (OffsetFetch answers offsets
/// only), so there a running partitions consumer cannot be seen: `reset` says so
/// rather than implying the group is free, and its dry run still writes nothing.
#[test]
fn on_tansu_reset_says_a_running_partitions_consumer_cannot_be_seen() {
    let broker = Broker::tansu(2, &["like", "out"]);
    let (eventd, _dir, config) = partitions_consumer_at_the_end(&broker, 20);
    let before = shown_document(&config);
    assert!(
        partitions_of(&before)
            .iter()
            .all(|row| row.get("committed_by").is_none()),
        "tansu returned commit metadata: the heartbeat test could run on it too: {before}"
    );
    let dry = offsets(&config, &["reset", "--to", "earliest", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let stderr = String::from_utf8_lossy(&dry.stderr);
    assert!(
        stderr.contains("name no eventd process") && stderr.contains("nothing committed"),
        "{}",
        text(&dry)
    );
    assert!(
        shown(&config).iter().all(|row| row.3 == 0),
        "a dry run moves nothing; logs:\n{}",
        eventd.logs()
    );
}

/// A partitions consumer shows that it runs from its start, not one `commit_interval`
/// later: its workers recommit the committed offset with fresh metadata at once, so a
/// `reset` right after a restart is refused instead of rewinding a running process.
/// (A 60 s interval makes the gap wide enough to see.)
#[test]
fn a_restarted_partitions_consumer_is_seen_running_before_its_first_interval() {
    let broker = Broker::start(2, &["like", "out"]);
    let (mut first, dir, config) = partitions_consumer_at_the_end(&broker, 20);
    first.terminate(Duration::from_secs(30));
    for row in partitions_of(&shown_document(&config)) {
        assert_eq!(row["committed_by"]["running"], false, "{row}");
    }

    let slow_body = PARTITIONS_BODY.replace(
        "commit_group = ",
        "commit_interval = \"60s\"\ncommit_group = ",
    );
    let second = start_eventd(&broker, &slow_body);
    let pid = second.child.id() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let document = shown_document(&config);
        if partitions_of(&document).iter().all(|row| {
            row["committed_by"]["pid"].as_u64() == Some(pid)
                && row["committed_by"]["running"] == true
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "20 s after its start the restarted consumer is not seen running: {document}\nlogs:\n{}",
            second.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = offsets(&config, &["reset", "--to", "earliest"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!("pid {pid}")),
        "{}",
        text(&refused)
    );
    drop(dir);
}
