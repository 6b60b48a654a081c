//! Handing partitions back (revoke and shutdown): stop reading, wait for in-flight
//! events, emit open count windows so their offsets are free, store final offsets,
//! stop the workers. The caller then commits.

use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::ActorRef;

use super::partition_worker::{FinalPosition, PartitionWorkerMsg};
use crate::actors::handler::Router;

/// A worker with the partition it owns.
pub struct OwnedPartition {
    pub topic: String,
    pub partition: i32,
    pub worker: ActorRef<PartitionWorkerMsg>,
}

/// Hands `partitions` back within `timeout`; what is unfinished then is redelivered
/// after the rebalance or restart, because its offset was not stored. Returns, in
/// the order of `partitions`, where each worker said it stands (`None` where it did
/// not answer).
pub async fn hand_back(
    consumer: &str,
    partitions: Vec<OwnedPartition>,
    router: &Router,
    timeout: Duration,
) -> Vec<Option<FinalPosition>> {
    if partitions.is_empty() {
        return Vec::new();
    }
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());

    let drains = partitions
        .iter()
        .map(|p| p.worker.call(PartitionWorkerMsg::Drain, Some(left())));
    for (p, result) in partitions
        .iter()
        .zip(futures::future::join_all(drains).await)
    {
        if !matches!(result, Ok(CallResult::Success(()))) {
            tracing::warn!(consumer, topic = %p.topic, partition = p.partition, "partition did not drain in time");
        }
    }
    if let Err(error) = router.flush(left().max(Duration::from_millis(100))).await {
        tracing::warn!(consumer, %error, "count windows not emitted; their events will be recounted");
    }
    let finals = partitions.iter().map(|p| {
        p.worker.call(
            PartitionWorkerMsg::StoreFinal,
            Some(left().max(Duration::from_millis(100))),
        )
    });
    let mut positions = Vec::with_capacity(partitions.len());
    for (p, result) in partitions
        .iter()
        .zip(futures::future::join_all(finals).await)
    {
        positions.push(match &result {
            Ok(CallResult::Success(position)) => Some(*position),
            _ => None,
        });
        match result {
            Ok(CallResult::Success(FinalPosition {
                stored,
                in_flight,
                held_windows,
            })) => {
                if in_flight > 0 || held_windows > 0 {
                    tracing::warn!(consumer, topic = %p.topic, partition = p.partition, stored, in_flight, held_windows,
                        "partition handed back unfinished; events from the stored offset on will be redelivered");
                } else {
                    tracing::debug!(consumer, topic = %p.topic, partition = p.partition, stored, "partition handed back");
                }
            }
            _ => {
                tracing::warn!(consumer, topic = %p.topic, partition = p.partition, "final offset not stored")
            }
        }
    }
    let stop_wait = left()
        .max(Duration::from_millis(100))
        .min(crate::waits::HANDBACK_RESERVE);
    let stops = partitions
        .iter()
        .map(|p| p.worker.stop_and_wait(None, Some(stop_wait)));
    futures::future::join_all(stops).await;
    positions
}
