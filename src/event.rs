//! An engagement event as handlers see it: the JSON body as it arrived, validated once,
//! plus the Kafka coordinates, key, headers and timestamp it came with.
//!
//! The body is never built into a JSON tree. Decoding checks the whole payload and
//! the required fields in one pass and remembers where the fields that handlers read
//! (filters, `group_by`, `fields`, routing) sit in it; reading one of those is a slice,
//! reading any other field parses the payload again. `forward` writes the original
//! bytes on unchanged.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use smallvec::SmallVec;

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
    pub headers: Headers,
    /// Kafka message timestamp in epoch milliseconds, when the broker gave one.
    pub timestamp: Option<i64>,
    pub body: Body,
}

/// Kafka headers by name. Names eventd adds are static, so adding them allocates none.
pub type Headers = Vec<(Cow<'static, str>, Vec<u8>)>;

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

/// Fields every event must have.
const REQUIRED: [&str; 3] = ["user_id", "item_id", "ts"];
const ITEM_ID: usize = 1;

/// Names of the optional fields whose place in the body decoding records, because
/// the handlers of a consumer read them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FieldNames {
    names: Vec<Box<str>>,
}

impl FieldNames {
    /// `names` without the required fields (always recorded) and without repeats.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut kept: Vec<Box<str>> = Vec::new();
        for name in names {
            if !REQUIRED.contains(&name) && !kept.iter().any(|k| &**k == name) {
                kept.push(name.into());
            }
        }
        Self { names: kept }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| &**n == name)
    }
}

/// Byte range of one value in the payload; `end == 0` means absent (a JSON value is
/// never empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    const ABSENT: Span = Span { start: 0, end: 0 };

    fn of(raw: &RawValue, payload: &[u8]) -> Span {
        let start = raw.get().as_ptr() as usize - payload.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + raw.get().len()) as u32,
        }
    }

    fn is_present(self) -> bool {
        self.end != 0
    }
}

/// A validated JSON object: the payload bytes and where the fields of interest are.
#[derive(Clone)]
pub struct Body {
    payload: Box<[u8]>,
    required: [Span; 3],
    names: Arc<FieldNames>,
    recorded: SmallVec<[Span; 2]>,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.payload))
    }
}

impl Event {
    /// Decodes a payload, enforcing the required fields `user_id`, `item_id` and `ts`
    /// and recording where the fields in `names` are.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use eventd::event::{Body, DecodeError, Event, FieldNames};
    ///
    /// let names = Arc::new(FieldNames::new(["text"]));
    /// let body = Event::decode(Some(br#"{"user_id":"u1","item_id":"item-7","ts":1764000000000,"text":"hi"}"#), &names)
    ///     .expect("a valid event");
    /// assert_eq!(body.text("text").as_deref(), Some("hi")); // unknown fields pass through
    /// assert_eq!(
    ///     Event::decode(Some(br#"{"user_id":"u1","ts":1}"#), &names).map(|_| ()),
    ///     Err(DecodeError::MissingField("item_id"))
    /// );
    /// ```
    pub fn decode(payload: Option<&[u8]>, names: &Arc<FieldNames>) -> Result<Body, DecodeError> {
        let payload = payload
            .filter(|p| !p.is_empty())
            .ok_or(DecodeError::Empty)?;
        let mut required = [Span::ABSENT; 3];
        let mut recorded: SmallVec<[Span; 2]> =
            SmallVec::from_elem(Span::ABSENT, names.names.len());
        scan(payload, &names.names, &mut required, &mut recorded)?;
        for (i, field) in REQUIRED.iter().enumerate().take(2) {
            let raw = text_of(payload, required[i]).ok_or(DecodeError::MissingField(field))?;
            let valid = match raw.as_bytes()[0] {
                // Escapes always stand for at least one character.
                b'"' => raw.len() > 2,
                b'-' | b'0'..=b'9' => true,
                _ => false,
            };
            if !valid {
                return Err(DecodeError::BadId(field));
            }
        }
        let ts = text_of(payload, required[2]).ok_or(DecodeError::MissingField("ts"))?;
        let valid_ts = match ts.as_bytes()[0] {
            b'"' => {
                string_value(ts).is_some_and(|s| chrono::DateTime::parse_from_rfc3339(&s).is_ok())
            }
            // `-0` included: a JSON reader takes it for a float.
            b'-' => false,
            _ => ts.parse::<i64>().is_ok_and(|ms| ms >= 0),
        };
        if !valid_ts {
            return Err(DecodeError::BadTimestamp);
        }
        Ok(Body {
            payload: payload.into(),
            required,
            names: names.clone(),
            recorded,
        })
    }

