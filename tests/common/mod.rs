//! Black-box harness: a broker per test (the embedded mock cluster, or a real tansu
//! process from `Broker::tansu`), the real `eventd` binary run against it with a config
//! the test writes, and Kafka clients to feed and read topics.
#![allow(dead_code)]

pub mod checker;
pub mod tansu;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use eventd::embedded::EmbeddedBroker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

// Not every test file uses the secured-broker parts.
#[allow(unused_imports)]
pub use tansu::{Secured, Storage, Tansu};
#[allow(unused_imports)]
pub use tls::Certificates;

/// Which broker a test runs against.
pub enum Backend {
    /// librdkafka's in-process mock cluster: fast, but not a real broker.
    Embedded(EmbeddedBroker),
    /// A `tansu broker` process: a real Kafka-compatible broker that can be restarted.
    Tansu(Tansu),
}

pub struct Broker {
    pub backend: Backend,
    /// Partitions of the topics given at start; `create_topic` may choose others.
    pub partitions: i32,
    topic_partitions: Mutex<HashMap<String, i32>>,
}

impl Broker {
    /// The embedded mock cluster with `topics` of `partitions` each.
    pub fn start(partitions: i32, topics: &[&str]) -> Broker {
        let names: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let embedded = EmbeddedBroker::start(partitions, &names).expect("embedded broker starts");
        Broker::with_backend(Backend::Embedded(embedded), partitions, topics)
    }

    /// A mock cluster of `brokers` brokers (ids 1..=brokers) with `topics` of
    /// `partitions` each.
    pub fn start_cluster(brokers: u32, partitions: i32, topics: &[&str]) -> Broker {
        let names: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let embedded = EmbeddedBroker::start_cluster(brokers, partitions, &names)
            .expect("embedded broker starts");
        Broker::with_backend(Backend::Embedded(embedded), partitions, topics)
    }

    /// The mock cluster, for fault injection; panics on tansu.
    pub fn embedded(&self) -> &EmbeddedBroker {
        match &self.backend {
            Backend::Embedded(embedded) => embedded,
            Backend::Tansu(_) => panic!("this test needs the embedded mock cluster"),
        }
    }

    /// A tansu process with sqlite storage and `topics` of `partitions` each.
    pub fn tansu(partitions: i32, topics: &[&str]) -> Broker {
        Broker::tansu_with(Storage::Sqlite, partitions, topics)
    }

    pub fn tansu_with(storage: Storage, partitions: i32, topics: &[&str]) -> Broker {
        Broker::from_tansu(Tansu::start_with(storage), partitions, topics)
    }

    /// A tansu the test set up itself (users, `secure`), with `topics` created on it.
    pub fn from_tansu(tansu: Tansu, partitions: i32, topics: &[&str]) -> Broker {
        for topic in topics {
            tansu.create_topic(topic, partitions);
        }
        Broker::with_backend(Backend::Tansu(tansu), partitions, topics)
    }

    fn with_backend(backend: Backend, partitions: i32, topics: &[&str]) -> Broker {
        Broker {
            backend,
            partitions,
            topic_partitions: Mutex::new(
                topics.iter().map(|t| (t.to_string(), partitions)).collect(),
            ),
        }
    }

    pub fn is_tansu(&self) -> bool {
        matches!(self.backend, Backend::Tansu(_))
    }

    /// The tansu process; panics on the embedded broker.
    pub fn tansu_process(&self) -> &Tansu {
        match &self.backend {
            Backend::Tansu(tansu) => tansu,
            Backend::Embedded(_) => panic!(
                "this test needs Broker::tansu: the embedded mock cluster is not a process \
                 that can be stopped, restarted or inspected"
            ),
        }
    }

    pub fn bootstrap(&self) -> String {
        match &self.backend {
            Backend::Embedded(embedded) => embedded.bootstrap_servers().to_owned(),
            Backend::Tansu(tansu) => tansu.bootstrap(),
        }
    }

