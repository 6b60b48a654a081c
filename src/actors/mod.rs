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

/// Drops `value` off the async threads when this is its last reference: dropping the
/// last reference to a librdkafka client closes it (a consumer polls until closed, a
/// producer flushes), which must not block a tokio worker.
pub fn release_client<T: Send + Sync + 'static>(value: std::sync::Arc<T>) {
    if let Some(last) = std::sync::Arc::into_inner(value) {
        drop_off_runtime(last);
    }
}

/// Drops `value` on a blocking thread (inline outside a tokio runtime).
pub fn drop_off_runtime<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(value));
        }
        Err(_) => drop(value),
    }
}

/// When the shutdown must be over (`shutdown.grace` after the signal). Every step takes
/// its wait from what is left, so fixed waits cannot add up past the grace.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(std::time::Instant);

impl Deadline {
    pub fn after(grace: std::time::Duration) -> Self {
        Self(std::time::Instant::now() + grace)
    }

    /// Time left, zero once passed.
    pub fn left(&self) -> std::time::Duration {
        self.0.saturating_duration_since(std::time::Instant::now())
    }

    /// This deadline moved `reserve` earlier (not before now): what a step hands to
    /// the steps it waits on, so they give up, and say why, before it does.
    pub fn reserving(&self, reserve: std::time::Duration) -> Deadline {
        let now = std::time::Instant::now();
        Self(
            self.0
                .checked_sub(reserve)
                .map_or(now, |earlier| earlier.max(now)),
        )
    }

    /// Time left keeping `reserve` for the steps after this one; at least 1 ms.
    pub fn left_before(&self, reserve: std::time::Duration) -> std::time::Duration {
        self.left()
            .saturating_sub(reserve)
            .max(std::time::Duration::from_millis(1))
    }
}
