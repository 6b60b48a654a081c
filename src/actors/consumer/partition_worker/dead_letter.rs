//! Undecodable events: counted, logged and written to the dead-letter topic; the
//! offset moves past one only once the broker acknowledged its copy.

use ractor::ActorRef;

use super::{PartitionWorkerMsg, PartitionWorkerState};
use crate::actors::handler::BatchSource;
use crate::actors::producer::dead_letter::{
    dead_letter_copy, write_dead_letter, Provenance, Reason,
};
use crate::config::RetryConfig;
use crate::event::{DecodeError, Source};

impl PartitionWorkerState {
    pub(super) fn invalid_event(
        &mut self,
        myself: &ActorRef<PartitionWorkerMsg>,
        offset: i64,
        key: Option<Vec<u8>>,
        kafka_headers: crate::event::Headers,
        payload: Option<Vec<u8>>,
        error: DecodeError,
    ) {
        self.invalid.increment(1);
        tracing::warn!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
            offset, %error, dead_letter = self.dead_letter.as_deref().unwrap_or("none"), "invalid event");
        let Some(topic) = self.dead_letter.clone() else {
            self.inflight.dispatched(offset, 0);
            return;
        };
        self.inflight.dispatched(offset, 1);
        let source = Source {
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
        };
        let error = error.to_string();
        let outgoing = dead_letter_copy(
            &topic,
            key,
            payload.unwrap_or_default(),
            kafka_headers,
            &source,
            &Provenance {
                handler: None,
                reason: Reason::Undecodable,
                error: &error,
                attempts: None,
            },
        );
        let producer = self.producer.clone();
        let worker = myself.clone();
        let owner = self.source_handle.clone();
        let blocked = self.blocked.clone();
        tokio::spawn(async move {
            // The offset stays unstored until the dead-letter write is acknowledged.
            let written = write_dead_letter(
                &producer,
                outgoing,
                &source,
                &blocked,
                ("", Reason::Undecodable),
                // No handler is involved: the default `[handlers.retry]` backoff.
                &RetryConfig::default(),
                // Nothing is written for a partition being handed back.
                || owner.is_open(),
            )
            .await;
            if written {
                let _ = worker.send_message(PartitionWorkerMsg::DeadLettered(offset));
            }
        });
    }
}
