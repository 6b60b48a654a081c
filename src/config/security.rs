//! `[kafka.security]`: how every client authenticates to the brokers and encrypts its
//! connections. Secret values may be written as they are, or as `env:NAME` or
//! `file:PATH` (read at each load, so a reload picks up a rotated file). A secret is
//! never shown: not in logs, errors, `check-config` output or a panic.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::validate::ConfigIssue;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// Whether the brokers' TLS certificates and host names are checked. Off accepts
    /// any broker that answers, an attacker in the middle included: for a test
    /// cluster with a self-signed certificate, never for production. Its own key (and
    /// not the raw librdkafka properties) so that it is warned about at every start
    /// and shown in /metrics.
    pub verify_certificates: bool,
}

impl SecurityConfig {
    /// Every file these settings read: `file:` secrets and the TLS files.
    pub fn files(&self) -> Vec<&Path> {
        let secrets = [&self.username, &self.password, &self.key_password]
            .into_iter()
            .flatten()
            .filter_map(Secret::file);
        let tls = [&self.ca, &self.certificate, &self.key]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path);
        secrets.chain(tls).collect()
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            protocol: None,
            sasl_mechanism: None,
            username: None,
            password: None,
            ca: None,
            certificate: None,
            key: None,
            key_password: None,
            // librdkafka's default: certificates and host names are verified.
            verify_certificates: true,
        }
    }
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
    /// The file the value is read from, when it is written `file:PATH`.
    pub fn file(&self) -> Option<&Path> {
        self.written.strip_prefix("file:").map(Path::new)
    }

    pub fn value(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }

    /// Where the value comes from, as safe to show: `env:NAME`, `file:PATH`, or that
    /// it is written in the config.
    pub fn source(&self) -> &str {
        if self.written.starts_with("env:") || self.written.starts_with("file:") {
            &self.written
        } else {
            "(written in the config)"
        }
    }

    /// Reads the value from where it is written.
    pub(crate) fn resolve(&mut self) -> Result<(), String> {
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
    (
        "enable.ssl.certificate.verification",
        "kafka.security.verify_certificates (false is warned about at every start)",
    ),
    (
        "ssl.endpoint.identification.algorithm",
        "kafka.security.verify_certificates (false is warned about at every start)",
    ),
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
        // librdkafka takes C strings: a NUL byte (a binary file mounted as a secret)
        // would otherwise surface as an unnamed FFI error at start, or as a credential
        // rotation every client refuses at a reload.
        for (key, secret) in [
            ("username", &self.username),
            ("password", &self.password),
            ("key_password", &self.key_password),
        ] {
            if secret.as_ref().is_some_and(|s| s.value().contains('\0')) {
                issues.push(issue(
                    key,
                    "contains a NUL byte, which librdkafka cannot take",
                ));
            }
        }
        let tls = matches!(protocol, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl);
        for (key, set) in [
            ("ca", self.ca.is_some()),
            ("certificate", self.certificate.is_some()),
            ("key", self.key.is_some()),
            ("key_password", self.key_password.is_some()),
            ("verify_certificates", !self.verify_certificates),
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
                if let Err(reason) = read_a_byte(path) {
                    issues.push(issue(
                        key,
                        &format!("{} is not a readable file ({reason})", path.display()),
                    ));
                }
            }
        }
        issues
    }

    /// Logs a warning for each setting that weakens the connection to the brokers:
    /// certificates not verified, secret files others can read. Called at every start
    /// of the daemon and of a command, and at every reload (files are read again).
    pub fn warn_about_weaknesses(&self) {
        if !self.verify_certificates {
            tracing::warn!(
                key = "kafka.security.verify_certificates",
                "TLS certificates and host names of the brokers are NOT verified: any server that answers, an attacker in the middle included, is trusted"
            );
        }
        for exposed in self.exposed_secret_files() {
            tracing::warn!(
                key = %exposed.key,
                file = %exposed.path.display(),
                mode = %format!("{:04o}", exposed.mode),
                "secret file is readable by group or others"
            );
        }
    }

    /// The files holding secrets (`file:` values and the client's private key) that
    /// the group or others may read, each with its key and mode. Reported, not
    /// refused: Kubernetes mounts a Secret 0644 unless its `defaultMode` says otherwise,
    /// and refusing would break every such deployment.
    pub fn exposed_secret_files(&self) -> Vec<ExposedFile> {
        let mut exposed = Vec::new();
        let mut check = |key: &str, path: &std::path::Path| {
            if let Some(mode) = mode_beyond_owner(path) {
                exposed.push(ExposedFile {
                    key: format!("kafka.security.{key}"),
                    path: path.to_path_buf(),
                    mode,
                });
            }
        };
        for (key, secret) in [
            ("username", &self.username),
            ("password", &self.password),
            ("key_password", &self.key_password),
        ] {
            if let Some(path) = secret
                .as_ref()
                .and_then(|s| s.written.strip_prefix("file:"))
            {
                check(key, std::path::Path::new(path));
            }
        }
        if let Some(path) = &self.key {
            check("key", path);
        }
        exposed
    }

    /// `(librdkafka property, value)` pairs to set on every client.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let mut set = Vec::new();
        if !self.verify_certificates {
            set.push(("enable.ssl.certificate.verification", "false".to_owned()));
            set.push(("ssl.endpoint.identification.algorithm", "none".to_owned()));
        }
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

