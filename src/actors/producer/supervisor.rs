//! The ProducerActor's supervisor outside the daemon, where no RootSupervisor runs.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::{ProducerActor, ProducerArgs, ProducerMsg};
use crate::actors::supervision::{Restarts, Verdict};

/// Supervises a ProducerActor on its own, for `eventd produce`: restarts it after a
/// fatal producer error as the daemon's root supervisor does, within the same
/// `[supervision]` limits, and stops it (flushing) when stopped.
pub struct ProducerSupervisor;

pub struct SupervisorState {
    args: ProducerArgs,
    producer: Option<ActorRef<ProducerMsg>>,
    restarts: Restarts<()>,
}

pub enum SupervisorMsg {
    RestartProducer,
}

impl Actor for ProducerSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ProducerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ProducerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let producer = ProducerActor::spawn_supervised(myself.get_cell(), args.clone()).await?;
        Ok(SupervisorState {
            restarts: Restarts::new(args.config.supervision.clone()),
            args,
            producer: Some(producer),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::RestartProducer => {
                state.producer = Some(
                    ProducerActor::spawn_supervised(myself.get_cell(), state.args.clone()).await?,
                );
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(_, error) = event else {
            return Ok(());
        };
        state.producer = None;
        match state.restarts.failed((), "producer", &error.to_string()) {
            Verdict::RestartAfter(delay) => {
                myself.send_after(delay, || SupervisorMsg::RestartProducer);
                Ok(())
            }
            // Senders then fail with "the producer is not running" and are counted.
            Verdict::Meltdown => Err(format!("producer failed too often: {error}").into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(producer) = state.producer.take() {
            let _ = producer
                .stop_and_wait(None, Some(Duration::from_secs(10)))
                .await;
        }
        Ok(())
    }
}
