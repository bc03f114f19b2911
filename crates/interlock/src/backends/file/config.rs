//! `file:///DIR` and `file://` (the default directory).
//!
//! `connect` only validates: it creates and writes nothing, so that `status` can run on a
//! directory it may not write to, or that does not exist yet (its locks are all free). The
//! directory is created (mode 0700, never its parents) by the first acquisition, see
//! [`prepare_dir`]. Write access is never demanded: like `flock(1)`, interlock can lock an existing
//! file in a directory it cannot write to; an acquisition that must create a file there fails with
//! the system's error naming the path.
//!
//! A directory named in the URL is used as given (so several users can share one on purpose). The
//! default directory, `/tmp/interlock-$UID` in every session of a user, is trusted only if it is a
//! real directory (not a symlink) owned by the current user that no one else can write to.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::error::{Error, Result};
use crate::raw::LeaseConfig;
use crate::url::LockUrl;

/// What a `file:` URL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileConfig {
    pub dir: PathBuf,
}

pub(crate) const OPTIONS: &[&str] = &[];

impl FileConfig {
    /// Parses and validates the URL; creates nothing (see the module docs).
    pub(crate) fn from_url(url: &LockUrl) -> Result<Self> {
        if url.user().is_some() || url.password().is_some() {
            return Err(url.invalid("file URLs take no user or password"));
        }
        match url.hosts() {
            [] => {}
            [h] if h.eq_ignore_ascii_case("localhost") => {}
            [h, ..] => {
                return Err(url.invalid(format!(
                    "file URLs name a local directory, not a host (`{h}`): write file:///absolute/dir"
                )));
            }
        }
        let mut opts = url.options();
        // No leases: a `lease` or `renew` option is refused, saying why.
        LeaseConfig::from_url(url, &mut opts, super::BACKEND.capabilities.lease)?;
        opts.finish(OPTIONS)?;
        let dir = if url.path().is_empty() {
            default_dir_path()
        } else {
            let dir = PathBuf::from(url.path());
            if !dir.is_absolute() {
                return Err(url.invalid("the lock directory must be an absolute path: file:///absolute/dir"));
            }
            dir
        };
        check_dir(&dir)?;
        Ok(FileConfig { dir })
    }
}

/// The default lock directory, `/tmp/interlock-$UID` (with the effective uid), whatever the
/// environment: a login shell, a cron job and a service of one user all compute the same path, so
/// they exclude each other (as tmux does with `/tmp/tmux-$UID`). `$TMPDIR` and `$XDG_RUNTIME_DIR`
/// are ignored on purpose: they differ between sessions of one user. Neither creates nor checks it.
pub fn default_dir_path() -> PathBuf {
    PathBuf::from(format!("/tmp/interlock-{}", rustix::process::geteuid().as_raw()))
}

/// Validates a lock directory at connect, creating and writing nothing: if it exists it must be a
/// directory (and pass [`trust_private_dir`] if it is the default one); if it does not, its parent
/// must be an existing directory, for [`prepare_dir`] to create it in.
fn check_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) if is_default(dir) => trust_private_dir(dir),
        Ok(_) => match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(Error::Io {
                context: format!("lock directory {} is not a directory", dir.display()),
                source: io::Error::from(io::ErrorKind::NotADirectory),
            }),
            Err(e) => Err(Error::io(format!("cannot use lock directory {}", dir.display()), e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // `/` has no parent, but then it exists.
            let parent = dir.parent().unwrap_or(dir);
            match std::fs::metadata(parent) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(Error::Io {
                    context: format!(
                        "lock directory {} cannot be created: {} is not a directory",
                        dir.display(),
                        parent.display()
                    ),
                    source: io::Error::from(io::ErrorKind::NotADirectory),
                }),
                Err(e) => Err(Error::io(
                    format!(
                        "lock directory {} does not exist, and neither does its parent {} (interlock does not create \
                         parents)",
                        dir.display(),
                        parent.display()
                    ),
                    e,
                )),
            }
        }
        Err(e) => Err(Error::io(format!("cannot use lock directory {}", dir.display()), e)),
    }
}

/// True for the default directory, which is checked as such even when a URL names it.
fn is_default(dir: &Path) -> bool {
    dir == default_dir_path()
}

/// Directories known to exist (and, for the default one, to be trusted) in this process.
static READY: RwLock<BTreeSet<PathBuf>> = RwLock::new(BTreeSet::new());