    /// The value of `field` as text, for grouping and routing: a string's contents, a
    /// number or other value as JSON; `None` when absent or null.
    pub fn field_text(&self, field: &str) -> Option<Cow<'_, str>> {
        self.body.text(field)
    }

    /// Bytes that decide which actor of a pool handles this event: the Kafka key when
    /// there is one, else the item id, so events of one key keep their order.
    pub fn routing_key(&self) -> Cow<'_, [u8]> {
        if let Some(key) = &self.key {
            return Cow::Borrowed(key);
        }
        // Decoding let only a non-empty string or a number through: a number keys by
        // its JSON text, so events of `item_id` 7 share a key apart from those of 8.
        match text_of(&self.body.payload, self.body.required[ITEM_ID]) {
            Some(raw) if raw.starts_with('"') => match string_value(raw) {
                Some(Cow::Borrowed(s)) => Cow::Borrowed(s.as_bytes()),
                Some(Cow::Owned(s)) => Cow::Owned(s.into_bytes()),
                None => Cow::Borrowed(&[]),
            },
            Some(raw) => Cow::Borrowed(raw.as_bytes()),
            None => Cow::Borrowed(&[]),
        }
    }
}

impl Body {
    /// The payload exactly as it arrived.
    pub fn bytes(&self) -> &[u8] {
        &self.payload
    }

    /// The payload as text (a valid JSON document is valid UTF-8).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap_or_default()
    }

    /// The JSON text of `field`'s value, as written in the payload.
    pub fn raw(&self, field: &str) -> Option<&str> {
        if let Some(i) = REQUIRED.iter().position(|r| *r == field) {
            return text_of(&self.payload, self.required[i]);
        }
        match self.names.position(field) {
            Some(i) => text_of(&self.payload, self.recorded[i]),
            None => text_of(&self.payload, find(&self.payload, field)),
        }
    }

    /// `field`'s value, parsed.
    pub fn get(&self, field: &str) -> Option<Value> {
        serde_json::from_str(self.raw(field)?).ok()
    }

    /// `field` as text: a string's contents, a number as written, other values as
    /// compact JSON; `None` when absent or null.
    pub fn text(&self, field: &str) -> Option<Cow<'_, str>> {
        value_text(self.raw(field)?)
    }
}

/// A JSON value as text: a string's contents, an integer as written, other values as
/// compact JSON; `None` for null.
pub fn value_text(raw: &str) -> Option<Cow<'_, str>> {
    match raw.as_bytes().first()? {
        b'"' => string_value(raw),
        b'n' => None,
        // An integer that fits 64 bits reads as written; `-0` and larger ones read as
        // floats, as a JSON reader gives them.
        b'-' | b'0'..=b'9'
            if raw != "-0"
                && raw.bytes().all(|b| b == b'-' || b.is_ascii_digit())
                && (raw.parse::<i64>().is_ok() || raw.parse::<u64>().is_ok()) =>
        {
            Some(Cow::Borrowed(raw))
        }
        _ => serde_json::from_str::<Value>(raw)
            .ok()
            .map(|value| Cow::Owned(value.to_string())),
    }
}

