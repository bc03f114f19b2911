//! The backends, chosen by URL scheme, and the registry that knows them.
//!
//! Each backend is a folder with the same files (`mod.rs` its docs, public items and its
//! [`Backend`] entry, `config.rs` URL and options, `raw.rs` the raw trait impls) and ONE line in
//! [`BACKENDS`]. The registry drives [`crate::connect`], the error for an unknown or not-built
//! scheme, the URL list of `interlock --help`, and the tests that every backend has a docs page
//! and a conformance harness. A backend that is planned but not written yet has an entry with
//! [`Availability::Planned`], so its URLs are recognised and refused with a clear reason.

pub mod file;
pub mod memory;
pub mod redis;
pub mod redlock;

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::raw::{BoxFuture, Capabilities, LeaseConfig, LeaseModel, RawProvider, Tasks};
use crate::url::LockUrl;

/// Whether a backend can be used by this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Availability {
    /// Built into this binary.
    Built,
    /// Written, but its cargo feature is off in this build.
    FeatureOff,
    /// Planned, not written yet.
    Planned,
}

/// What a backend's constructor returns: the raw provider and the lease settings of acquisitions
/// that set none (from [`LeaseConfig::from_url`]; `None` when its locks do not expire).
pub(crate) type Connected = (Arc<dyn RawProvider>, Option<LeaseConfig>);

/// A backend's async constructor: opens its connections, authenticates, creates what it needs,
/// and reports [`Error::Unavailable`] / [`Error::Auth`] right there. Its background work goes
/// through `tasks`, the provider's (see [`Tasks`]), from the first connection on.
pub(crate) type Connect = for<'a> fn(&'a LockUrl, &'a Tasks) -> BoxFuture<'a, Result<Connected>>;

/// One backend, as the registry knows it.
#[non_exhaustive]
pub struct Backend {
    /// Short name, used in errors, logs and `Error::Unsupported` (`file`, `redis`, ...).
    pub name: &'static str,
    /// Human name (`Redis`, `MySQL / MariaDB`).
    pub title: &'static str,
    /// The URL schemes it answers to; the first is the one the docs use.
    pub schemes: &'static [&'static str],
    /// The URL form, for help texts (`redis://[:pass@]host:6379/0`).
    pub url_form: &'static str,
    /// What holds a lock, in a few words.
    pub holds: &'static str,
    /// The cargo feature that builds it (`None`: always built).
    pub feature: Option<&'static str>,
    /// Its page, relative to the repository root (`docs/backends/file.md`).
    pub docs: &'static str,
    /// What it can do at best, and how its locks expire ([`Capabilities::lease`]: none, per lock,
    /// per session; the URL's `lease` and `renew` options are read from that model). A given URL
    /// may do less (`memory://` without a lease never loses a lock, and runs in each model).
    pub capabilities: Capabilities,
    /// Whether this build has it.
    pub availability: Availability,
    pub(crate) connect: Option<Connect>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("schemes", &self.schemes)
            .field("feature", &self.feature)
            .field("availability", &self.availability)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// An entry for a backend that is planned but not written yet.
    const fn planned(
        name: &'static str,
        feature: &'static str,
        title: &'static str,
        schemes: &'static [&'static str],
        url_form: &'static str,
        holds: &'static str,
        lease: LeaseModel,
    ) -> Backend {
        Backend {
            name,
            title,
            schemes,
            url_form,
            holds,
            feature: Some(feature),
            docs: "",
            capabilities: Capabilities::new(true, true, true).with_lease(lease),
            availability: Availability::Planned,
            connect: None,
        }
    }
}

/// Every backend interlock knows, built or not: one line each.
pub static BACKENDS: &[Backend] = &[
    file::BACKEND,
    memory::BACKEND,
    redis::BACKEND,
    redlock::BACKEND,
    Backend::planned(
        "zookeeper",
        "zookeeper",
        "ZooKeeper",
        &["zk", "zookeeper"],
        "zk://h1:2181,h2:2181/locks",
        "ephemeral sequential znode",
        LeaseModel::PerSession,
    ),
    Backend::planned(
        "etcd",
        "etcd",
        "etcd",
        &["etcd"],
        "etcd://h1:2379,h2:2379",
        "key with a lease, ordered by create revision",
        LeaseModel::PerSession,
    ),
    Backend::planned(
        "mysql",
        "mysql",
        "MySQL / MariaDB",
        &["mysql", "mariadb"],
        "mysql://user:pass@host:3306/db",
        "GET_LOCK(name) on a dedicated session",
        LeaseModel::None,
    ),
    Backend::planned(
        "postgres",
        "postgres",
        "PostgreSQL",
        &["postgres", "postgresql"],
        "postgres://user@host:5432/db",
        "pg_advisory_lock(key) on a dedicated session",
        LeaseModel::None,
    ),
];

/// Schemes that no build of interlock ever serves, for tests that need a URL that is "not built":
/// a planned backend's scheme (`zk://`, `mysql://`) cannot serve there, since it stops being
/// refused the day that backend is built (and cargo unifies features across a workspace), and a
/// refused connection is `Unavailable` too (exit 69), so a test of the refusal must check its
/// message, not only its kind.
///
/// Their registry entries are hidden: not in [`backends()`], `interlock --help` or the list of
/// known schemes of an unknown scheme's error; [`for_scheme`] finds them, and
/// [`crate::connect`] refuses them exactly as it refuses a planned backend, or a written one
/// whose cargo feature is off.
#[doc(hidden)]
pub mod test_schemes {
    /// A planned backend that is never written (`Availability::Planned`): refused as `zk://` is
    /// while ZooKeeper is planned.
    pub const PLANNED: &str = "interlock-test-planned";
    /// A written backend whose cargo feature is never on (`Availability::FeatureOff`): refused as
    /// `redis://` is by a build without the `redis` feature.
    pub const FEATURE_OFF: &str = "interlock-test-feature-off";
}

