//! Pools and routing. A pool is the set of actors of one `[[handlers]]` entry; a slot
//! is one actor position in it, whose actor is replaced on restart. The router decides
//! which slots see an event.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use ractor::rpc::CallResult;
use ractor::ActorRef;

use super::outbox::ParkedShown;
use super::{FlushError, HandlerMsg};
use crate::config::{Config, Filter, HandlerConfig, HandlerKind, Subject};
use crate::event::{slot_for, Event, FieldNames};

/// What of a handler can change on reload without restarting it.
#[derive(Debug, Clone)]
pub struct HandlerSettings {
    pub topics: HashSet<String>,
    pub filter: Filter,
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

    fn matches(&self, event: &Event) -> bool {
        self.filter
            .fields
            .iter()
            .all(|(field, condition)| condition.matches(event.body.raw(field).map(Subject::Json)))
            && self.filter.headers.iter().all(|(name, condition)| {
                // The last of repeated headers, as a reader of one value sees it; a value
                // that is not UTF-8 text is no text a condition could match.
                let value = event
                    .headers
                    .iter()
                    .rev()
                    .find(|(header, _)| header == name)
                    .map(|(_, value)| std::str::from_utf8(value).unwrap_or("\u{fffd}"));
                condition.matches(value.map(Subject::Text))
            })
    }
}

/// One actor position of a pool.
pub struct Slot {
    /// The actor and its generation, published together: a worker that saw a new actor
    /// with the old generation would send it new events before resending what the old
    /// actor held, and a newer event of a key would overtake an older one.
    current: RwLock<SlotActor>,
}

/// Who holds a slot now. The generation is bumped each time a new actor takes the
/// slot; workers resend what the old one held.
#[derive(Clone, Default)]
pub struct SlotActor {
    pub actor: Option<ActorRef<HandlerMsg>>,
    pub generation: u64,
}

impl Slot {
    fn new() -> Self {
        Self {
            current: RwLock::new(SlotActor::default()),
        }
    }

    /// The actor with its generation, read together.
    pub fn current(&self) -> SlotActor {
        self.current.read().clone()
    }

    pub fn actor(&self) -> Option<ActorRef<HandlerMsg>> {
        self.current.read().actor.clone()
    }

    pub fn generation(&self) -> u64 {
        self.current.read().generation
    }

