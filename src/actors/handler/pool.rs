//! Pools and routing. A pool is the set of actors of one `[[handlers]]` entry; a slot
//! is one actor position in it, whose actor is replaced on restart. The router decides
//! which slots see an event.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use ractor::rpc::CallResult;
use ractor::ActorRef;

use super::HandlerMsg;
use crate::config::{Config, FieldCondition, HandlerConfig, HandlerKind};
use crate::event::{slot_for, Event};

/// What of a handler can change on reload without restarting it.
#[derive(Debug, Clone)]
pub struct HandlerSettings {
    pub topics: HashSet<String>,
    pub filter: BTreeMap<String, FieldCondition>,
    pub sample: f64,
    pub fields: Option<Vec<String>>,
}

impl HandlerSettings {
    pub fn from_config(config: &Config, handler: &HandlerConfig) -> Self {
        Self {
            topics: config.handler_topics(handler).into_iter().collect(),
            filter: handler.filter.clone(),
            sample: handler.sample.unwrap_or(1.0),
            fields: handler.fields.clone(),
        }
    }

    fn wants(&self, event: &Event) -> bool {
        self.topics.contains(&*event.source.topic)
            && self
                .filter
                .iter()
                .all(|(field, condition)| condition.matches(event.body.get(field)))
    }
}

/// One actor position of a pool.
pub struct Slot {
    actor: RwLock<Option<ActorRef<HandlerMsg>>>,
    /// Bumped each time a new actor takes the slot; workers resend what the old one held.
    generation: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Self {
            actor: RwLock::new(None),
            generation: AtomicU64::new(0),
        }
    }

    pub fn actor(&self) -> Option<ActorRef<HandlerMsg>> {
        self.actor.read().clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(super) fn install(&self, actor: ActorRef<HandlerMsg>) {
        *self.actor.write() = Some(actor);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The actors of one `[[handlers]]` entry.
pub struct HandlerPool {
    /// Position in the config, used as the handler's id in finished reports.
    pub index: usize,
    pub name: Arc<str>,
    pub kind: HandlerKind,
    pub consumer: String,
    pub config: HandlerConfig,
    /// `count` routes by its `group_by` value so one value is counted by one actor.
    group_by: Option<String>,
    pub settings: ArcSwap<HandlerSettings>,
    pub slots: Vec<Slot>,
}

impl HandlerPool {
    pub fn new(index: usize, config: &Config, handler: &HandlerConfig) -> Self {
        Self {
            index,
            name: Arc::from(handler.name.as_str()),
            kind: handler.kind,
            consumer: handler.consumer.clone(),
            config: handler.clone(),
            group_by: (handler.kind == HandlerKind::Count)
                .then(|| handler.group_by.clone())
                .flatten(),
            settings: ArcSwap::from_pointee(HandlerSettings::from_config(config, handler)),
            slots: (0..handler.concurrency.max(1))
                .map(|_| Slot::new())
                .collect(),
        }
    }

    /// The slot that handles `event`.
    pub fn slot_of(&self, event: &Event) -> usize {
        match &self.group_by {
            Some(field) => {
                let value = event.field_text(field).unwrap_or_default();
                slot_for(value.as_bytes(), self.slots.len())
            }
            None => slot_for(event.routing_key(), self.slots.len()),
        }
    }
}

/// One pool as a consumer's workers see it.
#[derive(Clone)]
pub struct Route {
    pub pool: Arc<HandlerPool>,
}

/// The pools that take events of one consumer.
#[derive(Clone, Default)]
pub struct Router {
    pub routes: Vec<Route>,
}

impl Router {
    pub fn for_consumer(pools: &[Arc<HandlerPool>], consumer: &str) -> Self {
        Self {
            routes: pools
                .iter()
                .filter(|pool| pool.consumer == consumer)
                .map(|pool| Route { pool: pool.clone() })
                .collect(),
        }
    }

    /// Settings of every route, loaded once per batch of events.
    pub fn snapshot(&self) -> Vec<Arc<HandlerSettings>> {
        self.routes
            .iter()
            .map(|route| route.pool.settings.load_full())
            .collect()
    }

    /// Calls `each(route index, slot)` for every handler that wants `event`.
    pub fn route(
        &self,
        settings: &[Arc<HandlerSettings>],
        event: &Event,
        mut each: impl FnMut(usize, usize),
    ) {
        for (i, (route, settings)) in self.routes.iter().zip(settings).enumerate() {
            if settings.wants(event) {
                each(i, route.pool.slot_of(event));
            }
        }
    }

    /// Emits every open count window of this consumer's pools and waits until the
    /// broker acknowledged them, so held offsets can move.
    pub async fn flush(&self, timeout: std::time::Duration) -> Result<(), String> {
        let mut calls = Vec::new();
        for route in &self.routes {
            if route.pool.kind != HandlerKind::Count {
                continue;
            }
            for slot in &route.pool.slots {
                if let Some(actor) = slot.actor() {
                    let name = route.pool.name.clone();
                    calls.push(async move {
                        match actor.call(HandlerMsg::Flush, Some(timeout)).await {
                            Ok(CallResult::Success(())) => Ok(()),
                            Ok(CallResult::Timeout) => {
                                Err(format!("handler {name}: flush timed out"))
                            }
                            Ok(CallResult::SenderError) | Err(_) => {
                                Err(format!("handler {name}: actor stopped during flush"))
                            }
                        }
                    });
                }
            }
        }
        for result in futures::future::join_all(calls).await {
            result?;
        }
        Ok(())
    }
}
