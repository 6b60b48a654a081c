//! `[handlers.filter]`: which events reach a handler. Each entry names an event field
//! (or, under `headers`, a Kafka header) and a condition on it; every entry must hold.
//! A condition holds when every operator it gives holds, so `{ gte = 1, lt = 10 }` is
//! a range.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Number, Value};

/// The operators a condition may give, for messages.
pub const OPERATORS: &[&str] = &[
    "equals", "in", "exists", "gt", "gte", "lt", "lte", "prefix", "not", "any",
];

/// A handler's filter: conditions on event fields and on Kafka headers.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Filter {
    /// By field name; the field's JSON value is tested.
    #[serde(flatten)]
    pub fields: BTreeMap<String, Condition>,
    /// By header name; the header's value is tested as text.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Condition>,
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FilterVisitor;
        impl<'de> Visitor<'de> for FilterVisitor {
            type Value = Filter;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of conditions by field name, and `headers`")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Filter, M::Error> {
                let mut filter = Filter::default();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "headers" {
                        filter.headers = map.next_value()?;
                    } else {
                        let condition = map.next_value()?;
                        filter.fields.insert(name, condition);
                    }
                }
                Ok(filter)
            }
        }
        deserializer.deserialize_map(FilterVisitor)
    }
}

impl Filter {
    /// Every condition that cannot be evaluated, as (key below the filter, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (name, condition) in &self.fields {
            condition.problems(&quoted_key(name), &mut found);
        }
        for (name, condition) in &self.headers {
            condition.problems(&format!("headers.{}", quoted_key(name)), &mut found);
        }
        found
    }
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
fn quoted_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_owned()
    } else {
        serde_json::to_string(name).unwrap_or_else(|_| name.to_owned())
    }
}

/// A condition on one value; every operator given must hold.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// One of these values (`in`).
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    /// Present (even as `null`) or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<Number>,
    /// A string starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Holds when this condition does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<Condition>>,
    /// Holds when one of these does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<Condition>>,
}

/// What a condition tests: a field's value as the JSON text the event holds, or a
/// header's value as text.
#[derive(Clone, Copy)]
pub enum Subject<'a> {
    Json(&'a str),
    Text(&'a str),
}

impl<'a> Subject<'a> {
    /// The value as a string: a JSON string's contents, or a header's text.
    fn string(self) -> Option<Cow<'a, str>> {
        match self {
            Subject::Json(raw) => {
                let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
                if inner.contains('\\') {
                    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
                } else {
                    Some(Cow::Borrowed(inner))
                }
            }
            Subject::Text(text) => Some(Cow::Borrowed(text)),
        }
    }

    /// The value as a number: a JSON number, or a header whose text is one.
    fn number(self) -> Option<Number> {
        let (Subject::Json(text) | Subject::Text(text)) = self;
        let text = text.trim();
        if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            return None;
        }
        serde_json::from_str::<Number>(text).ok()
    }

    /// Whether the value is `expected`. A field's string is compared by its contents,
    /// anything else as parsed, so `"\u0061"` equals `"a"` and `1.0` is not `1`, as with
    /// `serde_json::Value`. A header equals a string by its text, and a number or
    /// boolean when its text reads as that value.
    fn equals(self, expected: &Value) -> bool {
        match (self, expected) {
            (_, Value::String(expected)) => self.string().is_some_and(|text| text == *expected),
            (Subject::Json(raw), _) => {
                serde_json::from_str::<Value>(raw).is_ok_and(|value| value == *expected)
            }
            (Subject::Text(text), Value::Bool(expected)) => text == expected.to_string(),
            (Subject::Text(_), Value::Number(expected)) => self
                .number()
                .is_some_and(|number| compare(&number, expected) == Some(Ordering::Equal)),
            (Subject::Text(_), _) => false,
        }
    }
}

/// Integers compare exactly; anything else as floating point.
fn compare(value: &Number, literal: &Number) -> Option<Ordering> {
    match (value.as_i64(), literal.as_i64()) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => match (value.as_u64(), literal.as_u64()) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => value.as_f64()?.partial_cmp(&literal.as_f64()?),
        },
    }
}

impl Condition {
    /// Whether the value (`None`: absent) passes. An absent value passes only
    /// `exists = false`, a `not` of a condition it fails, or an `any` holding one of
    /// those.
    pub fn matches(&self, subject: Option<Subject<'_>>) -> bool {
        let ordered = |literal: &Option<Number>, wanted: fn(Ordering) -> bool| {
            literal.as_ref().is_none_or(|literal| {
                subject
                    .and_then(Subject::number)
                    .and_then(|number| compare(&number, literal))
                    .is_some_and(wanted)
            })
        };
        self.equals
            .as_ref()
            .is_none_or(|expected| subject.is_some_and(|s| s.equals(expected)))
            && self.one_of.as_ref().is_none_or(|allowed| {
                subject.is_some_and(|s| allowed.iter().any(|expected| s.equals(expected)))
            })
            && self.exists.is_none_or(|wanted| subject.is_some() == wanted)
            && ordered(&self.gt, Ordering::is_gt)
            && ordered(&self.gte, Ordering::is_ge)
            && ordered(&self.lt, Ordering::is_lt)
            && ordered(&self.lte, Ordering::is_le)
            && self.prefix.as_ref().is_none_or(|prefix| {
                subject
                    .and_then(Subject::string)
                    .is_some_and(|text| text.starts_with(prefix.as_str()))
            })
            && self
                .not
                .as_ref()
                .is_none_or(|inner| !inner.matches(subject))
            && self
                .any
                .as_ref()
                .is_none_or(|options| options.iter().any(|option| option.matches(subject)))
    }

