//! Delivery reports: librdkafka calls back on its own thread, and the report is handed
//! to whoever awaits that event's acknowledgement. Each event carries a ticket holding
//! its in-flight permit, so the bound on unacknowledged events is freed only by a report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use metrics::Histogram;
use parking_lot::Mutex;
use ractor::ActorRef;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::{oneshot, Notify};

use super::handle::{ProduceError, TopicState};
use super::ProducerMsg;
use crate::telemetry::metrics::PRODUCER_DELIVERY;

/// Where the broker put an acknowledged event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// Why librdkafka gave up on an event: its error code (none when the report never
/// came) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    pub code: Option<RDKafkaErrorCode>,
    pub reason: String,
}

impl DeliveryFailure {
    pub fn without_code(reason: impl Into<String>) -> Self {
        Self {
            code: None,
            reason: reason.into(),
        }
    }
}

/// Who hears of one event's report.
pub enum Reply {
    /// The one waiter of this event.
    One(oneshot::Sender<Result<Delivery, DeliveryFailure>>),
    /// A group of events sent together (the `Sender`'s group), told once the last of
    /// them is reported; the token says which event of the group a failure belongs to.
    Group(u64),
}

/// What every record of one send or batch shares. A record holds one reference to it
/// rather than one each to the in-flight bound, the topic and the group: the sending
/// thread took each of those and the report thread dropped it, three atomic operations
/// per record on both threads on cache lines the other one had just written.
pub struct Sender {
    pub limit: Arc<InFlightLimit>,
    /// The topic's delivery counters, found when the send or batch began.
    pub topic: Arc<TopicState>,
    /// Told of every `Reply::Group` record's report.
    pub group: Option<Arc<DeliveryGroup>>,
}

impl Sender {
    /// A place for one more record under the in-flight bound, once the bound allows it.
    pub async fn acquire(self: &Arc<Self>) -> InFlightPermit {
        self.limit.take_place().await;
        InFlightPermit(Some(self.clone()))
    }
}

/// Reports of many events gathered without a channel or a wake-up per event: the
/// sender learns once that all of them are settled, then which failed. For batches
/// (a forward handler's copies) and streams (`eventd produce`).
#[derive(Default)]
pub struct DeliveryGroup {
    /// Sent and not yet reported.
    outstanding: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<(u64, Arc<TopicState>, DeliveryFailure)>>,
    settled: Notify,
    /// Which tokens were acknowledged, one bit each, for groups made `with_tokens`: a
    /// sender that stops waiting at its deadline must know which events landed.
    acknowledged: Vec<AtomicU64>,
}

impl DeliveryGroup {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A group whose tokens are `0..tokens` and which remembers which were acknowledged.
    pub fn with_tokens(tokens: usize) -> Arc<Self> {
        Arc::new(Self {
            acknowledged: (0..tokens.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            ..Self::default()
        })
    }

    /// Whether the event of `token` was acknowledged (groups made `with_tokens` only).
    pub fn acknowledged(&self, token: u64) -> bool {
        self.acknowledged
            .get((token / 64) as usize)
            .is_some_and(|word| word.load(Ordering::Acquire) & (1 << (token % 64)) != 0)
    }

    /// Counted before librdkafka sees the event: its report may come before `send`
    /// returns.
    pub(super) fn sending(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    /// The event counted by `sending` was not sent after all.
    pub(super) fn not_sent(&self) {
        self.settle_one();
    }

    fn report(
        &self,
        token: u64,
        topic: &Arc<TopicState>,
        report: Result<Delivery, DeliveryFailure>,
    ) {
        match report {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(word) = self.acknowledged.get((token / 64) as usize) {
                    word.fetch_or(1 << (token % 64), Ordering::Release);
                }
            }
            Err(failure) => {
                self.failures.lock().push((token, topic.clone(), failure));
                self.failed.fetch_add(1, Ordering::Release);
            }
        }
        self.settle_one();
    }

    fn settle_one(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }

    /// Events acknowledged by the broker so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Failures reported so far, taken or not: cheap to poll before `take_failures`.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Acquire)
    }

