//! The embedded broker: librdkafka's in-process mock cluster, so `eventd run` with no
//! `kafka.brokers` shows the whole pipeline on one machine. Nothing it holds survives
//! the process, and it keeps only about 5 MiB per partition.

use std::ffi::{CStr, CString};

use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{bindings, ClientConfig};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot start the embedded broker: {0}")]
    Start(String),
    #[error("cannot create topic {topic:?} on the embedded broker")]
    Topic { topic: String },
}

/// A running mock cluster; it lives as long as this value.
pub struct EmbeddedBroker {
    /// The mock cluster belongs to this client handle and dies with it.
    owner: BaseProducer,
    bootstrap: String,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster and creates `topics` with `partitions` each.
    pub fn start(partitions: i32, topics: &[String]) -> Result<Self, EmbeddedError> {
        Self::start_cluster(1, partitions, topics)
    }

    /// Starts a cluster of `brokers` brokers (ids 1..=brokers) and creates `topics`
    /// with `partitions` each, their leaders spread over the brokers.
    pub fn start_cluster(
        brokers: u32,
        partitions: i32,
        topics: &[String],
    ) -> Result<Self, EmbeddedError> {
        let owner: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.max(1).to_string())
            .set("log_level", "3")
            .create()
            .map_err(|e| EmbeddedError::Start(e.to_string()))?;
        let cluster = Self::cluster_ptr(&owner)?;
        // SAFETY: `cluster` belongs to `owner`, which outlives every call here; the
        // returned string is copied before anything can free it.
        let bootstrap = unsafe {
            // A fresh group otherwise waits 3s before its first assignment.
            bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 100);
            let raw = bindings::rd_kafka_mock_cluster_bootstraps(cluster);
            if raw.is_null() {
                return Err(EmbeddedError::Start("no bootstrap address".to_owned()));
            }
            CStr::from_ptr(raw).to_string_lossy().into_owned()
        };
        let broker = EmbeddedBroker { owner, bootstrap };
        for topic in topics {
            broker.create_topic(topic, partitions)?;
        }
        Ok(broker)
    }

    fn cluster_ptr(
        owner: &BaseProducer,
    ) -> Result<*mut bindings::rd_kafka_mock_cluster_t, EmbeddedError> {
        // SAFETY: the native handle is valid while `owner` lives.
        let cluster =
            unsafe { bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr()) };
        if cluster.is_null() {
            return Err(EmbeddedError::Start(
                "librdkafka created no mock cluster".to_owned(),
            ));
        }
        Ok(cluster)
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), EmbeddedError> {
        let cluster = Self::cluster_ptr(&self.owner)?;
        let name = CString::new(topic).map_err(|_| EmbeddedError::Topic {
            topic: topic.to_owned(),
        })?;
        // SAFETY: `cluster` is alive (owned by `self.owner`) and `name` outlives the call.
        let err =
            unsafe { bindings::rd_kafka_mock_topic_create(cluster, name.as_ptr(), partitions, 1) };
        if err != bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(EmbeddedError::Topic {
                topic: topic.to_owned(),
            });
        }
        Ok(())
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Makes the next `errors.len()` produce requests fail with these errors, in order,
    /// to show how eventd retries and reports failed deliveries.
    pub fn fail_produce_requests(
        &self,
        errors: &[bindings::rd_kafka_resp_err_t],
    ) -> Result<(), EmbeddedError> {
        self.fail_requests(rdkafka::types::RDKafkaApiKey::Produce, errors)
    }

    /// Makes the next `errors.len()` requests of one kind (any broker) fail with these
    /// errors, in order.
    pub fn fail_requests(
        &self,
        api: rdkafka::types::RDKafkaApiKey,
        errors: &[bindings::rd_kafka_resp_err_t],
    ) -> Result<(), EmbeddedError> {
        let cluster = Self::cluster_ptr(&self.owner)?;
        // SAFETY: `cluster` is alive (owned by `self.owner`); librdkafka copies `errors`.
        unsafe {
            bindings::rd_kafka_mock_push_request_errors_array(
                cluster,
                api as i16,
                errors.len(),
                errors.as_ptr(),
            );
        }
        Ok(())
    }

    /// Makes the next `errors.len()` produce requests to broker `broker` fail with these
    /// errors, in order: a rejection that reaches only the topics that broker leads.
    pub fn fail_produce_requests_on(
        &self,
        broker: i32,
        errors: &[bindings::rd_kafka_resp_err_t],
    ) -> Result<(), EmbeddedError> {
        let cluster = Self::cluster_ptr(&self.owner)?;
        for error in errors {
            // SAFETY: `cluster` is alive (owned by `self.owner`); the variadic pair is
            // (error code, round-trip time in ms), both C ints.
            let err = unsafe {
                bindings::rd_kafka_mock_broker_push_request_error_rtts(
                    cluster,
                    broker,
                    rdkafka::types::RDKafkaApiKey::Produce as i16,
                    1,
                    *error as std::ffi::c_int,
                    0 as std::ffi::c_int,
                )
            };
            if err != bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                return Err(EmbeddedError::Start(format!(
                    "cannot inject produce errors on broker {broker}"
                )));
            }
        }
        Ok(())
    }

    /// Takes broker 1 (the only one of `start`) down or brings it back, as an outage
    /// would.
    pub fn set_available(&self, available: bool) -> Result<(), EmbeddedError> {
        self.set_broker_available(1, available)
    }

    /// Takes broker `broker` down or brings it back.
    pub fn set_broker_available(&self, broker: i32, available: bool) -> Result<(), EmbeddedError> {
        let cluster = Self::cluster_ptr(&self.owner)?;
        // SAFETY: `cluster` is alive (owned by `self.owner`).
        let err = unsafe {
            if available {
                bindings::rd_kafka_mock_broker_set_up(cluster, broker)
            } else {
                bindings::rd_kafka_mock_broker_set_down(cluster, broker)
            }
        };
        if err != bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(EmbeddedError::Start(format!(
                "cannot set broker {broker} {}",
                if available { "up" } else { "down" }
            )));
        }
        Ok(())
    }

    /// Makes broker `broker` the leader of `topic`'s `partition`.
    pub fn set_leader(
        &self,
        topic: &str,
        partition: i32,
        broker: i32,
    ) -> Result<(), EmbeddedError> {
        let cluster = Self::cluster_ptr(&self.owner)?;
        let name = CString::new(topic).map_err(|_| EmbeddedError::Topic {
            topic: topic.to_owned(),
        })?;
        // SAFETY: `cluster` is alive (owned by `self.owner`) and `name` outlives the call.
        let err = unsafe {
            bindings::rd_kafka_mock_partition_set_leader(cluster, name.as_ptr(), partition, broker)
        };
        if err != bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(EmbeddedError::Start(format!(
                "cannot make broker {broker} the leader of {topic}/{partition}"
            )));
        }
        Ok(())
    }

    /// Makes broker `broker` the coordinator of consumer group `group`, as a
    /// coordinator failover would.
    pub fn set_group_coordinator(&self, group: &str, broker: i32) -> Result<(), EmbeddedError> {
        let cluster = Self::cluster_ptr(&self.owner)?;
        let kind = CString::new("group").map_err(|_| EmbeddedError::Topic {
            topic: group.to_owned(),
        })?;
        let key = CString::new(group).map_err(|_| EmbeddedError::Topic {
            topic: group.to_owned(),
        })?;
        // SAFETY: `cluster` is alive (owned by `self.owner`); both strings outlive the call.
        let err = unsafe {
            bindings::rd_kafka_mock_coordinator_set(cluster, kind.as_ptr(), key.as_ptr(), broker)
        };
        if err != bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(EmbeddedError::Start(format!(
                "cannot make broker {broker} the coordinator of group {group}"
            )));
        }
        Ok(())
    }
}
