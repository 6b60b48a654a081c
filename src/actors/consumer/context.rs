//! The librdkafka side of a consumer: its context (rebalance, commit and error
//! callbacks) and the thread that polls its main queue.
//!
//! Rebalance callbacks run on the polling thread. A revoke hands the work to the
//! GroupMember (drain, emit count windows, store) and waits for it, then commits
//! synchronously before librdkafka lets the partitions go. An assign splits each new
//! partition's queue right away, before fetched events can land on the main queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use ractor::ActorRef;
use rdkafka::bindings::rd_kafka_resp_err_t as RDKafkaRespErr;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::group_member::{AssignedPartition, GroupMemberMsg};
use crate::actors::Deadline;
use crate::telemetry::metrics::{COMMIT_FAILURES, OFFSETS_COMMITTED, OFFSET_RESETS, REBALANCES};
use crate::telemetry::partitions::BOARD;
use crate::telemetry::Starting;
use crate::waits::POLL_THREAD_RESERVE;

pub type KafkaConsumer = BaseConsumer<EventdContext>;
pub type KafkaPartitionQueue = rdkafka::consumer::base_consumer::PartitionQueue<EventdContext>;

/// Callbacks of one consumer client.
pub struct EventdContext {
    consumer_name: Arc<str>,
    /// Group members only: where rebalances are handed over.
    member: Option<ActorRef<GroupMemberMsg>>,
    /// How long a revoke may take (drain timeout plus time to commit).
    revoke_wait: Duration,
    /// The consumer itself, to split partition queues inside the assign callback.
    consumer: OnceLock<Weak<KafkaConsumer>>,
    /// Where its owner stands: shutting down, closing.
    lifecycle: Arc<Lifecycle>,
    /// Readiness waits for this consumer's first assignment (group members).
    starting: Option<Starting>,
}

/// What a consumer's owner tells its callbacks about where it stands.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// A shutdown started handing every partition back; a revoke leaves that to it.
    shutting_down: AtomicBool,
    /// The final commit is done; later revokes and commits are the close's own.
    closing: AtomicBool,
}

impl Lifecycle {
    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

impl EventdContext {
    pub fn new(
        consumer_name: Arc<str>,
        member: Option<ActorRef<GroupMemberMsg>>,
        revoke_wait: Duration,
        lifecycle: Arc<Lifecycle>,
        starting: Option<Starting>,
    ) -> Self {
        Self {
            consumer_name,
            member,
            revoke_wait,
            consumer: OnceLock::new(),
            lifecycle,
            starting,
        }
    }

    /// Lets the context split queues of `consumer`; call right after creating it.
    pub fn attach(consumer: &Arc<KafkaConsumer>) {
        let _ = consumer.context().consumer.set(Arc::downgrade(consumer));
    }

