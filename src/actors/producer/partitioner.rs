//! Partition choice, done by eventd rather than librdkafka so keys land where other
//! clients put them: `hash` places keys as sarama's default partitioner does (Go
//! services), `murmur2` as the Java client does. librdkafka's own `fnv1a` partitioner
//! takes the hash unsigned and so disagrees with sarama for about half of all keys.
//!
//! Events without a key go to a random partition under `hash` and `murmur2` (sarama's
//! rule); `round_robin` and `random` ignore keys; `manual` ignores keys too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;

use crate::config::{PartitionerConfig, PartitionerKind, ProducerConfig};

/// The field `manual` reads when neither `partition` nor `partition_field` is set.
pub const DEFAULT_PARTITION_FIELD: &str = "partition";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    #[error("partitioner \"manual\": the event has no integer field {field:?}")]
    MissingField { field: String },
    #[error(
        "partitioner \"manual\": the event is not a JSON object, so it has no field {field:?}"
    )]
    NotAnObject { field: String },
    #[error("partition {partition} is outside the topic's {count} partitions (0 to {})", count - 1)]
    OutOfRange { partition: i64, count: i32 },
}

/// FNV-1a, 32 bits (Go's `hash/fnv` `New32a`).
pub fn fnv1a_32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// sarama's hash partitioner: the hash as a signed 32-bit number, remainder truncated
/// toward zero, then made positive.
pub fn sarama_partition(key: &[u8], partitions: i32) -> i32 {
    ((fnv1a_32(key) as i32) % partitions).abs()
}

/// murmur2 as in the Java client's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut hash = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            hash ^= u32::from(*byte) << (8 * i);
        }
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash as i32
}

/// The Java client's placement: `toPositive(murmur2(key)) % partitions`.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Chooses partitions for every topic the producer writes.
pub struct Partitioners {
    default: PartitionerConfig,
    outputs: HashMap<String, PartitionerConfig>,
    round_robin: Mutex<HashMap<String, std::sync::Arc<AtomicU32>>>,
}

impl Partitioners {
    pub fn new(config: &ProducerConfig) -> Self {
        Self {
            default: config.default_partitioner(),
            outputs: config
                .outputs
                .iter()
                .map(|(topic, output)| (topic.clone(), output.clone()))
                .collect(),
            round_robin: Mutex::new(HashMap::new()),
        }
    }

    pub fn for_topic(&self, topic: &str) -> &PartitionerConfig {
        self.outputs.get(topic).unwrap_or(&self.default)
    }

    /// The partition of one event of `topic`, which has `count` partitions.
    pub fn choose(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        count: i32,
    ) -> Result<i32, PartitionError> {
        let count = count.max(1);
        let config = self.for_topic(topic);
        match (config.partitioner, key) {
            (PartitionerKind::Hash, Some(key)) => Ok(sarama_partition(key, count)),
            (PartitionerKind::Murmur2, Some(key)) => Ok(java_partition(key, count)),
            (PartitionerKind::Hash | PartitionerKind::Murmur2 | PartitionerKind::Random, _) => {
                Ok(fastrand::i32(0..count))
            }
            (PartitionerKind::RoundRobin, _) => {
                let next = self.next_round_robin(topic);
                Ok((next % count as u32) as i32)
            }
            (PartitionerKind::Manual, _) => {
                let partition = match config.partition {
                    Some(fixed) => i64::from(fixed),
                    None => manual_field(
                        payload,
                        config
                            .partition_field
                            .as_deref()
                            .unwrap_or(DEFAULT_PARTITION_FIELD),
                    )?,
                };
                if !(0..i64::from(count)).contains(&partition) {
                    return Err(PartitionError::OutOfRange { partition, count });
                }
                Ok(partition as i32)
            }
        }
    }

    fn next_round_robin(&self, topic: &str) -> u32 {
        let counter = {
            let mut counters = self.round_robin.lock();
            match counters.get(topic) {
                Some(counter) => counter.clone(),
                None => counters.entry(topic.to_owned()).or_default().clone(),
            }
        };
        counter.fetch_add(1, Ordering::Relaxed)
    }
}

