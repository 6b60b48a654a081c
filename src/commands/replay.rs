//! `eventd replay`: runs one handler of a config on the events it dead-lettered, after
//! a fix. It reads the dead-letter topic with a consumer group of its own (so progress
//! is kept and an interrupted replay resumes), gives each copy whose `eventd.handler`
//! names the handler back to that handler alone, and republishes nothing to the source
//! topic that other consumer groups read. It never deletes anything: events that fail
//! again stay where they are, and the command exits non-zero.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ractor::Actor;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::actors::handler::{Standalone, StandaloneError};
use crate::actors::producer::{ProducerActor, ProducerArgs, ProducerSupervisor};
use crate::config::{Config, EXIT_CONFIG};
use crate::daemon::{EXIT_SOFTWARE, EXIT_UNAVAILABLE};
use crate::event::{headers, Event, Source};
use crate::kafka::{command_brokers, explain_failure, plain_config, Diagnosis};

/// Progress is committed after this many events, and at the end.
const COMMIT_EVERY: usize = 100;
/// How long one poll waits for the next event.
const POLL: Duration = Duration::from_millis(200);

pub struct ReplayOptions {
    pub from: String,
    pub handler: String,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub dry_run: bool,
    /// Consumer group; `eventd-replay-<handler>` by default.
    pub group: Option<String>,
    /// Longest wait for progress; derived from the config by default.
    pub timeout: Option<Duration>,
}

/// What became of each dead-letter copy read.
#[derive(Debug, Default)]
struct Tally {
    replayed: u64,
    would_replay: u64,
    failed: u64,
    unfinished: u64,
    other_handler: u64,
    truncated: u64,
    outside_range: u64,
}

/// Parses `--since`/`--until`: RFC 3339, or a duration meaning that long ago.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => chrono::Duration::from_std(ago)
            .ok()
            .and_then(|ago| Utc::now().checked_sub_signed(ago))
            .ok_or_else(|| format!("{text:?} is too long ago")),
        Err(_) => Err(format!(
            "{text:?} is neither an RFC 3339 time (2026-11-30T12:00:00Z) nor a duration ago (2h)"
        )),
    }
}

