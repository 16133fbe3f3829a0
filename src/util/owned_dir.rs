//! An output folder that a command writes as a whole: it refuses a folder holding anything
//! it did not write itself, and replaces the folder in one step.
//!
//! The files are written into a staging folder beside `out` (same file system) and swapped
//! in with renames, so an interrupted run leaves either the old complete folder or the new
//! one, never a mix of both, and a re-run with other settings leaves no stale files behind.
//!
//! A command first [`OwnedDir::claim`]s the folder: it takes a lock beside it (a second a3ft
//! writing the same folder is refused), tidies what a killed earlier writer left (its staging
//! folder, or the old folder it had moved aside), and checks the folder holds only what the
//! command wrote. [`OwnedDir::publish`] checks again at the swap, so a file put into the folder
//! while the command ran is never lost.

use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// The file that says which files of the folder a command wrote.
pub const MANIFEST: &str = "manifest.json";

/// Reads a manifest's bytes and returns the relative paths (`a/b.png`) it names, or an error
/// when the manifest belongs to something else (another data set, another command).
pub type Listed = Box<dyn Fn(&[u8]) -> Result<Vec<String>>>;

/// A folder claimed by one command of this process until it is published or dropped.
pub struct OwnedDir {
    /// `out` as given, for messages.
    shown: PathBuf,
    /// The folder's absolute path: its resolved parent joined with its name.
    out: PathBuf,
    parent: PathBuf,
    name: OsString,
    command: &'static str,
    listed: Listed,
    _lock: OutputLock,
    earlier: usize,
    /// Folders above the output that the claim made (deepest first), removed when nothing is
    /// published.
    created: Vec<PathBuf>,
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        if !self.created.is_empty() {
            self._lock.release();
            remove_empty(&self.created);
        }
    }
}

/// Removes the given folders, deepest first, where they are empty.
fn remove_empty(created: &[PathBuf]) {
    for d in created {
        let _ = std::fs::remove_dir(d);
    }
}

/// `.NAME.SUFFIX` beside the folder (`NAME` may be any bytes: the name is never made UTF-8).
fn beside(parent: &Path, name: &OsStr, suffix: &str) -> PathBuf {
    let mut n = OsString::from(".");
    n.push(name);
    n.push(".");
    n.push(suffix);
    parent.join(n)
}