    /// Events sent and not yet reported.
    pub fn unreported(&self) -> u64 {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Failures reported since the last call, with their tokens, in the order they
    /// were reported.
    pub fn take_failures(&self) -> Vec<(u64, ProduceError)> {
        std::mem::take(&mut *self.failures.lock())
            .into_iter()
            .map(|(token, topic, failure)| {
                let topic = topic.name.to_string();
                (token, ProduceError::Delivery { topic, failure })
            })
            .collect()
    }

    /// Resolves once every event sent so far is reported.
    pub async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            // Registered before the check, so a last report between the two wakes it.
            notified.as_mut().enable();
            if self.outstanding.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The bound on unacknowledged events (`producer.max_in_flight`). A sender that meets
/// it waits until an eighth of the bound is free again, not for the next single report:
/// waking it per report would cost a thread wake-up per event at full speed.
pub struct InFlightLimit {
    max: u64,
    resume_at: u64,
    current: AtomicU64,
    room: Notify,
}

impl InFlightLimit {
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.max(1) as u64;
        Arc::new(Self {
            max,
            resume_at: max - (max / 8).max(1),
            current: AtomicU64::new(0),
            room: Notify::new(),
        })
    }

    /// Takes a place for one more event once the bound allows it; `release` gives it
    /// back (an `InFlightPermit` does, when dropped).
    async fn take_place(&self) {
        loop {
            let current = self.current.load(Ordering::Acquire);
            if current < self.max {
                if self
                    .current
                    .compare_exchange_weak(
                        current,
                        current + 1,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a release between the two wakes it.
            room.as_mut().enable();
            if self.current.load(Ordering::Acquire) > self.resume_at {
                room.await;
            }
        }
    }

    /// Events holding a permit: sent, or being sent, and not yet reported.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    fn release(&self) {
        if self.current.fetch_sub(1, Ordering::AcqRel) == self.resume_at + 1 {
            self.room.notify_waiters();
        }
    }
}

/// One event's place under the in-flight bound, given back when dropped.
pub struct InFlightPermit(Option<Arc<Sender>>);

impl InFlightPermit {
    /// Gives the place back now, keeping what the record shares with its batch.
    fn release(mut self) -> Option<Arc<Sender>> {
        let sender = self.0.take();
        if let Some(sender) = &sender {
            sender.limit.release();
        }
        sender
    }
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        if let Some(sender) = &self.0 {
            sender.limit.release();
        }
    }
}

/// What travels with one event through librdkafka and comes back in its report.
pub struct Ticket {
    pub reply: Reply,
    /// When it was sent, for `eventd_producer_delivery_seconds`: set on a batch's
    /// first record only, so a report reads the clock once per batch, not per event.
    pub enqueued: Option<Instant>,
    /// Its place under the in-flight bound, and what it shares with its batch.
    pub permit: InFlightPermit,
}

pub struct DeliveryContext {
    actor: ActorRef<ProducerMsg>,
    delivery_seconds: Histogram,
}

impl DeliveryContext {
    pub fn new(actor: ActorRef<ProducerMsg>) -> Self {
        Self {
            actor,
            delivery_seconds: metrics::histogram!(PRODUCER_DELIVERY),
        }
    }
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::kafka::log_librdkafka(level, fac, message, None);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // rust-rdkafka passes the underlying error without librdkafka's "is fatal"
        // flag, so the actor asks the client whether this one was fatal.
        tracing::warn!(%error, reason, "librdkafka producer error");
        let _ = self.actor.send_message(ProducerMsg::CheckFatal);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Self::DeliveryOpaque) {
        if let Some(enqueued) = ticket.enqueued {
            self.delivery_seconds
                .record(enqueued.elapsed().as_secs_f64());
        }
        let Ticket { reply, permit, .. } = *ticket;
        // The place is given back before anyone is told, so a sender the report wakes
        // finds it free.
        let Some(sender) = permit.release() else {
            return;
        };
        let report = match result {
            Ok(message) => {
                sender.topic.delivered.increment(1);
                Ok(Delivery {
                    partition: message.partition(),
                    offset: message.offset(),
                })
            }
            Err((error, _)) => {
                sender.topic.failed.increment(1);
                Err(DeliveryFailure {
                    code: error.rdkafka_error_code(),
                    reason: error.to_string(),
                })
            }
        };
        match reply {
            // The waiter may have given up (shutdown); the report then has no one to tell.
            Reply::One(waiter) => {
                let _ = waiter.send(report);
            }
            Reply::Group(token) => {
                if let Some(group) = &sender.group {
                    group.report(token, &sender.topic, report);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_group_with_tokens_knows_which_events_were_acknowledged() {
        let group = DeliveryGroup::with_tokens(130);
        let topic = Arc::new(TopicState::new("out", 1, 0));
        for _ in 0..3 {
            group.sending();
        }
        let landed = Delivery {
            partition: 0,
            offset: 1,
        };
        group.report(0, &topic, Ok(landed));
        group.report(129, &topic, Ok(landed));
        group.report(64, &topic, Err(DeliveryFailure::without_code("refused")));
        group.settled().await;
        assert!(group.acknowledged(0) && group.acknowledged(129));
        assert!(!group.acknowledged(64), "failed, not acknowledged");
        assert!(!group.acknowledged(1), "never reported");
        assert!(!group.acknowledged(5_000), "beyond the tokens");
        assert_eq!(group.take_failures().len(), 1);
    }

    #[tokio::test]
    async fn a_full_limit_lets_a_sender_on_only_once_an_eighth_is_free() {
        let limit = InFlightLimit::new(16);
        let sender = Arc::new(Sender {
            limit: limit.clone(),
            topic: Arc::new(TopicState::new("out", 1, 0)),
            group: None,
        });
        let mut held: Vec<InFlightPermit> = Vec::new();
        for _ in 0..16 {
            held.push(sender.acquire().now_or_never().expect("below the bound"));
        }
        let waiting = sender.clone();
        let mut next = tokio::spawn(async move { waiting.acquire().await });
        tokio::task::yield_now().await;
        assert!((&mut next).now_or_never().is_none(), "the bound holds");
        held.pop();
        tokio::task::yield_now().await;
        assert!(
            (&mut next).now_or_never().is_none(),
            "one free place is not enough to wake the sender"
        );
        held.pop();
        let permit = next.await.expect("sender task");
        assert_eq!(limit.current.load(Ordering::Relaxed), 15);
        drop(permit);
        drop(held);
        assert_eq!(limit.current.load(Ordering::Relaxed), 0);
    }
}
