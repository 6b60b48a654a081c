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
    assert_eq!(document["group"], GROUP);
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
