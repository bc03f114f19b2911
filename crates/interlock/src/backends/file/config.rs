//! `file:///DIR` and `file://` (the default directory).
//!
//! A directory named in the URL is used as given (so several users can share one on purpose); it
//! is created with mode 0700 when missing, but its parent must exist. The default directory,
//! `$XDG_RUNTIME_DIR/interlock` or else `/tmp/interlock-$UID`, is created 0700 and trusted only if
//! it is a real directory (not a symlink) owned by the current user that no one else can write to.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::url::LockUrl;

/// What a `file:` URL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileConfig {
    pub dir: PathBuf,
}

pub(crate) const OPTIONS: &[&str] = &[];

impl FileConfig {
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
        url.options().finish(OPTIONS)?;
        let dir = if url.path().is_empty() {
            default_dir()?
        } else {
            let dir = PathBuf::from(url.path());
            if !dir.is_absolute() {
                return Err(url.invalid("the lock directory must be an absolute path: file:///absolute/dir"));
            }
            use_dir(&dir)?;
            dir
        };
        Ok(FileConfig { dir })
    }
}

/// The default lock directory, created and checked.
pub(crate) fn default_dir() -> Result<PathBuf> {
    let dir = default_dir_path();
    ensure_private_dir(&dir)?;
    Ok(dir)
}

/// `$XDG_RUNTIME_DIR/interlock` when that variable names an absolute directory, else
/// `/tmp/interlock-$UID`.
pub fn default_dir_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(xdg) if xdg.is_absolute() && xdg.is_dir() => xdg.join("interlock"),
        _ => PathBuf::from(format!("/tmp/interlock-{}", rustix::process::geteuid().as_raw())),
    }
}

/// Creates `dir` with mode 0700 if missing, then refuses it unless it is a directory (not a
/// symlink) owned by us that nobody else can write to, as ssh-agent does with its socket directory.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("cannot create lock directory {}", dir.display()), e)),
    }
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

/// Accepts a directory named in a URL: creates it (0700) when missing, then checks that it is a
/// directory we can create files in.
fn use_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::Io {
                context: format!("lock directory {} is not a directory", dir.display()),
                source: io::Error::from(io::ErrorKind::NotADirectory),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(format!("cannot create lock directory {}", dir.display()), e))?;
        }
        Err(e) => return Err(Error::io(format!("cannot use lock directory {}", dir.display()), e)),
    }
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK).map_err(|e| Error::Io {
        context: format!("lock directory {} is not writable", dir.display()),
        source: e.into(),
    })
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
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        assert!(cfg(&format!("file://localhost{}", d.display())).is_ok());
        assert!(cfg("file://somehost/x").unwrap_err().to_string().contains("not a host"));
        assert!(cfg("file:relative/dir").unwrap_err().to_string().contains("absolute"));
        assert!(cfg(&format!("file://{}?lease=1s", d.display())).unwrap_err().to_string().contains("unknown option"));
        assert!(cfg("file://u:pw@/x").is_err());
    }

    #[test]
    fn refuses_a_file_and_a_missing_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("plain");
        std::fs::write(&f, b"").unwrap();
        let e = cfg(&format!("file://{}", f.display())).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        let e = cfg(&format!("file://{}/a/b/c", tmp.path().display())).unwrap_err().to_string();
        assert!(e.contains("cannot create lock directory"), "{e}");
    }

    #[test]
    fn private_dir_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("mine");
        ensure_private_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private_dir(&d).unwrap_err().to_string();
        assert!(e.contains("others can write"), "{e}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = ensure_private_dir(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        if rustix::process::geteuid().is_root() {
            let other = tmp.path().join("theirs");
            std::fs::create_dir(&other).unwrap();
            std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
            let e = ensure_private_dir(&other).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 65534"), "{e}");
        }
    }
}
