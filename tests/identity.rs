//! Identities that differ per instance: `${NAME}` placeholders in `kafka.client_id`, and
//! a fenced static member said out loud.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID;
use rdkafka::types::RDKafkaApiKey;

/// Two replicas with one config would share `group.instance.id` and fence each other.
/// With `client_id = "eventd-${POD_NAME}"` each has its own; when the broker fences a
/// member anyway, eventd logs an error naming the id and counts it.
#[test]
fn a_fenced_static_member_is_named_and_counted() {
    let broker = Broker::start(1, &["like", "out"]);
    // The member's first heartbeat is answered as if another instance took its id.
    broker
        .embedded()
        .fail_requests(
            RDKafkaApiKey::Heartbeat,
            &[RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID],
        )
        .expect("inject");
    let eventd = start_eventd_with_env(
        &broker,
        &COPY_LIKE_TO_OUT.replace(
            "topics = [\"like\"]\n",
            "topics = [\"like\"]\nstatic_membership = true\n",
        ),
        &[
            ("EVENTD__KAFKA__CLIENT_ID", "eventd-${POD_NAME}".to_owned()),
            ("POD_NAME", "pod-7".to_owned()),
        ],
    );
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| e.metric_reaches(
            "eventd_consumer_fenced_total",
            &[("consumer", "main")],
            1.0
        )),
        "no fenced member counted; logs:\n{}",
        eventd.logs()
    );
    let logs = eventd.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("static member fenced"))
        .unwrap_or_else(|| panic!("no fenced error logged:\n{logs}"));
    assert!(
        line.contains("\"level\":\"ERROR\"") && line.contains("eventd-pod-7-main-0"),
        "the error names the expanded group.instance.id: {line}"
    );
    // The member is restarted and consumes again.
    broker.produce("like", &events(10, 2));
    broker.expect_every_id("out", 10, Duration::from_secs(40), &eventd);
}