/// A secret file that the group or others may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposedFile {
    pub key: String,
    pub path: PathBuf,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
}

impl fmt::Display for ExposedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} is readable by group or others (mode {:04o}); make it readable by eventd's user only (chmod 600, or a Kubernetes secret volume's defaultMode: 0400)",
            self.key,
            self.path.display(),
            self.mode
        )
    }
}

/// The permission bits of `path` (followed through symlinks, as Kubernetes mounts
/// secrets) when they let the group or others read it.
fn mode_beyond_owner(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}

/// Opens `path` and reads from it, as librdkafka will: a file that exists but cannot
/// be read (its permissions, a directory, a device that fails) is caught here.
fn read_a_byte(path: &std::path::Path) -> Result<(), String> {
    use std::io::Read;
    if !path.is_file() {
        return Err(if path.exists() {
            "not a regular file".to_owned()
        } else {
            "no such file".to_owned()
        });
    }
    std::fs::File::open(path)
        .and_then(|mut file| file.read(&mut [0u8; 1]))
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_of_the_settings_are_the_file_secrets_and_the_tls_files() {
        let secret = |written: &str| {
            Some(Secret {
                written: written.to_owned(),
                value: None,
            })
        };
        let security = SecurityConfig {
            username: secret("svc-eventd"),
            password: secret("file:/run/secrets/password"),
            key_password: secret("env:KEY_PASSWORD"),
            ca: Some(PathBuf::from("/etc/eventd/ca.pem")),
            key: Some(PathBuf::from("/etc/eventd/client.key")),
            ..SecurityConfig::default()
        };
        assert_eq!(
            security.files(),
            [
                Path::new("/run/secrets/password"),
                Path::new("/etc/eventd/ca.pem"),
                Path::new("/etc/eventd/client.key")
            ]
        );
    }

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

    #[test]
    fn verification_off_sets_both_properties_and_needs_tls() {
        let verified = SecurityConfig::default();
        assert!(verified.verify_certificates);
        assert!(verified
            .properties()
            .iter()
            .all(|(property, _)| !property.contains("ssl")));
        let unverified = SecurityConfig {
            protocol: Some(SecurityProtocol::Ssl),
            verify_certificates: false,
            ..SecurityConfig::default()
        };
        let properties = unverified.properties();
        for wanted in [
            ("enable.ssl.certificate.verification", "false"),
            ("ssl.endpoint.identification.algorithm", "none"),
        ] {
            assert!(
                properties.iter().any(|(p, v)| (*p, v.as_str()) == wanted),
                "{properties:?}"
            );
        }
        assert!(unverified.validate().is_empty());
        let plaintext = SecurityConfig {
            verify_certificates: false,
            ..SecurityConfig::default()
        };
        assert_eq!(
            plaintext
                .validate()
                .iter()
                .map(|issue| issue.key.as_str())
                .collect::<Vec<_>>(),
            ["kafka.security.verify_certificates"]
        );
    }

    #[test]
    fn a_file_is_readable_only_when_it_can_be_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let readable = dir.path().join("ca.pem");
        std::fs::write(&readable, "pem").expect("write");
        assert_eq!(read_a_byte(&readable), Ok(()));
        assert!(read_a_byte(dir.path()).is_err());
        assert!(read_a_byte(&dir.path().join("missing.pem")).is_err());
        // A regular file whose reads fail, whoever reads it (root reads mode 000).
        let failing = std::path::Path::new("/proc/self/mem");
        assert!(failing.is_file());
        assert!(read_a_byte(failing).is_err());

        let secret = dir.path().join("password");
        std::fs::write(&secret, "pw").expect("write");
        let config = SecurityConfig {
            password: Some(Secret {
                written: format!("file:{}", secret.display()),
                value: None,
            }),
            key: Some(readable.clone()),
            ..SecurityConfig::default()
        };
        for (mode, exposed) in [
            (0o644, true),
            (0o640, true),
            (0o604, true),
            (0o600, false),
            (0o400, false),
        ] {
            for path in [&secret, &readable] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .expect("chmod");
            }
            let found = config.exposed_secret_files();
            let keys: Vec<&str> = found.iter().map(|f| f.key.as_str()).collect();
            if exposed {
                assert_eq!(
                    keys,
                    ["kafka.security.password", "kafka.security.key"],
                    "{mode:o}"
                );
                assert_eq!(found[0].mode, mode);
                assert!(found[0].to_string().contains(&secret.display().to_string()));
            } else {
                assert!(keys.is_empty(), "{mode:o}: {keys:?}");
            }
        }
    }
}