    fn count(&self, kind: &'static str) {
        metrics::counter!(REBALANCES, "consumer" => self.consumer_name.to_string(), "kind" => kind)
            .increment(1);
    }
}

impl EventdContext {
    /// Splits off the queue of every partition in `list`.
    fn split_queues(&self, list: &TopicPartitionList) -> Vec<AssignedPartition> {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return Vec::new();
        };
        partitions_of(list)
            .into_iter()
            .filter_map(|(topic, partition)| {
                let queue = consumer.split_partition_queue(&topic, partition)?;
                Some(AssignedPartition {
                    topic,
                    partition,
                    queue,
                })
            })
            .collect()
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<(String, i32)> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for EventdContext {
    /// Lag of every partition this client owns, and whether a broker is up, from
    /// librdkafka's statistics (every `metrics.lag_interval`, on the polling thread).
    fn stats(&self, statistics: rdkafka::Statistics) {
        if statistics
            .brokers
            .values()
            .any(|broker| broker.state == "UP")
        {
            BOARD.broker_answered();
        }
        for (topic, found) in &statistics.topics {
            for (partition, stats) in &found.partitions {
                // -1 is librdkafka's internal partition; an undesired one is not ours.
                if *partition < 0 || !stats.desired {
                    continue;
                }
                // Against the stored offset (what the next commit sends), up to the last
                // stable offset under read_committed; -1 until librdkafka knows both.
                let lag = if stats.consumer_lag_stored >= 0 {
                    stats.consumer_lag_stored
                } else if stats.consumer_lag >= 0 {
                    stats.consumer_lag
                } else {
                    // Nothing stored or committed yet (a new group, an empty
                    // partition): everything from where reading starts is behind.
                    let end = if stats.ls_offset >= 0 {
                        stats.ls_offset
                    } else {
                        stats.hi_offset
                    };
                    let from = [stats.app_offset, stats.lo_offset, 0]
                        .into_iter()
                        .max()
                        .unwrap_or(0);
                    if end >= 0 {
                        (end - from).max(0)
                    } else {
                        -1
                    }
                };
                if lag >= 0 {
                    BOARD.set_lag_messages(
                        (self.consumer_name.to_string(), topic.clone(), *partition),
                        lag,
                    );
                }
            }
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if let Some(reset) = OffsetReset::parse(fac, message) {
            metrics::counter!(OFFSET_RESETS, "consumer" => self.consumer_name.to_string(), "topic" => reset.topic.to_owned())
                .increment(1);
            tracing::warn!(consumer = %self.consumer_name, topic = reset.topic, partition = reset.partition,
                from = reset.from, to = reset.to, reason = reset.reason,
                "offset reset: the stored offset is gone, events between are skipped by auto.offset.reset");
            return;
        }
        crate::kafka::log_librdkafka(level, fac, message, Some(&self.consumer_name));
    }
}

/// librdkafka's warning that a partition's position was reset by `auto.offset.reset`,
/// e.g. `[thrd:main]: like [0]: offset reset (at offset 1000 (leader epoch -1), broker 1)
/// to offset BEGINNING (leader epoch -1): fetch failed due to requested offset not available on
/// the broker: Broker: Offset out of range`.
#[derive(Debug, PartialEq, Eq)]
struct OffsetReset<'a> {
    topic: &'a str,
    partition: i32,
    from: &'a str,
    to: &'a str,
    reason: &'a str,
}

impl<'a> OffsetReset<'a> {
    fn parse(fac: &str, message: &'a str) -> Option<OffsetReset<'a>> {
        if fac != "OFFSET" {
            return None;
        }
        let (head, rest) = message.split_once("]: offset reset (at ")?;
        let (topic, partition) = head.rsplit_once(" [")?;
        // Messages logged from librdkafka's threads start with "[thrd:NAME]: ".
        let topic = match topic.strip_prefix("[thrd:") {
            Some(rest) => rest.split_once("]: ")?.1,
            None => topic,
        };
        let (from, rest) = rest.split_once(", broker ")?;
        let (_, rest) = rest.split_once(") to ")?;
        let (to, reason) = rest.split_once(": ").unwrap_or((rest, ""));
        Some(OffsetReset {
            topic,
            partition: partition.parse().ok()?,
            from,
            to,
            reason,
        })
    }
}

impl ConsumerContext for EventdContext {
    /// As rust-rdkafka's default, except that an assign splits the new partitions'
    /// queues before librdkafka starts fetching them, so no event of theirs can land on
    /// the main queue first. (A split queue keeps its own forwarding across the fetch
    /// start: librdkafka marks it as set by the application.)
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let rebalance = match err {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
                _ => Rebalance::Error(KafkaError::Rebalance(err.into())),
            };
            self.pre_rebalance(consumer, &rebalance);
            let protocol = consumer.rebalance_protocol();
            if self.lifecycle.shutting_down() && !matches!(protocol, RebalanceProtocol::Cooperative)
            {
                // An eager revoke leaves the member nothing, and it is closing: leaving
                // spares the close a rejoin whose answer (held by the coordinator until
                // the rebalance ends) its LeaveGroup would queue behind. Before the
                // unassign: once that is done librdkafka rejoins at once, and an
                // unsubscribe after it waits for that rejoin to finish.
                consumer.unsubscribe();
            }
            let unassigned = match protocol {
                RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
                _ => consumer.unassign(),
            };
            if let Err(error) = unassigned {
                tracing::error!(consumer = %self.consumer_name, %error, "cannot give partitions back");
            }
            self.post_rebalance(consumer, &rebalance);
            return;
        }
        self.count("assign");
        if let Some(starting) = &self.starting {
            starting.started();
        }
        // During shutdown nothing takes new partitions: their events stay unread and
        // the next owner reads them. A split queue waiting in the busy member's mailbox
        // would also keep the client from closing.
        let partitions = if self.lifecycle.shutting_down() {
            Vec::new()
        } else {
            self.split_queues(tpl)
        };
        let assigned = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(error) = assigned {
            tracing::error!(consumer = %self.consumer_name, %error, "cannot take assigned partitions");
        } else if self.lifecycle.shutting_down() {
            // Taken only to finish the rebalance (cooperative members must take what
            // they are given): paused, nothing of them is fetched into a client that is
            // closing, and the next owner reads them from the committed offset.
            if let Err(error) = consumer.pause(tpl) {
                tracing::warn!(consumer = %self.consumer_name, %error, "cannot pause partitions assigned during shutdown");
            }
        }
        tracing::info!(consumer = %self.consumer_name,
            partitions = %crate::logging::partition_list(partitions.iter().map(|p| (p.topic.as_str(), p.partition))),
            "partitions assigned");
        if let Some(member) = &self.member {
            let _ = member.send_message(GroupMemberMsg::Assigned(partitions));
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        self.count("revoke");
        let partitions = partitions_of(list);
        tracing::info!(consumer = %self.consumer_name,
            partitions = %crate::logging::partition_list(partitions.iter().map(|(topic, p)| (topic.as_str(), *p))),
            "partitions revoked");
        if self.lifecycle.closing() {
            return;
        }
        if self.lifecycle.shutting_down() {
            // The member is busy handing everything back and cannot take a revoke:
            // commit what is finished now, the rest is redelivered to the next owner.
            tracing::warn!(consumer = %self.consumer_name,
                "partitions revoked during shutdown: committing what is finished; events still in flight will be redelivered");
        } else if let Some(member) = &self.member {
            let (done, wait) = mpsc::channel();
            if member
                .send_message(GroupMemberMsg::Revoke { partitions, done })
                .is_ok()
                && wait.recv_timeout(self.revoke_wait).is_err()
            {
                tracing::warn!(consumer = %self.consumer_name, "revoke did not finish in time; uncommitted events will be redelivered");
            }
        } else {
            return;
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(consumer = %self.consumer_name, %error, "commit on revoke failed")
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Error(error) = rebalance {
            self.count("error");
            tracing::warn!(consumer = %self.consumer_name, %error, "rebalance error");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let committed = offsets
                    .elements()
                    .iter()
                    .filter(|e| matches!(e.offset(), Offset::Offset(_)))
                    .count();
                metrics::counter!(OFFSETS_COMMITTED, "consumer" => self.consumer_name.to_string())
                    .increment(committed as u64);
            }
            // Nothing new was stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            // librdkafka's own commit on close, after eventd's synchronous final commit
            // succeeded; it races the group's rebalance and carries nothing new.
            Err(error) if self.lifecycle.closing() => {
                tracing::debug!(consumer = %self.consumer_name, %error, "commit on close not needed");
            }
            Err(error) => {
                metrics::counter!(COMMIT_FAILURES, "consumer" => self.consumer_name.to_string())
                    .increment(1);
                tracing::warn!(consumer = %self.consumer_name, %error, "offset commit failed");
            }
        }
    }
}

/// A consumer client with the thread that serves its main queue (rebalances, commits,
/// errors). However its owner ends, dropping this stops the thread, which then closes
/// the client off the async runtime once nothing else holds it.
pub struct ConsumerClient {
    name: String,
    consumer: Option<Arc<KafkaConsumer>>,
    poll_thread: Option<JoinHandle<()>>,
    stop_polling: Arc<AtomicBool>,
    /// Shared with the context.
    lifecycle: Arc<Lifecycle>,
}

/// What a consumer commits as it closes.
pub enum FinalCommit {
    /// Nothing: it commits nothing at all (a `partitions` consumer without
    /// `commit_group`).
    Nothing,
    /// What was stored since the last commit, if anything.
    Stored,
    /// Exactly these offsets, whether they moved or not: a `partitions` consumer's
    /// final position, with the metadata saying it stopped.
    Exactly(TopicPartitionList),
}

/// What the main queue hands a consumer's owner.
pub enum MainQueueEvent {
    /// An event of an assigned partition that arrived on the main queue.
    Stray(OwnedMessage),
    /// librdkafka gave the client up (e.g. a static member fenced by another with the
    /// same `group.instance.id`); it can do nothing more.
    Fatal {
        code: RDKafkaErrorCode,
        reason: String,
    },
}

impl ConsumerClient {
    /// Starts polling `consumer`; what reaches the main queue goes to `on_event`.
    pub fn start(
        name: String,
        consumer: Arc<KafkaConsumer>,
        lifecycle: Arc<Lifecycle>,
        on_event: impl Fn(MainQueueEvent) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop_polling = Arc::new(AtomicBool::new(false));
        let poll_thread = spawn_poll_loop(
            format!("poll-{name}"),
            consumer.clone(),
            stop_polling.clone(),
            lifecycle.clone(),
            on_event,
        )?;
        Ok(Self {
            name,
            consumer: Some(consumer),
            poll_thread: Some(poll_thread),
            stop_polling,
            lifecycle,
        })
    }

