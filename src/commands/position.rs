//! A place in a partition as operators name it on the command line (`eventd tail
//! --from`, `eventd offsets reset --to`): `earliest`, `latest`, an offset, or an RFC 3339
//! time, resolved against the broker to an offset.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{explain_failure, Diagnosis};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Earliest,
    Latest,
    Offset(i64),
    /// The first event at or after this time.
    Time(DateTime<Utc>),
}

impl std::str::FromStr for Position {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "earliest" => Ok(Position::Earliest),
            "latest" => Ok(Position::Latest),
            _ => {
                if let Ok(offset) = text.parse::<i64>() {
                    return if offset >= 0 {
                        Ok(Position::Offset(offset))
                    } else {
                        Err(format!("offset {offset} is negative"))
                    };
                }
                DateTime::parse_from_rfc3339(text)
                    .map(|at| Position::Time(at.with_timezone(&Utc)))
                    .map_err(|_| {
                        format!(
                            "{text:?} is not earliest, latest, an offset or an RFC 3339 time (2026-11-30T12:00:00Z)"
                        )
                    })
            }
        }
    }
}

/// The offset `position` names in `topic`/`partition`, within the partition's
/// watermarks `(low, high)`: an offset past the end is the end, one before the start
/// is the start, as Kafka's own tools do; a time after the last event is the end.
pub fn resolve(
    consumer: &BaseConsumer<Diagnosis>,
    topic: &str,
    partition: i32,
    (low, high): (i64, i64),
    position: Position,
    timeout: Duration,
) -> Result<i64, KafkaError> {
    Ok(match position {
        Position::Earliest => low,
        Position::Latest => high,
        Position::Offset(offset) => offset.clamp(low, high),
        Position::Time(at) => {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(topic, partition, Offset::Offset(at.timestamp_millis()))?;
            let found = consumer.offsets_for_times(list, timeout)?;
            match found.find_partition(topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(offset)) => offset.clamp(low, high),
                _ => high,
            }
        }
    })
}

/// Partitions of `topic`, from the broker's metadata.
pub fn partitions_of(
    consumer: &BaseConsumer<Diagnosis>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|error| explain_failure(consumer, &error))?;
    let Some(found) = metadata.topics().first() else {
        return Err(format!("topic {topic:?} does not exist"));
    };
    if let Some(error) = found.error() {
        return Err(format!(
            "topic {topic:?}: {}",
            rdkafka::types::RDKafkaErrorCode::from(error)
        ));
    }
    let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic:?} does not exist"));
    }
    partitions.sort_unstable();
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_as_operators_write_them() {
        assert_eq!("earliest".parse(), Ok(Position::Earliest));
        assert_eq!("latest".parse(), Ok(Position::Latest));
        assert_eq!("42".parse(), Ok(Position::Offset(42)));
        let at = "2026-11-30T12:00:00Z".parse::<Position>();
        assert!(matches!(at, Ok(Position::Time(t)) if t.timestamp() == 1_796_040_000));
        assert!("-1".parse::<Position>().unwrap_err().contains("negative"));
        assert!("yesterday"
            .parse::<Position>()
            .unwrap_err()
            .contains("RFC 3339"));
    }
}
