//! `${NAME}` placeholders in the keys that must differ per replica (`kafka.client_id`,
//! `consumers[].commit_group`), filled from the environment, so replicas started from
//! one config get their own identities. Secrets written as `env:NAME` or `file:PATH`
//! are resolved by `security`, not here.

use super::{Config, ConfigIssue};

impl Config {
    /// Replaces `${NAME}` in the keys that must differ per instance (`kafka.client_id`,
    /// `consumers[].commit_group`) with the environment variable NAME, or the host name
    /// for `HOSTNAME`, so replicas started from one config get their own identities.
    pub fn expand_placeholders(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut expand = |key: String, text: &mut String| match expand(text, &lookup) {
            Ok(expanded) => *text = expanded,
            Err(message) => issues.push(ConfigIssue { key, message }),
        };
        expand("kafka.client_id".to_owned(), &mut self.kafka.client_id);
        for (i, consumer) in self.consumers.iter_mut().enumerate() {
            if let Some(group) = consumer.commit_group.as_mut() {
                expand(format!("consumers[{i}].commit_group"), group);
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }
}

/// What `${NAME}` stands for: the environment variable, or for `HOSTNAME` when it is
/// not set (shells set it, services often do not) the kernel's host name.
pub(super) fn placeholder_value(name: &str) -> Option<String> {
    std::env::var(name).ok().or_else(|| {
        (name == "HOSTNAME")
            .then(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .flatten()
            .map(|host| host.trim().to_owned())
    })
}

/// `text` with every `${NAME}` replaced by `lookup(NAME)`.
fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("{text:?}: \"${{\" without a closing \"}}\""));
        };
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "{text:?}: ${{{name}}} is not an environment variable name"
            ));
        }
        match lookup(name).filter(|value| !value.is_empty()) {
            Some(value) => out.push_str(&value),
            None => {
                return Err(format!(
                    "{text:?}: ${{{name}}} is not set in the environment"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn placeholders_come_from_the_environment() {
        let lookup = |name: &str| match name {
            "HOSTNAME" => Some("web-3".to_owned()),
            "POD_NAME" => Some("eventd-1".to_owned()),
            _ => None,
        };
        assert_eq!(
            expand("eventd-${HOSTNAME}", lookup).as_deref(),
            Ok("eventd-web-3")
        );
        assert_eq!(
            expand("${POD_NAME}-x-${HOSTNAME}", lookup).as_deref(),
            Ok("eventd-1-x-web-3")
        );
        assert_eq!(expand("plain", lookup).as_deref(), Ok("plain"));
        assert!(expand("a-${MISSING}", lookup)
            .unwrap_err()
            .contains("MISSING"));
        assert!(expand("a-${HOSTNAME", lookup).is_err());
    }
}
