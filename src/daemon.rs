//! `eventd run`: start the tree, wait for signals, shut down within the grace.
//!
//! Exit codes: 0 clean shutdown, 1 grace expired (or startup failed), 69 a topic eventd
//! writes to is missing (or no broker answered the check), 70 supervision meltdown, 78
//! bad configuration, 130 second signal during shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use parking_lot::Mutex;
use ractor::Actor;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::{mpsc, watch};

use crate::actors::producer::ProducerActor;
use crate::actors::root::{RootArgs, RootMsg, RootSupervisor};
use crate::actors::{Deadline, Fatal};
use crate::config::{Config, EXIT_CONFIG};
use crate::embedded::EmbeddedBroker;
use crate::kafka::{check_written_topics, Brokers};
use crate::telemetry::metrics::{CONFIG_RELOADS, TLS_VERIFICATION_DISABLED};
use crate::telemetry::{self, Health};

pub const EXIT_OK: i32 = 0;
pub const EXIT_GRACE_EXPIRED: i32 = 1;
/// sysexits' EX_UNAVAILABLE: a topic eventd writes to is missing, or no broker answered.
/// Unlike 78 it is worth restarting: the topic may be created meanwhile.
pub const EXIT_UNAVAILABLE: i32 = 69;
/// sysexits' EX_SOFTWARE: an internal error, such as a thread of eventd's failing.
pub const EXIT_SOFTWARE: i32 = 70;
pub const EXIT_MELTDOWN: i32 = EXIT_SOFTWARE;
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Runs the daemon until it should exit; returns the exit code.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> i32 {
    let config = Arc::new(config);
    let prometheus = match telemetry::metrics::install() {
        Ok(handle) => handle,
        Err(error) => {
            tracing::error!(%error, "cannot install the metrics recorder");
            return EXIT_GRACE_EXPIRED;
        }
    };
    let _upkeep = telemetry::metrics::spawn_upkeep(prometheus.clone());
    config.kafka.security.warn_about_weaknesses();
    metrics::gauge!(TLS_VERIFICATION_DISABLED).set(if config.kafka.security.verify_certificates {
        0.0
    } else {
        1.0
    });
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(%error, "cannot install signal handlers");
            return EXIT_GRACE_EXPIRED;
        }
    };

    // Kept alive for the whole run: the embedded broker dies with this value.
    let mut _embedded = None;
    let brokers = match &config.kafka.brokers {
        Some(brokers) => Brokers {
            bootstrap: brokers.clone(),
            embedded: false,
        },
        None => match EmbeddedBroker::start(config.embedded.partitions, &config.all_topics()) {
            Ok(broker) => {
                tracing::warn!(bootstrap = broker.bootstrap_servers(), topics = ?config.all_topics(),
                    "no kafka.brokers set: running on the embedded broker; its data is NOT persisted and is lost on exit");
                let brokers = Brokers {
                    bootstrap: broker.bootstrap_servers().to_owned(),
                    embedded: true,
                };
                _embedded = Some(broker);
                brokers
            }
            Err(error) => {
                tracing::error!(%error, "cannot start the embedded broker");
                return EXIT_GRACE_EXPIRED;
            }
        },
    };

    let check = {
        let (config, brokers) = (config.clone(), brokers.clone());
        tokio::task::spawn_blocking(move || check_written_topics(&config, &brokers)).await
    };
    match check {
        Ok(problems) if problems.is_empty() => {}
        Ok(problems) => {
            for problem in problems {
                tracing::error!(error = %problem, "cannot start");
            }
            return EXIT_UNAVAILABLE;
        }
        Err(error) => {
            tracing::error!(%error, "topic check did not run");
            return EXIT_GRACE_EXPIRED;
        }
    }

    let health = Arc::new(Health::default());
    health.stall_fails_liveness.store(
        config.health.stall_fails_liveness,
        std::sync::atomic::Ordering::SeqCst,
    );
    health.broker_timeout_ms.store(
        config.health.broker_timeout.as_millis() as u64,
        std::sync::atomic::Ordering::SeqCst,
    );
    crate::telemetry::partitions::BOARD.set_interval(config.metrics.lag_interval);
    let listen = match config.metrics.listen.parse() {
        Ok(addr) => addr,
        Err(_) => return EXIT_CONFIG,
    };
    match telemetry::serve(listen, prometheus, health.clone()).await {
        Ok(bound) => tracing::info!(listen = %bound, "serving /metrics, /healthz and /readyz"),
        Err(error) => {
            tracing::error!(listen = %config.metrics.listen, %error, "cannot listen (metrics.listen)");
            return EXIT_GRACE_EXPIRED;
        }
    }

    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
    let producer = ProducerActor::handle(&config);
    let progress = Arc::new(Mutex::new("starting"));
    let started = Actor::spawn(
        Some("root".to_owned()),
        RootSupervisor,
        RootArgs {
            config: config.clone(),
            brokers: brokers.clone(),
            producer: producer.clone(),
            fatal: fatal_tx,
            progress: progress.clone(),
            health: health.clone(),
        },
    )
    .await;
    let (root, root_done) = match started {
        Ok(started) => started,
        Err(error) => {
            tracing::error!(%error, "cannot start the actor tree");
            return EXIT_GRACE_EXPIRED;
        }
    };
    let mut root_done = Some(root_done);
    health.set_alive(true);
    health.set_ready(true);
    tracing::info!(
        consumers = config.consumers.len(),
        handlers = config.handlers.len(),
        "eventd running"
    );

    let (stop_demo, demo_stopped) = watch::channel(false);
    let demo = config
        .demo
        .enabled
        .then(|| crate::demo::spawn(config.demo.clone(), producer.clone(), demo_stopped));

    // `reload.watch_config`: a change of the files asks for a reload as SIGHUP does.
    let (file_changed, mut changes) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _watch = match (&config_path, config.reload.watch_config) {
        (Some(path), true) => {
            let mut files = vec![path.clone()];
            files.extend(
                config
                    .kafka
                    .security
                    .files()
                    .into_iter()
                    .map(Path::to_path_buf),
            );
            // A webhook's `file:` headers (a rotated token) reload as the config does.
            files.extend(
                config
                    .handlers
                    .iter()
                    .flat_map(|handler| handler.headers.iter().flatten())
                    .filter_map(|(_, secret)| secret.file())
                    .map(Path::to_path_buf),
            );
            match crate::watch::spawn(files, file_changed) {
                Ok(watcher) => Some(watcher),
                Err(error) => {
                    tracing::error!(%error, "reload.watch_config: not watching; SIGHUP still reloads");
                    None
                }
            }
        }
        (None, true) => {
            tracing::warn!(
                "reload.watch_config: no config file was given, so there is none to watch"
            );
            None
        }
        (_, false) => None,
    };

    // A reload runs beside this loop, so a shutdown signal or a meltdown is never
    // held up by one; a SIGHUP (or a file change) while one runs starts the next once
    // it is done.
    let mut reloading: Option<tokio::task::JoinHandle<()>> = None;
    let mut reload_again = false;
    let start_reload = |reloading: &mut Option<tokio::task::JoinHandle<()>>, again: &mut bool| {
        if reloading.is_some() {
            *again = true;
        } else {
            *reloading = Some(tokio::spawn(reload(root.clone(), config_path.clone())));
        }
    };
    loop {
        tokio::select! {
            Some(()) = changes.recv() => {
                tracing::info!("the config or a file it names changed");
                start_reload(&mut reloading, &mut reload_again);
            }
            signal = signals.next() => match signal {
                Some(SIGHUP) => start_reload(&mut reloading, &mut reload_again),
                Some(signal) => {
                    tracing::info!(signal, "shutdown requested");
                    break;
                }
                None => break,
            },
            // Cleared only here, so a SIGHUP that set reload_again is never lost.
            _ = async { if let Some(task) = reloading.as_mut() { let _ = task.await; } }, if reloading.is_some() => {
                reloading = None;
                if std::mem::take(&mut reload_again) {
                    reloading = Some(tokio::spawn(reload(root.clone(), config_path.clone())));
                }
            }
            Some(Fatal::Meltdown { supervisor, actor }) = fatal_rx.recv() => {
                tracing::error!(supervisor, actor, "supervision meltdown: restarts exceeded supervision.max_restarts within supervision.restart_window");
                health.set_alive(false);
                return EXIT_MELTDOWN;
            }
            _ = async { if let Some(done) = root_done.as_mut() { let _ = done.await; } }, if root_done.is_some() => {
                tracing::error!("the actor tree stopped on its own");
                health.set_alive(false);
                return EXIT_MELTDOWN;
            }
        }
    }

    // The grace counts from the signal: everything below shares it.
    let grace = config.shutdown.grace;
    let deadline = Deadline::after(grace);
    health.set_stopping();
    if let Some(task) = reloading.take() {
        task.abort();
    }
    let _ = stop_demo.send(true);
    if let Some(demo) = demo {
        let _ = tokio::time::timeout(deadline.left(), demo).await;
    }
    tracing::info!(grace = %humantime::format_duration(grace), "draining");
    let shutdown = root.call(
        |reply| RootMsg::Shutdown(deadline, reply),
        Some(deadline.left()),
    );
    // The process exits right after; stopping the embedded broker before that would
    // only make the remaining clients log connection errors.
    std::mem::forget(_embedded);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            finished = &mut shutdown => {
                return shutdown_exit_code(finished, *progress.lock(), producer.queue_depth())
            }
            signal = signals.next() => match signal {
                Some(SIGHUP) => tracing::warn!("reload ignored: shutting down"),
                _ => {
                    tracing::warn!("second signal: exiting now");
                    return EXIT_SECOND_SIGNAL;
                }
            },
            Some(Fatal::Meltdown { supervisor, actor }) = fatal_rx.recv() => {
                tracing::error!(supervisor, actor, "supervision meltdown during shutdown");
                return EXIT_MELTDOWN;
            }
        }
    }
}

