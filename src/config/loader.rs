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
    #[error("{source_name}: {key}: {message}")]
    Parse {
        source_name: String,
        key: String,
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
        let mut config: Config =
            serde_path_to_error::deserialize(layered).map_err(|err| ConfigError::Parse {
                source_name: source_name.clone(),
                key: err.path().to_string(),
                message: err.inner().to_string(),
            })?;
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
