//! `ProducerHandle`: how handlers, the demo, the dead-letter path and `eventd produce`
//! send. A send goes straight into librdkafka's queue (no actor message per event); the
//! handle bounds unacknowledged events, chooses the partition and, in sync mode, waits
//! for the delivery report before returning.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use metrics::Counter;
use parking_lot::Mutex;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use tokio::sync::oneshot;

use super::delivery::{
    Delivery, DeliveryFailure, DeliveryGroup, InFlightLimit, Reply, Sender, Ticket,
};
use super::partitioner::{PartitionError, Partitioners};
use super::KafkaProducer;
use crate::config::{ProducerConfig, ProducerMode};
use crate::telemetry::metrics::{PRODUCER_MESSAGES, PRODUCER_QUEUE_DEPTH};

use crate::waits::{DELIVERY_REPORT_GRACE, METADATA_TIMEOUT, PARTITION_COUNT_TTL};

/// An event to write.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: crate::event::Headers,
}

impl Outgoing {
    pub fn record(&self) -> Record<'_> {
        Record {
            topic: &self.topic,
            key: self.key.as_deref(),
            payload: &self.payload,
            headers: &self.headers,
            more_headers: &[],
        }
    }
}

/// An event to write, borrowed: librdkafka copies what it queues, so a sender need not
/// make an owned copy first.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: &'a [(Cow<'static, str>, Vec<u8>)],
    /// Written after `headers`.
    pub more_headers: &'a [(&'a str, &'a [u8])],
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    #[error("the producer is not running")]
    NotRunning,
    /// A sender that keeps order across a restart of the producer (after a fatal error)
    /// sends nothing to the new one while its writes to the old are unsettled.
    #[error("the producer was replaced while these events were being sent")]
    Replaced,
    #[error(
        "event for topic {topic:?} is {size} bytes, above producer.max_message_bytes ({limit})"
    )]
    TooLarge {
        topic: String,
        size: usize,
        limit: u32,
    },
    #[error("topic {topic:?}: {error}")]
    Partition {
        topic: String,
        error: PartitionError,
    },
    #[error("cannot learn the partitions of topic {topic:?}: {error}")]
    Metadata { topic: String, error: MetadataError },
    #[error("cannot enqueue event for topic {topic:?}: {reason}")]
    Enqueue {
        topic: String,
        reason: String,
        /// librdkafka's code, when it gave one: some refusals are permanent.
        code: Option<RDKafkaErrorCode>,
    },
    #[error("delivery to topic {topic:?} failed: {}", .failure.reason)]
    Delivery {
        topic: String,
        failure: DeliveryFailure,
    },
}

impl ProduceError {
    /// The topic the event was for; empty for `NotRunning`.
    pub fn topic(&self) -> &str {
        match self {
            ProduceError::NotRunning | ProduceError::Replaced => "",
            ProduceError::TooLarge { topic, .. }
            | ProduceError::Partition { topic, .. }
            | ProduceError::Metadata { topic, .. }
            | ProduceError::Enqueue { topic, .. }
            | ProduceError::Delivery { topic, .. } => topic,
        }
    }

    /// True when sending the same event again can never work, so it must go to the
    /// dead-letter topic rather than be retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            ProduceError::TooLarge { .. } | ProduceError::Partition { .. } => true,
            ProduceError::Metadata { error, .. } => error.is_permanent(),
            ProduceError::Delivery {
                failure:
                    DeliveryFailure {
                        code: Some(code), ..
                    },
                ..
            } => is_permanent_rejection(*code),
            // librdkafka's own unknown-topic and unknown-partition refusals at enqueue
            // come from metadata that may be stale (a topic being created or grown).
            ProduceError::Enqueue {
                code: Some(code), ..
            } => {
                is_permanent_rejection(*code)
                    && !matches!(
                        code,
                        RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownPartition
                    )
            }
            _ => false,
        }
    }
}

