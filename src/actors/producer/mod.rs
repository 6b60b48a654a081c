//! The ProducerActor owns the daemon's one librdkafka producer. Handlers, the demo and
//! the dead-letter path send through a `ProducerHandle`, which goes straight into
//! librdkafka's queue (no actor message per event); the actor owns the producer's life:
//! it creates it, replaces it when restarted, and flushes it on stop.

mod delivery;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::kafka::{producer_config, Brokers};

pub use delivery::{Delivery, DeliveryContext};

type KafkaProducer = ThreadedProducer<DeliveryContext>;

/// An event to write.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    #[error("the producer is not running")]
    NotRunning,
    #[error(
        "event for topic {topic:?} is {size} bytes, above producer.max_message_bytes ({limit})"
    )]
    TooLarge {
        topic: String,
        size: usize,
        limit: u32,
    },
    #[error("cannot enqueue event for topic {topic:?}: {reason}")]
    Enqueue { topic: String, reason: String },
    #[error("delivery to topic {topic:?} failed: {reason}")]
    Delivery { topic: String, reason: String },
}

/// How the rest of the daemon sends events.
#[derive(Clone)]
pub struct ProducerHandle {
    producer: Arc<ArcSwapOption<KafkaProducer>>,
    max_message_bytes: u32,
}

/// Resolves when the broker acknowledged (or finally refused) one event.
pub struct PendingDelivery {
    topic: String,
    receiver: oneshot::Receiver<Result<Delivery, String>>,
}

impl PendingDelivery {
    pub async fn wait(self) -> Result<Delivery, ProduceError> {
        match self.receiver.await {
            Ok(Ok(delivery)) => Ok(delivery),
            Ok(Err(reason)) => Err(ProduceError::Delivery {
                topic: self.topic,
                reason,
            }),
            Err(_) => Err(ProduceError::Delivery {
                topic: self.topic,
                reason: "the producer stopped before the delivery report".to_owned(),
            }),
        }
    }
}

impl ProducerHandle {
    fn new(max_message_bytes: u32) -> Self {
        Self {
            producer: Arc::new(ArcSwapOption::empty()),
            max_message_bytes,
        }
    }

    /// Queues `event` in librdkafka and returns its delivery report to await; waits
    /// while librdkafka's queue is full rather than dropping.
    pub async fn enqueue(&self, event: Outgoing) -> Result<PendingDelivery, ProduceError> {
        let size = event.payload.len() + event.key.as_ref().map_or(0, Vec::len);
        if size > self.max_message_bytes as usize {
            return Err(ProduceError::TooLarge {
                topic: event.topic,
                size,
                limit: self.max_message_bytes,
            });
        }
        let mut headers = OwnedHeaders::new_with_capacity(event.headers.len());
        for (name, value) in &event.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let (tx, rx) = oneshot::channel();
        let mut opaque = Box::new(tx);
        let mut backoff = Duration::from_millis(1);
        loop {
            let producer = self.producer.load_full().ok_or(ProduceError::NotRunning)?;
            let mut record = BaseRecord::with_opaque_to(&event.topic, opaque)
                .payload(&event.payload)
                .headers(headers.clone());
            if let Some(key) = &event.key {
                record = record.key(key);
            }
            match producer.send(record) {
                Ok(()) => {
                    return Ok(PendingDelivery {
                        topic: event.topic,
                        receiver: rx,
                    })
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record)) => {
                    opaque = record.delivery_opaque;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                Err((error, _)) => {
                    return Err(ProduceError::Enqueue {
                        topic: event.topic,
                        reason: error.to_string(),
                    })
                }
            }
        }
    }

    /// Sends `event` and waits for the broker's acknowledgement.
    pub async fn send(&self, event: Outgoing) -> Result<Delivery, ProduceError> {
        self.enqueue(event).await?.wait().await
    }

    /// Events queued in librdkafka and not yet acknowledged.
    pub fn queue_depth(&self) -> i32 {
        self.producer
            .load()
            .as_ref()
            .map_or(0, |producer| producer.in_flight_count())
    }
}

pub struct ProducerActor;

pub struct ProducerArgs {
    pub config: Arc<Config>,
    pub brokers: Brokers,
    pub handle: ProducerHandle,
}

pub struct ProducerState {
    handle: ProducerHandle,
}

/// Messages of the ProducerActor.
pub enum ProducerMsg {
    /// Wait until every queued event is acknowledged or `timeout` passes; replies with
    /// the number still unacknowledged.
    Flush(Duration, RpcReplyPort<i32>),
}

impl ProducerActor {
    /// A handle that works once the actor has started, and across its restarts.
    pub fn handle(config: &Config) -> ProducerHandle {
        ProducerHandle::new(config.producer.max_message_bytes)
    }
}

impl Actor for ProducerActor {
    type Msg = ProducerMsg;
    type State = ProducerState;
    type Arguments = ProducerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ProducerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let producer: KafkaProducer =
            producer_config(&args.config, &args.brokers).create_with_context(DeliveryContext)?;
        args.handle.producer.store(Some(Arc::new(producer)));
        tracing::info!(brokers = %args.brokers.bootstrap, "producer started");
        Ok(ProducerState {
            handle: args.handle,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: ProducerMsg,
        state: &mut ProducerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ProducerMsg::Flush(timeout, reply) => {
                let left = flush(&state.handle, timeout).await;
                let _ = reply.send(left);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ProducerState,
    ) -> Result<(), ActorProcessingErr> {
        let left = flush(&state.handle, Duration::from_secs(5)).await;
        if left > 0 {
            tracing::warn!(
                unacknowledged = left,
                "producer stopped with events unacknowledged"
            );
        }
        state.handle.producer.store(None);
        Ok(())
    }
}

async fn flush(handle: &ProducerHandle, timeout: Duration) -> i32 {
    let Some(producer) = handle.producer.load_full() else {
        return 0;
    };
    let flushed = tokio::task::spawn_blocking(move || {
        let result = producer.flush(timeout);
        (result, producer.in_flight_count())
    })
    .await;
    match flushed {
        Ok((Ok(()), _)) => 0,
        Ok((Err(_), left)) => left,
        Err(_) => -1,
    }
}
