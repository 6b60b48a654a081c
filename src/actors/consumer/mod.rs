//! Consumer side of the tree: the ConsumerSupervisor runs one child per `[[consumers]]`
//! entry: `members` GroupMembers (mode = "group"), or one PartitionConsumer per topic
//! partition (mode = "partitions"). Both hand each partition to a PartitionWorker.

mod context;
pub mod group_member;
mod handback;
pub mod partition_consumer;
pub mod partition_worker;

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use rdkafka::consumer::{BaseConsumer, Consumer};

use self::group_member::{GroupMember, GroupMemberArgs, GroupMemberMsg};
use self::partition_consumer::{PartitionConsumer, PartitionConsumerArgs, PartitionConsumerMsg};
use crate::actors::handler::{HandlerPool, Router};
use crate::actors::producer::ProducerHandle;
use crate::actors::supervision::{Restarts, Verdict};
use crate::actors::{Deadline, Fatal, FatalSender};
use crate::config::{Config, ConsumerMode};
use crate::kafka::{explain_failure, plain_config, Brokers, Diagnosis};
use crate::telemetry::Health;

/// What every consumer child needs besides its own config.
#[derive(Clone)]
pub struct ConsumerShared {
    pub config: Arc<Config>,
    pub brokers: Brokers,
    pub router: Router,
    pub producer: ProducerHandle,
    pub health: Arc<Health>,
}

pub struct ConsumerSupervisor;

pub struct ConsumerSupervisorArgs {
    pub config: Arc<Config>,
    pub brokers: Brokers,
    pub pools: Vec<Arc<HandlerPool>>,
    pub producer: ProducerHandle,
    pub fatal: FatalSender,
    pub health: Arc<Health>,
}

/// What a child is, so a failed one can be started again the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Role {
    Member {
        consumer: usize,
        index: usize,
    },
    Partition {
        consumer: usize,
        topic: String,
        partition: i32,
    },
}

enum Child {
    Member(ActorRef<GroupMemberMsg>),
    Partition(ActorRef<PartitionConsumerMsg>),
}

pub struct ConsumerSupervisorState {
    config: Arc<Config>,
    brokers: Brokers,
    pools: Vec<Arc<HandlerPool>>,
    producer: ProducerHandle,
    children: HashMap<ActorId, (Role, Child)>,
    restarts: Restarts<Role>,
    fatal: FatalSender,
    health: Arc<Health>,
    stopping: bool,
}

/// Messages of the ConsumerSupervisor.
pub enum ConsumerSupervisorMsg {
    /// Start a failed child again; sent after its backoff.
    Restart(RoleToken),
    /// Drain, commit and close every consumer by the deadline, then reply with the
    /// ones that did not finish in time.
    Shutdown(Deadline, RpcReplyPort<Vec<String>>),
}

/// A child's role, opaque outside this module.
pub struct RoleToken(Role);

impl ConsumerSupervisor {
    async fn spawn(
        myself: &ActorRef<ConsumerSupervisorMsg>,
        state: &mut ConsumerSupervisorState,
        role: Role,
    ) -> Result<(), ActorProcessingErr> {
        let index = match &role {
            Role::Member { consumer, .. } | Role::Partition { consumer, .. } => *consumer,
        };
        let consumer = state.config.consumers[index].clone();
        let shared = ConsumerShared {
            config: state.config.clone(),
            brokers: state.brokers.clone(),
            router: Router::for_consumer(&state.pools, &consumer.name),
            producer: state.producer.clone(),
            health: state.health.clone(),
        };
        let child = match &role {
            Role::Member { index, .. } => {
                let (actor, _) = Actor::spawn_linked(
                    None,
                    GroupMember,
                    GroupMemberArgs {
                        shared,
                        consumer,
                        index: *index,
                    },
                    myself.get_cell(),
                )
                .await?;
                Child::Member(actor)
            }
            Role::Partition {
                topic, partition, ..
            } => {
                let (actor, _) = Actor::spawn_linked(
                    None,
                    PartitionConsumer,
                    PartitionConsumerArgs {
                        shared,
                        consumer,
                        topic: topic.clone(),
                        partition: *partition,
                    },
                    myself.get_cell(),
                )
                .await?;
                Child::Partition(actor)
            }
        };
        let id = match &child {
            Child::Member(actor) => actor.get_id(),
            Child::Partition(actor) => actor.get_id(),
        };
        state.children.insert(id, (role, child));
        Ok(())
    }

    fn on_child_down(
        myself: &ActorRef<ConsumerSupervisorMsg>,
        state: &mut ConsumerSupervisorState,
        cell: &ActorCell,
        reason: &str,
    ) {
        let Some((role, _)) = state.children.remove(&cell.get_id()) else {
            return;
        };
        if !state.stopping {
            Self::restart_or_give_up(myself, state, role, reason);
        }
    }

