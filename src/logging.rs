//! Log output: JSON for machines, pretty for terminals, filtered by `log.level` unless
//! `RUST_LOG` is set. librdkafka's own log lines arrive through the `log` crate bridge.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The targets a `log.level` directive may name without a level. eventd's own lines
/// are logged under its module paths (`eventd::daemon`, ...), librdkafka's included:
/// they reach `log_librdkafka` in `kafka.rs`, which logs them under `eventd::kafka`.
/// `librdkafka` is the target rust-rdkafka's own default context logs them under,
/// `rdkafka` its crate's diagnostics (through the `log` bridge), `ractor` the actor
/// runtime's. A directive naming another target must give a level
/// (`hyper=debug`): alone, a word such as `verbose-please` parses as a target filter
/// that enables that target only and so silences every line eventd writes.
const KNOWN_TARGETS: &[&str] = &["eventd", "rdkafka", "librdkafka", "ractor"];

/// Whether `filter` is one `log.level` may hold: a tracing filter whose every directive
/// names a level (`info`, `rdkafka=warn`) or a known target (`eventd`,
/// `eventd::kafka`). The reason otherwise.
pub fn check_level(filter: &str) -> Result<(), String> {
    if let Err(error) = EnvFilter::try_new(filter) {
        return Err(format!(
            "{filter:?} is not a filter such as \"info\" or \"eventd=debug,info\": {error}"
        ));
    }
    for directive in directives(filter) {
        let names_level = directive.parse::<LevelFilter>().is_ok()
            || directive
                .rsplit_once('=')
                .is_some_and(|(_, level)| level.trim().parse::<LevelFilter>().is_ok());
        let target = directive
            .split(['[', '='])
            .next()
            .unwrap_or_default()
            .trim();
        let known_target = KNOWN_TARGETS.iter().any(|known| {
            target == *known
                || target
                    .strip_prefix(known)
                    .is_some_and(|rest| rest.starts_with("::"))
        });
        if !names_level && !known_target {
            return Err(format!(
                "{directive:?} names no level (trace, debug, info, warn, error, off) and no target eventd logs under ({}): it would silence every log line; write a level such as \"info\", or \"{directive}=debug,info\"",
                KNOWN_TARGETS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The comma-separated directives of a filter, leaving commas inside a span's field
/// list (`[span{a=1,b=2}]`) where they are.
fn directives(filter: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (at, c) in filter.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth <= 0 => {
                found.push(&filter[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    found.push(&filter[start..]);
    found
        .into_iter()
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
        .collect()
}

pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if json {
        builder.json().event_format(JsonLines).try_init()
    } else {
        builder.try_init()
    };
    if let Err(error) = result {
        eprintln!("eventd: logging already initialised: {error}");
    }
}

/// One JSON object per line: `timestamp`, `level`, the event's fields at the top level
/// and, inside spans, `span` and `spans`, as tracing's JSON format writes them. Unlike
/// it, a field whose text is a JSON array or object (the partitions of a rebalance, the
/// topics of a member, the `log` handler's event) is written as that value rather than
/// as a string holding it, so log pipelines can index what is inside.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        event.record(&mut JsonFieldsOf(&mut line));
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut fields = Map::new();
                    fields.insert("name".into(), Value::String(span.name().to_owned()));
                    // The span's fields as the JSON field formatter stored them.
                    if let Some(stored) = span.extensions().get::<FormattedFields<N>>() {
                        if let Ok(Value::Object(map)) = serde_json::from_str(&stored.fields) {
                            fields.extend(map);
                        }
                    }
                    Value::Object(fields)
                })
                .collect();
            if let Some(current) = spans.last() {
                line.insert("span".into(), current.clone());
            }
            line.insert("spans".into(), Value::Array(spans));
        }
        // Time and level lead, as in tracing's own format; the rest follow by name.
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        write!(
            writer,
            "{{\"timestamp\":\"{timestamp}\",\"level\":\"{}\"",
            event.metadata().level()
        )?;
        for (name, value) in &line {
            let name = serde_json::to_string(name).map_err(|_| fmt::Error)?;
            let value = serde_json::to_string(value).map_err(|_| fmt::Error)?;
            write!(writer, ",{name}:{value}")?;
        }
        writeln!(writer, "}}")
    }
}

/// Records an event's fields into a JSON object: numbers and booleans as such, text as
/// a string unless it is a JSON array or object.
struct JsonFieldsOf<'a>(&'a mut Map<String, Value>);

impl JsonFieldsOf<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        // `log` crate records carry their origin as `log.*` fields: tracing's own
        // formats leave them out too.
        if !field.name().starts_with("log.") {
            self.0.insert(field.name().to_owned(), value);
        }
    }

    fn put_text(&mut self, field: &Field, text: String) {
        let value = if field.name() != "message" && text.starts_with(['[', '{']) {
            match serde_json::from_str::<Value>(&text) {
                Ok(value @ (Value::Array(_) | Value::Object(_))) => value,
                _ => Value::String(text),
            }
        } else {
            Value::String(text)
        };
        self.put(field, value);
    }
}

