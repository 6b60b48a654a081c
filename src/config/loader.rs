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
        Self::load_checked(path, Config::validate, None)
    }

    /// As `load`, checking only what `eventd produce` uses, so a config without
    /// consumers or handlers serves it.
    pub fn load_for_producer(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_checked(path, Config::validate_producer_side, None)
    }

    /// `vars` stands in for the `EVENTD__*` variables of the process (tests).
    fn load_checked(
        path: Option<&Path>,
        validate: fn(&Config) -> Result<(), Vec<ConfigIssue>>,
        vars: Option<config::Map<String, String>>,
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
        builder = builder.add_source(environment(vars));
        let layered = match builder.build() {
            Ok(layered) => layered,
            Err(config::ConfigError::FileParse { cause, .. }) => {
                return Err(ConfigError::Invalid {
                    issues: vec![syntax_issue(path, &cause.to_string())],
                    source_name,
                })
            }
            Err(other) => {
                return Err(ConfigError::Read {
                    source_name,
                    message: other.to_string(),
                })
            }
        };
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
        let mut unreadable = config.kafka.security.resolve();
        for (i, handler) in config.handlers.iter_mut().enumerate() {
            unreadable.extend(handler.resolve_headers(&|field| format!("handlers[{i}].{field}")));
        }
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

/// The `EVENTD__SECTION__KEY` variables, each taken as the string it is. A key that
/// wants a number or a boolean converts the string when it is read; a string key keeps
/// what was written, where parsing every variable first would turn a password `0123`
/// into `123` and `True` into `true`. `vars` stands in for the process environment.
fn environment(vars: Option<config::Map<String, String>>) -> config::Environment {
    config::Environment::with_prefix("EVENTD")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(false)
        .source(vars)
}

/// Keys whose values are secrets, as the last part of their path; a parse error on a
/// line holding one of them shows nothing of that line.
fn holds_secret(line: &str) -> bool {
    const SECURITY_SECRETS: &[&str] = &["password", "key_password", "username"];
    SECURITY_SECRETS
        .iter()
        .chain(super::options::SECRET)
        .any(|name| line.contains(name))
}

/// A file the parser could not read, as an issue naming the line, column and key,
/// never the text of the line: the parser's own message quotes the whole line, and a
/// secret on it would reach `check-config`'s output and a reload's log.
fn syntax_issue(path: Option<&Path>, message: &str) -> ConfigIssue {
    let text = path
        .and_then(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_default();
    let is_toml = path.is_some_and(|path| {
        path.extension()
            .is_none_or(|extension| extension.eq_ignore_ascii_case("toml"))
    });
    syntax_issue_in(&text, is_toml, message)
}

/// As `syntax_issue`, for a file whose text is `text`.
fn syntax_issue_in(text: &str, is_toml: bool, message: &str) -> ConfigIssue {
    let location = line_and_column(message);
    let line_text = location
        .and_then(|(line, _)| text.lines().nth(line.checked_sub(1)?))
        .unwrap_or_default();
    let key = location.and_then(|(line, column)| key_at(text, line, column, is_toml));
    let mut reason = parser_reason(message);
    if holds_secret(line_text) {
        let written = line_text
            .split_once(['=', ':'])
            .map(|(_, value)| value.trim())
            .unwrap_or(line_text.trim());
        let unquoted = written.trim_matches(['"', '\'', ' ']);
        if [written, unquoted]
            .iter()
            .any(|value| !value.is_empty() && reason.contains(value))
        {
            reason = "(the parser's reason quotes a secret: not shown)".to_owned();
        }
    }
    let at = match location {
        Some((line, column)) => format!("line {line}, column {column}"),
        None => "somewhere in the file".to_owned(),
    };
    match key {
        Some(key) => ConfigIssue {
            key,
            message: format!("cannot parse ({at}): {reason}"),
        },
        None => ConfigIssue {
            key: at,
            message: format!("cannot parse: {reason}"),
        },
    }
}

/// The line and column a parser names (TOML: `at line 8, column 20`; JSON: `at line 8
/// column 20`; YAML: `line 8 column 20`).
fn line_and_column(message: &str) -> Option<(usize, usize)> {
    let words: Vec<&str> = message
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|word| !word.is_empty())
        .collect();
    let number_after = |label: &str| {
        words
            .windows(2)
            .find(|pair| pair[0] == label)
            .and_then(|pair| pair[1].parse::<usize>().ok())
    };
    Some((number_after("line")?, number_after("column")?))
}

/// What the parser says is wrong, without its header and the source lines it quotes
/// (`8 | password = "..."` and the caret under it).
fn parser_reason(message: &str) -> String {
    let quoted_source = |line: &str| {
        let trimmed = line.trim_start();
        trimmed.starts_with('|')
            || trimmed
                .split_once('|')
                .is_some_and(|(number, _)| number.trim().parse::<usize>().is_ok())
    };
    let reason: Vec<&str> = message
        .lines()
        .filter(|line| !line.starts_with("TOML parse error"))
        .filter(|line| !quoted_source(line))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    if reason.is_empty() {
        "not valid syntax".to_owned()
    } else {
        reason.join("; ")
    }
}

/// The key written at `line` and `column` (1-based) of `text`: for TOML the key of the
/// line with the tables above it (`kafka.security.password`, `consumers[1].topics`);
/// for YAML and JSON the nearest key before the column, as written.
fn key_at(text: &str, line: usize, column: usize, is_toml: bool) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let written = *lines.get(line.checked_sub(1)?)?;
    if !is_toml {
        let before: String = written.chars().take(column.saturating_sub(1)).collect();
        let (name, _) = before.rsplit_once(':')?;
        let name = name.trim_end().trim_end_matches('"');
        // After the separator, counted in its own bytes: a non-ASCII space is wider.
        let start = name
            .char_indices()
            .rfind(|(_, c)| *c == '"' || *c == '{' || *c == ',' || c.is_whitespace())
            .map_or(0, |(at, c)| at + c.len_utf8());
        let name = &name[start..];
        return (!name.is_empty()).then(|| name.to_owned());
    }
    let name = written
        .trim()
        .split_once('=')
        .map(|(name, _)| name.trim())
        .filter(|name| !name.is_empty() && !name.starts_with('['))?;
    let mut table = String::new();
    let mut array_lengths: std::collections::HashMap<String, usize> = Default::default();
    for header in lines[..line - 1].iter().map(|l| l.trim()) {
        if let Some(array) = header
            .strip_prefix("[[")
            .and_then(|rest| rest.split_once("]]"))
            .map(|(name, _)| name.trim().to_owned())
        {
            let length = array_lengths.entry(array.clone()).or_default();
            table = format!("{array}[{length}]");
            *length += 1;
        } else if let Some(name) = header
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(']'))
            .map(|(name, _)| name.trim())
        {
            // `[handlers.retry]` after `[[handlers]]` belongs to its last entry.
            table = match name.split_once('.') {
                Some((array, rest)) if array_lengths.contains_key(array) => {
                    format!("{array}[{}].{rest}", array_lengths[array] - 1)
                }
                _ => name.to_owned(),
            };
        }
    }
    Some(if table.is_empty() {
        name.to_owned()
    } else {
        format!("{table}.{name}")
    })
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
        // Read through the config crate again, which converts a string to the number or
        // boolean a key wants as the first read did (environment values are strings).
        let Ok(relayered) = config::Config::try_from(&values) else {
            break;
        };
        let Err(error) = serde_path_to_error::deserialize::<_, Config>(relayered) else {
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
        if key.starts_with("handlers[") && key.contains("].filter.") {
            return ConfigIssue {
                message: format!(
                    "{field:?} is not a filter operator; the operators are {}",
                    super::filter::OPERATORS.join(", ")
                ),
                key,
            };
        }
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

    /// Loads `body` with `vars` as the only `EVENTD__*` variables.
    fn load_with_environment(body: &str, vars: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("eventd.toml");
        std::fs::write(&path, body).expect("write");
        let vars = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Config::load_checked(Some(&path), Config::validate, Some(vars)).map_err(|error| {
            error
                .lines()
                .into_iter()
                .map(|line| line.replacen(&format!("{}: ", path.display()), "", 1))
                .collect()
        })
    }

    #[test]
    fn environment_values_of_string_keys_are_taken_as_written() {
        let body = format!(
            "[kafka.security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\n\
             username = \"u\"\npassword = \"p\"\n{CONSUMER}"
        );
        let config = load_with_environment(
            &body,
            &[
                ("EVENTD__KAFKA__SECURITY__PASSWORD", "0123"),
                ("EVENTD__KAFKA__SECURITY__USERNAME", "True"),
                ("EVENTD__KAFKA__CLIENT_ID", "007"),
                // Keys that want numbers and booleans still read them from strings.
                ("EVENTD__EMBEDDED__PARTITIONS", "8"),
                ("EVENTD__DEMO__ENABLED", "true"),
                ("EVENTD__PRODUCER__ACKS", "1"),
                ("EVENTD__PRODUCER__IDEMPOTENCE", "False"),
                ("EVENTD__PRODUCER__MAX_BUFFER", "1048576"),
            ],
        )
        .unwrap_or_else(|lines| panic!("{lines:#?}"));
        let security = &config.kafka.security;
        assert_eq!(security.password.as_ref().map(|p| p.value()), Some("0123"));
        assert_eq!(security.username.as_ref().map(|u| u.value()), Some("True"));
        assert_eq!(config.kafka.client_id, "007");
        assert_eq!(config.embedded.partitions, 8);
        assert!(config.demo.enabled);
        assert_eq!(config.producer.acks, super::super::Acks::Leader);
        assert!(!config.producer.idempotence);
        assert_eq!(config.producer.max_buffer.bytes(), 1_048_576);
    }

    #[test]
    fn a_number_from_the_environment_is_no_parse_error_beside_real_ones() {
        let lines = load_with_environment(
            &format!("[producer]\nlinger = 5\nmax_in_flight = \"many\"\n{CONSUMER}"),
            &[("EVENTD__PRODUCER__RETRIES", "5")],
        )
        .err()
        .unwrap_or_default();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines.iter().all(|l| !l.contains("retries")), "{lines:#?}");
    }

    #[test]
    fn a_syntax_error_names_line_column_and_key_never_the_line() {
        let lines =
            load("[kafka.security]\nprotocol = \"sasl_plaintext\"\npassword = \"s3cret\\q\"\n");
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("kafka.security.password: cannot parse (line 3, column "),
            "{lines:#?}"
        );
        assert!(
            lines[0].contains("escape"),
            "the parser's reason is kept: {lines:#?}"
        );
        assert!(!lines[0].contains("s3cret"), "{lines:#?}");

        let lines = load(&format!(
            "{CONSUMER}[[consumers]]\nname = \"b\"\ntopics = [\"like\" \"x\"]\n"
        ));
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("consumers[1].topics: cannot parse (line 6, column "),
            "{lines:#?}"
        );
        assert!(!lines[0].contains("\"x\""), "{lines:#?}");
    }

    #[test]
    fn a_reason_that_quotes_a_secret_line_is_withheld() {
        let issue = syntax_issue_in(
            "password = \"hunter2\"\n",
            true,
            "TOML parse error at line 1, column 3\n  |\n1 | x\n  |   ^\nunexpected \"hunter2\"",
        );
        assert_eq!(issue.key, "password");
        assert!(!issue.message.contains("hunter2"), "{issue}");
        assert_eq!(
            parser_reason("expected value at line 1 column 9"),
            "expected value at line 1 column 9"
        );
        assert!(holds_secret("\"sasl.password\" = \"x\""));
        assert!(holds_secret("security = { password = \"x\" }"));
        assert!(!holds_secret("client_id = \"x\""));
    }

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
