//! Whether a server run as another user can reach its home. The testkit makes the servers'
//! directory mode 0755 and hands each home and data directory to the server's user, but the
//! directories above (`$TMPDIR` and its parents) are not ours: a private `TMPDIR` (mode 0700,
//! as `tempfile::tempdir()` or `mktemp -d` make them) keeps `postgres` or `nobody` out, and
//! `initdb` or the server would fail with a bare "permission denied" deep in its log.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::server::User;

/// The first directory on the way to `path` (its ancestors, from `/`) that `user` cannot
/// search, with its mode and owner. The server gets `user`'s uid and gid and no supplementary
/// groups (`Command::uid` drops them), so the owner, group and other bits decide, in that order.
pub(crate) fn blocked_on_the_way(user: &User, path: &Path) -> Option<(PathBuf, u32, u32)> {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        let Ok(m) = std::fs::metadata(dir) else { continue };
        let mode = m.mode();
        let bit = if m.uid() == user.uid {
            0o100
        } else if m.gid() == user.gid {
            0o010
        } else {
            0o001
        };
        if user.uid != 0 && mode & bit == 0 {
            return Some((dir.to_owned(), mode & 0o7777, m.uid()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_directory_on_the_way_blocks_another_user() {
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let me = User {
            name: "me".into(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        let other = User { name: "other".into(), uid: me.uid.wrapping_add(12345), gid: me.gid.wrapping_add(12345) };
        let a = tmp.path().join("a");
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o700)).unwrap();
        if me.uid != 0 {
            assert_eq!(blocked_on_the_way(&me, &inner.join("home")), None, "the owner passes 0700");
        }
        let (dir, mode, owner) = blocked_on_the_way(&other, &inner.join("home")).unwrap();
        assert!(dir == a || tmp.path().starts_with(&dir), "{dir:?}");
        if dir == a {
            assert_eq!((mode, owner), (0o700, me.uid));
        }
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let blocked = blocked_on_the_way(&other, &inner.join("home"));
        assert!(blocked.as_ref().is_none_or(|(d, _, _)| !d.starts_with(tmp.path())), "{blocked:?}");
    }
}
