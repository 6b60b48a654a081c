//! `kind = "webhook"` against a local HTTP service: events arrive batched with their
//! source and the configured headers, an outage backs off and loses nothing, a refused
//! event is dead-lettered with the answer, 401 blocks the partition, 413 splits, a
//! redirect is not followed while headers are set, and secrets stay out of logs,
//! `/metrics` and `check-config`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::producer::{BaseRecord, Producer};

const TOKEN: &str = "Bearer s3cr3t-webhook-token";

/// One request as the service saw it.
#[derive(Clone, Debug)]
struct Request {
    at: Instant,
    /// What the service answered.
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn events(&self) -> Vec<serde_json::Value> {
        match serde_json::from_slice(&self.body) {
            Ok(serde_json::Value::Array(events)) => events,
            other => panic!("the body is not a JSON array: {other:?}"),
        }
    }

    fn event_ids(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| {
                e["event"]["event_id"]
                    .as_str()
                    .expect("every event carries its event_id")
                    .to_owned()
            })
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// What the service answers: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

/// 200 with a body of `ok`.
fn ok() -> Answer {
    (200, vec![], "ok".to_owned())
}

/// Whether `eventd` shows `partition` of `comment` blocked.
fn blocked(eventd: &Eventd, partition: &str) -> Option<f64> {
    eventd.metric_if_present(
        "eventd_partition_blocked",
        &[("topic", "comment"), ("partition", partition)],
    )
}

/// Waits up to 60 s for `partition` of `comment` to show blocked; `why` names the cause
/// in the failure.
fn expect_blocked(eventd: &Eventd, partition: &str, why: &str) {
    assert!(
        eventd.wait_until(Duration::from_secs(60), |e| blocked(e, partition)
            == Some(1.0)),
        "{why} did not show partition {partition} blocked; logs:\n{}",
        eventd.logs()
    );
}

/// Waits up to 30 s for `partition` of `comment` to no longer show blocked.
fn expect_unblocked(eventd: &Eventd, partition: &str) {
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| blocked(e, partition)
            == Some(0.0)),
        "partition {partition} stayed blocked after delivery"
    );
}

