//! The `eventd` command as an operator uses it: config errors that name the key and exit
//! 78, the README's embedded demo, SIGHUP reloads (refused and applied) and signals.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, body).expect("write config");
    path
}

fn manifest_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

const VALID_BODY: &str = r#"
[[consumers]]
name = "analytics"
topics = ["like"]

[[handlers]]
name = "activity-log"
kind = "log"
consumer = "analytics"
"#;

/// `run` and `check-config` both refuse `path` with exit 78 and name every key in `keys`
/// (and the file) on stderr and stdout respectively.
fn assert_refused(path: &Path, keys: &[&str]) {
    let shown = path.display().to_string();
    let run = run_with(path);
    let check = check_config(path);
    // `run` reports on stderr; `check-config` prints its verdict on stdout.
    for (command, output, report, other) in [
        ("`eventd run`", &run, &run.stderr, &run.stdout),
        (
            "`eventd check-config`",
            &check,
            &check.stdout,
            &check.stderr,
        ),
    ] {
        let report = text(report);
        assert_eq!(
            output.status.code(),
            Some(78),
            "{command} on a bad config: report:\n{report}\nother stream:\n{}",
            text(other)
        );
        for key in keys {
            assert!(
                report.contains(key),
                "{command} must name {key:?}:\n{report}"
            );
        }
        assert!(
            report.contains(&shown),
            "{command} must name the file {shown}:\n{report}"
        );
    }
}

/// Every command that reads a config takes `--config FILE`; `check-config` also takes
/// the file as its argument. `run` without a config says so and how to give one.
#[test]
fn every_command_takes_its_config_with_dash_dash_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let valid = write(&dir, "valid.toml", VALID_BODY);
    for args in [
        vec![
            "check-config".into(),
            "--config".into(),
            valid.clone().into_os_string(),
        ],
        vec![
            "check-config".into(),
            "-c".into(),
            valid.clone().into_os_string(),
        ],
        vec!["check-config".into(), valid.clone().into_os_string()],
    ] {
        let output = eventd_bin().args(&args).output().expect("eventd runs");
        assert_eq!(
            (output.status.code(), text(&output.stdout).trim().to_owned()),
            (Some(0), "ok".to_owned()),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
    let neither = eventd_bin()
        .arg("check-config")
        .output()
        .expect("eventd runs");
    assert_eq!(
        neither.status.code(),
        Some(2),
        "a missing file is a usage error"
    );
    assert!(
        text(&neither.stderr).contains("no config file was given: pass one with --config FILE"),
        "{}",
        text(&neither.stderr)
    );
    let bare = eventd_bin().arg("run").output().expect("eventd runs");
    assert_eq!(bare.status.code(), Some(78));
    assert!(
        text(&bare.stderr)
            .contains("no config file was given: pass one with `eventd run --config FILE`"),
        "{}",
        text(&bare.stderr)
    );
}

#[test]
fn bad_config_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");

    // drain_timeout above the default kafka.session_timeout (45s).
    let drain = write(
        &dir,
        "drain.toml",
        &VALID_BODY.replace(
            "topics = [\"like\"]\n",
            "topics = [\"like\"]\ndrain_timeout = \"60s\"\n",
        ),
    );
    assert_refused(&drain, &["consumers[0].drain_timeout"]);

    // A commit interval of zero would commit on every poll.
    let commit = write(
        &dir,
        "commit.toml",
        &VALID_BODY.replace(
            "topics = [\"like\"]\n",
            "topics = [\"like\"]\ncommit_interval = \"0ms\"\n",
        ),
    );
    assert_refused(&commit, &["consumers[0].commit_interval"]);

    // An unknown key is refused, not ignored.
    let unknown = write(
        &dir,
        "unknown.toml",
        &format!("[kafka]\nbrokerz = \"x\"\n{VALID_BODY}"),
    );
    assert_refused(&unknown, &["brokerz"]);

    // A handler naming no consumer.
    let orphan = write(
        &dir,
        "orphan.toml",
        &VALID_BODY.replace("consumer = \"analytics\"", "consumer = \"nobody\""),
    );
    assert_refused(&orphan, &["handlers[0].consumer"]);

    // A raw option eventd owns is refused, naming the key to use instead.
    let owned = write(
        &dir,
        "owned.toml",
        &format!("[kafka.options]\n\"enable.auto.offset.store\" = \"true\"\n\"session.timeout.ms\" = \"6000\"\n{VALID_BODY}"),
    );
    assert_refused(
        &owned,
        &[
            "kafka.options.\"enable.auto.offset.store\"",
            "kafka.options.\"session.timeout.ms\"",
            "kafka.session_timeout",
        ],
    );

    // A misspelled librdkafka property is caught without connecting.
    let misspelled = write(
        &dir,
        "misspelled.toml",
        &format!("[kafka.options]\n\"socket.keepalive.enabel\" = \"true\"\n{VALID_BODY}"),
    );
    assert_refused(&misspelled, &["kafka.options.\"socket.keepalive.enabel\""]);

    // A secret librdkafka cannot take is refused without repeating it.
    let secret = write(
        &dir,
        "secret.toml",
        &format!("[kafka.options]\n\"ssl.key.password\" = \"hunter2\\u0000\"\n{VALID_BODY}"),
    );
    assert_refused(&secret, &["kafka.options"]);
    let check = check_config(&secret);
    let report = format!("{}{}", text(&check.stdout), text(&check.stderr));
    assert!(!report.contains("hunter2"), "the secret leaked:\n{report}");

    // A placeholder with nothing behind it.
    let unset = write(
        &dir,
        "unset.toml",
        &format!("[kafka]\nclient_id = \"eventd-${{EVENTD_TEST_UNSET_VAR}}\"\n{VALID_BODY}"),
    );
    assert_refused(&unset, &["kafka.client_id", "EVENTD_TEST_UNSET_VAR"]);

    // Smaller holes, each naming its key.
    let holes = write(
        &dir,
        "holes.toml",
        &format!(
            "[producer]\nacks = \"0\"\nidempotence = false\n[log]\nlevel = \"info,=bogus[\"\n[dead_letter]\ntopic = \"like\"\n{VALID_BODY}"
        ),
    );
    assert_refused(&holes, &["producer.acks", "log.level", "dead_letter.topic"]);

    // The README's config is valid.
    let readme = manifest_path("config/eventd.toml");
    let check = check_config(&readme);
    assert_eq!(
        (check.status.code(), text(&check.stdout).trim()),
        (Some(0), "ok"),
        "check-config {}: stderr:\n{}",
        readme.display(),
        text(&check.stderr)
    );
    // And the valid body used above is valid on its own.
    let valid = write(&dir, "valid.toml", VALID_BODY);
    let check = check_config(&valid);
    assert_eq!(
        (check.status.code(), text(&check.stdout).trim()),
        (Some(0), "ok"),
        "check-config of a valid config"
    );
}

