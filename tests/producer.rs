//! The producer side through `eventd produce` and the daemon: sync and async modes,
//! partitioners as other clients place keys, retries and failures, against the
//! embedded broker and tansu.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use eventd::actors::producer::partitioner::{java_partition, sarama_partition};
use rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::ClientConfig;

struct Produced {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Produced {
    /// `(topic, partition, offset)` of every `--sync` output line.
    fn placements(&self) -> Vec<(String, i32, i64)> {
        self.stdout
            .lines()
            .map(|line| {
                let mut parts = line.split(' ');
                let (Some(topic), Some(partition), Some(offset), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    panic!("not `topic partition offset`: {line:?}");
                };
                (
                    topic.to_owned(),
                    partition.parse().expect("partition"),
                    offset.parse().expect("offset"),
                )
            })
            .collect()
    }
}

/// Runs `eventd produce` against `broker` with `config` and `args`, feeding `stdin`.
fn produce(broker: &Broker, config: &str, args: &[&str], stdin: &str) -> Produced {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("eventd.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .arg("produce")
        .arg("--config")
        .arg(&path)
        .args(["--brokers", &broker.bootstrap()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("eventd produce starts");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || input.write_all(stdin.as_bytes()));
    let output = child.wait_with_output().expect("eventd produce ends");
    writer.join().expect("stdin writer").expect("stdin written");
    Produced {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn lines(count: usize, keys: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"item_id\":\"item-{}\",\"shard\":{}}}\n",
                i % keys,
                i % 4
            )
        })
        .collect()
}

fn sync_offsets_increase_and_keys_land_where_sarama_puts_them(broker: &Broker) {
    let total = 400;
    let out = produce(
        broker,
        "",
        &["--sync", "--topic", "like"],
        &lines(total, 37),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let placements = out.placements();
    assert_eq!(
        placements.len(),
        total,
        "one line per event: {}",
        out.stdout
    );
    let mut last: HashMap<i32, i64> = HashMap::new();
    for (i, (topic, partition, offset)) in placements.iter().enumerate() {
        assert_eq!(topic, "like");
        let key = format!("item-{}", i % 37);
        assert_eq!(*partition, sarama_partition(key.as_bytes(), 4), "key {key}");
        if let Some(previous) = last.insert(*partition, *offset) {
            assert!(
                *offset > previous,
                "partition {partition}: offset {offset} after {previous}"
            );
        }
    }
    // What the broker holds agrees with what was printed.
    let records = broker.read_all("like");
    assert_eq!(records.len(), total);
    for record in records {
        let id = record.json()["id"].as_u64().expect("id") as usize;
        assert_eq!(
            (record.partition, record.offset),
            (placements[id].1, placements[id].2)
        );
    }
}

#[test]
fn sync_mode_on_the_embedded_broker() {
    sync_offsets_increase_and_keys_land_where_sarama_puts_them(&Broker::start(4, &["like"]));
}

#[test]
fn sync_mode_on_tansu() {
    sync_offsets_increase_and_keys_land_where_sarama_puts_them(&Broker::tansu(4, &["like"]));
}

/// Runs `eventd tail --brokers <broker>` with `args`.
fn tail(broker: &Broker, args: &[&str]) -> Produced {
    let output = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .arg("tail")
        .args(["--brokers", &broker.bootstrap()])
        .args(args)
        .output()
        .expect("eventd tail runs");
    Produced {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn tail_prints_what_produce_reported_writing(broker: &Broker) {
    let total = 60;
    let input = lines(total, 7);
    let out = produce(broker, "", &["--sync", "--topic", "like"], &input);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut written: Vec<(String, i32, i64)> = out.placements();
    let by_place: HashMap<(i32, i64), &str> = written
        .iter()
        .zip(input.lines())
        .map(|((_, partition, offset), line)| ((*partition, *offset), line))
        .collect();

    let shown = tail(broker, &["--topic", "like"]);
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    let mut last: HashMap<i32, i64> = HashMap::new();
    let mut printed = Vec::new();
    for line in shown.stdout.lines() {
        let mut parts = line.splitn(5, ' ');
        let (Some(topic), Some(partition), Some(offset), Some(key), Some(value)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            panic!("not `topic partition offset key value`: {line:?}");
        };
        let (partition, offset): (i32, i64) = (
            partition.parse().expect("partition"),
            offset.parse().expect("offset"),
        );
        if let Some(previous) = last.insert(partition, offset) {
            assert!(
                offset > previous,
                "partition {partition}: {offset} after {previous}"
            );
        }
        let sent = by_place[&(partition, offset)];
        assert_eq!(value, sent, "the value as sent");
        let item: serde_json::Value = serde_json::from_str(sent).expect("json line");
        assert_eq!(key, item["item_id"], "the key is the item id");
        printed.push((topic.to_owned(), partition, offset));
    }
    written.sort();
    printed.sort();
    assert_eq!(printed, written, "tail shows exactly what produce wrote");

    let one = tail(
        broker,
        &[
            "--topic",
            "like",
            "--partition",
            "1",
            "--from",
            "2",
            "--count",
            "3",
            "--json",
        ],
    );
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    let objects: Vec<serde_json::Value> = one
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(
        objects
            .iter()
            .map(|o| (o["partition"].clone(), o["offset"].clone()))
            .collect::<Vec<_>>(),
        [
            (1.into(), 2.into()),
            (1.into(), 3.into()),
            (1.into(), 4.into())
        ],
        "{}",
        one.stdout
    );
    assert!(objects
        .iter()
        .all(|o| o["timestamp"].is_i64() && o["headers"].is_object()));
    assert_eq!(objects[0]["value"], by_place[&(1, 2)]);

    let missing = tail(broker, &["--topic", "like", "--partition", "9"]);
    assert_ne!(missing.code, Some(0));
    assert!(
        missing.stderr.contains("no partition 9"),
        "{}",
        missing.stderr
    );
}

#[test]
fn tail_shows_what_produce_wrote_on_the_embedded_broker() {
    tail_prints_what_produce_reported_writing(&Broker::start(4, &["like"]));
}

#[test]
fn tail_shows_what_produce_wrote_on_tansu() {
    tail_prints_what_produce_reported_writing(&Broker::tansu(4, &["like"]));
}

fn async_delivers_every_event_and_watermarks_agree(broker: &Broker) {
    let out = produce(
        broker,
        "",
        &["--count", "20000", "--topic", "browse", "--keys", "500"],
        "",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("sent 20000, failed 0, ") && out.stdout.contains("events/s"),
        "summary: {}",
        out.stdout
    );
    let held: i64 = broker
        .watermarks("browse")
        .iter()
        .map(|(_, low, high)| high - low)
        .sum();
    assert_eq!(held, 20_000, "watermarks {:?}", broker.watermarks("browse"));
}

/// `eventd tail --follow` does not stop at the end of the partitions: events written
/// after it reached the end are printed too, until it is stopped.
#[test]
fn tail_follow_prints_events_written_after_it_reached_the_end() {
    let broker = Broker::start(3, &["like"]);
    let all = events(10, 4);
    broker.produce("like", &all[..5]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .arg("tail")
        .args([
            "--brokers",
            &broker.bootstrap(),
            "--topic",
            "like",
            "--follow",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("eventd tail runs");
    let stdout = child.stdout.take().expect("tail stdout");
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if lines.send(line.expect("tail output")).is_err() {
                return;
            }
        }
    });
    let read_ids = |count: usize| -> Vec<String> {
        (0..count)
            .map(|n| {
                printed
                    .recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| panic!("tail printed only {n} of {count} more lines"))
            })
            .map(|line| {
                (0..all.len())
                    .map(|id| format!("e-{id}"))
                    .find(|id| line.contains(&format!("\"{id}\"")))
                    .unwrap_or_else(|| panic!("no event id in {line:?}"))
            })
            .collect()
    };
    let mut before = read_ids(5);
    before.sort();
    assert_eq!(before, ["e-0", "e-1", "e-2", "e-3", "e-4"]);
    // A tail without --follow exits here; these are printed only if it kept reading.
    broker.produce("like", &all[5..]);
    let mut after = read_ids(5);
    after.sort();
    assert_eq!(after, ["e-5", "e-6", "e-7", "e-8", "e-9"]);
    assert!(
        child.try_wait().expect("tail status").is_none(),
        "tail --follow exited on its own"
    );
    child.kill().expect("stop tail");
    let _ = child.wait();
}

#[test]
fn async_mode_on_the_embedded_broker() {
    async_delivers_every_event_and_watermarks_agree(&Broker::start(4, &["browse"]));
}

#[test]
fn async_mode_on_tansu() {
    async_delivers_every_event_and_watermarks_agree(&Broker::tansu(4, &["browse"]));
}

const PARTITIONERS: &str = r#"
[producer]
partitioner = "round_robin"

[producer.outputs.sharded]
partitioner = "manual"
partition_field = "shard"

[producer.outputs.java]
partitioner = "murmur2"
"#;

fn round_robin_manual_and_murmur2_per_output(broker: &Broker) {
    let out = produce(
        broker,
        PARTITIONERS,
        &["--sync", "--topic", "spread"],
        &lines(40, 3),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let partitions: Vec<i32> = out.placements().iter().map(|p| p.1).collect();
    for cycle in partitions.chunks(4) {
        let mut sorted = cycle.to_vec();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [0, 1, 2, 3],
            "every cycle covers each partition once: {partitions:?}"
        );
    }

    let out = produce(
        broker,
        PARTITIONERS,
        &["--sync", "--topic", "sharded"],
        &lines(20, 3),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for (i, (_, partition, _)) in out.placements().iter().enumerate() {
        assert_eq!(
            *partition,
            (i % 4) as i32,
            "event {i} names shard {}",
            i % 4
        );
    }
    let refused = produce(
        broker,
        PARTITIONERS,
        &["--sync", "--topic", "sharded"],
        "{\"item_id\":\"a\",\"shard\":9}\n{\"item_id\":\"b\"}\n",
    );
    assert_eq!(refused.code, Some(1), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("line 1: topic \"sharded\": partition 9 is outside the topic's 4 partitions")
            && refused.stderr.contains("line 2: topic \"sharded\": partitioner \"manual\": the event has no integer field \"shard\"")
            && refused.stderr.contains("sent 0, failed 2"),
        "{}",
        refused.stderr
    );

    let out = produce(
        broker,
        PARTITIONERS,
        &["--sync", "--topic", "java"],
        &lines(50, 50),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for (i, (_, partition, _)) in out.placements().iter().enumerate() {
        let key = format!("item-{i}");
        assert_eq!(*partition, java_partition(key.as_bytes(), 4), "key {key}");
    }
}

#[test]
fn partitioners_on_the_embedded_broker() {
    round_robin_manual_and_murmur2_per_output(&Broker::start(4, &["spread", "sharded", "java"]));
}

#[test]
fn partitioners_on_tansu() {
    round_robin_manual_and_murmur2_per_output(&Broker::tansu(4, &["spread", "sharded", "java"]));
}

/// librdkafka's `murmur2` partitioner is documented as the Java client's; eventd's own
/// placement must agree with it key for key.
#[test]
fn murmur2_agrees_with_librdkafkas_java_compatible_partitioner() {
    let broker = Broker::start(7, &["java"]);
    let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("partitioner", "murmur2")
        .create()
        .expect("producer");
    let keys: Vec<String> = (0..300)
        .map(|i| format!("user:{i}:{}", "x".repeat(i % 9)))
        .collect();
    for key in &keys {
        producer
            .send(
                BaseRecord::to("java")
                    .key(key.as_str())
                    .payload(key.as_str()),
            )
            .map_err(|(error, _)| error)
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let records = broker.read_all("java");
    assert_eq!(records.len(), keys.len());
    for record in records {
        let key = record.key.expect("key");
        assert_eq!(
            record.partition,
            java_partition(key.as_bytes(), 7),
            "key {key}"
        );
    }
}

const FEW_RETRIES: &str = r#"
[producer]
retries = 3
retry_backoff = "10ms"
max_retry_backoff = "20ms"
"#;

#[test]
fn a_failed_delivery_is_retried_then_reported_as_failed() {
    let broker = Broker::start(1, &["like"]);
    let event = "{\"item_id\":\"a\"}\n";

    broker
        .embedded()
        .fail_produce_requests(&[RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3])
        .expect("inject");
    let retried = produce(&broker, FEW_RETRIES, &["--sync", "--topic", "like"], event);
    assert_eq!(
        retried.code,
        Some(0),
        "three failures fit in three retries: {}",
        retried.stderr
    );
    assert_eq!(retried.placements(), [("like".to_owned(), 0, 0)]);

    broker
        .embedded()
        .fail_produce_requests(&[RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 4])
        .expect("inject");
    let failed = produce(&broker, FEW_RETRIES, &["--sync", "--topic", "like"], event);
    assert_eq!(
        failed.code,
        Some(1),
        "a fourth failure exhausts the retries"
    );
    assert!(
        failed.stdout.is_empty(),
        "nothing reported as delivered: {}",
        failed.stdout
    );
    assert!(
        failed
            .stderr
            .contains("line 1: delivery to topic \"like\" failed")
            && failed.stderr.contains("sent 0, failed 1"),
        "{}",
        failed.stderr
    );
    assert_eq!(
        broker.read_all("like").len(),
        1,
        "only the first event was stored"
    );

    // Async, the default: the failure is still reported with its line, after the
    // events sent before it went out.
    broker
        .embedded()
        .fail_produce_requests(&[RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 4])
        .expect("inject");
    let failed = produce(&broker, FEW_RETRIES, &["--topic", "like"], event);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert!(
        failed
            .stderr
            .contains("line 1: delivery to topic \"like\" failed")
            && failed.stdout.contains("sent 0, failed 1"),
        "stdout: {}\nstderr: {}",
        failed.stdout,
        failed.stderr
    );
    assert_eq!(broker.read_all("like").len(), 1);
}

#[test]
fn the_daemon_counts_failed_deliveries_and_redelivers_the_events() {
    let broker = Broker::start(1, &["like", "out"]);
    let total = 300;
    broker.produce("like", &events(total, 20));
    // Queued after the test's own writes, so only eventd's produce requests fail.
    broker
        .embedded()
        .fail_produce_requests(&[RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 12])
        .expect("inject");
    let eventd = start_eventd(&broker, &format!("{FEW_RETRIES}\n{COPY_LIKE_TO_OUT}"));
    broker.expect_every_id("out", total, Duration::from_secs(40), &eventd);
    let failed = eventd.metric(
        "eventd_producer_messages_total",
        &[("topic", "out"), ("outcome", "failed")],
    );
    assert!(
        failed >= 1.0,
        "failed deliveries counted: {failed}; {}",
        eventd.logs()
    );
    let delivered = eventd.metric(
        "eventd_producer_messages_total",
        &[("topic", "out"), ("outcome", "delivered")],
    );
    assert!(delivered >= total as f64, "delivered {delivered}");
    assert_eq!(eventd.metric("eventd_producer_queue_depth", &[]), 0.0);
    let (_, metrics) = eventd.http_get("/metrics").expect("metrics");
    assert!(
        metrics.contains("eventd_producer_delivery_seconds_bucket"),
        "delivery histogram exported"
    );
}

/// A fatal producer error (as when a fenced idempotent producer can send no more)
/// restarts the ProducerActor; no event is lost or reported delivered on its way.
#[cfg(feature = "fault-injection")]
#[test]
fn a_fatal_producer_error_restarts_the_producer_without_losing_events() {
    let broker = Broker::start(2, &["like", "out"]);
    let total = 3_000;
    broker.produce("like", &events(total, 50));
    let eventd = start_eventd(
        &broker,
        &format!(
            r#"{COPY_LIKE_TO_OUT}
[[handlers]]
name = "breaker"
kind = "fault"
consumer = "main"
action = "producer_fatal"
offsets = [700]
once = true
"#
        ),
    );
    broker.expect_every_id("out", total, Duration::from_secs(60), &eventd);
    let restarts = eventd.metric("eventd_actor_restarts_total", &[("actor", "producer")]);
    assert!(restarts >= 1.0, "producer restarted: {}", eventd.logs());
    assert!(eventd.logs().contains("fatal producer error"));
    assert!(eventd
        .http_get("/healthz")
        .is_some_and(|(status, _)| status == 200));
}

#[test]
fn produce_reads_a_file_and_refuses_what_it_cannot_use() {
    let broker = Broker::start(2, &["like"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, lines(10, 3)).expect("write input");
    let input = input.display().to_string();
    let from_file = produce(&broker, "", &["--topic", "like", "--input", &input], "");
    assert_eq!(from_file.code, Some(0), "{}", from_file.stderr);
    assert!(
        from_file.stdout.starts_with("sent 10, failed 0"),
        "{}",
        from_file.stdout
    );

    let missing = produce(
        &broker,
        "",
        &["--topic", "like", "--input", "/nonexistent.jsonl"],
        "",
    );
    assert_eq!(missing.code, Some(66));
    assert!(
        missing.stderr.contains("/nonexistent.jsonl: cannot open"),
        "{}",
        missing.stderr
    );

    let bad_config = produce(
        &broker,
        "[producer]\nacks = \"1\"\n",
        &["--topic", "like"],
        "",
    );
    assert_eq!(bad_config.code, Some(78));
    assert!(
        bad_config.stderr.contains("producer.idempotence")
            && bad_config.stderr.contains("producer.acks"),
        "{}",
        bad_config.stderr
    );

    let no_broker = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .args(["produce", "--topic", "like"])
        .env_remove("EVENTD__KAFKA__BROKERS")
        .output()
        .expect("eventd produce runs");
    assert_eq!(no_broker.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&no_broker.stderr).contains("--brokers"));

    let unreachable = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .args(["produce", "--topic", "like", "--count", "1"])
        .args(["--brokers", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("eventd produce runs");
    assert_eq!(unreachable.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach brokers"));
}

/// The daemon in sync mode on a real broker: a forward handler's copies arrive whole,
/// on the partitions sarama would choose for their keys.
#[test]
fn the_daemon_forwards_in_sync_mode_on_tansu() {
    let broker = Broker::tansu(3, &["like", "out"]);
    let total = 500;
    broker.produce("like", &events(total, 25));
    let eventd = start_eventd(
        &broker,
        &format!("[producer]\nmode = \"sync\"\n{COPY_LIKE_TO_OUT}concurrency = 2\n"),
    );
    let out = broker.expect_every_id("out", total, Duration::from_secs(60), &eventd);
    for record in &out {
        let key = record.key.as_deref().expect("copies keep the key");
        assert_eq!(
            record.partition,
            sarama_partition(key.as_bytes(), 3),
            "key {key}"
        );
    }
    assert!(
        eventd.logs().contains("\"mode\":\"sync\""),
        "{}",
        eventd.logs()
    );
}

/// Async sends are pipelined but bounded: with `max_in_flight` events unacknowledged
/// (the broker is down), the next send waits instead of queueing without limit, and
/// goes once the broker is back; none of them is lost.
#[tokio::test(flavor = "multi_thread")]
async fn async_sends_wait_while_max_in_flight_events_are_unacknowledged() {
    use eventd::actors::producer::{Outgoing, ProducerActor, ProducerArgs};
    use eventd::kafka::Brokers;
    use std::sync::Arc;

    let broker = Broker::start(1, &["like"]);
    let mut config = eventd::config::Config::default();
    config.producer.max_in_flight = 2;
    let handle = ProducerActor::handle(&config);
    let (actor, task) = ractor::Actor::spawn(
        None,
        ProducerActor,
        ProducerArgs {
            config: Arc::new(config),
            brokers: Brokers {
                bootstrap: broker.bootstrap(),
                embedded: true,
            },
            handle: handle.clone(),
        },
    )
    .await
    .expect("producer starts");
    let event = |id: u32| Outgoing {
        topic: "like".to_owned(),
        key: Some(b"item-1".to_vec()),
        payload: format!("{{\"id\":{id}}}").into_bytes(),
        headers: Vec::new(),
    };
    handle.send(event(0)).await.expect("first event delivered");

    broker.embedded().set_available(false).expect("broker down");
    let first = handle.enqueue(event(1)).await.expect("queued");
    let second = handle.enqueue(event(2)).await.expect("queued");
    let mut third = Box::pin(handle.enqueue(event(3)));
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut third)
            .await
            .is_err(),
        "a third send went out while two were unacknowledged"
    );

    broker.embedded().set_available(true).expect("broker up");
    let third = tokio::time::timeout(Duration::from_secs(30), third)
        .await
        .expect("the third send goes once the broker acknowledges")
        .expect("queued");
    let mut offsets = Vec::new();
    for pending in [first, second, third] {
        offsets.push(pending.wait().await.expect("delivered").offset);
    }
    assert_eq!(offsets, [1, 2, 3]);
    actor.stop(None);
    task.await.expect("producer stops");
}

/// An event no retry can send (too large, or no valid partition under `manual`) goes
/// to the dead-letter topic with the reason, and its partition moves on.
#[test]
fn events_that_can_never_be_forwarded_are_dead_lettered() {
    let broker = Broker::start(2, &["like", "out", "dlq"]);
    let mut events: Vec<(String, String)> = (0..100)
        .map(|id| {
            let mut body: serde_json::Value =
                serde_json::from_str(&event(id, "item-1")).expect("event json");
            body["shard"] = (id % 2).into();
            ("item-1".to_owned(), body.to_string())
        })
        .collect();
    let mut special = |id: usize, change: &dyn Fn(&mut serde_json::Value)| {
        let mut body: serde_json::Value =
            serde_json::from_str(&event(id, "item-1")).expect("event json");
        change(&mut body);
        events.push(("item-1".to_owned(), body.to_string()));
    };
    special(100, &|_| {});
    special(101, &|body| body["shard"] = 5.into());
    special(102, &|body| {
        body["shard"] = 0.into();
        body["text"] = "x".repeat(3000).into();
    });
    broker.produce("like", &events);
    let eventd = start_eventd(
        &broker,
        &format!(
            r#"
[producer]
max_message_bytes = 2000

[producer.outputs.out]
partitioner = "manual"
partition_field = "shard"

[dead_letter]
topic = "dlq"

{COPY_LIKE_TO_OUT}"#
        ),
    );
    let dead = broker.wait_for("dlq", Duration::from_secs(30), |records| records.len() >= 3);
    let reasons: HashMap<i64, (String, usize)> = dead
        .iter()
        .map(|record| {
            let offset = record.headers["eventd.source.offset"]
                .parse()
                .expect("offset");
            (
                offset,
                (record.headers["eventd.error"].clone(), record.payload.len()),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{dead:?}; {}", eventd.logs());
    assert!(
        reasons[&100].0.contains("no integer field \"shard\""),
        "{reasons:?}"
    );
    assert!(
        reasons[&101]
            .0
            .contains("partition 5 is outside the topic's 2 partitions"),
        "{reasons:?}"
    );
    assert!(
        reasons[&102]
            .0
            .contains("above producer.max_message_bytes (2000)")
            && (1..2000).contains(&reasons[&102].1),
        "too large for the dead-letter topic too: sent truncated to fit; {reasons:?}"
    );
    let truncated = dead
        .iter()
        .find(|record| record.headers["eventd.source.offset"] == "102")
        .expect("the oversized event's copy");
    assert_eq!(truncated.headers["eventd.truncated"], "true");
    assert!(
        truncated.headers["eventd.source.size"]
            .parse::<usize>()
            .expect("a size")
            > 2000,
        "{:?}",
        truncated.headers
    );
    assert!(reasons[&100].1 > 0, "a small event keeps its body");
    let out = broker.expect_every_id("out", 100, Duration::from_secs(30), &eventd);
    for record in &out {
        assert_eq!(Some(record.partition.to_string()), record.field("shard"));
    }
    broker.expect_moved_on("main", "like", &eventd);
}

/// `eventd produce --sync | head -1`: once stdout is gone the command stops cleanly
/// instead of panicking on the broken pipe.
#[test]
fn produce_stops_cleanly_when_its_output_is_closed() {
    let broker = Broker::start(1, &["like"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .args(["produce", "--sync", "--topic", "like", "--count", "5000"])
        .args(["--brokers", &broker.bootstrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("eventd produce starts");
    let mut first = [0u8; 8];
    std::io::Read::read_exact(child.stdout.as_mut().expect("stdout"), &mut first)
        .expect("a first line");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("eventd produce ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stdout closed, stopping") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// Ctrl-C stops reading, waits for what was sent, prints the summary and exits 130.
#[test]
fn produce_interrupted_reports_what_it_sent() {
    let broker = Broker::start(1, &["like"]);
    let child = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .args([
            "produce", "--topic", "like", "--count", "100000", "--rate", "200",
        ])
        .args(["--brokers", &broker.bootstrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("eventd produce starts");
    // Interrupt once events are seen at the broker, so some were surely sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while broker
        .watermarks("like")
        .iter()
        .all(|(_, low, high)| high == low)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "eventd produce wrote nothing within 20s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let output = child.wait_with_output().expect("eventd produce ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    let sent: usize = stdout
        .strip_prefix("sent ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary: {stdout}"));
    assert!(stdout.contains(", failed 0,"), "{stdout}");
    assert!((1..100_000).contains(&sent), "stopped part way: {stdout}");
    let stored: i64 = broker
        .watermarks("like")
        .iter()
        .map(|(_, low, high)| high - low)
        .sum();
    assert_eq!(
        stored, sent as i64,
        "every event reported sent is on the broker"
    );
}

/// A malformed event larger than the producer may send still reaches the dead-letter
/// topic (truncated to fit, the headers say where the whole one is and how large it
/// was) and does not stop its partition.
#[test]
fn an_oversized_malformed_event_is_dead_lettered_truncated() {
    let broker = Broker::start(1, &["like", "out", "dlq"]);
    let malformed = "{not json".repeat(400);
    broker.produce_raw("like", "item-1", malformed.as_bytes());
    broker.produce("like", &[("item-1".to_owned(), event(0, "item-1"))]);
    let eventd = start_eventd(
        &broker,
        &format!("[producer]\nmax_message_bytes = 2000\n[dead_letter]\ntopic = \"dlq\"\n{COPY_LIKE_TO_OUT}"),
    );
    broker.expect_every_id("out", 1, Duration::from_secs(30), &eventd);
    let dead = broker.wait_for("dlq", Duration::from_secs(10), |records| {
        !records.is_empty()
    });
    assert_eq!(dead.len(), 1, "{}", eventd.logs());
    assert!(
        !dead[0].payload.is_empty() && malformed.as_bytes().starts_with(&dead[0].payload),
        "sent as the start of its value"
    );
    assert_eq!(dead[0].headers["eventd.truncated"], "true");
    assert_eq!(
        dead[0].headers["eventd.source.size"],
        malformed.len().to_string()
    );
    assert_eq!(dead[0].headers["eventd.source.offset"], "0");
    assert!(dead[0].headers.contains_key("eventd.error"));
    broker.expect_moved_on("main", "like", &eventd);
}
