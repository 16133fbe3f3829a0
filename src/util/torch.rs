//! libtorch failures (tch panics on a C++ exception) as errors.

use anyhow::{anyhow, Result};

/// Runs `f`, turning a libtorch panic (tch's infallible ops panic on a C++ exception, e.g. out
/// of memory) into an error `"{what}: <first line of the torch message>"`. The default panic
/// message is silenced meanwhile, so the command prints one error line.
pub fn catch_torch<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    thread_local!(static QUIET: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    static INSTALL: std::sync::Once = std::sync::Once::new();
    // One hook for the process, silent only on a thread inside `catch_torch` (thread-safe and
    // nestable, unlike swapping the global hook per call).
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) == 0 {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(q.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    result.map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown error".into());
        // tch: `called Result::unwrap() on an Err value: Torch("message\nException raised from …")`.
        let msg = match msg.find("Torch(\"") {
            Some(i) => msg[i + 7..].to_string(),
            None => msg,
        };
        let first = msg
            .split(['\n'])
            .next()
            .unwrap_or("")
            .split("\\n")
            .next()
            .unwrap_or("")
            .trim_end_matches(['"', ')']);
        anyhow!("{what}: {first}")
    })
}
