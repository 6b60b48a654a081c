//! The event path against the bare library: what eventd's layer costs per
//! event next to rdkafka doing the same job with the same librdkafka properties. Each
//! phase runs in a process of its own, so its CPU time and peak memory are its alone.
//!
//! `cargo bench --bench pipeline` starts its own tansu (memory storage) and pre-fills
//! it with the tests' events (`common::event`: ~100 B of JSON keyed by `item_id` over
//! 1000 keys; the 1 KiB size pads the same event with a `text` field). Every 100th
//! event is cut to two thirds of its bytes, so 1% are malformed JSON and nothing can
//! skip decoding; eventd dead-letters those (`[dead_letter] topic` is set) and they
//! count as done once `eventd_events_dead_lettered_total` has them. The events go to
//! 4 topics of 4 or 16 partitions each. On this 2-core machine tansu took the
//! pre-fill from one `BaseProducer` (5 ms linger, 16 KiB batches) at 365,000-550,000
//! events/s for 100 B events (37-55 MiB/s; slower over 64 partitions) and about
//! 69,000 events/s for 1 KiB events (68 MiB/s). Its memory storage held 4.9 GB at the
//! end of a default run. The phases:
//!
//! - `A`: a bare `BaseConsumer` in a consumer group, `store_offset` per event;
//! - `A'`: A plus `serde_json::from_slice::<serde_json::Value>` of every event;
//! - `A-fwd`: bare consume, produce every event (same key and payload, the three
//!   `eventd.source.*` headers, sarama's partition) to an output topic through a
//!   `ThreadedProducer`, and store each offset after its delivery report: the floor
//!   for C. Its producer is warmed up (one acknowledged record) before it subscribes,
//!   as eventd's is before it reads;
//! - `A-fwd-plain`: A-fwd with no headers on the copies, so the difference is what
//!   the three provenance headers cost a forwarder;
//! - `B`: `eventd run` with one `count` handler (`group_by = "item_id"`, 10 s window);
//! - `C`: `eventd run` with one `forward` handler (whole events);
//! - `webhook`: `eventd run` with one `webhook` handler (defaults: batch 100, one
//!   request at a time) posting to an HTTP server in this process that answers 200 at
//!   once; its µs CPU per event is shown beside C's (its ratio is to A-fwd, as C's);
//! - `B4`: `eventd run` with four handlers on the same events: count by `item_id`,
//!   count by `user_id`, count by `item_id` over 1 min behind the filter
//!   `action = { equals = "add" }` (every valid event matches), and `log` with
//!   `sample = 0.01`;
//! - `B@before`, `C@before`, `B4@before`: B, C and B4 again, right after each, run by
//!   the eventd binary named in `EVENTD_BENCH_BEFORE` (an earlier build), so a change
//!   is measured side by side with what it replaced on the same broker and load;
//! - `produce-bare` / `produce-eventd`: the same file of N JSON lines (1% malformed)
//!   sent by a bare `ThreadedProducer`, which checks each line and reads its key with
//!   a borrowed `serde` struct and skips the malformed ones, and by `eventd produce
//!   --input FILE` (async, the default), which refuses those lines. Both processes
//!   start, send, wait for every delivery report and exit; they are measured over
//!   their whole life;
//! - `idle-bare` / `idle`: 64 assigned partitions and no traffic, CPU per second over
//!   `EVENTD_BENCH_IDLE_SECS` once the assignment has settled (2 s), for a bare
//!   consumer polling and for eventd with a count handler. Both keep librdkafka's
//!   default `fetch.wait.max.ms` (500 ms), as eventd ships; the 10 ms the throughput
//!   phases use (below) is a tansu workaround that would make librdkafka itself fetch
//!   100 times a second;
//! - `latency`: eventd forwarding (16 partitions) while this process produces at a
//!   fixed `EVENTD_BENCH_LATENCY_RATE` for `EVENTD_BENCH_LATENCY_SECS`, with eventd's
//!   producer properties. Each event carries `sent_us`, the wall clock in µs read just
//!   before its produce call. A reader in this process (`fetch.wait.max.ms = 1`)
//!   reads the wall clock when a forwarded copy arrives; the difference is the
//!   latency. It includes both producers' 5 ms linger, eventd's fetch wait and about
//!   1 ms of the reader's. The first second is left out as warm-up. The note also
//!   gives the copy's CreateTime minus `sent_us`, the time until eventd handed the
//!   copy to librdkafka (ms resolution).
//!
//! Consuming phases run for every layout (total partitions x event bytes): `16x100`
//! and `64x100` with `EVENTD_BENCH_EVENTS` events, `16x1024` with
//! `EVENTD_BENCH_LARGE_EVENTS`. Each phase reads with a fresh consumer group.
//!
//! **Same client properties.** Each phase writes an eventd config file. The bare
//! phases load it with `Config::load` and build their clients with
//! `eventd::kafka::consumer_config` / `producer_config`, so both sides get the same
//! librdkafka properties (`fetch.queue.backoff.ms`, `queued.*`, acks, lz4, linger,
//! idempotence and the rest). The file sets `"fetch.wait.max.ms" = "10"` in
//! `[kafka.options]`, the README's advice for tansu, which sleeps the whole
//! `fetch.wait.max.ms` below 250 ms even when it has data.
//!
//! **What is measured.** CPU is user plus system time of every thread of the phase's
//! process, live or exited, from `/proc/<pid>/stat`. Its unit is the 10 ms clock
//! tick; the default sizes give every throughput phase well over a second of CPU.
//! Throughput phases count the window from the first event to the last. That leaves
//! out start-up (config, metadata, group join) and shutdown (final commit, close,
//! flush) on both sides in the same way. A bare child reads its own
//! `/proc/self/stat` at its first event and after its last. For eventd, this process
//! reads eventd's `/proc/<pid>/stat` at two points. The first is when `/metrics`
//! first shows `eventd_events_consumed_total` above 0 (polled every 10 ms); the
//! events consumed by then are left out of eventd's count. The second is when every
//! handler's `eventd_events_handled_total` has reached the valid events and
//! `eventd_events_dead_lettered_total` the malformed ones (polled every 50 ms). Those
//! scrapes stay in eventd's CPU. After each phase, 200 more scrapes measure their
//! cost, and the note column gives their share of the window (0.2-1.5% in a default
//! run, the most where eventd's CPU is smallest). `life CPU s` is the whole-life CPU of
//! every process, read from the zombie's `/proc/<pid>/stat` before it is reaped; it
//! matches `getrusage(RUSAGE_CHILDREN)`. Peak RSS is `VmHWM` from
//! `/proc/<pid>/status` at the end of the window (polled until exit for the producer
//! pair). `ru_maxrss` of a child is not used: it includes this process's own peak,
//! which Linux folds into a child at `exec`. Events are counted, never read from
//! watermarks, because tansu's memory storage reports wrong ones. A bare consumer
//! counts each offset once per partition.
//!
//! **Targets**, ratios of events per CPU-second from this run:
//! - C/A-fwd ≥ 0.9 per layout;
//! - B, C and B4 at most 5% more µs CPU per event than `EVENTD_BENCH_BEFORE`'s build
//!   in the same run, per layout ("not run" without it). Issue 23 retired the old
//!   B/A ≥ 0.6, B/A' ≥ 1.0 and B4/A ≥ 0.4 for this;
//! - produce eventd/bare ≥ 0.8;
//! - µs CPU per event of B, C and B4 at 64 partitions at most 1.2x that at 16;
//! - idle CPU under 1% of a core;
//! - latency p99 under 50 ms;
//! - every phase's peak RSS within the README's memory budget for its config, with
//!   E = 4x the event's key and body, W = the event plus 256 B of headers, and
//!   B = 16 KiB: `25 MiB + P x (2 x fetch_buffer x (1 + 200 B / S) + B +
//!   max_in_flight x E) +
//!   min(producer.max_buffer, producer.max_in_flight x (W + 250 B))`. The producer
//!   pair has P = 0 and W = the line; A and A' write nothing, so they have no
//!   producer term.
//!
//! It exits 1 when a target is missed or a phase failed, after printing everything.
//!
//! Settings (environment):
//! - `EVENTD_BENCH_EVENTS` (4000000): events of each 100 B layout and of the producer
//!   pair;
//! - `EVENTD_BENCH_LARGE_EVENTS` (1500000): events of the 1 KiB layout;
//! - `EVENTD_BENCH_PHASES` (all): a comma-separated subset of `A`, `A'`, `A-fwd`,
//!   `A-fwd-plain`, `B`, `C`, `webhook`, `B4`, `produce`, `idle`, `latency`;
//! - `EVENTD_BENCH_BEFORE` (unset): an earlier eventd binary for the side-by-side
//!   phases, e.g. one built from `main` with
//!   `git archive main | tar -x -C /tmp/before && cargo build --release` there;
//! - `EVENTD_BENCH_LAYOUTS` (`16x100,64x100,16x1024`): partitions x event bytes,
//!   partitions a multiple of 4;
//! - `EVENTD_BENCH_IDLE_SECS` (10), `EVENTD_BENCH_LATENCY_SECS` (10),
//!   `EVENTD_BENCH_LATENCY_RATE` (20000);
//! - `TANSU=/path/to/tansu`: the broker binary (else `tansu` on PATH, else
//!   ~/.cargo/bin/tansu).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventd::actors::producer::partitioner::sarama_partition;
use eventd::config::Config;
use eventd::event::headers;
use eventd::kafka::{consumer_config, producer_config, Brokers};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{event, free_port, samples, start_bin_with, start_with, Broker, Eventd, Storage};

