//! `eventd produce`: writes JSON lines from stdin or a file, or synthetic engagement
//! events, through the same config and ProducerActor as the daemon. For operators
//! replaying or hand-feeding events, and for load tests.

use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::Actor;
use rdkafka::producer::{BaseProducer, Producer};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::actors::producer::{
    BatchSend, Delivery, DeliveryGroup, Outgoing, ProduceError, ProducerActor, ProducerArgs,
    ProducerHandle, ProducerSupervisor, Record,
};
use crate::config::{Config, DemoConfig, ProducerMode, EXIT_CONFIG};
use crate::demo::synthetic_event;
use crate::event::{object_fields, value_text, DecodeError};
use crate::kafka::{command_brokers, plain_config, Brokers};

/// sysexits' EX_NOINPUT: the input file cannot be read.
pub const EXIT_NO_INPUT: i32 = 66;
/// sysexits' EX_UNAVAILABLE: no broker answered.
pub use crate::daemon::EXIT_UNAVAILABLE;
/// Stopped by Ctrl-C (SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: i32 = 130;

/// What to send and how, from the command line.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Overrides `kafka.brokers`.
    pub brokers: Option<String>,
    /// Topic of every event; without it each line's `topic` field decides.
    pub topic: Option<String>,
    /// The field whose value becomes the Kafka key.
    pub key_field: String,
    /// Wait for each event's acknowledgement and print where it landed.
    pub sync: bool,
    /// JSON lines to send; `None` reads stdin.
    pub input: Option<PathBuf>,
    /// Generate this many synthetic events instead of reading input.
    pub count: Option<u64>,
    /// Events per second at most; `None` sends as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Distinct item ids of synthetic events.
    pub keys: u32,
    pub seed: u64,
}

/// What happened to the events, for the closing summary.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    sent: u64,
    failed: u64,
    /// Of `failed`, those reported back through the async delivery group.
    delivery_failures: u64,
}

/// Where an event came from, for messages about it: `line 3`, `event 7`.
#[derive(Debug, Clone, Copy)]
enum Place {
    Line(u64),
    Event(u64),
}

impl Place {
    fn number(self) -> u64 {
        match self {
            Place::Line(n) | Place::Event(n) => n,
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Event(n) => write!(f, "event {n}"),
        }
    }
}

enum Input {
    Lines {
        reader: Box<dyn AsyncBufRead + Unpin + Send>,
        line_number: u64,
        line: String,
    },
    Synthetic {
        demo: DemoConfig,
        rng: fastrand::Rng,
        next: u64,
        count: u64,
    },
}

impl Input {
    /// The place of the event numbered `number`.
    fn place(&self, number: u64) -> Place {
        match self {
            Input::Lines { .. } => Place::Line(number),
            Input::Synthetic { .. } => Place::Event(number),
        }
    }

    /// Whether the next event is there without waiting for input. Never waits: a
    /// read it starts is picked up by the next `next`.
    fn ready(&mut self) -> bool {
        match self {
            Input::Synthetic { .. } => true,
            Input::Lines { reader, .. } => {
                let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
                std::pin::Pin::new(reader).poll_fill_buf(&mut cx).is_ready()
            }
        }
    }

    /// The next event with the place it came from, an error naming that place, or
    /// `None` at the end. A line's event borrows the line.
    async fn next<'a>(
        &'a mut self,
        options: &'a ProduceOptions,
    ) -> Option<(Place, Result<Next<'a>, String>)> {
        match self {
            Input::Synthetic {
                demo,
                rng,
                next,
                count,
            } => {
                if *next >= *count {
                    return None;
                }
                let n = *next;
                *next += 1;
                let mut event = synthetic_event(demo, rng, n);
                if let Some(topic) = &options.topic {
                    event.topic.clone_from(topic);
                }
                if options.key_field != "item_id" {
                    event.key = object_fields(&event.payload, &[options.key_field.as_str()])
                        .ok()
                        .and_then(|fields| fields[0].and_then(value_text))
                        .map(|key| key.into_owned().into_bytes());
                }
                Some((Place::Event(n), Ok(Next::Synthetic(event))))
            }
            Input::Lines {
                reader,
                line_number,
                line,
            } => {
                // The loop yields the length of the line's text, not the text: a borrow
                // of `line` returned from inside it would outlive the next `clear`.
                let length = loop {
                    line.clear();
                    match reader.read_line(line).await {
                        Ok(0) => return None,
                        Ok(_) => {
                            *line_number += 1;
                            let text = line.trim_end_matches(['\n', '\r']);
                            if text.trim().is_empty() {
                                continue;
                            }
                            break text.len();
                        }
                        Err(error) => {
                            *line_number += 1;
                            return Some((
                                Place::Line(*line_number),
                                Err(format!("cannot read: {error}")),
                            ));
                        }
                    }
                };
                Some((
                    Place::Line(*line_number),
                    event_from_line(&line[..length], options).map(Next::Line),
                ))
            }
        }
    }
}

