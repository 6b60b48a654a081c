//! `[handlers.filter]`: each operator lets through what it should and nothing else,
//! headers included, with the README's own example; conditions that cannot be
//! evaluated are refused by `check-config` and `run`, naming their keys.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use serde_json::json;

/// The README's `[handlers.filter]` example, as written there.
fn readme_filter() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let start = readme
        .find("```toml\n[handlers.filter]")
        .expect("the README has a [handlers.filter] example");
    let example = &readme[start + "```toml\n".len()..];
    example[..example.find("```").expect("the example ends")].to_owned()
}

/// An event of `like` with `fields` over the required ones.
fn event(id: usize, fields: serde_json::Value) -> String {
    let mut event = json!({
        "event_id": format!("e-{id}"),
        "user_id": "u-1",
        "item_id": format!("item-{id}"),
        "ts": 1_764_000_000_000i64,
        "action": "add",
        "dwell_ms": 5000,
        "source": "web",
    });
    for (name, value) in fields.as_object().expect("fields") {
        match value {
            serde_json::Value::Null => event.as_object_mut().expect("event").remove(name),
            value => event
                .as_object_mut()
                .expect("event")
                .insert(name.clone(), value.clone()),
        };
    }
    event.to_string()
}

#[test]
fn the_readme_filter_lets_through_exactly_what_each_operator_allows() {
    let broker = Broker::start(1, &["like", "out"]);
    // (fields over a passing event, its x-tenant headers, whether it passes)
    let cases: Vec<(serde_json::Value, &[&str], bool)> = vec![
        (json!({}), &["eu"], true),
        (json!({"action": "remove"}), &["eu"], false),
        (json!({"dwell_ms": 999}), &["eu"], false),
        (json!({"dwell_ms": 1000}), &["us"], true),
        (json!({"dwell_ms": 599_999.5}), &["eu"], true),
        (json!({"dwell_ms": 600_000}), &["eu"], false),
        (json!({"dwell_ms": "5000"}), &["eu"], false),
        (json!({"dwell_ms": null}), &["eu"], false),
        (json!({"item_id": "test-9"}), &["eu"], false),
        (json!({"item_id": "item-test-9"}), &["eu"], true),
        (json!({"source": "app-ios"}), &["eu"], true),
        (json!({"source": "email"}), &["eu"], false),
        (json!({"source": null}), &["eu"], false),
        (json!({}), &["ap"], false),
        (json!({}), &[], false),
        // Of repeated headers the last counts.
        (json!({}), &["ap", "eu"], true),
        (json!({}), &["eu", "ap"], false),
    ];
    let producer = broker.producer();
    for (id, (fields, tenant, _)) in cases.iter().enumerate() {
        let payload = event(id, fields.clone());
        let key = format!("k-{id}");
        let mut record = BaseRecord::to("like").key(&key).payload(&payload);
        if !tenant.is_empty() {
            let headers = tenant.iter().fold(OwnedHeaders::new(), |headers, tenant| {
                headers.insert(Header {
                    key: "x-tenant",
                    value: Some(*tenant),
                })
            });
            record = record.headers(headers);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");

    let eventd = start_eventd(
        &broker,
        &format!(
            r#"
[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "picked"
kind = "forward"
consumer = "main"
output = "out"
{}"#,
            readme_filter()
        ),
    );
    let passing: BTreeSet<String> = cases
        .iter()
        .enumerate()
        .filter(|(_, (_, _, passes))| *passes)
        .map(|(id, _)| format!("e-{id}"))
        .collect();
    let filtered = (cases.len() - passing.len()) as f64;
    let labels = |outcome| {
        [
            ("handler", "picked"),
            ("topic", "like"),
            ("outcome", outcome),
        ]
    };
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| {
            e.metric_reaches("eventd_events_handled_total", &labels("filtered"), filtered)
                && e.metric_reaches(
                    "eventd_events_handled_total",
                    &labels("ok"),
                    passing.len() as f64,
                )
        }),
        "filtered {:?} of {filtered}, handled {:?} of {}\nlogs:\n{}",
        eventd.metric_if_present("eventd_events_handled_total", &labels("filtered")),
        eventd.metric_if_present("eventd_events_handled_total", &labels("ok")),
        passing.len(),
        eventd.logs()
    );
    broker.expect_committed_to_end("eventd-main", "like", Duration::from_secs(20), &eventd);
    let copied: BTreeSet<String> = broker
        .read_all("out")
        .iter()
        .map(|record| record.field("event_id").expect("event_id"))
        .collect();
    assert_eq!(copied, passing, "the events the filter let through");
}

/// `check-config`'s report on a log handler with these `[handlers.filter]` lines,
/// which must refuse them (exit 78), and the config file.
fn refused_filter(dir: &tempfile::TempDir, filter_lines: &str) -> (String, std::path::PathBuf) {
    let path = dir.path().join("filters.toml");
    std::fs::write(
        &path,
        format!(
            "[[consumers]]\nname = \"main\"\ntopics = [\"like\"]\n\n[[handlers]]\nname = \"picked\"\nkind = \"log\"\nconsumer = \"main\"\n[handlers.filter]\n{filter_lines}"
        ),
    )
    .expect("config");
    let check = check_config(&path);
    let report = String::from_utf8_lossy(&check.stdout).into_owned();
    assert_eq!(check.status.code(), Some(78), "{report}");
    (report, path)
}

#[test]
fn conditions_that_cannot_be_evaluated_are_refused_naming_their_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (report, path) = refused_filter(
        &dir,
        "dwell_ms = { gt = \"5\" }\nkind = { above = 5 }\naction = {}\nheaders = { \"x-tenant\" = { any = [] } }\n",
    );
    for key in [
        "handlers[0].filter.dwell_ms.gt: invalid type: string \"5\", expected a JSON number",
        "handlers[0].filter.kind.above: \"above\" is not a filter operator",
    ] {
        assert!(report.contains(key), "{key} not named:\n{report}");
    }
    let run = run_with(&path);
    assert_eq!(run.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("handlers[0].filter.dwell_ms.gt"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // With the type errors fixed, the conditions that cannot decide are named.
    let (report, _) = refused_filter(
        &dir,
        "action = {}\nheaders = { \"x-tenant\" = { any = [] } }\n",
    );
    for key in [
        "handlers[0].filter.action:",
        "handlers[0].filter.headers.x-tenant.any:",
    ] {
        assert!(report.contains(key), "{key} not named:\n{report}");
    }
}
