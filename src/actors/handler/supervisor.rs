//! The HandlerSupervisor: builds one pool per `[[handlers]]` entry, spawns an actor per
//! slot, restarts failed actors with backoff and ends the daemon on a meltdown.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use super::kinds::SlotMemory;
use super::{Failures, HandlerActor, HandlerArgs, HandlerPool, HandlerSettings};
use crate::actors::producer::ProducerHandle;
use crate::actors::supervision::Restarts;
use crate::actors::{Deadline, Fatal, FatalSender};
use crate::config::{Config, SupervisionConfig};
use crate::telemetry::metrics::HANDLER_PANICS;

pub struct HandlerSupervisor;

pub struct HandlerSupervisorArgs {
    pub config: Arc<Config>,
    pub producer: ProducerHandle,
    pub fatal: FatalSender,
    /// Pools built by the caller so consumers can route to them from the start.
    pub pools: Vec<Arc<HandlerPool>>,
}

/// Position of a child: pool index and slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Role {
    handler: usize,
    slot: usize,
}

pub struct HandlerSupervisorState {
    pools: Vec<Arc<HandlerPool>>,
    memories: HashMap<Role, SlotMemory>,
    /// Failed attempts per slot, kept across its actors.
    failures: HashMap<Role, Arc<Failures>>,
    producer: ProducerHandle,
    /// Dead-letter topic per pool.
    dead_letters: Vec<Option<String>>,
    children: HashMap<ActorId, Role>,
    /// Restart backoff per slot; the restart budget is each slot's panic streak.
    restarts: Restarts<Role>,
    settings: SupervisionConfig,
    fatal: FatalSender,
    stopping: bool,
}

/// Messages of the HandlerSupervisor.
pub enum HandlerSupervisorMsg {
    /// Start a new actor in a slot whose actor failed; sent after the backoff.
    Restart { handler: usize, slot: usize },
    /// Apply the reloadable settings (topics, filter, sample, fields) of `config`;
    /// replies with the handlers (names) it could not apply to without a restart.
    Reload(Arc<Config>, RpcReplyPort<Vec<String>>),
    /// Stop every handler actor by the deadline and reply; failures from now on are
    /// not restarted.
    Shutdown(Deadline, RpcReplyPort<()>),
}

/// Builds the pools of `config`, one per `[[handlers]]` entry.
pub fn build_pools(config: &Config) -> Vec<Arc<HandlerPool>> {
    config
        .handlers
        .iter()
        .enumerate()
        .map(|(index, handler)| Arc::new(HandlerPool::new(index, config, handler)))
        .collect()
}

impl HandlerSupervisor {
    async fn spawn_slot(
        myself: &ActorRef<HandlerSupervisorMsg>,
        state: &mut HandlerSupervisorState,
        role: Role,
    ) -> Result<(), ActorProcessingErr> {
        let pool = state.pools[role.handler].clone();
        let memory = state
            .memories
            .get(&role)
            .cloned()
            .unwrap_or(SlotMemory::None);
        let (actor, _) = Actor::spawn_linked(
            Some(format!("handler/{}/{}", pool.name, role.slot)),
            HandlerActor,
            HandlerArgs {
                pool: pool.clone(),
                slot: role.slot,
                producer: state.producer.clone(),
                memory,
                failures: state.failures.entry(role).or_default().clone(),
                dead_letter: state.dead_letters[role.handler].clone(),
            },
            myself.get_cell(),
        )
        .await?;
        state.children.insert(actor.get_id(), role);
        pool.slots[role.slot].install(actor);
        Ok(())
    }

    fn on_child_down(
        myself: &ActorRef<HandlerSupervisorMsg>,
        state: &mut HandlerSupervisorState,
        cell: &ActorCell,
        reason: &str,
        failed: bool,
    ) {
        let Some(role) = state.children.remove(&cell.get_id()) else {
            return;
        };
        let failures = state.failures.entry(role).or_default().clone();
        if !failed {
            failures.actor_stopped();
        }
        if state.stopping {
            return;
        }
        if !failed {
            // Stopped without a panic while the daemon runs: no attempt of any event,
            // so it comes back at once and costs nothing of the budget.
            tracing::warn!(handler = %state.pools[role.handler].name, slot = role.slot, reason,
                "handler actor stopped; starting it again");
            let _ = myself.send_message(HandlerSupervisorMsg::Restart {
                handler: role.handler,
                slot: role.slot,
            });
            return;
        }
        // Only a panic fails a handler actor: every other failure of its work parks
        // the event's key and backs off inside the actor.
        let max_attempts = state.pools[role.handler].config.retry.max_attempts;
        let panic = failures.actor_failed(reason, max_attempts);
        Self::slot_failed(myself, state, role, reason, panic);
    }