/// An event from the input.
enum Next<'a> {
    Line(LineEvent<'a>),
    Synthetic(Outgoing),
}

impl Next<'_> {
    fn record(&self) -> Record<'_> {
        match self {
            Next::Line(event) => event.record(),
            Next::Synthetic(event) => event.record(),
        }
    }

    fn into_outgoing(self) -> Outgoing {
        match self {
            Next::Line(event) => Outgoing {
                topic: event.topic.into_owned(),
                key: event.key.map(|key| key.into_owned().into_bytes()),
                payload: event.payload.to_vec(),
                headers: Vec::new(),
            },
            Next::Synthetic(event) => event,
        }
    }
}

/// One input line as an event, borrowing the line (and `--topic`): librdkafka copies
/// what it queues, so a line needs no copy of its own on the way.
#[derive(Debug)]
pub struct LineEvent<'a> {
    pub topic: Cow<'a, str>,
    pub key: Option<Cow<'a, str>>,
    /// The line's bytes unchanged.
    pub payload: &'a [u8],
}

impl LineEvent<'_> {
    pub fn record(&self) -> Record<'_> {
        Record {
            topic: &self.topic,
            key: self.key.as_deref().map(str::as_bytes),
            payload: self.payload,
            headers: &[],
            more_headers: &[],
        }
    }
}

/// One input line as an event: the line's bytes unchanged as the payload.
///
/// The line is read once, into nothing: only the key field and `topic` are looked at.
/// The key: strings as they are, numbers and booleans as written in JSON; a missing or
/// null field gives a keyless event.
pub fn event_from_line<'a>(
    line: &'a str,
    options: &'a ProduceOptions,
) -> Result<LineEvent<'a>, String> {
    let [key, topic] = object_fields(line.as_bytes(), &[options.key_field.as_str(), "topic"])
        .map_err(|error| match error {
            DecodeError::NotJson(reason) => format!("not valid JSON: {reason}"),
            other => other.to_string(),
        })?;
    let topic = match &options.topic {
        Some(topic) => Cow::Borrowed(topic.as_str()),
        None => topic
            .filter(|raw| raw.starts_with('"'))
            .and_then(value_text)
            .ok_or("no topic: pass --topic or give the event a \"topic\" field")?,
    };
    Ok(LineEvent {
        topic,
        key: key.and_then(value_text),
        payload: line.as_bytes(),
    })
}

/// Input is read in chunks this large: each read is a trip to tokio's blocking threads.
const READ_BUFFER: usize = 256 * 1024;

/// Events read between two looks at Ctrl-C when nothing waits.
const INTERRUPT_CHECK: u64 = 256;