/// The exit code of the root's answer to `Shutdown`, each outcome logged: 0 only when
/// the root answered and every step finished.
fn shutdown_exit_code(
    finished: Result<ractor::rpc::CallResult<Vec<String>>, ractor::MessagingErr<RootMsg>>,
    pending: &str,
    producer_queue: i32,
) -> i32 {
    match finished {
        Ok(ractor::rpc::CallResult::Success(unfinished)) if unfinished.is_empty() => {
            tracing::info!("shutdown complete");
            EXIT_OK
        }
        Ok(ractor::rpc::CallResult::Success(unfinished)) => {
            for step in &unfinished {
                tracing::error!(step = %step, "shutdown step not finished");
            }
            tracing::error!(
                producer_queue,
                "shutdown incomplete; exiting with work pending"
            );
            EXIT_GRACE_EXPIRED
        }
        Ok(ractor::rpc::CallResult::Timeout) => {
            tracing::error!(
                pending,
                producer_queue,
                "shutdown grace expired; exiting with work pending"
            );
            EXIT_GRACE_EXPIRED
        }
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
            tracing::error!(pending, producer_queue,
                "shutdown did not complete: the actor tree stopped answering; exiting with work pending");
            EXIT_GRACE_EXPIRED
        }
    }
}

/// SIGHUP: a valid config is applied where it can be, and every changed key that needs
/// a restart is logged by name; an invalid one is refused and the running one kept.
async fn reload(root: ractor::ActorRef<RootMsg>, path: Option<PathBuf>) {
    let outcome = |outcome: &'static str| {
        metrics::counter!(CONFIG_RELOADS, "outcome" => outcome).increment(1);
    };
    tracing::info!("reload requested");
    // Reading and checking the file is blocking work (a config on a slow or stuck
    // mount must not hold a runtime thread).
    let loaded = match tokio::task::spawn_blocking(move || Config::load(path.as_deref())).await {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::error!(%error, "reload not applied: reading the config failed");
            outcome("failed");
            return;
        }
    };
    let config = match loaded {
        Ok(config) => {
            config.kafka.security.warn_about_weaknesses();
            Arc::new(config)
        }
        Err(error) => {
            for line in error.lines() {
                tracing::error!(error = %line, "reload refused; keeping the running config");
            }
            outcome("refused");
            return;
        }
    };
    let report = root
        .call(
            |reply| RootMsg::Reload(config, reply),
            // The root asks the handler supervisor in turn.
            Some(crate::waits::RELOAD_ANSWER * 2),
        )
        .await;
    let Ok(ractor::rpc::CallResult::Success(report)) = report else {
        tracing::error!("reload not applied: the actor tree did not answer");
        outcome("failed");
        return;
    };
    for key in &report.applied {
        tracing::info!(key = %key, "config change applied");
    }
    for (key, why) in &report.partly_applied {
        tracing::error!(key = %key, error = %why, "config change applied in part");
    }
    for key in &report.unconfirmed {
        tracing::warn!(key = %key,
            "config change handed to the handlers, which did not confirm it in time; restart to be sure it applies");
    }
    for key in &report.needs_restart {
        tracing::warn!(key = %key, "config change needs a restart; not applied");
    }
    tracing::info!(
        applied = report.applied.len(),
        partly_applied = report.partly_applied.len(),
        unconfirmed = report.unconfirmed.len(),
        needs_restart = report.needs_restart.len(),
        "config reloaded"
    );
    outcome(
        if report.needs_restart.is_empty()
            && report.partly_applied.is_empty()
            && report.unconfirmed.is_empty()
        {
            "applied"
        } else {
            "partial"
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::rpc::CallResult;

    #[test]
    fn only_a_finished_shutdown_exits_0() {
        assert_eq!(
            shutdown_exit_code(Ok(CallResult::Success(Vec::new())), "done", 0),
            EXIT_OK
        );
        for unfinished in [
            Ok(CallResult::Success(vec![
                "producer did not flush in time".to_owned()
            ])),
            Ok(CallResult::Timeout),
            Ok(CallResult::SenderError),
            Err(ractor::MessagingErr::ChannelClosed),
        ] {
            assert_eq!(
                shutdown_exit_code(unfinished, "draining", 3),
                EXIT_GRACE_EXPIRED
            );
        }
    }
}
