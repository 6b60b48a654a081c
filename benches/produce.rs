//! Produce rate of eventd's `ProducerHandle` against a bare rdkafka producer with the
//! same librdkafka settings, in one run against one broker, so the ratio shows what the
//! handle (permits, partition choice, tickets, oneshot replies, tokio wake-ups) costs.
//!
//! Four variants, each round into fresh 4-partition topics:
//! - bare async: `ThreadedProducer`, send everything, then wait for every report;
//! - eventd async: `handle.enqueue` everything, then wait for every `PendingDelivery`;
//! - bare sync: `ThreadedProducer`, wait for each delivery report before the next send;
//! - eventd sync: `handle.send` one at a time with `producer.mode = "sync"`.
//!
//! `cargo bench --bench produce` starts its own tansu broker (memory storage). Settings:
//! - `EVENTD_BENCH_BROKERS=host:port`: use a running broker instead;
//! - `TANSU=/path/to/tansu`: the binary (else `tansu` on PATH, else ~/.cargo/bin/tansu);
//! - `EVENTD_BENCH_ASYNC_EVENTS` (100000), `EVENTD_BENCH_SYNC_EVENTS` (5000),
//!   `EVENTD_BENCH_ROUNDS` (3).
//!
//! Each variant's topic must hold exactly the events sent afterwards, or the run fails.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use eventd::actors::producer::partitioner::sarama_partition;
use eventd::actors::producer::{Outgoing, ProducerActor, ProducerArgs};
use eventd::config::{Config, ProducerMode};
use eventd::demo::synthetic_event;
use eventd::kafka::{plain_config, producer_config, Brokers};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Runtime;

use tansu::{Storage, Tansu};

const PARTITIONS: i32 = 4;
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    BareAsync,
    EventdAsync,
    BareSync,
    EventdSync,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::BareAsync,
        Variant::EventdAsync,
        Variant::BareSync,
        Variant::EventdSync,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::BareAsync => "bare rdkafka async",
            Variant::EventdAsync => "eventd handle async",
            Variant::BareSync => "bare rdkafka sync",
            Variant::EventdSync => "eventd handle sync",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Variant::BareAsync => "bare-async",
            Variant::EventdAsync => "eventd-async",
            Variant::BareSync => "bare-sync",
            Variant::EventdSync => "eventd-sync",
        }
    }

    fn mode(self) -> ProducerMode {
        match self {
            Variant::BareAsync | Variant::EventdAsync => ProducerMode::Async,
            Variant::BareSync | Variant::EventdSync => ProducerMode::Sync,
        }
    }

    /// The bare variant an eventd variant is compared with.
    fn baseline(self) -> Option<Variant> {
        match self {
            Variant::EventdAsync => Some(Variant::BareAsync),
            Variant::EventdSync => Some(Variant::BareSync),
            _ => None,
        }
    }
}

struct Settings {
    async_events: usize,
    sync_events: usize,
    rounds: usize,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            async_events: env_count("EVENTD_BENCH_ASYNC_EVENTS", 100_000),
            sync_events: env_count("EVENTD_BENCH_SYNC_EVENTS", 5_000),
            rounds: env_count("EVENTD_BENCH_ROUNDS", 3),
        }
    }

    fn events(&self, variant: Variant) -> usize {
        match variant.mode() {
            ProducerMode::Async => self.async_events,
            ProducerMode::Sync => self.sync_events,
        }
    }
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => match text.parse() {
            Ok(count) if count > 0 => count,
            _ => panic!("{name}={text:?} is not a positive whole number"),
        },
        Err(_) => default,
    }
}