/// Runs the command; returns the process exit code.
pub async fn run(mut config: Config, options: ProduceOptions) -> i32 {
    if let Some(brokers) = &options.brokers {
        config.kafka.brokers = Some(brokers.clone());
    }
    let Some(brokers) = command_brokers(&config, "produce", Some("--brokers")) else {
        return EXIT_CONFIG;
    };
    config.producer.mode = if options.sync {
        ProducerMode::Sync
    } else {
        ProducerMode::Async
    };
    let mut input = match open_input(&config, &options).await {
        Ok(input) => input,
        Err(message) => {
            eprintln!("eventd produce: {message}");
            return EXIT_NO_INPUT;
        }
    };
    match reachable(&config, &brokers).await {
        Ok(()) => {}
        Err(Unreachable::Settings(reason)) => {
            eprintln!("eventd produce: bad [kafka] settings: {reason}");
            return EXIT_CONFIG;
        }
        Err(Unreachable::NoAnswer(reason)) => {
            eprintln!(
                "eventd produce: cannot reach brokers {}: {reason}",
                brokers.bootstrap
            );
            return EXIT_UNAVAILABLE;
        }
    }
    let handle = ProducerActor::handle(&config);
    let spawned = Actor::spawn(
        None,
        ProducerSupervisor,
        ProducerArgs {
            config: Arc::new(config),
            brokers,
            handle: handle.clone(),
        },
    )
    .await;
    let (supervisor, task) = match spawned {
        Ok(spawned) => spawned,
        Err(error) => {
            eprintln!("eventd produce: cannot start the producer: {error}");
            return EXIT_CONFIG;
        }
    };

    let started = Instant::now();
    let mut tally = Tally::default();
    // Async mode: every report lands in one group, so an event costs no channel and
    // no wake-up; failures are read back by their place.
    let group = DeliveryGroup::new();
    let mut output = std::io::stdout().lock();
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut pacing = options.rate.map(Pacing::new);
    let mut ended = Ended::InputDone;
    let mut read: u64 = 0;
    // Async mode: consecutive lines to one topic share a batch, so a line looks up
    // neither the producer nor its topic and reads no clock.
    let mut batch: Option<Batch<'_>> = None;
    loop {
        // A batch is not kept across a wait for input: it holds the producer, and its
        // topic's partition count would age unrefreshed.
        if batch.is_some() && (!input.ready() || pacing.as_ref().is_some_and(Pacing::will_wait)) {
            batch = None;
        }
        // The signal is polled first only every so often: the branches below poll it
        // whenever they have to wait, and an input that never waits is read on.
        read += 1;
        if read % INTERRUPT_CHECK == 0 && (&mut interrupted).now_or_never().is_some() {
            ended = Ended::Interrupted;
            break;
        }
        let next = tokio::select! {
            biased;
            next = async {
                if let Some(pacing) = &mut pacing {
                    pacing.wait().await;
                }
                input.next(&options).await
            } => next,
            _ = &mut interrupted => {
                ended = Ended::Interrupted;
                break;
            }
        };
        let Some((place, event)) = next else { break };
        let event = match event {
            Ok(event) => event,
            Err(message) => {
                report_failure(&mut tally, place, &message);
                continue;
            }
        };
        let settled = if options.sync {
            // Not cut short by Ctrl-C: the event may already be at the broker, and its
            // line must be printed. The interrupt is seen right after.
            let event = event.into_outgoing();
            let topic = event.topic.clone();
            match handle.enqueue(event).await {
                Ok(delivery) => {
                    let report = delivery.wait().await;
                    Ok(settle(&mut tally, &mut output, place, &topic, report))
                }
                Err(error) => Err(error),
            }
        } else {
            // Cut short only before the event reaches librdkafka: after that, async
            // enqueue returns without waiting.
            let record = event.record();
            if batch
                .as_ref()
                .is_some_and(|batch| !batch.fits(record.topic))
            {
                batch = None;
            }
            tokio::select! {
                biased;
                enqueued = send_in(&handle, &mut batch, &group, record, place.number()) => enqueued,
                _ = &mut interrupted => {
                    ended = Ended::Interrupted;
                    break;
                }
            }
            .map(|()| Ok(()))
        };
        let settled = match settled {
            Ok(printed) => printed,
            Err(ProduceError::NotRunning) => {
                report_failure(&mut tally, place, &ProduceError::NotRunning.to_string());
                ended = Ended::ProducerGone;
                break;
            }
            Err(error) => {
                report_failure(&mut tally, place, &error.to_string());
                Ok(())
            }
        };
        if settled.is_err() {
            ended = Ended::OutputClosed;
            break;
        }
        if group.failed() > tally.delivery_failures {
            report_delivery_failures(&mut tally, &group, &input);
        }
    }
    // It holds the producer, which the supervisor must be the last to hold.
    drop(batch);
    match ended {
        Ended::InputDone => {}
        Ended::Interrupted => {
            eprintln!("eventd produce: interrupted, waiting for events already sent (Ctrl-C again to quit)")
        }
        Ended::ProducerGone => eprintln!("eventd produce: the producer is not running, stopping"),
        Ended::OutputClosed => eprintln!("eventd produce: stdout closed, stopping"),
    }
    let patience = handle.patience();
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => std::process::exit(EXIT_INTERRUPTED),
        settled = tokio::time::timeout(patience, group.settled()) => {
            if settled.is_err() {
                let lost = group.unreported();
                tally.failed += lost;
                eprintln!(
                    "eventd produce: no delivery report for {lost} events within {}",
                    humantime::format_duration(patience)
                );
            }
        }
    }
    report_delivery_failures(&mut tally, &group, &input);
    tally.sent += group.delivered();
    let elapsed = started.elapsed();
    supervisor.stop(None);
    let _ = task.await;

    let rate = tally.sent as f64 / elapsed.as_secs_f64().max(1e-9);
    let summary = format!(
        "sent {}, failed {}, {rate:.0} events/s over {:.2}s",
        tally.sent,
        tally.failed,
        elapsed.as_secs_f64()
    );
    if options.sync || ended == Ended::OutputClosed {
        eprintln!("{summary}");
    } else {
        let _ = writeln!(output, "{summary}");
    }
    match ended {
        Ended::Interrupted => EXIT_INTERRUPTED,
        _ if tally.failed > 0 || ended != Ended::InputDone => 1,
        _ => 0,
    }
}

