//! `webhook`: POSTs events to an HTTP service as a JSON array, `batch` at most per
//! request, waiting up to `max_wait` for a request to fill.
//!
//! Each slot has one writer task that gathers the batches its actor hands over and sends
//! one request at a time, so events of a key reach the service in order, and `concurrency`
//! slots make as many requests in flight. The actor goes on meanwhile: a batch is finished
//! once the requests carrying its events were answered (see `actor`).
//!
//! Answers, and what becomes of the events:
//! - 2xx: delivered.
//! - no answer (connection refused, timeout), 408, 429, 5xx: transient; every event of the
//!   request takes the failure path, waiting at least what `Retry-After` asks.
//! - 413: the request is split in halves, down to single events; a single event still
//!   too large is dead-lettered.
//! - another 4xx: each event is sent alone; one still refused is dead-lettered with the
//!   status and the start of the answer.
//! - 401, 403, and a redirect not followed (only 307 and 308 keep the POST, and none is
//!   followed while headers are set): the handler's own settings are wrong, not the
//!   events; the partition is shown blocked until they are fixed, nothing dead-lettered.
//!
//! After a request failed (or an event was refused alone), the writer holds back what it
//! is given until the actor has parked the failed events' keys: a later event of such a
//! key must not reach the service before the earlier one's retry.

use std::collections::VecDeque;
use std::io::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Histogram};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::super::actor::BatchOutcome;
use super::super::{Batch, Disposition, WriteFailure};
use crate::actors::producer::dead_letter::Reason;
use crate::config::HandlerConfig;
use crate::event::Event;
use crate::telemetry::metrics::{WEBHOOK_DURATION, WEBHOOK_RESPONSES};

/// Bytes of a refusing answer kept in the error (and the dead-letter copy's
/// `eventd.error` header).
const ANSWER_EXCERPT: usize = 256;
/// Bytes of a successful answer read so its connection can be reused; a longer answer
/// closes the connection instead.
const ANSWER_READ_LIMIT: usize = 64 * 1024;
/// Redirects (307, 308) followed when no header is set.
const MAX_REDIRECTS: usize = 5;
/// Longest `Retry-After` taken as given.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Why events were not delivered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WebhookFailure {
    /// No answer, or one saying to come back later (408, 429, 5xx).
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The service refused the event, sent alone, for good.
    #[error("{message}")]
    Rejected { message: String, too_large: bool },
    /// The service refused eventd's request itself (401, 403, a redirect not followed).
    #[error("{message}")]
    Misconfigured { message: String },
    /// Not sent: an earlier request of its writer failed, and the events it held are to
    /// be retried first.
    #[error("held back behind a failed webhook request")]
    Behind,
}

impl WebhookFailure {
    pub(crate) fn disposition(&self) -> Disposition {
        match self {
            WebhookFailure::Transient { retry_after, .. } => Disposition::Transient {
                retry_after: *retry_after,
            },
            WebhookFailure::Rejected { too_large, .. } => Disposition::Permanent(if *too_large {
                Reason::TooLarge
            } else {
                Reason::WebhookRejected
            }),
            WebhookFailure::Misconfigured { .. } => Disposition::Misconfigured,
            WebhookFailure::Behind => Disposition::NotCharged,
        }
    }
}

/// The service and the client every slot of a webhook handler shares, so connections
/// are reused across slots. A reload swaps the endpoint; requests under way finish on
/// the one they started with.
pub struct WebhookTarget {
    handler: Arc<str>,
    endpoint: ArcSwap<Endpoint>,
    metrics: WebhookMetrics,
}

/// Where and how requests go, as the config last loaded says.
struct Endpoint {
    /// What it was built from, so a reload that changed none of it keeps the client
    /// and its open connections.
    settings: EndpointSettings,
    client: Result<reqwest::Client, String>,
    headers: HeaderMap,
}

#[derive(PartialEq)]
struct EndpointSettings {
    url: String,
    batch: usize,
    max_wait: Duration,
    timeout: Duration,
    /// Names and values as read.
    headers: Vec<(String, String)>,
}

impl EndpointSettings {
    fn of(config: &HandlerConfig) -> Self {
        Self {
            url: config.url.clone().unwrap_or_default(),
            batch: config.webhook_batch(),
            max_wait: config.webhook_max_wait(),
            timeout: config.webhook_timeout(),
            headers: config
                .headers
                .iter()
                .flatten()
                .map(|(name, value)| (name.clone(), value.value().to_owned()))
                .collect(),
        }
    }
}

struct WebhookMetrics {
    duration: Histogram,
    /// Answers by class: 2xx, 3xx, 4xx, 5xx, no answer.
    by_class: [Counter; 5],
}

const CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "error"];

impl WebhookMetrics {
    fn new(handler: &str) -> Self {
        Self {
            duration: metrics::histogram!(WEBHOOK_DURATION, "handler" => handler.to_owned()),
            by_class: CLASSES.map(|class| {
                metrics::counter!(WEBHOOK_RESPONSES, "handler" => handler.to_owned(), "class" => class)
            }),
        }
    }

    fn answered(&self, status: Option<StatusCode>, started: Instant) {
        self.duration.record(started.elapsed().as_secs_f64());
        let class = match status.map(|status| status.as_u16() / 100) {
            Some(2) => 0,
            Some(3) => 1,
            Some(4) => 2,
            Some(5) => 3,
            _ => 4,
        };
        self.by_class[class].increment(1);
    }
}

impl Endpoint {
    /// Header names and values were checked when the config was loaded.
    fn new(settings: EndpointSettings) -> Self {
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            if let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                // Kept out of the client's own debug output.
                value.set_sensitive(true);
                headers.insert(name, value);
            }
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(if headers.is_empty() {
                reqwest::redirect::Policy::custom(keeping_the_post)
            } else {
                reqwest::redirect::Policy::none()
            })
            .user_agent(concat!("eventd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| error_chain(&error));
        Self {
            settings,
            client,
            headers,
        }
    }

    /// Redirects are followed only while no header is set: a header may carry a
    /// credential the redirect's target must not see.
    fn follows_redirects(&self) -> bool {
        self.headers.is_empty()
    }
}

impl WebhookTarget {
    pub fn new(handler: &str, config: &HandlerConfig) -> Self {
        Self {
            handler: Arc::from(handler),
            endpoint: ArcSwap::from_pointee(Endpoint::new(EndpointSettings::of(config))),
            metrics: WebhookMetrics::new(handler),
        }
    }

    /// Most events per request, and how long a request waits to fill.
    fn batching(&self) -> (usize, Duration) {
        let settings = &self.endpoint.load().settings;
        (settings.batch, settings.max_wait)
    }

    /// Takes in a reloaded `url`, `batch`, `max_wait`, `timeout` and `headers`, for the
    /// next request.
    pub fn reconfigure(&self, config: &HandlerConfig) {
        let wanted = EndpointSettings::of(config);
        if self.endpoint.load().settings != wanted {
            self.endpoint.store(Arc::new(Endpoint::new(wanted)));
        }
    }

    /// Delivers `events` (one request, split as the answers ask); the failed ones by
    /// index, in order.
    async fn deliver(&self, events: &[Arc<Event>]) -> Vec<(usize, WebhookFailure)> {
        // One endpoint for every request of these events.
        let endpoint = self.endpoint.load_full();
        let mut failures = Vec::new();
        let mut todo: VecDeque<Range<usize>> = VecDeque::new();
        todo.push_back(0..events.len());
        while let Some(range) = todo.pop_front() {
            let rejected = match self.post(&endpoint, &events[range.clone()]).await {
                Answer::Delivered => continue,
                Answer::TooLarge(_) if range.len() > 1 => {
                    let middle = range.start + range.len() / 2;
                    todo.push_front(middle..range.end);
                    todo.push_front(range.start..middle);
                    continue;
                }
                Answer::Refused(_) if range.len() > 1 => {
                    // Which events the service refuses is known only one at a time.
                    for index in range.rev() {
                        todo.push_front(index..index + 1);
                    }
                    continue;
                }
                Answer::TooLarge(message) => WebhookFailure::Rejected {
                    message,
                    too_large: true,
                },
                Answer::Refused(message) => WebhookFailure::Rejected {
                    message,
                    too_large: false,
                },
                Answer::Failed(failure) => {
                    failures.extend(range.map(|index| (index, failure.clone())));
                    // The rest was not tried: it goes after these, in order.
                    failures.extend(
                        todo.drain(..)
                            .flatten()
                            .map(|index| (index, WebhookFailure::Behind)),
                    );
                    continue;
                }
            };
            // A single event refused. Without a dead-letter topic it is retried, and no
            // later event of its key may go first: the rest waits behind it.
            failures.push((range.start, rejected));
            failures.extend(
                todo.drain(..)
                    .flatten()
                    .map(|index| (index, WebhookFailure::Behind)),
            );
        }
        failures
    }