/// Why the partitions of an output topic could not be learnt.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetadataError {
    /// The topic does not exist, or this client may not see it: sending the event
    /// again cannot help until someone creates the topic or grants the ACL.
    #[error("{0}")]
    Refused(RDKafkaErrorCode),
    /// The broker does not list it at all, which is how a missing topic looks when
    /// the broker answers for the topics it has only.
    #[error("the broker does not list it")]
    NotListed,
    /// A topic being created: its partitions are not announced yet.
    #[error("the broker lists no partitions for it")]
    NoPartitions,
    /// No answer in time, a transport error: the broker may come back.
    #[error("{0}")]
    Unanswered(String),
    /// Unknown or refused, but only for less than `waits::TOPIC_PROPAGATION` so far.
    #[error("{0} (so far; taken as missing if it lasts)")]
    NotYetKnown(Box<MetadataError>),
}

impl MetadataError {
    pub fn is_permanent(&self) -> bool {
        match self {
            MetadataError::Refused(code) => matches!(
                code,
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::InvalidTopic
            ),
            MetadataError::NotListed => true,
            MetadataError::NoPartitions
            | MetadataError::Unanswered(_)
            | MetadataError::NotYetKnown(_) => false,
        }
    }
}

/// Delivery errors that a resend of the same event cannot cure. librdkafka retries
/// retriable errors itself until `message_timeout`; what reaches a delivery report is
/// one of these, or `_MSG_TIMED_OUT` (the broker may come back: the event is
/// redelivered), or an error of a producer being replaced (`_FATAL`, purges).
pub fn is_permanent_rejection(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        // The topic's own max.message.bytes is below the event.
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            // A keyless write to a compacted topic, a bad header or timestamp.
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTimestamp
            | RDKafkaErrorCode::UnsupportedForMessageFormat
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::InvalidRequiredAcks
    )
}

/// Resolves when the broker acknowledged (or finally refused) one event.
pub struct PendingDelivery {
    topic: String,
    state: Pending,
    /// librdkafka reports every event within `message_timeout`; this bounds the wait
    /// should a report ever be lost with a discarded producer.
    patience: Duration,
}

enum Pending {
    Waiting(oneshot::Receiver<Result<Delivery, DeliveryFailure>>),
    Reported(Result<Delivery, DeliveryFailure>),
}

impl PendingDelivery {
    pub async fn wait(self) -> Result<Delivery, ProduceError> {
        let deadline = tokio::time::Instant::now() + self.patience;
        let topic = self.topic.clone();
        self.report(deadline)
            .await
            .map_err(|failure| ProduceError::Delivery { topic, failure })
    }

