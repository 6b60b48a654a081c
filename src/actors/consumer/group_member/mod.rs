//! A GroupMember: one librdkafka consumer in the consumer group of a `mode = "group"`
//! entry. It runs one PartitionWorker per assigned partition and hands partitions back
//! through `handback` when the group revokes them or the daemon stops.

use std::collections::HashMap;
use std::sync::{mpsc, Arc};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rdkafka::consumer::Consumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Message, OwnedMessage};

use super::context::{
    ConsumerClient, EventdContext, FinalCommit, KafkaConsumer, KafkaPartitionQueue, Lifecycle,
    MainQueueEvent,
};
use super::handback::{hand_back, OwnedPartition};
use super::partition_worker::{PartitionWorker, PartitionWorkerArgs, PartitionWorkerMsg};
use super::ConsumerShared;
use crate::actors::Deadline;
use crate::config::ConsumerConfig;
use crate::kafka::consumer_config;
use crate::telemetry::metrics::CONSUMER_FENCED;
use crate::waits::{CLOSE_RESERVE, HANDBACK_RESERVE};

pub struct GroupMember;

pub struct GroupMemberArgs {
    pub shared: ConsumerShared,
    pub consumer: ConsumerConfig,
    pub index: usize,
}

/// A partition the group just gave this member, with its split-off queue.
pub struct AssignedPartition {
    pub topic: String,
    pub partition: i32,
    pub queue: KafkaPartitionQueue,
}

/// Messages of a GroupMember.
pub enum GroupMemberMsg {
    /// The group assigned these partitions; start a worker for each.
    Assigned(Vec<AssignedPartition>),
    /// The group revokes these partitions; hand them back, then signal `done`
    /// (the rebalance callback waits on it).
    Revoke {
        partitions: Vec<(String, i32)>,
        done: mpsc::Sender<()>,
    },
    /// An event that arrived on the main queue; its worker takes it.
    Stray(OwnedMessage),
    /// The client failed for good (fenced, ...): the member fails and is restarted.
    ClientFailed {
        code: RDKafkaErrorCode,
        reason: String,
    },
    /// Hand every partition back, commit, leave the group and close, by the deadline;
    /// reply whether the client closed in time.
    Shutdown(Deadline, RpcReplyPort<bool>),
}

pub struct GroupMemberState {
    shared: ConsumerShared,
    consumer: ConsumerConfig,
    name: String,
    /// `group.instance.id` with static membership.
    instance_id: Option<String>,
    client: ConsumerClient,
    workers: HashMap<(String, i32), ActorRef<PartitionWorkerMsg>>,
}

/// Runs however the actor ends (ractor skips `post_stop` after a failure): stop the
/// workers, and with them and the client gone the member leaves the group instead of
/// holding partitions nobody reads.
impl Drop for GroupMemberState {
    fn drop(&mut self) {
        for worker in self.workers.values() {
            worker.stop(Some("group member stopped".to_owned()));
        }
    }
}

impl GroupMemberState {
    fn take_workers(&mut self, partitions: &[(String, i32)]) -> Vec<OwnedPartition> {
        partitions
            .iter()
            .filter_map(|(topic, partition)| {
                self.workers
                    .remove(&(topic.clone(), *partition))
                    .map(|worker| OwnedPartition {
                        topic: topic.clone(),
                        partition: *partition,
                        worker,
                    })
            })
            .collect()
    }
}

