//! eventd consumes user-engagement events (browse, like, favorite, comment) from Kafka,
//! routes them through a supervised tree of actors to configured handlers, and writes
//! derived events back to Kafka, at least once and in order per key.
//!
//! ```text
//! RootSupervisor                        actors::root: owns everything, shuts down in order
//! ├── ProducerActor                     actors::producer: the one librdkafka producer
//! ├── HandlerSupervisor                 actors::handler: one pool per [[handlers]] entry,
//! │   │                                 restarts an actor that panics, budget per slot
//! │   └── HandlerActor × concurrency    handler::actor, with its outbox (handler::outbox):
//! │                                     every failure of its work parks the event's key
//! └── ConsumerSupervisor                actors::consumer: one child per [[consumers]] entry
//!     ├── GroupMember × members         mode = "group": one consumer in the group
//!     │   └── PartitionWorker × assigned partitions (split partition queues): reads,
//!     │                                 decodes, routes, redelivers, stores offsets
//!     └── PartitionConsumer × partitions  mode = "partitions": manual assignment
//!         └── PartitionWorker
//! telemetry                             /metrics, /healthz, /readyz
//!
//! eventd produce:
//! ProducerSupervisor                    actors::producer: restarts it on fatal errors
//! └── ProducerActor
//! ```
//!
//! `daemon` is the `run` command: it starts the tree above and waits for signals.
//! `commands` holds the one-shot commands beside it (`produce`, `tail`, `replay`,
//! `offsets`), which do one job against the brokers and exit. Both read `config`
//! (what users write) and build their clients through `kafka`.
//!
//! An offset is stored only after every handler routed an event has finished it (and
//! whatever it wrote was acknowledged by the broker); auto-commit sends stored offsets.
//! `waits` names the few fixed waits; every other wait derives from the config.

pub mod actors;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod embedded;
pub mod event;
pub mod kafka;
pub mod logging;
pub mod telemetry;
pub mod waits;
pub mod watch;
