//! `/metrics`, `/healthz` and `/readyz` on `metrics.listen`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use super::partitions::BOARD;
use std::time::Duration;

/// Liveness and readiness as the probes report them.
#[derive(Debug, Default)]
pub struct Health {
    /// The actor tree is up and no supervisor has given up.
    alive: AtomicBool,
    /// The tree started and no shutdown has begun.
    ready: AtomicBool,
    /// A shutdown has begun: not ready for good.
    stopping: AtomicBool,
    /// Consumers not yet consuming: a group member before its first assignment (an
    /// empty one counts), a partition consumer before its partition is assigned.
    starting: AtomicUsize,
    /// `health.stall_fails_liveness`.
    pub stall_fails_liveness: AtomicBool,
    /// `health.broker_timeout` in milliseconds; 0 checks nothing.
    pub broker_timeout_ms: std::sync::atomic::AtomicU64,
}

/// One consumer on its way to consuming; readiness waits for it until `started` (or
/// until it is dropped, when its consumer failed: its replacement registers anew).
#[derive(Debug)]
pub struct Starting {
    health: Arc<Health>,
    done: AtomicBool,
}

impl Starting {
    pub fn started(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.health.starting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.started();
    }
}

impl Health {
    /// Registers a consumer that readiness must wait for.
    pub fn starting(self: &Arc<Self>) -> Starting {
        self.starting.fetch_add(1, Ordering::AcqRel);
        Starting {
            health: self.clone(),
            done: AtomicBool::new(false),
        }
    }

    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::SeqCst);
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    /// The shutdown began: `/readyz` says so, and stays 503.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
    }
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
    pub fn is_ready(&self) -> bool {
        self.readiness().0
    }

    /// How long no broker answered, once that is past `health.broker_timeout`.
    fn broker_silence(&self) -> Option<Duration> {
        let timeout = self.broker_timeout_ms.load(Ordering::SeqCst);
        let silent = BOARD.broker_silent_for()?;
        (timeout > 0 && silent > Duration::from_millis(timeout)).then_some(silent)
    }

    /// Why `/readyz` says what it says, in one line.
    fn readiness(&self) -> (bool, String) {
        let waiting = self.starting.load(Ordering::SeqCst);
        if self.stopping.load(Ordering::SeqCst) {
            (false, "not ready: shutting down\n".to_owned())
        } else if !self.ready.load(Ordering::SeqCst) {
            (false, "not ready: starting\n".to_owned())
        } else if let Some(silent) = self.broker_silence() {
            (
                false,
                format!("not ready: no broker answered for {}s\n", silent.as_secs()),
            )
        } else if waiting > 0 {
            (
                false,
                format!("not ready: {waiting} consumer(s) waiting for their first assignment\n"),
            )
        } else {
            (true, "ready\n".to_owned())
        }
    }
}

#[derive(Clone)]
struct AppState {
    prometheus: PrometheusHandle,
    health: Arc<Health>,
}

/// Binds `addr` now (so a taken port fails startup) and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    prometheus: PrometheusHandle,
    health: Arc<Health>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { prometheus, health });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "http server stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(state): State<AppState>) -> String {
    super::metrics::sample_gauges();
    state.prometheus.run_upkeep();
    let mut page = state.prometheus.render();
    page.push_str(&BOARD.render());
    page
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    if !state.health.is_alive() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "actor tree is down\n".to_owned(),
        );
    }
    let stalled = BOARD.stalled();
    if stalled.is_empty() {
        return (StatusCode::OK, "ok\n".to_owned());
    }
    let names: Vec<String> = stalled
        .iter()
        .map(|(consumer, topic, partition)| format!("{consumer}:{topic}/{partition}"))
        .collect();
    let status = if state.health.stall_fails_liveness.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, format!("stalled partitions: {}\n", names.join(" ")))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.health.readiness() {
        (true, why) => (StatusCode::OK, why),
        (false, why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_says_whether_it_is_starting_or_shutting_down() {
        let health = Arc::new(Health::default());
        assert_eq!(
            health.readiness(),
            (false, "not ready: starting\n".to_owned())
        );
        let consumer = health.starting();
        health.set_ready(true);
        assert!(health.readiness().1.contains("1 consumer(s) waiting"));
        consumer.started();
        assert_eq!(health.readiness(), (true, "ready\n".to_owned()));
        health.set_stopping();
        assert_eq!(
            health.readiness(),
            (false, "not ready: shutting down\n".to_owned())
        );
    }
}