/// A local HTTP service that records every request and answers as `answer` says.
struct Service {
    url: String,
    address: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    fn start(answer: impl Fn(&Request) -> Answer + Send + 'static) -> Service {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("the service listens");
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let requests = requests.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(mut incoming)) = server.recv_timeout(Duration::from_millis(50))
                    else {
                        continue;
                    };
                    let mut body = Vec::new();
                    std::io::Read::read_to_end(incoming.as_reader(), &mut body)
                        .expect("the request body reads");
                    let mut request = Request {
                        at: Instant::now(),
                        status: 0,
                        headers: incoming
                            .headers()
                            .iter()
                            .map(|h| {
                                (
                                    h.field.as_str().as_str().to_ascii_lowercase(),
                                    h.value.to_string(),
                                )
                            })
                            .collect(),
                        body,
                    };
                    let (status, headers, text) = answer(&request);
                    request.status = status;
                    requests.lock().expect("requests").push(request);
                    let mut response =
                        tiny_http::Response::from_string(text).with_status_code(status);
                    for (name, value) in headers {
                        response.add_header(
                            tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                                .expect("a header"),
                        );
                    }
                    let _ = incoming.respond(response);
                }
            })
        };
        Service {
            url: format!("http://127.0.0.1:{port}/hook"),
            address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests").clone()
    }

    /// Event ids of `requests`, in order.
    fn ids_in(&self, requests: &[Request]) -> Vec<String> {
        requests.iter().flat_map(Request::event_ids).collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A webhook handler on `comment` posting to `url`, with `extra` keys of the handler.
fn webhook_config(url: &str, extra: &str) -> String {
    format!(
        r#"
[[consumers]]
name = "main"
topics = ["comment"]

[[handlers]]
name = "notify"
kind = "webhook"
consumer = "main"
url = "{url}"
{extra}

[dead_letter]
topic = "dlq"
"#
    )
}

/// `n` comment events, ids `c-<first>`…, keyed by `keys` items; `text` per id.
fn comments(
    first: usize,
    n: usize,
    keys: usize,
    text: impl Fn(usize) -> String,
) -> Vec<(String, String)> {
    (first..first + n)
        .map(|id| {
            let item = format!("item-{}", id % keys);
            let event = serde_json::json!({
                "event_id": format!("c-{id}"),
                "user_id": format!("u-{}", id % 7),
                "item_id": item,
                "ts": 1_764_000_000_000i64 + id as i64,
                "text": text(id),
            });
            (item, event.to_string())
        })
        .collect()
}

fn ids(events: &[(String, String)]) -> BTreeSet<String> {
    events
        .iter()
        .map(|(_, e)| {
            serde_json::from_str::<serde_json::Value>(e).expect("JSON")["event_id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect()
}

/// Waits until the requests `delivered` picks hold every id of `expected`; returns
/// those requests.
fn wait_delivered(
    service: &Service,
    expected: &BTreeSet<String>,
    delivered: impl Fn(&Request) -> bool,
    eventd: &Eventd,
) -> Vec<Request> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ok: Vec<Request> = service
            .requests()
            .into_iter()
            .filter(|r| delivered(r))
            .collect();
        let got: BTreeSet<String> = service.ids_in(&ok).into_iter().collect();
        if expected.is_subset(&got) {
            return ok;
        }
        if Instant::now() > deadline {
            panic!(
                "the service did not get {} of {} events within 90 s; logs:\n{}",
                expected.difference(&got).count(),
                expected.len(),
                eventd.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn events_reach_the_service_batched_with_their_source_and_headers_and_no_secret_leaks() {
    let broker = Broker::start(2, &["comment", "dlq"]);
    let service = Service::start(|_| ok());
    let team_file = tempfile::NamedTempFile::new().expect("a file");
    std::fs::write(team_file.path(), "moderation\n").expect("write");
    let config = webhook_config(
        &service.url,
        &format!(
            "batch = 50\nmax_wait = \"2s\"\nconcurrency = 2\nheaders = {{ Authorization = \"env:NOTIFIER_TOKEN\", X-Team = \"file:{}\" }}\n",
            team_file.path().display()
        ),
    );
    let backlog = comments(0, 300, 12, |id| format!("comment {id}"));
    broker.produce("comment", &backlog);
    // At trace level, so no client or connection log line may show a header either.
    let eventd = start_eventd_with_env(
        &broker,
        &config,
        &[
            ("NOTIFIER_TOKEN", TOKEN.to_owned()),
            ("RUST_LOG", "trace".to_owned()),
        ],
    );
    let delivered = wait_delivered(&service, &ids(&backlog), |r| r.status == 200, &eventd);
    assert!(
        eventd.logs().contains("\"level\":\"TRACE\""),
        "trace level was not on"
    );
    let all_ids = service.ids_in(&delivered);
    assert_eq!(
        all_ids.len(),
        300,
        "each event once when every request succeeds"
    );
    assert!(
        delivered.iter().all(|r| r.events().len() <= 50),
        "a request carried more than batch = 50 events"
    );
    assert!(
        delivered.iter().any(|r| r.events().len() > 1),
        "no request carried more than one event"
    );
    // Each event names where it came from; a key's events arrive in offset order.
    let mut last_offset: HashMap<(i64, String), i64> = HashMap::new();
    for request in &delivered {
        assert_eq!(request.header("authorization"), Some(TOKEN));
        assert_eq!(request.header("x-team"), Some("moderation"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        let key = request
            .header("idempotency-key")
            .expect("an Idempotency-Key");
        assert!(
            key.len() == 32 && key.chars().all(|c| c.is_ascii_hexdigit()),
            "key {key:?}"
        );
        for event in request.events() {
            assert_eq!(event["topic"], "comment");
            let partition = event["partition"].as_i64().expect("partition");
            let offset = event["offset"].as_i64().expect("offset");
            let item = event["key"].as_str().expect("key").to_owned();
            assert_eq!(event["event"]["item_id"].as_str(), Some(item.as_str()));
            if let Some(previous) = last_offset.insert((partition, item.clone()), offset) {
                assert!(
                    previous < offset,
                    "{item} on {partition}: {offset} after {previous}"
                );
            }
        }
    }
    let idempotency_keys: BTreeSet<&str> = delivered
        .iter()
        .filter_map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(
        idempotency_keys.len(),
        delivered.len(),
        "different batches share a key"
    );
    broker.expect_committed_to_end("eventd-main", "comment", Duration::from_secs(60), &eventd);

    // A trickle is gathered for up to max_wait rather than posted one event at a time.
    let before = service.requests().len();
    let trickle = comments(1000, 20, 5, |id| format!("late {id}"));
    let producer = broker.producer();
    let started = Instant::now();
    for (key, payload) in &trickle {
        producer
            .send(BaseRecord::to("comment").key(key).payload(payload))
            .expect("queued");
        producer.flush(Duration::from_secs(5)).expect("flushed");
        // Apart enough that each event is read on its own.
        std::thread::sleep(Duration::from_millis(50));
    }
    let produced_over = started.elapsed();
    wait_delivered(&service, &ids(&trickle), |r| r.status == 200, &eventd);
    let trickle_requests = service.requests().len() - before;
    // A request per 2 s window the production spanned, for each of the two slots.
    let allowed = 2 * (produced_over.as_millis() / 2000 + 1) as usize;
    assert!(
        trickle_requests <= allowed,
        "20 events produced over {produced_over:?} took {trickle_requests} requests with max_wait = 2s (at most {allowed})"
    );

    assert!(
        eventd.metric(
            "eventd_webhook_responses_total",
            &[("handler", "notify"), ("class", "2xx")]
        ) >= delivered.len() as f64
    );
    assert!(
        eventd.metric(
            "eventd_webhook_request_duration_seconds_count",
            &[("handler", "notify")]
        ) >= delivered.len() as f64
    );
    let scrape = eventd.scrape();
    assert!(
        !scrape.contains("s3cr3t") && !scrape.contains("moderation"),
        "a header value in /metrics"
    );
    assert!(
        !eventd.logs().contains("s3cr3t") && !eventd.logs().contains("moderation"),
        "a header value in the logs"
    );
    let checked = eventd_bin()
        .arg("check-config")
        .arg(&eventd.config)
        .env("NOTIFIER_TOKEN", TOKEN)
        .output()
        .expect("check-config runs");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(checked.status.success(), "check-config refused: {shown}");
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("moderation"),
        "check-config shows a header value: {shown}"
    );
}

/// 503 for 10 s, then a 429 asking for 2 s, then 200: every event arrives, nothing is
/// dead-lettered, the offset waits for the outage (lag rises, then falls to 0), the
/// retry after the 429 comes no sooner than asked, and a request sent again carries the
/// same key.
#[test]
fn an_outage_backs_off_honours_retry_after_and_loses_nothing() {
    let broker = Broker::start(1, &["comment", "dlq"]);
    let outage_began: Arc<Mutex<Option<Instant>>> = Arc::default();
    let after_outage = Arc::new(AtomicUsize::new(0));
    let service = {
        let outage_began = outage_began.clone();
        let after_outage = after_outage.clone();
        Service::start(move |_| {
            let began = *outage_began
                .lock()
                .expect("lock")
                .get_or_insert_with(Instant::now);
            if began.elapsed() < Duration::from_secs(10) {
                return (503, vec![], "down for maintenance".to_owned());
            }
            match after_outage.fetch_add(1, Ordering::Relaxed) {
                0 => (
                    429,
                    vec![("Retry-After", "2".to_owned())],
                    "slow down".to_owned(),
                ),
                _ => ok(),
            }
        })
    };
    // One key: every retry waits behind the first event, so the timing is its own.
    let backlog = comments(0, 5, 1, |id| format!("comment {id}"));
    broker.produce("comment", &backlog);
    let eventd = start_eventd(&broker, &webhook_config(&service.url, ""));
    let lag = [
        ("consumer", "main"),
        ("topic", "comment"),
        ("partition", "0"),
    ];
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| e.metric_reaches(
            "eventd_consumer_lag_messages",
            &lag,
            5.0
        )),
        "the lag did not show the outage; logs:\n{}",
        eventd.logs()
    );
    assert!(
        service.requests().iter().all(|r| r.status == 503),
        "the outage ended before its lag was seen"
    );
    assert_eq!(
        broker.committed("eventd-main", "comment")[0].1.unwrap_or(0),
        0,
        "the offset moved during the outage"
    );
    assert!(eventd.metric_reaches(
        "eventd_handler_retries_total",
        &[("handler", "notify")],
        1.0
    ));
    wait_delivered(&service, &ids(&backlog), |r| r.status == 200, &eventd);
    // The backoff doubles from 100 ms: a handful of tries in 10 s, not one every 100 ms.
    let refused = service
        .requests()
        .iter()
        .filter(|r| r.status == 503)
        .count();
    assert!(
        refused <= 12,
        "{refused} requests during a 10 s outage: the backoff did not grow"
    );
    broker.expect_committed_to_end("eventd-main", "comment", Duration::from_secs(60), &eventd);
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| e
            .metric("eventd_consumer_lag_messages", &lag)
            == 0.0),
        "the lag did not fall after the outage"
    );
    let requests = service.requests();
    let answered_429 = requests
        .iter()
        .position(|r| r.status == 429)
        .expect("the service answered 429 once");
    let gap = requests[answered_429 + 1].at - requests[answered_429].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "the retry came {gap:?} after a 429 asking for 2 s"
    );
    // The same events in the same order carry the same key; others another one.
    let mut key_of: HashMap<Vec<String>, &str> = HashMap::new();
    for request in &requests {
        let key = request.header("idempotency-key").expect("a key");
        let previous = *key_of.entry(request.event_ids()).or_insert(key);
        assert_eq!(previous, key, "one batch sent again under another key");
    }
    let distinct: BTreeSet<&str> = key_of.values().copied().collect();
    assert_eq!(
        distinct.len(),
        key_of.len(),
        "two different batches share a key"
    );
    assert!(
        requests.len() > key_of.len(),
        "no batch was sent again, so the key was not checked"
    );
    assert!(
        broker.read_all("dlq").is_empty(),
        "an outage dead-lettered events"
    );
    assert!(eventd.metric_reaches(
        "eventd_webhook_responses_total",
        &[("handler", "notify"), ("class", "5xx")],
        3.0
    ));
    assert!(eventd.metric_reaches(
        "eventd_webhook_responses_total",
        &[("handler", "notify"), ("class", "4xx")],
        1.0
    ));
}

/// The service refuses any request holding a "poison" comment with 400: the batch is
/// tried one event at a time, the others are delivered, and the poison one goes to the
/// dead-letter topic with the status and the start of the answer in `eventd.error`.
#[test]
fn an_event_the_service_refuses_is_dead_lettered_with_its_answer_and_the_rest_delivered() {
    let broker = Broker::start(1, &["comment", "dlq"]);
    let service = Service::start(|request| {
        if request
            .events()
            .iter()
            .any(|e| e["event"]["text"] == "poison")
        {
            (400, vec![], format!("bad comment: {}", "x".repeat(400)))
        } else {
            ok()
        }
    });
    let backlog = comments(0, 30, 30, |id| {
        if id == 7 {
            "poison".to_owned()
        } else {
            format!("comment {id}")
        }
    });
    let producer = broker.producer();
    for (key, payload) in &backlog {
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "x-trace",
            value: Some(key.as_str()),
        });
        producer
            .send(
                BaseRecord::to("comment")
                    .key(key)
                    .payload(payload)
                    .headers(headers),
            )
            .expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");
    let eventd = start_eventd(&broker, &webhook_config(&service.url, ""));
    let mut wanted = ids(&backlog);
    wanted.remove("c-7");
    let delivered = wait_delivered(&service, &wanted, |r| r.status == 200, &eventd);
    assert!(!service.ids_in(&delivered).contains(&"c-7".to_owned()));
    let letters = broker.wait_for("dlq", Duration::from_secs(60), |records| {
        !records.is_empty()
    });
    assert_eq!(
        letters.len(),
        1,
        "only the refused event is dead-lettered: {letters:?}"
    );
    let letter = &letters[0];
    assert_eq!(letter.field("event_id").as_deref(), Some("c-7"));
    let error = letter.headers.get("eventd.error").expect("eventd.error");
    assert!(
        error.starts_with("webhook answered 400 Bad Request: bad comment: xxx"),
        "eventd.error: {error}"
    );
    assert!(
        error.len() < 256 + 80,
        "the answer was not cut at 256 bytes: {} bytes",
        error.len()
    );
    assert_eq!(
        letter.headers.get("eventd.handler").map(String::as_str),
        Some("notify")
    );
    assert_eq!(
        letter.headers.get("x-trace").map(String::as_str),
        Some("item-7"),
        "the dead-letter copy lost the event's own headers"
    );
    broker.expect_committed_to_end("eventd-main", "comment", Duration::from_secs(60), &eventd);
    assert_eq!(
        eventd.metric(
            "eventd_events_dead_lettered_total",
            &[("handler", "notify"), ("reason", "webhook_rejected")]
        ),
        1.0
    );
}

/// 401 means eventd's credentials are wrong, not the events: the partition is shown
/// blocked, nothing is dead-lettered, and once the service takes them again everything
/// arrives. The default backoff is kept: a 401 is retried at `retry.max_backoff` (10 s).
#[test]
fn unauthorized_blocks_the_partition_and_dead_letters_nothing_until_accepted() {
    let broker = Broker::start(1, &["comment", "dlq"]);
    let refusing = Arc::new(AtomicBool::new(true));
    let service = {
        let refusing = refusing.clone();
        Service::start(move |_| {
            if refusing.load(Ordering::Relaxed) {
                (401, vec![], "invalid token".to_owned())
            } else {
                ok()
            }
        })
    };
    let backlog = comments(0, 10, 3, |id| format!("comment {id}"));
    broker.produce("comment", &backlog);
    let eventd = start_eventd(
        &broker,
        &webhook_config(
            &service.url,
            "headers = { Authorization = \"Bearer wrong\" }",
        ),
    );
    expect_blocked(&eventd, "0", "a 401");
    assert!(
        !eventd.log_lines("the handler's own settings are refused (not the event); retrying it, the partition cannot move past it until they are fixed").is_empty()
    );
    refusing.store(false, Ordering::Relaxed);
    wait_delivered(&service, &ids(&backlog), |r| r.status == 200, &eventd);
    broker.expect_committed_to_end("eventd-main", "comment", Duration::from_secs(60), &eventd);
    expect_unblocked(&eventd, "0");
    assert!(
        broker.read_all("dlq").is_empty(),
        "a 401 dead-lettered events"
    );
}

/// 413 for bodies over 2000 bytes: requests are halved until they fit, and an event
/// too large alone is dead-lettered as too large.
#[test]
fn a_request_too_large_is_split_and_an_event_too_large_alone_is_dead_lettered() {
    let broker = Broker::start(1, &["comment", "dlq"]);
    let service = Service::start(|request| {
        if request.body.len() > 2000 {
            (413, vec![], "too large".to_owned())
        } else {
            ok()
        }
    });
    let backlog = comments(0, 40, 40, |id| {
        if id == 13 {
            "y".repeat(3000)
        } else {
            format!("comment {id}")
        }
    });
    broker.produce("comment", &backlog);
    let eventd = start_eventd(
        &broker,
        &webhook_config(&service.url, "batch = 40\nmax_wait = \"1s\""),
    );
    let mut wanted = ids(&backlog);
    wanted.remove("c-13");
    wait_delivered(&service, &wanted, |r| r.status == 200, &eventd);
    let requests = service.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.status == 413 && r.events().len() > 1),
        "nothing was split"
    );
    let letters = broker.wait_for("dlq", Duration::from_secs(60), |records| {
        !records.is_empty()
    });
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].field("event_id").as_deref(), Some("c-13"));
    assert!(eventd.metric_reaches(
        "eventd_events_dead_lettered_total",
        &[("handler", "notify"), ("reason", "too_large")],
        1.0
    ));
    broker.expect_committed_to_end("eventd-main", "comment", Duration::from_secs(60), &eventd);
}