    /// The client, until it is closed.
    pub fn consumer(&self) -> Option<&Arc<KafkaConsumer>> {
        self.consumer.as_ref()
    }

    /// From now on a revoke does not hand partitions over: the shutdown in progress
    /// hands every partition back and commits itself.
    pub fn shutting_down(&self) {
        self.lifecycle.shutting_down.store(true, Ordering::Release);
    }

    /// Commits as `final_commit` says, then closes the client on its polling
    /// thread and waits for that, all by `deadline`; false (and logged) if the commit
    /// or the close did not finish by then.
    pub async fn close(&mut self, final_commit: FinalCommit, deadline: Deadline) -> bool {
        let mut in_time = true;
        let name = self.name.as_str();
        if let Some(client) = self.consumer.take() {
            if !matches!(final_commit, FinalCommit::Nothing) {
                let consumer_name = name.to_owned();
                let committed = tokio::time::timeout(
                    deadline.left_before(POLL_THREAD_RESERVE),
                    tokio::task::spawn_blocking(move || match final_commit {
                        FinalCommit::Nothing | FinalCommit::Stored => {
                            client.commit_consumer_state(CommitMode::Sync)
                        }
                        FinalCommit::Exactly(list) => {
                            // Closing commits the stored offset with its metadata once
                            // more (librdkafka's unassign), after this commit: stored
                            // too, the two say the same.
                            if let Err(error) = client.store_offsets(&list) {
                                tracing::debug!(consumer = consumer_name, %error, "final offset not stored before the commit");
                            }
                            client.commit(&list, CommitMode::Sync)
                        }
                    }),
                )
                .await;
                match committed {
                    Ok(Ok(Ok(()))) => tracing::info!(consumer = name, "offsets committed"),
                    Ok(Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)))) => {
                        tracing::info!(consumer = name, "no new offsets to commit")
                    }
                    Ok(Ok(Err(error))) => {
                        tracing::warn!(consumer = name, %error, "final commit failed")
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(consumer = name, %error, "final commit did not run")
                    }
                    Err(_) => {
                        in_time = false;
                        tracing::warn!(
                            consumer = name,
                            "final commit did not finish within the grace; events since the last commit will be redelivered"
                        )
                    }
                }
            }
        }
        self.lifecycle.closing.store(true, Ordering::Release);
        self.stop_polling.store(true, Ordering::Release);
        if let Some(thread) = self.poll_thread.take() {
            let joined = tokio::time::timeout(
                deadline.left(),
                tokio::task::spawn_blocking(move || thread.join()),
            )
            .await;
            if joined.is_err() {
                tracing::warn!(consumer = name, "consumer did not close within the grace");
                return false;
            }
        }
        tracing::info!(consumer = name, "consumer closed");
        in_time
    }
}

