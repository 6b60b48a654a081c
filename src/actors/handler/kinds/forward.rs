//! `forward`: re-publish events to `output`, whole or reduced to `fields`. Each copy
//! carries headers naming its source (topic, partition, offset) so consumers
//! downstream can de-duplicate the repeats that at-least-once delivery allows.
//!
//! A batch is finished only once every copy is acknowledged by the broker. Copies are
//! pipelined: the actor goes on with the next batch while these await their reports
//! (see `actor`). A copy that is not acknowledged comes back to the actor, which parks
//! its key and sends it again after its backoff, or dead-letters it when the broker
//! refused it for good, as it does with any failure of a handler's work.

use std::sync::Arc;

use ractor::ActorProcessingErr;

use super::super::actor::{BatchOutcome, Settling};
use super::super::{Batch, HandlerPool, Transient, WriteFailure};
use crate::actors::producer::{
    DeliveryFailure, DeliveryGroup, ProduceError, ProducerHandle, Record,
};
use crate::config::HandlerConfig;
use crate::event::{headers, Event};

pub struct Forward {
    output: String,
    producer: ProducerHandle,
}

/// A batch's copies on their way: settled once each is reported, or at the deadline.
struct Settle {
    output: String,
    deadline: std::time::Duration,
    events: usize,
    group: Arc<DeliveryGroup>,
    /// Copies not queued, by index: refused for good, or not sent to a replaced producer.
    refused: Vec<(usize, ProduceError)>,
}

impl Forward {
    pub fn new(config: &HandlerConfig, producer: ProducerHandle) -> Self {
        Self {
            output: config.output.clone().unwrap_or_default(),
            producer,
        }
    }

    pub async fn handle(
        &mut self,
        pool: &HandlerPool,
        batch: &Batch,
    ) -> Result<BatchOutcome, ActorProcessingErr> {
        let fields = pool.settings.load().fields.clone();
        let settling = self.forward(batch, fields).await?;
        Ok(BatchOutcome {
            settling: Some(settling),
            ..BatchOutcome::default()
        })
    }

    /// Queues a copy of every event of `batch`, pipelined, and returns what settles
    /// them.
    pub async fn forward(
        &self,
        batch: &Batch,
        fields: Option<Vec<String>>,
    ) -> Result<Settling, ActorProcessingErr> {
        let group = DeliveryGroup::with_tokens(batch.events.len());
        let mut refused = Vec::new();
        // Every copy of the batch goes to one producer: should it be replaced midway,
        // the rest are not sent to the new one before the old one's copies settle (the
        // actor sends them again, after any of those that fail).
        let generation = self.producer.generation();
        // The producer and the output topic are looked up once for the whole batch.
        let mut sender = match self
            .producer
            .batch(&self.output, &group, Some(generation))
            .await
        {
            Ok(sender) => Some(sender),
            Err(ProduceError::Replaced) => {
                refused.extend((0..batch.events.len()).map(|i| (i, ProduceError::Replaced)));
                None
            }
            Err(error) if error.is_permanent() => {
                refused.extend((0..batch.events.len()).map(|i| (i, error.clone())));
                None
            }
            // The producer is restarting or the topic's partitions are not known yet:
            // it may pass.
            Err(error) => return Err(Transient(error.to_string()).into()),
        };
        let mut source_text = headers::SourceText::default();
        for (index, event) in batch.events.iter().enumerate() {
            let Some(sender) = sender.as_mut() else {
                break;
            };
            let reduced_payload = fields.as_deref().map(|fields| reduced(event, fields));
            let record = Record {
                topic: &self.output,
                key: event.key.as_deref(),
                // Validated on the way in: without `fields` it goes on byte for byte.
                payload: reduced_payload
                    .as_deref()
                    .unwrap_or_else(|| event.body.bytes()),
                headers: &event.headers,
                more_headers: &source_text.headers(&event.source),
            };
            match sender.enqueue(record, index as u64).await {
                Ok(()) => {}
                Err(ProduceError::Replaced) => {
                    refused
                        .extend((index..batch.events.len()).map(|i| (i, ProduceError::Replaced)));
                    break;
                }
                Err(error) if error.is_permanent() => refused.push((index, error)),
                // The producer is restarting or its queue stays full: it may pass.
                Err(error) => return Err(Transient(error.to_string()).into()),
            }
        }
        drop(sender);
        let settle = Settle {
            output: self.output.clone(),
            deadline: self.producer.deadline(),
            events: batch.events.len(),
            group,
            refused,
        };
        Ok(Box::pin(settle.run()))
    }
}

impl Settle {
    /// The copies not acknowledged, by index in the batch, in batch order. Past the
    /// deadline every copy not yet acknowledged counts as failed: sent again behind
    /// the original, which librdkafka still holds, it may land twice, which
    /// at-least-once allows.
    async fn run(self) -> Vec<(usize, WriteFailure)> {
        let settled = tokio::time::timeout(self.deadline, self.group.settled())
            .await
            .is_ok();
        let mut failed = self.refused;
        failed.extend(
            self.group
                .take_failures()
                .into_iter()
                .map(|(token, error)| (token as usize, error)),
        );
        if !settled {
            let mut reported: Vec<bool> = (0..self.events)
                .map(|index| self.group.acknowledged(index as u64))
                .collect();
            for (index, _) in &failed {
                reported[*index] = true;
            }
            let late = ProduceError::Delivery {
                topic: self.output.clone(),
                failure: DeliveryFailure::without_code(format!(
                    "not acknowledged within producer.message_timeout ({})",
                    humantime::format_duration(self.deadline)
                )),
            };
            failed.extend(
                reported
                    .iter()
                    .enumerate()
                    .filter(|(_, reported)| !**reported)
                    .map(|(index, _)| (index, late.clone())),
            );
        }
        failed.sort_by_key(|(index, _)| *index);
        failed
            .into_iter()
            .map(|(index, error)| (index, WriteFailure::Produce(error)))
            .collect()
    }
}

/// A JSON object of `fields` only, each value copied as written; absent ones left out.
fn reduced(event: &Event, fields: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.body.bytes().len());
    out.push(b'{');
    for (i, field) in fields.iter().enumerate() {
        if fields[..i].contains(field) {
            continue;
        }
        let Some(raw) = event.body.raw(field) else {
            continue;
        };
        if out.len() > 1 {
            out.push(b',');
        }
        // Writing a string to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, field);
        out.push(b':');
        out.extend_from_slice(raw.as_bytes());
    }
    out.push(b'}');
    out
}