/// With a header set, a redirect could hand its credential to another host: it is not
/// followed, the other service gets nothing, and the partition shows blocked. Without
/// headers a 307 is followed with the events; a 302 is not, since the client would
/// turn the POST into a GET without them and take its 200 for a delivery.
#[test]
fn a_redirect_is_not_followed_while_headers_are_set() {
    let broker = Broker::start(1, &["comment", "dlq"]);
    let elsewhere = Service::start(|_| ok());
    let target = elsewhere.url.clone();
    let service = Service::start(move |_| (307, vec![("Location", target.clone())], String::new()));
    broker.produce("comment", &comments(0, 3, 3, |id| format!("comment {id}")));
    let eventd = start_eventd(
        &broker,
        &webhook_config(&service.url, "headers = { Authorization = \"Bearer x\" }"),
    );
    expect_blocked(&eventd, "0", "a redirect");
    assert!(!service.requests().is_empty());
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
    assert!(eventd
        .logs()
        .contains("redirects are not followed while headers are set"));
    assert!(broker.read_all("dlq").is_empty());
}

/// What `check-config` refuses in a webhook handler, naming the key, and never showing
/// a header's value.
#[test]
fn check_config_names_what_is_wrong_in_a_webhook_handler() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &str, &str)] = &[
        ("", "handlers[0].url", "is required for kind = \"webhook\""),
        ("url = \"ftp://example.com/x\"", "handlers[0].url", "must be an http:// or https:// address"),
        ("url = \"http://user:pw@example.com/x\"", "handlers[0].url", "must not hold credentials"),
        ("url = \"http://example.com\"\nbatch = 0", "handlers[0].batch", "must be at least 1"),
        (
            "url = \"http://example.com\"\nmax_wait = \"61s\"",
            "handlers[0].max_wait",
            "must be at most 60s",
        ),
        (
            "url = \"http://example.com\"\nheaders = { Authorization = \"a\", authorization = \"b\" }",
            "handlers[0].headers.authorization",
            "is set twice (header names ignore case)",
        ),
        (
            "url = \"http://example.com\"\nheaders = { Authorization = \"env:EVENTD_TEST_UNSET_TOKEN\" }",
            "handlers[0].headers.Authorization",
            "environment variable \"EVENTD_TEST_UNSET_TOKEN\" is not set",
        ),
        (
            "url = \"http://example.com\"\nheaders = { Idempotency-Key = \"x\" }",
            "handlers[0].headers.Idempotency-Key",
            "is set by eventd on every request",
        ),
        (
            "url = \"http://example.com\"\nheaders = { \"X-Bad\" = \"line\\nbreak-s3cr3t\" }",
            "handlers[0].headers.X-Bad",
            "holds a character an HTTP header cannot carry",
        ),
        ("url = \"http://example.com\"\noutput = \"x\"", "handlers[0].output", "is not a key of kind = \"webhook\""),
    ];
    for (i, (keys, key, message)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("webhook-{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "[[consumers]]\nname = \"main\"\ntopics = [\"comment\"]\n\n[[handlers]]\nname = \"notify\"\nkind = \"webhook\"\nconsumer = \"main\"\n{keys}\n"
            ),
        )
        .expect("write");
        let checked = check_config(&path);
        let shown = String::from_utf8_lossy(&checked.stderr).to_string()
            + &String::from_utf8_lossy(&checked.stdout);
        assert_eq!(
            checked.status.code(),
            Some(78),
            "case {i} ({keys}) accepted: {shown}"
        );
        assert!(
            shown.contains(key) && shown.contains(message),
            "case {i}: expected {key}: {message}, got: {shown}"
        );
        assert!(
            !shown.contains("s3cr3t"),
            "case {i} shows a header value: {shown}"
        );
    }
}