/// Checks that `payload` is one JSON object, reading it once, and returns the JSON text
/// of the values of `names` (in that order; `None` when absent). No event fields are
/// required: this is for input that is not yet an event.
/// An array, not a `Vec`: `eventd produce` calls this once per input line.
pub fn object_fields<'p, const N: usize>(
    payload: &'p [u8],
    names: &[&str; N],
) -> Result<[Option<&'p str>; N], DecodeError> {
    let mut required = [Span::ABSENT; 3];
    let mut recorded = [Span::ABSENT; N];
    scan(payload, names, &mut required, &mut recorded)?;
    Ok(
        names.map(|name| match REQUIRED.iter().position(|r| *r == name) {
            Some(r) => text_of(payload, required[r]),
            // The first of repeated names is the one the scan records.
            None => text_of(
                payload,
                position(names, name).map_or(Span::ABSENT, |i| recorded[i]),
            ),
        }),
    )
}

fn text_of(payload: &[u8], span: Span) -> Option<&str> {
    if !span.is_present() {
        return None;
    }
    std::str::from_utf8(payload.get(span.start as usize..span.end as usize)?).ok()
}

/// The contents of a JSON string literal; borrowed unless it has escapes.
fn string_value(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

/// Says why a payload that failed the scan is not an event.
fn not_an_event(payload: &[u8], error: serde_json::Error) -> DecodeError {
    // The scan accepts only objects and stops at the first byte of anything else,
    // which may be valid JSON or not.
    if error.is_data() {
        return match serde_json::from_slice::<Checked>(payload) {
            Ok(_) => DecodeError::NotAnObject,
            Err(error) => DecodeError::NotJson(error.to_string()),
        };
    }
    DecodeError::NotJson(error.to_string())
}

/// Where the last `field` of a payload already validated is.
fn find(payload: &[u8], field: &str) -> Span {
    let mut required = [Span::ABSENT; 3];
    let mut recorded = [Span::ABSENT; 1];
    match scan(payload, &[field], &mut required, &mut recorded) {
        Ok(()) => recorded[0],
        Err(_) => Span::ABSENT,
    }
}

fn position<N: AsRef<str>>(names: &[N], name: &str) -> Option<usize> {
    names.iter().position(|n| n.as_ref() == name)
}

/// Checks `payload` is one JSON object and records where the required fields and
/// `names` are, in `required` and `recorded` (one slot per name).
fn scan<N: AsRef<str>>(
    payload: &[u8],
    names: &[N],
    required: &mut [Span; 3],
    recorded: &mut [Span],
) -> Result<(), DecodeError> {
    // UTF-8 checked once for the whole payload: cheaper than serde_json's check of
    // each string, which reading from a `str` skips.
    let text = std::str::from_utf8(payload).map_err(|error| {
        DecodeError::NotJson(format!(
            "not UTF-8 text: invalid byte at offset {}",
            error.valid_up_to()
        ))
    })?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    Scan {
        payload,
        names,
        required,
        recorded,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end())
    .map_err(|error| not_an_event(payload, error))
}

/// One pass over a JSON object: every value is checked, the wanted ones are recorded.
struct Scan<'a, N> {
    payload: &'a [u8],
    names: &'a [N],
    required: &'a mut [Span; 3],
    recorded: &'a mut [Span],
}

impl<'de, 'a, N: AsRef<str>> DeserializeSeed<'de> for Scan<'a, N> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, 'a, N: AsRef<str>> Visitor<'de> for Scan<'a, N> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let slot = match REQUIRED.iter().position(|r| *r == key.0) {
                Some(i) => Some(&mut self.required[i]),
                None => position(self.names, &key.0).map(|i| &mut self.recorded[i]),
            };
            match slot {
                // Later duplicates win, as in any JSON object reader.
                Some(slot) => {
                    // Taking the raw text skips the value as loosely as IgnoredAny.
                    let raw: &'de RawValue = map.next_value()?;
                    if !checked_by_skipping(raw.get()) {
                        serde_json::from_str::<Checked>(raw.get()).map_err(M::Error::custom)?;
                    }
                    *slot = Span::of(raw, self.payload);
                }
                None => {
                    map.next_value::<Checked>()?;
                }
            }
        }
        Ok(())
    }
}

/// Any JSON value, checked as strictly as parsing it into a `Value` would (UTF-8,
/// escapes, number range, nesting depth) and built into nothing. serde's `IgnoredAny`
/// is not enough: it skips strings without checking them and numbers without parsing.
struct Checked;

