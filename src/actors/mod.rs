//! The supervised actor tree; see the crate documentation for its shape.

pub mod consumer;
pub mod handler;
pub mod producer;
pub mod root;
pub mod supervision;

/// Why the daemon must end now without a graceful drain.
#[derive(Debug, Clone)]
pub enum Fatal {
    /// A supervisor saw more restarts than `supervision.max_restarts` within the window.
    Meltdown { supervisor: String, actor: String },
}

/// Where supervisors report a `Fatal`; `main` turns it into an exit code.
pub type FatalSender = tokio::sync::mpsc::UnboundedSender<Fatal>;
