//! Locks on files and folders (a run, a study, a study's runs): `flock(2)`, which the kernel
//! releases when the holder dies, so a crashed process never leaves a folder locked.
//!
//! Across machines the lock is only as good as the shared filesystem's `flock`: NFS (v4, or v3
//! with lockd) maps it to byte-range locks that every client sees; Lustre does so only when
//! mounted with `-o flock` (with `localflock` each node sees its own locks only, and two
//! machines could take one run). A filesystem that refuses `flock` gives an error, never a
//! lock silently not taken.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;

/// Name of the lock file `lock_folder` holds.
pub const LOCK_FILE: &str = ".a3ft.lock";

/// Names a3ft's own lock and bookkeeping files in a folder start with: a folder holding only
/// such files is empty for the user's purposes.
pub const OWN_PREFIX: &str = ".a3ft.";

/// An exclusive lock on a folder, released when dropped (or when the process dies).
pub struct FolderLock {
    _file: std::fs::File,
}

impl Drop for FolderLock {
    /// Leaves the file empty: a holder's name in it means a holder (or one that died).
    fn drop(&mut self) {
        let _ = self._file.set_len(0);
    }
}

/// A lock taken by [`lock_file`], released when dropped; an exclusive holder's name is cleared
/// from the file first, so that a name left in it means its holder died holding it.
pub struct Held {
    file: std::fs::File,
    mode: Mode,
}

impl Held {
    /// Empties the file (a shared holder's way of dropping a dead exclusive holder's name).
    pub fn clear(&self) {
        let _ = self.file.set_len(0);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.mode == Mode::Exclusive {
            let _ = self.file.set_len(0);
        }
    }
}

/// [`lock_file`] as a guard: `Ok(Err(holder))` when another process holds it.
pub fn hold(
    path: &Path,
    why: &str,
    mode: Mode,
    wait: bool,
) -> Result<std::result::Result<Held, String>> {
    Ok(lock_file(path, why, mode, wait)?.map(|file| Held { file, mode }))
}

/// Takes the folder's lock, or says which process holds it: two trainers on one run would
/// interleave their checkpoints and metrics.
pub fn lock_folder(dir: &Path, what: &str) -> Result<FolderLock> {
    let path = dir.join(LOCK_FILE);
    match flock(&path, "a3ft keeps its lock there")? {
        Ok(file) => Ok(FolderLock { _file: file }),
        // No name: shared holders (a study's shards or workers), or a holder between its lock and its write.
        Err(holder) if holder.is_empty() => bail!(
            "the {what} in {} is in use by other a3ft processes; wait for them or stop them",
            dir.display()
        ),
        Err(holder) => bail!(
            "the {what} in {} is in use by another a3ft process ({holder}); wait for it or stop it",
            dir.display()
        ),
    }
}

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One holder; it writes who it is into the file.
    Exclusive,
    /// Any number of holders together, none while an exclusive one holds it.
    Shared,
}

/// Opens (or creates) the regular file `path` and takes its exclusive flock without waiting,
/// then writes who holds it (`pid N`, and the host) into it. `Ok(Err(holder))` when another
/// process holds it (what it wrote; empty for shared holders); `why` says, in the error for a
/// non-file at `path`, what the file is for.
pub fn flock(path: &Path, why: &str) -> Result<std::result::Result<std::fs::File, String>> {
    lock_file(path, why, Mode::Exclusive, false)
}

/// [`flock`] in `mode`; with `wait`, blocks until the lock is free instead of returning the
/// holder (for locks held only for moments).
pub fn lock_file(
    path: &Path,
    why: &str,
    mode: Mode,
    wait: bool,
) -> Result<std::result::Result<std::fs::File, String>> {
    use std::io::{Read, Seek};
    use std::os::unix::io::AsRawFd;
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
        bail!(
            "{} is not a regular file ({why}); remove it",
            path.display()
        );
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let op = match mode {
        Mode::Exclusive => libc::LOCK_EX,
        Mode::Shared => libc::LOCK_SH,
    } | if wait { 0 } else { libc::LOCK_NB };
    loop {
        // SAFETY: flock only operates on the descriptor, which `file` keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Ok(Err(holder.trim().to_string()));
            }
            _ => bail!("cannot lock {}: {err} (does this filesystem support flock? see docs/guide/usage.md, sharded studies)", path.display()),
        }
    }
    if mode == Mode::Exclusive {
        let written = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| write!(file, "{}", holder_text()));
        written.with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(Ok(file))
}

/// Who this process is, as a lock file records it: `pid N on HOST`.
pub fn holder_text() -> String {
    format!("pid {} on {}", std::process::id(), hostname())
}

/// This machine's name (`?` when it has none).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "?".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_holders_exclude_an_exclusive_one_and_the_holder_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("l");
        let a = lock_file(&p, "test", Mode::Shared, false).unwrap().unwrap();
        let b = lock_file(&p, "test", Mode::Shared, false).unwrap().unwrap();
        assert_eq!(
            lock_file(&p, "test", Mode::Exclusive, false)
                .unwrap()
                .unwrap_err(),
            ""
        );
        drop((a, b));
        let x = flock(&p, "test").unwrap().unwrap();
        let held = flock(&p, "test").unwrap().unwrap_err();
        assert!(
            held.starts_with(&format!("pid {} on ", std::process::id())),
            "{held}"
        );
        assert!(lock_file(&p, "test", Mode::Shared, false).unwrap().is_err());
        drop(x);
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        assert!(flock(&tmp.path().join("d"), "test").is_err());
    }
}