pub async fn run(config: Config, options: ReplayOptions) -> i32 {
    let Some(handler) = config
        .handlers
        .iter()
        .find(|h| h.name == options.handler)
        .cloned()
    else {
        let names: Vec<&str> = config.handlers.iter().map(|h| h.name.as_str()).collect();
        eprintln!(
            "eventd replay: --handler {:?} names no [[handlers]] entry of the config (it has {names:?})",
            options.handler
        );
        return EXIT_CONFIG;
    };
    let Some(brokers) = command_brokers(&config, "replay", None) else {
        return EXIT_CONFIG;
    };
    let group = options
        .group
        .clone()
        .unwrap_or_else(|| format!("eventd-replay-{}", handler.name));
    let consumer: BaseConsumer<Diagnosis> = match plain_config(&config, &brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create_with_context(Diagnosis::default())
    {
        Ok(consumer) => consumer,
        Err(error) => {
            eprintln!("eventd replay: bad [kafka] settings: {error}");
            return EXIT_CONFIG;
        }
    };
    let consumer = Arc::new(consumer);
    let ends = match assign_to_ends(consumer.clone(), options.from.clone()).await {
        Ok(ends) => ends,
        Err(error) => {
            eprintln!(
                "eventd replay: cannot read {:?} from {}: {}",
                options.from,
                brokers.bootstrap,
                explain_failure(&consumer, &error)
            );
            return EXIT_UNAVAILABLE;
        }
    };

    let timeout = options.timeout.unwrap_or_else(|| default_timeout(&config));
    let config = Arc::new(config);
    let handle = ProducerActor::handle(&config);
    let producer = if options.dry_run {
        None
    } else {
        match Actor::spawn(
            None,
            ProducerSupervisor,
            ProducerArgs {
                config: config.clone(),
                brokers,
                handle: handle.clone(),
            },
        )
        .await
        {
            Ok(spawned) => Some(spawned),
            Err(error) => {
                // The [kafka] settings were already accepted by the consumer above:
                // what is left is librdkafka or the machine failing us.
                eprintln!("eventd replay: cannot start the producer: {error}");
                return EXIT_SOFTWARE;
            }
        }
    };
    let mut standalone = Standalone::new(&config, &handler, handle);
    let names = Arc::new(standalone.field_names());
    let mut tally = Tally::default();
    let mut progress: HashMap<i32, i64> = HashMap::new();
    let mut uncommitted = 0;
    let holds_events = handler.kind == crate::config::HandlerKind::Count;
    // Partitions still to read, each up to its end when the replay started: copies
    // written later (by the daemon, or dead-lettered again by this replay) are left
    // for the next replay.
    let mut pending = ends.clone();
    pending.retain(|_, (next, end)| next < end);
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut ended = Ended::Done;
    let mut last_read = Instant::now();
    let mut last_consume_error: Option<String> = None;
    while !pending.is_empty() {
        if last_read.elapsed() >= timeout {
            let mut partitions: Vec<i32> = pending.keys().copied().collect();
            partitions.sort_unstable();
            ended = Ended::GaveUp(format!(
                "partitions {partitions:?} of {:?} not read to their end: nothing came in {} ({})",
                options.from,
                humantime::format_duration(timeout),
                last_consume_error
                    .as_deref()
                    .unwrap_or("no error reported; is the broker reachable?")
            ));
            break;
        }
        let polled = {
            let consumer = consumer.clone();
            tokio::select! {
                biased;
                _ = &mut interrupted => {
                    ended = Ended::Interrupted;
                    break;
                }
                polled = tokio::task::spawn_blocking(move || {
                    consumer.poll(POLL).map(|m| m.map(|m| m.detach()))
                }) => polled,
            }
        };
        let message = match polled {
            Ok(None) => continue,
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(KafkaError::PartitionEOF(partition)))) => {
                if pending.remove(&partition).is_some() {
                    stop_reading(&consumer, &options.from, partition).await;
                }
                last_read = Instant::now();
                continue;
            }
            Ok(Some(Err(error))) => {
                eprintln!("eventd replay: consume error: {error}");
                last_consume_error = Some(error.to_string());
                continue;
            }
            Err(error) => {
                eprintln!("eventd replay: the consumer thread failed: {error}");
                ended = Ended::Internal;
                break;
            }
        };
        last_read = Instant::now();
        let (partition, offset) = (message.partition(), message.offset());
        let Some((_, end)) = pending.get(&partition) else {
            // Fetched before the partition was stopped.
            continue;
        };
        if offset >= *end {
            pending.remove(&partition);
            stop_reading(&consumer, &options.from, partition).await;
            continue;
        }
        let last_of_partition = offset + 1 >= *end;
        let at = format!("{}/{partition}@{offset}", options.from);
        // Ctrl-C abandons the event being handled: it is not committed, so the next
        // run handles it again.
        let outcome = tokio::select! {
            biased;
            _ = &mut interrupted => {
                ended = Ended::Interrupted;
                break;
            }
            outcome = replay_one(&message, &options, &names, &mut standalone, timeout) => outcome,
        };
        // The wait for the next copy starts once this one is done.
        last_read = Instant::now();
        // Progress in a partition stops at a copy that failed again or lies after
        // --until: the next run starts there, so nothing after it is handled now.
        match outcome {
            Outcome::Replayed => tally.replayed += 1,
            Outcome::WouldReplay(source) => {
                tally.would_replay += 1;
                println!("{at}: would replay {source}");
            }
            Outcome::Failed(reason) => {
                tally.failed += 1;
                eprintln!(
                    "eventd replay: {at}: failed again, left in {}; partition {partition} stops here: {reason}",
                    options.from
                );
                pending.remove(&partition);
                stop_reading(&consumer, &options.from, partition).await;
                continue;
            }
            Outcome::Unfinished(reason) => {
                tally.unfinished += 1;
                eprintln!(
                    "eventd replay: {at}: not finished, for a reason that may pass; left for the next run, partition {partition} stops here: {reason}"
                );
                pending.remove(&partition);
                stop_reading(&consumer, &options.from, partition).await;
                continue;
            }
            Outcome::OtherHandler => tally.other_handler += 1,
            Outcome::Truncated(source, size) => {
                tally.truncated += 1;
                eprintln!(
                    "eventd replay: {at}: truncated copy of {source} ({size} bytes originally), skipped; read the original there"
                );
            }
            Outcome::OutsideRange(after_until) => {
                tally.outside_range += 1;
                if after_until {
                    pending.remove(&partition);
                    stop_reading(&consumer, &options.from, partition).await;
                    continue;
                }
            }
        }
        if last_of_partition {
            pending.remove(&partition);
            stop_reading(&consumer, &options.from, partition).await;
        }
        if !options.dry_run {
            progress.insert(partition, offset + 1);
            uncommitted += 1;
            // A handler holding events (count windows) writes them only at the flush
            // below: committing before it could lose what it counted.
            if uncommitted >= COMMIT_EVERY && !holds_events {
                commit(&consumer, &options.from, &progress).await;
                uncommitted = 0;
            }
        }
    }
    let flushed = if options.dry_run || holds_events && matches!(ended, Ended::Interrupted) {
        Ok(())
    } else {
        tokio::select! {
            biased;
            _ = &mut interrupted => {
                ended = Ended::Interrupted;
                Err("interrupted while writing count windows".to_owned())
            }
            flushed = tokio::time::timeout(timeout, standalone.flush()) => match flushed {
                Ok(flushed) => flushed.map_err(|error| error.to_string()),
                Err(_) => Err(format!(
                    "count records not acknowledged within --timeout {}",
                    humantime::format_duration(timeout)
                )),
            },
        }
    };
    if let Err(error) = &flushed {
        eprintln!(
            "eventd replay: handler {:?} could not emit what it holds, so nothing it counted is committed: {error}",
            handler.name
        );
    }
    standalone.give_up();
    // Committed only once everything written is acknowledged: a count window emitted
    // by the flush above counts the events committed here. An interrupted count
    // replay commits nothing: its windows were not written.
    let counted_unwritten =
        holds_events && (flushed.is_err() || matches!(ended, Ended::Interrupted));
    if !options.dry_run && !counted_unwritten {
        commit(&consumer, &options.from, &progress).await;
    }
    if let Some((supervisor, task)) = producer {
        supervisor.stop(None);
        let _ = task.await;
    }
    println!(
        "replay of {:?} by handler {:?}{}: replayed {}, failed {}, skipped {} (other handler {}, truncated {}, outside --since/--until {}){}",
        options.from,
        handler.name,
        if options.dry_run { " (dry run)" } else { "" },
        if options.dry_run { tally.would_replay } else { tally.replayed },
        tally.failed,
        tally.other_handler + tally.truncated + tally.outside_range,
        tally.other_handler,
        tally.truncated,
        tally.outside_range,
        if tally.unfinished > 0 {
            format!(", not finished {}", tally.unfinished)
        } else {
            String::new()
        },
    );
    match ended {
        Ended::Interrupted => {
            if holds_events {
                eprintln!("eventd replay: interrupted; nothing committed, as the count windows were not written");
            } else {
                eprintln!("eventd replay: interrupted; progress so far is committed");
            }
            crate::commands::produce::EXIT_INTERRUPTED
        }
        Ended::Internal => EXIT_SOFTWARE,
        Ended::GaveUp(what) => {
            eprintln!("eventd replay: gave up: {what}; progress before it is committed, run again once it can pass");
            EXIT_UNAVAILABLE
        }
        Ended::Done if flushed.is_err() || tally.unfinished > 0 => EXIT_UNAVAILABLE,
        Ended::Done if tally.failed > 0 => 1,
        Ended::Done => 0,
    }
}

