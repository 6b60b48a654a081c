//! A PartitionConsumer: one per topic partition of a `mode = "partitions"` entry. It
//! assigns its partition by hand (no group balancing, so every instance of eventd sees
//! every event) from the configured start, or from the position committed under
//! `commit_group` when there is one, and runs one PartitionWorker for it. No group
//! membership shows such a consumer, so under `commit_group` its commits name the
//! process (`kafka::holder`), also while idle, and its last one says it stopped.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};

use super::context::{
    ConsumerClient, EventdContext, FinalCommit, KafkaConsumer, Lifecycle, MainQueueEvent,
};
use super::handback::{hand_back, OwnedPartition};
use super::partition_worker::{
    CommitHeartbeat, FinalPosition, PartitionWorker, PartitionWorkerArgs, PartitionWorkerMsg,
};
use super::ConsumerShared;
use crate::actors::Deadline;
use crate::config::{ConsumerConfig, NamedStart, StartPosition};
use crate::kafka::consumer_config;
use crate::kafka::holder::OffsetHolder;
use crate::waits::{CLOSE_RESERVE, METADATA_TIMEOUT};

pub struct PartitionConsumer;

pub struct PartitionConsumerArgs {
    pub shared: ConsumerShared,
    pub consumer: ConsumerConfig,
    pub topic: String,
    pub partition: i32,
}

/// Messages of a PartitionConsumer.
pub enum PartitionConsumerMsg {
    /// An event that arrived on the main queue; the worker takes it.
    Stray(OwnedMessage),
    /// The client failed for good: the consumer fails and is restarted.
    ClientFailed(String),
    /// Hand the partition back, commit when committing, close, by the deadline; reply
    /// whether the client closed in time.
    Shutdown(Deadline, RpcReplyPort<bool>),
}

pub struct PartitionConsumerState {
    shared: ConsumerShared,
    consumer: ConsumerConfig,
    name: String,
    topic: String,
    partition: i32,
    client: ConsumerClient,
    worker: Option<ActorRef<PartitionWorkerMsg>>,
    /// The offset committed under `commit_group` when the partition was assigned: the
    /// final commit's offset if the worker stored none since.
    committed_at_start: Option<i64>,
}

/// Runs however the actor ends (ractor skips `post_stop` after a failure).
impl Drop for PartitionConsumerState {
    fn drop(&mut self) {
        if let Some(worker) = &self.worker {
            worker.stop(Some("partition consumer stopped".to_owned()));
        }
    }
}

/// The offset committed under `commit_group`, if any.
fn committed_offset(
    client: &KafkaConsumer,
    consumer: &ConsumerConfig,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, ActorProcessingErr> {
    if consumer.commit_group.is_none() {
        return Ok(None);
    }
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed = client.committed_offsets(list, METADATA_TIMEOUT)?;
    Ok(
        match committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(offset)) => Some(offset),
            _ => None,
        },
    )
}

/// The offset to start from: the committed one when there is one, else `start`.
fn start_offset(
    client: &KafkaConsumer,
    consumer: &ConsumerConfig,
    topic: &str,
    partition: i32,
    committed: Option<i64>,
) -> Result<Offset, ActorProcessingErr> {
    let timeout = METADATA_TIMEOUT;
    if let Some(offset) = committed {
        return Ok(Offset::Offset(offset));
    }
    Ok(match &consumer.start {
        StartPosition::Named(NamedStart::Earliest) => Offset::Beginning,
        StartPosition::Named(NamedStart::Latest) => Offset::End,
        StartPosition::Offset { offset } => Offset::Offset(*offset),
        StartPosition::Timestamp { timestamp } => {
            let millis = chrono::DateTime::parse_from_rfc3339(timestamp)?.timestamp_millis();
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(topic, partition, Offset::Offset(millis))?;
            let found = client.offsets_for_times(list, timeout)?;
            match found.find_partition(topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(offset)) => Offset::Offset(offset),
                // No event at or after the time yet: start with the next one written.
                _ => Offset::End,
            }
        }
    })
}

