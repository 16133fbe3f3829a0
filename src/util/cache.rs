//! The cache folder: Inception weights, feature caches, npm tarballs.

use std::path::PathBuf;

pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("A3FT_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache")
        });
    base.join("a3ft")
}