const KINDS: [&str; 4] = ["browse", "like", "favorite", "comment"];
const KEYS: usize = 1000;
/// Every 100th event (ids ending in 99) is malformed.
const MALFORMED_EVERY: usize = 100;
/// A re-executed bench binary finds its job here (JSON of `ChildSpec`).
const CHILD_ENV: &str = "EVENTD_BENCH_CHILD";
/// A child's one line of result on stdout.
const RESULT_PREFIX: &str = "EVENTD_BENCH_RESULT ";
/// USER_HZ: the unit of utime and stime in /proc/<pid>/stat on Linux.
const CLOCK_TICKS: f64 = 100.0;
const MIB: f64 = 1024.0 * 1024.0;
/// The harness producer's `batch.size`: B, the largest record batch, in the budget.
const BATCH_BYTES: u64 = 16 * 1024;
/// The README's bytes librdkafka keeps per fetched event beside the event itself.
const LIBRDKAFKA_PER_EVENT: u64 = 200;
/// The README's bytes librdkafka and eventd keep per unacknowledged written event.
const PRODUCER_PER_EVENT: u64 = 250;
/// The README's `base` of the memory budget.
const BASE_BYTES: u64 = 25 << 20;
/// A phase that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(60);
/// How often /metrics is read while a phase runs.
const SCRAPE_EVERY: Duration = Duration::from_millis(50);
/// Scrapes after a phase to measure what one costs eventd.
const COST_SCRAPES: u32 = 200;
/// Bytes a written event adds to its body: the dead-letter copy's headers (source
/// topic, partition, offset and the error), the largest of what eventd writes.
const WRITTEN_OVERHEAD: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    A,
    ADecode,
    AFwd,
    /// A-fwd without the source headers: what they cost.
    AFwdPlain,
    B,
    C,
    Webhook,
    B4,
    /// B, C and B4 run by the build named in `EVENTD_BENCH_BEFORE`, side by side.
    BBefore,
    CBefore,
    B4Before,
    ProduceBare,
    ProduceEventd,
    IdleBare,
    Idle,
    Latency,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::A => "A",
            Phase::ADecode => "A'",
            Phase::AFwd => "A-fwd",
            Phase::AFwdPlain => "A-fwd-plain",
            Phase::B => "B",
            Phase::C => "C",
            Phase::Webhook => "webhook",
            Phase::B4 => "B4",
            Phase::BBefore => "B@before",
            Phase::CBefore => "C@before",
            Phase::B4Before => "B4@before",
            Phase::ProduceBare => "produce-bare",
            Phase::ProduceEventd => "produce-eventd",
            Phase::IdleBare => "idle-bare",
            Phase::Idle => "idle",
            Phase::Latency => "latency",
        }
    }

    /// The phase whose events per CPU-second this one's are divided by.
    fn baseline(self) -> Option<Phase> {
        match self {
            Phase::ADecode | Phase::AFwd | Phase::B | Phase::B4 => Some(Phase::A),
            Phase::C | Phase::AFwdPlain | Phase::Webhook => Some(Phase::AFwd),
            Phase::ProduceEventd => Some(Phase::ProduceBare),
            _ => None,
        }
    }

    /// The phase a side-by-side run of the earlier build repeats.
    fn before(self) -> Option<Phase> {
        match self {
            Phase::B => Some(Phase::BBefore),
            Phase::C => Some(Phase::CBefore),
            Phase::B4 => Some(Phase::B4Before),
            _ => None,
        }
    }

    /// For a side-by-side run of the earlier build, the phase it repeats; else itself.
    fn current(self) -> Phase {
        match self {
            Phase::BBefore => Phase::B,
            Phase::CBefore => Phase::C,
            Phase::B4Before => Phase::B4,
            phase => phase,
        }
    }

    const CONSUMING: [Phase; 8] = [
        Phase::A,
        Phase::ADecode,
        Phase::AFwd,
        Phase::AFwdPlain,
        Phase::B,
        Phase::C,
        Phase::Webhook,
        Phase::B4,
    ];
}

/// Total partitions (over 4 topics) and event size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    partitions: i32,
    size: usize,
}

impl Layout {
    fn name(self) -> String {
        format!("{}x{}", self.partitions, self.size)
    }

    fn topics(self) -> Vec<String> {
        KINDS
            .iter()
            .map(|kind| format!("{kind}-{}", self.name()))
            .collect()
    }

    fn per_topic(self) -> i32 {
        self.partitions / KINDS.len() as i32
    }
}

struct Settings {
    /// An earlier build of eventd to run B, C and B4 with too (`EVENTD_BENCH_BEFORE`).
    before: Option<PathBuf>,
    events: usize,
    large_events: usize,
    phases: Vec<String>,
    layouts: Vec<Layout>,
    idle_secs: f64,
    latency_secs: f64,
    latency_rate: f64,
}

const PHASE_NAMES: [&str; 11] = [
    "A",
    "A'",
    "A-fwd",
    "A-fwd-plain",
    "B",
    "C",
    "webhook",
    "B4",
    "produce",
    "idle",
    "latency",
];

impl Settings {
    fn from_env() -> Settings {
        let phases = match std::env::var("EVENTD_BENCH_PHASES") {
            Ok(list) => {
                let chosen: Vec<String> = list
                    .split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect();
                for phase in &chosen {
                    assert!(
                        PHASE_NAMES.contains(&phase.as_str()),
                        "EVENTD_BENCH_PHASES: unknown phase {phase:?}; choose from {PHASE_NAMES:?}"
                    );
                }
                chosen
            }
            Err(_) => PHASE_NAMES.iter().map(|p| p.to_string()).collect(),
        };
        let layouts = std::env::var("EVENTD_BENCH_LAYOUTS")
            .unwrap_or_else(|_| "16x100,64x100,16x1024".to_owned())
            .split(',')
            .filter(|l| !l.trim().is_empty())
            .map(|text| {
                let parsed = text.trim().split_once('x').and_then(|(p, s)| {
                    Some(Layout {
                        partitions: p.parse().ok()?,
                        size: s.parse().ok()?,
                    })
                });
                match parsed {
                    Some(layout) if layout.partitions > 0 && layout.partitions % 4 == 0 => layout,
                    _ => panic!(
                        "EVENTD_BENCH_LAYOUTS: {text:?} is not PARTITIONSxBYTES with partitions a multiple of 4"
                    ),
                }
            })
            .collect();
        let before = std::env::var_os("EVENTD_BENCH_BEFORE").map(PathBuf::from);
        if let Some(bin) = &before {
            assert!(
                bin.is_file(),
                "EVENTD_BENCH_BEFORE: {} is not a file",
                bin.display()
            );
        }
        Settings {
            before,
            events: common::env_count("EVENTD_BENCH_EVENTS", 4_000_000),
            large_events: common::env_count("EVENTD_BENCH_LARGE_EVENTS", 1_500_000),
            phases,
            layouts,
            idle_secs: common::env_count("EVENTD_BENCH_IDLE_SECS", 10) as f64,
            latency_secs: common::env_count("EVENTD_BENCH_LATENCY_SECS", 10) as f64,
            latency_rate: common::env_count("EVENTD_BENCH_LATENCY_RATE", 20_000) as f64,
        }
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }

    fn events_for(&self, layout: Layout) -> usize {
        if layout.size > 200 {
            self.large_events
        } else {
            self.events
        }
    }
}

/// One measured phase.
struct Row {
    phase: Phase,
    size: usize,
    partitions: i32,
    /// Events in the measured window.
    events: u64,
    wall: f64,
    /// CPU seconds in the measured window.
    cpu: f64,
    /// CPU seconds over the process's whole life.
    life_cpu: f64,
    peak: u64,
    budget: u64,
    note: String,
    /// Idle phases: CPU seconds per second.
    idle_share: Option<f64>,
    /// Latency phase: p50 and p99 in ms.
    latency: Option<(f64, f64)>,
}

impl Row {
    fn per_cpu_second(&self) -> Option<f64> {
        (self.events > 0 && self.cpu > 0.0).then(|| self.events as f64 / self.cpu)
    }

    fn micros_per_event(&self) -> Option<f64> {
        (self.events > 0).then(|| self.cpu * 1e6 / self.events as f64)
    }
}