    /// Ready once the report came (read it with `try_report`).
    pub fn poll_report(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::future::Future;
        let Pending::Waiting(receiver) = &mut self.state else {
            return std::task::Poll::Ready(());
        };
        match std::pin::Pin::new(receiver).poll(cx) {
            std::task::Poll::Ready(report) => {
                self.state = Pending::Reported(report.unwrap_or_else(|_| {
                    Err(DeliveryFailure::without_code(
                        "the producer stopped before the delivery report",
                    ))
                }));
                std::task::Poll::Ready(())
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    /// The report if it has come, without waiting: for a sender that checks on its
    /// writes at its own pace rather than awaiting each.
    pub fn try_report(&mut self) -> Option<Result<Delivery, ProduceError>> {
        let report = match &mut self.state {
            Pending::Reported(report) => report.clone(),
            Pending::Waiting(receiver) => match receiver.try_recv() {
                Ok(report) => report,
                Err(oneshot::error::TryRecvError::Empty) => return None,
                Err(oneshot::error::TryRecvError::Closed) => Err(DeliveryFailure::without_code(
                    "the producer stopped before the delivery report",
                )),
            },
        };
        self.state = Pending::Reported(report.clone());
        Some(report.map_err(|failure| ProduceError::Delivery {
            topic: self.topic.clone(),
            failure,
        }))
    }

    async fn report(self, deadline: tokio::time::Instant) -> Result<Delivery, DeliveryFailure> {
        match self.state {
            Pending::Reported(report) => report,
            Pending::Waiting(receiver) => match tokio::time::timeout_at(deadline, receiver).await {
                Ok(Ok(report)) => report,
                Ok(Err(_)) => Err(DeliveryFailure::without_code(
                    "the producer stopped before the delivery report",
                )),
                Err(_) => Err(DeliveryFailure::without_code(format!(
                    "no delivery report within {}",
                    humantime::format_duration(self.patience)
                ))),
            },
        }
    }
}

/// A producer reference held while sending. Should it turn out to be the last (the
/// ProducerActor replaced the producer meanwhile), it is dropped off the async threads:
/// dropping a producer flushes.
struct ProducerInUse(Option<Arc<KafkaProducer>>);

impl ProducerInUse {
    /// The producer; only `drop` empties it.
    fn get(&self) -> Result<&Arc<KafkaProducer>, ProduceError> {
        self.0.as_ref().ok_or(ProduceError::NotRunning)
    }
}

impl Drop for ProducerInUse {
    fn drop(&mut self) {
        if let Some(producer) = self.0.take() {
            crate::actors::release_client(producer);
        }
    }
}

/// Where the records of one send or one batch go, looked up once for all of them.
struct Target {
    producer: ProducerInUse,
    generation: u64,
    /// Pinned to `generation`: a fatal error fails the rest with `Replaced` rather
    /// than moving on to the next producer.
    pinned: bool,
    /// The topic's state, the in-flight bound and the group, shared by the records.
    sender: Arc<Sender>,
    /// When the batch began; taken by its first record.
    enqueued: Option<Instant>,
}

/// Records of one group sent to one topic (a forward handler's batch): see
/// `ProducerHandle::batch`.
pub struct BatchSend<'h> {
    handle: &'h ProducerHandle,
    group: Arc<DeliveryGroup>,
    target: Target,
}

impl BatchSend<'_> {
    /// The topic every record of this batch goes to.
    pub fn topic(&self) -> &str {
        &self.target.sender.topic.name
    }

    /// False once the ProducerActor installed another producer (or none) since the
    /// batch began: a sender that keeps a batch across many records starts a new one
    /// then, as a record of its own would have looked the producer up again.
    pub fn is_current(&self) -> bool {
        self.target.generation == self.handle.generation()
    }

    /// Queues `record` (to the batch's topic) as the group's `token`. As `enqueue`:
    /// waits while `producer.max_in_flight` events are unacknowledged, and in sync
    /// mode until every event of the group is reported.
    pub async fn enqueue(&mut self, record: Record<'_>, token: u64) -> Result<(), ProduceError> {
        // A caller may drop this future at any await before the send: the group must
        // not then wait for a report that never comes.
        struct Unsent<'a>(Option<&'a DeliveryGroup>);
        impl Drop for Unsent<'_> {
            fn drop(&mut self) {
                if let Some(group) = self.0 {
                    group.not_sent();
                }
            }
        }
        self.group.sending();
        let mut unsent = Unsent(Some(&self.group));
        let sent = self
            .handle
            .send_to(&mut self.target, record, Reply::Group(token))
            .await;
        if sent.is_ok() {
            unsent.0 = None;
        }
        drop(unsent);
        if let Err(error) = &sent {
            self.handle.count_refused(error);
            return sent;
        }
        if self.handle.shared.mode == ProducerMode::Sync {
            // The report itself is the group's to read; a lost one is the waiter's to see.
            let _ = tokio::time::timeout(self.handle.patience(), self.group.settled()).await;
        }
        Ok(())
    }
}

/// What the handle knows of one topic, shared lock-free by every send to it.
pub struct TopicState {
    pub name: Arc<str>,
    count: AtomicI32,
    /// When the count was last asked for, in milliseconds since `Shared::epoch`.
    checked_ms: AtomicU64,
    /// `eventd_producer_messages_total` of delivery reports, so a report looks up no label.
    pub delivered: Counter,
    pub failed: Counter,
}

impl TopicState {
    pub(super) fn new(topic: &str, count: i32, checked_ms: u64) -> Self {
        Self {
            name: topic.into(),
            count: AtomicI32::new(count),
            checked_ms: AtomicU64::new(checked_ms),
            delivered: metrics::counter!(PRODUCER_MESSAGES, "topic" => topic.to_owned(), "outcome" => "delivered"),
            failed: metrics::counter!(PRODUCER_MESSAGES, "topic" => topic.to_owned(), "outcome" => "failed"),
        }
    }
}

