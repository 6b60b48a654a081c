//! Reading a config: built-in defaults, then the `--config` file, then `EVENTD__*`
//! environment variables, then `${NAME}` placeholders, secrets and validation. Every
//! error names its source (the file, or the built-in defaults) and the key at fault, so
//! an operator can fix a config without reading the code.

use std::path::{Path, PathBuf};

use super::placeholders::placeholder_value;
use super::{Config, ConfigIssue};

/// Exit code for a configuration the daemon refuses (sysexits' EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: cannot read: {message}")]
    Read {
        source_name: String,
        message: String,
    },
    #[error("{}", format_issues(.source_name, .issues))]
    Invalid {
        source_name: String,
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// One line per problem, each naming the file and the key.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid {
                source_name,
                issues,
            } => issues
                .iter()
                .map(|issue| format!("{source_name}: {issue}"))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

fn format_issues(source_name: &str, issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|issue| format!("{source_name}: {issue}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Loads defaults, then `path`, then `EVENTD__*` variables, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_checked(path, Config::validate)
    }

    /// As `load`, checking only what `eventd produce` uses, so a config without
    /// consumers or handlers serves it.
    pub fn load_for_producer(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_checked(path, Config::validate_producer_side)
    }

    fn load_checked(
        path: Option<&Path>,
        validate: fn(&Config) -> Result<(), Vec<ConfigIssue>>,
    ) -> Result<Config, ConfigError> {
        let source_name = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".to_owned());
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Read {
                    source_name,
                    message: "no such file".to_owned(),
                });
            }
            builder = builder.add_source(config::File::from(PathBuf::from(path)));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("EVENTD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let layered = builder.build().map_err(|err| ConfigError::Read {
            source_name: source_name.clone(),
            message: err.to_string(),
        })?;
        let mut config: Config = match serde_path_to_error::deserialize(layered.clone()) {
            Ok(config) => config,
            Err(first) => {
                return Err(ConfigError::Invalid {
                    source_name,
                    issues: parse_issues(&layered, &first),
                })
            }
        };
        config
            .expand_placeholders(placeholder_value)
            .map_err(|issues| ConfigError::Invalid {
                source_name: source_name.clone(),
                issues,
            })?;
        let unreadable = config.kafka.security.resolve();
        if !unreadable.is_empty() {
            return Err(ConfigError::Invalid {
                source_name,
                issues: unreadable,
            });
        }
        validate(&config).map_err(|issues| ConfigError::Invalid {
            source_name,
            issues,
        })?;
        Ok(config)
    }
}

/// Parse errors reported at most per load: enough for every mistake of a hand-written
/// file, bounded for a generated one.
const MAX_PARSE_ISSUES: usize = 20;

/// Every key the file gets wrong at the parse level, not only the first: the first
/// error as the layered config reports it, then the others found by reading the same
/// values again with each offending key left out in turn.
fn parse_issues(
    layered: &config::Config,
    first: &serde_path_to_error::Error<config::ConfigError>,
) -> Vec<ConfigIssue> {
    let Ok(mut values) = layered.clone().try_deserialize::<serde_json::Value>() else {
        return vec![parse_issue(
            first.path().to_string(),
            &first.inner().to_string(),
            None,
        )];
    };
    let mut issues = vec![parse_issue(
        first.path().to_string(),
        &first.inner().to_string(),
        Some(&values),
    )];
    let mut left_out = vec![first.path().to_string()];
    if !remove_key(&mut values, &left_out[0]) {
        return issues;
    }
    while issues.len() < MAX_PARSE_ISSUES {
        let Err(error) = serde_path_to_error::deserialize::<_, Config>(&values) else {
            break;
        };
        let key = error.path().to_string();
        if left_out.contains(&key) {
            break;
        }
        issues.push(parse_issue(
            key.clone(),
            &error.inner().to_string(),
            Some(&values),
        ));
        if !remove_key(&mut values, &key) {
            break;
        }
        left_out.push(key);
    }
    issues
}

