//! `/readyz` says whether eventd consumes: not before every group member had its first
//! assignment, and not from the first shutdown signal; the body says why.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS;
use rdkafka::types::RDKafkaApiKey;

/// The group coordinator turns the first joins away: eventd runs (alive) but consumes
/// nothing, so it is not ready, and says it waits for an assignment; once the member
/// is assigned it is ready.
#[test]
fn ready_only_once_every_member_has_its_first_assignment() {
    let broker = Broker::start(1, &["like", "out"]);
    broker
        .embedded()
        .fail_requests(
            RDKafkaApiKey::JoinGroup,
            &[RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 6],
        )
        .expect("inject");
    let eventd = start_eventd(&broker, COPY_LIKE_TO_OUT);
    let waiting = eventd.wait_until(Duration::from_secs(20), |e| {
        e.http_get("/readyz").is_some_and(|(status, body)| {
            status == 503 && body.contains("waiting for their first assignment")
        })
    });
    assert!(
        waiting,
        "/readyz never said it waits for an assignment (last: {:?}); logs:\n{}",
        eventd.http_get("/readyz"),
        eventd.logs()
    );
    assert_eq!(
        eventd.http_get("/healthz").map(|r| r.0),
        Some(200),
        "alive while waiting"
    );
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| {
            e.http_get("/readyz").map(|r| r.0) == Some(200)
        }),
        "never ready after the joins were let through (last: {:?}); logs:\n{}",
        eventd.http_get("/readyz"),
        eventd.logs()
    );
    broker.produce("like", &events(10, 2));
    broker.expect_every_id("out", 10, Duration::from_secs(20), &eventd);
}
