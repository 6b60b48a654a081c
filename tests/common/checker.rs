//! One checker for every delivery scenario: it compares the ids produced with what a
//! `forward` handler wrote to its sink (each copy carries `eventd.source.*` headers) and
//! reports missing ids, duplicates and per-key order violations.
//!
//! Order: for each key of each source partition, the source offsets of the first copy
//! of each event, in the order the sink holds them, must strictly increase. Duplicates
//! are allowed by at-least-once; their sources are kept so a scenario can bound them.

use std::collections::{HashMap, HashSet};

use super::Record;

/// Where a copy in the sink came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceOf {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl SourceOf {
    /// The `eventd.source.*` headers of `record`; panics naming what is missing, since a
    /// copy without them cannot be checked.
    pub fn of(record: &Record) -> SourceOf {
        let header = |name: &str| {
            record.headers.get(name).unwrap_or_else(|| {
                panic!(
                    "sink record at partition {} offset {} has no {name} header",
                    record.partition, record.offset
                )
            })
        };
        SourceOf {
            topic: header("eventd.source.topic").clone(),
            partition: header("eventd.source.partition")
                .parse()
                .expect("eventd.source.partition is a number"),
            offset: header("eventd.source.offset")
                .parse()
                .expect("eventd.source.offset is a number"),
        }
    }
}

/// What the sink holds against what was produced.
#[derive(Debug, Default)]
pub struct Delivery {
    pub produced: usize,
    /// Copies in the sink, duplicates included.
    pub copies: usize,
    /// Produced ids with no copy.
    pub missing: Vec<String>,
    /// Ids with more than one copy, with the source of every copy.
    pub duplicated: HashMap<String, Vec<SourceOf>>,
    /// Ids in the sink that were never produced.
    pub unknown: Vec<String>,
    /// Keys whose first copies went backwards, e.g. `item-3 in like/2: offset 17 after 20`.
    pub order_violations: Vec<String>,
}

impl Delivery {
    /// Checks `sink` (records in order per sink partition, as `Broker::read_all` gives
    /// them) against the ids in `produced`.
    pub fn check(produced: &HashSet<String>, sink: &[Record]) -> Delivery {
        let mut delivery = Delivery {
            produced: produced.len(),
            copies: sink.len(),
            ..Delivery::default()
        };
        let mut copies: HashMap<String, Vec<SourceOf>> = HashMap::new();
        // Last first-copy offset seen per (source topic, source partition, key).
        let mut last_first: HashMap<(String, i32, String), i64> = HashMap::new();
        for record in sink {
            let id = record.field("event_id").unwrap_or_else(|| {
                panic!(
                    "sink record at partition {} offset {} has no event_id",
                    record.partition, record.offset
                )
            });
            let source = SourceOf::of(record);
            let seen = copies.entry(id.clone()).or_default();
            let first = seen.is_empty();
            seen.push(source.clone());
            if !first {
                continue;
            }
            let key = record.key.clone().unwrap_or_default();
            let slot = (source.topic.clone(), source.partition, key.clone());
            if let Some(previous) = last_first.insert(slot, source.offset) {
                if source.offset <= previous {
                    delivery.order_violations.push(format!(
                        "{key} in {}/{}: offset {} after {previous}",
                        source.topic, source.partition, source.offset
                    ));
                }
            }
        }
        let mut missing: Vec<String> = produced
            .iter()
            .filter(|id| !copies.contains_key(*id))
            .cloned()
            .collect();
        missing.sort();
        delivery.missing = missing;
        delivery.unknown = copies
            .keys()
            .filter(|id| !produced.contains(*id))
            .cloned()
            .collect();
        delivery.duplicated = copies.into_iter().filter(|(_, c)| c.len() > 1).collect();
        delivery
    }

    /// Copies beyond the first of each id.
    pub fn duplicates(&self) -> usize {
        self.duplicated.values().map(|c| c.len() - 1).sum()
    }

    /// One line of figures for assertion messages and the test's output.
    pub fn summary(&self) -> String {
        format!(
            "produced {}, copies {}, missing {}, duplicates {}, unknown {}, order violations {}",
            self.produced,
            self.copies,
            self.missing.len(),
            self.duplicates(),
            self.unknown.len(),
            self.order_violations.len()
        )
    }

    /// Every produced id has a copy, nothing unknown arrived, and per-key order holds.
    pub fn assert_at_least_once_in_order(&self, context: &str) {
        assert!(
            self.missing.is_empty() && self.unknown.is_empty() && self.order_violations.is_empty(),
            "{context}: {}; missing e.g. {:?}; unknown e.g. {:?}; order e.g. {:?}",
            self.summary(),
            &self.missing[..self.missing.len().min(10)],
            &self.unknown[..self.unknown.len().min(10)],
            &self.order_violations[..self.order_violations.len().min(10)],
        );
    }

    /// As `assert_at_least_once_in_order`, and no id was copied twice.
    pub fn assert_exactly_once_in_order(&self, context: &str) {
        self.assert_at_least_once_in_order(context);
        assert_eq!(
            self.duplicates(),
            0,
            "{context}: {}; duplicated e.g. {:?}",
            self.summary(),
            self.duplicated.iter().take(5).collect::<Vec<_>>()
        );
    }
}

/// Ids `e-0` .. `e-{total-1}`, as `events` and `event` write them.
pub fn produced_ids(total: usize) -> HashSet<String> {
    (0..total).map(|id| format!("e-{id}")).collect()
}
