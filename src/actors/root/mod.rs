//! The RootSupervisor owns the whole tree and runs shutdown in order: consumers first
//! (drain, emit count windows, commit, close), then handlers, then the producer's flush.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::actors::consumer::{ConsumerSupervisor, ConsumerSupervisorArgs, ConsumerSupervisorMsg};
use crate::actors::handler::{
    build_pools, HandlerSupervisor, HandlerSupervisorArgs, HandlerSupervisorMsg,
};
use crate::actors::producer::{ProducerActor, ProducerArgs, ProducerHandle, ProducerMsg};
use crate::actors::supervision::{Restarts, Verdict};
use crate::actors::{Deadline, Fatal, FatalSender};
use crate::config::Config;
use crate::kafka::login::LOGINS;
use crate::kafka::Brokers;
use crate::telemetry::Health;
use crate::waits::{AFTER_CONSUMERS, AFTER_HANDLERS, ANSWER_MARGIN, EXIT_MARGIN, RELOAD_ANSWER};

pub struct RootSupervisor;

pub struct RootArgs {
    pub config: Arc<Config>,
    pub brokers: Brokers,
    pub producer: ProducerHandle,
    pub fatal: FatalSender,
    /// What shutdown is doing now, for the log line when the grace expires.
    pub progress: Arc<Mutex<&'static str>>,
    /// Readiness waits for every consumer to start consuming.
    pub health: Arc<Health>,
}

pub struct RootState {
    config: Arc<Config>,
    brokers: Brokers,
    producer_handle: ProducerHandle,
    producer: Option<ActorRef<ProducerMsg>>,
    handlers: ActorRef<HandlerSupervisorMsg>,
    consumers: ActorRef<ConsumerSupervisorMsg>,
    fatal: FatalSender,
    restarts: Restarts<()>,
    progress: Arc<Mutex<&'static str>>,
    stopping: bool,
}

/// Messages of the RootSupervisor.
pub enum RootMsg {
    /// Stop everything in order by the deadline; reply with the steps that did not
    /// finish (none after a clean shutdown).
    Shutdown(Deadline, RpcReplyPort<Vec<String>>),
    /// Apply what can change live of a new, validated config; reply with the changed
    /// keys, applied or needing a restart.
    Reload(Arc<Config>, RpcReplyPort<ReloadReport>),
    /// Start the producer again after its backoff.
    RestartProducer,
}

/// What a reload changed, as config keys (never values: some are secrets).
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Changed and now in effect.
    pub applied: Vec<String>,
    /// Changed, in effect for some clients only; with why the others refused.
    pub partly_applied: Vec<(String, String)>,
    /// Changed, but in effect only after a restart.
    pub needs_restart: Vec<String>,
    /// Handed to the handlers, which did not confirm in time: they may or may not
    /// run with it; a restart settles it.
    pub unconfirmed: Vec<String>,
}

/// The SASL keys a reload rotated, and why some clients refused them, if any did.
#[derive(Debug, Default)]
struct Rotated {
    keys: Vec<String>,
    refused: Option<String>,
}

/// When a reload changed only the SASL username or password of `[kafka.security]`
/// (a rotated `file:` secret, an edited value), every client gets the new ones for its
/// next login; returns the keys so applied. A changed protocol or mechanism needs new
/// clients, so it is left to a restart.
fn rotate_login(running: &Config, new: &Config) -> Rotated {
    let (before, after) = (&running.kafka.security, &new.kafka.security);
    let (Some(old), Some(login)) = (before.login(), after.login()) else {
        return Rotated::default();
    };
    if old == login
        || before.protocol != after.protocol
        || before.sasl_mechanism != after.sasl_mechanism
    {
        return Rotated::default();
    }
    let mut keys = Vec::new();
    if old.username != login.username {
        keys.push("kafka.security.username".to_owned());
    }
    if old.password != login.password {
        keys.push("kafka.security.password".to_owned());
    }
    // Kept even when a client refuses: the others and every client made later use it.
    let rotation = LOGINS.rotate(login);
    if rotation.refused.is_empty() {
        tracing::info!(
            clients = rotation.updated,
            "SASL credentials rotated; each client uses them at its next login"
        );
        return Rotated {
            keys,
            refused: None,
        };
    }
    let refused = format!(
        "{} of {} clients refused the new credentials and log in with the old ones until a restart: {}",
        rotation.refused.len(),
        rotation.refused.len() + rotation.updated,
        rotation.refused.join("; ")
    );
    tracing::error!(updated = rotation.updated, error = %refused, "SASL credentials rotated in part");
    Rotated {
        keys,
        refused: Some(refused),
    }
}