impl Actor for PartitionConsumer {
    type Msg = PartitionConsumerMsg;
    type State = PartitionConsumerState;
    type Arguments = PartitionConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PartitionConsumerMsg>,
        args: PartitionConsumerArgs,
    ) -> Result<PartitionConsumerState, ActorProcessingErr> {
        let PartitionConsumerArgs {
            shared,
            consumer,
            topic,
            partition,
        } = args;
        let name = format!("{}/{topic}/{partition}", consumer.name);
        let lifecycle = Arc::new(Lifecycle::default());
        let context = EventdContext::new(
            Arc::from(consumer.name.as_str()),
            None,
            Duration::ZERO,
            lifecycle.clone(),
            // Consuming starts in pre_start, before the tree reports it is up.
            None,
        );
        // librdkafka assigns only with a group id; without commit_group it names no
        // group anyone joins, and nothing is committed under it.
        let group_id = consumer.commit_group.clone().unwrap_or_else(|| {
            format!(
                "{}-{}-uncommitted",
                shared.config.kafka.client_id, consumer.name
            )
        });
        let mut settings = consumer_config(
            &shared.config,
            &shared.brokers,
            &consumer,
            Some(&group_id),
            None,
        );
        if consumer.commit_group.is_none() {
            settings.set("enable.auto.commit", "false");
        }
        let client: KafkaConsumer = settings.create_with_context(context)?;
        let client = Arc::new(client);
        crate::kafka::login::LOGINS.register(&client);
        let (start, committed_at_start) = {
            let (client, consumer, topic) = (client.clone(), consumer.clone(), topic.clone());
            tokio::task::spawn_blocking(move || {
                let committed = committed_offset(&client, &consumer, &topic, partition)?;
                start_offset(&client, &consumer, &topic, partition, committed)
                    .map(|start| (start, committed))
            })
            .await??
        };
        // Split before assigning, so no fetched event can land on the main queue first.
        let queue = client
            .split_partition_queue(&topic, partition)
            .ok_or_else(|| format!("cannot read {topic}/{partition}"))?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, partition, start)?;
        client.assign(&assignment)?;
        let (worker, _) = Actor::spawn_linked(
            None,
            PartitionWorker,
            PartitionWorkerArgs {
                consumer_name: Arc::from(consumer.name.as_str()),
                topic: Arc::from(topic.as_str()),
                partition,
                queue,
                client: client.clone(),
                router: shared.router.clone(),
                producer: shared.producer.clone(),
                dead_letter: shared.config.dead_letter.topic.clone(),
                max_in_flight: consumer.max_in_flight,
                store_offsets: consumer.commit_group.is_some(),
                lag_interval: shared.config.metrics.lag_interval,
                stall_timeout: shared.config.health.stall_timeout,
                heartbeat: consumer.commit_group.is_some().then_some(CommitHeartbeat {
                    every: consumer.commit_interval,
                    committed_at_start,
                }),
            },
            myself.get_cell(),
        )
        .await?;
        let events_to = myself.clone();
        let client = ConsumerClient::start(name.clone(), client, lifecycle, move |event| {
            let _ = events_to.send_message(match event {
                MainQueueEvent::Stray(message) => PartitionConsumerMsg::Stray(message),
                MainQueueEvent::Fatal { reason, .. } => PartitionConsumerMsg::ClientFailed(reason),
            });
        })?;
        tracing::info!(consumer = %consumer.name, %topic, partition, ?start, "partition consumer started");
        Ok(PartitionConsumerState {
            shared,
            consumer,
            name,
            topic,
            partition,
            client,
            worker: Some(worker),
            committed_at_start,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PartitionConsumerMsg>,
        message: PartitionConsumerMsg,
        state: &mut PartitionConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PartitionConsumerMsg::Stray(message) => {
                if let Some(worker) = &state.worker {
                    let _ = worker.send_message(PartitionWorkerMsg::Stray(message));
                }
            }
            PartitionConsumerMsg::ClientFailed(reason) => {
                tracing::error!(consumer = %state.name, reason, "consumer failed for good, restarting it");
                return Err(format!("consumer of {} failed: {reason}", state.name).into());
            }
            PartitionConsumerMsg::Shutdown(deadline, reply) => {
                let owned: Vec<OwnedPartition> = state
                    .worker
                    .take()
                    .map(|worker| OwnedPartition {
                        topic: state.topic.clone(),
                        partition: state.partition,
                        worker,
                    })
                    .into_iter()
                    .collect();
                let positions = hand_back(
                    &state.name,
                    owned,
                    &state.shared.router,
                    state
                        .consumer
                        .drain_timeout
                        .min(deadline.left_before(CLOSE_RESERVE)),
                )
                .await;
                let final_commit = state.final_commit(positions.first().copied().flatten());
                let closed = state.client.close(final_commit, deadline).await;
                let _ = reply.send(closed);
                myself.stop(Some("shutdown".to_owned()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<PartitionConsumerMsg>,
        event: SupervisionEvent,
        state: &mut PartitionConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, error) = event {
            state.worker = None;
            return Err(format!("partition worker of {} failed: {error}", state.name).into());
        }
        Ok(())
    }
}

impl PartitionConsumerState {
    /// The last commit: the partition's final position, with the metadata saying this
    /// process stopped, so `offsets reset` need not wait for it to look gone. Without
    /// the worker's answer its last store is unknown here, and committing the start
    /// could move the position back: then only what librdkafka holds as stored.
    fn final_commit(&self, handed_back: Option<FinalPosition>) -> FinalCommit {
        if self.consumer.commit_group.is_none() {
            return FinalCommit::Nothing;
        }
        let Some(position) = handed_back else {
            return FinalCommit::Stored;
        };
        let Some(offset) = position.stored.or(self.committed_at_start) else {
            return FinalCommit::Stored;
        };
        let mut list = TopicPartitionList::with_capacity(1);
        let mut element = list.add_partition(&self.topic, self.partition);
        if element.set_offset(Offset::Offset(offset)).is_err() {
            return FinalCommit::Stored;
        }
        element.set_metadata(
            OffsetHolder::this_process(&self.consumer.name, self.consumer.commit_interval, false)
                .to_metadata(),
        );
        FinalCommit::Exactly(list)
    }
}