/// What the parent process holds for the whole run.
struct Ctx {
    broker: Broker,
    bootstrap: String,
    dir: tempfile::TempDir,
    dead_letter: String,
    settings: Settings,
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child_main(&spec);
        return;
    }
    let started = Instant::now();
    let settings = Settings::from_env();
    let broker = Broker::tansu_with(Storage::Memory, 4, &[]);
    let bootstrap = broker.bootstrap();
    let dead_letter = "bench-dead-letter".to_owned();
    broker.create_topic(&dead_letter, 4);
    let ctx = Ctx {
        broker,
        bootstrap,
        dir: tempfile::Builder::new()
            .prefix("eventd-pipeline-bench-")
            .tempdir()
            .expect("tempdir"),
        dead_letter,
        settings,
    };
    eprintln!(
        "tansu {} (memory storage) | phases {:?} | layouts {:?}",
        ctx.bootstrap,
        ctx.settings.phases,
        ctx.settings
            .layouts
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut record = |label: String, result: Result<Row, String>, rows: &mut Vec<Row>| match result
    {
        Ok(row) => {
            eprintln!(
                "  {label}: {} events, {:.2} s wall, {:.3} s CPU ({:.3} s over its life), peak {:.1} MiB{}",
                row.events,
                row.wall,
                row.cpu,
                row.life_cpu,
                row.peak as f64 / MIB,
                if row.note.is_empty() { String::new() } else { format!(", {}", row.note) }
            );
            rows.push(row);
        }
        Err(reason) => {
            eprintln!("  {label}: FAILED: {reason}");
            failures.push((label, reason));
        }
    };

    for layout in ctx.settings.layouts.clone() {
        // Each phase of eventd is followed by the earlier build's run of it, if asked for.
        let selected: Vec<Phase> = Phase::CONSUMING
            .into_iter()
            .filter(|p| ctx.settings.runs(p.name()))
            .flat_map(|p| {
                let before = p.before().filter(|_| ctx.settings.before.is_some());
                std::iter::once(p).chain(before)
            })
            .collect();
        if selected.is_empty() {
            continue;
        }
        let data = match guarded(|| Ok(prefill(&ctx, layout))) {
            Ok(data) => data,
            Err(reason) => {
                record(format!("prefill {}", layout.name()), Err(reason), &mut rows);
                continue;
            }
        };
        for phase in selected {
            let label = format!("{} {}", phase.name(), layout.name());
            eprintln!("{label} ...");
            let result = guarded(|| match phase {
                Phase::A | Phase::ADecode | Phase::AFwd | Phase::AFwdPlain => {
                    bare_consume(&ctx, layout, &data, phase)
                }
                _ => eventd_consume(&ctx, layout, &data, phase),
            });
            record(label, result, &mut rows);
        }
    }
    if ctx.settings.runs("produce") {
        for phase in [Phase::ProduceBare, Phase::ProduceEventd] {
            eprintln!("{} ...", phase.name());
            let result = guarded(|| produce_phase(&ctx, phase));
            record(phase.name().to_owned(), result, &mut rows);
        }
    }
    if ctx.settings.runs("idle") {
        for phase in [Phase::IdleBare, Phase::Idle] {
            eprintln!("{} ...", phase.name());
            let result = guarded(|| idle_phase(&ctx, phase));
            record(phase.name().to_owned(), result, &mut rows);
        }
    }
    if ctx.settings.runs("latency") {
        eprintln!("latency ...");
        let result = guarded(|| latency_phase(&ctx));
        record("latency".to_owned(), result, &mut rows);
    }

    print_table(&rows);
    let missed = check_targets(&rows, ctx.settings.latency_rate);
    if !failures.is_empty() {
        println!();
        println!("Phases that failed (no figures):");
        for (label, reason) in &failures {
            let short: String = reason.chars().take(400).collect();
            println!("- {label}: {short}");
        }
    }
    eprintln!("bench took {:.0} s", started.elapsed().as_secs_f64());
    drop(ctx);
    if missed > 0 || !failures.is_empty() {
        std::process::exit(1);
    }
}

/// Runs `f`, turning a panic (the harness panics with eventd's logs) into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".to_owned())),
    }
}

// ---------------------------------------------------------------------------------
// Events and pre-fill

fn is_malformed(id: usize) -> bool {
    id % MALFORMED_EVERY == MALFORMED_EVERY - 1
}

/// The harness's event `id`, padded to about `size` bytes with a `text` field, and cut
/// to two thirds when it is one of the malformed ones.
fn payload(id: usize, size: usize) -> (String, Vec<u8>) {
    let item = format!("item-{}", id % KEYS);
    let mut body = event(id, &item);
    // `,"text":""` is 10 bytes.
    if size > body.len() + 10 {
        let pad = size - body.len() - 10;
        body.pop();
        body.push_str(",\"text\":\"");
        body.extend(std::iter::repeat_n('x', pad));
        body.push_str("\"}");
    }
    let mut bytes = body.into_bytes();
    if is_malformed(id) {
        bytes.truncate(bytes.len() * 2 / 3);
    }
    (item, bytes)
}

/// What a layout's topics hold.
struct Prefilled {
    total: u64,
    malformed: u64,
    /// Mean payload plus key bytes.
    wire_bytes: u64,
}

impl Prefilled {
    fn valid(&self) -> u64 {
        self.total - self.malformed
    }
}

fn prefill(ctx: &Ctx, layout: Layout) -> Prefilled {
    let total = ctx.settings.events_for(layout);
    for topic in layout.topics() {
        ctx.broker.create_topic(&topic, layout.per_topic());
    }
    let started = Instant::now();
    let topics = layout.topics();
    let per_topic = total.div_ceil(topics.len());
    let mut bytes = 0u64;
    let mut delivered = 0;
    for (t, topic) in topics.iter().enumerate() {
        let ids = (t * per_topic)..((t + 1) * per_topic).min(total);
        let events = ids.map(|id| {
            let (key, body) = payload(id, layout.size);
            bytes += (key.len() + body.len()) as u64;
            (key, body)
        });
        delivered += ctx.broker.produce_stream(topic, events);
    }
    assert_eq!(delivered, total as u64, "pre-fill acknowledged");
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "pre-fill {}: {total} events of ~{} B (key + body) into {} partitions in {seconds:.1} s ({:.0} events/s, {:.1} MiB/s)",
        layout.name(),
        bytes / total as u64,
        layout.partitions,
        total as f64 / seconds,
        bytes as f64 / MIB / seconds
    );
    Prefilled {
        total: total as u64,
        malformed: (0..total).filter(|id| is_malformed(*id)).count() as u64,
        wire_bytes: bytes / total as u64,
    }
}

// ---------------------------------------------------------------------------------
// Configs

/// Handlers of each eventd phase, and their names.
fn handlers(phase: Phase, layout_name: &str) -> (String, Vec<&'static str>) {
    let counts = format!("counts-{layout_name}");
    match phase {
        Phase::C | Phase::Latency => (
            format!(
                "[[handlers]]\nname = \"copy\"\nkind = \"forward\"\nconsumer = \"bench\"\noutput = \"out-C-{layout_name}\"\n"
            ),
            vec!["copy"],
        ),
        Phase::Webhook => (
            format!(
                "[[handlers]]\nname = \"notify\"\nkind = \"webhook\"\nconsumer = \"bench\"\nurl = \"{}\"\n",
                webhook_sink()
            ),
            vec!["notify"],
        ),
        Phase::B4 => (
            format!(
                r#"[[handlers]]
name = "per-item"
kind = "count"
consumer = "bench"
group_by = "item_id"
window = "10s"
output = "{counts}"

[[handlers]]
name = "per-user"
kind = "count"
consumer = "bench"
group_by = "user_id"
window = "10s"
output = "{counts}"

[[handlers]]
name = "adds-per-item"
kind = "count"
consumer = "bench"
group_by = "item_id"
window = "1m"
output = "{counts}"
[handlers.filter]
action = {{ equals = "add" }}

[[handlers]]
name = "activity-log"
kind = "log"
consumer = "bench"
sample = 0.01
"#
            ),
            vec!["per-item", "per-user", "adds-per-item", "activity-log"],
        ),
        _ => (
            format!(
                "[[handlers]]\nname = \"per-item\"\nkind = \"count\"\nconsumer = \"bench\"\ngroup_by = \"item_id\"\nwindow = \"10s\"\noutput = \"{counts}\"\n"
            ),
            vec!["per-item"],
        ),
    }
}

/// The address of an HTTP server in this process answering 200 at once, started on
/// first use; it reads every body, as a real service does.
fn webhook_sink() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("the sink listens"));
        let port = server.server_addr().to_ip().expect("an IP address").port();
        for _ in 0..2 {
            let server = server.clone();
            std::thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let mut body = Vec::new();
                    let _ = std::io::Read::read_to_end(request.as_reader(), &mut body);
                    let _ = request.respond(tiny_http::Response::empty(200));
                }
            });
        }
        format!("http://127.0.0.1:{port}/events")
    })
}

/// An eventd config file for `topics` read by consumer `bench` in `group`.
fn write_config(
    ctx: &Ctx,
    name: &str,
    port: u16,
    group: &str,
    topics: &[String],
    handlers: &str,
    tansu_fetch_wait: bool,
) -> PathBuf {
    let options = if tansu_fetch_wait {
        "[kafka.options]\n# tansu sleeps the whole fetch.wait.max.ms below 250 ms, even with data\n\"fetch.wait.max.ms\" = \"10\"\n"
    } else {
        ""
    };
    let topics = topics
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"[kafka]
brokers = "{bootstrap}"

{options}
[metrics]
listen = "127.0.0.1:{port}"

[log]
format = "json"
level = "info"

[dead_letter]
topic = "{dead_letter}"

[[consumers]]
name = "bench"
group_id = "{group}"
topics = [{topics}]

{handlers}"#,
        bootstrap = ctx.bootstrap,
        dead_letter = ctx.dead_letter,
    );
    let path = ctx.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