/// The batch that async-mode lines to one topic go in, and how many went in so far.
struct Batch<'h> {
    send: BatchSend<'h>,
    sent: u32,
}

/// Lines per batch at most: a new batch looks the producer and the topic up again,
/// so a long run of lines still sees a refreshed partition count.
const LINES_PER_BATCH: u32 = 1024;

impl Batch<'_> {
    /// Whether a record to `topic` may go in this batch.
    fn fits(&self, topic: &str) -> bool {
        self.sent < LINES_PER_BATCH && self.send.topic() == topic && self.send.is_current()
    }
}

/// Queues `record` as `group`'s `token` in `batch`, starting one for its topic if
/// there is none. A failed send ends the batch, so the next line looks up afresh.
async fn send_in<'h>(
    handle: &'h ProducerHandle,
    batch: &mut Option<Batch<'h>>,
    group: &Arc<DeliveryGroup>,
    record: Record<'_>,
    token: u64,
) -> Result<(), ProduceError> {
    let current = match batch {
        Some(current) => current,
        None => match handle.batch(record.topic, group, None).await {
            Ok(send) => batch.insert(Batch { send, sent: 0 }),
            Err(error) => {
                handle.count_refused(&error);
                return Err(error);
            }
        },
    };
    current.sent += 1;
    let sent = current.send.enqueue(record, token).await;
    if sent.is_err() {
        *batch = None;
    }
    sent
}

/// Why the command stopped reading input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    InputDone,
    Interrupted,
    ProducerGone,
    OutputClosed,
}

/// `--rate`: one event per period; after a stall at most `MAX_CATCH_UP` of missed
/// events goes out at once rather than the whole backlog.
struct Pacing {
    period: Duration,
    due: tokio::time::Instant,
}

const MAX_CATCH_UP: Duration = Duration::from_millis(100);

impl Pacing {
    fn new(rate: f64) -> Self {
        Self {
            period: Duration::from_secs_f64(1.0 / rate),
            due: tokio::time::Instant::now(),
        }
    }

    /// Whether the next `wait` sleeps.
    fn will_wait(&self) -> bool {
        tokio::time::Instant::now() < self.due
    }

    async fn wait(&mut self) {
        let now = tokio::time::Instant::now();
        if let Some(earliest) = now.checked_sub(MAX_CATCH_UP) {
            self.due = self.due.max(earliest);
        }
        tokio::time::sleep_until(self.due).await;
        self.due += self.period;
    }
}

