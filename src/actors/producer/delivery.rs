//! Delivery reports: librdkafka calls back on its own thread, and the report is handed
//! to whoever awaits that event's acknowledgement.

use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::oneshot;

use crate::telemetry::metrics::PRODUCER_MESSAGES;

/// Where the broker put an acknowledged event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

pub struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<oneshot::Sender<Result<Delivery, String>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let report = match result {
            Ok(message) => {
                metrics::counter!(PRODUCER_MESSAGES, "topic" => message.topic().to_owned(), "outcome" => "delivered")
                    .increment(1);
                Ok(Delivery {
                    partition: message.partition(),
                    offset: message.offset(),
                })
            }
            Err((error, message)) => {
                metrics::counter!(PRODUCER_MESSAGES, "topic" => message.topic().to_owned(), "outcome" => "failed")
                    .increment(1);
                Err(error.to_string())
            }
        };
        // The waiter may have given up (shutdown); the report then has no one to tell.
        let _ = reply.send(report);
    }
}