impl OwnedDir {
    /// Claims `out` for `command` (`fetch`, `export`, `sample`, `report`): ok when `out` is
    /// absent, an empty folder, or holds only `manifest.json` and files that it lists.
    pub fn claim(
        out: &Path,
        command: &'static str,
        listed: impl Fn(&[u8]) -> Result<Vec<String>> + 'static,
    ) -> Result<Self> {
        match std::fs::symlink_metadata(out) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect --out {}", out.display()))
            }
            Ok(m) if m.file_type().is_symlink() => {
                bail!("--out {} is a symbolic link; give the folder it points to (links are never written through)", out.display())
            }
            Ok(m) if !m.is_dir() => bail!("--out {} exists and is not a folder", out.display()),
            Ok(_) => {}
        }
        // `.` or `data/..` have no name of their own, and `new/../out` names no folder `new`:
        // resolving them names the real folder (and creates nothing that is not needed).
        let resolved = crate::util::paths::resolve(out);
        let Some(name) = resolved.file_name().map(OsStr::to_os_string) else {
            bail!("--out {} does not name a folder", out.display());
        };
        let parent = resolved
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Some(file) = parent
            .ancestors()
            .find(|p| std::fs::symlink_metadata(p).is_ok())
            .filter(|p| !p.is_dir())
        {
            bail!(
                "--out {} lies under {}, which is not a folder",
                out.display(),
                file.display()
            );
        }
        // The folders made for the lock are removed again unless the output is published.
        let created: Vec<PathBuf> = parent
            .ancestors()
            .take_while(|p| std::fs::symlink_metadata(p).is_err())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create folder {}", parent.display()))?;
        let parent = parent.to_path_buf();
        let lock = OutputLock::take(&parent, &name, out);
        let lock = match lock {
            Ok(l) => l,
            Err(e) => {
                remove_empty(&created);
                return Err(e);
            }
        };
        let mut dir = OwnedDir {
            shown: out.to_path_buf(),
            out: parent.join(&name),
            parent,
            name,
            command,
            listed: Box::new(listed),
            _lock: lock,
            earlier: 0,
            created,
        };
        dir.tidy_leftovers();
        dir.earlier = dir.check(&dir.out.clone())?;
        Ok(dir)
    }

    /// How many files of an earlier run of the command the folder holds.
    pub fn earlier_files(&self) -> usize {
        self.earlier
    }

    /// Removes what a killed writer of this folder left beside it: its staging folder (never
    /// published), and the old folder it had moved aside, which is put back when the new one never
    /// replaced it. Only folders of dead processes are touched (we hold the lock, so no live a3ft
    /// writes them).
    fn tidy_leftovers(&self) {
        let stem = |kind: &str| {
            let mut s = OsString::from(".");
            s.push(&self.name);
            s.push(kind);
            s
        };
        let (staging, old) = (stem(".staging"), stem(".old"));
        for l in crate::util::files::dead_leftovers(&self.parent) {
            if !l.is_dir || (l.stem != staging && l.stem != old) {
                continue;
            }
            let (path, pid) = (&l.path, l.pid);
            if l.stem == old {
                if std::fs::symlink_metadata(&self.out).is_err() {
                    if std::fs::rename(path, &self.out).is_ok() {
                        eprintln!(
                            "restored {} from {}, which an interrupted earlier {} had moved aside",
                            self.shown.display(),
                            path.display(),
                            self.command
                        );
                    }
                    continue;
                }
                // An old copy holding anything the command did not write is the user's: kept.
                if self.check(path).is_err() {
                    eprintln!("note: {} (an earlier copy of --out) holds files the {} did not write; it is kept", path.display(), self.command);
                    continue;
                }
            }
            if std::fs::remove_dir_all(path).is_ok() {
                eprintln!(
                    "removed {}, left by an interrupted earlier {} (pid {pid})",
                    path.display(),
                    self.command
                );
            }
        }
    }

    /// The number of files the command wrote earlier in `dir`; an error when it holds anything
    /// else (or is a link, or not a folder). Absent counts as empty.
    fn check(&self, dir: &Path) -> Result<usize> {
        let shown = self.shown.display();
        let command = self.command;
        let meta = match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            r => r.with_context(|| format!("cannot inspect --out {shown}"))?,
        };
        if meta.file_type().is_symlink() {
            bail!("--out {shown} is a symbolic link; give the folder it points to (links are never written through)");
        }
        if !meta.is_dir() {
            bail!("--out {shown} exists and is not a folder");
        }
        let (found, folders) = files_under(dir)?;
        if found.is_empty() {
            // Folders without files are still the user's: replacing `out` would remove them.
            if std::fs::read_dir(dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .next()
                .is_some()
            {
                bail!("--out {shown} holds folders; choose an empty or new folder (nothing was changed)");
            }
            return Ok(0);
        }
        let manifest = dir.join(MANIFEST);
        if !std::fs::symlink_metadata(&manifest).is_ok_and(|m| m.is_file()) {
            bail!(
                "--out {shown} holds {}, which the earlier {command} did not write (the folder holds no {MANIFEST} of an earlier {command}): choose an empty or new folder (nothing was changed)",
                found[0]
            );
        }
        let bytes = crate::util::files::read_file(&manifest)?;
        let listed: HashSet<String> = (self.listed)(&bytes)
            .with_context(|| format!("--out {shown} cannot be replaced"))?
            .into_iter()
            .collect();
        if let Some(foreign) = found
            .iter()
            .find(|f| f.as_str() != MANIFEST && !listed.contains(*f))
        {
            bail!("--out {shown} holds {foreign}, which the earlier {command} did not write: choose an empty or new folder (nothing was changed)");
        }
        // A folder holds some listed file, or it is the user's (an empty one too).
        if let Some(foreign) = folders
            .iter()
            .find(|d| !listed.iter().any(|f| f.starts_with(&format!("{d}/"))))
        {
            bail!("--out {shown} holds the folder {foreign}/, which the earlier {command} did not make: choose an empty or new folder (nothing was changed)");
        }
        Ok(found.len())
    }

    /// Makes the folder hold exactly `files` (relative `/`-joined paths and bytes).
    pub fn replace_with(self, files: &[(String, Vec<u8>)]) -> Result<()> {
        self.publish(|staging| write_files(staging, files))
    }

    /// Makes the folder hold exactly what `fill` writes into a fresh folder `.NAME.staging-PID`
    /// beside it: made durable, then renamed over the folder. A stop request (a signal) that
    /// came while `fill` ran leaves the folder as it was.
    pub fn publish(self, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let pid = std::process::id();
        let staging = beside(&self.parent, &self.name, &format!("staging-{pid}"));
        let _ = std::fs::remove_dir_all(&staging);
        let staged = std::fs::create_dir_all(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))
            .and_then(|_| fill(&staging))
            .and_then(|_| sync_tree(&staging))
            .and_then(|_| crate::util::stop::check().map_err(anyhow::Error::from));
        if let Err(e) = staged {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        let swapped = self.swap_in(&staging);
        if swapped.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        let mut this = self;
        if swapped.is_ok() {
            this.created.clear();
        }
        swapped
    }

    fn swap_in(&self, staging: &Path) -> Result<()> {
        let (out, shown) = (&self.out, self.shown.display());
        if std::fs::symlink_metadata(out).is_err() {
            // Renaming onto a folder made meanwhile fails unless it is empty (then nothing is lost).
            return std::fs::rename(staging, out).with_context(|| {
                format!(
                    "cannot rename {} to {shown} (was --out made meanwhile? nothing was replaced)",
                    staging.display()
                )
            });
        }
        let old = beside(
            &self.parent,
            &self.name,
            &format!("old-{}", std::process::id()),
        );
        std::fs::rename(out, &old)
            .with_context(|| format!("cannot move the earlier {shown} aside"))?;
        // Checked again now that no path leads into it: anything put into the folder since the
        // claim (by a user, or a cache placed under it) must survive.
        if let Err(e) = self.check(&old) {
            return match std::fs::rename(&old, out) {
                Ok(()) => Err(e.context(format!("--out {shown} changed while the {} ran", self.command))),
                Err(r) => Err(e.context(format!("--out {shown} changed while the {} ran, and it could not be put back from {}: {r}", self.command, old.display()))),
            };
        }
        if let Err(e) = std::fs::rename(staging, out) {
            let _ = std::fs::rename(&old, out);
            return Err(e)
                .with_context(|| format!("cannot rename {} to {shown}", staging.display()));
        }
        // Checked once more: a process inside the old folder (a shell `cd`'d into it) may have
        // written there since. Such a file is never removed: the old folder is then kept, and said.
        match self.check(&old) {
            Ok(_) => {
                if let Err(e) = std::fs::remove_dir_all(&old) {
                    eprintln!("warning: cannot remove the earlier copy {} ({e}); it is kept (move out what you need, then delete it)", old.display());
                }
            }
            Err(e) => eprintln!("warning: the earlier copy of --out, kept as {}, was written to during the {}: {e:#}; move out what you need, then delete it", old.display(), self.command),
        }
        Ok(())
    }
}