#[test]
fn embedded_default_shows_the_pipeline_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut eventd = start_with(
        dir,
        manifest_path("config/eventd.toml"),
        port,
        &[("EVENTD__METRICS__LISTEN", format!("127.0.0.1:{port}"))],
    );
    let topics = ["browse", "like", "favorite", "comment"];
    let flowing = eventd.wait_until(Duration::from_secs(20), |e| {
        topics.iter().all(|topic| {
            e.metric_reaches("eventd_events_consumed_total", &[("topic", topic)], 1.0)
                && e.metric_reaches("eventd_events_handled_total", &[("topic", topic)], 1.0)
        })
    });
    let report: Vec<String> = topics
        .iter()
        .map(|topic| {
            format!(
                "{topic}: consumed {:?} handled {:?}",
                eventd.metric_if_present("eventd_events_consumed_total", &[("topic", topic)]),
                eventd.metric_if_present("eventd_events_handled_total", &[("topic", topic)])
            )
        })
        .collect();
    assert!(flowing, "the demo pipeline did not show every topic consumed and handled within 20s: {report:?}\nlogs:\n{}", eventd.logs());
    assert_eq!(
        eventd.http_get("/healthz").map(|r| r.0),
        Some(200),
        "/healthz"
    );
    // Events flow as soon as the first member of the group has partitions; ready
    // means every member had its first assignment. A member that misses the first
    // generation waits for a rebalance, which the embedded broker holds open for the
    // session timeout less a second (5 s there): this allows for two.
    let ready = eventd.wait_until(Duration::from_secs(20), |e| {
        e.http_get("/readyz").is_some_and(|r| r.0 == 200)
    });
    assert!(
        ready,
        "/readyz: {:?}\nlogs:\n{}",
        eventd.http_get("/readyz"),
        eventd.logs()
    );

    let logs = eventd.terminate(Duration::from_secs(25));
    assert!(
        logs.contains("offsets committed"),
        "no final offset commit logged:\n{logs}"
    );
}