/// The hidden entries of [`test_schemes`].
static TEST_BACKENDS: &[Backend] = &[
    Backend::planned(
        "test-planned",
        "test-planned",
        "test-only planned",
        &[test_schemes::PLANNED],
        "interlock-test-planned://host/path",
        "nothing (a test fixture)",
        LeaseModel::None,
    ),
    Backend {
        availability: Availability::FeatureOff,
        ..Backend::planned(
            "test-feature-off",
            "test-feature-off",
            "test-only feature-off",
            &[test_schemes::FEATURE_OFF],
            "interlock-test-feature-off://host/path",
            "nothing (a test fixture)",
            LeaseModel::None,
        )
    },
];

/// Every backend interlock knows (see [`BACKENDS`]).
///
/// # Examples
///
/// ```
/// use interlock::backends::{backends, Availability};
/// let file = backends().iter().find(|b| b.name == "file").unwrap();
/// assert_eq!(file.availability, Availability::Built);
/// assert!(backends().iter().any(|b| b.schemes.contains(&"redis")));
/// ```
pub fn backends() -> &'static [Backend] {
    BACKENDS
}

/// The backend that answers to `scheme` (case-insensitive), the hidden [`test_schemes`] too.
pub fn for_scheme(scheme: &str) -> Option<&'static Backend> {
    BACKENDS.iter().chain(TEST_BACKENDS).find(|b| b.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)))
}

/// Builds the raw backend for `url`, and its default lease settings; its background work goes
/// through `tasks`.
pub(crate) async fn connect_raw(url: &LockUrl, tasks: &Tasks) -> Result<Connected> {
    let scheme = url.scheme();
    let Some(backend) = for_scheme(scheme) else {
        let known: Vec<&str> = BACKENDS.iter().flat_map(|b| b.schemes.iter().copied()).collect();
        return Err(url.invalid(format!("unknown scheme `{scheme}` (known: {})", known.join(", "))));
    };
    match (backend.connect, backend.availability) {
        (Some(connect), _) => connect(url, tasks).await,
        (None, availability) => {
            let feature = backend.feature.unwrap_or(backend.name);
            let why = match availability {
                Availability::Planned => format!("which needs cargo feature `{feature}`, not implemented yet"),
                _ => format!("built without its cargo feature `{feature}`"),
            };
            Err(Error::Unsupported {
                backend: backend.name,
                operation: format!(
                    "`{scheme}://` URLs are not supported by this build: the {} backend, {why}",
                    backend.title
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn schemes_and_names_are_unique_and_lowercase() {
        let mut schemes = HashSet::new();
        let mut names = HashSet::new();
        for b in BACKENDS.iter().chain(TEST_BACKENDS) {
            assert!(names.insert(b.name), "{} twice", b.name);
            assert!(!b.schemes.is_empty(), "{} has no scheme", b.name);
            for s in b.schemes {
                assert!(schemes.insert(*s), "scheme {s} twice");
                assert_eq!(*s, s.to_ascii_lowercase());
            }
            assert_eq!(b.connect.is_some(), b.availability == Availability::Built, "{}", b.name);
        }
    }

    #[tokio::test]
    async fn unknown_and_planned_schemes_are_refused_by_the_table() {
        let e = connect_raw(&LockUrl::parse("gopher://x").unwrap(), &Tasks::new()).await.err().unwrap().to_string();
        assert!(e.contains("unknown scheme `gopher`") && e.contains("zookeeper") && e.contains("postgresql"), "{e}");
        assert!(!e.contains("interlock-test"), "the test schemes are not listed: {e}");
        let url = format!("{}://u:hunter2@h/db", test_schemes::PLANNED);
        let e = connect_raw(&LockUrl::parse(&url).unwrap(), &Tasks::new()).await.err().unwrap();
        assert!(matches!(e, Error::Unsupported { backend: "test-planned", .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "test-planned: `interlock-test-planned://` URLs are not supported by this build: the test-only planned \
             backend, which needs cargo feature `test-planned`, not implemented yet"
        );
        let url = format!("{}://h", test_schemes::FEATURE_OFF.to_ascii_uppercase());
        let e = connect_raw(&LockUrl::parse(&url).unwrap(), &Tasks::new()).await.err().unwrap();
        assert!(matches!(e, Error::Unsupported { backend: "test-feature-off", .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with("the test-only feature-off backend, built without its cargo feature `test-feature-off`"),
            "{e}"
        );
    }

    #[test]
    fn the_test_schemes_are_hidden_and_never_built() {
        for scheme in [test_schemes::PLANNED, test_schemes::FEATURE_OFF] {
            let b = for_scheme(scheme).unwrap();
            assert_ne!(b.availability, Availability::Built);
            assert!(b.connect.is_none());
            assert!(!backends().iter().any(|v| std::ptr::eq(v, b)), "{scheme} is listed");
        }
        assert_eq!(for_scheme(test_schemes::PLANNED).unwrap().availability, Availability::Planned);
        assert_eq!(for_scheme(test_schemes::FEATURE_OFF).unwrap().availability, Availability::FeatureOff);
    }
}
