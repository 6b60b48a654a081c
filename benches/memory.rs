//! Peak memory against backlog size, at default settings: the release `eventd` binary
//! with a slow handler over a backlog of 1 KiB events on tansu (memory storage), once
//! with 1M events and once with 2M, each on a broker of its own. The process's peak
//! resident memory (VmHWM) must stay under 256 MiB and the 2M run within 10% of the 1M
//! run: librdkafka fetches ahead at most `fetch_buffer` per partition, so memory
//! follows the configuration, not the backlog.
//!
//! `cargo bench --bench memory --features fault-injection` (the slow handler is the
//! `fault` kind). Settings: `EVENTD_BENCH_MEMORY_EVENTS` (1000000, the smaller run;
//! the larger is twice it), `TANSU` as for the tests. Exits non-zero on a missed target.

use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{env_count, event, start_eventd, Broker, Storage};

const TOPICS: [&str; 4] = ["browse", "like", "favorite", "comment"];
const PARTITIONS: i32 = 4;
const PEAK_LIMIT: u64 = 256 << 20;
/// Events handled before the peak is read: by then every partition has had its
/// in-flight events dispatched and its fetch buffer filled, many times over.
const HANDLED_BEFORE_READING: f64 = 20_000.0;

fn main() {
    let smaller = env_count("EVENTD_BENCH_MEMORY_EVENTS", 1_000_000);
    let mut peaks = Vec::new();
    for backlog in [smaller, 2 * smaller] {
        let peak = peak_with_backlog(backlog);
        eprintln!(
            "backlog {backlog} events ({} MiB): peak {} MiB",
            (backlog * 1100) >> 20,
            peak >> 20
        );
        peaks.push((backlog, peak));
    }
    println!("| backlog (1 KiB events) | peak RSS (MiB) | ratio to the smaller |");
    println!("|---|---|---|");
    for (backlog, peak) in &peaks {
        println!(
            "| {backlog} | {:.1} | {:.3} |",
            *peak as f64 / (1 << 20) as f64,
            *peak as f64 / peaks[0].1 as f64
        );
    }
    let mut missed = Vec::new();
    for (backlog, peak) in &peaks {
        if *peak > PEAK_LIMIT {
            missed.push(format!(
                "{backlog} events: peak {} MiB above 256 MiB",
                peak >> 20
            ));
        }
    }
    let growth = peaks[1].1 as f64 / peaks[0].1 as f64;
    if growth > 1.10 {
        missed.push(format!(
            "twice the backlog raised the peak by {:.1}%",
            (growth - 1.0) * 100.0
        ));
    }
    if !missed.is_empty() {
        eprintln!("targets missed: {}", missed.join("; "));
        std::process::exit(1);
    }
}

/// VmHWM of eventd over `backlog` waiting events.
fn peak_with_backlog(backlog: usize) -> u64 {
    let broker = Broker::tansu_with(Storage::Memory, PARTITIONS, &TOPICS);
    let started = Instant::now();
    let per_topic = backlog / TOPICS.len();
    let padding = "x".repeat(1000);
    for (t, topic) in TOPICS.iter().enumerate() {
        let mut next = t * per_topic;
        let end = next + per_topic;
        while next < end {
            let chunk = (next..(next + 50_000).min(end))
                .map(|id| {
                    let item = format!("item-{}", id % 1000);
                    let mut body: serde_json::Value =
                        serde_json::from_str(&event(id, &item)).expect("event json");
                    body["text"] = padding.clone().into();
                    (item, body.to_string())
                })
                .collect::<Vec<_>>();
            next += chunk.len();
            broker.produce(topic, &chunk);
        }
    }
    eprintln!(
        "produced {backlog} events in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut eventd = start_eventd(
        &broker,
        r#"
[[consumers]]
name = "main"
topics = ["browse", "like", "favorite", "comment"]

[[handlers]]
name = "slow"
kind = "fault"
consumer = "main"
action = "sleep"
every = 1
sleep = "1ms"
"#,
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(
            Instant::now() < deadline,
            "eventd handled too little: {}",
            eventd.logs()
        );
        let handled = eventd
            .metric_if_present("eventd_events_handled_total", &[("handler", "slow")])
            .unwrap_or_default();
        if handled >= HANDLED_BEFORE_READING {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, peak) = eventd.memory();
    eventd.signal("KILL");
    let _ = eventd.wait_exit(Duration::from_secs(10));
    peak
}