/// How the reading loop ended.
enum Ended {
    Done,
    Interrupted,
    /// The consumer's thread failed: a defect, not the broker.
    Internal,
    /// No progress within --timeout; says on what.
    GaveUp(String),
}

/// Long enough for a producer being restarted to take a copy and for the broker to
/// acknowledge or refuse it: each waits up to `producer.message_timeout`.
fn default_timeout(config: &Config) -> Duration {
    config.producer.message_timeout * 2
}

/// Stops fetching a partition read to its end (or stopped at a failure), so nothing
/// written after the replay started is read.
async fn stop_reading(consumer: &Arc<BaseConsumer<Diagnosis>>, topic: &str, partition: i32) {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let consumer = consumer.clone();
    let unassigned =
        tokio::task::spawn_blocking(move || consumer.incremental_unassign(&list)).await;
    if let Ok(Err(error)) = unassigned {
        // Not fatal: what is fetched after the end is skipped anyway.
        tracing::debug!(partition, %error, "cannot unassign a finished partition");
    }
}

enum Outcome {
    Replayed,
    WouldReplay(String),
    /// Refused for good, or the handler panicked: reported, and the exit code is 1.
    Failed(String),
    /// Failed for a reason that may pass (an outage), or took longer than --timeout:
    /// the next run tries it again.
    Unfinished(String),
    OtherHandler,
    Truncated(String, String),
    /// Outside --since/--until; true when after --until.
    OutsideRange(bool),
}