fn load_config(path: &Path) -> (Config, Brokers) {
    let config = Config::load(Some(path))
        .or_else(|_| Config::load_for_producer(Some(path)))
        .unwrap_or_else(|error| panic!("config {}: {}", path.display(), error.lines().join("; ")));
    let brokers = Brokers {
        bootstrap: config.kafka.brokers.clone().expect("kafka.brokers is set"),
        embedded: false,
    };
    (config, brokers)
}

/// The README's memory budget for `partitions` assigned partitions of events of
/// `wire_bytes`, and a producer writing events of `written` bytes (0: none).
fn budget(config: &Config, partitions: u64, wire_bytes: u64, written: u64) -> u64 {
    let consumer = config.consumers.first();
    let per_partition = consumer.map_or(0, |c| {
        2 * c.fetch_buffer.bytes() * (wire_bytes + LIBRDKAFKA_PER_EVENT) / wire_bytes.max(1)
            + BATCH_BYTES
            + c.max_in_flight as u64 * 4 * wire_bytes
    });
    let producer = if written > 0 {
        config
            .producer
            .max_buffer
            .bytes()
            .min(config.producer.max_in_flight as u64 * (written + PRODUCER_PER_EVENT))
    } else {
        0
    };
    BASE_BYTES + partitions * per_partition + producer
}

// ---------------------------------------------------------------------------------
// Processes: CPU, memory, exit

/// State, and user + system CPU seconds of every thread (live or exited), of `pid`.
fn proc_stat(pid: &str) -> Option<(char, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((state, (utime + stime) / CLOCK_TICKS))
}

fn cpu_of(pid: u32) -> f64 {
    proc_stat(&pid.to_string())
        .map(|(_, cpu)| cpu)
        .unwrap_or_else(|| panic!("no /proc/{pid}/stat"))
}