/// The first request fails once and every later one succeeds: whatever the writer was
/// given behind the failed request waits for the failed events' retries, so each key's
/// events reach the service in offset order.
#[test]
fn a_failed_request_holds_back_later_events_of_its_keys() {
    let broker = Broker::start(1, &["comment", "dlq"]);
    let answered = Arc::new(AtomicUsize::new(0));
    let service = {
        let answered = answered.clone();
        Service::start(move |_| match answered.fetch_add(1, Ordering::Relaxed) {
            0 => (503, vec![], "warming up".to_owned()),
            _ => ok(),
        })
    };
    // Read in one go before the first request fails, in more than one request's worth.
    let backlog = comments(0, 400, 10, |id| format!("comment {id}"));
    broker.produce("comment", &backlog);
    let eventd = start_eventd(&broker, &webhook_config(&service.url, "batch = 50"));
    let delivered = wait_delivered(&service, &ids(&backlog), |r| r.status == 200, &eventd);
    assert!(service.requests()[0].status == 503 && service.requests()[0].events().len() > 1);
    let mut last: HashMap<String, i64> = HashMap::new();
    for event in delivered.iter().flat_map(Request::events) {
        let item = event["key"].as_str().expect("key").to_owned();
        let offset = event["offset"].as_i64().expect("offset");
        if let Some(previous) = last.insert(item.clone(), offset) {
            assert!(
                previous < offset,
                "{item}: offset {offset} reached the service after {previous}"
            );
        }
    }
    broker.expect_committed_to_end("eventd-main", "comment", Duration::from_secs(60), &eventd);
}