    /// Adds what makes this condition unable to decide, under `key`.
    fn problems(&self, key: &str, found: &mut Vec<(String, String)>) {
        let given = [
            self.equals.is_some(),
            self.one_of.is_some(),
            self.exists.is_some(),
            self.gt.is_some(),
            self.gte.is_some(),
            self.lt.is_some(),
            self.lte.is_some(),
            self.prefix.is_some(),
            self.not.is_some(),
            self.any.is_some(),
        ];
        if !given.contains(&true) {
            found.push((
                key.to_owned(),
                format!(
                    "a condition needs an operator: one of {}, e.g. {{ equals = \"add\" }} or {{ gte = 10 }}",
                    OPERATORS.join(", ")
                ),
            ));
        }
        if self.one_of.as_ref().is_some_and(Vec::is_empty) {
            found.push((
                format!("{key}.in"),
                "an empty list matches nothing; list at least one value".to_owned(),
            ));
        }
        if let Some(inner) = &self.not {
            inner.problems(&format!("{key}.not"), found);
        }
        if let Some(options) = &self.any {
            if options.is_empty() {
                found.push((
                    format!("{key}.any"),
                    "an empty list matches nothing; list at least one condition".to_owned(),
                ));
            }
            for (i, option) in options.iter().enumerate() {
                option.problems(&format!("{key}.any[{i}]"), found);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` read as eventd reads its config file.
    fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|error| error.to_string())
    }

    fn condition(toml_text: &str) -> Condition {
        let mut read: BTreeMap<String, Condition> =
            from_toml(&format!("c = {toml_text}")).expect("a condition");
        read.remove("c").expect("c")
    }

    fn json(raw: &str) -> Option<Subject<'_>> {
        Some(Subject::Json(raw))
    }

    #[test]
    fn numeric_comparisons_take_numbers_only() {
        let range = condition("{ gte = 10, lt = 20 }");
        assert!(range.matches(json("10")));
        assert!(range.matches(json("19.5")));
        assert!(!range.matches(json("20")));
        assert!(!range.matches(json("9")));
        assert!(!range.matches(json(r#""15""#)), "a string is not a number");
        assert!(!range.matches(None));
        let big = condition("{ gt = 9007199254740992 }");
        assert!(
            big.matches(json("9007199254740993")),
            "integers compare exactly"
        );
        assert!(condition("{ lte = -1.5 }").matches(json("-2")));
        assert!(condition("{ gt = 0 }").matches(Some(Subject::Text("3"))));
        assert!(!condition("{ gt = 0 }").matches(Some(Subject::Text("three"))));
    }

    #[test]
    fn prefix_not_and_any_combine() {
        let web = condition(r#"{ prefix = "web-" }"#);
        assert!(web.matches(json(r#""web-eu""#)));
        assert!(web.matches(json(r#""\u0077eb-eu""#)), "escapes are read");
        assert!(!web.matches(json(r#""app-eu""#)));
        assert!(!web.matches(json("7")));
        let not_removed = condition(r#"{ not = { equals = "remove" } }"#);
        assert!(not_removed.matches(json(r#""add""#)));
        assert!(!not_removed.matches(json(r#""remove""#)));
        assert!(
            not_removed.matches(None),
            "an absent value is not \"remove\""
        );
        let either = condition(r#"{ any = [{ equals = "like" }, { prefix = "fav" }] }"#);
        assert!(either.matches(json(r#""like""#)));
        assert!(either.matches(json(r#""favorite""#)));
        assert!(!either.matches(json(r#""comment""#)));
        let in_list = condition(r#"{ in = ["a", 1] }"#);
        assert!(in_list.matches(json(r#""a""#)) && in_list.matches(json("1")));
        assert!(!in_list.matches(json("1.0")) && !in_list.matches(json(r#""1""#)));
    }

    #[test]
    fn headers_are_tested_as_text() {
        assert!(condition(r#"{ equals = "web" }"#).matches(Some(Subject::Text("web"))));
        assert!(!condition(r#"{ equals = "web" }"#).matches(Some(Subject::Text("\"web\""))));
        assert!(condition("{ equals = 2 }").matches(Some(Subject::Text("2"))));
        assert!(condition("{ equals = true }").matches(Some(Subject::Text("true"))));
        assert!(condition("{ exists = false }").matches(None));
    }

    #[test]
    fn conditions_that_cannot_decide_are_named() {
        let filter: Filter = from_toml(
            r#"
            action = {}
            n = { in = [] }
            kind = { any = [{ not = {} }] }
            headers = { "x-source" = { any = [] }, "a b" = { in = [] } }
            "#,
        )
        .expect("filter");
        let keys: Vec<String> = filter.problems().into_iter().map(|(key, _)| key).collect();
        assert_eq!(
            keys,
            [
                "action",
                "kind.any[0].not",
                "n.in",
                "headers.\"a b\".in",
                "headers.x-source.any"
            ]
        );
        for refused in [
            r#"n = { gt = "5" }"#,
            r#"n = { gt = nan }"#,
            r#"n = { above = 5 }"#,
            r#"headers = { h = { starts = "x" } }"#,
        ] {
            assert!(from_toml::<Filter>(refused).is_err(), "{refused}");
        }
    }
}