/// One parse error as an operator reads it: the key as written, what was expected,
/// with an example where the form is not obvious.
fn parse_issue(key: String, message: &str, values: Option<&serde_json::Value>) -> ConfigIssue {
    // The config crate repeats the key in its own spelling; the issue names it already.
    let message = message
        .split_once(" for key `")
        .map_or(message, |(message, _)| message);
    let message = if message.contains("expected a duration") {
        let got = message
            .split(['"', '`'])
            .nth(1)
            .map(|value| format!(" (got {value})"))
            .unwrap_or_default();
        format!("expects a duration as a quoted string with its unit, such as \"10s\", \"500ms\" or \"2m\"{got}")
    } else if let Some(field) = unknown_field(message) {
        match handler_kind_at(&key, values) {
            Some(kind) => format!(
                "{field:?} is not a key of a handler of kind = \"{kind}\"; its keys are {}",
                super::validate::handler_keys(&kind).join(", ")
            ),
            None => message.replacen("unknown field", "unknown key", 1),
        }
    } else {
        message.to_owned()
    };
    ConfigIssue { key, message }
}

/// The field an "unknown field `x`, expected ..." message names.
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field)
}

/// The `kind` of the handler that `key` (`handlers[N].something`) belongs to.
fn handler_kind_at(key: &str, values: Option<&serde_json::Value>) -> Option<String> {
    let index: usize = key
        .strip_prefix("handlers[")?
        .split_once(']')?
        .0
        .parse()
        .ok()?;
    values?
        .get("handlers")?
        .get(index)?
        .get("kind")?
        .as_str()
        .map(str::to_owned)
}

/// Leaves `key` (`a.b[2].c`) out of `values`; false when there is nothing there to
/// leave out (a missing key, or the whole document).
fn remove_key(values: &mut serde_json::Value, key: &str) -> bool {
    let mut segments: Vec<String> = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        if let Some((name, _)) = rest.split_once('[') {
            if !name.is_empty() {
                segments.push(name.to_owned());
            }
            rest = &rest[name.len()..];
            for index in rest.split('[').filter(|s| !s.is_empty()) {
                segments.push(format!("[{}", index));
            }
        } else if !rest.is_empty() {
            segments.push(rest.to_owned());
        }
    }
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = values;
    for segment in parents {
        let next = match segment.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            Some(index) => index.parse::<usize>().ok().and_then(|i| at.get_mut(i)),
            None => at.get_mut(segment.as_str()),
        };
        let Some(next) = next else {
            return false;
        };
        at = next;
    }
    match last.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        Some(_) => false,
        None => at
            .as_object_mut()
            .is_some_and(|object| object.remove(last.as_str()).is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(body: &str) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("eventd.toml");
        std::fs::write(&path, body).expect("write");
        match Config::load(Some(&path)) {
            Ok(_) => Vec::new(),
            Err(error) => error
                .lines()
                .into_iter()
                .map(|line| line.replacen(&format!("{}: ", path.display()), "", 1))
                .collect(),
        }
    }

    const CONSUMER: &str = "[[consumers]]\nname = \"m\"\ntopics = [\"like\"]\n";

    #[test]
    fn every_parse_error_of_a_file_is_reported_at_once_with_its_key_as_written() {
        let lines = load(&format!(
            "[producer]\nlinger = 5\nmax_in_flight = \"many\"\n{CONSUMER}\
             [[handlers]]\nname = \"h\"\nkind = \"count\"\nconsumer = \"m\"\n\
             group_by = \"item_id\"\noutput = \"o\"\nwindow = 10\n"
        ));
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("handlers[0].window: expects a duration")
                    && l.contains("\"10s\"")
                    && l.contains("(got 10)")),
            "{lines:#?}"
        );
        assert!(lines
            .iter()
            .any(|l| l.starts_with("producer.linger: expects a duration")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("producer.max_in_flight:")));
        assert!(
            lines.iter().all(|l| !l.contains("for key")),
            "the key is named once, as written: {lines:#?}"
        );
    }

    #[test]
    fn an_unknown_handler_key_lists_only_the_keys_of_its_kind() {
        let lines = load(&format!(
            "{CONSUMER}[[handlers]]\nname = \"h\"\nkind = \"log\"\nconsumer = \"m\"\nbogus = 1\n"
        ));
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with(
                "handlers[0].bogus: \"bogus\" is not a key of a handler of kind = \"log\""
            ),
            "{lines:#?}"
        );
        assert!(lines[0].contains("sample"), "{lines:#?}");
        for fault_key in ["action", "every", "offsets", "once"] {
            assert!(!lines[0].contains(fault_key), "{lines:#?}");
        }
    }
}
