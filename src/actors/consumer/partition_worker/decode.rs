//! What a partition worker reads of a message: the event decoded with the field names
//! its handlers read, detached from librdkafka's buffer, or why it cannot be decoded.

use std::borrow::Cow;
use std::sync::Arc;

use rdkafka::message::{Headers, Message};

use super::PartitionWorkerState;
use crate::actors::handler::HandlerSettings;
use crate::event::{Body, DecodeError, Event, FieldNames};

/// One decoded (or undecodable) message, detached from librdkafka's buffer.
pub(super) struct ReadEvent {
    pub(super) offset: i64,
    pub(super) key: Option<Vec<u8>>,
    pub(super) headers: crate::event::Headers,
    pub(super) timestamp: Option<i64>,
    pub(super) body: Result<Body, Undecodable>,
}

/// Why an event could not be decoded, with its original payload for the dead-letter copy.
pub(super) type Undecodable = (DecodeError, Option<Vec<u8>>);

/// What this partition's handlers read of each event, as their settings stand now;
/// the events read with it are routed by the same settings.
pub(super) struct ReadPlan {
    pub(super) settings: Vec<Option<Arc<HandlerSettings>>>,
    pub(super) names: Arc<FieldNames>,
    /// Kafka headers are copied out only for handlers that pass them on.
    pub(super) headers: bool,
}

impl ReadEvent {
    pub(super) fn from_message<M: Message>(message: &M, plan: &ReadPlan) -> ReadEvent {
        let body = Event::decode(message.payload(), &plan.names)
            .map_err(|error| (error, message.payload().map(<[u8]>::to_vec)));
        // An undecodable event's dead-letter copy keeps its headers.
        let headers = if plan.headers || body.is_err() {
            message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            (
                                Cow::Owned(h.key.to_owned()),
                                h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        } else {
            crate::event::Headers::new()
        };
        ReadEvent {
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            headers,
            timestamp: message.timestamp().to_millis(),
            body,
        }
    }
}

impl PartitionWorkerState {
    pub(super) fn plan(&self) -> ReadPlan {
        let settings = self.router.snapshot(&self.topic);
        ReadPlan {
            names: Arc::new(self.router.field_names(&settings)),
            headers: self.router.reads_headers(&settings),
            settings,
        }
    }
}
