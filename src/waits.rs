//! The fixed waits of eventd, in one place. Every other wait derives from the config:
//! retries and their backoff from `[handlers.retry]`, a write's deadline from
//! `producer.message_timeout`, drains from `drain_timeout`, and a shutdown's steps
//! from what is left of `shutdown.grace`, whose end each step keeps these reserves of.

use std::time::Duration;

/// A metadata or admin request to the brokers: the startup topic check, manual
/// assignment's partition lookup, the one-shot commands.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an output topic the brokers call unknown (or refuse) counts as a failure
/// that may pass before the producer takes it as missing for good: a broker that just
/// restarted, or a topic just created, may not know it at once (librdkafka's own wait
/// for this is `topic.metadata.propagation.max.ms`, 30 s; a key waits on this one, so
/// shorter).
pub const TOPIC_PROPAGATION: Duration = Duration::from_secs(5);

/// How long a partition count the producer learned is trusted before it is asked for
/// again, so partitions added to a topic are used without a restart.
pub const PARTITION_COUNT_TTL: Duration = Duration::from_secs(30);

/// Beyond a write's deadline, how long a sender waiting on one delivery report gives
/// it before counting it lost (a report never comes only from a discarded producer).
pub const DELIVERY_REPORT_GRACE: Duration = Duration::from_secs(30);

/// How long an actor that is asked to apply a reload has to answer.
pub const RELOAD_ANSWER: Duration = Duration::from_secs(5);

/// After a revoke's drain, the hand-back: final offsets stored, count windows flushed,
/// the worker stopped (librdkafka waits `drain_timeout` plus this in the callback).
pub const HANDBACK_RESERVE: Duration = Duration::from_secs(2);

/// A `partitions` consumer under `commit_group` commits, with the metadata naming it,
/// at least every `commit_interval` while it runs, idle or not. `offsets reset` takes
/// it for running until this many intervals passed without a commit: one late or
/// failed commit must not make a live process look stopped.
pub const HOLDER_FRESH_INTERVALS: u32 = 3;
/// At least this long, whatever the interval: the holder's time comes from its own
/// host's clock, which may differ from the clock of the host running `reset`.
pub const HOLDER_FRESH_MIN: Duration = Duration::from_secs(5);

/// Shutdown: what the final commit and close keep after the partitions are handed back.
pub const CLOSE_RESERVE: Duration = Duration::from_millis(2500);
/// Shutdown: of the close reserve, what stopping the polling thread (which closes the
/// client) keeps after the final commit.
pub const POLL_THREAD_RESERVE: Duration = Duration::from_millis(1000);
/// Shutdown: between the consumers' deadline and the root's, for their answer.
pub const ANSWER_MARGIN: Duration = Duration::from_millis(300);
/// Shutdown: what stopping the handlers and flushing the producer keep after the
/// consumers are done.
pub const AFTER_CONSUMERS: Duration = Duration::from_millis(1500);
/// Shutdown: what the producer's flush keeps after the handlers stopped.
pub const AFTER_HANDLERS: Duration = Duration::from_millis(1000);
/// Shutdown: left for logging and exiting once everything is done.
pub const EXIT_MARGIN: Duration = Duration::from_millis(200);

/// What `shutdown.grace` must keep beyond the longest `drain_timeout`: the reserves of
/// the steps that follow the drain, rounded up (`check-config` enforces it).
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_margin_covers_every_step_after_the_drain() {
        let steps = CLOSE_RESERVE + ANSWER_MARGIN + AFTER_CONSUMERS + EXIT_MARGIN;
        assert!(
            steps <= SHUTDOWN_MARGIN,
            "{steps:?} of steps in a {SHUTDOWN_MARGIN:?} margin"
        );
        assert!(POLL_THREAD_RESERVE < CLOSE_RESERVE);
        assert!(AFTER_HANDLERS < AFTER_CONSUMERS);
    }
}