/// The README's webhook example is a valid handler as written (its secret file and
/// variable supplied), and the events it is sent reach the service.
#[test]
fn the_readme_webhook_example_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let start = readme
        .find("```toml\n[[handlers]]\nname = \"notify-authors\"")
        .expect("the README has a webhook example");
    let example = &readme[start + "```toml\n".len()..];
    let example = &example[..example.find("```").expect("the example ends")];
    let broker = Broker::start(1, &["comment", "dlq"]);
    let service = Service::start(|_| ok());
    let tenant = tempfile::NamedTempFile::new().expect("a file");
    std::fs::write(tenant.path(), "eu-1").expect("write");
    let handler = example
        .replace("https://notifier.internal/comments", &service.url)
        .replace("/run/secrets/tenant", &tenant.path().display().to_string());
    assert_ne!(
        handler, example,
        "the example's url or secret file changed: update this test"
    );
    let config = format!(
        "[[consumers]]\nname = \"analytics\"\ntopics = [\"comment\"]\n\n{handler}\n[dead_letter]\ntopic = \"dlq\"\n"
    );
    let backlog = comments(0, 20, 4, |id| format!("comment {id}"));
    broker.produce("comment", &backlog);
    let eventd = start_eventd_with_env(&broker, &config, &[("NOTIFIER_TOKEN", TOKEN.to_owned())]);
    let delivered = wait_delivered(&service, &ids(&backlog), |r| r.status == 200, &eventd);
    assert!(delivered
        .iter()
        .all(|r| r.header("authorization") == Some(TOKEN) && r.header("x-tenant") == Some("eu-1")));
    broker.expect_committed_to_end(
        "eventd-analytics",
        "comment",
        Duration::from_secs(60),
        &eventd,
    );
}