/// Prints where a sync-mode event landed.
fn settle(
    tally: &mut Tally,
    output: &mut impl Write,
    place: Place,
    topic: &str,
    report: Result<Delivery, ProduceError>,
) -> std::io::Result<()> {
    match report {
        Ok(delivery) => {
            tally.sent += 1;
            writeln!(output, "{topic} {} {}", delivery.partition, delivery.offset)?;
        }
        Err(error) => report_failure(tally, place, &error.to_string()),
    }
    Ok(())
}

fn report_failure(tally: &mut Tally, place: Place, message: &str) {
    tally.failed += 1;
    eprintln!("eventd produce: {place}: {message}");
}

/// Reports the async-mode delivery failures not reported yet.
fn report_delivery_failures(tally: &mut Tally, group: &DeliveryGroup, input: &Input) {
    for (number, error) in group.take_failures() {
        tally.delivery_failures += 1;
        report_failure(tally, input.place(number), &error.to_string());
    }
}

async fn open_input(config: &Config, options: &ProduceOptions) -> Result<Input, String> {
    if let Some(count) = options.count {
        let mut demo = config.demo.clone();
        demo.keys = options.keys;
        return Ok(Input::Synthetic {
            demo,
            rng: fastrand::Rng::with_seed(options.seed),
            next: 0,
            count,
        });
    }
    let reader: Box<dyn AsyncBufRead + Unpin + Send> = match &options.input {
        None => Box::new(BufReader::with_capacity(READ_BUFFER, tokio::io::stdin())),
        Some(path) if path.as_os_str() == "-" => {
            Box::new(BufReader::with_capacity(READ_BUFFER, tokio::io::stdin()))
        }
        Some(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|error| format!("{}: cannot open: {error}", path.display()))?;
            Box::new(BufReader::with_capacity(READ_BUFFER, file))
        }
    };
    Ok(Input::Lines {
        reader,
        line_number: 0,
        line: String::new(),
    })
}

enum Unreachable {
    /// librdkafka refused the `[kafka]` settings.
    Settings(String),
    NoAnswer(String),
}

/// Asks the brokers for metadata once, so a wrong address fails in seconds rather
/// than once per event.
async fn reachable(config: &Config, brokers: &Brokers) -> Result<(), Unreachable> {
    let client: BaseProducer = plain_config(config, brokers)
        .create()
        .map_err(|error| Unreachable::Settings(error.to_string()))?;
    tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(None, crate::waits::METADATA_TIMEOUT)
            .map(|_| ())
            .map_err(|error| Unreachable::NoAnswer(error.to_string()))
    })
    .await
    .map_err(|error| Unreachable::NoAnswer(error.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(topic: Option<&str>) -> ProduceOptions {
        ProduceOptions {
            brokers: None,
            topic: topic.map(str::to_owned),
            key_field: "item_id".to_owned(),
            sync: false,
            input: None,
            count: None,
            rate: None,
            keys: 10,
            seed: 1,
        }
    }

    #[test]
    fn a_line_keeps_its_bytes_and_takes_key_and_topic_from_fields() {
        let line = r#"{"topic":"like","item_id":"item-7","user_id":3}"#;
        let options = options(None);
        let event = event_from_line(line, &options).expect("event");
        assert_eq!(event.topic, "like");
        assert_eq!(event.key.as_deref(), Some("item-7"));
        assert_eq!(event.payload, line.as_bytes());
    }

    #[test]
    fn the_topic_flag_wins_and_numbers_become_keys() {
        let mut options = options(Some("replay"));
        options.key_field = "user_id".to_owned();
        let event = event_from_line(r#"{"topic":"like","user_id":3}"#, &options).expect("event");
        assert_eq!(event.topic, "replay");
        assert_eq!(event.key.as_deref(), Some("3"));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let (untargeted, targeted) = (options(None), options(Some("t")));
        let no_topic = event_from_line(r#"{"item_id":"a"}"#, &untargeted);
        assert!(no_topic.is_err_and(|e| e.contains("--topic")));
        let not_json = event_from_line("{item_id", &targeted);
        assert!(not_json.is_err_and(|e| e.starts_with("not valid JSON")));
        let keyless = event_from_line(r#"{"item_id":null}"#, &targeted).expect("event");
        assert_eq!(keyless.key, None);
    }
}