    pub(super) fn install(&self, actor: ActorRef<HandlerMsg>) {
        let mut current = self.current.write();
        current.actor = Some(actor);
        current.generation += 1;
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
    /// Parked keys of every slot, for `/metrics`.
    pub parked: Arc<ParkedShown>,
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
            parked: ParkedShown::new(&handler.name, handler.concurrency.max(1)),
        }
    }

    /// The slot that handles `event`.
    pub fn slot_of(&self, event: &Event) -> usize {
        match &self.group_by {
            Some(field) => {
                let value = event.field_text(field).unwrap_or_default();
                slot_for(value.as_bytes(), self.slots.len())
            }
            None => slot_for(&event.routing_key(), self.slots.len()),
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

    /// Settings of every route that takes `topic`, loaded once per batch of events
    /// (a batch comes from one partition); `None` for the routes that do not.
    pub fn snapshot(&self, topic: &str) -> Vec<Option<Arc<HandlerSettings>>> {
        self.routes
            .iter()
            .map(|route| {
                let settings = route.pool.settings.load_full();
                settings.topics.contains(topic).then_some(settings)
            })
            .collect()
    }

    /// The fields these settings and pools read, for decoding to record.
    pub fn field_names(&self, settings: &[Option<Arc<HandlerSettings>>]) -> FieldNames {
        let mut names: Vec<&str> = Vec::new();
        for (route, settings) in self.routes.iter().zip(settings) {
            let Some(settings) = settings else {
                continue;
            };
            names.extend(settings.filter.fields.keys().map(String::as_str));
            names.extend(settings.fields.iter().flatten().map(String::as_str));
            names.extend(route.pool.group_by.as_deref());
        }
        FieldNames::new(names)
    }

    /// Whether a handler these settings route to passes Kafka headers on, filters on
    /// them, or may fail on an event, whose dead-letter copy then keeps them.
    pub fn reads_headers(&self, settings: &[Option<Arc<HandlerSettings>>]) -> bool {
        self.routes.iter().zip(settings).any(|(route, settings)| {
            settings.as_ref().is_some_and(|settings| {
                !settings.filter.headers.is_empty()
                    || matches!(
                        route.pool.kind,
                        HandlerKind::Forward | HandlerKind::Webhook | HandlerKind::Fault
                    )
            })
        })
    }

    /// Calls `each(route index, Some(slot))` for every handler that wants `event`, and
    /// `each(route index, None)` for every one that takes its topic but whose filter
    /// does not match.
    pub fn route(
        &self,
        settings: &[Option<Arc<HandlerSettings>>],
        event: &Event,
        mut each: impl FnMut(usize, Option<usize>),
    ) {
        for (i, (route, settings)) in self.routes.iter().zip(settings).enumerate() {
            let Some(settings) = settings else {
                continue;
            };
            if settings.matches(event) {
                each(i, Some(route.pool.slot_of(event)));
            } else {
                each(i, None);
            }
        }
    }

    /// Emits every open count window of this consumer's pools and waits until the
    /// broker acknowledged them, so held offsets can move.
    pub async fn flush(&self, timeout: std::time::Duration) -> Result<(), FlushError> {
        let mut calls = Vec::new();
        for route in &self.routes {
            if route.pool.kind != HandlerKind::Count {
                continue;
            }
            for slot in &route.pool.slots {
                if let Some(actor) = slot.actor() {
                    let handler = route.pool.name.to_string();
                    calls.push(async move {
                        match actor.call(HandlerMsg::Flush, Some(timeout)).await {
                            Ok(CallResult::Success(0)) => Ok(()),
                            Ok(CallResult::Success(records)) => {
                                Err(FlushError::Unacknowledged { handler, records })
                            }
                            Ok(CallResult::Timeout) => Err(FlushError::TimedOut { handler }),
                            Ok(CallResult::SenderError) | Err(_) => {
                                Err(FlushError::Stopped { handler })
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    use ractor::{Actor, ActorProcessingErr};

    use super::*;

    struct Idle;

    impl Actor for Idle {
        type Msg = HandlerMsg;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<HandlerMsg>,
            _args: (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    /// A worker reads a slot while the supervisor replaces its actor: every snapshot
    /// must pair an actor with the generation it was installed under.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slot_publishes_its_actor_and_generation_together() {
        let mut actors = Vec::new();
        for _ in 0..2 {
            let (actor, _) = Actor::spawn(None, Idle, ()).await.expect("idle actor");
            actors.push(actor);
        }
        let slot = Arc::new(Slot::new());
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (slot, done) = (slot.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !done.load(Ordering::Acquire) {
                    let current = slot.current();
                    if let Some(actor) = current.actor {
                        seen.push((current.generation, actor.get_id()));
                    }
                }
                seen
            })
        };
        let mut installed = HashMap::new();
        for round in 0..200_000usize {
            let actor = actors[round % 2].clone();
            installed.insert(slot.generation() + 1, actor.get_id());
            slot.install(actor);
        }
        done.store(true, Ordering::Release);
        let seen = reader.join().expect("reader");
        assert!(!seen.is_empty());
        let torn: Vec<_> = seen
            .iter()
            .filter(|(generation, id)| installed.get(generation) != Some(id))
            .take(5)
            .collect();
        assert!(
            torn.is_empty(),
            "{} of {} snapshots paired an actor with another generation, e.g. {torn:?}",
            seen.iter()
                .filter(|(generation, id)| installed.get(generation) != Some(id))
                .count(),
            seen.len()
        );
        for actor in actors {
            actor.stop(None);
        }
    }
}