fn main() {
    let started = Instant::now();
    let settings = Settings::from_env();
    // Kept alive to the end of main: dropping it (also while unwinding a panic) kills
    // the broker.
    let broker = match std::env::var("EVENTD_BENCH_BROKERS") {
        Ok(bootstrap) => Broker::External(bootstrap),
        // Memory storage: the fastest tansu has; its wrong high watermarks are worked
        // around in `high_watermarks`.
        Err(_) => Broker::Tansu(Tansu::start_with(Storage::Memory)),
    };
    let brokers = Brokers {
        bootstrap: broker.bootstrap(),
        embedded: false,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut config = Config::default();
    config.kafka.brokers = Some(brokers.bootstrap.clone());
    // Reruns against an external broker must not append to an earlier run's topics.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let warmup_topic = format!("bench-warmup-{run_id}");
    create_topic(&runtime, &config, &brokers, &warmup_topic);

    let largest = settings.async_events.max(settings.sync_events);
    let events = synthetic_events(&config, largest);
    let payload_bytes: usize = events.iter().map(|e| e.payload.len()).sum();
    eprintln!(
        "broker {} | {} rounds | async {} events, sync {} events | payload ~{} bytes/event",
        brokers.bootstrap,
        settings.rounds,
        settings.async_events,
        settings.sync_events,
        payload_bytes / events.len()
    );

    let mut runs: Vec<(Variant, Vec<Run>)> =
        Variant::ALL.iter().map(|v| (*v, Vec::new())).collect();
    for round in 0..settings.rounds {
        // Alternating who goes first within each pair keeps broker warm-up and memory
        // growth from favouring one side.
        let order = if round % 2 == 0 {
            Variant::ALL
        } else {
            [
                Variant::EventdAsync,
                Variant::BareAsync,
                Variant::EventdSync,
                Variant::BareSync,
            ]
        };
        for variant in order {
            let count = settings.events(variant);
            let topic = format!("bench-{}-{round}-{run_id}", variant.slug());
            create_topic(&runtime, &config, &brokers, &topic);
            let mut config = config.clone();
            config.producer.mode = variant.mode();
            // Retargeted and cloned before timing, so both sides time only the sends.
            let batch: Vec<Outgoing> = events[..count]
                .iter()
                .map(|event| Outgoing {
                    topic: topic.clone(),
                    ..event.clone()
                })
                .collect();
            let run = match variant {
                Variant::BareAsync | Variant::BareSync => {
                    bare(&config, &brokers, &warmup_topic, &batch, variant.mode())
                }
                Variant::EventdAsync | Variant::EventdSync => {
                    eventd(&runtime, config.clone(), &brokers, &warmup_topic, batch)
                }
            };
            check_watermarks(&config, &brokers, &topic, count);
            eprintln!(
                "round {} {:<20} {count:>7} events {:>8.3}s {:>10.0}/s {:>6.2} CPU us/event",
                round + 1,
                variant.name(),
                run.seconds,
                count as f64 / run.seconds,
                run.cpu_seconds * 1e6 / count as f64
            );
            if let Some((_, done)) = runs.iter_mut().find(|(v, _)| *v == variant) {
                done.push(run);
            }
        }
    }
    print_table(&settings, &config, &runs);
    eprintln!("bench took {:.1}s", started.elapsed().as_secs_f64());
    drop(broker);
}

fn synthetic_events(config: &Config, count: usize) -> Vec<Outgoing> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..count as u64)
        .map(|n| synthetic_event(&config.demo, &mut rng, n))
        .collect()
}

/// One timed run: wall time, and CPU time of every thread of this process (sender,
/// librdkafka, delivery polling, tokio), which shows what a variant costs the host
/// beyond its wall time. The broker runs in its own process and is not counted.
struct Run {
    seconds: f64,
    cpu_seconds: f64,
}

struct Stopwatch {
    wall: Instant,
    cpu_ns: u64,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            cpu_ns: process_cpu_ns(),
            wall: Instant::now(),
        }
    }

    fn stop(self) -> Run {
        let seconds = self.wall.elapsed().as_secs_f64();
        Run {
            seconds,
            cpu_seconds: process_cpu_ns().saturating_sub(self.cpu_ns) as f64 / 1e9,
        }
    }
}

/// Sum of the on-CPU time of this process's threads, from Linux's schedstat; 0 where
/// that is unavailable.
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

fn print_table(settings: &Settings, config: &Config, runs: &[(Variant, Vec<Run>)]) {
    let seconds = |variant: Variant| {
        let done = &runs.iter().find(|(v, _)| *v == variant)?.1;
        Some(median(done.iter().map(|run| run.seconds)))
    };
    let linger = |mode| {
        let mut producer = config.producer.clone();
        producer.mode = mode;
        producer.effective_linger().as_millis()
    };
    println!();
    println!(
        "produce rate, median of {} rounds (acks={}, idempotence={}, compression={}, linger \
         async {}ms / sync {}ms)",
        settings.rounds,
        config.producer.acks.as_librdkafka(),
        config.producer.idempotence,
        config.producer.compression.as_librdkafka(),
        linger(ProducerMode::Async),
        linger(ProducerMode::Sync),
    );
    println!(
        "{:<20} {:>7} {:>8} {:>10} {:>11} {:>10}   events/s per round",
        "variant", "events", "seconds", "events/s", "eventd/bare", "CPU us/ev"
    );
    for (variant, done) in runs {
        let events = settings.events(*variant) as f64;
        let ratio = match variant.baseline() {
            Some(baseline) => match (seconds(*variant), seconds(baseline)) {
                (Some(own), Some(bare)) => format!("{:.2}", bare / own),
                _ => "-".to_owned(),
            },
            None => "baseline".to_owned(),
        };
        let median_seconds = median(done.iter().map(|run| run.seconds));
        let cpu_per_event = median(done.iter().map(|run| run.cpu_seconds * 1e6 / events));
        let per_round: Vec<String> = done
            .iter()
            .map(|run| format!("{:.0}", events / run.seconds))
            .collect();
        println!(
            "{:<20} {:>7} {:>8.3} {:>10.0} {:>11} {:>10.2}   {}",
            variant.name(),
            events,
            median_seconds,
            events / median_seconds,
            ratio,
            cpu_per_event,
            per_round.join(" ")
        );
    }
    println!(
        "eventd/bare: eventd's rate over bare's. CPU us/ev: on-CPU time of all this \
         process's threads per event (the broker not included)."
    );
}