/// A token rotated in its `file:` and a new `url` apply on reload, the daemon running
/// on: the blocked partition goes on with the new token, then events go to the new
/// address and no longer to the old one.
#[test]
fn a_rotated_header_file_and_a_new_url_apply_on_reload() {
    let broker = Broker::start(1, &["comment", "dlq"]);
    let old_service = Service::start(|request| {
        if request.header("authorization") == Some("Bearer new") {
            ok()
        } else {
            (401, vec![], "token expired".to_owned())
        }
    });
    let new_service = Service::start(|_| ok());
    let token = tempfile::NamedTempFile::new().expect("a file");
    std::fs::write(token.path(), "Bearer old\n").expect("write");
    let config = format!(
        "[reload]\nwatch_config = true\n{}",
        webhook_config(
            &old_service.url,
            &format!(
                "headers = {{ Authorization = \"file:{}\" }}",
                token.path().display()
            )
        )
    );
    let first = comments(0, 5, 5, |id| format!("comment {id}"));
    broker.produce("comment", &first);
    let eventd = start_eventd(&broker, &config);
    expect_blocked(&eventd, "0", "the old token");
    std::fs::write(token.path(), "Bearer new\n").expect("rotate");
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| e
            .log_lines("config change applied")
            .iter()
            .any(|line| line["key"] == "handlers[0].headers.Authorization")),
        "the rotated token was not applied; logs:\n{}",
        eventd.logs()
    );
    wait_delivered(&old_service, &ids(&first), |r| r.status == 200, &eventd);
    expect_unblocked(&eventd, "0");

    let text = std::fs::read_to_string(&eventd.config).expect("config");
    std::fs::write(
        &eventd.config,
        text.replace(&old_service.url, &new_service.url),
    )
    .expect("edit");
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| e
            .log_lines("config change applied")
            .iter()
            .any(|line| line["key"] == "handlers[0].url")),
        "the new url was not applied; logs:\n{}",
        eventd.logs()
    );
    let second = comments(100, 5, 5, |id| format!("comment {id}"));
    broker.produce("comment", &second);
    wait_delivered(&new_service, &ids(&second), |r| r.status == 200, &eventd);
    let to_old: BTreeSet<String> = old_service
        .ids_in(&old_service.requests())
        .into_iter()
        .collect();
    assert!(
        to_old.is_disjoint(&ids(&second)),
        "events went to the old url after the reload"
    );
    assert!(eventd.is_running());
    assert_eq!(
        eventd.metric_if_present(
            "eventd_actor_restarts_total",
            &[("actor", "handler/notify")]
        ),
        None,
        "the handler was restarted to take the change"
    );
}

