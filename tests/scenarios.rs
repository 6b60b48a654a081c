//! Fault scenarios an operator meets in production, each named after its scenario with
//! its pass criterion in its doc comment. They run on tansu (a real broker) unless only
//! the mock cluster can inject the fault or, for scenarios whose group changes members,
//! tansu's coordinator cannot be relied on (`membership_broker`). They judge behaviour
//! through one checker (`common::checker`): missing ids, duplicates and per-key order in
//! the sink.
//!
//! Volumes are kept small for tansu's sqlite storage, which slows with every stored
//! header; `EVENTD_SCENARIO_SCALE` multiplies them for longer runs.

#![cfg(feature = "fault-injection")]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::checker::{produced_ids, Delivery};
use common::*;

const TOPICS: [&str; 4] = ["browse", "like", "favorite", "comment"];
const GROUP: &str = "eventd-main";
/// The sink every scenario forwards to, beside the four source topics.
const SINK: &str = "sink";

/// One consumer over the four topics, forwarding every event to the sink.
const FORWARD_ALL: &str = r#"
[[consumers]]
name = "main"
topics = ["browse", "like", "favorite", "comment"]

[[handlers]]
name = "copy"
kind = "forward"
consumer = "main"
output = "sink"
"#;

fn scaled(events: usize) -> usize {
    events * env_count("EVENTD_SCENARIO_SCALE", 1)
}

fn all_topics() -> Vec<&'static str> {
    let mut topics = TOPICS.to_vec();
    topics.push(SINK);
    topics
}

/// `total` events spread over the four topics (id modulo 4), 64 keys.
fn produce_spread(broker: &Broker, first: usize, total: usize) {
    for (index, topic) in TOPICS.iter().enumerate() {
        let batch: Vec<(String, String)> = (first..first + total)
            .filter(|id| id % TOPICS.len() == index)
            .map(|id| {
                let item = format!("item-{}", id % 64);
                (item.clone(), event(id, &item))
            })
            .collect();
        broker.produce(topic, &batch);
    }
}

/// Committed offset per (topic, partition).
type Commits = HashMap<(String, i32), i64>;

/// The group's committed offset of every partition of the four topics (0 if none).
fn committed_offsets(broker: &Broker, group: &str) -> Commits {
    try_committed_offsets(broker, group)
        .unwrap_or_else(|error| panic!("committed offsets of {group}: {error}"))
}

/// As `committed_offsets`, or the error of a broker too busy to answer: a sample taken
/// under load may be missed, a check may not.
fn try_committed_offsets(
    broker: &Broker,
    group: &str,
) -> Result<HashMap<(String, i32), i64>, String> {
    let mut offsets = HashMap::new();
    for topic in TOPICS {
        let committed = broker
            .try_committed(group, topic)
            .map_err(|error| format!("{topic}: {error}"))?;
        for (partition, offset) in committed {
            offsets.insert((topic.to_string(), partition), offset.unwrap_or(0));
        }
    }
    Ok(offsets)
}

/// One tansu scenario at a time, with a longer session: tansu's sqlite storage slows
/// under several brokers at once, and a heartbeat left unanswered past the harness's
/// 12 s session costs the member its partitions mid-scenario.
static TANSU_SCENARIO: std::sync::Mutex<()> = std::sync::Mutex::new(());
const TANSU_SESSION: (&str, &str) = ("EVENTD__KAFKA__SESSION_TIMEOUT", "45s");

fn tansu_scenario() -> std::sync::MutexGuard<'static, ()> {
    TANSU_SCENARIO
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start_on_tansu(broker: &Broker, config: &str) -> Eventd {
    start_eventd_with_env(
        broker,
        config,
        &[(TANSU_SESSION.0, TANSU_SESSION.1.to_owned())],
    )
}

/// The broker of a scenario whose group changes members. tansu 0.6's group coordinator
/// was seen not to finish a rebalance after a member was killed or left (the member
/// that stayed was revoked and never assigned again, or a restarted one was assigned
/// nothing), so these scenarios run on the mock cluster, whose coordinator follows the
/// protocol; the single-member scenarios and the broker outages run on tansu.
fn membership_broker(partitions: i32, topics: &[&str]) -> Broker {
    Broker::start(partitions, topics)
}