#[test]
fn sighup_with_a_bad_config_keeps_running() {
    let broker = Broker::start(2, &["like", "browse"]);
    let body = r#"
[[consumers]]
name = "analytics"
topics = ["like", "browse"]
drain_timeout = "5s"

[[handlers]]
name = "activity-log"
kind = "log"
consumer = "analytics"
sample = 1.0
"#;
    let mut eventd = start_eventd(&broker, body);
    let ready = eventd.wait_until(Duration::from_secs(20), |e| {
        e.http_get("/readyz").map(|r| r.0) == Some(200)
    });
    assert!(
        ready,
        "/readyz not 200 within 20s; logs:\n{}",
        eventd.logs()
    );
    // Counters appear once first counted: None is "not yet", never a silent 0.
    let consumed = |e: &Eventd| {
        e.metric_if_present("eventd_events_consumed_total", &[("consumer", "analytics")])
    };
    let logged = |e: &Eventd| {
        e.metric_if_present(
            "eventd_events_handled_total",
            &[("handler", "activity-log"), ("outcome", "ok")],
        )
    };
    let skipped = |e: &Eventd| {
        e.metric_if_present(
            "eventd_events_handled_total",
            &[("handler", "activity-log"), ("outcome", "skipped")],
        )
    };
    let at_least = |value: Option<f64>, wanted: f64| value.is_some_and(|v| v >= wanted);
    let batch = |first: usize| -> Vec<(String, String)> {
        (first..first + 10)
            .map(|id| ("item-x".to_owned(), event(id, "item-x")))
            .collect()
    };
    broker.produce("like", &batch(0));
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| at_least(logged(e), 10.0)),
        "first events not handled; logs:\n{}",
        eventd.logs()
    );

    // An invalid config (drain_timeout above kafka.session_timeout = 10s) is refused as a
    // whole: its other change (sample = 0.0) must not be applied either.
    let good = std::fs::read_to_string(&eventd.config).expect("read config");
    let bad = good
        .replace("drain_timeout = \"5s\"", "drain_timeout = \"30s\"")
        .replace("sample = 1.0", "sample = 0.0");
    assert_ne!(good, bad);
    std::fs::write(&eventd.config, &bad).expect("write bad config");
    eventd.signal("HUP");
    let refused = eventd.wait_until(Duration::from_secs(10), |e| {
        e.logs().contains("reload refused")
    });
    assert!(
        refused,
        "no \"reload refused\" logged after SIGHUP with a bad config; logs:\n{}",
        eventd.logs()
    );
    assert!(
        eventd.logs().contains("consumers[0].drain_timeout"),
        "the refused reload must name the key; logs:\n{}",
        eventd.logs()
    );
    assert!(
        eventd.child.try_wait().expect("try_wait").is_none(),
        "eventd exited after a refused reload; logs:\n{}",
        eventd.logs()
    );
    assert_eq!(
        eventd.http_get("/healthz").map(|r| r.0),
        Some(200),
        "/healthz after a refused reload"
    );
    assert_eq!(
        eventd.http_get("/readyz").map(|r| r.0),
        Some(200),
        "/readyz after a refused reload"
    );

    let before = consumed(&eventd).expect("events were consumed before the reload");
    broker.produce("like", &batch(1000));
    assert!(
        eventd.wait_until(Duration::from_secs(15), |e| at_least(consumed(e), before + 10.0) && at_least(logged(e), 20.0)),
        "events produced after the refused reload were not consumed and logged (consumed {} -> {:?}, logged {:?}, skipped {:?}); logs:\n{}",
        before,
        consumed(&eventd),
        logged(&eventd),
        skipped(&eventd),
        eventd.logs()
    );
    assert!(
        matches!(skipped(&eventd), None | Some(0.0)),
        "the refused config's sample = 0.0 was applied: skipped {:?}",
        skipped(&eventd)
    );

    // A valid change (sample = 0.0: log nothing) is applied without a restart.
    std::fs::write(&eventd.config, good.replace("sample = 1.0", "sample = 0.0"))
        .expect("write good config");
    eventd.signal("HUP");
    let reloaded = eventd.wait_until(Duration::from_secs(15), |e| {
        e.logs().contains("config reloaded")
    });
    assert!(
        reloaded,
        "no \"config reloaded\" logged after SIGHUP with a valid config; logs:\n{}",
        eventd.logs()
    );
    assert!(
        !eventd.logs().contains("needs a restart"),
        "a sample change must apply live; logs:\n{}",
        eventd.logs()
    );
    assert!(
        eventd.child.try_wait().expect("try_wait").is_none(),
        "eventd exited after a reload"
    );
    broker.produce("like", &batch(2000));
    assert!(
        eventd.wait_until(Duration::from_secs(15), |e| at_least(skipped(e), 10.0)),
        "after reloading sample = 0.0 new events are still logged (logged {:?}, skipped {:?}); logs:\n{}",
        logged(&eventd),
        skipped(&eventd),
        eventd.logs()
    );
    assert_eq!(
        logged(&eventd),
        Some(20.0),
        "events logged after sample = 0.0 was reloaded"
    );

    // A change outside what applies live is named, not silently dropped, and not half
    // applied either: the handler takes its topics from the consumer, which reads
    // "browse" until a restart, so "browse" events still reach the handler.
    std::fs::write(
        &eventd.config,
        good.replace("sample = 1.0", "sample = 0.0")
            .replace("drain_timeout = \"5s\"", "drain_timeout = \"6s\"")
            .replace(r#"topics = ["like", "browse"]"#, r#"topics = ["like"]"#)
            + "\n[producer]\nlinger = \"7ms\"\n",
    )
    .expect("write config needing a restart");
    eventd.signal("HUP");
    let partial = |e: &Eventd| {
        e.metric_reaches(
            "eventd_config_reloads_total",
            &[("outcome", "partial")],
            1.0,
        )
    };
    assert!(
        eventd.wait_until(Duration::from_secs(15), partial),
        "no partial reload counted; logs:\n{}",
        eventd.logs()
    );
    let logs = eventd.logs();
    for key in [
        "consumers[0].drain_timeout",
        "consumers[0].topics",
        "producer.linger",
    ] {
        assert!(
            logs.lines()
                .any(|line| line.contains("needs a restart") && line.contains(key)),
            "{key} not named as needing a restart:\n{logs}"
        );
    }
    // The running config is the baseline of the next reload: sample = 0.0, applied by
    // the second reload, is no change for the third.
    let sample_applied = logs
        .lines()
        .filter(|line| {
            line.contains("config change applied") && line.contains("handlers[0].sample")
        })
        .count();
    assert_eq!(
        sample_applied, 1,
        "handlers[0].sample reported as applied {sample_applied} times over two reloads that set it once:\n{logs}"
    );
    let skipped_before = skipped(&eventd).expect("events were skipped under sample = 0.0");
    broker.produce("browse", &batch(3000));
    assert!(
        eventd.wait_until(Duration::from_secs(15), |e| at_least(skipped(e), skipped_before + 10.0)),
        "\"browse\" events, still read by the running consumer, did not reach the handler (skipped {skipped_before} -> {:?}); logs:\n{}",
        skipped(&eventd),
        eventd.logs()
    );
    assert_eq!(
        eventd.metric("eventd_config_reloads_total", &[("outcome", "refused")]),
        1.0
    );
    assert!(eventd.metric("eventd_config_reloads_total", &[("outcome", "applied")]) >= 1.0);

    eventd.terminate(Duration::from_secs(25));
}

