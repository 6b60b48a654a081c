//! `forward`: re-publish events to `output`, whole or reduced to `fields`. Each copy
//! carries headers naming its source (topic, partition, offset) so consumers
//! downstream can de-duplicate the repeats that at-least-once delivery allows.
//!
//! A batch is finished only once every copy is settled: acknowledged by the broker, or,
//! when the write can never succeed (too large, no valid partition, or refused by the
//! broker for good), written to the dead-letter topic with the reason. With an
//! idempotent producer the settling runs beside the actor (see `actor`); otherwise here,
//! since retries could then reorder copies of one key. A copy that failed for a reason
//! that may pass (a broker restarting, a timeout) is sent again with backoff, so it
//! lands after later copies of its key that were already written.

use std::sync::Arc;

use ractor::ActorProcessingErr;

use super::super::actor::{BatchOutcome, Settling};
use super::super::{Batch, BatchSource, HandlerPool, Transient};
use crate::actors::producer::dead_letter::{
    dead_letter_copy, write_dead_letter, Blocked, Provenance, Reason, Retry,
};
use crate::actors::producer::{DeliveryGroup, Outgoing, ProduceError, ProducerHandle, Record};
use crate::config::HandlerConfig;
use crate::event::{headers, Event};

pub struct Forward {
    output: String,
    producer: ProducerHandle,
    /// Where an event that can never be forwarded goes.
    dead_letter: Option<String>,
}

/// What settling a batch's copies needs, owned so it can run beside the actor.
struct Settle {
    handler: Arc<str>,
    consumer: String,
    output: String,
    fields: Option<Vec<String>>,
    producer: ProducerHandle,
    dead_letter: Option<String>,
    blocked: Arc<Blocked>,
    worker: Arc<dyn BatchSource>,
    /// The batch's events; a copy's token in `group` is its index here.
    events: Arc<[Arc<Event>]>,
    group: Arc<DeliveryGroup>,
    /// Copies the producer refused for good before queueing them, by index.
    refused: Vec<(usize, ProduceError)>,
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
        let settling = self.forward(pool, batch, fields).await?;
        Ok(BatchOutcome {
            settling,
            ..BatchOutcome::default()
        })
    }

    /// Queues a copy of every event of `batch`, pipelined. Returns the settling still
    /// to await when the producer keeps partition order, after awaiting it here
    /// otherwise.
    pub async fn forward(
        &self,
        pool: &HandlerPool,
        batch: &Batch,
        fields: Option<Vec<String>>,
    ) -> Result<Option<Settling>, ActorProcessingErr> {
        let group = DeliveryGroup::new();
        let mut refused = Vec::new();
        let mut source_text = headers::SourceText::default();
        for (index, event) in batch.events.iter().enumerate() {
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
            match self.producer.enqueue_in(record, &group, index as u64).await {
                Ok(()) => {}
                Err(error) if error.is_permanent() => refused.push((index, error)),
                // The producer is restarting or its queue stays full: it may pass.
                Err(error) => return Err(Transient(error.to_string()).into()),
            }
        }
        let settle = Settle {
            handler: pool.name.clone(),
            consumer: pool.consumer.clone(),
            output: self.output.clone(),
            fields,
            producer: self.producer.clone(),
            dead_letter: self.dead_letter.clone(),
            blocked: batch.blocked.clone(),
            worker: batch.reply_to.clone(),
            events: batch.events.clone(),
            group,
            refused,
        };
        if self.producer.keeps_partition_order() {
            return Ok(Some(Box::pin(settle.run())));
        }
        settle.run().await?;
        Ok(None)
    }
}

impl Settle {
    async fn run(mut self) -> Result<(), ActorProcessingErr> {
        let patience = self.producer.patience();
        if tokio::time::timeout(patience, self.group.settled())
            .await
            .is_err()
        {
            // librdkafka reports every event within message_timeout: a restart of
            // the actor redelivers what this batch held.
            return Err(format!(
                "handler {}: no delivery report for copies to {:?} within {}",
                self.handler,
                self.output,
                humantime::format_duration(patience)
            )
            .into());
        }
        let mut refused = std::mem::take(&mut self.refused);
        let mut failed = Vec::new();
        for (token, error) in self.group.take_failures() {
            if error.is_permanent() {
                refused.push((token as usize, error));
            } else {
                failed.push((token as usize, error));
            }
        }
        let in_batch_order = |mut copies: Vec<(usize, ProduceError)>| {
            copies.sort_by_key(|(index, _)| *index);
            copies
                .into_iter()
                .map(|(index, error)| (self.events[index].clone(), error))
                .collect::<Vec<_>>()
        };
        let failed = in_batch_order(failed);
        let mut refused = in_batch_order(refused);
        refused.extend(self.send_again(failed).await);
        for (event, error) in refused {
            self.set_aside(&event, &error).await;
        }
        Ok(())
    }