/// VmHWM of `pid` (or "self") in bytes.
fn vm_hwm(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// A process's whole life, read as a zombie before it is reaped.
struct Life {
    wall: f64,
    cpu: f64,
    /// Largest VmHWM seen while it ran.
    peak: u64,
    status: ExitStatus,
}

/// Waits for `pid` to exit without reaping it, and returns its CPU time as a zombie.
fn cpu_at_exit(pid: u32, patience: Duration, peak: &mut u64) -> Result<f64, String> {
    let deadline = Instant::now() + patience;
    let pid_text = pid.to_string();
    loop {
        match proc_stat(&pid_text) {
            Some(('Z', cpu)) => return Ok(cpu),
            Some(_) => {
                if let Some(hwm) = vm_hwm(&pid_text) {
                    *peak = (*peak).max(hwm);
                }
            }
            None => {
                return Err(format!(
                    "process {pid} was gone before its CPU time was read"
                ))
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("process {pid} did not exit within {patience:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a child of this process to exit and reaps it.
fn watch(child: &mut Child, started: Instant, patience: Duration) -> Result<Life, String> {
    let mut peak = 0;
    let cpu = match cpu_at_exit(child.id(), patience, &mut peak) {
        Ok(cpu) => cpu,
        Err(reason) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(reason);
        }
    };
    let wall = started.elapsed().as_secs_f64();
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    Ok(Life {
        wall,
        cpu,
        peak,
        status,
    })
}

/// Runs this bench binary again as the child `spec` describes; returns its report and
/// life.
fn run_child(spec: &ChildSpec, patience: Duration) -> Result<(ChildReport, Life), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let started = Instant::now();
    let mut child = Command::new(exe)
        .env(CHILD_ENV, serde_json::to_string(spec).expect("spec json"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn child: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let life = watch(&mut child, started, patience)?;
    let text = reader.join().unwrap_or_default();
    let report = text
        .lines()
        .find_map(|line| line.strip_prefix(RESULT_PREFIX))
        .and_then(|json| serde_json::from_str::<ChildReport>(json).ok())
        .ok_or_else(|| {
            format!(
                "child {:?} exited with {} without a result (its stderr is above)",
                spec.job, life.status
            )
        })?;
    Ok((report, life))
}

// ---------------------------------------------------------------------------------
// Bare phases (parent side)

fn bare_consume(ctx: &Ctx, layout: Layout, data: &Prefilled, phase: Phase) -> Result<Row, String> {
    let slug = phase.name().replace('\'', "-decode");
    let group = format!("bench-{slug}-{}", layout.name());
    let (body, _) = handlers(Phase::B, &layout.name());
    let config_path = write_config(
        ctx,
        &group,
        free_port(),
        &group,
        &layout.topics(),
        &body,
        true,
    );
    let output = format!("out-{}-{}", slug.replace('-', ""), layout.name());
    let forwards = matches!(phase, Phase::AFwd | Phase::AFwdPlain);
    if forwards {
        ctx.broker.create_topic(&output, layout.per_topic());
    }
    let job = match phase {
        Phase::A => Job::Consume { decode: false },
        Phase::ADecode => Job::Consume { decode: true },
        _ => Job::Forward {
            headers: phase == Phase::AFwd,
        },
    };
    let spec = ChildSpec {
        job,
        config: config_path.clone(),
        group,
        topics: layout.topics(),
        total: data.total,
        output,
        output_partitions: layout.per_topic(),
        input: PathBuf::new(),
        partitions: layout.partitions as usize,
        idle_secs: 0.0,
    };
    let (report, life) = run_child(&spec, Duration::from_secs(3600))?;
    if report.counted != data.total {
        return Err(format!("counted {} of {}", report.counted, data.total));
    }
    let mut note = String::new();
    if phase == Phase::ADecode {
        if report.invalid != data.malformed {
            return Err(format!(
                "decoded {} invalid events, {} are malformed",
                report.invalid, data.malformed
            ));
        }
        let _ = write!(note, "{} invalid", report.invalid);
    }
    let (config, _) = load_config(&config_path);
    let written = if forwards {
        data.wire_bytes + WRITTEN_OVERHEAD
    } else {
        0
    };
    Ok(Row {
        phase,
        size: layout.size,
        partitions: layout.partitions,
        events: report.counted,
        wall: report.wall,
        cpu: report.cpu,
        life_cpu: life.cpu,
        peak: report.peak,
        budget: budget(&config, layout.partitions as u64, data.wire_bytes, written),
        note,
        idle_share: None,
        latency: None,
    })
}

// ---------------------------------------------------------------------------------
// eventd phases

/// One scrape's view of progress.
struct Progress {
    consumed: f64,
    dead_lettered: f64,
    /// The least handled count over the phase's handlers.
    handled: f64,
}

fn progress(eventd: &Eventd, handler_names: &[&str]) -> Progress {
    let body = eventd.scrape();
    let value =
        |metric: &str, labels: &[(&str, &str)]| samples(&body, metric, labels).unwrap_or(0.0);
    Progress {
        consumed: value("eventd_events_consumed_total", &[]),
        dead_lettered: value("eventd_events_dead_lettered_total", &[]),
        handled: handler_names
            .iter()
            .map(|h| value("eventd_events_handled_total", &[("handler", h)]))
            .fold(f64::INFINITY, f64::min),
    }
}

/// CPU seconds one /metrics scrape costs eventd, measured once it is done.
fn scrape_cost(eventd: &Eventd) -> f64 {
    let pid = eventd.child.id();
    let before = cpu_of(pid);
    for _ in 0..COST_SCRAPES {
        let _ = eventd.scrape();
    }
    (cpu_of(pid) - before) / f64::from(COST_SCRAPES)
}

/// SIGTERM, then the whole-life CPU and the exit code.
fn stop_eventd(mut eventd: Eventd) -> Result<(f64, Option<i32>), String> {
    let pid = eventd.child.id();
    eventd.signal("TERM");
    let mut peak = 0;
    let life = cpu_at_exit(pid, Duration::from_secs(60), &mut peak);
    let status = eventd.wait_exit(Duration::from_secs(10));
    Ok((life?, status.and_then(|s| s.code())))
}

/// Waits until eventd reads its first event; returns that first view and its time.
fn wait_first(eventd: &Eventd, handler_names: &[&str]) -> Result<Progress, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = progress(eventd, handler_names);
        if seen.consumed >= 1.0 {
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "eventd consumed nothing within 120 s; log tail:\n{}",
                tail(&eventd.logs(), 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn eventd_consume(
    ctx: &Ctx,
    layout: Layout,
    data: &Prefilled,
    phase: Phase,
) -> Result<Row, String> {
    let group = format!("bench-{}-{}", phase.name().replace('@', "-"), layout.name());
    let (body, names) = handlers(phase.current(), &layout.name());
    match phase.current() {
        Phase::C => create_once(ctx, &format!("out-C-{}", layout.name()), layout.per_topic()),
        _ => create_once(ctx, &format!("counts-{}", layout.name()), 4),
    }
    let port = free_port();
    let config_path = write_config(ctx, &group, port, &group, &layout.topics(), &body, true);
    let (config, _) = load_config(&config_path);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let eventd = match (&ctx.settings.before, phase.current() != phase) {
        (Some(bin), true) => start_bin_with(bin, dir, config_path, port, &[]),
        _ => start_with(dir, config_path, port, &[]),
    };
    let pid = eventd.child.id();

    let first = wait_first(&eventd, &names)?;
    let cpu0 = cpu_of(pid);
    let t0 = Instant::now();
    let valid = data.valid() as f64;
    let malformed = data.malformed as f64;
    let mut scrapes = 1u64;
    let mut last_change = Instant::now();
    let mut last_handled = first.handled;
    let last = loop {
        std::thread::sleep(SCRAPE_EVERY);
        let seen = progress(&eventd, &names);
        scrapes += 1;
        if seen.handled >= valid && seen.dead_lettered >= malformed {
            break seen;
        }
        if seen.handled > last_handled {
            last_handled = seen.handled;
            last_change = Instant::now();
        } else if last_change.elapsed() > STALL {
            return Err(format!(
                "stalled: handled {} of {valid} valid, {} of {malformed} dead-lettered; log tail:\n{}",
                seen.handled,
                seen.dead_lettered,
                tail(&eventd.logs(), 20)
            ));
        }
    };
    let cpu = cpu_of(pid) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let (_, peak) = eventd.memory();
    let per_scrape = scrape_cost(&eventd);
    let (life_cpu, code) = stop_eventd(eventd)?;
    let events = data.total - first.consumed as u64;
    let mut note = format!(
        "scrapes ~{:.1}% of CPU",
        100.0 * per_scrape * scrapes as f64 / cpu
    );
    if last.consumed > data.total as f64 {
        let _ = write!(
            note,
            ", {} consumed twice",
            last.consumed as u64 - data.total
        );
    }
    if code != Some(0) {
        let _ = write!(note, ", exit {code:?} after SIGTERM");
    }
    Ok(Row {
        phase,
        size: layout.size,
        partitions: layout.partitions,
        events,
        wall,
        cpu,
        life_cpu,
        peak,
        budget: budget(
            &config,
            layout.partitions as u64,
            data.wire_bytes,
            data.wire_bytes + WRITTEN_OVERHEAD,
        ),
        note,
        idle_share: None,
        latency: None,
    })
}

/// Creates `topic` unless this run created it already.
fn create_once(ctx: &Ctx, topic: &str, partitions: i32) {
    static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut created = CREATED.lock().expect("created lock");
    if !created.iter().any(|t| t == topic) {
        ctx.broker.create_topic(topic, partitions);
        created.push(topic.to_owned());
    }
}

// ---------------------------------------------------------------------------------
// Producer pair

fn produce_phase(ctx: &Ctx, phase: Phase) -> Result<Row, String> {
    const PARTITIONS: i32 = 16;
    let total = ctx.settings.events;
    let size = 100;
    let input = ctx.dir.path().join("produce-input.jsonl");
    let mut bytes = 0u64;
    if !input.exists() {
        let mut file = BufWriter::new(std::fs::File::create(&input).map_err(|e| e.to_string())?);
        for id in 0..total {
            let (_, body) = payload(id, size);
            file.write_all(&body)
                .and_then(|_| file.write_all(b"\n"))
                .map_err(|e| e.to_string())?;
        }
        file.flush().map_err(|e| e.to_string())?;
    }
    for id in 0..total {
        let (key, body) = payload(id, size);
        bytes += (key.len() + body.len()) as u64;
    }
    let wire = bytes / total as u64;
    let malformed = (0..total).filter(|id| is_malformed(*id)).count() as u64;
    let valid = total as u64 - malformed;
    let topic = format!("{}-out", phase.name());
    ctx.broker.create_topic(&topic, PARTITIONS);
    let config_path = ctx.dir.path().join(format!("{}.toml", phase.name()));
    std::fs::write(
        &config_path,
        format!("[kafka]\nbrokers = \"{}\"\n", ctx.bootstrap),
    )
    .map_err(|e| e.to_string())?;
    let (config, _) = load_config(&config_path);
    let (sent, life, note) = match phase {
        Phase::ProduceBare => {
            let spec = ChildSpec {
                job: Job::Produce,
                config: config_path.clone(),
                group: String::new(),
                topics: vec![topic.clone()],
                total: total as u64,
                output: topic,
                output_partitions: PARTITIONS,
                input: input.clone(),
                partitions: 0,
                idle_secs: 0.0,
            };
            let (report, life) = run_child(&spec, Duration::from_secs(3600))?;
            if report.invalid != malformed {
                return Err(format!(
                    "bare producer refused {} lines, {malformed} are malformed",
                    report.invalid
                ));
            }
            (report.counted, life, String::new())
        }
        _ => {
            let out_path = ctx.dir.path().join("produce-eventd.out");
            let err_path = ctx.dir.path().join("produce-eventd.err");
            let started = Instant::now();
            let mut child = Command::new(env!("CARGO_BIN_EXE_eventd"))
                .arg("produce")
                .arg("--config")
                .arg(&config_path)
                .arg("--input")
                .arg(&input)
                .arg("--topic")
                .arg(&topic)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out_path).map_err(|e| e.to_string())?)
                .stderr(std::fs::File::create(&err_path).map_err(|e| e.to_string())?)
                .spawn()
                .map_err(|e| format!("eventd produce: {e}"))?;
            let life = watch(&mut child, started, Duration::from_secs(3600))?;
            let out = std::fs::read_to_string(&out_path).unwrap_or_default();
            let summary = out
                .lines()
                .rev()
                .find(|l| l.starts_with("sent "))
                .ok_or_else(|| {
                    format!(
                        "eventd produce printed no summary (exit {}); stderr tail:\n{}",
                        life.status,
                        tail(&std::fs::read_to_string(&err_path).unwrap_or_default(), 10)
                    )
                })?;
            let number = |after: &str| -> Option<u64> {
                summary
                    .split_once(after)?
                    .1
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            };
            let sent = number("sent ").unwrap_or(0);
            let failed = number("failed ").unwrap_or(u64::MAX);
            if failed != malformed {
                return Err(format!(
                    "eventd produce: {summary:?}, but {malformed} lines are malformed"
                ));
            }
            let note = format!(
                "exit {} ({failed} refused lines)",
                life.status.code().unwrap_or(-1)
            );
            (sent, life, note)
        }
    };
    if sent != valid {
        return Err(format!(
            "{} delivered {sent} of {valid} valid events",
            phase.name()
        ));
    }
    Ok(Row {
        phase,
        size,
        partitions: PARTITIONS,
        events: sent,
        wall: life.wall,
        cpu: life.cpu,
        life_cpu: life.cpu,
        peak: life.peak,
        budget: budget(&config, 0, wire, wire),
        note,
        idle_share: None,
        latency: None,
    })
}

// ---------------------------------------------------------------------------------
// Idle

fn idle_phase(ctx: &Ctx, phase: Phase) -> Result<Row, String> {
    const PARTITIONS: i32 = 64;
    let topics: Vec<String> = KINDS.iter().map(|k| format!("idle-{k}")).collect();
    for topic in &topics {
        create_once(ctx, topic, PARTITIONS / 4);
    }
    create_once(ctx, "counts-idle", 4);
    let group = format!("bench-{}", phase.name());
    let (body, _) = handlers(Phase::B, "idle");
    let port = free_port();
    let config_path = write_config(ctx, &group, port, &group, &topics, &body, false);
    let (config, _) = load_config(&config_path);
    let seconds = ctx.settings.idle_secs;
    let (cpu, life_cpu, peak, note) = match phase {
        Phase::IdleBare => {
            let spec = ChildSpec {
                job: Job::Idle,
                config: config_path,
                group,
                topics,
                total: 0,
                output: String::new(),
                output_partitions: 0,
                input: PathBuf::new(),
                partitions: PARTITIONS as usize,
                idle_secs: seconds,
            };
            let (report, life) = run_child(&spec, Duration::from_secs(600))?;
            (report.cpu, life.cpu, report.peak, String::new())
        }
        _ => {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let eventd = start_with(dir, config_path, port, &[]);
            wait_for_workers(&eventd, PARTITIONS as usize)?;
            // Let the assignment settle (committed offsets fetched, first empty fetches).
            std::thread::sleep(Duration::from_secs(2));
            let pid = eventd.child.id();
            let before = cpu_of(pid);
            std::thread::sleep(Duration::from_secs_f64(seconds));
            let cpu = cpu_of(pid) - before;
            let (_, peak) = eventd.memory();
            let (life_cpu, code) = stop_eventd(eventd)?;
            let note = if code == Some(0) {
                String::new()
            } else {
                format!("exit {code:?} after SIGTERM")
            };
            (cpu, life_cpu, peak, note)
        }
    };
    let share = cpu / seconds;
    Ok(Row {
        phase,
        size: 0,
        partitions: PARTITIONS,
        events: 0,
        wall: seconds,
        cpu,
        life_cpu,
        peak,
        // Nothing flows: the budget is that of the 100 B events at this config.
        budget: budget(&config, PARTITIONS as u64, 105, 105 + WRITTEN_OVERHEAD),
        note: format!(
            "{:.2}% of a core{}{note}",
            share * 100.0,
            if note.is_empty() { "" } else { ", " }
        ),
        idle_share: Some(share),
        latency: None,
    })
}

// ---------------------------------------------------------------------------------
// Latency

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

/// Waits until eventd runs a partition worker for each of `partitions`.
fn wait_for_workers(eventd: &Eventd, partitions: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let workers = eventd
            .scrape()
            .lines()
            .filter(|l| l.starts_with("eventd_partition_in_flight{"))
            .count();
        if workers >= partitions {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{workers} of {partitions} partition workers after 120 s; log tail:\n{}",
                tail(&eventd.logs(), 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn latency_phase(ctx: &Ctx) -> Result<Row, String> {
    const PER_TOPIC: i32 = 4;
    let layout_name = "latency";
    let topics: Vec<String> = KINDS.iter().map(|k| format!("lat-{k}")).collect();
    for topic in &topics {
        create_once(ctx, topic, PER_TOPIC);
    }
    let output = format!("out-C-{layout_name}");
    create_once(ctx, &output, PER_TOPIC);
    let group = "bench-latency".to_owned();
    let (body, _) = handlers(Phase::Latency, layout_name);
    let port = free_port();
    let config_path = write_config(ctx, &group, port, &group, &topics, &body, true);
    let (config, brokers) = load_config(&config_path);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let eventd = start_with(dir, config_path, port, &[]);
    let partitions = (PER_TOPIC as usize) * topics.len();
    wait_for_workers(&eventd, partitions)?;

    let rate = ctx.settings.latency_rate;
    let total = (rate * ctx.settings.latency_secs) as usize;
    let warmup = rate as usize;
    // Per sequence number: (receive time, copy's CreateTime in µs) minus `sent_us`.
    let latencies: Arc<Mutex<Vec<(i64, i64)>>> =
        Arc::new(Mutex::new(vec![(i64::MIN, i64::MIN); total]));
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let latencies = latencies.clone();
        let received = received.clone();
        let stop = stop.clone();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &ctx.bootstrap)
            .set("group.id", "bench-latency-reader")
            .set("enable.auto.commit", "false")
            // tansu sleeps the whole wait below 250 ms even with data: 1 ms keeps this
            // reader's own share of the measured latency at about a millisecond.
            .set("fetch.wait.max.ms", "1")
            .create()
            .map_err(|e| e.to_string())?;
        let mut list = TopicPartitionList::new();
        for partition in 0..PER_TOPIC {
            list.add_partition_offset(&output, partition, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&list).map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(10)) else {
                    continue;
                };
                let now = now_micros();
                let Ok(body) = serde_json::from_slice::<serde_json::Value>(
                    message.payload().unwrap_or_default(),
                ) else {
                    continue;
                };
                let sent = body["sent_us"].as_i64();
                let seq = body["event_id"]
                    .as_str()
                    .and_then(|id| id.strip_prefix("e-"))
                    .and_then(|n| n.parse::<usize>().ok());
                let created = message
                    .timestamp()
                    .to_millis()
                    .map_or(i64::MIN, |ms| ms * 1000);
                if let (Some(sent), Some(seq)) = (sent, seq) {
                    let mut all = latencies.lock().expect("latency lock");
                    if seq < all.len() && all[seq].0 == i64::MIN {
                        all[seq] = (now - sent, created.saturating_sub(sent));
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let producer: ThreadedProducer<DefaultProducerContext> = producer_config(&config, &brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let pid = eventd.child.id();
    let cpu0 = cpu_of(pid);
    let started = Instant::now();
    let mut malformed = 0u64;
    let mut bytes = 0u64;
    for seq in 0..total {
        let due = started + Duration::from_secs_f64(seq as f64 / rate);
        let now = Instant::now();
        if due > now + Duration::from_micros(200) {
            std::thread::sleep(due - now);
        }
        let item = format!("item-{}", seq % KEYS);
        let mut body = event(seq, &item);
        if is_malformed(seq) {
            body.truncate(body.len() * 2 / 3);
            malformed += 1;
        } else {
            body.pop();
            let _ = write!(body, ",\"sent_us\":{}}}", now_micros());
        }
        bytes += (item.len() + body.len()) as u64;
        let record = BaseRecord::to(&topics[seq % topics.len()])
            .key(item.as_bytes())
            .payload(body.as_bytes());
        send_when_room(&producer, record).map_err(|error| format!("latency producer: {error}"))?;
    }
    let produced_for = started.elapsed().as_secs_f64();
    let valid = total as u64 - malformed;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < valid && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = cpu_of(pid) - cpu0;
    let wall = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let (_, peak) = eventd.memory();
    let (life_cpu, code) = stop_eventd(eventd)?;
    let got = received.load(Ordering::Relaxed);
    if got < valid {
        return Err(format!(
            "{got} of {valid} forwarded copies arrived within 60 s"
        ));
    }
    let all = latencies.lock().expect("latency lock");
    let after_warmup = &all[warmup.min(total)..];
    let mut received_at: Vec<i64> = after_warmup
        .iter()
        .map(|l| l.0)
        .filter(|l| *l != i64::MIN)
        .collect();
    let mut handed_off: Vec<i64> = after_warmup
        .iter()
        .filter(|l| l.0 != i64::MIN && l.1 > i64::MIN / 2)
        .map(|l| l.1)
        .collect();
    drop(all);
    received_at.sort_unstable();
    handed_off.sort_unstable();
    let percentile = |sorted: &[i64], p: f64| -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index] as f64 / 1000.0
    };
    let (p50, p99) = (
        percentile(&received_at, 0.50),
        percentile(&received_at, 0.99),
    );
    let mut note = format!(
        "received p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms; copy's CreateTime p50 {:.1} ms, \
         p99 {:.1} ms; {} copies after 1 s warm-up, sent at {:.0}/s",
        percentile(&received_at, 1.0),
        percentile(&handed_off, 0.50),
        percentile(&handed_off, 0.99),
        received_at.len(),
        total as f64 / produced_for
    );
    // What eventd cannot go below: tansu holds eventd's fetch for the whole
    // `fetch.wait.max.ms`, both producers wait out their linger, and the reader polls
    // with a 1 ms fetch wait. What is left of a percentile is eventd's and the broker's.
    let fetch_wait_ms = config
        .kafka
        .options
        .get("fetch.wait.max.ms")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(500.0);
    let linger_ms = config.producer.effective_linger().as_secs_f64() * 1000.0;
    let floor = fetch_wait_ms + 2.0 * linger_ms + 1.0;
    let _ = write!(
        note,
        "; fetch wait {fetch_wait_ms:.0} ms + two lingers of {linger_ms:.0} ms + reader 1 ms = {floor:.0} ms \
         ({:.0}% of p50, {:.0}% of p99), the rest (eventd, broker, scheduling) p50 {:.1} ms, p99 {:.1} ms",
        100.0 * floor / p50,
        100.0 * floor / p99,
        p50 - floor,
        p99 - floor
    );
    if code != Some(0) {
        let _ = write!(note, ", exit {code:?} after SIGTERM");
    }
    let wire = bytes / total as u64;
    Ok(Row {
        phase: Phase::Latency,
        size: 100,
        partitions: partitions as i32,
        events: total as u64,
        wall,
        cpu,
        life_cpu,
        peak,
        budget: budget(&config, partitions as u64, wire, wire + WRITTEN_OVERHEAD),
        note,
        idle_share: None,
        latency: Some((p50, p99)),
    })
}

// ---------------------------------------------------------------------------------
// Report

fn size_label(size: usize) -> String {
    match size {
        0 => "-".to_owned(),
        s if s >= 1000 => format!("{:.0} KiB", s as f64 / 1024.0),
        s => format!("{s} B"),
    }
}

fn find(rows: &[Row], phase: Phase, size: usize, partitions: i32) -> Option<&Row> {
    rows.iter()
        .find(|r| r.phase == phase && r.size == size && r.partitions == partitions)
}

/// Events per CPU-second of `row` over those of its baseline phase in the same layout.
fn ratio(rows: &[Row], row: &Row) -> Option<f64> {
    let baseline = find(rows, row.phase.baseline()?, row.size, row.partitions)?;
    Some(row.per_cpu_second()? / baseline.per_cpu_second()?)
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| phase | size | partitions | events | wall s | events/s | µs CPU per event | events per CPU-second | peak RSS MiB | ratio | life CPU s | note |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    for row in rows {
        let ratio_text = match (row.phase.baseline(), ratio(rows, row)) {
            (Some(base), Some(r)) => format!("{r:.2} of {}", base.name()),
            (Some(base), None) => format!("({} not run)", base.name()),
            (None, _) if matches!(row.phase, Phase::A | Phase::ProduceBare) => "1.00".to_owned(),
            (None, _) => "-".to_owned(),
        };
        println!(
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {:.1} | {} | {:.2} | {} |",
            row.phase.name(),
            size_label(row.size),
            row.partitions,
            row.events,
            row.wall,
            or_dash((row.events > 0).then(|| format!("{:.0}", row.events as f64 / row.wall))),
            or_dash(row.micros_per_event().map(|v| format!("{v:.2}"))),
            or_dash(row.per_cpu_second().map(|v| format!("{v:.0}"))),
            row.peak as f64 / MIB,
            ratio_text,
            row.life_cpu,
            row.note
        );
    }
    println!();
    println!(
        "CPU: user + system of every thread of the phase's process, first event to last \
         (whole life for the producer pair; see `life CPU s` for everyone's whole life). \
         Ratio: events per CPU-second over the named phase's, same size and partitions."
    );
}

/// Prints every target with its measured value; returns how many were missed.
fn check_targets(rows: &[Row], latency_rate: f64) -> usize {
    let mut lines: Vec<(String, String, Option<bool>)> = Vec::new();
    let mut layouts: Vec<(usize, i32)> = rows
        .iter()
        .filter(|r| Phase::CONSUMING.contains(&r.phase))
        .map(|r| (r.size, r.partitions))
        .collect();
    layouts.dedup();
    layouts.sort();
    layouts.dedup();
    for (size, partitions) in &layouts {
        // Issue 23: count and four handlers are held to "no slower than before" (below)
        // instead of the ratios to a bare consumer they had.
        for (phase, base, target) in [(Phase::C, Phase::AFwd, 0.9)] {
            let name = format!(
                "{}/{} ≥ {target} ({}, {partitions} partitions)",
                phase.name(),
                base.name(),
                size_label(*size)
            );
            let value = find(rows, phase, *size, *partitions)
                .and_then(Row::per_cpu_second)
                .zip(find(rows, base, *size, *partitions).and_then(Row::per_cpu_second))
                .map(|(own, bare)| own / bare);
            lines.push(match value {
                Some(v) => (name, format!("{v:.2}"), Some(v >= target)),
                None => (name, "not run".to_owned(), None),
            });
        }
    }
    for (size, partitions) in &layouts {
        for phase in [Phase::B, Phase::C, Phase::B4] {
            let name = format!(
                "{} µs CPU per event ≤ 1.05 x the earlier build's ({}, {partitions} partitions)",
                phase.name(),
                size_label(*size)
            );
            let before = phase
                .before()
                .and_then(|before| find(rows, before, *size, *partitions));
            let now = find(rows, phase, *size, *partitions);
            lines.push(
                match (
                    now.and_then(Row::micros_per_event),
                    before.and_then(Row::micros_per_event),
                ) {
                    (Some(now), Some(before)) => (
                        name,
                        format!("{now:.2} / {before:.2} = {:.2}", now / before),
                        Some(now <= 1.05 * before),
                    ),
                    _ => (name, "not run (EVENTD_BENCH_BEFORE)".to_owned(), None),
                },
            );
        }
    }
    let produce = find(rows, Phase::ProduceEventd, 100, 16).and_then(|row| ratio(rows, row));
    lines.push(match produce {
        Some(v) => (
            "produce eventd/bare ≥ 0.8".to_owned(),
            format!("{v:.2}"),
            Some(v >= 0.8),
        ),
        None => (
            "produce eventd/bare ≥ 0.8".to_owned(),
            "not run".to_owned(),
            None,
        ),
    });
    let mut sizes: Vec<usize> = layouts.iter().map(|(s, _)| *s).collect();
    sizes.dedup();
    for size in sizes {
        for phase in [Phase::B, Phase::C, Phase::B4] {
            let at =
                |partitions| find(rows, phase, size, partitions).and_then(Row::micros_per_event);
            if let (Some(small), Some(large)) = (at(16), at(64)) {
                let growth = large / small;
                lines.push((
                    format!(
                        "{} µs CPU per event at 64 partitions ≤ 1.2 x at 16 ({})",
                        phase.name(),
                        size_label(size)
                    ),
                    format!("{large:.2} / {small:.2} = {growth:.2}"),
                    Some(growth <= 1.2),
                ));
            }
        }
    }
    if let Some(idle) = rows.iter().find(|r| r.phase == Phase::Idle) {
        let share = idle.idle_share.unwrap_or(f64::NAN);
        lines.push((
            "idle CPU with 64 partitions < 1% of a core".to_owned(),
            format!("{:.2}%", share * 100.0),
            Some(share < 0.01),
        ));
    } else {
        lines.push((
            "idle CPU with 64 partitions < 1% of a core".to_owned(),
            "not run".to_owned(),
            None,
        ));
    }
    let name = format!("latency p99 at {latency_rate:.0} events/s < 50 ms");
    lines.push(match rows.iter().find_map(|r| r.latency) {
        Some((_, p99)) => (name, format!("{p99:.1} ms"), Some(p99 < 50.0)),
        None => (name, "not run".to_owned(), None),
    });
    for row in rows {
        lines.push((
            format!(
                "peak RSS of {} ({}, {} partitions) within the README budget",
                row.phase.name(),
                size_label(row.size),
                row.partitions
            ),
            format!(
                "{:.1} MiB of {:.1} MiB",
                row.peak as f64 / MIB,
                row.budget as f64 / MIB
            ),
            Some(row.peak <= row.budget),
        ));
    }
    println!();
    println!("| target | measured | result |");
    println!("|---|---|---|");
    let mut missed = 0;
    for (name, value, pass) in &lines {
        let verdict = match pass {
            Some(true) => "PASS",
            Some(false) => {
                missed += 1;
                "MISS"
            }
            None => "-",
        };
        println!("| {name} | {value} | {verdict} |");
    }
    println!();
    println!(
        "{missed} of {} measured targets missed",
        lines.iter().filter(|l| l.2.is_some()).count()
    );
    missed
}

// ---------------------------------------------------------------------------------
// Child processes (the bare phases)

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Job {
    Consume {
        decode: bool,
    },
    /// Without `headers`, the copies carry no source headers (A-fwd-plain).
    Forward {
        headers: bool,
    },
    Produce,
    Idle,
}

#[derive(Serialize, Deserialize)]
struct ChildSpec {
    job: Job,
    config: PathBuf,
    group: String,
    topics: Vec<String>,
    /// Events to count before the job is done.
    total: u64,
    output: String,
    output_partitions: i32,
    input: PathBuf,
    /// Idle: partitions to be assigned before measuring.
    partitions: usize,
    idle_secs: f64,
}

#[derive(Serialize, Deserialize, Default)]
struct ChildReport {
    counted: u64,
    /// Events that did not decode (A'), lines refused (produce).
    invalid: u64,
    /// CPU seconds and wall seconds from the first event to the last.
    cpu: f64,
    wall: f64,
    peak: u64,
}

fn child_main(spec: &str) {
    let spec: ChildSpec = serde_json::from_str(spec).expect("child spec");
    let report = match spec.job {
        Job::Consume { decode } => child_consume(&spec, decode),
        Job::Forward { headers } => child_forward(&spec, headers),
        Job::Produce => child_produce(&spec),
        Job::Idle => child_idle(&spec),
    };
    println!(
        "{RESULT_PREFIX}{}",
        serde_json::to_string(&report).expect("report json")
    );
    let _ = std::io::stdout().flush();
}

/// CPU and wall clock of this process from a starting point.
struct Window {
    wall: Instant,
    cpu: f64,
}

impl Window {
    fn start() -> Window {
        Window {
            cpu: self_cpu(),
            wall: Instant::now(),
        }
    }

    /// (CPU seconds, wall seconds) since the start.
    fn stop(&self) -> (f64, f64) {
        (self_cpu() - self.cpu, self.wall.elapsed().as_secs_f64())
    }
}

fn self_cpu() -> f64 {
    proc_stat("self")
        .map(|(_, cpu)| cpu)
        .expect("/proc/self/stat")
}

/// Highest offset seen per topic and partition, so a redelivered event (after a
/// rebalance) is not counted twice.
struct Seen {
    topics: Vec<String>,
    highest: Vec<Vec<i64>>,
}

impl Seen {
    fn new(topics: &[String]) -> Seen {
        Seen {
            topics: topics.to_vec(),
            highest: vec![Vec::new(); topics.len()],
        }
    }

    /// The topic's index when this offset is new.
    fn first(&mut self, topic: &str, partition: i32, offset: i64) -> Option<usize> {
        let t = self.topics.iter().position(|name| name == topic)?;
        let slots = &mut self.highest[t];
        let p = partition as usize;
        if slots.len() <= p {
            slots.resize(p + 1, -1);
        }
        (offset > slots[p]).then(|| {
            slots[p] = offset;
            t
        })
    }
}

fn group_consumer(spec: &ChildSpec) -> BaseConsumer {
    let (config, brokers) = load_config(&spec.config);
    let consumer: BaseConsumer = consumer_config(
        &config,
        &brokers,
        config.consumers.first().expect("a consumer entry"),
        Some(&spec.group),
        None,
    )
    .create()
    .expect("bare consumer");
    let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).expect("subscribe");
    consumer
}

fn child_consume(spec: &ChildSpec, decode: bool) -> ChildReport {
    let consumer = group_consumer(spec);
    let mut seen = Seen::new(&spec.topics);
    let mut counted = 0;
    let mut invalid = 0;
    let mut window = None;
    let mut last_progress = Instant::now();
    while counted < spec.total {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                window.get_or_insert_with(Window::start);
                let first = seen
                    .first(message.topic(), message.partition(), message.offset())
                    .is_some();
                if decode {
                    let parsed = serde_json::from_slice::<serde_json::Value>(
                        message.payload().unwrap_or_default(),
                    );
                    match parsed {
                        Ok(value) => drop(std::hint::black_box(value)),
                        Err(_) if first => invalid += 1,
                        Err(_) => {}
                    }
                }
                let _ = consumer.store_offset_from_message(&message);
                if first {
                    counted += 1;
                    last_progress = Instant::now();
                }
            }
            Some(Err(error)) => eprintln!("bare consumer: {error}"),
            None => {}
        }
        assert!(
            last_progress.elapsed() < STALL,
            "bare consumer stalled at {counted} of {} events",
            spec.total
        );
    }
    let (cpu, wall) = window.expect("events were read").stop();
    ChildReport {
        counted,
        invalid,
        cpu,
        wall,
        peak: vm_hwm("self").unwrap_or(0),
    }
}

/// Delivery reports of the bare forward loop: each carries its source (topic index,
/// partition, offset) packed in the opaque, so no allocation per event.
#[derive(Default)]
struct Acks {
    done: Mutex<Vec<usize>>,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, source: usize) {
        match result {
            Ok(_) => self.done.lock().expect("acks lock").push(source),
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("acks lock");
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

fn pack(topic: usize, partition: i32, offset: i64) -> usize {
    debug_assert!(topic < 4 && (0..256).contains(&partition) && offset < (1 << 53));
    ((offset as usize) << 10) | ((partition as usize) << 2) | topic
}

fn unpack(packed: usize) -> (usize, i32, i64) {
    (
        packed & 3,
        ((packed >> 2) & 0xff) as i32,
        (packed >> 10) as i64,
    )
}

/// The opaque of the warm-up record, which no source offset waits for.
const WARM_UP: usize = usize::MAX;

fn child_forward(spec: &ChildSpec, with_headers: bool) -> ChildReport {
    let (config, brokers) = load_config(&spec.config);
    let producer: ThreadedProducer<Acks> = producer_config(&config, &brokers)
        .create_with_context(Acks::default())
        .expect("bare producer");
    // eventd's producer has its connection, metadata and idempotent producer id before
    // it reads anything; so does this one: one acknowledged record before subscribing.
    producer
        .send(
            BaseRecord::with_opaque_to(&spec.output, WARM_UP)
                .key("warm-up")
                .payload("warm-up"),
        )
        .map_err(|(error, _)| error)
        .expect("warm-up send");
    let deadline = Instant::now() + STALL;
    while !producer
        .context()
        .done
        .lock()
        .expect("acks lock")
        .contains(&WARM_UP)
    {
        assert!(
            Instant::now() < deadline && producer.context().failed.load(Ordering::Relaxed) == 0,
            "bare forward: the warm-up record was not acknowledged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    producer.context().done.lock().expect("acks lock").clear();
    let consumer = group_consumer(spec);
    let mut seen = Seen::new(&spec.topics);
    let mut acked = 0u64;
    let mut sent = 0u64;
    let mut settled = Vec::new();
    let mut window = None;
    let mut last_progress = Instant::now();
    let mut acked_before = 0;
    let (mut partition_text, mut offset_text) = (String::new(), String::new());
    let settle = |settled: &mut Vec<usize>, acked: &mut u64| {
        std::mem::swap(
            &mut *producer.context().done.lock().expect("acks lock"),
            settled,
        );
        for packed in settled.drain(..) {
            let (t, partition, offset) = unpack(packed);
            // Stores offset + 1, as eventd stores the next offset to read.
            let _ = consumer.store_offset(&spec.topics[t], partition, offset);
            *acked += 1;
        }
    };
    while acked < spec.total {
        settle(&mut settled, &mut acked);
        let failed = producer.context().failed.load(Ordering::Relaxed);
        assert!(
            failed == 0,
            "bare forward: {failed} deliveries failed, first: {:?}",
            producer.context().first_error.lock().expect("acks lock")
        );
        let wait = if sent == acked {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(1)
        };
        match consumer.poll(wait) {
            Some(Ok(message)) => {
                window.get_or_insert_with(Window::start);
                let Some(t) = seen.first(message.topic(), message.partition(), message.offset())
                else {
                    continue;
                };
                last_progress = Instant::now();
                let key = message.key().unwrap_or_default();
                let mut record = BaseRecord::with_opaque_to(
                    &spec.output,
                    pack(t, message.partition(), message.offset()),
                )
                .partition(sarama_partition(key, spec.output_partitions))
                .key(key)
                .payload(message.payload().unwrap_or_default());
                if with_headers {
                    partition_text.clear();
                    offset_text.clear();
                    let _ = write!(partition_text, "{}", message.partition());
                    let _ = write!(offset_text, "{}", message.offset());
                    record = record.headers(
                        OwnedHeaders::new_with_capacity(3)
                            .insert(Header {
                                key: headers::SOURCE_TOPIC,
                                value: Some(message.topic()),
                            })
                            .insert(Header {
                                key: headers::SOURCE_PARTITION,
                                value: Some(partition_text.as_str()),
                            })
                            .insert(Header {
                                key: headers::SOURCE_OFFSET,
                                value: Some(offset_text.as_str()),
                            }),
                    );
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            settle(&mut settled, &mut acked);
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err((error, _)) => panic!("bare forward: send failed: {error}"),
                    }
                }
                sent += 1;
            }
            Some(Err(error)) => eprintln!("bare consumer: {error}"),
            None => {}
        }
        if acked > acked_before {
            acked_before = acked;
            last_progress = Instant::now();
        }
        assert!(
            last_progress.elapsed() < STALL || acked >= spec.total,
            "bare forward stalled: {sent} sent, {acked} acknowledged of {}",
            spec.total
        );
    }
    let (cpu, wall) = window.expect("events were read").stop();
    ChildReport {
        counted: acked,
        invalid: 0,
        cpu,
        wall,
        peak: vm_hwm("self").unwrap_or(0),
    }
}

/// What a bare producer reads from a line: it must be a JSON object with a key.
#[derive(Deserialize)]
struct Keyed<'a> {
    #[serde(borrow)]
    item_id: Cow<'a, str>,
}

/// Counts delivery reports.
#[derive(Default)]
struct Reports {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Sends `record`, waiting while librdkafka's queue is full, as a bare client would.
fn send_when_room<C: ProducerContext>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((error, _)) => return Err(error),
        }
    }
}

fn child_produce(spec: &ChildSpec) -> ChildReport {
    let (config, brokers) = load_config(&spec.config);
    let producer: ThreadedProducer<Reports> = producer_config(&config, &brokers)
        .create_with_context(Reports::default())
        .expect("bare producer");
    let mut input = BufReader::with_capacity(
        1 << 16,
        std::fs::File::open(&spec.input).expect("produce input"),
    );
    let window = Window::start();
    let mut line = String::new();
    let (mut sent, mut refused) = (0u64, 0u64);
    loop {
        line.clear();
        if input.read_line(&mut line).expect("read input") == 0 {
            break;
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let Ok(keyed) = serde_json::from_str::<Keyed<'_>>(text) else {
            refused += 1;
            continue;
        };
        let key = keyed.item_id.as_bytes();
        let record = BaseRecord::to(&spec.output)
            .partition(sarama_partition(key, spec.output_partitions))
            .key(key)
            .payload(text.as_bytes());
        if let Err(error) = send_when_room(&producer, record) {
            panic!("bare producer: send failed: {error}");
        }
        sent += 1;
    }
    let reports = producer.context();
    let deadline = Instant::now() + STALL;
    while reports.delivered.load(Ordering::Relaxed) + reports.failed.load(Ordering::Relaxed) < sent
    {
        assert!(
            Instant::now() < deadline,
            "bare producer: delivery reports stopped"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let (cpu, wall) = window.stop();
    ChildReport {
        counted: reports.delivered.load(Ordering::Relaxed),
        invalid: refused,
        cpu,
        wall,
        peak: vm_hwm("self").unwrap_or(0),
    }
}

fn child_idle(spec: &ChildSpec) -> ChildReport {
    let consumer = group_consumer(spec);
    let deadline = Instant::now() + Duration::from_secs(120);
    let assigned = |consumer: &BaseConsumer| consumer.assignment().map_or(0, |a| a.count());
    while assigned(&consumer) < spec.partitions {
        assert!(
            Instant::now() < deadline,
            "bare idle consumer: {} of {} partitions assigned after 120 s",
            assigned(&consumer),
            spec.partitions
        );
        let _ = consumer.poll(Duration::from_millis(100));
    }
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        let _ = consumer.poll(Duration::from_millis(100));
    }
    let window = Window::start();
    let end = Instant::now() + Duration::from_secs_f64(spec.idle_secs);
    let mut counted = 0;
    while Instant::now() < end {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            counted += 1;
        }
    }
    let (cpu, wall) = window.stop();
    ChildReport {
        counted,
        invalid: 0,
        cpu,
        wall,
        peak: vm_hwm("self").unwrap_or(0),
    }
}
