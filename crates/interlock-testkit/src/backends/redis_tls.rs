//! The `rediss://` harness: a database and key prefix per harness of a TLS `redis-server` shared
//! by the test binary (certificates made by `openssl`, trusted through `?ca=`). Hooks as for
//! `redis://` on its shared server: `expire` deletes the keys (over the server's plain port);
//! restarts, killed connections and paused holders are tested on `redis://`, since TLS changes
//! nothing there.

use std::path::{Path, PathBuf};

use super::redis::LEASE;
use crate::harness::Harness;
use crate::servers::redis_tls::{self, RedisTls, TlsFiles};

/// `rediss://` on the testkit's private TLS `redis-server`.
#[derive(Debug)]
pub struct RedisTlsHarness {
    shared: &'static (TlsFiles, RedisTls),
    db: u32,
    prefix: String,
    bin: PathBuf,
}

impl RedisTlsHarness {
    /// A database and key prefix of the shared TLS server; `None` after a loud skip when
    /// `openssl` or `redis-server` is not installed. `bin` is the `interlock` binary.
    pub fn new(bin: impl Into<PathBuf>) -> Option<Self> {
        let shared = redis_tls::shared()?;
        let db = shared.1.next_db();
        Some(RedisTlsHarness { shared, db, prefix: format!("{}:", crate::unique("t")), bin: bin.into() })
    }

    fn key(&self, name: &str) -> String {
        interlock::redis::lock_key(&self.prefix, name)
    }
}

impl Harness for RedisTlsHarness {
    fn url(&self) -> String {
        let (files, server) = self.shared;
        format!(
            "{}?{}&prefix={}&lease={}ms",
            server.url(self.db),
            RedisTls::ca_option(&files.path("ca.crt")),
            self.prefix,
            LEASE.as_millis()
        )
    }

    fn bin(&self) -> Option<&Path> {
        Some(&self.bin)
    }

    async fn expire(&self, name: &str) -> bool {
        let key = self.key(name);
        let base = interlock::redis::side_key_base(&self.prefix, name);
        let (readers, sem) = (format!("{base}:readers"), format!("{base}:sem"));
        self.shared.1.cmd(self.db, &["DEL", &key, &readers, &sem]).expect("DEL");
        true
    }

    /// Not on the shared TLS server (other cases use it): restarts are tested on `redis://`,
    /// whose servers the harness may own; TLS changes nothing there.
    async fn restart_server(&self) -> bool {
        false
    }

    /// A Redis key outlives the client connection that set it, over TLS too.
    async fn kill_connections(&self, _name: &str) -> bool {
        false
    }
}