/// Keys a running handler takes without a restart: `handlers[i].topics`, `.filter`,
/// `.sample`, `.fields`, for a handler that is the same one (name) in both configs and
/// whose other keys did not change.
fn applies_live(key: &str, running: &Config, new: &Config, not_applied: &[String]) -> bool {
    let Some(rest) = key.strip_prefix("handlers[") else {
        return false;
    };
    let Some((index, field)) = rest.split_once("].") else {
        return false;
    };
    let Ok(index) = index.parse::<usize>() else {
        return false;
    };
    let field = field.split(['.', '[']).next().unwrap_or(field);
    let (Some(before), Some(after)) = (running.handlers.get(index), new.handlers.get(index)) else {
        return false;
    };
    matches!(
        field,
        "topics"
            | "filter"
            | "sample"
            | "fields"
            | "url"
            | "batch"
            | "max_wait"
            | "timeout"
            | "headers"
    ) && before.name == after.name
        && !not_applied.contains(&after.name)
}

fn producer_args(config: &Arc<Config>, brokers: &Brokers, handle: &ProducerHandle) -> ProducerArgs {
    ProducerArgs {
        config: config.clone(),
        brokers: brokers.clone(),
        handle: handle.clone(),
    }
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let producer = ProducerActor::spawn_supervised(
            myself.get_cell(),
            producer_args(&args.config, &args.brokers, &args.producer),
        )
        .await?;
        let pools = build_pools(&args.config);
        let (handlers, _) = Actor::spawn_linked(
            Some("handlers".to_owned()),
            HandlerSupervisor,
            HandlerSupervisorArgs {
                config: args.config.clone(),
                producer: args.producer.clone(),
                fatal: args.fatal.clone(),
                pools: pools.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        let (consumers, _) = Actor::spawn_linked(
            Some("consumers".to_owned()),
            ConsumerSupervisor,
            ConsumerSupervisorArgs {
                config: args.config.clone(),
                brokers: args.brokers.clone(),
                pools,
                producer: args.producer.clone(),
                fatal: args.fatal.clone(),
                health: args.health.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        Ok(RootState {
            restarts: Restarts::new(args.config.supervision.clone()),
            config: args.config,
            brokers: args.brokers,
            producer_handle: args.producer,
            producer: Some(producer),
            handlers,
            consumers,
            fatal: args.fatal,
            progress: args.progress,
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        message: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RootMsg::Shutdown(deadline, reply) => {
                state.stopping = true;
                let mut unfinished = Vec::new();
                *state.progress.lock() = "draining and committing consumers";
                match state
                    .consumers
                    .call(
                        // The consumers' own deadline comes first, so a member that
                        // cannot commit or close is named rather than timed out here.
                        |port| {
                            ConsumerSupervisorMsg::Shutdown(
                                deadline.reserving(AFTER_CONSUMERS + ANSWER_MARGIN),
                                port,
                            )
                        },
                        Some(deadline.left_before(AFTER_CONSUMERS)),
                    )
                    .await
                {
                    Ok(ractor::rpc::CallResult::Success(consumers)) => unfinished.extend(consumers),
                    _ => unfinished
                        .push("consumers did not drain, commit and close in time".to_owned()),
                }
                *state.progress.lock() = "stopping handlers";
                let stopped = state
                    .handlers
                    .call(
                        |port| HandlerSupervisorMsg::Shutdown(deadline, port),
                        Some(deadline.left_before(AFTER_HANDLERS)),
                    )
                    .await;
                if !matches!(stopped, Ok(ractor::rpc::CallResult::Success(()))) {
                    unfinished.push("handlers did not stop in time".to_owned());
                }
                *state.progress.lock() = "flushing the producer";
                match &state.producer {
                    Some(producer) => {
                        let budget = deadline.left_before(EXIT_MARGIN);
                        match producer
                            .call(
                                |reply| ProducerMsg::Flush(budget, reply),
                                Some(budget + Duration::from_millis(50)),
                            )
                            .await
                        {
                            Ok(ractor::rpc::CallResult::Success(0)) => {
                                tracing::info!("producer flushed")
                            }
                            Ok(ractor::rpc::CallResult::Success(left)) => unfinished
                                .push(format!("producer flush left {left} events unacknowledged")),
                            _ => unfinished.push("producer did not flush in time".to_owned()),
                        }
                    }
                    None => unfinished.push("no producer was running to flush".to_owned()),
                }
                *state.progress.lock() = "done";
                let _ = reply.send(unfinished);
            }
            RootMsg::Reload(config, reply) => {
                let mut changed = state.config.changed_keys(&config);
                for key in crate::config::reread_headers(&state.config, &config) {
                    if !changed.contains(&key) {
                        changed.push(key);
                    }
                }
                let rotated = rotate_login(&state.config, &config);
                // The handlers get the running config with only their live keys taken
                // from the new one, and it becomes the baseline of the next reload.
                let (mut effective, mut not_applied) =
                    state.config.with_live_handler_changes(&config);
                if !rotated.keys.is_empty() {
                    effective.kafka.security.username = config.kafka.security.username.clone();
                    effective.kafka.security.password = config.kafka.security.password.clone();
                    // A secret read from the same place shows no change in the compared
                    // config: only its value changed.
                    for key in &rotated.keys {
                        if !changed.contains(key) {
                            changed.push(key.clone());
                        }
                    }
                }
                let effective = Arc::new(effective);
                let answered = state
                    .handlers
                    .call(
                        |port| HandlerSupervisorMsg::Reload(effective.clone(), port),
                        Some(RELOAD_ANSWER),
                    )
                    .await;
                let handlers_answered = match answered {
                    Ok(ractor::rpc::CallResult::Success(names)) => {
                        not_applied.extend(names);
                        true
                    }
                    _ => false,
                };
                let mut report = ReloadReport::default();
                for key in changed {
                    if rotated.keys.contains(&key) {
                        match &rotated.refused {
                            None => report.applied.push(key),
                            Some(why) => report.partly_applied.push((key, why.clone())),
                        }
                    } else if applies_live(&key, &state.config, &config, &not_applied) {
                        if handlers_answered {
                            report.applied.push(key);
                        } else {
                            report.unconfirmed.push(key);
                        }
                    } else {
                        report.needs_restart.push(key);
                    }
                }
                // What the handlers were handed is the baseline of the next reload,
                // answered or not: comparing with it names again what did not apply.
                state.config = effective;
                let _ = reply.send(report);
            }
            RootMsg::RestartProducer => {
                if !state.stopping {
                    match ProducerActor::spawn_supervised(
                        myself.get_cell(),
                        producer_args(&state.config, &state.brokers, &state.producer_handle),
                    )
                    .await
                    {
                        Ok(producer) => state.producer = Some(producer),
                        Err(error) => {
                            tracing::error!(%error, "cannot restart the producer");
                            self.producer_down(&myself, state, &error.to_string());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".to_owned()))
            }
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        if state
            .producer
            .as_ref()
            .is_some_and(|p| p.get_id() == cell.get_id())
        {
            state.producer = None;
            self.producer_down(&myself, state, &reason);
        } else {
            let actor = cell.get_name().unwrap_or_else(|| "supervisor".to_owned());
            tracing::error!(actor, reason, "a supervisor stopped");
            let _ = state.fatal.send(Fatal::Meltdown {
                supervisor: "root".to_owned(),
                actor,
            });
        }
        Ok(())
    }
}

impl RootSupervisor {
    fn producer_down(&self, myself: &ActorRef<RootMsg>, state: &mut RootState, reason: &str) {
        match state.restarts.failed((), "producer", reason) {
            Verdict::RestartAfter(delay) => {
                myself.send_after(delay, || RootMsg::RestartProducer);
            }
            Verdict::Meltdown => {
                let _ = state.fatal.send(Fatal::Meltdown {
                    supervisor: "root".to_owned(),
                    actor: "producer".to_owned(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::security::SecurityConfig;

    fn secured(protocol: &str, mechanism: &str, password: &str) -> Config {
        let mut security: SecurityConfig = serde_json::from_value(serde_json::json!({
            "protocol": protocol,
            "sasl_mechanism": mechanism,
            "username": "eventd",
            "password": password,
        }))
        .expect("security section");
        assert!(security.resolve().is_empty());
        let mut config = Config::default();
        config.kafka.security = security;
        config
    }

    #[test]
    fn a_new_password_with_a_new_mechanism_or_protocol_waits_for_a_restart() {
        let running = secured("sasl_plaintext", "SCRAM-SHA-256", "old");
        for new in [
            secured("sasl_plaintext", "SCRAM-SHA-512", "new"),
            secured("sasl_ssl", "SCRAM-SHA-256", "new"),
            secured("sasl_plaintext", "SCRAM-SHA-256", "old"),
        ] {
            assert_eq!(rotate_login(&running, &new).keys, Vec::<String>::new());
        }
    }

    #[test]
    fn a_new_tls_file_path_is_a_change_that_needs_a_restart() {
        let running = secured("sasl_ssl", "SCRAM-SHA-256", "same");
        let mut new = running.clone();
        new.kafka.security.ca = Some("/etc/eventd/new-ca.pem".into());
        let changed = running.changed_keys(&new);
        assert_eq!(changed, ["kafka.security.ca"]);
        assert!(rotate_login(&running, &new).keys.is_empty());
        assert!(!applies_live("kafka.security.ca", &running, &new, &[]));
    }
}
