//! `forward`: re-publish events to `output`, whole or reduced to `fields`. Each copy
//! carries headers naming its source (topic, partition, offset) so consumers
//! downstream can de-duplicate the repeats that at-least-once delivery allows. A batch
//! is finished only after the broker acknowledged every copy; with an idempotent
//! producer the acknowledgements are awaited beside the actor (see `actor`), otherwise
//! here, since retries could then reorder copies of one key.

use std::sync::Arc;

use ractor::ActorProcessingErr;
use serde_json::{Map, Value};

use super::super::actor::BatchOutcome;
use super::super::{Batch, HandlerPool};
use crate::actors::producer::{Outgoing, PendingDelivery, ProduceError, ProducerHandle};
use crate::config::HandlerConfig;
use crate::event::{headers, Event};

pub struct Forward {
    output: String,
    producer: ProducerHandle,
    /// Where an event that can never be forwarded (too large, no valid partition) goes.
    dead_letter: Option<String>,
}

impl Forward {
    pub fn new(
        config: &HandlerConfig,
        producer: ProducerHandle,
        dead_letter: Option<String>,
    ) -> Self {
        Self {
            output: config.output.clone().unwrap_or_default(),
            producer,
            dead_letter,
        }
    }

    pub async fn handle(
        &mut self,
        pool: &HandlerPool,
        batch: &Batch,
    ) -> Result<BatchOutcome, ActorProcessingErr> {
        let fields = pool.settings.load().fields.clone();
        let writes = self
            .forward(&pool.name, &batch.events, fields.as_deref())
            .await?;
        Ok(BatchOutcome {
            writes,
            ..BatchOutcome::default()
        })
    }

    /// Sends every event, pipelined. Returns the acknowledgements still to await when
    /// the producer keeps partition order, after awaiting them here otherwise.
    pub async fn forward(
        &self,
        handler: &str,
        events: &[Arc<Event>],
        fields: Option<&[String]>,
    ) -> Result<Vec<PendingDelivery>, ActorProcessingErr> {
        let mut pending: Vec<PendingDelivery> = Vec::with_capacity(events.len());
        for event in events {
            let copy = copy_of(event, &self.output, fields);
            match self.producer.enqueue(copy).await {
                Ok(delivery) => pending.push(delivery),
                Err(error) if error.is_permanent() => {
                    pending.push(self.dead_letter_instead(handler, event, &error).await?);
                }
                Err(error) => return Err(error.into()),
            }
        }
        if self.producer.keeps_partition_order() {
            return Ok(pending);
        }
        for delivery in pending {
            delivery.wait().await?;
        }
        Ok(Vec::new())
    }

    async fn dead_letter_instead(
        &self,
        handler: &str,
        event: &Event,
        error: &ProduceError,
    ) -> Result<PendingDelivery, ActorProcessingErr> {
        let Some(topic) = &self.dead_letter else {
            return Err(
                format!("handler {handler}: {error}; no [dead_letter] topic is set").into(),
            );
        };
        tracing::error!(handler, topic = %event.source.topic, partition = event.source.partition,
            offset = event.source.offset, %error, "event cannot be forwarded, dead-lettered");
        let mut copy = copy_of(event, topic, None);
        copy.headers
            .push((headers::ERROR.to_owned(), error.to_string().into_bytes()));
        Ok(self.producer.enqueue_dead_letter(copy).await?)
    }
}

/// The event as written to `topic`: same key and headers plus the source headers.
pub fn copy_of(event: &Event, topic: &str, fields: Option<&[String]>) -> Outgoing {
    let body = match fields {
        Some(fields) => {
            let reduced: Map<String, Value> = fields
                .iter()
                .filter_map(|f| event.body.get(f).map(|v| (f.clone(), v.clone())))
                .collect();
            Value::Object(reduced)
        }
        None => Value::Object(event.body.clone()),
    };
    let mut kafka_headers = event.headers.clone();
    kafka_headers.extend(headers::source(&event.source));
    Outgoing {
        topic: topic.to_owned(),
        key: event.key.clone(),
        payload: body.to_string().into_bytes(),
        headers: kafka_headers,
    }
}
