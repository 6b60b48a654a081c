//! Per-partition series that must disappear when this process no longer owns the
//! partition: consumer lag and stall. The `metrics` crate cannot delete a series, so
//! these live here and `/metrics` renders them after the registry's own; a partition's
//! series go as soon as its worker stops, and a lag figure librdkafka stopped
//! reporting goes after two `metrics.lag_interval`s.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub const CONSUMER_LAG_MESSAGES: &str = "eventd_consumer_lag_messages";
pub const CONSUMER_LAG_SECONDS: &str = "eventd_consumer_lag_seconds";
pub const PARTITION_STALLED: &str = "eventd_partition_stalled";

/// (consumer, topic, partition).
pub type PartitionKey = (String, String, i32);

/// Names one partition worker on the board: a worker that ends after another took its
/// partition (a killed worker's state is dropped late) must not clear the other's series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat(u64);

static NEXT_SEAT: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
pub struct PartitionBoard {
    inner: Mutex<Board>,
}

struct Board {
    interval: Duration,
    /// Lag in events from librdkafka's statistics, and when it was reported.
    messages: BTreeMap<PartitionKey, (i64, Instant)>,
    /// Per partition worker: which worker (its seat), the age of its oldest unfinished
    /// event, and whether stalled.
    workers: BTreeMap<PartitionKey, (Seat, f64, bool)>,
    /// When a consumer's statistics last showed a broker up.
    broker_up: Option<Instant>,
}

impl Default for Board {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            messages: BTreeMap::new(),
            workers: BTreeMap::new(),
            broker_up: None,
        }
    }
}

/// The board of this process.
pub static BOARD: LazyLock<PartitionBoard> = LazyLock::new(PartitionBoard::default);

impl PartitionBoard {
    pub fn set_interval(&self, interval: Duration) {
        self.inner.lock().interval = interval;
    }

    /// Lag librdkafka reports for an owned partition.
    pub fn set_lag_messages(&self, key: PartitionKey, lag: i64) {
        self.inner
            .lock()
            .messages
            .insert(key, (lag, Instant::now()));
    }

    /// A worker took `key`: its series are its own from now on.
    pub fn claim(&self, key: PartitionKey) -> Seat {
        let seat = Seat(NEXT_SEAT.fetch_add(1, Ordering::Relaxed));
        self.inner.lock().workers.insert(key, (seat, 0.0, false));
        seat
    }

    /// What a partition worker measured at its last tick; ignored from a worker whose
    /// partition another took.
    pub fn set_worker(&self, key: &PartitionKey, seat: Seat, lag_seconds: f64, stalled: bool) {
        if let Some(entry) = self.inner.lock().workers.get_mut(key) {
            if entry.0 == seat {
                *entry = (seat, lag_seconds, stalled);
            }
        }
    }

    /// The partition's worker ended, whatever ended it (revoke, shutdown, killed with
    /// its failed group member): its series go now, and `also` clears what it keeps
    /// elsewhere, under the same lock so a successor claiming the partition meanwhile
    /// keeps its own. True when they were its own.
    pub fn release(&self, key: &PartitionKey, seat: Seat, also: impl FnOnce()) -> bool {
        let mut board = self.inner.lock();
        if board
            .workers
            .get(key)
            .is_some_and(|(owner, _, _)| *owner == seat)
        {
            board.workers.remove(key);
            board.messages.remove(key);
            also();
            return true;
        }
        false
    }

    pub fn broker_answered(&self) {
        self.inner.lock().broker_up = Some(Instant::now());
    }

    /// How long since statistics last showed a broker up; `None` before any did.
    pub fn broker_silent_for(&self) -> Option<Duration> {
        self.inner.lock().broker_up.map(|at| at.elapsed())
    }

    /// Stalled partitions, in order.
    pub fn stalled(&self) -> Vec<PartitionKey> {
        self.inner
            .lock()
            .workers
            .iter()
            .filter(|(_, (_, _, stalled))| *stalled)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The series in Prometheus text format.
    pub fn render(&self) -> String {
        let mut board = self.inner.lock();
        let stale_after = board.interval * 2;
        board
            .messages
            .retain(|_, (_, at)| at.elapsed() <= stale_after);
        let mut out = String::new();
        let labels = |(consumer, topic, partition): &PartitionKey| {
            format!(
                "consumer=\"{}\",topic=\"{}\",partition=\"{partition}\"",
                escape(consumer),
                escape(topic)
            )
        };
        let mut series = |name: &str, help: &str, values: Vec<(String, String)>| {
            if values.is_empty() {
                return;
            }
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in values {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
            out.push('\n');
        };
        series(
            CONSUMER_LAG_MESSAGES,
            "Events of an owned partition after the offset stored for commit, up to its last stable offset (read_committed), from librdkafka's statistics",
            board
                .messages
                .iter()
                .map(|(key, (lag, _))| (labels(key), lag.to_string()))
                .collect(),
        );
        series(
            CONSUMER_LAG_SECONDS,
            "Age of the oldest event of an owned partition read and not yet finished (its Kafka timestamp to now); 0 when none is unfinished",
            board
                .workers
                .iter()
                .map(|(key, (_, seconds, _))| (labels(key), format!("{seconds:.3}")))
                .collect(),
        );
        series(
            PARTITION_STALLED,
            "1 while an owned partition has unfinished events and none finished for health.stall_timeout",
            board
                .workers
                .iter()
                .map(|(key, (_, _, stalled))| (labels(key), u8::from(*stalled).to_string()))
                .collect(),
        );
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32) -> PartitionKey {
        ("main".to_owned(), "like".to_owned(), partition)
    }

    #[test]
    fn a_removed_partition_leaves_no_series_and_stale_lag_expires() {
        let board = PartitionBoard::default();
        board.set_interval(Duration::from_millis(20));
        board.set_lag_messages(key(0), 7);
        board.set_lag_messages(key(1), 3);
        let seat = board.claim(key(0));
        board.set_worker(&key(0), seat, 1.5, true);
        let page = board.render();
        assert!(
            page.contains(
                "eventd_consumer_lag_messages{consumer=\"main\",topic=\"like\",partition=\"0\"} 7"
            ),
            "{page}"
        );
        assert!(
            page.contains(
                "eventd_partition_stalled{consumer=\"main\",topic=\"like\",partition=\"0\"} 1"
            ),
            "{page}"
        );
        assert_eq!(board.stalled(), [key(0)]);
        assert!(board.release(&key(0), seat, || {}));
        let page = board.render();
        assert!(!page.contains("partition=\"0\""), "{page}");
        assert!(page.contains("partition=\"1\"} 3"), "{page}");
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !board.render().contains("partition=\"1\""),
            "not reported for two intervals"
        );
    }

    #[test]
    fn a_worker_ending_after_another_took_its_partition_leaves_the_new_series() {
        let board = PartitionBoard::default();
        let old = board.claim(key(0));
        let new = board.claim(key(0));
        board.set_worker(&key(0), old, 9.0, true);
        assert!(
            board.stalled().is_empty(),
            "the old worker no longer reports"
        );
        board.set_worker(&key(0), new, 0.5, false);
        assert!(!board.release(&key(0), old, || panic!("not the old worker's to clear")));
        assert!(
            board
                .render()
                .contains("eventd_consumer_lag_seconds{consumer=\"main\",topic=\"like\",partition=\"0\"} 0.500"),
            "{}",
            board.render()
        );
    }
}
