//! The backends, chosen by URL scheme. Each is a folder with the same files (`mod.rs` docs and
//! public items, `config.rs` URL and options, `raw.rs` the raw trait impls); adding one is a new
//! folder and one arm in `connect_raw`.

pub mod file;
pub mod memory;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::provider::DEFAULT_LEASE;
use crate::raw::{LeaseConfig, RawProvider};
use crate::url::LockUrl;

/// Backends that are planned but not built into this binary: scheme → (backend, description,
/// cargo feature).
const NOT_BUILT: &[(&str, &str, &str, &str)] = &[
    ("redis", "redis", "Redis", "redis"),
    ("rediss", "redis", "Redis over TLS", "redis"),
    ("redlock", "redlock", "Redlock", "redis"),
    ("zk", "zookeeper", "ZooKeeper", "zookeeper"),
    ("zookeeper", "zookeeper", "ZooKeeper", "zookeeper"),
    ("etcd", "etcd", "etcd", "etcd"),
    ("mysql", "mysql", "MySQL/MariaDB", "mysql"),
    ("mariadb", "mysql", "MySQL/MariaDB", "mysql"),
    ("postgres", "postgres", "PostgreSQL", "postgres"),
    ("postgresql", "postgres", "PostgreSQL", "postgres"),
];

/// Builds the raw backend for `url`, and its default lease settings.
pub(crate) fn connect_raw(url: &LockUrl) -> Result<(Arc<dyn RawProvider>, LeaseConfig)> {
    let no_lease = LeaseConfig { lease: DEFAULT_LEASE, renew_every: DEFAULT_LEASE / 3 };
    match url.scheme() {
        "file" => Ok((Arc::new(file::FileProvider::new(file::FileConfig::from_url(url)?)), no_lease)),
        "memory" => {
            let config = memory::MemoryConfig::from_url(url)?;
            let lease = config.lease;
            Ok((Arc::new(memory::MemoryProvider::new(config)), lease))
        }
        other => match NOT_BUILT.iter().find(|(scheme, ..)| *scheme == other) {
            Some((_, backend, what, feature)) => Err(Error::Unsupported {
                backend,
                operation: format!(
                    "`{other}://` URLs are not supported by this build: the {what} backend needs cargo feature `{feature}`, which is not implemented yet"
                ),
            }),
            None => Err(url.invalid(format!(
                "unknown scheme `{other}` (known: file, memory, redis, rediss, redlock, zk, etcd, mysql, postgres)"
            ))),
        },
    }
}