impl Visit for JsonFieldsOf<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, serde_json::json!(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put_text(field, value.to_owned());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put_text(field, format!("{value:?}"));
    }
}

/// A list of partitions as a log field: a JSON array of `{"topic", "partition"}`
/// objects, which JSON logs carry as an array and pretty logs show as written.
pub fn partition_list<'a>(partitions: impl IntoIterator<Item = (&'a str, i32)>) -> String {
    let list: Vec<Value> = partitions
        .into_iter()
        .map(|(topic, partition)| serde_json::json!({"topic": topic, "partition": partition}))
        .collect();
    Value::Array(list).to_string()
}

/// Logs of a one-shot command (`eventd produce`): warnings and errors on stderr, so
/// stdout carries only the command's results.
pub fn init_for_command() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let result = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
    if let Err(error) = result {
        eprintln!("eventd: logging already initialised: {error}");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::{check_level, partition_list, JsonLines};

    /// What `JsonLines` writes for the events `log` emits, one JSON value per line.
    pub(crate) fn json_lines(log: impl FnOnce()) -> Vec<serde_json::Value> {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("log buffer").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .event_format(JsonLines)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text =
            String::from_utf8(captured.0.lock().expect("log buffer").clone()).expect("UTF-8 log");
        text.lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn json_lines_carry_lists_and_objects_as_json_values() {
        let lines = json_lines(|| {
            let span = tracing::info_span!("member", consumer = "main");
            let _entered = span.enter();
            tracing::info!(
                partitions = %partition_list([("like", 0), ("browse", 3)]),
                topics = ?vec!["like", "browse"],
                event = r#"{"item_id":"i-1","dwell_ms":12}"#,
                offset = 7_i64,
                stored = Some(5_i64),
                done = true,
                error = "[not JSON",
                "partitions assigned"
            );
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["message"], "partitions assigned");
        assert_eq!(line["level"], "INFO");
        assert_eq!(
            line["partitions"],
            serde_json::json!([{"topic": "like", "partition": 0}, {"topic": "browse", "partition": 3}])
        );
        assert_eq!(line["topics"], serde_json::json!(["like", "browse"]));
        assert_eq!(line["event"]["dwell_ms"], 12);
        assert_eq!(line["offset"], 7);
        assert_eq!(line["stored"], 5);
        assert_eq!(line["done"], true);
        assert_eq!(line["error"], "[not JSON");
        assert_eq!(line["span"]["name"], "member");
        assert_eq!(line["span"]["consumer"], "main");
        assert!(
            line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert_eq!(
            line.as_object().map(|fields| fields.len()),
            Some(12),
            "{line}"
        );
    }

    #[test]
    fn a_filter_must_name_a_level_or_a_target_eventd_logs_under() {
        for accepted in [
            "info",
            "WARN",
            "eventd=debug,info",
            "eventd",
            "eventd::kafka",
            "rdkafka=warn,info",
            "librdkafka",
            "ractor=debug",
            "hyper=debug",
            "info,[consumer{topic=like}]=trace",
            "off",
        ] {
            assert_eq!(check_level(accepted), Ok(()), "{accepted}");
        }
        for refused in [
            "verbose-please",
            "info,verbose-please",
            "eventdd",
            "[consumer]",
        ] {
            let reason = check_level(refused).expect_err(refused);
            assert!(reason.contains("names no level"), "{refused}: {reason}");
        }
        assert!(check_level("eventd=loud").is_err());
    }
}