struct Shared {
    producer: ArcSwapOption<KafkaProducer>,
    mode: ProducerMode,
    /// Idempotence: librdkafka keeps each partition's order even across retries.
    idempotence: bool,
    max_message_bytes: u32,
    /// How long a send waits for a producer being restarted.
    message_timeout: Duration,
    in_flight: Arc<InFlightLimit>,
    partitioners: Partitioners,
    /// Topics sent to; replaced whole when one is added, read without a lock.
    topics: ArcSwap<HashMap<String, Arc<TopicState>>>,
    /// Origin of `TopicState::checked_ms`.
    epoch: Instant,
    /// One metadata request at a time per topic not yet known, so the first events of
    /// a new topic do not each ask the broker, and a slow answer for one topic does
    /// not hold up sends to the others.
    first_fetch: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When the brokers first called a topic unknown, until they know it: it counts as
    /// missing for good only after `waits::TOPIC_PROPAGATION`.
    unknown_since: Mutex<HashMap<String, Instant>>,
    /// Bumped each time a producer is installed, so a sender that met a broken one can
    /// wait for the next without holding on to the broken one.
    generation: AtomicU64,
}

/// How the rest of the daemon sends events. Cheap to clone; works across restarts of
/// the ProducerActor.
#[derive(Clone)]
pub struct ProducerHandle {
    shared: Arc<Shared>,
}

impl ProducerHandle {
    pub(super) fn new(config: &ProducerConfig) -> Self {
        let in_flight = InFlightLimit::new(config.max_in_flight);
        // Permits are held from the send to the report: what the gauge counts.
        let source = Arc::downgrade(&in_flight);
        let queue_depth = metrics::gauge!(PRODUCER_QUEUE_DEPTH);
        crate::telemetry::metrics::sample_on_scrape(move || match source.upgrade() {
            Some(limit) => {
                queue_depth.set(limit.current() as f64);
                true
            }
            None => false,
        });
        Self {
            shared: Arc::new(Shared {
                producer: ArcSwapOption::empty(),
                mode: config.mode,
                idempotence: config.idempotence,
                max_message_bytes: config.max_message_bytes,
                message_timeout: config.message_timeout,
                in_flight,
                partitioners: Partitioners::new(config),
                topics: ArcSwap::from_pointee(HashMap::new()),
                epoch: Instant::now(),
                first_fetch: Mutex::new(HashMap::new()),
                unknown_since: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
            }),
        }
    }

    pub fn mode(&self) -> ProducerMode {
        self.shared.mode
    }

    /// True when events sent later can never land before events sent earlier to the
    /// same partition, even when librdkafka retries, so a sender may go on sending
    /// while earlier events await their acknowledgements.
    pub fn keeps_partition_order(&self) -> bool {
        self.shared.idempotence
    }

    pub(super) fn install(
        &self,
        producer: Option<Arc<KafkaProducer>>,
    ) -> Option<Arc<KafkaProducer>> {
        let previous = self.shared.producer.swap(producer);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        previous
    }