/// Waits until the sink holds every one of `total` ids and checks it.
fn sink_after(broker: &Broker, total: usize, patience: Duration, eventd: &Eventd) -> Delivery {
    let sink = broker.expect_every_id(SINK, total, patience, eventd);
    Delivery::check(&produced_ids(total), &sink)
}

/// Handled events of the forward handler, 0 before the first.
fn forwarded(eventd: &Eventd) -> f64 {
    eventd
        .metric_if_present("eventd_events_handled_total", &[("handler", "copy")])
        .unwrap_or(0.0)
}

/// **Baseline.** 20,000 events over 4 topics x 4 partitions: the sink holds every id
/// exactly once with per-key order, and after a clean stop the committed offsets equal
/// the high watermarks.
#[test]
fn baseline_every_event_once_in_order_and_committed_to_the_end() {
    let total = scaled(20_000);
    let _one_at_a_time = tansu_scenario();
    let broker = Broker::tansu(4, &all_topics());
    produce_spread(&broker, 0, total);
    let started = Instant::now();
    let mut eventd = start_on_tansu(&broker, FORWARD_ALL);
    let delivery = sink_after(&broker, total, Duration::from_secs(240), &eventd);
    eprintln!(
        "baseline: {} in {:?}",
        delivery.summary(),
        started.elapsed()
    );
    delivery.assert_exactly_once_in_order("baseline");
    eventd.terminate(Duration::from_secs(25));
    for topic in TOPICS {
        assert!(
            broker.committed_to_end(GROUP, topic),
            "{topic}: committed {:?}, watermarks {:?}",
            broker.committed(GROUP, topic),
            broker.watermarks(topic)
        );
    }
}

/// **SIGKILL during processing, restart.** The committed offsets are read right after
/// the SIGKILL; after the restart every id is in the sink in per-key order, and every
/// duplicate's source offset is at or above the committed offset of its partition at
/// the kill (nothing below the commit is handled twice).
#[test]
fn sigkill_during_processing_then_restart_repeats_only_above_the_commit() {
    let total = scaled(20_000);
    let broker = membership_broker(4, &all_topics());
    produce_spread(&broker, 0, total);
    // Handling takes about a millisecond an event, so the kill lands mid-stream.
    let mut eventd = start_eventd(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["browse", "like", "favorite", "comment"]

[[handlers]]
name = "copy"
kind = "fault"
consumer = "main"
action = "sleep"
every = 1
sleep = "1ms"
concurrency = 8
output = "sink"
"#,
    );
    let quarter = (total / 4) as f64;
    // Killed once a quarter is forwarded and some of it committed, so the restart has
    // a commit to resume from.
    assert!(
        eventd.wait_until(Duration::from_secs(120), |e| forwarded(e) >= quarter
            && committed_offsets(&broker, GROUP).values().sum::<i64>() > 0),
        "a quarter not forwarded and committed; logs:\n{}",
        eventd.logs()
    );
    eventd.signal("KILL");
    eventd
        .wait_exit(Duration::from_secs(10))
        .expect("eventd ends on SIGKILL");
    let at_kill = committed_offsets(&broker, GROUP);
    let committed: i64 = at_kill.values().sum();
    assert!(
        committed > 0 && committed < total as i64,
        "the kill did not land mid-stream: {committed} of {total} committed ({at_kill:?})"
    );

    let eventd = eventd.restart();
    let started = Instant::now();
    let delivery = sink_after(&broker, total, Duration::from_secs(240), &eventd);
    eprintln!(
        "sigkill: {} committed at the kill, {} after the restart in {:?}",
        committed,
        delivery.summary(),
        started.elapsed()
    );
    delivery.assert_at_least_once_in_order("after SIGKILL and restart");
    let below_commit: Vec<String> = delivery
        .duplicated
        .iter()
        .flat_map(|(id, sources)| sources.iter().map(move |source| (id, source)))
        .filter(|(_, source)| source.offset < at_kill[&(source.topic.clone(), source.partition)])
        .map(|(id, source)| {
            format!(
                "{id} from {}/{}@{}",
                source.topic, source.partition, source.offset
            )
        })
        .collect();
    assert!(
        below_commit.is_empty(),
        "{} duplicates from below the offsets committed at the kill ({at_kill:?}), e.g. {:?}",
        below_commit.len(),
        &below_commit[..below_commit.len().min(10)]
    );
}

