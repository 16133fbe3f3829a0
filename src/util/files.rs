//! Files written whole (a temporary file and a rename), read only when regular, and the
//! leftovers of a writer that died.

use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash never leaves a partial file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
    let tmp = temp_path(path);
    let written = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        injected_full_disk()
            .and_then(|()| f.write_all(bytes))
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot write {}", path.display()))?;
        drop(f);
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if written.is_err() {
        // A full disk must not also leave a half-written temporary file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Fault injection for the tests: with `A3FT_DISK_FULL_AFTER=N` the process's first N file
/// writes succeed and every later one fails as on a full disk (ENOSPC), so a test can put the
/// disk's end at every write of a command, one run per N, where it cannot mount a small tmpfs.
const DISK_FULL_AFTER: &str = "A3FT_DISK_FULL_AFTER";

/// `Err(ENOSPC)` once the injected disk is full; every writer of files calls it before it writes.
pub fn injected_full_disk() -> std::io::Result<()> {
    static AFTER: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(after) = *AFTER.get_or_init(|| {
        std::env::var(DISK_FULL_AFTER)
            .ok()
            .and_then(|v| v.parse().ok())
    }) else {
        return Ok(());
    };
    if COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= after {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}

/// The temporary file an atomic write of `path` goes through: `.NAME.tmp-PID` in the same
/// folder (same file system, so the rename is atomic), named so that `remove_stale_temps`
/// recognises a dead writer's leftover.
pub fn temp_path(path: &Path) -> std::path::PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("file"),
        std::process::id()
    ))
}

/// Removes the temporary files `write_atomic` left in `dir` when its writer died mid-write
/// (kill -9, out of memory, power loss): `.NAME.tmp-PID` whose process no longer runs. Called
/// by a trainer holding the run's lock, so no live a3ft writes there; a live PID (this
/// process, or a reused number) keeps its file. Returns the names removed.
pub fn remove_stale_temps(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for l in dead_leftovers(dir) {
        let stem = l.stem.as_encoded_bytes();
        if stem.starts_with(b".")
            && stem.ends_with(b".tmp")
            && !l.is_dir
            && std::fs::remove_file(&l.path).is_ok()
        {
            removed.push(
                l.path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
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
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let bytes = name.as_encoded_bytes();
            let dash = bytes.iter().rposition(|&b| b == b'-')?;
            let pid = std::str::from_utf8(&bytes[dash + 1..])
                .ok()?
                .parse::<i32>()
                .ok()?;
            if process_alive(pid) {
                return None;
            }
            // SAFETY: the bytes come from an OsStr and are cut right before an ASCII `-`, which
            // `from_encoded_bytes_unchecked` documents as a valid split point.
            let stem = unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(&bytes[..dash]) }
                .to_os_string();
            Some(Leftover {
                path: entry.path(),
                stem,
                pid,
                is_dir: entry.file_type().is_ok_and(|t| t.is_dir()),
            })
        })
        .collect()
}

/// Whether a process of this number exists (a reused number counts as alive: leftovers are
/// then kept, never removed from under a live writer).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(pid, 0) sends nothing; it only asks whether the process exists. EPERM means
    // it exists under another user.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Largest file [`read_file`] and [`read_text`] read (a3ft's own records, a user's JSON): a
/// device such as `/dev/zero` under a file's name is refused long before memory runs out.
pub const MAX_READ_BYTES: u64 = 1 << 30;

/// Opens `path` for reading, refusing anything but a regular file (through links). The check
/// is made on the opened file itself, and the open does not block: a FIFO (which would block
/// the open until a writer came) or a device put under the name, even after a first look, is
/// refused, never waited on or read without end.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok(f)
}

/// Reads a whole regular file of at most `max` bytes ([`open_regular`]); a larger one is an
/// error naming it, found while reading (a file that grows after a size check counts too).
pub fn read_at_most(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path)?;
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!(
            "{} is larger than the limit of {} bytes",
            path.display(),
            max
        );
    }
    Ok(bytes)
}

/// The first `max` bytes of a regular file (all of it when shorter): for what a3ft needs from
/// the start of a file it does not own, such as a model card's front matter.
pub fn read_prefix(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(max)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

/// Reads a whole regular file of at most [`MAX_READ_BYTES`].
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    read_at_most(path, MAX_READ_BYTES)
}

/// `read_file` as UTF-8 text.
pub fn read_text(path: &Path) -> Result<String> {
    read_text_at_most(path, MAX_READ_BYTES)
}

/// [`read_at_most`] as UTF-8 text.
pub fn read_text_at_most(path: &Path, max: u64) -> Result<String> {
    String::from_utf8(read_at_most(path, max)?)
        .map_err(|_| anyhow!("{} is not UTF-8 text", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Special files under a file's name: refused at once (a FIFO with no writer would block a
    /// plain open forever; `/dev/zero` would be read without end), never waited on.
    #[test]
    fn the_reader_refuses_special_files_and_bounds_regular_ones() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("README.md");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for special in [
            fifo.as_path(),
            Path::new("/dev/zero"),
            Path::new("/dev/null"),
            dir.path(),
        ] {
            for e in [
                read_file(special).unwrap_err(),
                read_prefix(special, 10).unwrap_err(),
                open_regular(special).unwrap_err(),
            ] {
                let msg = format!("{e:#}");
                assert!(
                    msg.contains("not a regular file") || msg.contains("cannot read"),
                    "{}: {msg}",
                    special.display()
                );
            }
        }
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(format!("{:#}", read_file(&link).unwrap_err()).contains("not a regular file"));
        let f = dir.path().join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_at_most(&f, 10).unwrap(), b"0123456789");
        assert!(format!("{:#}", read_at_most(&f, 9).unwrap_err())
            .contains("larger than the limit of 9 bytes"));
        assert_eq!(read_prefix(&f, 4).unwrap(), b"0123");
        assert!(read_text(&f).is_ok());
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(format!("{:#}", read_text(&f).unwrap_err()).contains("not UTF-8"));
    }
}