/// Shutdown is made slow without fault injection: a count window holds events when the
/// broker goes away, so the shutdown flush waits on deliveries that cannot happen. A
/// second SIGTERM during that wait ends the process at once with 130.
#[test]
fn second_signal_exits_130() {
    let broker = Broker::start(2, &["like", "item_stats"]);
    let body = r#"
[producer]
message_timeout = "20s"

[shutdown]
grace = "20s"

[[consumers]]
name = "analytics"
topics = ["like"]
drain_timeout = "5s"

[[handlers]]
name = "likes-per-item"
kind = "count"
consumer = "analytics"
group_by = "item_id"
window = "1h"
output = "item_stats"
"#;
    let mut eventd = start_eventd(&broker, body);
    broker.produce("like", &events(20, 4));
    let handled = eventd.wait_until(Duration::from_secs(20), |e| {
        e.metric_reaches(
            "eventd_events_handled_total",
            &[("handler", "likes-per-item")],
            20.0,
        )
    });
    assert!(
        handled,
        "events not counted within 20s; logs:\n{}",
        eventd.logs()
    );

    // The broker goes away with the window still open: the shutdown flush cannot deliver.
    drop(broker);
    eventd.signal("TERM");
    let draining = eventd.wait_until(Duration::from_secs(10), |e| e.logs().contains("draining"));
    assert!(
        draining,
        "no \"draining\" logged after SIGTERM; logs:\n{}",
        eventd.logs()
    );
    // The flush now waits on deliveries that cannot happen (up to drain_timeout, 5s),
    // so the shutdown is under way when the signals land.
    assert!(
        eventd.is_running(),
        "shutdown with an unreachable broker finished at once, so a second signal cannot be tested; logs:\n{}",
        eventd.logs()
    );
    // SIGHUP asks for a reload, not an exit: it is not a second signal.
    eventd.signal("HUP");
    assert!(
        eventd.wait_until(Duration::from_secs(5), |e| e
            .logs()
            .contains("reload ignored: shutting down")),
        "SIGHUP during shutdown not acknowledged; logs:\n{}",
        eventd.logs()
    );
    assert!(
        eventd.is_running(),
        "SIGHUP during shutdown ended the process; logs:\n{}",
        eventd.logs()
    );
    let started = std::time::Instant::now();
    eventd.signal("TERM");
    let status = eventd.wait_exit(Duration::from_secs(5));
    let logs = eventd.logs();
    let status = status.unwrap_or_else(|| {
        panic!("eventd did not exit within 5s of a second SIGTERM; logs:\n{logs}")
    });
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after a second signal (after {:?}); logs:\n{logs}",
        started.elapsed()
    );
    assert!(
        logs.contains("second signal"),
        "no \"second signal\" logged:\n{logs}"
    );
}

