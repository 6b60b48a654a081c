//! `[demo]`: synthetic browse, like, favorite and comment events at a steady rate, sent
//! through the ProducerActor, so the embedded default shows the whole pipeline.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::actors::producer::{Outgoing, ProducerHandle};
use crate::config::DemoConfig;

/// The n-th synthetic event, with its topic. Deterministic for a given `rng` state.
pub fn synthetic_event(config: &DemoConfig, rng: &mut fastrand::Rng, n: u64) -> Outgoing {
    let topics = &config.topics;
    let item = format!("item-{}", rng.u32(0..config.keys.max(1)));
    let user = format!("user-{}", rng.u32(0..10_000));
    let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let (topic, body) = match n % 4 {
        0 => (&topics.browse, json!({"dwell_ms": rng.u32(100..60_000)})),
        1 => (
            &topics.like,
            json!({"action": if rng.u8(0..10) < 8 { "add" } else { "remove" }}),
        ),
        2 => (
            &topics.favorite,
            json!({"action": if rng.u8(0..10) < 8 { "add" } else { "remove" }}),
        ),
        _ => (&topics.comment, json!({"text": format!("comment {n}")})),
    };
    let mut event =
        json!({"event_id": format!("demo-{n}"), "user_id": user, "item_id": item, "ts": ts});
    if let (Some(event), Some(extra)) = (event.as_object_mut(), body.as_object()) {
        event.extend(extra.clone());
    }
    Outgoing {
        topic: topic.clone(),
        key: Some(item.into_bytes()),
        payload: event.to_string().into_bytes(),
        headers: Vec::new(),
    }
}

/// Produces until `stop` turns true.
pub fn spawn(
    config: DemoConfig,
    producer: ProducerHandle,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let tick = Duration::from_millis(10);
        let per_tick = f64::from(config.rate) * tick.as_secs_f64();
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut owed = 0.0;
        let mut n: u64 = 0;
        tracing::info!(
            rate = config.rate,
            keys = config.keys,
            "demo producer started"
        );
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => break,
            }
            owed += per_tick;
            while owed >= 1.0 {
                owed -= 1.0;
                let event = synthetic_event(&config, &mut rng, n);
                n += 1;
                if let Err(error) = producer.enqueue(event).await {
                    tracing::warn!(%error, "demo event not sent");
                }
            }
        }
        tracing::info!(events = n, "demo producer stopped");
    })
}
