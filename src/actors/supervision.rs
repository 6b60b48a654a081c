//! The restart policy every supervisor applies: exponential backoff per child and a
//! meltdown limit on restarts within a sliding window. ractor has no built-in restart.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::config::SupervisionConfig;
use crate::telemetry::metrics::ACTOR_RESTARTS;

/// What a supervisor should do about a failed child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Restart it after this delay.
    RestartAfter(Duration),
    /// Too many restarts within the window: give up and end the daemon.
    Meltdown,
}

/// Restart bookkeeping of one supervisor.
#[derive(Debug)]
pub struct RestartPolicy {
    settings: SupervisionConfig,
    /// When recent restarts happened, oldest first; older than the window are dropped.
    recent: VecDeque<Instant>,
}

impl RestartPolicy {
    pub fn new(settings: SupervisionConfig) -> Self {
        Self {
            settings,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure of a child that has failed `consecutive` times in a row before.
    pub fn on_failure(&mut self, now: Instant, consecutive: u32) -> Verdict {
        while let Some(first) = self.recent.front() {
            if now.duration_since(*first) > self.settings.restart_window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.settings.max_restarts {
            return Verdict::Meltdown;
        }
        self.recent.push_back(now);
        Verdict::RestartAfter(self.backoff(consecutive))
    }

    pub fn backoff(&self, consecutive: u32) -> Duration {
        let factor = 2u32.saturating_pow(consecutive.min(16));
        self.settings
            .backoff
            .saturating_mul(factor)
            .min(self.settings.max_backoff)
    }

    /// A child that ran longer than the window without failing starts over at the
    /// shortest backoff.
    pub fn consecutive_after(
        &self,
        last_failure: Option<Instant>,
        now: Instant,
        previous: u32,
    ) -> u32 {
        match last_failure {
            Some(at) if now.duration_since(at) <= self.settings.restart_window => previous + 1,
            _ => 0,
        }
    }
}

/// Per-child failure history, kept by the supervisor beside the child's role.
#[derive(Debug, Default, Clone, Copy)]
pub struct FailureHistory {
    pub consecutive: u32,
    pub last_failure: Option<Instant>,
}

impl FailureHistory {
    /// Records a failure and asks the policy what to do.
    pub fn fail(&mut self, policy: &mut RestartPolicy, now: Instant) -> Verdict {
        self.consecutive = policy.consecutive_after(self.last_failure, now, self.consecutive);
        self.last_failure = Some(now);
        policy.on_failure(now, self.consecutive)
    }

    /// Records a failure of a child whose restarts are budgeted by other means (a
    /// handler slot's panic streak) and returns its restart delay, which doubles while
    /// it fails within the window; `recovered` starts it over at the shortest.
    pub fn restart_delay(
        &mut self,
        policy: &RestartPolicy,
        now: Instant,
        recovered: bool,
    ) -> Duration {
        self.consecutive = if recovered {
            0
        } else {
            policy.consecutive_after(self.last_failure, now, self.consecutive)
        };
        self.last_failure = Some(now);
        policy.backoff(self.consecutive)
    }
}

/// The restart bookkeeping of one supervisor, written once for all of them: its
/// policy, each child's history by `K`, and the log line and count of every restart.
#[derive(Debug)]
pub struct Restarts<K> {
    policy: RestartPolicy,
    history: HashMap<K, FailureHistory>,
}

impl<K: Eq + Hash> Restarts<K> {
    pub fn new(settings: SupervisionConfig) -> Self {
        Self {
            policy: RestartPolicy::new(settings),
            history: HashMap::new(),
        }
    }

    /// Child `key` (`actor` in logs and metrics) failed: restart it after the returned
    /// delay, or give up when the supervisor's children failed too often in the window.
    pub fn failed(&mut self, key: K, actor: &str, reason: &str) -> Verdict {
        let verdict = self
            .history
            .entry(key)
            .or_default()
            .fail(&mut self.policy, Instant::now());
        match verdict {
            Verdict::RestartAfter(delay) => announce(actor, reason, delay),
            Verdict::Meltdown => {
                tracing::error!(actor, reason, "actor failed too often, giving up");
            }
        }
        verdict
    }

    /// Child `key` failed where its restarts are budgeted by other means (a handler
    /// slot's panic streak): its restart delay, doubling while it fails within the
    /// window, the shortest again once it `recovered`.
    pub fn delay(&mut self, key: K, actor: &str, reason: &str, recovered: bool) -> Duration {
        let delay = self.history.entry(key).or_default().restart_delay(
            &self.policy,
            Instant::now(),
            recovered,
        );
        announce(actor, reason, delay);
        delay
    }
}

/// Logs and counts a restart of `actor`, the series of `eventd_actor_restarts_total`.
fn announce(actor: &str, reason: &str, delay: Duration) {
    tracing::warn!(
        actor,
        reason,
        delay_ms = delay.as_millis() as u64,
        "actor failed, restarting"
    );
    metrics::counter!(ACTOR_RESTARTS, "actor" => actor.to_owned()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_restarts: usize) -> RestartPolicy {
        RestartPolicy::new(SupervisionConfig {
            max_restarts,
            restart_window: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        })
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut policy = policy(100);
        let mut history = FailureHistory::default();
        let start = Instant::now();
        let delays: Vec<_> = (0..6)
            .map(|i| history.fail(&mut policy, start + Duration::from_millis(i)))
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1000, 1000]
                .map(|ms| Verdict::RestartAfter(Duration::from_millis(ms)))
        );
    }

    #[test]
    fn too_many_restarts_in_the_window_is_a_meltdown() {
        let mut policy = policy(3);
        let start = Instant::now();
        for i in 0..3 {
            assert!(matches!(
                policy.on_failure(start + Duration::from_secs(i), 0),
                Verdict::RestartAfter(_)
            ));
        }
        assert_eq!(
            policy.on_failure(start + Duration::from_secs(3), 0),
            Verdict::Meltdown
        );
        // Outside the window the old restarts no longer count.
        assert!(matches!(
            policy.on_failure(start + Duration::from_secs(200), 0),
            Verdict::RestartAfter(_)
        ));
    }

    #[test]
    fn a_long_quiet_run_resets_the_backoff() {
        let mut policy = policy(100);
        let mut history = FailureHistory::default();
        let start = Instant::now();
        history.fail(&mut policy, start);
        history.fail(&mut policy, start + Duration::from_secs(1));
        assert_eq!(
            history.fail(&mut policy, start + Duration::from_secs(120)),
            Verdict::RestartAfter(Duration::from_millis(100))
        );
    }
}