    /// A client configuration for this broker: its address and, for a secured tansu,
    /// the properties its clients need.
    pub fn client_config(&self) -> ClientConfig {
        match &self.backend {
            Backend::Embedded(embedded) => {
                let mut config = ClientConfig::new();
                config.set("bootstrap.servers", embedded.bootstrap_servers());
                config
            }
            Backend::Tansu(tansu) => tansu.client_config(),
        }
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        match &self.backend {
            Backend::Embedded(embedded) => embedded
                .create_topic(name, partitions)
                .unwrap_or_else(|error| panic!("create topic {name:?}: {error}")),
            Backend::Tansu(tansu) => tansu.create_topic(name, partitions),
        }
        self.topic_partitions
            .lock()
            .expect("topic lock")
            .insert(name.to_owned(), partitions);
    }

    /// Stops tansu (SIGTERM, SIGKILL after a grace), keeping port and storage.
    pub fn stop(&self) {
        self.tansu_process().stop();
    }

    /// Kills tansu without warning (a crash), keeping port and storage.
    pub fn kill(&self) {
        self.tansu_process().kill();
    }

    /// Starts tansu again on the same port and storage.
    pub fn restart(&self) {
        self.tansu_process().restart();
    }

    /// The broker's own log tail for failure messages; empty for the embedded broker.
    pub fn log_tail(&self, lines: usize) -> String {
        match &self.backend {
            Backend::Embedded(_) => String::new(),
            Backend::Tansu(tansu) => tansu.log_tail(lines),
        }
    }

    /// Partitions of `topic`: as created here, else as the broker reports them.
    pub fn partitions_of(&self, topic: &str) -> i32 {
        if let Some(known) = self.topic_partitions.lock().expect("topic lock").get(topic) {
            return *known;
        }
        let client = self.metadata_client();
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap_or_else(|error| panic!("metadata of {topic:?}: {error}"));
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
            .unwrap_or(self.partitions)
    }

    fn metadata_client(&self) -> BaseConsumer {
        self.client_config().create().expect("metadata client")
    }

    /// `(partition, low, high)` watermarks of every partition of `topic`.
    pub fn watermarks(&self, topic: &str) -> Vec<(i32, i64, i64)> {
        let client = self.metadata_client();
        (0..self.partitions_of(topic))
            .map(|partition| {
                let (low, high) = client
                    .fetch_watermarks(topic, partition, Duration::from_secs(10))
                    .unwrap_or_else(|error| {
                        panic!(
                            "watermarks of {topic}/{partition}: {error}\nbroker log:\n{}",
                            self.log_tail(20)
                        )
                    });
                (partition, low, high)
            })
            .collect()
    }

    /// The offsets `group` committed for each partition of `topic` (the next offset it
    /// will read), None where it committed nothing. Reads without joining the group.
    pub fn committed(&self, group: &str, topic: &str) -> Vec<(i32, Option<i64>)> {
        self.try_committed(group, topic).unwrap_or_else(|error| {
            panic!(
                "committed offsets of group {group} on {topic}: {error}\nbroker log:\n{}",
                self.log_tail(20)
            )
        })
    }

