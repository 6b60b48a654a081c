//! `eventd replay`: runs one handler of a config on the events it dead-lettered, after
//! a fix. It reads the dead-letter topic with a consumer group of its own (so progress
//! is kept and an interrupted replay resumes), gives each copy whose `eventd.handler`
//! names the handler back to that handler alone, and republishes nothing to the source
//! topic that other consumer groups read. It never deletes anything: events that fail
//! again stay where they are, and the command exits non-zero.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::Actor;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::actors::handler::Standalone;
use crate::actors::producer::{ProducerActor, ProducerArgs, ProducerSupervisor};
use crate::config::{Config, EXIT_CONFIG};
use crate::daemon::EXIT_UNAVAILABLE;
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
}

/// What became of each dead-letter copy read.
#[derive(Debug, Default)]
struct Tally {
    replayed: u64,
    would_replay: u64,
    failed: u64,
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
                eprintln!("eventd replay: cannot start the producer: {error}");
                return EXIT_CONFIG;
            }
        }
    };
    let mut standalone = Standalone::new(&config, &handler, handle);
    let names = Arc::new(standalone.field_names());
    let mut tally = Tally::default();
    let mut progress: HashMap<i32, i64> = HashMap::new();
    let mut uncommitted = 0;
    let holds_events = handler.kind == crate::config::HandlerKind::Count;
    let mut held: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let mut pending = ends.clone();
    pending.retain(|_, (next, end)| next < end);
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    while !pending.is_empty() {
        let polled = {
            let consumer = consumer.clone();
            tokio::select! {
                biased;
                _ = &mut interrupted => {
                    eprintln!("eventd replay: interrupted; progress so far is committed");
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
                pending.remove(&partition);
                continue;
            }
            Ok(Some(Err(error))) => {
                eprintln!("eventd replay: consume error: {error}");
                continue;
            }
            Err(error) => {
                eprintln!("eventd replay: consumer thread failed: {error}");
                break;
            }
        };
        let (partition, offset) = (message.partition(), message.offset());
        if let Some((_, end)) = pending.get(&partition) {
            if offset + 1 >= *end {
                pending.remove(&partition);
            }
        }
        let at = format!("{}/{partition}@{offset}", options.from);
        // Ctrl-C abandons the event being handled: it is not committed, so the next
        // run handles it again.
        let outcome = tokio::select! {
            biased;
            _ = &mut interrupted => {
                eprintln!("eventd replay: interrupted; progress so far is committed");
                break;
            }
            outcome = replay_one(&message, &options, &names, &mut standalone) => outcome,
        };
        match outcome {
            Outcome::Replayed => tally.replayed += 1,
            Outcome::WouldReplay(source) => {
                tally.would_replay += 1;
                println!("{at}: would replay {source}");
            }
            Outcome::Failed(reason) => {
                tally.failed += 1;
                eprintln!(
                    "eventd replay: {at}: failed again, left in {}: {reason}",
                    options.from
                );
                // Progress stops here, so the next run (after a fix) tries it again.
                held.insert(partition);
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
                // Copies after --until are left for a later replay to find: this
                // partition's progress stops at the first of them.
                if after_until {
                    held.insert(partition);
                }
            }
        }
        if !options.dry_run && !held.contains(&partition) {
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
    let flushed = if options.dry_run {
        Ok(())
    } else {
        standalone.flush().await
    };
    if let Err(error) = &flushed {
        eprintln!(
            "eventd replay: handler {:?} could not emit what it holds: {error}",
            handler.name
        );
    }
    // Committed only once everything written is acknowledged: a count window emitted
    // by the flush above counts the events committed here.
    if !options.dry_run && flushed.is_ok() {
        commit(&consumer, &options.from, &progress).await;
    }
    if let Some((supervisor, task)) = producer {
        supervisor.stop(None);
        let _ = task.await;
    }
    println!(
        "replay of {:?} by handler {:?}{}: replayed {}, failed {}, skipped {} (other handler {}, truncated {}, outside --since/--until {})",
        options.from,
        handler.name,
        if options.dry_run { " (dry run)" } else { "" },
        if options.dry_run { tally.would_replay } else { tally.replayed },
        tally.failed,
        tally.other_handler + tally.truncated + tally.outside_range,
        tally.other_handler,
        tally.truncated,
        tally.outside_range,
    );
    if !pending.is_empty() {
        return crate::commands::produce::EXIT_INTERRUPTED;
    }
    if tally.failed > 0 || flushed.is_err() {
        return 1;
    }
    0
}

enum Outcome {
    Replayed,
    WouldReplay(String),
    Failed(String),
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
    match standalone.handle(event).await {
        Ok(()) => Outcome::Replayed,
        Err(error) => Outcome::Failed(error),
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
