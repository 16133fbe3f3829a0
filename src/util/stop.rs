//! A process-wide stop request (Ctrl-C, SIGTERM, SIGHUP), so that long loops — sampling,
//! held-out loss, Inception features — end promptly and the trainer can save before it exits.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

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

/// Fault injection for the tests: with `A3FT_SIGNAL_AT_CHECK=N` the process sends itself SIGTERM
/// at its N-th stop check, so that a test can put a signal in every loop that checks, one run
/// per N, without racing a timer.
const SIGNAL_AT_CHECK: &str = "A3FT_SIGNAL_AT_CHECK";

fn injected_signal() {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(at) = *AT.get_or_init(|| {
        std::env::var(SIGNAL_AT_CHECK)
            .ok()
            .and_then(|v| v.parse().ok())
    }) else {
        return;
    };
    if COUNT.fetch_add(1, Ordering::SeqCst) + 1 == at {
        // SAFETY: raise only sends this process a signal.
        unsafe { libc::raise(libc::SIGTERM) };
        // The watcher thread takes it asynchronously: wait for it, as a real signal would be seen
        // at a later check.
        for _ in 0..200 {
            if requested() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// `Err(Stopped)` once a stop is requested; call between batches of long work.
pub fn check() -> Result<(), Stopped> {
    injected_signal();
    if requested() {
        Err(Stopped)
    } else {
        Ok(())
    }
}

/// `e` back, or `Err(e)` when it is a stop: where a failure becomes a warning or a fallback, a
/// signal must not (`Err(e) => { let e = stop::pass_stop(e)?; eprintln!("warning: {e:#}") }`).
pub fn pass_stop(e: anyhow::Error) -> anyhow::Result<anyhow::Error> {
    if is_stopped(&e) {
        Err(e)
    } else {
        Ok(e)
    }
}

/// Whether `e` (or its cause) is a [`Stopped`].
pub fn is_stopped(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Stopped>())
}

/// For a stop: what was under way when it came (the context the callers added above the
/// [`Stopped`], outermost first; empty when none), read from the error chain rather than its text.
/// `None` when `e` is not a stop.
pub fn stopped_during(e: &anyhow::Error) -> Option<String> {
    if !is_stopped(e) {
        return None;
    }
    let during: Vec<String> = e
        .chain()
        .take_while(|c| !c.is::<Stopped>())
        .map(|c| c.to_string())
        .collect();
    Some(during.join(": "))
}

/// Watches SIGINT, SIGTERM and SIGHUP. The first one is recorded in the returned number (for
/// an exit status of 128 + n), sets the returned flag and requests a stop: long loops end at
/// their next check, and `first` tells the user what happens then. A second one exits at once.
pub fn watch_signals(first: &'static str) -> (Arc<AtomicBool>, Arc<AtomicI32>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    let which = Arc::new(AtomicI32::new(0));
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(mut signals) => {
            let (flag, which) = (flag.clone(), which.clone());
            std::thread::spawn(move || {
                for sig in signals.forever() {
                    // The signal is recorded before the work is asked to stop, so the exit code
                    // (128 + n) is known by the time the work ends.
                    let _ = which.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
                    request();
                    if flag.swap(true, Ordering::SeqCst) {
                        eprintln!("\nsecond signal: stopping at once");
                        // SAFETY: _exit ends the process without running exit handlers, which is
                        // the point: libtorch may be mid-step on the main thread, and exit handlers
                        // under it crash (a panic or a segfault instead of 128+n). Half-written
                        // outputs are staging files that the next run removes.
                        unsafe { libc::_exit(128 + sig) };
                    }
                    eprintln!("\nsignal {sig}: {first} (send it again to stop at once)");
                }
            });
        }
        Err(e) => eprintln!("warning: cannot watch for Ctrl-C/SIGTERM ({e}); an interrupted command may leave partial files for the next run to remove"),
    }
    (flag, which)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_stop_says_what_it_stopped() {
        let bare: anyhow::Result<()> = Err(Stopped.into());
        assert_eq!(stopped_during(&bare.unwrap_err()).as_deref(), Some(""));
        let e = Err::<(), _>(Stopped)
            .context("sampling")
            .context("evaluating step 40")
            .unwrap_err();
        assert_eq!(
            stopped_during(&e).as_deref(),
            Some("evaluating step 40: sampling")
        );
        // Text that merely reads like a stop is not one.
        assert_eq!(
            stopped_during(&anyhow::anyhow!("x: stopped by a signal")),
            None
        );
        assert!(pass_stop(anyhow::anyhow!("disk full")).is_ok());
        assert!(pass_stop(e).is_err());
    }
}
