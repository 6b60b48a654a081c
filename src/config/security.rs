//! `[kafka.security]`: how every client authenticates to the brokers and encrypts its
//! connections. Secret values may be written as they are, or as `env:NAME` or
//! `file:PATH` (read at each load, so a reload picks up a rotated file). A secret is
//! never shown: not in logs, errors, `check-config` output or a panic.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::validate::ConfigIssue;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    pub protocol: Option<SecurityProtocol>,
    pub sasl_mechanism: Option<SaslMechanism>,
    /// Not a secret (it is logged), but may come from `env:` or `file:` too.
    pub username: Option<Secret>,
    pub password: Option<Secret>,
    /// PEM files.
    pub ca: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub key_password: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn property(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn property(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A value written as itself, `env:NAME` or `file:PATH`; `value` is filled in when the
/// config is loaded.
#[derive(Clone, PartialEq)]
pub struct Secret {
    written: String,
    value: Option<String>,
}

impl Secret {
    pub fn value(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }

    /// Where the value comes from, as safe to show: `env:NAME`, `file:PATH`, or that
    /// it is written in the config.
    fn source(&self) -> &str {
        if self.written.starts_with("env:") || self.written.starts_with("file:") {
            &self.written
        } else {
            "(written in the config)"
        }
    }

    /// Reads the value from where it is written.
    fn resolve(&mut self) -> Result<(), String> {
        let value = if let Some(name) = self.written.strip_prefix("env:") {
            std::env::var(name).map_err(|_| format!("environment variable {name:?} is not set"))?
        } else if let Some(path) = self.written.strip_prefix("file:") {
            std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read {path:?}: {error}"))?
                .trim_end_matches(['\n', '\r'])
                .to_owned()
        } else {
            self.written.clone()
        };
        self.value = Some(value);
        Ok(())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.source())
    }
}

/// Serialized as where it comes from (so a reload sees a changed source), never the
/// value.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.source())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Secret {
            written: String::deserialize(deserializer)?,
            value: None,
        })
    }
}

/// The librdkafka properties `[kafka.security]` sets, each with its key there.
pub const PROPERTIES: &[(&str, &str)] = &[
    ("security.protocol", "kafka.security.protocol"),
    ("sasl.mechanism", "kafka.security.sasl_mechanism"),
    ("sasl.mechanisms", "kafka.security.sasl_mechanism"),
    ("sasl.username", "kafka.security.username"),
    ("sasl.password", "kafka.security.password"),
    ("ssl.ca.location", "kafka.security.ca"),
    ("ssl.certificate.location", "kafka.security.certificate"),
    ("ssl.key.location", "kafka.security.key"),
    ("ssl.key.password", "kafka.security.key_password"),
];

impl SecurityConfig {
    /// The SASL username and password, when a `sasl_*` protocol uses them.
    pub fn login(&self) -> Option<crate::kafka::login::Login> {
        let sasl = self.protocol.is_some_and(SecurityProtocol::uses_sasl);
        match (sasl, &self.username, &self.password) {
            (true, Some(username), Some(password)) => Some(crate::kafka::login::Login {
                username: username.value().to_owned(),
                password: password.value().to_owned(),
            }),
            _ => None,
        }
    }

    /// Reads every `env:` and `file:` value; an issue per one that cannot be read.
    pub fn resolve(&mut self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        for (name, secret) in [
            ("username", &mut self.username),
            ("password", &mut self.password),
            ("key_password", &mut self.key_password),
        ] {
            if let Some(secret) = secret {
                if let Err(message) = secret.resolve() {
                    issues.push(ConfigIssue {
                        key: format!("kafka.security.{name}"),
                        message,
                    });
                }
            }
        }
        issues
    }

    pub fn validate(&self) -> Vec<ConfigIssue> {
        let issue = |key: &str, message: &str| ConfigIssue {
            key: format!("kafka.security.{key}"),
            message: message.to_owned(),
        };
        let mut issues = Vec::new();
        let protocol = self.protocol.unwrap_or(SecurityProtocol::Plaintext);
        if protocol.uses_sasl() {
            for (key, missing) in [
                ("sasl_mechanism", self.sasl_mechanism.is_none()),
                ("username", self.username.is_none()),
                ("password", self.password.is_none()),
            ] {
                if missing {
                    issues.push(issue(key, "is required with a sasl_* protocol"));
                }
            }
        } else {
            for (key, set) in [
                ("sasl_mechanism", self.sasl_mechanism.is_some()),
                ("username", self.username.is_some()),
                ("password", self.password.is_some()),
            ] {
                if set {
                    issues.push(issue(
                        key,
                        "needs protocol = \"sasl_plaintext\" or \"sasl_ssl\"",
                    ));
                }
            }
        }
        let tls = matches!(protocol, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl);
        for (key, set) in [
            ("ca", self.ca.is_some()),
            ("certificate", self.certificate.is_some()),
            ("key", self.key.is_some()),
            ("key_password", self.key_password.is_some()),
        ] {
            if set && !tls {
                issues.push(issue(key, "needs protocol = \"ssl\" or \"sasl_ssl\""));
            }
        }
        if self.certificate.is_some() != self.key.is_some() {
            issues.push(issue(
                "key",
                "certificate and key go together (a client certificate)",
            ));
        }
        for (key, path) in [
            ("ca", &self.ca),
            ("certificate", &self.certificate),
            ("key", &self.key),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    issues.push(issue(
                        key,
                        &format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        issues
    }

    /// `(librdkafka property, value)` pairs to set on every client.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let mut set = Vec::new();
        if let Some(protocol) = self.protocol {
            set.push(("security.protocol", protocol.property().to_owned()));
        }
        if let Some(mechanism) = self.sasl_mechanism {
            set.push(("sasl.mechanism", mechanism.property().to_owned()));
        }
        let secrets = [
            ("sasl.username", &self.username),
            ("sasl.password", &self.password),
            ("ssl.key.password", &self.key_password),
        ];
        for (property, secret) in secrets {
            if let Some(secret) = secret {
                set.push((property, secret.value().to_owned()));
            }
        }
        let files = [
            ("ssl.ca.location", &self.ca),
            ("ssl.certificate.location", &self.certificate),
            ("ssl.key.location", &self.key),
        ];
        for (property, path) in files {
            if let Some(path) = path {
                set.push((property, path.display().to_string()));
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_shows_where_it_comes_from_never_its_value() {
        std::env::set_var("EVENTD_TEST_SECRET_VALUE", "hunter2");
        let mut from_env = Secret {
            written: "env:EVENTD_TEST_SECRET_VALUE".to_owned(),
            value: None,
        };
        from_env.resolve().expect("set");
        assert_eq!(from_env.value(), "hunter2");
        let mut literal = Secret {
            written: "hunter2".to_owned(),
            value: None,
        };
        literal.resolve().expect("literal");
        for shown in [
            format!("{from_env:?} {literal:?}"),
            serde_json::to_string(&(&from_env, &literal)).expect("json"),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        std::fs::write(&path, "from-file\n").expect("write");
        let mut from_file = Secret {
            written: format!("file:{}", path.display()),
            value: None,
        };
        from_file.resolve().expect("file");
        assert_eq!(from_file.value(), "from-file");
        let mut missing = Secret {
            written: "env:EVENTD_TEST_SECRET_UNSET".to_owned(),
            value: None,
        };
        assert!(missing
            .resolve()
            .unwrap_err()
            .contains("EVENTD_TEST_SECRET_UNSET"));
    }
}