impl Drop for ConsumerClient {
    fn drop(&mut self) {
        self.lifecycle.closing.store(true, Ordering::Release);
        self.stop_polling.store(true, Ordering::Release);
        // Closed without `close` (the owner failed): the polling thread normally holds
        // the last reference, but should it be gone, closing must not block a tokio
        // worker.
        if let Some(consumer) = self.consumer.take() {
            crate::actors::release_client(consumer);
        }
    }
}

/// The thread that serves a consumer's main queue (rebalances, commits, errors) until
/// `stop` is set, then drops its reference, which closes the consumer when it is the
/// last one. Events that reach the main queue, and a fatal error, go to `on_event`.
fn spawn_poll_loop(
    name: String,
    consumer: Arc<KafkaConsumer>,
    stop: Arc<AtomicBool>,
    lifecycle: Arc<Lifecycle>,
    on_event: impl Fn(MainQueueEvent) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || {
        while !stop.load(Ordering::Acquire) {
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                // The owner is busy handing everything back and would only queue it,
                // unbounded, in its mailbox: its offset is not stored, so the next
                // owner reads it.
                Some(Ok(message)) if lifecycle.shutting_down() => tracing::debug!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "event on the main queue during shutdown, left for the next owner"
                ),
                Some(Ok(message)) => {
                    tracing::debug!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        "event on the main queue"
                    );
                    on_event(MainQueueEvent::Stray(message.detach()));
                }
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    let (code, reason) = consumer
                        .client()
                        .fatal_error()
                        .unwrap_or((code, "fatal consumer error".to_owned()));
                    on_event(MainQueueEvent::Fatal { code, reason });
                    // Nothing more comes from a failed client; its owner restarts it.
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "consumer error"),
            }
        }
        // Wait for partition queues (which hold the consumer too) to be gone, so the
        // close, which may block, happens here and not on the async runtime.
        let deadline = std::time::Instant::now() + POLL_THREAD_RESERVE;
        while Arc::strong_count(&consumer) > 1 && std::time::Instant::now() < deadline {
            consumer.poll(Duration::from_millis(20));
        }
        drop(consumer);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_librdkafkas_offset_reset_warning() {
        let message = "like [3]: offset reset (at offset 1000 (leader epoch -1), broker 1) to offset BEGINNING (leader epoch -1): fetch failed due to requested offset not available on the broker: Broker: Offset out of range";
        assert_eq!(
            OffsetReset::parse("OFFSET", message),
            Some(OffsetReset {
                topic: "like",
                partition: 3,
                from: "offset 1000 (leader epoch -1)",
                to: "offset BEGINNING (leader epoch -1)",
                reason: "fetch failed due to requested offset not available on the broker: Broker: Offset out of range",
            })
        );
        let from_thread = format!("[thrd:main]: {message}");
        assert_eq!(
            OffsetReset::parse("OFFSET", &from_thread).map(|reset| (reset.topic, reset.partition)),
            Some(("like", 3))
        );
        assert_eq!(OffsetReset::parse("FETCH", message), None);
        assert_eq!(
            OffsetReset::parse("OFFSET", "like [3]: stored offset 5"),
            None
        );
    }
}
