//! Log output: JSON for machines, pretty for terminals, filtered by `log.level` unless
//! `RUST_LOG` is set. librdkafka's own log lines arrive through the `log` crate bridge.

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;
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
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if let Err(error) = result {
        eprintln!("eventd: logging already initialised: {error}");
    }
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
mod tests {
    use super::check_level;

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
