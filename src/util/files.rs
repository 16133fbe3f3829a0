//! Files written whole (a temporary file and a rename), read only when regular, and the
//! leftovers of a writer that died.

use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash never leaves a partial file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    let tmp = temp_path(path);
    let written = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
        f.sync_all().with_context(|| format!("cannot write {}", path.display()))?;
        drop(f);
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if written.is_err() {
        // A full disk must not also leave a half-written temporary file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The temporary file an atomic write of `path` goes through: `.NAME.tmp-PID` in the same
/// folder (same file system, so the rename is atomic), named so that `remove_stale_temps`
/// recognises a dead writer's leftover.
pub fn temp_path(path: &Path) -> std::path::PathBuf {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join(format!(".{}.tmp-{}", path.file_name().and_then(|s| s.to_str()).unwrap_or("file"), std::process::id()))
}

/// Removes the temporary files `write_atomic` left in `dir` when its writer died mid-write
/// (kill -9, out of memory, power loss): `.NAME.tmp-PID` whose process no longer runs. Called
/// by a trainer holding the run's lock, so no live a3ft writes there; a live PID (this
/// process, or a reused number) keeps its file. Returns the names removed.
pub fn remove_stale_temps(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for l in dead_leftovers(dir) {
        let stem = l.stem.as_encoded_bytes();
        if stem.starts_with(b".") && stem.ends_with(b".tmp") && !l.is_dir && std::fs::remove_file(&l.path).is_ok() {
            removed.push(l.path.file_name().unwrap_or_default().to_string_lossy().into_owned());
        }
    }
    removed.sort();
    removed
}

/// An entry `STEM-PID` of a folder whose process PID no longer runs: what a killed writer left
/// (a temporary file, a staging folder, an old copy moved aside).
pub struct Leftover {
    pub path: std::path::PathBuf,
    /// The name before `-PID`, e.g. `.out.staging` or `.model.safetensors.tmp`.
    pub stem: std::ffi::OsString,
    pub pid: i32,
    pub is_dir: bool,
}

/// Every entry of `dir` named `STEM-PID` (PID a number) whose process is dead; a live process's
/// (this one's, or a reused number's) are never listed. The one place that knows the convention:
/// callers pick their leftovers by stem.
pub fn dead_leftovers(dir: &Path) -> Vec<Leftover> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let bytes = name.as_encoded_bytes();
            let dash = bytes.iter().rposition(|&b| b == b'-')?;
            let pid = std::str::from_utf8(&bytes[dash + 1..]).ok()?.parse::<i32>().ok()?;
            if process_alive(pid) {
                return None;
            }
            // SAFETY: the bytes come from an OsStr and are cut right before an ASCII `-`, which
            // `from_encoded_bytes_unchecked` documents as a valid split point.
            let stem = unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(&bytes[..dash]) }.to_os_string();
            Some(Leftover { path: entry.path(), stem, pid, is_dir: entry.file_type().is_ok_and(|t| t.is_dir()) })
        })
        .collect()
}

/// Whether a process of this number exists (a reused number counts as alive: leftovers are
/// then kept, never removed from under a live writer).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(pid, 0) sends nothing; it only asks whether the process exists. EPERM means
    // it exists under another user.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Reads a whole file, refusing anything but a regular file (through links): a FIFO would block
/// the reader forever, a device could be endless.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    check_regular(path)?;
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `read_file` as UTF-8 text.
pub fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read_file(path)?).map_err(|_| anyhow!("{} is not UTF-8 text", path.display()))
}

/// An error unless `path` is a regular file (through links).
pub fn check_regular(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok(())
}