impl Actor for GroupMember {
    type Msg = GroupMemberMsg;
    type State = GroupMemberState;
    type Arguments = GroupMemberArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GroupMemberMsg>,
        args: GroupMemberArgs,
    ) -> Result<GroupMemberState, ActorProcessingErr> {
        let consumer = args.consumer;
        let shared = args.shared;
        let name = format!("{}/{}", consumer.name, args.index);
        let group_id = consumer.group_id();
        let instance_id = consumer.static_membership.then(|| {
            format!(
                "{}-{}-{}",
                shared.config.kafka.client_id, consumer.name, args.index
            )
        });
        let lifecycle = Arc::new(Lifecycle::default());
        let context = EventdContext::new(
            Arc::from(consumer.name.as_str()),
            Some(myself.clone()),
            consumer.drain_timeout + HANDBACK_RESERVE,
            lifecycle.clone(),
            Some(shared.health.starting()),
        );
        let client: KafkaConsumer = consumer_config(
            &shared.config,
            &shared.brokers,
            &consumer,
            Some(&group_id),
            instance_id.as_deref(),
        )
        .create_with_context(context)?;
        let client = Arc::new(client);
        EventdContext::attach(&client);
        crate::kafka::login::LOGINS.register(&client);
        let topics: Vec<&str> = consumer.topics.iter().map(String::as_str).collect();
        client.subscribe(&topics)?;
        let events_to = myself.clone();
        let client = ConsumerClient::start(name.clone(), client, lifecycle, move |event| {
            let _ = events_to.send_message(match event {
                MainQueueEvent::Stray(message) => GroupMemberMsg::Stray(message),
                MainQueueEvent::Fatal { code, reason } => {
                    GroupMemberMsg::ClientFailed { code, reason }
                }
            });
        })?;
        tracing::info!(member = %name, group_id, ?topics, "group member started");
        Ok(GroupMemberState {
            shared,
            consumer,
            name,
            instance_id,
            client,
            workers: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<GroupMemberMsg>,
        message: GroupMemberMsg,
        state: &mut GroupMemberState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GroupMemberMsg::Assigned(partitions) => {
                let Some(client) = state.client.consumer().cloned() else {
                    return Ok(());
                };
                for assigned in partitions {
                    let key = (assigned.topic.clone(), assigned.partition);
                    // A new worker starts only once the old one for the partition is gone.
                    if let Some(old) = state.workers.remove(&key) {
                        old.stop_and_wait(None, Some(HANDBACK_RESERVE)).await?;
                    }
                    let (worker, _) = Actor::spawn_linked(
                        None,
                        PartitionWorker,
                        PartitionWorkerArgs {
                            consumer_name: Arc::from(state.consumer.name.as_str()),
                            topic: Arc::from(assigned.topic.as_str()),
                            partition: assigned.partition,
                            queue: assigned.queue,
                            client: client.clone(),
                            router: state.shared.router.clone(),
                            producer: state.shared.producer.clone(),
                            dead_letter: state.shared.config.dead_letter.topic.clone(),
                            max_in_flight: state.consumer.max_in_flight,
                            store_offsets: true,
                            lag_interval: state.shared.config.metrics.lag_interval,
                            stall_timeout: state.shared.config.health.stall_timeout,
                            // The group's membership shows this process.
                            heartbeat: None,
                        },
                        myself.get_cell(),
                    )
                    .await?;
                    state.workers.insert(key, worker);
                }
            }
            GroupMemberMsg::Revoke { partitions, done } => {
                let owned = state.take_workers(&partitions);
                hand_back(
                    &state.name,
                    owned,
                    &state.shared.router,
                    state.consumer.drain_timeout,
                )
                .await;
                let _ = done.send(());
            }
            GroupMemberMsg::ClientFailed { code, reason } => {
                if code == RDKafkaErrorCode::FencedInstanceId {
                    metrics::counter!(CONSUMER_FENCED, "consumer" => state.consumer.name.clone())
                        .increment(1);
                    tracing::error!(member = %state.name, instance_id = state.instance_id.as_deref().unwrap_or(""),
                        reason, "static member fenced: another consumer joined with the same group.instance.id; \
                        give each instance its own kafka.client_id (e.g. \"eventd-${{HOSTNAME}}\" in a StatefulSet)");
                } else {
                    tracing::error!(member = %state.name, ?code, reason, "consumer failed for good, restarting it");
                }
                return Err(format!("consumer of {} failed: {reason}", state.name).into());
            }
            GroupMemberMsg::Stray(message) => {
                let key = (message.topic().to_owned(), message.partition());
                if let Some(worker) = state.workers.get(&key) {
                    let _ = worker.send_message(PartitionWorkerMsg::Stray(message));
                }
            }
            GroupMemberMsg::Shutdown(deadline, reply) => {
                // A revoke from now on (another member leaving) must not wait on this
                // actor, which is busy here: this hand-back covers every partition.
                state.client.shutting_down();
                let all: Vec<(String, i32)> = state.workers.keys().cloned().collect();
                let owned = state.take_workers(&all);
                hand_back(
                    &state.name,
                    owned,
                    &state.shared.router,
                    state
                        .consumer
                        .drain_timeout
                        .min(deadline.left_before(CLOSE_RESERVE)),
                )
                .await;
                let closed = state.client.close(FinalCommit::Stored, deadline).await;
                let _ = reply.send(closed);
                myself.stop(Some("shutdown".to_owned()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<GroupMemberMsg>,
        event: SupervisionEvent,
        state: &mut GroupMemberState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            state
                .workers
                .retain(|_, worker| worker.get_id() != cell.get_id());
            // The member restarts as a whole: it rejoins and resumes from committed offsets.
            return Err(format!("partition worker of {} failed: {error}", state.name).into());
        }
        Ok(())
    }
}
