//! Delivery reports: librdkafka calls back on its own thread, and the report is handed
//! to whoever awaits that event's acknowledgement. Each event carries a ticket holding
//! its in-flight permit, so the bound on unacknowledged events is freed only by a report.

use std::sync::Arc;
use std::time::Instant;

use metrics::{Gauge, Histogram};
use ractor::ActorRef;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::handle::TopicState;
use super::ProducerMsg;
use crate::telemetry::metrics::{PRODUCER_DELIVERY, PRODUCER_QUEUE_DEPTH};

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

/// What travels with one event through librdkafka and comes back in its report.
pub struct Ticket {
    pub reply: oneshot::Sender<Result<Delivery, DeliveryFailure>>,
    pub enqueued: Instant,
    pub permit: OwnedSemaphorePermit,
    /// The topic's delivery counters, found when the event was sent.
    pub topic: Arc<TopicState>,
}

pub struct DeliveryContext {
    actor: ActorRef<ProducerMsg>,
    queue_depth: Gauge,
    delivery_seconds: Histogram,
}

impl DeliveryContext {
    pub fn new(actor: ActorRef<ProducerMsg>) -> Self {
        Self {
            actor,
            queue_depth: metrics::gauge!(PRODUCER_QUEUE_DEPTH),
            delivery_seconds: metrics::histogram!(PRODUCER_DELIVERY),
        }
    }
}

impl ClientContext for DeliveryContext {
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
        self.queue_depth.decrement(1.0);
        self.delivery_seconds
            .record(ticket.enqueued.elapsed().as_secs_f64());
        let report = match result {
            Ok(message) => {
                ticket.topic.delivered.increment(1);
                Ok(Delivery {
                    partition: message.partition(),
                    offset: message.offset(),
                })
            }
            Err((error, _)) => {
                ticket.topic.failed.increment(1);
                Err(DeliveryFailure {
                    code: error.rdkafka_error_code(),
                    reason: error.to_string(),
                })
            }
        };
        let Ticket { reply, permit, .. } = *ticket;
        drop(permit);
        // The waiter may have given up (shutdown); the report then has no one to tell.
        let _ = reply.send(report);
    }
}
