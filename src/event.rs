//! An engagement event as handlers see it: the decoded JSON body plus the Kafka
//! coordinates, key, headers and timestamp it came with.

use std::sync::Arc;

use serde_json::{Map, Value};

/// Where an event came from; also what its offset bookkeeping is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// A decoded event. Unknown fields are kept in `body` and passed through.
#[derive(Debug, Clone)]
pub struct Event {
    pub source: Source,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Kafka message timestamp in epoch milliseconds, when the broker gave one.
    pub timestamp: Option<i64>,
    pub body: Map<String, Value>,
}

/// Why a payload is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("missing required field {0:?}")]
    MissingField(&'static str),
    #[error("field {0:?} must be a non-empty string or a number")]
    BadId(&'static str),
    #[error("field \"ts\" must be an RFC 3339 time or epoch milliseconds")]
    BadTimestamp,
}

impl Event {
    /// Decodes a payload, enforcing the required fields `user_id`, `item_id` and `ts`.
    ///
    /// ```
    /// use eventd::event::{DecodeError, Event};
    ///
    /// let body = Event::decode(Some(br#"{"user_id":"u1","item_id":"item-7","ts":1764000000000,"text":"hi"}"#))
    ///     .expect("a valid event");
    /// assert_eq!(body["text"], "hi"); // unknown fields pass through
    /// assert_eq!(
    ///     Event::decode(Some(br#"{"user_id":"u1","ts":1}"#)),
    ///     Err(DecodeError::MissingField("item_id"))
    /// );
    /// ```
    pub fn decode(payload: Option<&[u8]>) -> Result<Map<String, Value>, DecodeError> {
        let payload = payload
            .filter(|p| !p.is_empty())
            .ok_or(DecodeError::Empty)?;
        let value: Value =
            serde_json::from_slice(payload).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        let Value::Object(body) = value else {
            return Err(DecodeError::NotAnObject);
        };
        for field in ["user_id", "item_id"] {
            match body.get(field) {
                None => return Err(DecodeError::MissingField(field)),
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(Value::Number(_)) => {}
                Some(_) => return Err(DecodeError::BadId(field)),
            }
        }
        match body.get("ts") {
            None => return Err(DecodeError::MissingField("ts")),
            Some(Value::Number(n)) if n.as_i64().is_some_and(|ms| ms >= 0) => {}
            Some(Value::String(s)) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {}
            Some(_) => return Err(DecodeError::BadTimestamp),
        }
        Ok(body)
    }

    /// The value of `field` as a string, for grouping and routing.
    pub fn field_text(&self, field: &str) -> Option<String> {
        match self.body.get(field)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// Bytes that decide which actor of a pool handles this event: the Kafka key when
    /// there is one, else the item id, so events of one key keep their order.
    pub fn routing_key(&self) -> &[u8] {
        if let Some(key) = &self.key {
            return key;
        }
        match self.body.get("item_id") {
            Some(Value::String(s)) => s.as_bytes(),
            _ => &[],
        }
    }
}

/// Headers eventd adds to what it writes, so consumers downstream can trace and
/// de-duplicate events.
pub mod headers {
    use super::Source;

    pub const SOURCE_TOPIC: &str = "eventd.source.topic";
    pub const SOURCE_PARTITION: &str = "eventd.source.partition";
    pub const SOURCE_OFFSET: &str = "eventd.source.offset";
    /// Why an event went to the dead-letter topic.
    pub const ERROR: &str = "eventd.error";

    /// Topic, partition and offset of `source`, as UTF-8 text.
    pub fn source(source: &Source) -> [(String, Vec<u8>); 3] {
        [
            (SOURCE_TOPIC.to_owned(), source.topic.as_bytes().to_vec()),
            (
                SOURCE_PARTITION.to_owned(),
                source.partition.to_string().into_bytes(),
            ),
            (
                SOURCE_OFFSET.to_owned(),
                source.offset.to_string().into_bytes(),
            ),
        ]
    }
}

/// Picks a pool member for `bytes`; FNV-1a is stable across runs and processes.
pub fn slot_for(bytes: &[u8], slots: usize) -> usize {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash as usize) % slots.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_required_fields_and_keeps_unknown_ones() {
        let body = Event::decode(Some(
            br#"{"user_id":"u1","item_id":7,"ts":"2026-11-01T00:00:00Z","extra":[1]}"#,
        ))
        .unwrap();
        assert_eq!(body["extra"], serde_json::json!([1]));
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        assert_eq!(Event::decode(None), Err(DecodeError::Empty));
        assert!(matches!(
            Event::decode(Some(b"{oops")),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(Event::decode(Some(b"[1]")), Err(DecodeError::NotAnObject));
        assert_eq!(
            Event::decode(Some(br#"{"user_id":"u","ts":1}"#)),
            Err(DecodeError::MissingField("item_id"))
        );
        assert_eq!(
            Event::decode(Some(br#"{"user_id":"u","item_id":"i","ts":"yesterday"}"#)),
            Err(DecodeError::BadTimestamp)
        );
    }

    #[test]
    fn slot_is_stable_and_in_range() {
        assert_eq!(slot_for(b"item-7", 4), slot_for(b"item-7", 4));
        assert!((0..1000).all(|i| slot_for(format!("k{i}").as_bytes(), 3) < 3));
    }
}