/// **Fast revoke and re-assign.** A second member joins and leaves within about a
/// second, so the first member's partitions are revoked and handed back to it: every
/// partition keeps flowing and its committed offset reaches the high watermark within
/// 10 s of the last produce; nothing is lost and per-key order holds.
#[test]
fn fast_revoke_and_reassign_keeps_every_partition_flowing() {
    let total = scaled(8_000);
    let _one_at_a_time = tansu_scenario();
    let broker = Broker::tansu(4, &all_topics());
    let first = start_on_tansu(&broker, FORWARD_ALL);
    assert!(
        first.wait_until(Duration::from_secs(60), |e| {
            e.http_get("/readyz").map(|r| r.0) == Some(200)
        }),
        "first member not ready; logs:\n{}",
        first.logs()
    );
    produce_spread(&broker, 0, total / 2);
    let mut second = start_on_tansu(&broker, FORWARD_ALL);
    assert!(
        first.wait_until(Duration::from_secs(60), |e| e.metric_reaches(
            "eventd_rebalances_total",
            &[("consumer", "main"), ("kind", "revoke")],
            1.0
        )),
        "the second member's join revoked nothing from the first; logs:\n{}",
        first.logs()
    );
    second.terminate(Duration::from_secs(25));
    produce_spread(&broker, total / 2, total / 2);
    let last_produce = Instant::now();
    for topic in TOPICS {
        let left = Duration::from_secs(10).saturating_sub(last_produce.elapsed());
        broker.expect_committed_to_end(GROUP, topic, left.max(Duration::from_millis(1)), &first);
    }
    eprintln!(
        "fast revoke: committed to the end {:?} after the last produce",
        last_produce.elapsed()
    );
    let delivery = Delivery::check(&produced_ids(total), &broker.read_all(SINK));
    eprintln!("fast revoke: {}", delivery.summary());
    delivery.assert_at_least_once_in_order("after a fast revoke and re-assign");
}