/// True when `raw`, a value the parser has skipped, is one `Checked` accepts for
/// certain, so parsing it again would only repeat the skip: a string without escapes
/// (skipping already refuses control characters in it; escapes it checks less than a
/// parse does), an integer too short to overflow into a float, or a literal. Most
/// recorded fields (ids, keys, timestamps) are one of these, and a second parser per
/// field was a tenth of `eventd produce`'s sending thread.
fn checked_by_skipping(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    match bytes.first() {
        Some(b'"') => !bytes.contains(&b'\\'),
        Some(b'-' | b'0'..=b'9') => {
            let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
            !digits.is_empty() && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit)
        }
        _ => matches!(raw, "true" | "false" | "null"),
    }
}

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

/// An object key, borrowed from the payload unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Headers eventd adds to what it writes, so consumers downstream can trace and
/// de-duplicate events.
pub mod headers {
    use std::borrow::Cow;

    use super::Source;

    pub const SOURCE_TOPIC: &str = "eventd.source.topic";
    pub const SOURCE_PARTITION: &str = "eventd.source.partition";
    pub const SOURCE_OFFSET: &str = "eventd.source.offset";
    /// Why an event went to the dead-letter topic.
    pub const ERROR: &str = "eventd.error";
    /// The handler that gave up on a dead-lettered event.
    pub const HANDLER: &str = "eventd.handler";
    /// Attempts a handler made before the event was dead-lettered.
    pub const ATTEMPTS: &str = "eventd.attempts";
    /// When the event was dead-lettered, RFC 3339 UTC.
    pub const FAILED_AT: &str = "eventd.failed_at";
    /// `true` on a dead-letter copy whose value was cut to fit the producer's limit.
    pub const TRUNCATED: &str = "eventd.truncated";
    /// Bytes of the original value of a truncated copy.
    pub const SOURCE_SIZE: &str = "eventd.source.size";

    /// The source headers of many events, written into buffers kept across them.
    #[derive(Default)]
    pub struct SourceText {
        partition: String,
        offset: String,
    }

    impl SourceText {
        /// Topic, partition and offset of `source`, as UTF-8 text.
        pub fn headers<'a>(&'a mut self, source: &'a Source) -> [(&'static str, &'a [u8]); 3] {
            use std::fmt::Write;
            self.partition.clear();
            self.offset.clear();
            // Writing to a String cannot fail.
            let _ = write!(self.partition, "{}", source.partition);
            let _ = write!(self.offset, "{}", source.offset);
            [
                (SOURCE_TOPIC, source.topic.as_bytes()),
                (SOURCE_PARTITION, self.partition.as_bytes()),
                (SOURCE_OFFSET, self.offset.as_bytes()),
            ]
        }
    }

    /// Topic, partition and offset of `source`, as UTF-8 text.
    pub fn source(source: &Source) -> [(Cow<'static, str>, Vec<u8>); 3] {
        [
            (SOURCE_TOPIC.into(), source.topic.as_bytes().to_vec()),
            (
                SOURCE_PARTITION.into(),
                source.partition.to_string().into_bytes(),
            ),
            (SOURCE_OFFSET.into(), source.offset.to_string().into_bytes()),
        ]
    }
}

