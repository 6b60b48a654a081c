//! What `/metrics` and `/healthz` show of a partition: the age of its oldest unfinished
//! event and whether it stalled.

use crate::telemetry::partitions::{PartitionKey, BOARD};

impl Drop for PartitionWorkerState {
    /// ractor skips `post_stop` for a worker killed with its failed group member (and
    /// unlinks it, so no supervisor hears of it): whatever ended the worker, its
    /// series, tasks and consumer references go with its state.
    fn drop(&mut self) {
        self.release();
    }
}

use super::PartitionWorkerState;

impl PartitionWorkerState {
    pub(super) fn board_key(&self) -> PartitionKey {
        (
            self.consumer_name.to_string(),
            self.topic.to_string(),
            self.partition,
        )
    }

    /// Ends what the worker keeps outside itself; done once, at stop or at drop.
    pub(super) fn release(&mut self) {
        self.waker.abort();
        self.measuring.abort();
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.timer.abort();
        }
        // The gauge's labels are the partition's: a newer worker of it sets its own.
        let gauge = &self.in_flight_gauge;
        BOARD.release(&self.board_key(), self.seat, || gauge.set(0.0));
        // The queue and the client close the consumer if they are its last references.
        if let Some(source) = self.source.take() {
            crate::actors::drop_off_runtime(source);
        }
    }

    /// Age of the oldest unfinished event (its Kafka timestamp to now) and whether the
    /// partition is stalled, for `/metrics` and `/healthz`.
    pub(super) fn measure(&mut self) {
        let oldest = self
            .outstanding
            .values()
            .filter_map(|o| o.events.unfinished().next())
            .min_by_key(|event| event.source.offset)
            .and_then(|event| event.timestamp);
        let lag_seconds = match (self.inflight.is_empty(), oldest) {
            (true, _) | (false, None) => 0.0,
            (false, Some(at)) => {
                (chrono::Utc::now().timestamp_millis() - at).max(0) as f64 / 1000.0
            }
        };
        let stalled =
            !self.inflight.is_empty() && self.last_progress.elapsed() >= self.stall_timeout;
        if stalled != self.stalled {
            self.stalled = stalled;
            if stalled {
                tracing::warn!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
                    in_flight = self.inflight.len(), since_s = self.last_progress.elapsed().as_secs(),
                    "partition stalled: events unfinished and none finished for health.stall_timeout");
            } else {
                tracing::info!(consumer = %self.consumer_name, topic = %self.topic, partition = self.partition,
                    "partition no longer stalled");
            }
        }
        BOARD.set_worker(&self.board_key(), self.seat, lag_seconds, stalled);
    }
}