    async fn post(&self, endpoint: &Endpoint, events: &[Arc<Event>]) -> Answer {
        let client = match &endpoint.client {
            Ok(client) => client,
            Err(error) => {
                return Answer::Failed(WebhookFailure::Transient {
                    message: format!("the webhook client could not be built: {error}"),
                    retry_after: None,
                })
            }
        };
        let started = Instant::now();
        let sent = client
            .post(&endpoint.settings.url)
            .headers(endpoint.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("idempotency-key", idempotency_key(events))
            .body(body_of(events))
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => {
                self.metrics.answered(None, started);
                return Answer::Failed(WebhookFailure::Transient {
                    message: format!("webhook request failed: {}", error_chain(&error)),
                    retry_after: None,
                });
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| retry_after(value.to_str().ok()?));
        let limit = if status.is_success() {
            ANSWER_READ_LIMIT
        } else {
            ANSWER_EXCERPT
        };
        let mut answer = Vec::new();
        // A body that cannot be read is answered by its status alone.
        while answer.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => answer.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        self.metrics.answered(Some(status), started);
        if status.is_success() {
            return Answer::Delivered;
        }
        answer.truncate(ANSWER_EXCERPT);
        let excerpt = String::from_utf8_lossy(&answer);
        let message = format!("webhook answered {status}: {}", excerpt.trim());
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Answer::Failed(WebhookFailure::Misconfigured {
                    message: format!("{message} (check the handler's url and headers)"),
                })
            }
            StatusCode::PAYLOAD_TOO_LARGE => Answer::TooLarge(message),
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
                Answer::Failed(WebhookFailure::Transient {
                    message,
                    retry_after,
                })
            }
            status if status.is_redirection() => {
                let why = if !endpoint.follows_redirects() {
                    "redirects are not followed while headers are set; point url at the final address"
                } else if matches!(
                    status,
                    StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
                ) {
                    "too many redirects; point url at the final address"
                } else {
                    "only 307 and 308 keep the events' POST; point url at the final address"
                };
                Answer::Failed(WebhookFailure::Misconfigured {
                    message: format!("webhook answered {status}: {why}"),
                })
            }
            status if status.is_client_error() => Answer::Refused(message),
            _ => Answer::Failed(WebhookFailure::Transient {
                message,
                retry_after,
            }),
        }
    }
}

enum Answer {
    Delivered,
    /// 413: smaller requests may pass.
    TooLarge(String),
    /// Another 4xx: some event of the request is refused.
    Refused(String),
    /// Every event of the request failed alike.
    Failed(WebhookFailure),
}

/// Follows only redirects that keep the method and the body (307, 308), up to
/// `MAX_REDIRECTS`: after a 301, 302 or 303 the client would send a GET without the
/// events, and a 200 to it would pass for a delivery. The 3xx not followed comes back
/// as the answer.
fn keeping_the_post(attempt: reqwest::redirect::Attempt) -> reqwest::redirect::Action {
    let keeps_the_post = matches!(
        attempt.status(),
        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
    );
    if keeps_the_post && attempt.previous().len() <= MAX_REDIRECTS {
        attempt.follow()
    } else {
        attempt.stop()
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    let wait = match value.trim().parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The error and its causes ("connection refused" sits a few sources down), without
/// the address.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request error".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The same events in the same order give the same key, so a service can tell a
/// request sent again from a new one.
fn idempotency_key(events: &[Arc<Event>]) -> String {
    let mut hash = Sha256::new();
    for event in events {
        hash.update(event.source.topic.as_bytes());
        hash.update([0]);
        hash.update(event.source.partition.to_be_bytes());
        hash.update(event.source.offset.to_be_bytes());
    }
    hash.finalize()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `[{"topic":…,"partition":…,"offset":…,"timestamp":…,"key":…,"event":{…}}, …]`: each
/// event as it was read, with where it came from so the service can drop repeats.
fn body_of(events: &[Arc<Event>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(events.iter().map(|e| e.body.bytes().len() + 96).sum());
    body.push(b'[');
    for (index, event) in events.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"topic\":");
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut body, &*event.source.topic);
        // Writing to a Vec cannot fail.
        let _ = write!(
            body,
            ",\"partition\":{},\"offset\":{},\"timestamp\":",
            event.source.partition, event.source.offset
        );
        match event.timestamp {
            Some(timestamp) => {
                let _ = write!(body, "{timestamp}");
            }
            None => body.extend_from_slice(b"null"),
        }
        body.extend_from_slice(b",\"key\":");
        match &event.key {
            Some(key) => {
                let _ = serde_json::to_writer(&mut body, &String::from_utf8_lossy(key));
            }
            None => body.extend_from_slice(b"null"),
        }
        body.extend_from_slice(b",\"event\":");
        // Validated JSON on the way in.
        body.extend_from_slice(event.body.bytes());
        body.push(b'}');
    }
    body.push(b']');
    body
}

/// One slot's webhook: hands batches to its writer task.
pub struct Webhook {
    target: Arc<WebhookTarget>,
    to_writer: mpsc::UnboundedSender<ToWriter>,
    writer: JoinHandle<()>,
}

enum ToWriter {
    Batch(Given),
    /// The actor took in one report that had failures.
    FailuresParked,
}

/// A batch given to the writer, and where its failures are reported once every one of
/// its events was answered.
struct Given {
    events: Arc<[Arc<Event>]>,
    report: oneshot::Sender<Vec<(usize, WriteFailure)>>,
    /// Its first event waits at most `max_wait` from here for its request to fill.
    arrived: Instant,
    /// Events before this one are in a request already.
    next: usize,
    failures: Vec<(usize, WriteFailure)>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        // An actor that stopped gets its batches again from their workers; requests
        // for the old one are not sent.
        self.writer.abort();
    }
}