/// An exclusive lock on an output (a folder or a file), held as `.NAME.lock` beside it: a second
/// a3ft writing the same output is refused. The kernel releases it when the process dies; the
/// file is removed on release, so a process that opened it just before must check that it
/// still locks the file of that name.
pub struct OutputLock {
    file: std::fs::File,
    path: PathBuf,
}

impl OutputLock {
    /// Locks the output `name` in the (existing) folder `parent`; `shown` names it in messages.
    pub fn take(parent: &Path, name: &OsStr, shown: &Path) -> Result<OutputLock> {
        let path = beside(parent, name, "lock");
        for _ in 0..10 {
            let why = format!("a3ft keeps the lock of --out {} there", shown.display());
            let file = match crate::util::lock::flock(&path, &why)? {
                Ok(file) => file,
                Err(pid) => bail!("--out {} is being written by another a3ft process ({pid}); wait for it or stop it (nothing was changed)", shown.display()),
            };
            // Released and removed by its holder between our open and our lock: lock the new file.
            if same_file(&file, &path) {
                return Ok(OutputLock { file, path });
            }
        }
        bail!(
            "cannot take the lock {} of --out {}",
            path.display(),
            shown.display()
        )
    }

    /// Locks the output file `path` and removes the temporary files (`.NAME.tmp-PID`) that a
    /// killed earlier writer of it left beside it.
    pub fn for_file(path: &Path) -> Result<OutputLock> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let Some(name) = path.file_name() else {
            bail!("--out {} does not name a file", path.display())
        };
        if !parent.is_dir() {
            bail!(
                "--out {}: the folder {} does not exist",
                path.display(),
                parent.display()
            );
        }
        let lock = OutputLock::take(parent, name, path)?;
        let mut temp = OsString::from(".");
        temp.push(name);
        temp.push(".tmp");
        for l in crate::util::files::dead_leftovers(parent)
            .into_iter()
            .filter(|l| l.stem == temp && !l.is_dir)
        {
            if std::fs::remove_file(&l.path).is_ok() {
                eprintln!(
                    "removed {}, left by an interrupted earlier write of {}",
                    l.path.display(),
                    path.display()
                );
            }
        }
        Ok(lock)
    }
}

fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

impl OutputLock {
    /// Removes the lock file while it is still held (only if the name still leads to it); the
    /// lock itself ends when the file is closed.
    fn release(&mut self) {
        if same_file(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// A manifest saying that `written_by` wrote `files` (for folders whose contents need no
/// other record).
pub fn manifest(written_by: &str, files: &[String]) -> Vec<u8> {
    let v = serde_json::json!({ "written_by": written_by, "files": files });
    serde_json::to_vec_pretty(&v).expect("a JSON value serialises")
}

/// The files a `manifest` of `written_by` lists; an error for another command's manifest.
pub fn listed_files(bytes: &[u8], written_by: &str) -> Result<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).context("its manifest.json is not JSON")?;
    if v["written_by"] != written_by {
        bail!("its manifest.json was not written by {written_by}");
    }
    v["files"]
        .as_array()
        .context("its manifest.json lists no files")?
        .iter()
        .map(|f| {
            f.as_str()
                .map(String::from)
                .context("its manifest.json lists a non-string file")
        })
        .collect()
}

/// Every entry under `dir` that is not a folder, as a `/`-joined relative path. Links count as
/// files (they are never followed), so a link makes the folder foreign.
/// Every entry under `dir`: (the non-folders, the folders), as `/`-joined relative paths.
fn files_under(dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let mut folders = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if entry.file_type()?.is_dir() {
                stack.push((entry.path(), path.clone()));
                folders.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    folders.sort();
    Ok((out, folders))
}

/// Writes every file into the fresh staging folder. One file-system sync afterwards
/// (`sync_tree`) replaces thousands of per-file fsyncs (`write_atomic` on each of 7,500 emoji
/// took 25 s, almost all of it waiting on the disk); per-file atomicity is not needed inside a
/// folder nobody reads until it is renamed.
pub fn write_files(staging: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    for (rel, bytes) in files {
        if rel
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            bail!("internal error: unsafe output path {rel:?}");
        }
        let path = staging.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create folder {}", dir.display()))?;
        }
        crate::util::files::injected_full_disk()
            .and_then(|()| std::fs::write(&path, bytes))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn sync_tree(staging: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(staging)
        .with_context(|| format!("cannot open {}", staging.display()))?;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot sync {}", staging.display()));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_tree(staging: &Path) -> Result<()> {
    for rel in files_under(staging)?.0 {
        let path = staging.join(rel);
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot sync {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(out: &Path) -> Result<OwnedDir> {
        OwnedDir::claim(out, "test", |bytes| listed_files(bytes, "test"))
    }

    fn fill(files: &[&str]) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|f| (f.to_string(), f.as_bytes().to_vec()))
            .collect();
        v.push((
            MANIFEST.into(),
            manifest(
                "test",
                &files.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            ),
        ));
        v
    }

    /// A PID that no process has (one that just ended).
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn files_added_while_the_command_runs_survive() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        claim(&out)
            .unwrap()
            .replace_with(&fill(&["a", "b/c"]))
            .unwrap();
        // A user's file, and a cache folder made under --out, after the claim.
        let claimed = claim(&out).unwrap();
        assert_eq!(claimed.earlier_files(), 3);
        std::fs::write(out.join("mine.txt"), b"keep").unwrap();
        let e = format!("{:#}", claimed.replace_with(&fill(&["new"])).unwrap_err());
        assert!(e.contains("mine.txt") && e.contains("changed while"), "{e}");
        assert_eq!(std::fs::read(out.join("mine.txt")).unwrap(), b"keep");
        assert_eq!(std::fs::read(out.join("b/c")).unwrap(), b"b/c");
        assert!(!out.join("new").exists());
        // Nothing is left beside it but the folder itself.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out"]);
    }

    #[test]
    fn a_second_writer_is_refused_and_a_dead_ones_leftovers_are_tidied() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let first = claim(&out).unwrap();
        let e = format!("{:#}", claim(&out).err().unwrap());
        assert!(e.contains("being written by another a3ft process"), "{e}");
        first.replace_with(&fill(&["a"])).unwrap();
        // Killed between its two renames: the old folder aside, no --out. It is put back.
        let pid = dead_pid();
        std::fs::rename(&out, dir.path().join(format!(".out.old-{pid}"))).unwrap();
        std::fs::create_dir(dir.path().join(format!(".out.staging-{pid}"))).unwrap();
        std::fs::write(dir.path().join(format!(".out.staging-{pid}/x")), b"half").unwrap();
        let claimed = claim(&out).unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"a");
        assert!(
            !dir.path().join(format!(".out.old-{pid}")).exists()
                && !dir.path().join(format!(".out.staging-{pid}")).exists()
        );
        claimed.replace_with(&fill(&["b"])).unwrap();
        assert!(!out.join("a").exists() && out.join("b").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out"]);
    }

