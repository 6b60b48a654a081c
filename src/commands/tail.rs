//! `eventd tail`: reads a topic without joining a consumer group and prints each event,
//! `topic partition offset key value` (or one JSON object with headers and
//! timestamp), in offset order per partition. It ends at the end each partition had
//! when it started, unless `--follow`.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::commands::position::{partitions_of, resolve, Position};
use crate::config::{Config, EXIT_CONFIG};
use crate::daemon::EXIT_UNAVAILABLE;
use crate::kafka::{command_brokers, plain_config, Diagnosis};

const TIMEOUT: Duration = crate::waits::METADATA_TIMEOUT;
const POLL: Duration = Duration::from_millis(200);

pub struct TailOptions {
    pub brokers: Option<String>,
    pub topic: String,
    pub partition: Option<i32>,
    pub from: Position,
    pub count: Option<u64>,
    pub follow: bool,
    pub json: bool,
}

/// Runs the command; returns the exit code. Blocking: it only reads and prints.
pub fn run(mut config: Config, options: TailOptions) -> i32 {
    if let Some(brokers) = &options.brokers {
        config.kafka.brokers = Some(brokers.clone());
    }
    let Some(brokers) = command_brokers(&config, "tail", Some("--brokers")) else {
        return EXIT_CONFIG;
    };
    // librdkafka wants a group id even to assign partitions; this one is never joined
    // (no subscribe) and never written to (nothing is committed).
    let consumer: BaseConsumer<Diagnosis> = match plain_config(&config, &brokers)
        .set("group.id", "eventd-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(Diagnosis::default())
    {
        Ok(consumer) => consumer,
        Err(error) => {
            eprintln!("eventd tail: bad [kafka] settings: {error}");
            return EXIT_CONFIG;
        }
    };
    let ends = match assign(&consumer, &options) {
        Ok(ends) => ends,
        Err(error) => {
            eprintln!("eventd tail: {}: {error}", brokers.bootstrap);
            return EXIT_UNAVAILABLE;
        }
    };
    // Partitions still to read up to their end at the start; all of them with --follow.
    let mut open: HashMap<i32, i64> = ends
        .into_iter()
        .filter(|(_, (next, end))| options.follow || next < end)
        .map(|(partition, (_, end))| (partition, end))
        .collect();
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    while !open.is_empty() && options.count.is_none_or(|count| printed < count) {
        let message = match consumer.poll(POLL) {
            None => continue,
            Some(Ok(message)) => message,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if !options.follow {
                    open.remove(&partition);
                }
                continue;
            }
            Some(Err(error)) => {
                eprintln!("eventd tail: {error}");
                continue;
            }
        };
        let line = if options.json {
            json_line(&message)
        } else {
            plain_line(&message)
        };
        if writeln!(out, "{line}").is_err() {
            // stdout closed (`| head`): nothing more to show.
            return 0;
        }
        printed += 1;
        if !options.follow {
            if let Some(end) = open.get(&message.partition()) {
                if message.offset() + 1 >= *end {
                    open.remove(&message.partition());
                }
            }
        }
    }
    let _ = out.flush();
    0
}

/// Assigns the partitions asked for at `--from`; returns (start, end at start) each.
fn assign(
    consumer: &BaseConsumer<Diagnosis>,
    options: &TailOptions,
) -> Result<HashMap<i32, (i64, i64)>, String> {
    let all = partitions_of(consumer, &options.topic, TIMEOUT)?;
    let partitions = match options.partition {
        Some(partition) if all.contains(&partition) => vec![partition],
        Some(partition) => {
            return Err(format!(
                "topic {:?} has no partition {partition} (it has {})",
                options.topic,
                all.len()
            ))
        }
        None => all,
    };
    let mut list = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in partitions {
        let marks = consumer
            .fetch_watermarks(&options.topic, partition, TIMEOUT)
            .map_err(|error| error.to_string())?;
        let start = resolve(
            consumer,
            &options.topic,
            partition,
            marks,
            options.from,
            TIMEOUT,
        )
        .map_err(|error| error.to_string())?;
        list.add_partition_offset(&options.topic, partition, Offset::Offset(start))
            .map_err(|error| error.to_string())?;
        ends.insert(partition, (start, marks.1));
    }
    consumer.assign(&list).map_err(|error| error.to_string())?;
    Ok(ends)
}

fn text(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(String::new, |b| String::from_utf8_lossy(b).into_owned())
}

fn plain_line(message: &BorrowedMessage<'_>) -> String {
    format!(
        "{} {} {} {} {}",
        message.topic(),
        message.partition(),
        message.offset(),
        message
            .key()
            .map_or_else(|| "-".to_owned(), |k| text(Some(k))),
        text(message.payload()),
    )
}

fn json_line(message: &BorrowedMessage<'_>) -> String {
    let headers: serde_json::Map<String, serde_json::Value> = message
        .headers()
        .map(|all| {
            all.iter()
                .map(|h| (h.key.to_owned(), serde_json::Value::String(text(h.value))))
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": message.timestamp().to_millis(),
        "key": message.key().map(|k| text(Some(k))),
        "value": text(message.payload()),
        "headers": headers,
    })
    .to_string()
}