/// Counts delivery reports and wakes the sender once `settled` reaches `wake_at`.
struct Reports {
    settled: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    wake_at: AtomicU64,
    wake: mpsc::Sender<()>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::SeqCst);
            let mut first = self.first_error.lock().expect("first_error lock");
            first.get_or_insert_with(|| error.to_string());
        }
        let settled = self.settled.fetch_add(1, Ordering::SeqCst) + 1;
        if settled >= self.wake_at.load(Ordering::SeqCst) {
            let _ = self.wake.send(());
        }
    }
}

/// The baseline: eventd's librdkafka settings with none of its machinery. The partition
/// is chosen as eventd's default `hash` partitioner does, so both sides build the same
/// batches.
fn bare(
    config: &Config,
    brokers: &Brokers,
    warmup_topic: &str,
    events: &[Outgoing],
    mode: ProducerMode,
) -> Run {
    let (wake, woken) = mpsc::channel();
    let reports = Reports {
        settled: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
        wake_at: AtomicU64::new(u64::MAX),
        wake,
    };
    let producer: ThreadedProducer<Reports> = producer_config(config, brokers)
        .create_with_context(reports)
        .expect("bare producer");
    let reports = producer.context();
    // Connection and producer id are set up before the clock starts, as for eventd.
    reports.wake_at.store(1, Ordering::SeqCst);
    send_bare(
        &producer,
        BaseRecord::to(warmup_topic).payload(b"warm-up".as_slice()),
    );
    wait_settled(reports, &woken, 1);

    let total = events.len() as u64 + 1;
    let mut queue_full = 0;
    let stopwatch = Stopwatch::start();
    if mode == ProducerMode::Async {
        reports.wake_at.store(total, Ordering::SeqCst);
    }
    // The warm-up was report 1.
    for (report, event) in (2..).zip(events) {
        let key = event.key.as_deref().expect("synthetic events have keys");
        let record = BaseRecord::to(&event.topic)
            .partition(sarama_partition(key, PARTITIONS))
            .key(key)
            .payload(event.payload.as_slice());
        if mode == ProducerMode::Sync {
            reports.wake_at.store(report, Ordering::SeqCst);
        }
        queue_full += send_bare(&producer, record);
        if mode == ProducerMode::Sync {
            wait_settled(reports, &woken, report);
        }
    }
    // Not `flush()`: rust-rdkafka's flush polls in 100 ms slices, which would add up
    // to 100 ms to a run that lasts well under a second.
    wait_settled(reports, &woken, total);
    let run = stopwatch.stop();

    let failed = reports.failed.load(Ordering::SeqCst);
    assert_eq!(
        failed,
        0,
        "bare producer: {failed} deliveries failed, first: {:?}",
        reports.first_error.lock().expect("first_error lock")
    );
    if queue_full > 0 {
        eprintln!("  bare producer: librdkafka's queue was full {queue_full} times");
    }
    run
}

fn wait_settled(reports: &Reports, woken: &mpsc::Receiver<()>, count: u64) {
    while reports.settled.load(Ordering::SeqCst) < count {
        woken
            .recv_timeout(TIMEOUT)
            .expect("bare producer: delivery reports stopped coming");
    }
}

/// Sends `record`, waiting while librdkafka's queue is full; returns how often it was.
fn send_bare(producer: &ThreadedProducer<Reports>, mut record: BaseRecord<'_, [u8], [u8]>) -> u64 {
    let mut full = 0;
    loop {
        match producer.send(record) {
            Ok(()) => return full,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                full += 1;
                // The polling thread frees room as delivery reports come back.
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => panic!("bare producer: send failed: {error}"),
        }
    }
}