    #[test]
    fn a_stop_request_leaves_the_folder_as_it_was_and_names_need_not_be_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(OsStr::from_bytes(b"out-\xff"));
        claim(&out).unwrap().replace_with(&fill(&["a"])).unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"a");
        let e = claim(&out)
            .unwrap()
            .publish(|staging| {
                write_files(staging, &fill(&["b"]))?;
                Err(crate::util::stop::Stopped.into())
            })
            .unwrap_err();
        assert!(crate::util::stop::is_stopped(&e));
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"a");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn output_files_are_locked_and_a_dead_writers_temporary_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.safetensors");
        let pid = dead_pid();
        let stale = dir.path().join(format!(".x.safetensors.tmp-{pid}"));
        let live = dir
            .path()
            .join(format!(".x.safetensors.tmp-{}", std::process::id()));
        std::fs::write(&stale, b"half").unwrap();
        std::fs::write(&live, b"mine").unwrap();
        let lock = OutputLock::for_file(&out).unwrap();
        assert!(!stale.exists() && live.exists());
        let e = format!("{:#}", OutputLock::for_file(&out).err().unwrap());
        assert!(e.contains("being written by another a3ft process"), "{e}");
        drop(lock);
        std::fs::remove_file(&live).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn user_folders_and_late_files_are_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        claim(&out)
            .unwrap()
            .replace_with(&fill(&["a", "sub/b"]))
            .unwrap();
        // An empty folder of the user's inside --out.
        std::fs::create_dir(out.join("keep")).unwrap();
        let e = format!("{:#}", claim(&out).err().unwrap());
        assert!(e.contains("holds the folder keep/"), "{e}");
        std::fs::remove_dir(out.join("keep")).unwrap();
        // An old copy a dead writer left, holding a file added later: kept, not removed.
        let pid = dead_pid();
        let old = dir.path().join(format!(".out.old-{pid}"));
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("note.txt"), b"mine").unwrap();
        claim(&out).unwrap().replace_with(&fill(&["c"])).unwrap();
        assert_eq!(std::fs::read(old.join("note.txt")).unwrap(), b"mine");
        // A refused claim leaves no folder it made behind.
        let deep = dir.path().join("new/deeper/out");
        let held = claim(&deep).unwrap();
        assert!(claim(&deep).is_err());
        drop(held);
        assert!(!dir.path().join("new").exists());
        let via = dir.path().join("zz/../out2");
        claim(&via).unwrap().replace_with(&fill(&["d"])).unwrap();
        assert!(!dir.path().join("zz").exists() && dir.path().join("out2/d").exists());
    }
}