#[test]
fn without_headers_only_redirects_that_keep_the_post_are_followed() {
    let broker = Broker::start(2, &["comment", "dlq"]);
    let elsewhere = Service::start(|request| {
        if request.body.is_empty() {
            (200, vec![], "a GET".to_owned())
        } else {
            ok()
        }
    });
    let target = elsewhere.url.clone();
    // Partition 0's events get a 307, partition 1's a 302.
    let service = Service::start(move |request| {
        let partition = request.events()[0]["partition"]
            .as_i64()
            .expect("partition");
        let status = if partition == 0 { 307 } else { 302 };
        (status, vec![("Location", target.clone())], String::new())
    });
    let backlog = comments(0, 20, 20, |id| format!("comment {id}"));
    broker.produce("comment", &backlog);
    let eventd = start_eventd(&broker, &webhook_config(&service.url, "batch = 1"));
    expect_blocked(&eventd, "1", "a 302");
    let expected: BTreeSet<String> = broker
        .read_all("comment")
        .iter()
        .filter(|record| record.partition == 0)
        .filter_map(|record| record.field("event_id"))
        .collect();
    assert!(!expected.is_empty());
    wait_delivered(&elsewhere, &expected, |r| r.status == 200, &eventd);
    assert!(
        elsewhere.requests().iter().all(|r| !r.body.is_empty()),
        "a redirect reached the other service as a GET without the events"
    );
    assert!(eventd
        .logs()
        .contains("only 307 and 308 keep the events' POST"));
    assert!(broker.read_all("dlq").is_empty());
}