    /// A slot's actor panicked (or could not be started): restart it after its backoff,
    /// or end the daemon when it panicked on `supervision.max_restarts` events in a row
    /// with no success between them (`streak`): then the handler itself is broken. The
    /// backoff starts over once the handler `recovered` (succeeded since its last
    /// panic), and keeps growing while one event panics it again and again.
    fn slot_failed(
        myself: &ActorRef<HandlerSupervisorMsg>,
        state: &mut HandlerSupervisorState,
        role: Role,
        reason: &str,
        (streak, recovered): (usize, bool),
    ) {
        let name = state.pools[role.handler].name.clone();
        let actor = format!("handler/{name}/{}", role.slot);
        metrics::counter!(HANDLER_PANICS, "handler" => name.to_string()).increment(1);
        if streak >= state.settings.max_restarts {
            tracing::error!(handler = %name, slot = role.slot, reason, events_in_a_row = streak,
                "handler actor panicked on event after event with no success between them, giving up");
            let _ = state.fatal.send(Fatal::Meltdown {
                supervisor: "handlers".to_owned(),
                actor,
            });
            return;
        }
        tracing::warn!(handler = %name, slot = role.slot, reason, events_in_a_row = streak,
            "handler actor panicked");
        let delay = state
            .restarts
            .delay(role, &format!("handler/{name}"), reason, recovered);
        myself.send_after(delay, move || HandlerSupervisorMsg::Restart {
            handler: role.handler,
            slot: role.slot,
        });
    }
}

impl Actor for HandlerSupervisor {
    type Msg = HandlerSupervisorMsg;
    type State = HandlerSupervisorState;
    type Arguments = HandlerSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HandlerSupervisorMsg>,
        args: HandlerSupervisorArgs,
    ) -> Result<HandlerSupervisorState, ActorProcessingErr> {
        let mut memories = HashMap::new();
        for pool in &args.pools {
            let shared = SlotMemory::for_pool(pool);
            for slot in 0..pool.slots.len() {
                memories.insert(
                    Role {
                        handler: pool.index,
                        slot,
                    },
                    SlotMemory::for_slot(pool.kind, &shared),
                );
            }
        }
        let dead_letters = args
            .pools
            .iter()
            .map(|pool| args.config.handler_dead_letter(&pool.config).cloned())
            .collect();
        let mut state = HandlerSupervisorState {
            pools: args.pools,
            memories,
            failures: HashMap::new(),
            producer: args.producer,
            dead_letters,
            children: HashMap::new(),
            restarts: Restarts::new(args.config.supervision.clone()),
            settings: args.config.supervision.clone(),
            fatal: args.fatal,
            stopping: false,
        };
        let roles: Vec<Role> = state
            .pools
            .iter()
            .flat_map(|pool| {
                (0..pool.slots.len()).map(|slot| Role {
                    handler: pool.index,
                    slot,
                })
            })
            .collect();
        for role in roles {
            Self::spawn_slot(&myself, &mut state, role).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<HandlerSupervisorMsg>,
        message: HandlerSupervisorMsg,
        state: &mut HandlerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HandlerSupervisorMsg::Restart { handler, slot } => {
                if !state.stopping {
                    let role = Role { handler, slot };
                    if let Err(error) = Self::spawn_slot(&myself, state, role).await {
                        let reason = format!("cannot start handler actor: {error}");
                        let max_attempts = state.pools[handler].config.retry.max_attempts;
                        let panic = state
                            .failures
                            .entry(role)
                            .or_default()
                            .actor_failed(&reason, max_attempts);
                        Self::slot_failed(&myself, state, role, &reason, panic);
                    }
                }
            }
            HandlerSupervisorMsg::Reload(config, reply) => {
                let _ = reply.send(apply_reload(&state.pools, &state.memories, &config));
            }
            HandlerSupervisorMsg::Shutdown(deadline, reply) => {
                state.stopping = true;
                myself
                    .stop_children_and_wait(
                        None,
                        Some(deadline.left_before(crate::waits::AFTER_HANDLERS)),
                    )
                    .await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<HandlerSupervisorMsg>,
        event: SupervisionEvent,
        state: &mut HandlerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                Self::on_child_down(&myself, state, &cell, &error.to_string(), true);
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let reason = reason.unwrap_or_else(|| "stopped".to_owned());
                Self::on_child_down(&myself, state, &cell, &reason, false);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Applies to running handlers what can change live (`topics`, `filter`, `sample`,
/// `fields`, and a webhook's `url`, `batch`, `max_wait`, `timeout` and `headers`)
/// where nothing else of the handler changed; returns the names of the handlers it
/// could not apply to.
fn apply_reload(
    pools: &[Arc<HandlerPool>],
    memories: &HashMap<Role, SlotMemory>,
    config: &Config,
) -> Vec<String> {
    let mut not_applied = Vec::new();
    for pool in pools {
        match config.handlers.iter().find(|h| *h.name == *pool.name) {
            Some(handler)
                if handler.kind == pool.kind
                    && handler.consumer == pool.consumer
                    && handler.concurrency == pool.slots.len()
                    && handler.output == pool.config.output
                    && handler.group_by == pool.config.group_by
                    && handler.window == pool.config.window =>
            {
                pool.settings
                    .store(Arc::new(HandlerSettings::from_config(config, handler)));
                // Every slot of a pool shares one target.
                let role = Role {
                    handler: pool.index,
                    slot: 0,
                };
                if let Some(SlotMemory::Webhook(target)) = memories.get(&role) {
                    target.reconfigure(handler);
                }
            }
            _ => not_applied.push(pool.name.to_string()),
        }
    }
    not_applied
}
