//! `[kafka.security]`: secrets reach librdkafka and nothing else. A planted password
//! must not appear in logs at trace level with librdkafka's `debug=all`, in `/metrics`,
//! in `check-config` output or in a panic, while a planted non-secret marker does
//! (so the check is looking at output that would show it).

#![cfg(feature = "fault-injection")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const SECRET: &str = "s3cret-planted-9f2e";
const MARKER: &str = "marker-client-4c1b";

fn security_section(password: &str) -> String {
    format!(
        r#"
[kafka.security]
protocol = "sasl_plaintext"
sasl_mechanism = "PLAIN"
username = "reader"
password = "{password}"
"#
    )
}

fn security_body(password: &str) -> String {
    format!(
        r#"{}
{COPY_LIKE_TO_OUT}

[[handlers]]
name = "crash"
kind = "fault"
consumer = "main"
action = "panic"
every = 1
once = true
"#,
        security_section(password)
    )
}

#[test]
fn a_planted_secret_never_shows_while_a_marker_does() {
    // No broker answers (the mock cluster has no SASL): librdkafka keeps trying, and
    // with debug=all at trace level it prints its whole configuration and every
    // connection attempt.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("eventd.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[log]\nformat = \"json\"\nlevel = \"trace\"\n{}",
            free_port(),
            // No output topic: the daemon starts its consumers without first checking
            // that outputs exist, which needs a broker.
            security_section("env:EVENTD_TEST_PASSWORD")
                + "\n[[consumers]]\nname = \"main\"\ntopics = [\"like\"]\n\n[[handlers]]\nname = \"seen\"\nkind = \"log\"\nconsumer = \"main\"\n"
        ),
    )
    .expect("config");
    let eventd = start_with(
        dir,
        config,
        port,
        &[
            ("EVENTD_TEST_PASSWORD", SECRET.to_owned()),
            ("EVENTD__KAFKA__CLIENT_ID", MARKER.to_owned()),
            ("EVENTD__KAFKA__OPTIONS__DEBUG", "all".to_owned()),
        ],
    );
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| {
            let logs = e.logs();
            logs.contains(&format!("client.id = {MARKER}"))
                && logs.contains("sasl.password = ")
                && logs.contains("\"fac\":\"FAIL\"")
        }),
        "librdkafka's debug output never showed its configuration and a failed connection: {}",
        eventd.logs()
    );
    let metrics = eventd.scrape();
    let logs = eventd.logs();
    assert!(!logs.contains(SECRET), "the secret is in the logs");
    assert!(!metrics.contains(SECRET), "the secret is in /metrics");

    // check-config, valid and with an error elsewhere, never echoes it.
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, extra) in [
        ("valid.toml", ""),
        ("invalid.toml", "\n[producer]\nlinger = \"soon\"\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[kafka]\nbrokers = \"{}\"\n{}{extra}",
                format!("127.0.0.1:{}", free_port()),
                security_body(SECRET)
            ),
        )
        .expect("config");
        let output = Command::new(env!("CARGO_BIN_EXE_eventd"))
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("check-config runs");
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!shown.contains(SECRET), "{name}: {shown}");
    }
}

#[test]
fn security_keys_are_refused_in_kafka_options_and_unreadable_secrets_name_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("raw.toml");
    std::fs::write(
        &raw,
        format!("[kafka.options]\n\"sasl.password\" = \"{SECRET}\"\n\"statistics.interval.ms\" = \"1000\"\n{COPY_LIKE_TO_OUT}"),
    )
    .expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .arg("check-config")
        .arg(&raw)
        .output()
        .expect("runs");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(78), "{shown}");
    assert!(shown.contains("kafka.security.password"), "{shown}");
    assert!(shown.contains("metrics.lag_interval"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");

    let unset = dir.path().join("unset.toml");
    std::fs::write(&unset, security_body("env:EVENTD_TEST_NEVER_SET")).expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .arg("check-config")
        .arg(&unset)
        .output()
        .expect("runs");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(78), "{shown}");
    assert!(
        shown.contains("kafka.security.password") && shown.contains("EVENTD_TEST_NEVER_SET"),
        "{shown}"
    );
}
