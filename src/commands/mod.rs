//! The one-shot commands: `produce`, `tail`, `replay` and `offsets` each take the loaded
//! config, do one job against the brokers and return the process's exit code. `run` is
//! a command too, but it stays in `crate::daemon`, beside the actor tree it starts and
//! supervises until a signal. `position` is theirs alone: the places that `tail --from`
//! and `offsets reset --to` accept.

pub mod offsets;
pub mod position;
pub mod produce;
pub mod replay;
pub mod tail;