    /// Bumped each time the ProducerActor installs a producer: writes sent under an
    /// older generation went to a producer since replaced.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    pub(super) fn current(&self) -> Option<Arc<KafkaProducer>> {
        self.shared.producer.load_full()
    }

    /// Queues `event` and returns its delivery report to await. Waits while
    /// `producer.max_in_flight` events are unacknowledged, and in sync mode until this
    /// event's report arrived.
    pub async fn enqueue(&self, event: Outgoing) -> Result<PendingDelivery, ProduceError> {
        let result = self.try_enqueue(event).await;
        if let Err(error) = &result {
            // NotRunning knows no topic; its senders retry once the producer is back.
            if !matches!(error, ProduceError::NotRunning) {
                metrics::counter!(PRODUCER_MESSAGES, "topic" => error.topic().to_owned(), "outcome" => "refused")
                    .increment(1);
            }
        }
        result
    }

    async fn try_enqueue(&self, event: Outgoing) -> Result<PendingDelivery, ProduceError> {
        let (reply, receiver) = oneshot::channel();
        self.send_record(event.record(), Reply::One(reply), None)
            .await?;
        // In async mode nothing below awaits: a caller that drops this future at an
        // await above knows the event was not sent (`eventd produce` relies on it).
        let patience = self.patience();
        let state = match self.shared.mode {
            ProducerMode::Async => Pending::Waiting(receiver),
            ProducerMode::Sync => Pending::Reported(
                PendingDelivery {
                    topic: String::new(),
                    state: Pending::Waiting(receiver),
                    patience,
                }
                .report(tokio::time::Instant::now() + patience)
                .await,
            ),
        };
        Ok(PendingDelivery {
            topic: event.topic,
            state,
            patience,
        })
    }

    /// Starts sending many records to `topic` as members of `group`: the producer,
    /// the topic's partition count and the clock are read once for all of them rather
    /// than per record. With `generation`, every record goes only to that producer:
    /// `Replaced` once the ProducerActor installed another.
    pub async fn batch(
        &self,
        topic: &str,
        group: &Arc<DeliveryGroup>,
        generation: Option<u64>,
    ) -> Result<BatchSend<'_>, ProduceError> {
        let target = self.target(topic, Some(group), generation).await?;
        Ok(BatchSend {
            handle: self,
            group: group.clone(),
            target,
        })
    }

    /// Counts `error` as a refused send in `eventd_producer_messages_total`: for a
    /// sender whose `batch` itself failed.
    pub fn count_refused(&self, error: &ProduceError) {
        // NotRunning knows no topic; its senders retry once the producer is back.
        if !matches!(error, ProduceError::NotRunning | ProduceError::Replaced) {
            metrics::counter!(PRODUCER_MESSAGES, "topic" => error.topic().to_owned(), "outcome" => "refused")
                .increment(1);
        }
    }

    /// How long a waiter gives a report that is due within `message_timeout`.
    pub fn patience(&self) -> Duration {
        self.shared.message_timeout + DELIVERY_REPORT_GRACE
    }

    /// When a write not yet acknowledged counts as failed: `producer.message_timeout`.
    /// With idempotence librdkafka itself never gives up on an event (so it never
    /// reorders one behind later events of its partition); this deadline is eventd's.
    pub fn deadline(&self) -> Duration {
        self.shared.message_timeout
    }

    /// The running producer (or `generation`'s) and what is known of `topic`; `group`
    /// hears of the reports of records sent `Reply::Group`.
    async fn target(
        &self,
        topic: &str,
        group: Option<&Arc<DeliveryGroup>>,
        pinned: Option<u64>,
    ) -> Result<Target, ProduceError> {
        let (producer, generation) = self.running_producer().await?;
        if pinned.is_some_and(|pinned| pinned != generation) {
            return Err(ProduceError::Replaced);
        }
        let producer = ProducerInUse(Some(producer));
        let now = Instant::now();
        let topic = self.topic_state(producer.get()?, topic, now).await?;
        Ok(Target {
            producer,
            generation,
            pinned: pinned.is_some(),
            sender: Arc::new(Sender {
                limit: self.shared.in_flight.clone(),
                topic,
                group: group.cloned(),
            }),
            enqueued: Some(now),
        })
    }

    async fn send_record(
        &self,
        event: Record<'_>,
        reply: Reply,
        pinned: Option<u64>,
    ) -> Result<(), ProduceError> {
        let mut target = self.target(event.topic, None, pinned).await?;
        self.send_to(&mut target, event, reply).await
    }

    /// Queues `event` with `target`'s producer and topic.
    async fn send_to(
        &self,
        target: &mut Target,
        event: Record<'_>,
        reply: Reply,
    ) -> Result<(), ProduceError> {
        debug_assert_eq!(&*target.sender.topic.name, event.topic);
        let size = event.payload.len()
            + event.key.map_or(0, <[u8]>::len)
            + event
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .chain(
                    event
                        .more_headers
                        .iter()
                        .map(|(name, value)| name.len() + value.len()),
                )
                .sum::<usize>();
        let too_large = |topic: &str| ProduceError::TooLarge {
            topic: topic.to_owned(),
            size,
            limit: self.shared.max_message_bytes,
        };
        if size > self.shared.max_message_bytes as usize {
            return Err(too_large(event.topic));
        }
        let permit = target.sender.acquire().await;
        let count = target.sender.topic.count.load(Ordering::Relaxed);
        let partition = self
            .shared
            .partitioners
            .choose(event.topic, event.key, event.payload, count)
            .map_err(|error| ProduceError::Partition {
                topic: event.topic.to_owned(),
                error,
            })?;
        let ticket = Box::new(Ticket {
            reply,
            // Only the first record of a batch is timed: its delivery time stands for
            // the batch's, and the others read no clock.
            enqueued: target.enqueued.take(),
            permit,
        });
        let mut record: BaseRecord<'_, [u8], [u8], Box<Ticket>> =
            BaseRecord::with_opaque_to(event.topic, ticket)
                .partition(partition)
                .payload(event.payload);
        if let Some(key) = event.key {
            record = record.key(key);
        }
        // librdkafka copies headers per event: none is cheaper than an empty set.
        let header_count = event.headers.len() + event.more_headers.len();
        if header_count > 0 {
            let mut headers = OwnedHeaders::new_with_capacity(header_count);
            for (name, value) in event.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
            for (name, value) in event.more_headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(*value),
                });
            }
            record = record.headers(headers);
        }
        let mut backoff = Duration::from_millis(1);
        loop {
            let Ok(current) = target.producer.get() else {
                return Err(ProduceError::NotRunning);
            };
            match current.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::Fatal), _))
                    if target.pinned =>
                {
                    return Err(ProduceError::Replaced);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::Fatal), back)) => {
                    // The ProducerActor is replacing this producer; send with the next.
                    record = back;
                    target.producer = ProducerInUse(None);
                    let (next, next_generation) = self.producer_after(target.generation).await?;
                    target.producer = ProducerInUse(Some(next));
                    target.generation = next_generation;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    return Err(too_large(event.topic))
                }
                Err((error, _)) => {
                    return Err(ProduceError::Enqueue {
                        topic: event.topic.to_owned(),
                        reason: error.to_string(),
                        code: error.rdkafka_error_code(),
                    })
                }
            }
        }
    }

    /// Queues a dead-letter copy. A copy too large to send goes with its value cut to
    /// fit, marked `eventd.truncated = true` with the original size in
    /// `eventd.source.size`: its `eventd.source.*` headers still say where the whole
    /// event is, and nothing else would ever let its offset move on.
    pub async fn enqueue_dead_letter(
        &self,
        copy: Outgoing,
    ) -> Result<PendingDelivery, ProduceError> {
        match self.enqueue(copy.clone()).await {
            Err(ProduceError::TooLarge { size, limit, .. }) => {
                let truncated = truncated_to_fit(copy, size, limit as usize);
                tracing::warn!(topic = %truncated.topic, size, limit,
                    "too large for the dead-letter topic, sending it truncated");
                self.enqueue(truncated).await
            }
            result => result,
        }
    }

    /// Sends `event` and waits for the broker's acknowledgement.
    pub async fn send(&self, event: Outgoing) -> Result<Delivery, ProduceError> {
        self.enqueue(event).await?.wait().await
    }

    /// Events queued in librdkafka and not yet acknowledged.
    pub fn queue_depth(&self) -> i32 {
        self.current()
            .map_or(0, |producer| producer.in_flight_count())
    }

    /// The producer and its generation, waiting up to `message_timeout` for one
    /// being restarted.
    async fn running_producer(&self) -> Result<(Arc<KafkaProducer>, u64), ProduceError> {
        self.producer_after(u64::MAX).await
    }

    /// A producer installed after generation `broken` (any, for `u64::MAX`), waiting
    /// up to `message_timeout` for the ProducerActor's restart.
    async fn producer_after(&self, broken: u64) -> Result<(Arc<KafkaProducer>, u64), ProduceError> {
        // The common case, without reading the clock.
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != broken {
            if let Some(producer) = self.current() {
                return Ok((producer, generation));
            }
        }
        let deadline = Instant::now() + self.shared.message_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let generation = self.shared.generation.load(Ordering::Acquire);
            if generation != broken {
                if let Some(producer) = self.current() {
                    return Ok((producer, generation));
                }
            }
            if Instant::now() >= deadline {
                return Err(ProduceError::NotRunning);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    fn millis_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.shared.epoch).as_millis() as u64
    }

    /// What is known of `topic`, its partition count above all. Only a topic's first
    /// event waits for the broker; afterwards a count older than `PARTITION_COUNT_TTL`
    /// is refreshed in the background by one sender while every sender goes on with
    /// the count it has.
    async fn topic_state(
        &self,
        producer: &Arc<KafkaProducer>,
        topic: &str,
        now: Instant,
    ) -> Result<Arc<TopicState>, ProduceError> {
        let known = self.shared.topics.load().get(topic).cloned();
        if let Some(state) = known {
            let now_ms = self.millis_since_epoch(now);
            let checked = state.checked_ms.load(Ordering::Relaxed);
            let stale = now_ms.saturating_sub(checked) >= PARTITION_COUNT_TTL.as_millis() as u64;
            // One sender wins the refresh; the others go on with the count they have.
            if stale
                && state
                    .checked_ms
                    .compare_exchange(checked, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                let refreshed = state.clone();
                let producer = producer.clone();
                let topic = topic.to_owned();
                tokio::spawn(async move {
                    match fetch_partition_count(producer, topic.clone()).await {
                        Ok(fresh) => refreshed.count.store(fresh, Ordering::Relaxed),
                        Err(reason) => tracing::warn!(%topic, %reason,
                            partitions = refreshed.count.load(Ordering::Relaxed),
                            "cannot refresh partition count, keeping the last one"),
                    }
                });
            }
            return Ok(state);
        }
        // One metadata request per new topic; senders to other topics do not wait.
        let topic_lock = self
            .shared
            .first_fetch
            .lock()
            .entry(topic.to_owned())
            .or_default()
            .clone();
        let _only_fetch = topic_lock.lock().await;
        if let Some(state) = self.shared.topics.load().get(topic) {
            return Ok(state.clone());
        }
        let count = match fetch_partition_count(producer.clone(), topic.to_owned()).await {
            Ok(count) => {
                self.shared.unknown_since.lock().remove(topic);
                count
            }
            Err(error) => {
                return Err(ProduceError::Metadata {
                    topic: topic.to_owned(),
                    error: self.unknown_for_now(topic, error),
                })
            }
        };
        let state = Arc::new(TopicState::new(
            topic,
            count,
            self.millis_since_epoch(Instant::now()),
        ));
        self.shared.topics.rcu(|topics| {
            let mut topics = HashMap::clone(topics);
            topics.insert(topic.to_owned(), state.clone());
            topics
        });
        Ok(state)
    }

    /// A topic the brokers call unknown may be one a restarted broker does not know yet,
    /// or one just created: until it has been unknown for `waits::TOPIC_PROPAGATION`
    /// the refusal may pass, and the sender backs off as for any failure that may.
    fn unknown_for_now(&self, topic: &str, error: MetadataError) -> MetadataError {
        if !error.is_permanent() {
            return error;
        }
        let since = *self
            .shared
            .unknown_since
            .lock()
            .entry(topic.to_owned())
            .or_insert_with(Instant::now);
        if since.elapsed() < crate::waits::TOPIC_PROPAGATION {
            MetadataError::NotYetKnown(Box::new(error))
        } else {
            error
        }
    }

    /// Triggers a fatal producer error, as a fenced or broken idempotent producer would.
    #[cfg(feature = "fault-injection")]
    pub fn inject_fatal_error(&self, reason: &str) -> bool {
        let Some(producer) = self.current() else {
            return false;
        };
        let Ok(reason) = std::ffi::CString::new(reason) else {
            return false;
        };
        // SAFETY: the native handle is valid while `producer` lives, and `reason`
        // outlives the call, which copies it.
        let result = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            )
        };
        result == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    }
}