    /// As `committed`, with the error of a broker that did not answer in 10 s, for
    /// samples taken under load where one missed sample is no failure.
    pub fn try_committed(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<(i32, Option<i64>)>, KafkaError> {
        let client: BaseConsumer = self
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offset reader");
        let mut list = TopicPartitionList::new();
        for partition in 0..self.partitions_of(topic) {
            list.add_partition(topic, partition);
        }
        let committed = client.committed_offsets(list, Duration::from_secs(10))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                };
                (e.partition(), offset)
            })
            .collect())
    }

    /// Commits `offset` for `group` on one partition, as another member would.
    pub fn commit(&self, group: &str, topic: &str, partition: i32, offset: i64) {
        let client: BaseConsumer = self
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offset writer");
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(offset))
            .expect("offset list");
        client
            .commit(&list, rdkafka::consumer::CommitMode::Sync)
            .unwrap_or_else(|error| {
                panic!("commit {offset} for {group} on {topic}/{partition}: {error}")
            });
    }

    /// True once `group` has committed the high watermark of every partition of `topic`
    /// (an empty partition may have no commit).
    pub fn committed_to_end(&self, group: &str, topic: &str) -> bool {
        let committed = self.committed(group, topic);
        self.watermarks(topic).iter().all(|(partition, _, high)| {
            committed.iter().any(|(p, offset)| {
                p == partition && (*offset == Some(*high) || (*high == 0 && offset.is_none()))
            })
        })
    }

    /// Waits up to `patience` for `committed_to_end`; panics with both sides if not.
    pub fn expect_committed_to_end(
        &self,
        group: &str,
        topic: &str,
        patience: Duration,
        eventd: &Eventd,
    ) {
        let deadline = Instant::now() + patience;
        while !self.committed_to_end(group, topic) {
            if Instant::now() >= deadline {
                panic!(
                    "group {group} did not commit to the end of {topic} within {patience:?}: \
                     committed {:?}, watermarks {:?}; logs:\n{}",
                    self.committed(group, topic),
                    self.watermarks(topic),
                    eventd.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until consumer `consumer` (group `eventd-<consumer>`) committed the end of
    /// every partition of `topic` and has nothing of it in flight: nothing is stuck,
    /// whatever was written around it.
    pub fn expect_moved_on(&self, consumer: &str, topic: &str, eventd: &Eventd) {
        self.expect_committed_to_end(
            &format!("eventd-{consumer}"),
            topic,
            Duration::from_secs(20),
            eventd,
        );
        let labels = [("consumer", consumer), ("topic", topic)];
        assert!(
            eventd.wait_until(Duration::from_secs(10), |e| {
                e.metric_if_present("eventd_partition_in_flight", &labels) == Some(0.0)
            }),
            "{topic}: in flight {:?} after everything was committed; logs:\n{}",
            eventd.metric_if_present("eventd_partition_in_flight", &labels),
            eventd.logs()
        );
    }

    fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("linger.ms", "5")
            // The Java client's batch size: a consumer receives whole batches, so the
            // writer's batch size bounds how far one fetch overshoots.
            .set("batch.size", "16384");
        config
    }

    pub fn producer(&self) -> BaseProducer {
        self.producer_config().create().expect("producer")
    }

    /// Produces `(key, payload)` pairs to `topic` in order and waits until the broker
    /// acknowledged all of them; a failed delivery panics.
    pub fn produce(&self, topic: &str, events: &[(String, String)]) {
        self.produce_stream(
            topic,
            events
                .iter()
                .map(|(key, payload)| (key.clone(), payload.clone().into_bytes())),
        );
    }

    /// Produces `(key, payload)` pairs to `topic` as they come (for backlogs too large
    /// to hold in memory at once), waits for all of them and returns how many the
    /// broker acknowledged; panics naming the first failed delivery.
    pub fn produce_stream(
        &self,
        topic: &str,
        events: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> u64 {
        let producer: BaseProducer<DeliveryCount> = self
            .producer_config()
            .create_with_context(DeliveryCount::default())
            .expect("producer");
        let mut sent = 0u64;
        for (key, payload) in events {
            let mut record = BaseRecord::to(topic).key(key.as_str()).payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
            sent += 1;
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60)).expect("flush");
        let context = producer.context();
        if let Some(error) = context.first_error.lock().expect("delivery lock").as_ref() {
            panic!(
                "{topic}: {} of {sent} deliveries failed, first: {error}\nbroker log:\n{}",
                context.failed.load(std::sync::atomic::Ordering::Relaxed),
                self.log_tail(20)
            );
        }
        let delivered = context.delivered.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            delivered, sent,
            "{topic}: {delivered} of {sent} acknowledged"
        );
        delivered
    }

    /// Produces raw bytes (for malformed events).
    pub fn produce_raw(&self, topic: &str, key: &str, payload: &[u8]) {
        let producer = self.producer();
        producer
            .send(BaseRecord::to(topic).key(key).payload(payload).headers(
                OwnedHeaders::new().insert(Header {
                    key: "origin",
                    value: Some("test"),
                }),
            ))
            .map_err(|(e, _)| e)
            .expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
    }

    /// Produces payloads with no Kafka key, in order, and waits for every one.
    pub fn produce_keyless(&self, topic: &str, payloads: &[String]) {
        let producer = self.producer();
        for payload in payloads {
            producer
                .send::<(), _>(BaseRecord::to(topic).payload(payload.as_str()))
                .map_err(|(e, _)| e)
                .expect("send");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
    }

    /// Every record of `topic` from the beginning, in order per partition.
    /// Everything in `topic`, read to the end of every partition. Panics when a
    /// partition's end is not reached within a minute: a partial read would look like
    /// lost events to the caller.
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        let mut reader = TopicReader::new(self, topic);
        let patience = Duration::from_secs(60);
        if !reader.catch_up(Instant::now() + patience) {
            let mut ended: Vec<i32> = reader.at_end.iter().copied().collect();
            ended.sort_unstable();
            panic!(
                "read_all({topic}): only partitions {ended:?} of {} reached their end within {patience:?} ({} records read)",
                reader.partitions,
                reader.records.len()
            );
        }
        reader.records
    }

    /// Reads `topic` until `done` holds for everything read up to the end of every
    /// partition, or `timeout` passes; returns the last read.
    pub fn wait_for(
        &self,
        topic: &str,
        timeout: Duration,
        done: impl Fn(&[Record]) -> bool,
    ) -> Vec<Record> {
        let deadline = Instant::now() + timeout;
        // One reader that keeps its position: re-reading a large topic from the start
        // every round loads a real broker as much as the daemon under test does.
        let mut reader = TopicReader::new(self, topic);
        loop {
            let round = (Instant::now() + Duration::from_secs(10)).min(deadline);
            reader.catch_up(round);
            if done(&reader.records) || Instant::now() >= deadline {
                return reader.records;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Delivery reports of `Broker::produce_stream`: acknowledged and failed counts.
#[derive(Default)]
struct DeliveryCount {
    delivered: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl rdkafka::ClientContext for DeliveryCount {}

impl rdkafka::producer::ProducerContext for DeliveryCount {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        use std::sync::atomic::Ordering::Relaxed;
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Relaxed);
                let mut first = self.first_error.lock().expect("delivery lock");
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// A consumer assigned to every partition of one topic from the beginning.
struct TopicReader {
    consumer: BaseConsumer,
    partitions: usize,
    at_end: HashSet<i32>,
    records: Vec<Record>,
}

impl TopicReader {
    fn new(broker: &Broker, topic: &str) -> TopicReader {
        let consumer: BaseConsumer = broker
            .client_config()
            .set("fetch.wait.max.ms", "10")
            .set("enable.partition.eof", "true")
            .set("group.id", "eventd-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let partitions = broker.partitions_of(topic);
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&list).expect("assign");
        TopicReader {
            consumer,
            partitions: partitions as usize,
            at_end: HashSet::new(),
            records: Vec::new(),
        }
    }

    /// Reads until every partition reported its end (again, if anything arrived since
    /// the last call) or `deadline` passes; true when every partition reached its end.
    fn catch_up(&mut self, deadline: Instant) -> bool {
        // What arrived since the last round is only seen after polling at least once.
        let mut polled = false;
        while (!polled || self.at_end.len() < self.partitions) && Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    self.at_end.remove(&message.partition());
                    self.records.push(Record::from(&message));
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    self.at_end.insert(partition);
                }
                _ => {}
            }
            polled = true;
        }
        polled && self.at_end.len() == self.partitions
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Record {
    fn from<M: Message>(message: &M) -> Record {
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }

    pub fn field(&self, name: &str) -> Option<String> {
        match self.json().get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// A valid event JSON with a unique id.
pub fn event(id: usize, item: &str) -> String {
    serde_json::json!({
        "event_id": format!("e-{id}"),
        "user_id": format!("user-{}", id % 97),
        "item_id": item,
        "ts": 1_764_000_000_000i64 + id as i64,
        "action": "add",
    })
    .to_string()
}

/// `count` events with ids 0..count over `keys` distinct item ids; key = item id.
pub fn events(count: usize, keys: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|id| {
            let item = format!("item-{}", id % keys);
            (item.clone(), event(id, &item))
        })
        .collect()
}

/// A positive count from the environment variable `name`, else `default`; anything
/// else set there is a mistake worth stopping for.
pub fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name}={text:?} is not a positive number")),
        Err(_) => default,
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running `eventd` process.
pub struct Eventd {
    pub child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
    pub config: PathBuf,
    /// Extra environment of the daemon, given again on `restart`.
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

/// A consumer of `like` and a forward handler copying it to `out`.
pub const COPY_LIKE_TO_OUT: &str = r#"
[[consumers]]
name = "main"
topics = ["like"]

[[handlers]]
name = "copy"
kind = "forward"
consumer = "main"
output = "out"
"#;

/// Writes `config_body` (TOML without [kafka] and [metrics]) next to broker and metrics
/// settings and starts `eventd run` on it.
pub fn start_eventd(broker: &Broker, config_body: &str) -> Eventd {
    start_eventd_with_env(broker, config_body, &[])
}

/// As `start_eventd`, with extra environment variables for the daemon.
pub fn start_eventd_with_env(broker: &Broker, config_body: &str, env: &[(&str, String)]) -> Eventd {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("eventd.toml");
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\nsession_timeout = \"12s\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n{config_body}",
        broker.bootstrap()
    );
    std::fs::write(&config, text).expect("write config");
    start_with(dir, config, port, env)
}

pub fn start_with(
    dir: tempfile::TempDir,
    config: PathBuf,
    metrics_port: u16,
    env: &[(&str, String)],
) -> Eventd {
    start_bin_with(
        Path::new(env!("CARGO_BIN_EXE_eventd")),
        dir,
        config,
        metrics_port,
        env,
    )
}

/// `start_with` for another build of eventd (the bench's side-by-side runs).
pub fn start_bin_with(
    bin: &Path,
    dir: tempfile::TempDir,
    config: PathBuf,
    metrics_port: u16,
    env: &[(&str, String)],
) -> Eventd {
    let log = dir.path().join(format!(
        "eventd-{}.log",
        Instant::now().elapsed().as_nanos()
    ));
    let log = unique(log);
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut command = Command::new(bin);
    command
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("eventd starts");
    Eventd {
        child,
        metrics_port,
        log,
        config,
        env: env
            .iter()
            .map(|(key, value)| (key.to_string(), value.clone()))
            .collect(),
        _dir: dir,
    }
}

fn unique(path: PathBuf) -> PathBuf {
    let mut n = 0;
    let mut candidate = path.clone();
    while candidate.exists() {
        n += 1;
        candidate = path.with_extension(format!("{n}.log"));
    }
    candidate
}

impl Eventd {
    /// Starts the same config again (a restart), logging to a new file.
    pub fn restart(mut self) -> Eventd {
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"));
        let env: Vec<(&str, String)> = self
            .env
            .iter()
            .map(|(key, value)| (key.as_str(), value.clone()))
            .collect();
        start_with(dir, self.config.clone(), self.metrics_port, &env)
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends SIGTERM and expects a clean exit (0) within `within`; returns the logs.
    pub fn terminate(&mut self, within: Duration) -> String {
        self.signal("TERM");
        let status = self.wait_exit(within);
        let logs = self.logs();
        let status = status.unwrap_or_else(|| {
            panic!("eventd did not exit within {within:?} of SIGTERM; logs:\n{logs}")
        });
        assert_eq!(
            status.code(),
            Some(0),
            "exit status after SIGTERM; logs:\n{logs}"
        );
        logs
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        // An unreadable log is a failure, never "" that a negative check would pass on.
        std::fs::read_to_string(&self.log).unwrap_or_else(|error| {
            panic!("cannot read eventd's log {}: {error}", self.log.display())
        })
    }

    /// GET `path` on the metrics port: (status code, body).
    /// The JSON log lines whose message is `message`, fields flattened into each.
    pub fn log_lines(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["message"] == message)
            .collect()
    }

    /// Every JSON log line about a partition (a `partition` field) names its
    /// `consumer` and `topic`, and every one from a handler about an event (`handler`
    /// with `offset`) names consumer, topic and partition: operators search by them.
    pub fn assert_log_lines_are_searchable(&self) {
        let lines: Vec<serde_json::Value> = self
            .logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .collect();
        let about_partitions: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|line| line.get("partition").is_some())
            .collect();
        assert!(
            !about_partitions.is_empty(),
            "no log line names a partition"
        );
        for line in about_partitions {
            assert!(
                line.get("consumer").is_some() && line.get("topic").is_some(),
                "a partition's log line without consumer and topic: {line}"
            );
        }
        for line in lines
            .iter()
            .filter(|line| line.get("handler").is_some() && line.get("offset").is_some())
        {
            assert!(
                ["consumer", "topic", "partition"]
                    .iter()
                    .all(|field| line.get(field).is_some()),
                "a handler's log line about an event without consumer, topic and partition: {line}"
            );
        }
    }

    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    }

    /// True while the process has not exited (a zombie not yet waited for counts as
    /// exited).
    pub fn is_running(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        match stat {
            Ok(stat) => stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .is_some_and(|state| state != 'Z' && state != 'X'),
            Err(_) => false,
        }
    }

    /// `(VmRSS, VmHWM)` of the process in bytes: resident now, and at its peak.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_else(|error| {
                panic!("eventd's /proc status: {error}; logs:\n{}", self.logs())
            });
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map(|kib| kib * 1024)
                .unwrap_or_else(|| panic!("no {name} in /proc status:\n{status}"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The `/metrics` page. Panics if eventd has exited, or if it does not answer
    /// within 10 s while running (the listener opens right after start).
    pub fn scrape(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.http_get("/metrics") {
                Some((200, body)) => return body,
                answer => {
                    if !self.is_running() {
                        panic!(
                            "eventd exited; cannot read /metrics; logs:\n{}",
                            self.logs()
                        );
                    }
                    if Instant::now() >= deadline {
                        panic!(
                            "/metrics did not answer within 10s (last answer {answer:?}); logs:\n{}",
                            self.logs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Sum of every sample of `metric` whose labels contain all of `labels`, or None
    /// when no such sample is exported. A failed scrape panics.
    pub fn metric_if_present(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples(&self.scrape(), metric, labels)
    }

    /// As `metric_if_present`, but an absent series panics: a test reading a value
    /// must not mistake "not exported" for 0.
    pub fn metric(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let body = self.scrape();
        samples(&body, metric, labels).unwrap_or_else(|| {
            panic!(
                "no sample of {metric} with labels {labels:?} on /metrics:\n{}",
                body.lines()
                    .filter(|line| line.starts_with(metric))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }

    /// True once `metric` (summed over samples matching `labels`) is exported and at
    /// least `at_least`; for `wait_until` conditions.
    pub fn metric_reaches(&self, metric: &str, labels: &[(&str, &str)], at_least: f64) -> bool {
        self.metric_if_present(metric, labels)
            .is_some_and(|value| value >= at_least)
    }

    /// Polls `condition` every 100ms until it holds or `timeout` passes.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&Eventd) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if condition(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        condition(self)
    }
}

/// Sum of the samples of `metric` in a Prometheus page whose labels contain `labels`;
/// None when there is none.
pub fn samples(body: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = body
        .lines()
        .filter(|line| line.starts_with(metric) && !line.starts_with('#'))
        .filter(|line| {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            &line[..name_end] == metric
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|value| value.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unreadable sample line: {line}"))
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

impl Drop for Eventd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ids (`event_id`) found in records.
pub fn ids(records: &[Record]) -> std::collections::HashSet<String> {
    records.iter().filter_map(|r| r.field("event_id")).collect()
}

/// Ids `e-0` .. `e-{total-1}` that no record carries.
pub fn missing_ids(records: &[Record], total: usize) -> Vec<usize> {
    let seen = ids(records);
    (0..total)
        .filter(|id| !seen.contains(&format!("e-{id}")))
        .collect()
}

impl Broker {
    /// Waits up to `patience` for ids `0..total` in `topic` and returns its records;
    /// panics naming some missing ids and eventd's logs.
    pub fn expect_every_id(
        &self,
        topic: &str,
        total: usize,
        patience: Duration,
        eventd: &Eventd,
    ) -> Vec<Record> {
        let records = self.wait_for(topic, patience, |records| ids(records).len() >= total);
        let missing = missing_ids(&records, total);
        assert!(
            missing.is_empty(),
            "{topic}: {} of {total} ids missing, e.g. {:?}; logs: {}",
            missing.len(),
            &missing[..missing.len().min(10)],
            eventd.logs()
        );
        records
    }
}

/// The eventd binary, without any EVENTD__* variable of the caller's shell: a stray one
/// must not change what is tested.
pub fn eventd_bin() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_eventd"));
    for (key, _) in std::env::vars() {
        if key.starts_with("EVENTD__") {
            command.env_remove(key);
        }
    }
    command
}

/// `eventd run --config CONFIG` to its end (for configs it refuses).
pub fn run_with(config: &std::path::Path) -> std::process::Output {
    eventd_bin()
        .arg("run")
        .arg("--config")
        .arg(config)
        .output()
        .expect("eventd runs")
}

/// `eventd check-config CONFIG`.
pub fn check_config(config: &std::path::Path) -> std::process::Output {
    eventd_bin()
        .arg("check-config")
        .arg(config)
        .output()
        .expect("eventd check-config runs")
}