/// **Panicking handler under load.** A handler panicking once on every 1000th of 10,000 events is
/// restarted with backoff, the events it held are handled after redelivery (every id
/// in the sink, per-key order), and other partitions keep flowing meanwhile: between
/// the first restart and the last, the committed offsets of several partitions move.
#[test]
fn a_handler_panicking_under_load_loses_nothing_and_other_partitions_flow() {
    let total = scaled(10_000);
    let _one_at_a_time = tansu_scenario();
    let broker = Broker::tansu(4, &all_topics());
    produce_spread(&broker, 0, total);
    let eventd = start_eventd_with_env(
        &broker,
        r#"
[supervision]
max_restarts = 1000
backoff = "50ms"
max_backoff = "500ms"

[[consumers]]
name = "main"
topics = ["browse", "like", "favorite", "comment"]
# Fewer events held per slot, so a restart redelivers (and repeats) fewer.
max_in_flight = 200

[[handlers]]
name = "copy"
kind = "fault"
consumer = "main"
action = "panic"
every = 1000
once = true
concurrency = 4
output = "sink"
"#,
        &[(TANSU_SESSION.0, TANSU_SESSION.1.to_owned())],
    );
    let restarts = |e: &Eventd| {
        e.metric_if_present("eventd_actor_restarts_total", &[("actor", "handler/copy")])
            .unwrap_or(0.0)
    };
    // (restarts so far, committed offsets) every 200 ms while the events flow; the sink
    // is read once at the end (re-reading it every round would load tansu as much as
    // eventd does).
    let mut samples: Vec<(f64, Commits)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while forwarded(&eventd) < total as f64 && Instant::now() < deadline {
        let now = restarts(&eventd);
        if let Ok(offsets) = try_committed_offsets(&broker, GROUP) {
            samples.push((now, offsets));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sink = broker.expect_every_id(SINK, total, Duration::from_secs(120), &eventd);
    let delivery = Delivery::check(&produced_ids(total), &sink);
    let restarted = restarts(&eventd);
    // A last sample once everything is in: restarts can outlast the sampling loop.
    samples.push((restarted, committed_offsets(&broker, GROUP)));
    eprintln!(
        "panics: {restarted} restarts, {} commit samples, {}",
        samples.len(),
        delivery.summary()
    );
    delivery.assert_at_least_once_in_order("with a panicking handler");
    assert!(
        restarted >= (total / 1000 / 2) as f64,
        "only {restarted} restarts for {total} events with a panic every 1000th; logs:\n{}",
        eventd.logs()
    );
    // From the first sample that saw a restart (or the last one before, when every
    // restart fell between two samples) to the first that saw them all.
    let first_restart = samples.iter().position(|(n, _)| *n > 0.0);
    let all_restarts = samples.iter().position(|(n, _)| *n >= restarted);
    let (Some(from), Some(to)) = (first_restart, all_restarts) else {
        panic!(
            "no sample saw the restarts ({} samples); logs:\n{}",
            samples.len(),
            eventd.logs()
        );
    };
    let from = if from == to {
        from.saturating_sub(1)
    } else {
        from
    };
    let (before, after) = (&samples[from].1, &samples[to].1);
    let moved = before
        .iter()
        .filter(|(partition, offset)| after.get(*partition).is_some_and(|later| later > offset))
        .count();
    assert!(
        moved >= 2,
        "while the handler restarted (samples {from} to {to} of {}), only {moved} partitions committed further: {before:?} -> {after:?}",
        samples.len()
    );
}

/// **Slow handler with a large backlog** (mock cluster: it holds the backlog in memory
/// and starts at once). One `fault` actor sleeping up to 1 ms per event works through
/// 50,000 events of 1 KiB: every event is handled, the member is never evicted (no
/// revoke is counted, one assignment) and peak resident memory stays within the
/// README's budget for these settings.
#[test]
fn a_slow_handler_with_a_large_backlog_is_not_evicted_and_stays_in_budget() {
    let total = scaled(50_000);
    let partitions = 16;
    let broker = Broker::start(partitions, &["like"]);
    let padding = "x".repeat(1000);
    let backlog: Vec<(String, String)> = (0..total)
        .map(|id| {
            // Many keys, so no partition outgrows the mock cluster's ~5 MiB retention.
            let item = format!("item-{}", id % 1024);
            let mut body: serde_json::Value =
                serde_json::from_str(&event(id, &item)).expect("event json");
            body["text"] = padding.clone().into();
            (item, body.to_string())
        })
        .collect();
    broker.produce("like", &backlog);
    drop(backlog);
    let kept: i64 = broker
        .watermarks("like")
        .iter()
        .map(|(_, low, high)| high - low)
        .sum();
    assert_eq!(
        kept, total as i64,
        "the mock cluster dropped part of the backlog"
    );
    let eventd = start_eventd(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "slow"
kind = "fault"
consumer = "main"
action = "sleep"
every = 1
sleep = "1ms"
"#,
    );
    let started = Instant::now();
    assert!(
        eventd.wait_until(Duration::from_secs(300), |e| e.metric_reaches(
            "eventd_events_handled_total",
            &[("handler", "slow")],
            total as f64
        )),
        "not every event handled: {:?} of {total}; logs:\n{}",
        eventd.metric_if_present("eventd_events_handled_total", &[("handler", "slow")]),
        eventd.logs()
    );
    let (_, peak) = eventd.memory();
    eprintln!(
        "slow handler: {total} events handled in {:?}, peak RSS {} MiB",
        started.elapsed(),
        peak >> 20
    );
    assert_eq!(
        eventd.metric_if_present(
            "eventd_rebalances_total",
            &[("consumer", "main"), ("kind", "revoke")]
        ),
        None,
        "the member lost its partitions while the handler was slow; logs:\n{}",
        eventd.logs()
    );
    assert_eq!(
        eventd.metric(
            "eventd_rebalances_total",
            &[("consumer", "main"), ("kind", "assign")]
        ),
        1.0,
        "the member was assigned more than once"
    );
    // The README's budget at default settings (`fetch_buffer` 1 MiB, `max_in_flight`
    // 1,000, ~4 KiB per decoded 1 KiB event, 16 KiB batches from the test producer,
    // no writes), with the base of a debug build (~64 MiB) rather than a release one.
    let budget = (64 << 20) + partitions as u64 * (2 * (1 << 20) + (16 << 10) + 1000 * (4 << 10));
    assert!(
        peak <= budget,
        "peak RSS {} MiB above the budget {} MiB for {partitions} partitions",
        peak >> 20,
        budget >> 20
    );
}

/// **Commit failures and a coordinator move** (mock cluster with 2 brokers: only it can
/// fail commits on demand). OffsetCommit requests fail for a while, then the group's
/// coordinator moves to the other broker: commits succeed again,
/// `eventd_commit_failures_total` rose, the committed offsets sampled every 500 ms
/// never decrease, and every event is in the sink in per-key order.
#[test]
fn commit_failures_and_a_coordinator_move_lose_nothing() {
    use rdkafka::bindings::rd_kafka_resp_err_t::{
        RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
    };
    let total = scaled(8_000);
    let broker = Broker::start_cluster(2, 4, &all_topics());
    let cluster = broker.embedded();
    cluster
        .set_group_coordinator(GROUP, 1)
        .expect("coordinator on broker 1");
    produce_spread(&broker, 0, total / 2);
    let eventd = start_eventd(&broker, FORWARD_ALL);
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| forwarded(e) >= 100.0),
        "nothing forwarded; logs:\n{}",
        eventd.logs()
    );
    cluster
        .fail_requests(
            rdkafka::types::RDKafkaApiKey::OffsetCommit,
            &[RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 3]
                .into_iter()
                .chain([RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE; 3])
                .collect::<Vec<_>>(),
        )
        .expect("inject commit errors");
    let mut samples: Vec<HashMap<(String, i32), i64>> = Vec::new();
    let sample_until =
        |samples: &mut Vec<_>, done: &dyn Fn(&Eventd) -> bool, patience: Duration| {
            let deadline = Instant::now() + patience;
            while !done(&eventd) && Instant::now() < deadline {
                samples.push(committed_offsets(&broker, GROUP));
                std::thread::sleep(Duration::from_millis(500));
            }
            done(&eventd)
        };
    let failures =
        |e: &Eventd| e.metric_reaches("eventd_commit_failures_total", &[("consumer", "main")], 1.0);
    assert!(
        sample_until(&mut samples, &failures, Duration::from_secs(30)),
        "no commit failure counted; logs:\n{}",
        eventd.logs()
    );
    cluster
        .set_group_coordinator(GROUP, 2)
        .expect("coordinator moves to broker 2");
    produce_spread(&broker, total / 2, total - total / 2);
    let everything = |e: &Eventd| forwarded(e) >= total as f64;
    sample_until(&mut samples, &everything, Duration::from_secs(60));
    for topic in TOPICS {
        broker.expect_committed_to_end(GROUP, topic, Duration::from_secs(30), &eventd);
    }
    samples.push(committed_offsets(&broker, GROUP));
    for pair in samples.windows(2) {
        for (partition, before) in &pair[0] {
            let after = pair[1].get(partition).copied().unwrap_or(0);
            assert!(
                after >= *before,
                "{partition:?}: committed offset went back from {before} to {after}"
            );
        }
    }
    let delivery = Delivery::check(&produced_ids(total), &broker.read_all(SINK));
    eprintln!(
        "commit failures: {} failures counted, {} samples, {}",
        eventd.metric("eventd_commit_failures_total", &[("consumer", "main")]),
        samples.len(),
        delivery.summary()
    );
    delivery.assert_at_least_once_in_order("after commit failures and a coordinator move");
}