impl Webhook {
    pub fn new(target: Arc<WebhookTarget>) -> Self {
        let (to_writer, inbox) = mpsc::unbounded_channel();
        let writer = tokio::spawn(Writer::new(target.clone()).run(inbox));
        Self {
            target,
            to_writer,
            writer,
        }
    }

    pub fn handle(&mut self, batch: &Batch) -> BatchOutcome {
        if self.writer.is_finished() {
            // A defect stopped it; what it held comes back as not sent, and a new one
            // takes over.
            tracing::error!(handler = %self.target.handler, "webhook writer stopped; starting a new one");
            *self = Webhook::new(self.target.clone());
        }
        let (report, reported) = oneshot::channel();
        let events = batch.events.len();
        let _ = self.to_writer.send(ToWriter::Batch(Given {
            events: batch.events.clone(),
            report,
            arrived: Instant::now(),
            next: 0,
            failures: Vec::new(),
        }));
        BatchOutcome {
            settling: Some(Box::pin(async move {
                // A writer that is gone sent nothing: every event is tried again.
                reported.await.unwrap_or_else(|_| {
                    (0..events)
                        .map(|index| (index, WriteFailure::Webhook(WebhookFailure::Behind)))
                        .collect()
                })
            })),
            ..BatchOutcome::default()
        }
    }

    pub fn failures_parked(&self) {
        let _ = self.to_writer.send(ToWriter::FailuresParked);
    }
}

struct Writer {
    target: Arc<WebhookTarget>,
    given: VecDeque<Given>,
    /// Events given and not yet in a request.
    waiting: usize,
    /// Reports with failures the actor has not taken in yet: while any is out, nothing
    /// is sent.
    failures_out: usize,
}

impl Writer {
    fn new(target: Arc<WebhookTarget>) -> Self {
        Self {
            target,
            given: VecDeque::new(),
            waiting: 0,
            failures_out: 0,
        }
    }

    /// Takes in one message, in the order the actor sent them: a batch given while a
    /// failure is not yet parked goes back at once, held behind it, since the actor sent
    /// it before parking the failed keys.
    fn take(&mut self, message: ToWriter) {
        match message {
            ToWriter::Batch(given) if self.failures_out > 0 => {
                let failures = (0..given.events.len())
                    .map(|index| (index, WriteFailure::Webhook(WebhookFailure::Behind)))
                    .collect();
                self.report(given.report, failures);
            }
            ToWriter::Batch(given) => {
                self.waiting += given.events.len();
                self.given.push_back(given);
            }
            ToWriter::FailuresParked => self.failures_out = self.failures_out.saturating_sub(1),
        }
    }

