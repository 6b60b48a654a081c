//! SASL credentials of the running clients. A reload that reads a rotated password
//! (a `file:` secret whose file changed, an edited config) hands it to every live client
//! through `rd_kafka_sasl_set_credentials`: each uses it the next time it logs in to a
//! broker, without dropping connections already made. Clients created later (a restarted
//! consumer or producer, built from the config it started with) get the rotated
//! credentials too.

use std::ffi::{CStr, CString};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use rdkafka::bindings;
use rdkafka::client::{Client, ClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::ClientConfig;

/// A SASL username and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// A client whose SASL credentials can be replaced while it runs.
pub trait LogsIn: Send + Sync {
    fn set_login(&self, login: &Login) -> Result<(), String>;
}

impl<C: ConsumerContext> LogsIn for BaseConsumer<C> {
    fn set_login(&self, login: &Login) -> Result<(), String> {
        set_credentials(self.client(), login)
    }
}

impl<C: ProducerContext> LogsIn for BaseProducer<C> {
    fn set_login(&self, login: &Login) -> Result<(), String> {
        set_credentials(self.client(), login)
    }
}

fn set_credentials<C: ClientContext>(client: &Client<C>, login: &Login) -> Result<(), String> {
    let (Ok(username), Ok(password)) = (
        CString::new(login.username.as_str()),
        CString::new(login.password.as_str()),
    ) else {
        return Err("the username or password contains a NUL byte".to_owned());
    };
    // SAFETY: the handle lives as long as `client`; librdkafka copies both strings
    // before returning, and the returned error is owned here and destroyed once read.
    unsafe {
        let error = bindings::rd_kafka_sasl_set_credentials(
            client.native_ptr(),
            username.as_ptr(),
            password.as_ptr(),
        );
        if error.is_null() {
            return Ok(());
        }
        let message = CStr::from_ptr(bindings::rd_kafka_error_string(error))
            .to_string_lossy()
            .into_owned();
        bindings::rd_kafka_error_destroy(error);
        Err(message)
    }
}

/// The live clients and the credentials a reload rotated to, if one did.
#[derive(Default)]
pub struct Logins {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    rotated: Option<Login>,
    clients: Vec<Weak<dyn LogsIn>>,
}

/// Every client of this process.
pub static LOGINS: std::sync::LazyLock<Logins> = std::sync::LazyLock::new(Logins::default);

impl Logins {
    /// Follows `client` for rotations; it is forgotten once dropped. A client built
    /// from its settings before a rotation landed gets the rotated credentials now.
    pub fn register<T: LogsIn + 'static>(&self, client: &Arc<T>) {
        let mut registry = self.inner.lock();
        registry.clients.retain(|client| client.strong_count() > 0);
        if let Some(login) = &registry.rotated {
            if let Err(error) = client.set_login(login) {
                tracing::error!(%error, "cannot give a new client the rotated SASL credentials");
            }
        }
        let client: Arc<dyn LogsIn> = client.clone();
        registry.clients.push(Arc::downgrade(&client));
    }

    /// The rotated credentials replace `sasl.username` and `sasl.password` of settings
    /// built from the config the process started with.
    pub fn apply_to(&self, settings: &mut ClientConfig) {
        if let Some(login) = &self.inner.lock().rotated {
            settings
                .set("sasl.username", &login.username)
                .set("sasl.password", &login.password);
        }
    }

    /// Hands `login` to every live client and keeps it for clients made later. Says
    /// how many took it and why any refused: those keep their old credentials.
    pub fn rotate(&self, login: Login) -> Rotation {
        let mut registry = self.inner.lock();
        registry.clients.retain(|client| client.strong_count() > 0);
        let mut rotation = Rotation::default();
        for client in registry.clients.iter().filter_map(Weak::upgrade) {
            match client.set_login(&login) {
                Ok(()) => rotation.updated += 1,
                Err(error) => rotation.refused.push(error),
            }
        }
        registry.rotated = Some(login);
        rotation
    }
}

/// What a rotation of the SASL credentials did to the live clients.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Clients that use the new credentials at their next login.
    pub updated: usize,
    /// Why each other client refused them; those log in with the old ones until a
    /// restart.
    pub refused: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::BaseConsumer;

    fn client(username: &str) -> Arc<BaseConsumer> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "SCRAM-SHA-256")
            .set("sasl.username", username)
            .set("sasl.password", "before")
            .create()
            .expect("consumer");
        Arc::new(consumer)
    }

    #[test]
    fn a_rotation_reaches_live_clients_and_later_ones_and_forgets_dropped_ones() {
        let logins = Logins::default();
        let first = client("a");
        logins.register(&first);
        let dropped = client("b");
        logins.register(&dropped);
        drop(dropped);
        let login = Login {
            username: "a".to_owned(),
            password: "after".to_owned(),
        };
        assert_eq!(
            logins.rotate(login.clone()),
            Rotation {
                updated: 1,
                refused: Vec::new()
            }
        );

        let mut settings = ClientConfig::new();
        settings.set("sasl.password", "before");
        logins.apply_to(&mut settings);
        assert_eq!(settings.get("sasl.password"), Some("after"));
        assert_eq!(settings.get("sasl.username"), Some("a"));

        let later = client("a");
        logins.register(&later);
        assert_eq!(logins.rotate(login).updated, 2);
    }

    struct Refusing;

    impl LogsIn for Refusing {
        fn set_login(&self, _: &Login) -> Result<(), String> {
            Err("refused by this client".to_owned())
        }
    }

    #[test]
    fn a_rotation_one_client_refuses_says_so_and_still_reaches_the_others() {
        let logins = Logins::default();
        let taking = client("a");
        logins.register(&taking);
        let refusing = Arc::new(Refusing);
        logins.register(&refusing);
        let rotation = logins.rotate(Login {
            username: "a".to_owned(),
            password: "after".to_owned(),
        });
        assert_eq!(
            rotation,
            Rotation {
                updated: 1,
                refused: vec!["refused by this client".to_owned()]
            }
        );
    }
}