/// JSON logs carry lists and events as JSON values, not as strings of Rust debug text,
/// so a log pipeline can index a rebalance's partitions or a logged event's fields.
#[test]
fn json_logs_hold_partitions_and_logged_events_as_json_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // The embedded default, whose demo feeds a `log` handler, with JSON logs.
    let eventd = start_with(
        dir,
        manifest_path("config/eventd.toml"),
        port,
        &[
            ("EVENTD__METRICS__LISTEN", format!("127.0.0.1:{port}")),
            ("EVENTD__LOG__FORMAT", "json".to_owned()),
        ],
    );
    let logged = eventd.wait_until(Duration::from_secs(60), |e| {
        !e.log_lines("partitions assigned").is_empty() && !e.log_lines("event").is_empty()
    });
    assert!(
        logged,
        "no `partitions assigned` and `event` JSON lines within 60 s:\n{}",
        eventd.logs()
    );
    let assigned = &eventd.log_lines("partitions assigned")[0];
    let partitions = assigned["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("partitions is not a JSON array: {assigned}"));
    assert!(!partitions.is_empty(), "{assigned}");
    for partition in partitions {
        assert!(
            partition["topic"].is_string() && partition["partition"].is_i64(),
            "{assigned}"
        );
    }
    let logged_event = &eventd.log_lines("event")[0];
    let event = &logged_event["event"];
    assert!(
        event.is_object() && event["item_id"].is_string() && !event["ts"].is_null(),
        "the logged event is not a JSON object: {logged_event}"
    );
    let started = eventd.log_lines("group member started");
    assert!(
        started.iter().all(|line| line["topics"].is_array()) && !started.is_empty(),
        "{started:?}"
    );
}

#[test]
fn log_format_on_the_command_line_overrides_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = write(
        &dir,
        "json.toml",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[log]\nformat = \"json\"\n{VALID_BODY}"
        ),
    );
    let log = dir.path().join("eventd.log");
    let out = std::fs::File::create(&log).expect("log file");
    let mut child = eventd_bin()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--log-format", "pretty"])
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("eventd starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let running = loop {
        let text = std::fs::read_to_string(&log).expect("log readable");
        if let Some(line) = text.lines().find(|line| line.contains("eventd running")) {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "eventd did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        serde_json::from_str::<serde_json::Value>(&running).is_err(),
        "--log-format pretty, yet JSON: {running}"
    );
    assert!(running.contains("INFO"), "{running}");
}

#[test]
fn one_shot_commands_without_a_broker_say_so_and_exit_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(&dir, "no-broker.toml", VALID_BODY);
    let config = config.to_str().expect("utf-8 path");
    for args in [
        &["produce", "--config", config, "--count", "1"][..],
        &["tail", "--config", config, "--topic", "like"],
        &[
            "offsets",
            "show",
            "--config",
            config,
            "--consumer",
            "analytics",
        ],
        &[
            "replay",
            "--config",
            config,
            "--from",
            "dlq",
            "--handler",
            "activity-log",
        ],
    ] {
        let output = eventd_bin().args(args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("eventd {}: no broker: set kafka.brokers", args[0])),
            "{args:?}: {stderr}"
        );
    }
}