/// A valid event read at `like/0@offset`, for unit tests of the layers above.
#[cfg(test)]
pub fn test_event(offset: i64) -> Arc<Event> {
    let payload = br#"{"user_id":"u","item_id":"i","ts":1}"#;
    Arc::new(Event {
        source: Source {
            topic: Arc::from("like"),
            partition: 0,
            offset,
        },
        key: None,
        headers: Vec::new(),
        timestamp: None,
        body: Event::decode(Some(payload), &Arc::new(FieldNames::default()))
            .expect("a valid event"),
    })
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

    fn decode(payload: &[u8]) -> Result<Body, DecodeError> {
        Event::decode(Some(payload), &Arc::new(FieldNames::new(["extra", "n"])))
    }

    #[test]
    fn decodes_required_fields_and_keeps_unknown_ones() {
        let payload = br#"{"user_id":"u1","item_id":7,"ts":"2026-11-01T00:00:00Z","extra":[1], "other" : {"a":1}}"#;
        let body = decode(payload).unwrap();
        assert_eq!(body.get("extra"), Some(serde_json::json!([1])));
        // Not recorded while decoding: found by reading the payload again.
        assert_eq!(body.raw("other"), Some(r#"{"a":1}"#));
        assert_eq!(body.bytes(), payload, "the payload is kept byte for byte");
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        let names = Arc::new(FieldNames::default());
        assert_eq!(
            Event::decode(None, &names).map(|_| ()),
            Err(DecodeError::Empty)
        );
        assert!(matches!(decode(b"{oops"), Err(DecodeError::NotJson(_))));
        assert!(matches!(
            decode(br#"{"user_id":"u","item_id":"i","ts":1} trailing"#),
            Err(DecodeError::NotJson(_))
        ));
        assert!(matches!(
            decode(br#"{"user_id":"u","item_id":"i","ts":1,"bad":[1,}"#),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(decode(b"[1]").map(|_| ()), Err(DecodeError::NotAnObject));
        assert_eq!(
            decode(b"\"text\"").map(|_| ()),
            Err(DecodeError::NotAnObject)
        );
        assert!(matches!(decode(b"[1, }"), Err(DecodeError::NotJson(_))));
        assert_eq!(
            decode(br#"{"user_id":"u","ts":1}"#).map(|_| ()),
            Err(DecodeError::MissingField("item_id"))
        );
        assert_eq!(
            decode(br#"{"user_id":"","item_id":"i","ts":1}"#).map(|_| ()),
            Err(DecodeError::BadId("user_id"))
        );
        assert_eq!(
            decode(br#"{"user_id":"u","item_id":null,"ts":1}"#).map(|_| ()),
            Err(DecodeError::BadId("item_id"))
        );
        for ts in [
            r#""yesterday""#,
            "-1",
            "1.5",
            "18446744073709551615",
            "true",
        ] {
            let payload = format!(r#"{{"user_id":"u","item_id":"i","ts":{ts}}}"#);
            assert_eq!(
                decode(payload.as_bytes()).map(|_| ()),
                Err(DecodeError::BadTimestamp),
                "ts {ts}"
            );
        }
    }

    #[test]
    fn what_a_json_reader_refuses_is_refused_wherever_it_sits() {
        let event = |rest: &str| format!(r#"{{"user_id":"u","item_id":"i","ts":1,{rest}}}"#);
        let deep = format!(r#""deep":{}1{}"#, "[".repeat(200), "]".repeat(200));
        // "extra" is recorded while decoding, "other" is not: both are checked.
        for rest in [
            r#""other":"\ud800""#,
            r#""extra":"\ud800""#,
            r#""other":1e400"#,
            r#""extra":1e400"#,
            r#""other":{"a":[1,2,"\ud83d"]}"#,
            deep.as_str(),
        ] {
            assert!(
                matches!(decode(event(rest).as_bytes()), Err(DecodeError::NotJson(_))),
                "accepted {rest}"
            );
        }
        let mut bad_utf8 = event(r#""other":"x""#).into_bytes();
        let at = bad_utf8.len() - 3;
        bad_utf8[at] = 0xff;
        assert!(matches!(decode(&bad_utf8), Err(DecodeError::NotJson(_))));
        assert!(matches!(
            decode(br#"{"user_id":"u","item_id":"\ud800","ts":1}"#),
            Err(DecodeError::NotJson(_))
        ));
        assert!(decode(event(r#""other":"\ud83d\ude00","n":[{"a":null}]"#).as_bytes()).is_ok());
        assert_eq!(
            decode(br#"{"user_id":"u","item_id":"i","ts":-0}"#).map(|_| ()),
            Err(DecodeError::BadTimestamp)
        );
    }

    #[test]
    fn integers_read_as_written_unless_a_json_reader_makes_them_floats() {
        assert_eq!(value_text("-12").as_deref(), Some("-12"));
        assert_eq!(
            value_text("18446744073709551615").as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(value_text("-0").as_deref(), Some("-0.0"));
        assert_eq!(
            value_text("18446744073709551616").as_deref(),
            Some("1.8446744073709552e+19")
        );
    }

    #[test]
    fn field_text_reads_strings_numbers_and_escapes() {
        let body = decode(
            br#"{"user_id":"u\u0031","item_id":"i","ts":1,"n":-12,"f":1.50,"z":null,"o":[1, 2]}"#,
        )
        .unwrap();
        assert_eq!(body.text("user_id").as_deref(), Some("u1"));
        assert_eq!(body.text("n").as_deref(), Some("-12"));
        assert_eq!(body.text("f").as_deref(), Some("1.5"));
        assert_eq!(body.text("z"), None);
        assert_eq!(body.text("o").as_deref(), Some("[1,2]"));
        assert_eq!(body.text("absent"), None);
    }

    #[test]
    fn a_repeated_field_reads_as_its_last_value() {
        let body =
            decode(br#"{"user_id":"u","item_id":"a","ts":1,"item_id":"b","n":1,"n":2}"#).unwrap();
        assert_eq!(body.text("item_id").as_deref(), Some("b"));
        assert_eq!(body.text("n").as_deref(), Some("2"));
    }

    #[test]
    fn routing_key_is_the_kafka_key_else_the_item_id() {
        let body = decode(br#"{"user_id":"u","item_id":"item-7","ts":1}"#).unwrap();
        let mut event = Event {
            source: Source {
                topic: Arc::from("like"),
                partition: 0,
                offset: 0,
            },
            key: None,
            headers: Vec::new(),
            timestamp: None,
            body,
        };
        assert_eq!(&*event.routing_key(), b"item-7");
        event.key = Some(b"k".to_vec());
        assert_eq!(&*event.routing_key(), b"k");
        event.key = None;
        event.body = decode(br#"{"user_id":"u","item_id":70,"ts":1}"#).unwrap();
        assert_eq!(
            &*event.routing_key(),
            b"70",
            "a numeric id keys by its text"
        );
    }

    #[test]
    fn object_fields_reads_any_object_once() {
        let line = br#"{"topic":"like","n":1.50,"k":"a\"b"}"#;
        let fields = object_fields(line, &["k", "topic", "n", "absent", "topic"]).unwrap();
        assert_eq!(
            fields,
            [
                Some(r#""a\"b""#),
                Some(r#""like""#),
                Some("1.50"),
                None,
                Some(r#""like""#)
            ]
        );
        assert_eq!(value_text(fields[0].unwrap()).as_deref(), Some("a\"b"));
        assert_eq!(value_text("1.50").as_deref(), Some("1.5"));
        assert_eq!(value_text("null"), None);
        assert_eq!(object_fields(b"[1]", &["k"]), Err(DecodeError::NotAnObject));
        assert!(matches!(
            object_fields(b"{\"k\":", &["k"]),
            Err(DecodeError::NotJson(_))
        ));
    }

    #[test]
    fn values_taken_as_checked_by_skipping_are_ones_a_parse_accepts() {
        for raw in [
            r#""item-7""#,
            r#""""#,
            "0",
            "-12",
            "999999999999999999",
            "true",
            "false",
            "null",
        ] {
            assert!(checked_by_skipping(raw), "{raw}");
            assert!(serde_json::from_str::<Checked>(raw).is_ok(), "{raw}");
        }
        // Left to the parse: escapes, floats, long integers, containers.
        for raw in [
            r#""\ud800""#,
            r#""a\"b""#,
            "1.5",
            "1e400",
            "9999999999999999999",
            "-",
            "[1]",
            "{}",
        ] {
            assert!(!checked_by_skipping(raw), "{raw}");
        }
        // A skipped value that a parse refuses still fails the scan.
        assert!(object_fields(br#"{"item_id":"\ud800"}"#, &["item_id"]).is_err());
        assert!(object_fields(br#"{"ts":1e400}"#, &["ts"]).is_err());
    }

    #[test]
    fn slot_is_stable_and_in_range() {
        assert_eq!(slot_for(b"item-7", 4), slot_for(b"item-7", 4));
        assert!((0..1000).all(|i| slot_for(format!("k{i}").as_bytes(), 3) < 3));
    }
}
