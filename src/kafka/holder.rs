//! The metadata a `partitions` consumer commits with its offsets under `commit_group`:
//! which process holds the partition, when it last committed and whether it still
//! runs. Such a consumer joins no group, so the broker knows no member of
//! `commit_group`, and an idle one sends no new offsets; `eventd offsets reset` reads
//! this to see it anyway.

use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::waits::{HOLDER_FRESH_INTERVALS, HOLDER_FRESH_MIN};

/// Marks eventd's own metadata among whatever other tools commit under a group.
const FORMAT: &str = "eventd-holder-1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetHolder {
    format: String,
    pub host: String,
    pub pid: u32,
    pub consumer: String,
    /// When the offset was committed, milliseconds since the Unix epoch by the
    /// holder's clock.
    pub at_ms: i64,
    /// The holder's `commit_interval`: it commits at least this often while it runs,
    /// so the reader needs no copy of the holder's config.
    pub every_ms: u64,
    /// False in the final commit of a clean stop.
    pub running: bool,
}

/// The name of this host, read once: the environment's `HOSTNAME`, else the kernel's.
fn host_name() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .filter(|host| !host.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|host| host.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown-host".to_owned())
    })
}

impl OffsetHolder {
    /// This process, holding offsets of `consumer` now.
    pub fn this_process(consumer: &str, every: Duration, running: bool) -> Self {
        Self {
            format: FORMAT.to_owned(),
            host: host_name().to_owned(),
            pid: std::process::id(),
            consumer: consumer.to_owned(),
            at_ms: chrono::Utc::now().timestamp_millis(),
            every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            running,
        }
    }

    pub fn to_metadata(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The holder a committed offset's metadata names; `None` for metadata eventd did
    /// not write (another tool's, an older eventd's, or a broker that returns none).
    pub fn from_metadata(metadata: &str) -> Option<Self> {
        serde_json::from_str::<Self>(metadata)
            .ok()
            .filter(|holder| holder.format == FORMAT)
    }

    /// How long after its commit the holder counts as running: a few of its commit
    /// intervals, so one late or failed commit does not make a live process look gone.
    pub fn fresh_for(&self) -> Duration {
        Duration::from_millis(self.every_ms)
            .saturating_mul(HOLDER_FRESH_INTERVALS)
            .max(HOLDER_FRESH_MIN)
    }

    /// How long ago it committed at `now_ms`, if it still counts as running then. A
    /// commit dated in the future (the clocks of two hosts differ) counts as fresh.
    pub fn running_at(&self, now_ms: i64) -> Option<Duration> {
        if !self.running {
            return None;
        }
        let age = Duration::from_millis(u64::try_from(now_ms - self.at_ms).unwrap_or(0));
        (age < self.fresh_for()).then_some(age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_writes_and_nothing_else() {
        let holder = OffsetHolder::this_process("audit", Duration::from_secs(1), true);
        let read = OffsetHolder::from_metadata(&holder.to_metadata());
        assert_eq!(read.as_ref(), Some(&holder));
        assert_eq!(holder.pid, std::process::id());
        assert!(OffsetHolder::from_metadata("").is_none());
        assert!(OffsetHolder::from_metadata("{\"host\":\"a\"}").is_none());
        assert!(OffsetHolder::from_metadata("someone else's note").is_none());
    }

    #[test]
    fn running_only_within_a_few_commit_intervals_and_not_after_a_clean_stop() {
        let mut holder = OffsetHolder::this_process("audit", Duration::from_secs(10), true);
        let at = holder.at_ms;
        assert_eq!(holder.fresh_for(), Duration::from_secs(30));
        assert!(holder.running_at(at + 29_000).is_some());
        assert!(holder.running_at(at + 30_000).is_none());
        assert!(holder.running_at(at - 5_000).is_some(), "a clock ahead");
        holder.every_ms = 1;
        assert_eq!(holder.fresh_for(), HOLDER_FRESH_MIN);
        holder.running = false;
        assert!(holder.running_at(at).is_none());
    }
}