/// Makes sure the lock directory `dir` exists, as the first acquisition does before it creates
/// files in it: creates it with mode 0700 when missing (never its parents). When it was already
/// there and is the default directory ([`default_dir_path`]), checks that it is still trusted
/// (a directory, not a symlink, ours, writable by no one else): someone else may have made it
/// since `connect`. Done once per directory per process; later calls cost a shared lock and a
/// lookup.
///
/// # Errors
///
/// [`Error::Io`] naming the directory when it cannot be created, or when the default directory
/// is not trusted.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    if READY.read().unwrap_or_else(|p| p.into_inner()).contains(dir) {
        return Ok(());
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if is_default(dir) {
                trust_private_dir(dir)?;
            }
        }
        Err(e) => return Err(Error::io(format!("cannot create lock directory {}", dir.display()), e)),
    }
    READY.write().unwrap_or_else(|p| p.into_inner()).insert(dir.to_owned());
    Ok(())
}

/// Refuses `dir` unless it is a directory (not a symlink) owned by us that nobody else can write
/// to, as ssh-agent does with its socket directory. Creates nothing.
pub(crate) fn trust_private_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("cannot inspect lock directory {}", dir.display()), e))?;
    let me = rustix::process::geteuid().as_raw();
    let refuse = |why: String| Error::Io {
        context: format!(
            "refusing default lock directory {}: {why}; remove it or name a directory in the URL (file:///dir)",
            dir.display()
        ),
        source: io::Error::from(io::ErrorKind::PermissionDenied),
    };
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    if meta.uid() != me {
        return Err(refuse(format!("it belongs to uid {}, not to you (uid {me})", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!("others can write to it (mode {:o})", meta.mode() & 0o7777)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(s: &str) -> Result<FileConfig> {
        FileConfig::from_url(&LockUrl::parse(s)?)
    }

    #[test]
    fn url_forms() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("locks");
        let c = cfg(&format!("file://{}", d.display())).unwrap();
        assert_eq!(c.dir, d);
        assert!(cfg(&format!("file://localhost{}", d.display())).is_ok());
        assert!(cfg("file://somehost/x").unwrap_err().to_string().contains("not a host"));
        assert!(cfg("file:relative/dir").unwrap_err().to_string().contains("absolute"));
        let e = cfg(&format!("file://{}?lease=1s", d.display())).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("option `lease`: this backend has no leases"), "{e}");
        assert!(cfg(&format!("file://{}?ttl=1s", d.display())).unwrap_err().to_string().contains("unknown option"));
        assert!(cfg("file://u:pw@/x").is_err());
        assert_eq!(cfg("file://").unwrap().dir, default_dir_path());
    }

    #[test]
    fn connect_creates_nothing_and_the_first_acquisition_creates_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("locks");
        cfg(&format!("file://{}", d.display())).unwrap();
        assert!(!d.exists(), "connect must not create the directory");
        prepare_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        prepare_dir(&d).unwrap();
        // An existing directory is used as given, writable or not.
        let ro = tmp.path().join("read-only");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        cfg(&format!("file://{}", ro.display())).unwrap();
        prepare_dir(&ro).unwrap();
    }

    #[test]
    fn refuses_a_file_and_a_missing_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("plain");
        std::fs::write(&f, b"").unwrap();
        let e = cfg(&format!("file://{}", f.display())).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        let e = cfg(&format!("file://{}/a/b/c", tmp.path().display())).unwrap_err().to_string();
        assert!(e.contains("neither does its parent"), "{e}");
        let e = cfg(&format!("file://{}/sub", f.display())).unwrap_err().to_string();
        assert!(e.to_lowercase().contains("not a directory"), "{e}");
        assert!(!tmp.path().join("a").exists());
        let e = prepare_dir(&tmp.path().join("a/b/c")).unwrap_err().to_string();
        assert!(e.contains("cannot create lock directory"), "{e}");
    }

    #[test]
    fn private_dir_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("mine");
        std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        trust_private_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = trust_private_dir(&d).unwrap_err().to_string();
        assert!(e.contains("others can write"), "{e}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = trust_private_dir(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let e = trust_private_dir(&tmp.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("cannot inspect"), "{e}");
        if rustix::process::geteuid().is_root() {
            let other = tmp.path().join("theirs");
            std::fs::create_dir(&other).unwrap();
            std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
            let e = trust_private_dir(&other).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 65534"), "{e}");
        }
    }
}