    fn restart_or_give_up(
        myself: &ActorRef<ConsumerSupervisorMsg>,
        state: &mut ConsumerSupervisorState,
        role: Role,
        reason: &str,
    ) {
        let actor = role.actor_label(&state.config);
        match state.restarts.failed(role.clone(), &actor, reason) {
            Verdict::RestartAfter(delay) => {
                myself.send_after(delay, move || {
                    ConsumerSupervisorMsg::Restart(RoleToken(role))
                });
            }
            Verdict::Meltdown => {
                let _ = state.fatal.send(Fatal::Meltdown {
                    supervisor: "consumers".to_owned(),
                    actor,
                });
            }
        }
    }
}

impl Role {
    fn actor_label(&self, config: &Config) -> String {
        match self {
            Role::Member { consumer, .. } => {
                format!("group_member/{}", config.consumers[*consumer].name)
            }
            Role::Partition { consumer, .. } => {
                format!("partition_consumer/{}", config.consumers[*consumer].name)
            }
        }
    }
}

/// Partition counts of `topics`, for manual assignment.
fn partitions_of(
    config: &Config,
    brokers: &Brokers,
    topics: &[String],
) -> Result<Vec<(String, i32)>, ActorProcessingErr> {
    let client: BaseConsumer<Diagnosis> =
        plain_config(config, brokers).create_with_context(Diagnosis::default())?;
    let mut partitions = Vec::new();
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(topic), crate::waits::METADATA_TIMEOUT)
            .map_err(|error| explain_failure(&client, &error))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| format!("topic {topic:?} does not exist"))?;
        partitions.extend(found.partitions().iter().map(|p| (topic.clone(), p.id())));
    }
    Ok(partitions)
}

impl Actor for ConsumerSupervisor {
    type Msg = ConsumerSupervisorMsg;
    type State = ConsumerSupervisorState;
    type Arguments = ConsumerSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerSupervisorMsg>,
        args: ConsumerSupervisorArgs,
    ) -> Result<ConsumerSupervisorState, ActorProcessingErr> {
        let mut state = ConsumerSupervisorState {
            restarts: Restarts::new(args.config.supervision.clone()),
            config: args.config,
            brokers: args.brokers,
            pools: args.pools,
            producer: args.producer,
            children: HashMap::new(),
            fatal: args.fatal,
            health: args.health,
            stopping: false,
        };
        let mut roles = Vec::new();
        for (index, consumer) in state.config.consumers.iter().enumerate() {
            match consumer.mode {
                ConsumerMode::Group => {
                    roles.extend((0..consumer.members()).map(|member| Role::Member {
                        consumer: index,
                        index: member,
                    }));
                }
                ConsumerMode::Partitions => {
                    let (config, brokers, topics) = (
                        state.config.clone(),
                        state.brokers.clone(),
                        consumer.topics.clone(),
                    );
                    let found = tokio::task::spawn_blocking(move || {
                        partitions_of(&config, &brokers, &topics)
                    })
                    .await??;
                    roles.extend(found.into_iter().map(|(topic, partition)| Role::Partition {
                        consumer: index,
                        topic,
                        partition,
                    }));
                }
            }
        }
        for role in roles {
            Self::spawn(&myself, &mut state, role).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<ConsumerSupervisorMsg>,
        message: ConsumerSupervisorMsg,
        state: &mut ConsumerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConsumerSupervisorMsg::Restart(RoleToken(role)) => {
                if !state.stopping {
                    if let Err(error) = Self::spawn(&myself, state, role.clone()).await {
                        // Counts as another failure of the same child.
                        Self::restart_or_give_up(
                            &myself,
                            state,
                            role,
                            &format!("cannot start: {error}"),
                        );
                    }
                }
            }
            ConsumerSupervisorMsg::Shutdown(deadline, reply) => {
                state.stopping = true;
                let patience = Some(deadline.left());
                let config = state.config.clone();
                let calls = state.children.values().map(|(role, child)| {
                    let label = role.actor_label(&config);
                    async move {
                        let answered = match child {
                            Child::Member(actor) => actor
                                .call(|port| GroupMemberMsg::Shutdown(deadline, port), patience)
                                .await
                                .map_err(|error| error.to_string()),
                            Child::Partition(actor) => actor
                                .call(
                                    |port| PartitionConsumerMsg::Shutdown(deadline, port),
                                    patience,
                                )
                                .await
                                .map_err(|error| error.to_string()),
                        };
                        match answered {
                            Ok(ractor::rpc::CallResult::Success(true)) => None,
                            Ok(ractor::rpc::CallResult::Success(false)) => {
                                Some(format!("{label}: commit or close did not finish in time"))
                            }
                            Ok(_) => Some(format!("{label}: did not finish in time")),
                            Err(error) => Some(format!("{label}: {error}")),
                        }
                    }
                });
                let unfinished: Vec<String> = futures::future::join_all(calls)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                let _ = reply.send(unfinished);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ConsumerSupervisorMsg>,
        event: SupervisionEvent,
        state: &mut ConsumerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                Self::on_child_down(&myself, state, &cell, &error.to_string())
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let reason = reason.unwrap_or_else(|| "stopped".to_owned());
                Self::on_child_down(&myself, state, &cell, &reason);
            }
            _ => {}
        }
        Ok(())
    }
}
