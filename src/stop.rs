//! A process-wide stop request (Ctrl-C, SIGTERM, SIGHUP), so that long loops — sampling,
//! held-out loss, Inception features — end promptly and the trainer can save before it exits.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// The error a loop returns when it stopped because a stop was requested.
#[derive(Debug, thiserror::Error)]
#[error("stopped by a signal")]
pub struct Stopped;

pub fn request() {
    STOP.store(true, Ordering::SeqCst);
}

pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// `Err(Stopped)` once a stop is requested; call between batches of long work.
pub fn check() -> Result<(), Stopped> {
    if requested() {
        Err(Stopped)
    } else {
        Ok(())
    }
}

/// Whether `e` (or its cause) is a [`Stopped`].
pub fn is_stopped(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Stopped>())
}