/// TLS certificates are verified: a service whose certificate no trusted root signed
/// (here a test CA's, which names `localhost` correctly) gets nothing, the events wait
/// as in an outage, and the error says why.
#[test]
fn a_certificate_no_trusted_root_signed_is_refused() {
    let broker = Broker::start(1, &["comment", "dlq"]);
    let service = Service::start(|_| ok());
    let certificates = tls::Certificates::generate();
    let front = tls::TlsFront::start(0, service.address, &certificates, false);
    let url = format!("https://localhost:{}/hook", front.address().port());
    let backlog = comments(0, 3, 3, |id| format!("comment {id}"));
    broker.produce("comment", &backlog);
    let eventd = start_eventd(&broker, &webhook_config(&url, ""));
    let refused_for_its_certificate = |e: &Eventd| {
        e.log_lines("handler failed on an event; retrying it")
            .iter()
            .any(|line| {
                line["error"]
                    .as_str()
                    .is_some_and(|error| error.contains("certificate"))
            })
    };
    assert!(
        eventd.wait_until(Duration::from_secs(60), refused_for_its_certificate),
        "no failure naming the certificate; logs:\n{}",
        eventd.logs()
    );
    assert!(
        service.requests().is_empty(),
        "a request went through an unverified certificate"
    );
    assert!(!front.refused().is_empty(), "no handshake was refused");
    assert_eq!(
        broker.committed("eventd-main", "comment")[0].1.unwrap_or(0),
        0
    );
    assert!(broker.read_all("dlq").is_empty());
}