    /// Copies whose delivery failed for a reason that may pass (the broker was
    /// restarting, a timeout): sent again together with doubling backoff, their
    /// partition shown blocked meanwhile, until each lands or is refused for good
    /// (returned), or the partition is gone. Failing the actor instead would let one
    /// outage use up the restart budget of a handler that did nothing wrong.
    async fn send_again(
        &self,
        mut failed: Vec<(Arc<Event>, ProduceError)>,
    ) -> Vec<(Arc<Event>, ProduceError)> {
        let mut refused = Vec::new();
        let Some((first, _)) = failed.first() else {
            return refused;
        };
        let source = first.source.clone();
        let mut retry = Retry::new(&self.blocked);
        while let Some((_, error)) = failed.first() {
            retry
                .failed(
                    &format!(
                        "handler {}: forward of {} events",
                        self.handler,
                        failed.len()
                    ),
                    &self.output,
                    &source,
                    &error.to_string(),
                )
                .await;
            if !self.worker.is_open() {
                break;
            }
            let mut queued = Vec::with_capacity(failed.len());
            for (event, _) in std::mem::take(&mut failed) {
                let copy = copy_of(&event, &self.output, self.fields.as_deref());
                match self.producer.enqueue(copy).await {
                    Ok(delivery) => queued.push((event, delivery)),
                    Err(error) if error.is_permanent() => refused.push((event, error)),
                    Err(error) => failed.push((event, error)),
                }
            }
            for (event, delivery) in queued {
                match delivery.wait().await {
                    Ok(_) => {}
                    Err(error) if error.is_permanent() => refused.push((event, error)),
                    Err(error) => failed.push((event, error)),
                }
            }
        }
        retry.done();
        refused
    }

    /// An event no resend can forward: to the dead-letter topic with the reason, or,
    /// with none set, retried at the longest backoff with its partition marked blocked,
    /// because skipping it would lose it.
    async fn set_aside(&self, event: &Event, error: &ProduceError) {
        let worker_running = || self.worker.is_open();
        let Some(topic) = &self.dead_letter else {
            let mut retry = Retry::new(&self.blocked);
            let mut error = error.to_string();
            loop {
                retry
                    .failed(
                        &format!(
                            "handler {}: forward (no [dead_letter] topic is set)",
                            self.handler
                        ),
                        &self.output,
                        &event.source,
                        &error,
                    )
                    .await;
                if !worker_running() {
                    retry.done();
                    return;
                }
                let copy = copy_of(event, &self.output, self.fields.as_deref());
                let sent = match self.producer.enqueue(copy).await {
                    Ok(delivery) => delivery.wait().await,
                    Err(refused) => Err(refused),
                };
                match sent {
                    Ok(_) => {
                        retry.done();
                        return;
                    }
                    Err(again) => error = again.to_string(),
                }
            }
        };
        tracing::error!(handler = %self.handler, consumer = %self.consumer, topic = %event.source.topic, partition = event.source.partition,
            offset = event.source.offset, %error, dead_letter = %topic, "event cannot be forwarded, dead-lettered");
        let reason = match error {
            ProduceError::TooLarge { .. } => Reason::TooLarge,
            _ => Reason::ProduceRejected,
        };
        let copy = dead_letter_copy(
            topic,
            event.key.clone(),
            event.body.bytes().to_vec(),
            event.headers.clone(),
            &event.source,
            &Provenance {
                handler: Some(&self.handler),
                reason,
                error: &error.to_string(),
                attempts: None,
            },
        );
        write_dead_letter(
            &self.producer,
            copy,
            &event.source,
            &self.blocked,
            (&self.handler, reason),
            worker_running,
        )
        .await;
    }
}

/// The event as written to `topic`: same key and headers plus the source headers.
pub fn copy_of(event: &Event, topic: &str, fields: Option<&[String]>) -> Outgoing {
    let payload = match fields {
        Some(fields) => reduced(event, fields),
        // The payload was validated on the way in: it goes on byte for byte.
        None => event.body.bytes().to_vec(),
    };
    let mut kafka_headers = event.headers.clone();
    kafka_headers.extend(headers::source(&event.source));
    Outgoing {
        topic: topic.to_owned(),
        key: event.key.clone(),
        payload,
        headers: kafka_headers,
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