/// `check-config --topics` lists every topic the config reads and writes and whether
/// each exists on kafka.brokers, so an operator knows what to create before `run`.
#[test]
fn check_config_lists_the_topics_to_create() {
    let broker = Broker::start(2, &["like", "like_counts"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "topics.toml",
        &format!(
            r#"[kafka]
brokers = "{}"

[dead_letter]
topic = "eventd.dlq"

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "tally"
kind = "count"
consumer = "main"
group_by = "item_id"
window = "1m"
output = "like_counts"
"#,
            broker.bootstrap()
        ),
    );
    let output = eventd_bin()
        .args(["check-config", "--topics", "--config"])
        .arg(&path)
        .output()
        .expect("eventd runs");
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(69),
        "{stdout}{}",
        text(&output.stderr)
    );
    let line = |topic: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(&format!("{topic}\t")))
            .unwrap_or_else(|| panic!("no line for {topic}: {stdout}"))
            .to_owned()
    };
    assert!(
        line("like").contains("read (consumers[0].topics)")
            && line("like").contains("exists, 2 partitions"),
        "{stdout}"
    );
    assert!(
        line("like_counts").contains("written (handlers[0].output)")
            && line("like_counts").contains("exists"),
        "{stdout}"
    );
    assert!(line("eventd.dlq").contains("MISSING"), "{stdout}");
    broker.create_topic("eventd.dlq", 2);
    let output = eventd_bin()
        .args(["check-config", "--topics", "--config"])
        .arg(&path)
        .output()
        .expect("eventd runs");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
}

/// A reload that reaches the handlers while their supervisor is busy (restarting a
/// handler whose start is slow) cannot be confirmed in time. Its live change is
/// reported as handed over and unconfirmed, not as needing a restart: the supervisor
/// applies it once free, and the log handler then stops logging without a restart.
#[test]
fn a_reload_the_handlers_cannot_confirm_in_time_is_reported_as_unconfirmed() {
    let broker = Broker::start(1, &["like"]);
    let eventd = start_eventd(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "shown"
kind = "log"
consumer = "main"
sample = 1.0

[[handlers]]
name = "crashing"
kind = "fault"
consumer = "main"
action = "panic"
offsets = [0]
once = true
restart_delay = "12s"
"#,
    );
    broker.produce("like", &events(1, 1));
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| e
            .logs()
            .contains("fault: slow restart")),
        "the crashing handler was not restarted; logs:\n{}",
        eventd.logs()
    );
    let good = std::fs::read_to_string(&eventd.config).expect("read config");
    std::fs::write(&eventd.config, good.replace("sample = 1.0", "sample = 0.0"))
        .expect("write config");
    eventd.signal("HUP");
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| e
            .logs()
            .contains("config reloaded")),
        "no reload reported; logs:\n{}",
        eventd.logs()
    );
    let unconfirmed = eventd.log_lines(
        "config change handed to the handlers, which did not confirm it in time; restart to be sure it applies",
    );
    assert!(
        unconfirmed
            .iter()
            .any(|line| line["key"] == "handlers[0].sample"),
        "handlers[0].sample not reported as unconfirmed; logs:\n{}",
        eventd.logs()
    );
    assert!(
        eventd
            .log_lines("config change needs a restart; not applied")
            .is_empty(),
        "a live change was reported as needing a restart; logs:\n{}",
        eventd.logs()
    );
    assert_eq!(
        eventd.metric("eventd_config_reloads_total", &[("outcome", "partial")]),
        1.0
    );
    // Once the restart is over the supervisor applies the change: later events are
    // skipped, not logged.
    let skipped = |e: &Eventd| {
        e.metric_if_present(
            "eventd_events_handled_total",
            &[("handler", "shown"), ("outcome", "skipped")],
        )
        .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut id = 1;
    while skipped(&eventd) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the unconfirmed sample = 0.0 never applied; logs:\n{}",
            eventd.logs()
        );
        broker.produce("like", &[("item-1".to_owned(), event(id, "item-1"))]);
        id += 1;
        eventd.wait_until(Duration::from_millis(500), |e| skipped(e) >= 1.0);
    }
}