// The checker itself: it must fail on a dropped event, a duplicate and a reordered key.
fn copy(partition: i32, offset: i64, key: &str, id: usize, source_offset: i64) -> Record {
    Record {
        partition,
        offset,
        key: Some(key.to_owned()),
        payload: format!("{{\"event_id\":\"e-{id}\"}}").into_bytes(),
        headers: [
            ("eventd.source.topic", "like".to_owned()),
            ("eventd.source.partition", "0".to_owned()),
            ("eventd.source.offset", source_offset.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    }
}

#[test]
fn checker_passes_a_clean_sink() {
    let sink = vec![
        copy(0, 0, "a", 0, 0),
        copy(0, 1, "b", 1, 1),
        copy(0, 2, "a", 2, 2),
    ];
    let delivery = Delivery::check(&produced_ids(3), &sink);
    delivery.assert_exactly_once_in_order("clean");
}

#[test]
fn checker_reports_a_dropped_event() {
    let sink = vec![copy(0, 0, "a", 0, 0), copy(0, 1, "a", 2, 2)];
    let delivery = Delivery::check(&produced_ids(3), &sink);
    assert_eq!(delivery.missing, vec!["e-1".to_owned()]);
    assert!(
        std::panic::catch_unwind(|| delivery.assert_at_least_once_in_order("dropped")).is_err()
    );
}

#[test]
fn checker_counts_a_duplicate_with_its_sources() {
    let sink = vec![
        copy(0, 0, "a", 0, 0),
        copy(0, 1, "a", 1, 1),
        copy(0, 2, "a", 1, 1),
    ];
    let delivery = Delivery::check(&produced_ids(2), &sink);
    delivery.assert_at_least_once_in_order("a repeat keeps order");
    assert_eq!(delivery.duplicates(), 1);
    assert_eq!(delivery.duplicated["e-1"].len(), 2);
    assert!(std::panic::catch_unwind(|| delivery.assert_exactly_once_in_order("dup")).is_err());
}

#[test]
fn checker_reports_a_reordered_key() {
    let sink = vec![copy(0, 0, "a", 1, 1), copy(0, 1, "a", 0, 0)];
    let delivery = Delivery::check(&produced_ids(2), &sink);
    assert_eq!(
        delivery.order_violations.len(),
        1,
        "{:?}",
        delivery.order_violations
    );
    assert!(
        std::panic::catch_unwind(|| delivery.assert_at_least_once_in_order("reorder")).is_err()
    );
}

/// Committed offsets sampled while a scenario runs; they must never go back.
struct CommitSampler<'a> {
    broker: &'a Broker,
    samples: Vec<HashMap<(String, i32), i64>>,
    /// Samples the busy broker did not answer in time.
    missed: usize,
}

impl<'a> CommitSampler<'a> {
    fn new(broker: &'a Broker) -> Self {
        CommitSampler {
            broker,
            samples: Vec::new(),
            missed: 0,
        }
    }

    /// Samples every 500 ms until `done` holds or `patience` passes; returns `done`.
    fn wait(&mut self, patience: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + patience;
        loop {
            match try_committed_offsets(self.broker, GROUP) {
                Ok(offsets) => self.samples.push(offsets),
                Err(_) => self.missed += 1,
            }
            if done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn assert_never_decreased(&self) {
        for (index, pair) in self.samples.windows(2).enumerate() {
            for (partition, before) in &pair[0] {
                let after = pair[1].get(partition).copied().unwrap_or(0);
                assert!(
                    after >= *before,
                    "{partition:?}: committed offset went back from {before} to {after} (sample {index} of {})",
                    self.samples.len()
                );
            }
        }
    }
}

/// **Scale-out and rebalance churn**, one test per assignor. Three eventd processes in
/// one group are started and stopped staggered while events are produced: no id is
/// missing, per-key order holds, committed offsets sampled every 500 ms never decrease,
/// every process handled some events, and a fresh member joining at the end reads
/// nothing it was not given after joining.
fn scale_out_and_rebalance_churn(assignment: &str) {
    let chunk = scaled(2_000);
    // While a member joins, events keep coming in steps, so the new owner of a
    // partition has events to handle once its assignment lands (what was produced
    // before may all be handled by the previous owner first).
    let step = scaled(200);
    let broker = membership_broker(4, &all_topics());
    let config = FORWARD_ALL.replace(
        "name = \"main\"\n",
        &format!("name = \"main\"\nassignment = \"{assignment}\"\n"),
    );
    let mut sampler = CommitSampler::new(&broker);
    let mut produced = 0;
    let mut produce = |broker: &Broker, events: usize| {
        produce_spread(broker, produced, events);
        produced += events;
    };
    let has_forwarded = |e: &Eventd| forwarded(e) > 0.0;
    let patience = Duration::from_secs(120);

    let mut members = vec![start_eventd(&broker, &config)];
    produce(&broker, chunk);
    // Every partition has a commit before the group grows, so every later owner starts
    // from a commit, never from auto.offset.reset.
    let every_partition_committed = || {
        TOPICS.iter().all(|topic| {
            broker
                .committed(GROUP, topic)
                .iter()
                .all(|(_, offset)| offset.is_some())
        })
    };
    assert!(
        sampler.wait(patience, || has_forwarded(&members[0])
            && every_partition_committed()),
        "member 1 did not forward and commit on every partition; logs:\n{}",
        members[0].logs()
    );
    for joining in 1..3 {
        members.push(start_eventd(&broker, &config));
        let member = &members[joining];
        let mut steps = 0;
        let joined = sampler.wait(patience, || {
            if steps < 40 {
                produce(&broker, step);
                steps += 1;
            }
            has_forwarded(member)
        });
        assert!(
            joined,
            "member {} forwarded nothing after joining ({steps} steps of {step} events meanwhile); logs:\n{}",
            joining + 1,
            member.logs()
        );
    }
    let mut handled = Vec::new();
    for leaving in members.iter_mut().take(2) {
        handled.push(forwarded(leaving));
        leaving.terminate(Duration::from_secs(30));
        produce(&broker, chunk);
    }
    let total = produced;
    let last = &members[2];
    let done = sampler.wait(Duration::from_secs(180), || {
        TOPICS
            .iter()
            .all(|topic| broker.committed_to_end(GROUP, topic))
    });
    assert!(
        done,
        "the last member did not commit to the end; logs:\n{}",
        last.logs()
    );
    handled.push(forwarded(last));
    sampler.assert_never_decreased();
    let delivery = Delivery::check(&produced_ids(total), &broker.read_all(SINK));
    eprintln!(
        "churn ({assignment}): handled per member {handled:?}, {} commit samples ({} missed), {}",
        sampler.samples.len(),
        sampler.missed,
        delivery.summary()
    );
    delivery.assert_at_least_once_in_order(&format!("rebalance churn with {assignment}"));
    assert!(
        handled.iter().all(|n| *n > 0.0),
        "a member handled nothing: {handled:?}"
    );

    members[2].terminate(Duration::from_secs(30));
    // A fresh member starts at the commits: one marker event per topic, produced after
    // it joined, is all it may read.
    let fresh = start_eventd(&broker, &config);
    assert!(
        fresh.wait_until(Duration::from_secs(60), |e| e
            .http_get("/readyz")
            .map(|r| r.0)
            == Some(200)),
        "fresh member not ready; logs:\n{}",
        fresh.logs()
    );
    produce_spread(&broker, total, TOPICS.len());
    assert!(
        fresh.wait_until(Duration::from_secs(60), |e| forwarded(e)
            >= TOPICS.len() as f64),
        "fresh member did not forward the markers; logs:\n{}",
        fresh.logs()
    );
    assert_eq!(
        fresh.metric("eventd_events_consumed_total", &[("consumer", "main")]),
        TOPICS.len() as f64,
        "the fresh member read events below the group's commits"
    );
}

#[test]
fn scale_out_and_rebalance_churn_with_range() {
    scale_out_and_rebalance_churn("range");
}

#[test]
fn scale_out_and_rebalance_churn_with_cooperative_sticky() {
    scale_out_and_rebalance_churn("cooperative-sticky");
}

/// **Count after SIGKILL across several processes.** Two processes count one topic in
/// one group; one is SIGKILLed mid-window and restarted: for every value, the counts
/// emitted over all records sum to at least the events produced for it (a crash
/// recounts, it never loses).
#[test]
fn count_after_sigkill_across_processes_never_undercounts() {
    let total = scaled(6_000);
    let broker = membership_broker(4, &["like", "counts"]);
    let config = r#"
[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "tally"
kind = "count"
consumer = "main"
group_by = "item_id"
window = "3s"
output = "counts"
"#;
    let first = start_eventd(&broker, config);
    let mut second = start_eventd(&broker, config);
    let counted = |e: &Eventd| {
        e.metric_if_present("eventd_events_handled_total", &[("handler", "tally")])
            .unwrap_or(0.0)
    };
    // Both must own partitions before the first half is produced: a member that joins
    // after the other has read the whole first half has nothing to count before the kill.
    let owns_partitions = |e: &Eventd| {
        e.log_lines("partition worker started").len()
            > e.log_lines("partition worker stopped").len()
    };
    assert!(
        first.wait_until(Duration::from_secs(120), owns_partitions)
            && second.wait_until(Duration::from_secs(120), owns_partitions),
        "both processes must own partitions before the first half; logs:\n{}\n{}",
        first.logs(),
        second.logs()
    );
    let backlog = events(total, 20);
    broker.produce("like", &backlog[..total / 2]);
    assert!(
        second.wait_until(Duration::from_secs(120), |e| counted(e) > 0.0)
            && first.wait_until(Duration::from_secs(120), |e| counted(e) > 0.0),
        "both processes must count before the kill; logs:\n{}\n{}",
        first.logs(),
        second.logs()
    );
    second.signal("KILL");
    second
        .wait_exit(Duration::from_secs(10))
        .expect("SIGKILL ends eventd");
    broker.produce("like", &backlog[total / 2..]);
    let second = second.restart();
    let mut produced_per_value: HashMap<String, u64> = HashMap::new();
    for (key, _) in &backlog {
        *produced_per_value.entry(key.clone()).or_default() += 1;
    }
    let sums = |records: &[Record]| {
        let mut sums: HashMap<String, u64> = HashMap::new();
        for record in records {
            let json = record.json();
            let value = json["value"]
                .as_str()
                .expect("count record value")
                .to_owned();
            *sums.entry(value).or_default() += json["count"].as_u64().expect("count");
        }
        sums
    };
    let covered = |records: &[Record]| {
        let sums = sums(records);
        produced_per_value
            .iter()
            .all(|(value, n)| sums.get(value).copied().unwrap_or(0) >= *n)
    };
    let records = broker.wait_for("counts", Duration::from_secs(180), covered);
    let got = sums(&records);
    let short: Vec<String> = produced_per_value
        .iter()
        .filter(|(value, n)| got.get(*value).copied().unwrap_or(0) < **n)
        .map(|(value, n)| format!("{value}: {} of {n}", got.get(value).copied().unwrap_or(0)))
        .collect();
    let recounted = got.values().sum::<u64>().saturating_sub(total as u64);
    eprintln!(
        "count after SIGKILL: {} records, {recounted} counted twice",
        records.len()
    );
    assert!(
        short.is_empty(),
        "values undercounted after a SIGKILL: {short:?}; logs:\n{}\n{}",
        first.logs(),
        second.logs()
    );
}

/// **Static member restart.** With `static_membership = true` and a 30 s session, a
/// member stopped and started again within 10 s gets its partitions back without a
/// rebalance of the other member (its `eventd_rebalances_total` unchanged), and
/// nothing is lost.
#[test]
fn a_static_member_restarted_quickly_causes_no_rebalance() {
    let total = scaled(4_000);
    let _one_at_a_time = tansu_scenario();
    let broker = Broker::tansu(4, &all_topics());
    let config = FORWARD_ALL.replace(
        "name = \"main\"\n",
        "name = \"main\"\nstatic_membership = true\n",
    );
    let member = |name: &str| {
        start_eventd_with_env(
            &broker,
            &config,
            &[
                ("EVENTD__KAFKA__SESSION_TIMEOUT", "30s".to_owned()),
                ("EVENTD__KAFKA__CLIENT_ID", format!("eventd-{name}")),
            ],
        )
    };
    let stays = member("a");
    let mut restarted = member("b");
    produce_spread(&broker, 0, total / 2);
    assert!(
        stays.wait_until(Duration::from_secs(120), |e| forwarded(e) > 0.0)
            && restarted.wait_until(Duration::from_secs(120), |e| forwarded(e) > 0.0),
        "both members must forward before the restart; logs:\n{}\n{}",
        stays.logs(),
        restarted.logs()
    );
    let rebalances = |e: &Eventd| {
        ["assign", "revoke"].map(|kind| {
            e.metric_if_present(
                "eventd_rebalances_total",
                &[("consumer", "main"), ("kind", kind)],
            )
            .unwrap_or(0.0)
        })
    };
    // Settled: the group is stable once both have forwarded and the counts hold still.
    let mut before = rebalances(&stays);
    assert!(
        stays.wait_until(Duration::from_secs(30), |e| {
            let now = rebalances(e);
            let settled = now == before && broker.read_all(SINK).len() >= total / 2;
            before = now;
            settled
        }),
        "the group did not settle; logs:\n{}",
        stays.logs()
    );
    let stopped = Instant::now();
    restarted.terminate(Duration::from_secs(25));
    let restarted = restarted.restart();
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "the restart took {:?}, past the 10 s this scenario is about",
        stopped.elapsed()
    );
    produce_spread(&broker, total / 2, total - total / 2);
    let delivery = sink_after(&broker, total, Duration::from_secs(120), &stays);
    assert!(
        restarted.wait_until(Duration::from_secs(30), |e| forwarded(e) > 0.0),
        "the restarted member got no partitions back; logs:\n{}",
        restarted.logs()
    );
    let after = rebalances(&stays);
    eprintln!(
        "static restart: rebalances of the other member {before:?} -> {after:?}, {}",
        delivery.summary()
    );
    assert_eq!(
        after,
        before,
        "the other member was rebalanced by a static member's quick restart; logs:\n{}",
        stays.logs()
    );
    delivery.assert_at_least_once_in_order("after a static member's restart");
}
