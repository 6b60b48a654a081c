//! The ProducerActor owns the daemon's one librdkafka producer. Handlers, the demo and
//! the dead-letter path send through a `ProducerHandle`, which goes straight into
//! librdkafka's queue (no actor message per event); the actor owns the producer's life:
//! it creates it, fails on a fatal producer error so its supervisor starts a fresh one,
//! and flushes it on stop.

pub mod dead_letter;
mod delivery;
mod handle;
pub mod partitioner;
mod polled;
mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::producer::Producer;

use crate::config::Config;
use crate::kafka::{producer_config, Brokers};

pub use delivery::{Delivery, DeliveryContext, DeliveryFailure, DeliveryGroup};
pub use handle::{
    is_permanent_rejection, BatchSend, MetadataError, Outgoing, PendingDelivery, ProduceError,
    ProducerHandle, Record,
};
pub use supervisor::ProducerSupervisor;

type KafkaProducer = polled::PolledProducer<DeliveryContext>;

pub struct ProducerActor;

#[derive(Clone)]
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
    /// librdkafka reported an error; if it was fatal (fenced, idempotence broken) the
    /// producer can send nothing more and the actor fails so it is restarted.
    CheckFatal,
}

impl ProducerActor {
    /// Starts a ProducerActor whose failures go to `supervisor`.
    pub async fn spawn_supervised(
        supervisor: ActorCell,
        args: ProducerArgs,
    ) -> Result<ActorRef<ProducerMsg>, ActorProcessingErr> {
        let (producer, _) =
            Actor::spawn_linked(Some("producer".to_owned()), ProducerActor, args, supervisor)
                .await?;
        Ok(producer)
    }

    /// A handle that works once the actor has started, and across its restarts.
    pub fn handle(config: &Config) -> ProducerHandle {
        ProducerHandle::new(&config.producer)
    }
}

impl Actor for ProducerActor {
    type Msg = ProducerMsg;
    type State = ProducerState;
    type Arguments = ProducerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ProducerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let producer = KafkaProducer::new(
            &producer_config(&args.config, &args.brokers),
            DeliveryContext::new(myself),
        )?;
        if let Some(old) = args.handle.install(Some(Arc::new(producer))) {
            retire(old).await;
        }
        tracing::info!(brokers = %args.brokers.bootstrap, mode = args.handle.mode().as_str(), "producer started");
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
            ProducerMsg::CheckFatal => {
                let fatal = state
                    .handle
                    .current()
                    .and_then(|producer| producer.client().fatal_error());
                if let Some((code, reason)) = fatal {
                    tracing::error!(%code, reason, "fatal producer error, restarting the producer");
                    // Events still queued in the broken producer fail their delivery
                    // reports (never success); senders wait for the restarted producer.
                    if let Some(broken) = state.handle.install(None) {
                        retire(broken).await;
                    }
                    return Err(format!("fatal producer error: {code}: {reason}").into());
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ProducerState,
    ) -> Result<(), ActorProcessingErr> {
        // At shutdown the root bounds this stop by what is left of the grace.
        let left = flush(&state.handle, crate::waits::AFTER_HANDLERS).await;
        if left > 0 {
            tracing::warn!(
                unacknowledged = left,
                "producer stopped with events unacknowledged"
            );
        }
        if let Some(producer) = state.handle.install(None) {
            retire(producer).await;
        }
        Ok(())
    }
}

/// Drops a producer off the async threads: dropping purges its queue, failing every
/// unacknowledged event's report, and joins its polling thread.
async fn retire(producer: Arc<KafkaProducer>) {
    let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
}

async fn flush(handle: &ProducerHandle, timeout: Duration) -> i32 {
    let Some(producer) = handle.current() else {
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
