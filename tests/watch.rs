//! `reload.watch_config`: the config file replaced as Kubernetes replaces a mounted
//! ConfigMap (a `..data` symlink swapped to a new directory) is reloaded as SIGHUP
//! reloads it, without a rebalance; an invalid replacement is refused and the running
//! config kept; rewriting the same contents reloads nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// The config of this test with `action` as the filter's value.
fn config_text(broker: &Broker, port: u16, action: &str) -> String {
    format!(
        r#"[kafka]
brokers = "{}"
session_timeout = "12s"

[metrics]
listen = "127.0.0.1:{port}"

[log]
format = "json"

[reload]
watch_config = true

[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "picked"
kind = "forward"
consumer = "main"
output = "out"
[handlers.filter]
action = {{ equals = "{action}" }}
"#,
        broker.bootstrap()
    )
}

/// Publishes `text` as Kubernetes publishes a ConfigMap update: written into a new
/// directory, then the `..data` symlink is renamed over to point at it.
fn publish(mount: &Path, generation: usize, text: &str) {
    let version = format!("..v{generation}");
    std::fs::create_dir(mount.join(&version)).expect("version directory");
    std::fs::write(mount.join(&version).join("eventd.toml"), text).expect("config");
    let staged = mount.join("..data_tmp");
    std::os::unix::fs::symlink(&version, &staged).expect("staged symlink");
    std::fs::rename(&staged, mount.join("..data")).expect("swap ..data");
}

fn reloads(eventd: &Eventd, outcome: &str) -> f64 {
    eventd
        .metric_if_present("eventd_config_reloads_total", &[("outcome", outcome)])
        .unwrap_or(0.0)
}

#[test]
fn a_config_swapped_in_as_kubernetes_does_is_reloaded_and_a_bad_one_refused() {
    let broker = Broker::start(1, &["like", "out"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path().join("config");
    std::fs::create_dir(&mount).expect("mount");
    let port = free_port();
    publish(&mount, 1, &config_text(&broker, port, "add"));
    std::os::unix::fs::symlink("..data/eventd.toml", mount.join("eventd.toml"))
        .expect("file symlink");
    let path = mount.join("eventd.toml");
    let eventd = start_with(dir, path, port, &[]);
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| {
            e.http_get("/readyz").map(|r| r.0) == Some(200)
        }),
        "not ready; logs:\n{}",
        eventd.logs()
    );
    let adds = events(4, 2);
    broker.produce("like", &adds);
    broker.expect_every_id("out", 4, Duration::from_secs(30), &eventd);
    let assigned = [("consumer", "main"), ("kind", "assign")];
    let rebalances = eventd.metric_if_present("eventd_rebalances_total", &assigned);
    assert!(rebalances.is_some(), "no assignment counted");

    // A changed filter: reloaded, applied live.
    publish(&mount, 2, &config_text(&broker, port, "remove"));
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| reloads(e, "applied") >= 1.0),
        "the swapped config was not reloaded; logs:\n{}",
        eventd.logs()
    );
    let applied = eventd.log_lines("config change applied");
    assert!(
        applied
            .iter()
            .any(|line| line["key"] == "handlers[0].filter.action.equals"),
        "{applied:?}"
    );
    let removes: Vec<(String, String)> = (100..104)
        .map(|id| {
            let item = format!("item-{}", id % 2);
            (
                item.clone(),
                event(id, &item).replace("\"add\"", "\"remove\""),
            )
        })
        .collect();
    broker.produce("like", &removes);
    broker.produce("like", &events(2, 2));
    broker.expect_committed_to_end("eventd-main", "like", Duration::from_secs(30), &eventd);
    let copies = broker.read_all("out");
    assert_eq!(
        copies.len(),
        8,
        "4 adds before the reload, 4 removes after; logs:\n{}",
        eventd.logs()
    );
    assert!(
        copies[4..]
            .iter()
            .all(|record| record.field("action").as_deref() == Some("remove")),
        "after the reload only removes pass: {copies:?}"
    );

    // The same contents published again: looked at, nothing reloaded.
    publish(&mount, 3, &config_text(&broker, port, "remove"));
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| !e
            .log_lines("the watched files hold what they held; nothing to reload")
            .is_empty()),
        "the republished config was not looked at; logs:\n{}",
        eventd.logs()
    );
    assert_eq!(
        reloads(&eventd, "applied"),
        1.0,
        "the same contents reloaded"
    );

    // An invalid config: refused, the running one kept.
    publish(&mount, 4, "[[handlers]]\nname = \n");
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| reloads(e, "refused") >= 1.0),
        "the invalid config was not refused; logs:\n{}",
        eventd.logs()
    );
    assert_eq!(
        eventd.http_get("/readyz").map(|r| r.0),
        Some(200),
        "still running after the refused reload"
    );
    assert_eq!(
        eventd.metric_if_present("eventd_rebalances_total", &assigned),
        rebalances,
        "a reload that changes no consumer keeps the group as it is"
    );
    // Reading the files (a look, a reload) is no change: a watch that took it for one
    // would look again and again.
    let looks = eventd
        .log_lines("the watched files hold what they held; nothing to reload")
        .len();
    assert!(
        looks <= 2,
        "{looks} looks for one republished config; logs:\n{}",
        eventd.logs()
    );
}

/// A plain config file saved in place and then replaced by rename, as editors do:
/// the same contents are looked at once and reload nothing (the watch's own reads are
/// no change to look at again), a changed file replaced by rename is reloaded.
#[test]
fn a_config_saved_in_place_or_renamed_over_is_looked_at_once_per_change() {
    let broker = Broker::start(1, &["like", "out"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let path = dir.path().join("eventd.toml");
    std::fs::write(&path, config_text(&broker, port, "add")).expect("config");
    let eventd = start_with(dir, path.clone(), port, &[]);
    broker.produce("like", &events(4, 2));
    broker.expect_every_id("out", 4, Duration::from_secs(30), &eventd);

    std::fs::write(&path, config_text(&broker, port, "add")).expect("saved in place");
    let looked = "the watched files hold what they held; nothing to reload";
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| !e.log_lines(looked).is_empty()),
        "the saved file was not looked at; logs:\n{}",
        eventd.logs()
    );
    // Events flowing through and a commit past them take well over the 300 ms in
    // which a look taken for a change would be followed by the next.
    broker.produce("like", &events(8, 2)[4..]);
    broker.expect_every_id("out", 8, Duration::from_secs(30), &eventd);
    broker.expect_committed_to_end("eventd-main", "like", Duration::from_secs(30), &eventd);
    assert_eq!(
        eventd.log_lines(looked).len(),
        1,
        "one save, one look; logs:\n{}",
        eventd.logs()
    );

    let staged = path.with_extension("toml.new");
    std::fs::write(&staged, config_text(&broker, port, "remove")).expect("staged");
    std::fs::rename(&staged, &path).expect("renamed over");
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| reloads(e, "applied") >= 1.0),
        "the renamed-over config was not reloaded; logs:\n{}",
        eventd.logs()
    );
    assert_eq!(reloads(&eventd, "refused"), 0.0);
}