/// eventd's producer as the daemon runs it: a ProducerActor on a multi-threaded tokio
/// runtime, sending from a spawned task as handlers do.
fn eventd(
    runtime: &Runtime,
    config: Config,
    brokers: &Brokers,
    warmup_topic: &str,
    events: Vec<Outgoing>,
) -> Run {
    let mode = config.producer.mode;
    let handle = ProducerActor::handle(&config);
    let args = ProducerArgs {
        config: Arc::new(config),
        brokers: brokers.clone(),
        handle: handle.clone(),
    };
    let warmup = Outgoing {
        topic: warmup_topic.to_owned(),
        key: Some(b"warm-up".to_vec()),
        payload: b"warm-up".to_vec(),
        headers: Vec::new(),
    };
    runtime.block_on(async move {
        let (actor, task) = ractor::Actor::spawn(None, ProducerActor, args)
            .await
            .expect("spawn ProducerActor");
        handle.send(warmup).await.expect("eventd warm-up");
        let run = tokio::spawn(async move {
            // Built on the runtime, as a handler builds its events, so the allocator
            // frees them where they were allocated.
            let events = events.clone();
            let stopwatch = Stopwatch::start();
            match mode {
                ProducerMode::Sync => {
                    for event in events {
                        handle.send(event).await.expect("eventd sync send");
                    }
                }
                ProducerMode::Async => {
                    let mut pending = Vec::with_capacity(events.len());
                    for event in events {
                        pending.push(handle.enqueue(event).await.expect("eventd enqueue"));
                    }
                    for delivery in pending {
                        delivery.wait().await.expect("eventd async delivery");
                    }
                }
            }
            stopwatch.stop()
        })
        .await
        .expect("eventd send task");
        actor.stop(None);
        task.await.expect("ProducerActor stop");
        run
    })
}

fn create_topic(runtime: &Runtime, config: &Config, brokers: &Brokers, name: &str) {
    let admin: AdminClient<DefaultClientContext> = plain_config(config, brokers)
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
    let results = runtime
        .block_on(admin.create_topics([&topic], &options))
        .unwrap_or_else(|error| panic!("CreateTopics {name:?} failed: {error}"));
    for result in results {
        if let Err((topic, code)) = result {
            panic!("CreateTopics {topic:?} answered {code:?}");
        }
    }
    // tansu lists a new topic in metadata only shortly after CreateTopics returns, and
    // eventd's first send fails if the partition count is unknown.
    let client: BaseConsumer = plain_config(config, brokers)
        .create()
        .expect("metadata client");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(metadata) = client.fetch_metadata(Some(name), Duration::from_secs(5)) {
            let ready = metadata.topics().iter().any(|topic| {
                topic.name() == name
                    && topic.error().is_none()
                    && topic.partitions().len() == PARTITIONS as usize
                    && topic.partitions().iter().all(|p| p.leader() >= 0)
            });
            if ready {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("topic {name:?} never showed {PARTITIONS} partitions with leaders in metadata");
}

/// A variant that lost or duplicated events would make its rate meaningless.
fn check_watermarks(config: &Config, brokers: &Brokers, topic: &str, expected: usize) {
    let highs = high_watermarks(config, brokers, topic);
    let total: i64 = highs.iter().sum();
    assert_eq!(
        total, expected as i64,
        "topic {topic}: high watermarks {highs:?} sum to {total}, but {expected} events were sent"
    );
}

/// The end offset of every partition. tansu 0.6.0's memory storage answers
/// ListOffsets(latest) with the newest batch's base offset + 1 rather than the end of
/// the partition (tansu-storage dynostore `list_offsets`), so the end is found by
/// reading from that answer to end-of-partition, whose detection uses the fetch
/// response's high watermark. On a correct broker this reads one record per partition.
fn high_watermarks(config: &Config, brokers: &Brokers, topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = plain_config(config, brokers)
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        // An empty fetch otherwise waits 500 ms before end-of-partition is reported.
        .set("fetch.wait.max.ms", "10")
        // librdkafka refuses assign() without one; assign never joins the group.
        .set("group.id", "eventd-bench-watermarks")
        .create()
        .expect("watermark client");
    let mut ends = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        let (_, listed) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap_or_else(|error| {
                panic!("watermarks of {topic}/{partition} unavailable: {error}")
            });
        ends.push(listed);
        if listed > 0 {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(listed - 1))
                .expect("assignment");
        }
    }
    consumer.assign(&assignment).expect("assign for watermarks");
    let mut at_end = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while at_end.len() < assignment.count() {
        assert!(
            Instant::now() < deadline,
            "topic {topic}: end of partitions not reached within 30s (ends so far {ends:?})"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let end = &mut ends[message.partition() as usize];
                *end = (*end).max(message.offset() + 1);
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => panic!("topic {topic}: reading for watermarks: {error}"),
            None => {}
        }
    }
    ends
}

enum Broker {
    External(String),
    Tansu(Tansu),
}

impl Broker {
    fn bootstrap(&self) -> String {
        match self {
            Broker::External(bootstrap) => bootstrap.clone(),
            Broker::Tansu(tansu) => tansu.bootstrap(),
        }
    }
}

/// The tests' tansu harness: a broker process on its own port, killed on drop.
#[allow(dead_code)]
#[path = "../tests/common/tansu.rs"]
mod tansu;

/// The harness's TLS front, which it names for secured brokers (unused here).
#[allow(dead_code)]
#[path = "../tests/common/tls.rs"]
mod tls;

/// The harness asks its parent module for a free port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}