fn manual_field(payload: &[u8], field: &str) -> Result<i64, PartitionError> {
    let body: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| PartitionError::NotAnObject {
            field: field.to_owned(),
        })?;
    let object = body
        .as_object()
        .ok_or_else(|| PartitionError::NotAnObject {
            field: field.to_owned(),
        })?;
    object
        .get(field)
        .and_then(|value| {
            value
                .as_i64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| PartitionError::MissingField {
            field: field.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apache Kafka's `UtilsTest.testMurmur2` vectors.
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&[u8], i32); 7] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"", 275_646_681),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
        // toPositive(-790332482) % 50, as the Java client places "foobar".
        assert_eq!(java_partition(b"foobar", 50), 16);
    }

    /// Every row of sarama's placements for 200 key/partition-count pairs.
    #[test]
    fn hash_reproduces_sarama() {
        let csv = include_str!("../../../tests/data/sarama_hash_partitions.csv");
        let mut rows = 0;
        for (line_number, line) in csv.lines().enumerate().skip(1) {
            let (key, rest) = line
                .rsplit_once(',')
                .and_then(|(head, partition)| {
                    let (key, count) = head.rsplit_once(',')?;
                    Some((
                        key,
                        (count.parse::<i32>().ok()?, partition.parse::<i32>().ok()?),
                    ))
                })
                .unwrap_or_else(|| {
                    panic!(
                        "line {}: {line:?} is not key,partitions,partition",
                        line_number + 1
                    )
                });
            let key = key
                .strip_prefix('"')
                .and_then(|k| k.strip_suffix('"'))
                .unwrap_or(key)
                .replace("\"\"", "\"");
            let (count, expected) = rest;
            assert_eq!(
                sarama_partition(key.as_bytes(), count),
                expected,
                "line {}: key {key:?} over {count} partitions",
                line_number + 1
            );
            rows += 1;
        }
        assert_eq!(rows, 203, "every data row of the file was checked");
    }

    fn partitioners(toml: &str) -> Partitioners {
        let config: ProducerConfig = toml_config(toml);
        Partitioners::new(&config)
    }

    fn toml_config(toml: &str) -> ProducerConfig {
        config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("producer config parses")
    }

    #[test]
    fn round_robin_spreads_evenly_per_topic() {
        let partitioners = partitioners("partitioner = \"round_robin\"");
        let mut counts = [0; 6];
        for _ in 0..6 * 50 + 4 {
            let partition = partitioners
                .choose("t", Some(b"same"), b"{}", 6)
                .expect("partition");
            counts[partition as usize] += 1;
        }
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(
            max.zip(min).is_some_and(|(max, min)| max - min <= 1),
            "{counts:?}"
        );
    }

    #[test]
    fn manual_reads_the_field_or_the_fixed_partition() {
        let partitioners = partitioners(
            "partitioner = \"manual\"\npartition_field = \"shard\"\n\
             [outputs.fixed]\npartitioner = \"manual\"\npartition = 2\n",
        );
        let choose = |topic, payload: &str| partitioners.choose(topic, None, payload.as_bytes(), 4);
        assert_eq!(choose("t", r#"{"shard": 3}"#), Ok(3));
        assert_eq!(choose("t", r#"{"shard": "1"}"#), Ok(1));
        assert_eq!(choose("fixed", r#"{"shard": 3}"#), Ok(2));
        assert_eq!(
            choose("t", r#"{"other": 3}"#),
            Err(PartitionError::MissingField {
                field: "shard".to_owned()
            })
        );
        assert_eq!(
            choose("t", r#"{"shard": 4}"#),
            Err(PartitionError::OutOfRange {
                partition: 4,
                count: 4
            })
        );
    }

    #[test]
    fn outputs_override_the_producer_partitioner() {
        let partitioners =
            partitioners("partitioner = \"hash\"\n[outputs.java]\npartitioner = \"murmur2\"\n");
        assert_eq!(
            partitioners.choose("java", Some(b"foobar"), b"", 50),
            Ok(16)
        );
        assert_eq!(
            partitioners.choose("go", Some(b"foobar"), b"", 50),
            Ok(sarama_partition(b"foobar", 50))
        );
    }

    #[test]
    fn keyless_events_spread_under_hash() {
        let partitioners = partitioners("partitioner = \"hash\"");
        let seen: std::collections::HashSet<i32> = (0..200)
            .map(|_| partitioners.choose("t", None, b"{}", 4).expect("partition"))
            .collect();
        assert_eq!(seen.len(), 4);
    }
}
