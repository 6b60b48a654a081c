//! What a reload (SIGHUP) compares: the keys that differ between the running config and
//! the new one, and which handler changes can be taken in without a restart.

use super::Config;

impl Config {
    /// Every key whose value differs between `self` and `other`, as dotted paths
    /// (`producer.linger`, `handlers[1].sample`). Names only: values may be secrets.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        let (Ok(before), Ok(after)) = (serde_json::to_value(self), serde_json::to_value(other))
        else {
            return vec!["(the whole config: it cannot be compared)".to_owned()];
        };
        let mut changed = Vec::new();
        diff_values(String::new(), &before, &after, &mut changed);
        changed
    }

    /// `self` with the live keys of `new`'s handlers taken in (`topics`, `filter`,
    /// `sample`, `fields`, and a webhook's `url`, `batch`, `max_wait`, `timeout` and
    /// `headers`, values read anew), for each handler that is the same one in both: same name and
    /// nothing else of it changed. Everything else stays as it runs, so a handler whose
    /// topics come from its consumer keeps following the running consumer until a
    /// restart. Returns the names of the handlers whose live keys were not taken.
    pub fn with_live_handler_changes(&self, new: &Config) -> (Config, Vec<String>) {
        let mut effective = self.clone();
        let mut not_applied = Vec::new();
        for running in &mut effective.handlers {
            let Some(wanted) = new.handlers.iter().find(|h| h.name == running.name) else {
                continue;
            };
            let mut rest_of_it = wanted.clone();
            rest_of_it.topics = running.topics.clone();
            rest_of_it.filter = running.filter.clone();
            rest_of_it.sample = running.sample;
            rest_of_it.fields = running.fields.clone();
            rest_of_it.url = running.url.clone();
            rest_of_it.batch = running.batch;
            rest_of_it.max_wait = running.max_wait;
            rest_of_it.timeout = running.timeout;
            rest_of_it.headers = running.headers.clone();
            let same_handler = matches!(
                (serde_json::to_value(&rest_of_it), serde_json::to_value(&*running)),
                (Ok(a), Ok(b)) if a == b
            );
            if same_handler {
                running.topics = wanted.topics.clone();
                running.filter = wanted.filter.clone();
                running.sample = wanted.sample;
                running.fields = wanted.fields.clone();
                running.url = wanted.url.clone();
                running.batch = wanted.batch;
                running.max_wait = wanted.max_wait;
                running.timeout = wanted.timeout;
                running.headers = wanted.headers.clone();
            } else {
                not_applied.push(running.name.clone());
            }
        }
        (effective, not_applied)
    }
}

/// The `headers` of each handler of `new` whose value changed while where it is read
/// from did not (a `file:` rewritten): the compared config shows only the source.
pub fn reread_headers(running: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    for (index, after) in new.handlers.iter().enumerate() {
        let Some(before) = running.handlers.iter().find(|h| h.name == after.name) else {
            continue;
        };
        for (name, value) in after.headers.iter().flatten() {
            let old = before
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name));
            if old.is_some_and(|old| old == &*value) {
                continue;
            }
            if old.is_some_and(|old| old.source() == value.source()) {
                changed.push(format!("handlers[{index}].headers.{name}"));
            }
        }
    }
    changed
}

/// Appends to `changed` the dotted paths below `path` where `before` and `after` differ.
fn diff_values(
    path: String,
    before: &serde_json::Value,
    after: &serde_json::Value,
    changed: &mut Vec<String>,
) {
    use serde_json::Value;
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let null = Value::Null;
                diff_values(
                    join(key),
                    a.get(key).unwrap_or(&null),
                    b.get(key).unwrap_or(&null),
                    changed,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.iter().chain(b).all(Value::is_object) => {
            for i in 0..a.len().max(b.len()) {
                let null = Value::Null;
                diff_values(
                    format!("{path}[{i}]"),
                    a.get(i).unwrap_or(&null),
                    b.get(i).unwrap_or(&null),
                    changed,
                );
            }
        }
        (a, b) if a != b => changed.push(path),
        _ => {}
    }
}