async fn fetch_partition_count(
    producer: Arc<KafkaProducer>,
    topic: String,
) -> Result<i32, MetadataError> {
    tokio::task::spawn_blocking(move || ask_partition_count(&producer, &topic))
        .await
        .map_err(|error| MetadataError::Unanswered(error.to_string()))?
}

/// One metadata request for `topic`: its partition count, or why not. Blocking.
fn ask_partition_count(producer: &KafkaProducer, topic: &str) -> Result<i32, MetadataError> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|error| MetadataError::Unanswered(error.to_string()))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(MetadataError::NotListed);
    };
    if let Some(error) = found.error() {
        return Err(MetadataError::Refused(RDKafkaErrorCode::from(error)));
    }
    match i32::try_from(found.partitions().len()) {
        Ok(0) | Err(_) => Err(MetadataError::NoPartitions),
        Ok(count) => Ok(count),
    }
}

/// Room kept below `producer.max_message_bytes` for the truncation headers and
/// librdkafka's own per-record overhead.
const TRUNCATION_MARGIN: usize = 512;

/// `copy` with its value cut so the whole record (`size` bytes) fits `limit`. When its
/// key and headers alone leave no room, the event's own headers are dropped and
/// `eventd.error` is cut, so the copy can always be written.
fn truncated_to_fit(mut copy: Outgoing, size: usize, limit: usize) -> Outgoing {
    use crate::event::headers;
    let original = copy.payload.len();
    let mut rest = size.saturating_sub(original);
    if rest + TRUNCATION_MARGIN >= limit {
        copy.headers.retain(|(name, _)| name.starts_with("eventd."));
        for (name, value) in &mut copy.headers {
            if name == headers::ERROR {
                value.truncate(MAX_ERROR_BYTES);
            }
        }
        rest = copy.key.as_ref().map_or(0, Vec::len)
            + copy
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>();
    }
    let keep = limit.saturating_sub(rest + TRUNCATION_MARGIN).min(original);
    copy.payload.truncate(keep);
    copy.headers
        .push((headers::TRUNCATED.into(), b"true".to_vec()));
    copy.headers.push((
        headers::SOURCE_SIZE.into(),
        original.to_string().into_bytes(),
    ));
    copy
}