    /// Reports a batch's failures; one the actor received counts as out until the actor
    /// says it parked them (nobody waits on a batch whose receiver is gone: a replay
    /// that gave up on it).
    fn report(
        &mut self,
        report: oneshot::Sender<Vec<(usize, WriteFailure)>>,
        failures: Vec<(usize, WriteFailure)>,
    ) {
        let failed = !failures.is_empty();
        if report.send(failures).is_ok() && failed {
            self.failures_out += 1;
        }
    }

    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<ToWriter>) {
        loop {
            if self.waiting == 0 {
                match inbox.recv().await {
                    Some(message) => self.take(message),
                    None => return,
                }
                continue;
            }
            while let Ok(message) = inbox.try_recv() {
                self.take(message);
            }
            let Some(oldest) = self.given.front().map(|given| given.arrived) else {
                continue;
            };
            let (batch, max_wait) = self.target.batching();
            let deadline = oldest + max_wait;
            while self.waiting < batch {
                tokio::select! {
                    message = inbox.recv() => match message {
                        Some(message) => self.take(message),
                        None => return,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.send_one_request(batch).await;
        }
    }

    /// A request failed, and the actor has not yet parked its keys: everything given and
    /// not yet sent goes back as held behind it, so no later event of a failed key
    /// overtakes its retry. Each batch is reported, with whatever failed in it.
    fn hold_back_everything(&mut self) {
        let given: Vec<Given> = self.given.drain(..).collect();
        for mut given in given {
            given.failures.extend(
                (given.next..given.events.len())
                    .map(|index| (index, WriteFailure::Webhook(WebhookFailure::Behind))),
            );
            self.report(given.report, given.failures);
        }
        self.waiting = 0;
    }

    /// Sends up to `batch` of the waiting events, oldest first, and reports each batch
    /// whose events are all answered.
    async fn send_one_request(&mut self, batch: usize) {
        let mut events = Vec::with_capacity(self.waiting.min(batch));
        // (position in `given`, index in that batch) of each event of the request.
        let mut origins = Vec::with_capacity(events.capacity());
        for (position, given) in self.given.iter_mut().enumerate() {
            while given.next < given.events.len() && events.len() < batch {
                events.push(given.events[given.next].clone());
                origins.push((position, given.next));
                given.next += 1;
            }
            if events.len() == batch {
                break;
            }
        }
        self.waiting -= events.len();
        let failures = self.target.deliver(&events).await;
        let failed = !failures.is_empty();
        for (index, failure) in failures {
            let (position, in_batch) = origins[index];
            self.given[position]
                .failures
                .push((in_batch, WriteFailure::Webhook(failure)));
        }
        if failed {
            // The rest of what was given may hold later events of the failed keys.
            self.hold_back_everything();
            return;
        }
        while self
            .given
            .front()
            .is_some_and(|given| given.next == given.events.len())
        {
            let Some(given) = self.given.pop_front() else {
                break;
            };
            self.report(given.report, given.failures);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FieldNames, Source};

    fn event(topic: &str, partition: i32, offset: i64) -> Arc<Event> {
        Arc::new(Event {
            source: Source {
                topic: Arc::from(topic),
                partition,
                offset,
            },
            key: Some(b"item-\"7\"".to_vec()),
            headers: Vec::new(),
            timestamp: Some(1_700_000_000_000),
            body: Event::decode(
                Some(br#"{"user_id":"u1","item_id":"item-7","ts":1,"text":"hi"}"#),
                &Arc::new(FieldNames::new(["text"])),
            )
            .expect("a valid event"),
        })
    }

    #[test]
    fn the_body_is_a_json_array_of_events_with_their_source() {
        let body = body_of(&[event("comment", 2, 41), event("comment", 3, 7)]);
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(parsed[0]["topic"], "comment");
        assert_eq!(parsed[0]["partition"], 2);
        assert_eq!(parsed[0]["offset"], 41);
        assert_eq!(parsed[0]["key"], "item-\"7\"");
        assert_eq!(parsed[0]["timestamp"], 1_700_000_000_000_i64);
        assert_eq!(parsed[0]["event"]["text"], "hi");
        assert_eq!(parsed[1]["offset"], 7);
    }

    #[test]
    fn the_idempotency_key_follows_the_events_and_their_order() {
        let a = event("comment", 0, 1);
        let b = event("comment", 0, 2);
        let key = idempotency_key(&[a.clone(), b.clone()]);
        assert_eq!(key, idempotency_key(&[a.clone(), b.clone()]));
        assert_eq!(key.len(), 32);
        assert_ne!(key, idempotency_key(&[b.clone(), a.clone()]));
        assert_ne!(key, idempotency_key(&[a, event("comment", 1, 2)]));
    }

    fn handler(url: &str) -> HandlerConfig {
        serde_json::from_value(serde_json::json!({
            "name": "notify", "kind": "webhook", "consumer": "main", "url": url,
        }))
        .expect("a webhook handler")
    }

    #[test]
    fn a_reload_that_changes_nothing_keeps_the_client_and_a_change_replaces_it() {
        let target = WebhookTarget::new("notify", &handler("http://a.example/x"));
        let before = target.endpoint.load_full();
        target.reconfigure(&handler("http://a.example/x"));
        assert!(Arc::ptr_eq(&before, &target.endpoint.load_full()));
        target.reconfigure(&handler("http://b.example/x"));
        assert_eq!(target.endpoint.load().settings.url, "http://b.example/x");
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let wait = retry_after(&httpdate::fmt_http_date(later)).expect("a date");
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        assert_eq!(retry_after("soon"), None);
        assert_eq!(retry_after("999999"), Some(MAX_RETRY_AFTER));
    }
}
