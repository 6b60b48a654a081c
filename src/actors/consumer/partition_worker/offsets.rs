//! The offsets a worker stores: the lowest offset not yet finished by every handler,
//! handed to librdkafka's store (auto-commit sends it), and the rewind when an event
//! arrives below everything dispatched.

use ractor::ActorProcessingErr;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::PartitionWorkerState;
use crate::kafka::holder::OffsetHolder;
use crate::telemetry::metrics::PARTITION_REWINDS;

/// An event below every offset this worker dispatched.
#[derive(Debug, Clone, Copy)]
pub(super) struct Behind {
    pub(super) offset: i64,
    pub(super) next: i64,
}

impl PartitionWorkerState {
    /// An event arrived below the first offset this worker dispatched: it was never
    /// dispatched, and the offsets stored since may have passed it. Skipping it could
    /// lose it, so the stored and committed offset go back to no later than it, and the
    /// worker fails: its member restarts and reads the partition again from there.
    pub(super) async fn rewind(&mut self, behind: Behind) -> ActorProcessingErr {
        metrics::counter!(PARTITION_REWINDS, "consumer" => self.consumer_name.to_string(), "topic" => self.topic.to_string())
            .increment(1);
        let restart_at = self
            .inflight
            .committable()
            .map_or(behind.offset, |stored| stored.min(behind.offset));
        tracing::error!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
            offset = behind.offset, next = behind.next, restart_at,
            "event below the partition's first dispatched offset; restarting the partition from an earlier offset");
        if let (true, Some((_, client))) = (self.store_offsets, &self.source) {
            let mut list = TopicPartitionList::with_capacity(1);
            if list
                .add_partition_offset(&self.topic, self.partition, Offset::Offset(restart_at))
                .is_ok()
            {
                let client = client.clone();
                let committed = tokio::task::spawn_blocking(move || {
                    client.store_offsets(&list)?;
                    client.commit(&list, CommitMode::Sync)
                })
                .await;
                if !matches!(committed, Ok(Ok(()))) {
                    tracing::error!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
                        restart_at, result = ?committed, "cannot commit the earlier offset; the restart resumes from the last commit");
                }
            }
        }
        format!(
            "{}/{}: offset {} arrived below the offsets dispatched (next {})",
            self.topic, self.partition, behind.offset, behind.next
        )
        .into()
    }

    pub(super) fn store_if_moved(&mut self) {
        let Some(offset) = self.inflight.committable() else {
            return;
        };
        if self.stored == Some(offset) {
            return;
        }
        if !self.store_offsets {
            self.stored = Some(offset);
            return;
        }
        let Some(list) = self.offset_list(offset) else {
            return;
        };
        let Some((_, client)) = &self.source else {
            return;
        };
        // `store_offsets` stores exactly what it is given: the next offset to read.
        match client.store_offsets(&list) {
            Ok(()) => self.stored = Some(offset),
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                tracing::debug!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition, "partition no longer assigned, offset not stored");
            }
            Err(error) => {
                tracing::warn!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition, offset, %error, "cannot store offset");
            }
        }
    }

    /// This partition at `offset`, with the metadata naming this process when the
    /// consumer has a heartbeat (auto-commit sends a stored offset's metadata along).
    fn offset_list(&self, offset: i64) -> Option<TopicPartitionList> {
        let mut list = TopicPartitionList::with_capacity(1);
        let mut element = list.add_partition(&self.topic, self.partition);
        element.set_offset(Offset::Offset(offset)).ok()?;
        if let Some(heartbeat) = &self.heartbeat {
            element.set_metadata(
                OffsetHolder::this_process(&self.consumer_name, heartbeat.every, true)
                    .to_metadata(),
            );
        }
        Some(list)
    }

    /// Recommits the committed offset of a partition whose stored offset did not move
    /// for a whole interval, so its commits keep showing that this process runs.
    /// Auto-commit sends nothing then, and a moving offset needs no help: its stores
    /// carry fresh metadata. Only an offset stored an interval ago (auto-commit sent
    /// it) or committed before the partition was assigned is recommitted: never one
    /// that is not finished, and never one that moves the group's position.
    pub(super) fn heartbeat(&mut self) {
        let Some(heartbeat) = &mut self.heartbeat else {
            return;
        };
        let current = self.stored.or(heartbeat.committed_at_start);
        let moved = current != heartbeat.seen_at_last_tick;
        heartbeat.seen_at_last_tick = current;
        if moved || self.draining {
            return;
        }
        let Some(offset) = current else {
            // Nothing committed yet: there is no position to recommit.
            return;
        };
        let Some(list) = self.offset_list(offset) else {
            return;
        };
        let Some((_, client)) = &self.source else {
            return;
        };
        // Async: librdkafka queues it behind any auto-commit already sent, and the
        // commit callback reports a failure.
        if let Err(error) = client.commit(&list, CommitMode::Async) {
            tracing::debug!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition, offset, %error, "heartbeat commit not sent");
        }
    }
}