/// `eventd.error` of a copy cut to fit.
const MAX_ERROR_BYTES: usize = 256;

#[cfg(test)]
mod truncation_tests {
    use super::*;

    fn size(copy: &Outgoing) -> usize {
        copy.payload.len()
            + copy.key.as_ref().map_or(0, Vec::len)
            + copy
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }

    #[test]
    fn a_copy_whose_headers_alone_are_too_large_still_fits() {
        let copy = Outgoing {
            topic: "dlq".to_owned(),
            key: Some(b"k".to_vec()),
            payload: vec![b'x'; 500],
            headers: vec![
                ("big".into(), vec![b'h'; 3000]),
                ("eventd.error".into(), vec![b'e'; 2000]),
                ("eventd.source.offset".into(), b"7".to_vec()),
            ],
        };
        let limit = 2000;
        let cut = truncated_to_fit(copy.clone(), size(&copy), limit);
        assert!(size(&cut) <= limit, "{} bytes", size(&cut));
        assert!(cut.headers.iter().all(|(name, _)| name != "big"));
        assert!(cut
            .headers
            .iter()
            .any(|(name, value)| name == "eventd.source.offset" && value == b"7"));
        assert!(cut
            .headers
            .iter()
            .any(|(name, value)| name == "eventd.source.size" && value == b"500"));
        // A copy with room keeps its headers and loses only value bytes.
        let roomy = Outgoing {
            headers: vec![("own".into(), b"v".to_vec())],
            payload: vec![b'x'; 5000],
            ..copy
        };
        let cut = truncated_to_fit(roomy.clone(), size(&roomy), limit);
        assert!(cut.headers.iter().any(|(name, _)| name == "own"));
        assert!(!cut.payload.is_empty() && size(&cut) <= limit);
    }
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn an_unknown_topic_may_pass_at_first_and_is_missing_for_good_once_it_lasts() {
        let handle = ProducerHandle::new(&crate::config::ProducerConfig::default());
        let unknown = || MetadataError::Refused(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert!(unknown().is_permanent());
        let first = handle.unknown_for_now("gone", unknown());
        assert!(
            matches!(first, MetadataError::NotYetKnown(_)) && !first.is_permanent(),
            "{first:?}"
        );
        let unanswered = handle.unknown_for_now("gone", MetadataError::Unanswered("x".into()));
        assert!(!unanswered.is_permanent());

        let long_ago = Instant::now()
            .checked_sub(crate::waits::TOPIC_PROPAGATION)
            .expect("a clock past the propagation wait");
        handle
            .shared
            .unknown_since
            .lock()
            .insert("gone".to_owned(), long_ago);
        assert!(handle.unknown_for_now("gone", unknown()).is_permanent());
        assert!(handle
            .unknown_for_now("gone", MetadataError::NotListed)
            .is_permanent());
        assert!(
            !handle
                .unknown_for_now("other", MetadataError::NotListed)
                .is_permanent(),
            "each topic has its own wait"
        );
    }
}
