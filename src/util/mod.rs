//! The lowest layer: files written whole, locks, paths, signals, libtorch errors, limits and
//! the cache folder; nothing here knows about models or runs.

pub mod cache;
pub mod device;
pub mod files;
pub mod limits;
pub mod lock;
pub mod markdown;
pub mod memory;
pub mod owned_dir;
pub mod paths;
pub mod precision;
pub mod stop;
pub mod torch;

/// A progress bar with an indicatif template; hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap()
            .progress_chars("=> "),
    );
    pb
}

/// 121063942 → "121,063,942".
pub fn fmt_count(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A number as a user typed it, for error messages: `1e300`, not three hundred digits.
pub fn fmt_num(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}