async fn replay_one(
    message: &OwnedMessage,
    options: &ReplayOptions,
    names: &Arc<crate::event::FieldNames>,
    standalone: &mut Standalone,
    timeout: Duration,
) -> Outcome {
    let found: HashMap<&str, &[u8]> = message
        .headers()
        .map(|all| {
            all.iter()
                .map(|h| (h.key, h.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let text = |name: &str| {
        found
            .get(name)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    };
    if text(headers::HANDLER).as_deref() != Some(options.handler.as_str()) {
        return Outcome::OtherHandler;
    }
    let failed_at = text(headers::FAILED_AT)
        .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
        .map(|at| at.with_timezone(&Utc))
        .or_else(|| {
            message
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
        });
    if options.since.is_some() || options.until.is_some() {
        let Some(at) = failed_at else {
            return Outcome::OutsideRange(true);
        };
        if options.until.is_some_and(|until| at >= until) {
            return Outcome::OutsideRange(true);
        }
        if options.since.is_some_and(|since| at < since) {
            return Outcome::OutsideRange(false);
        }
    }
    let source = match (
        text(headers::SOURCE_TOPIC),
        text(headers::SOURCE_PARTITION).and_then(|p| p.parse::<i32>().ok()),
        text(headers::SOURCE_OFFSET).and_then(|o| o.parse::<i64>().ok()),
    ) {
        (Some(topic), Some(partition), Some(offset)) => Source {
            topic: Arc::from(topic.as_str()),
            partition,
            offset,
        },
        _ => {
            return Outcome::Failed(
                "not a dead-letter copy: eventd.source.topic/partition/offset missing".to_owned(),
            )
        }
    };
    let source_text = format!("{}/{}@{}", source.topic, source.partition, source.offset);
    if text(headers::TRUNCATED).as_deref() == Some("true") {
        let size = text(headers::SOURCE_SIZE).unwrap_or_else(|| "?".to_owned());
        return Outcome::Truncated(source_text, size);
    }
    let body = match Event::decode(message.payload(), names) {
        Ok(body) => body,
        Err(error) => return Outcome::Failed(format!("undecodable: {error}")),
    };
    if options.dry_run {
        return Outcome::WouldReplay(source_text);
    }
    // The event as the handler first saw it: its own headers, without eventd's.
    let own_headers = message
        .headers()
        .map(|all| {
            all.iter()
                .filter(|h| !h.key.starts_with("eventd."))
                .map(|h| {
                    (
                        std::borrow::Cow::Owned(h.key.to_owned()),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let event = Arc::new(Event {
        source,
        key: message.key().map(<[u8]>::to_vec),
        headers: own_headers,
        timestamp: message.timestamp().to_millis(),
        body,
    });
    // One attempt: the replay has no outbox to park the copy in, and a second way of
    // retrying would be a second failure path. The next run is the retry.
    match tokio::time::timeout(timeout, standalone.handle(event)).await {
        Ok(Ok(())) => Outcome::Replayed,
        Ok(Err(StandaloneError::Transient(error))) => Outcome::Unfinished(error),
        Ok(Err(error @ (StandaloneError::Refused(_) | StandaloneError::Panicked(_)))) => {
            Outcome::Failed(error.to_string())
        }
        Err(_) => Outcome::Unfinished(format!(
            "not finished within --timeout {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// Assigns every partition of `topic` at the group's committed offset (the start
/// without one) and returns, per partition, (next offset, end offset at start): the
/// replay reads up to where the topic ended when it started.
async fn assign_to_ends(
    consumer: Arc<BaseConsumer<Diagnosis>>,
    topic: String,
) -> Result<HashMap<i32, (i64, i64)>, KafkaError> {
    tokio::task::spawn_blocking(move || {
        let timeout = crate::waits::METADATA_TIMEOUT;
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        let Some(found) = metadata.topics().first() else {
            return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic));
        };
        if let Some(error) = found.error() {
            return Err(KafkaError::MetadataFetch(error.into()));
        }
        let mut list = TopicPartitionList::new();
        for partition in found.partitions() {
            list.add_partition(&topic, partition.id());
        }
        let committed = consumer.committed_offsets(list, timeout)?;
        let mut ends = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for element in committed.elements() {
            let partition = element.partition();
            let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
            let next = match element.offset() {
                Offset::Offset(offset) => offset.max(low),
                _ => low,
            };
            assignment.add_partition_offset(&topic, partition, Offset::Offset(next))?;
            ends.insert(partition, (next, high));
        }
        consumer.assign(&assignment)?;
        Ok(ends)
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

async fn commit(
    consumer: &Arc<BaseConsumer<Diagnosis>>,
    topic: &str,
    progress: &HashMap<i32, i64>,
) {
    if progress.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, next) in progress {
        if list
            .add_partition_offset(topic, *partition, Offset::Offset(*next))
            .is_err()
        {
            return;
        }
    }
    let consumer = consumer.clone();
    match tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("eventd replay: cannot commit progress: {error}"),
        Err(error) => eprintln!("eventd replay: cannot commit progress: {error}"),
    }
}
