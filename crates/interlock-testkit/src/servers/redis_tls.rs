//! A private `redis-server` that speaks TLS (`rediss://`), with certificates made for the test by
//! the `openssl` command (Debian package `openssl`): a CA, a server certificate for `127.0.0.1`
//! and `localhost` signed by it, a client certificate signed by it, and a second CA that signed
//! nothing (a wrong CA).
//!
//! The server listens on two leased ports: TLS on the first (what tests use) and plain TCP on the
//! second, only so that the readiness probe (the testkit's plain RESP client) can `PING` it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::resp::{Resp, RespConn};
use super::server::{Server, Spec, StartError};

/// PEM files for one TLS test, in a directory of their own (removed on drop).
#[derive(Debug)]
pub struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    /// Makes the files with `openssl`; `None` after a loud skip when `openssl` is not installed.
    ///
    /// # Panics
    ///
    /// When `openssl` fails.
    pub fn generate_or_skip() -> Option<TlsFiles> {
        if super::which("openssl").is_none() {
            crate::skip("openssl (to make test certificates) is not installed");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("interlock-tls-").tempdir().expect("a temporary directory");
        let files = TlsFiles { dir };
        let ext = files.path("server.ext");
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("write server.ext");
        std::fs::write(files.path("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write client.ext");
        for ca in ["ca", "wrong-ca"] {
            files.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=interlock {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ]);
        }
        for (who, cn) in [("server", "127.0.0.1"), ("client", "interlock test client")] {
            files.openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
            ]);
            files.openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
                "-out",
                &format!("{who}.crt"),
            ]);
        }
        Some(files)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A file of the set: `ca.crt`, `wrong-ca.crt`, `server.crt` / `.key`, `client.crt` / `.key`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// The [`Spec`] of a TLS `redis-server` with the certificates in `files`; with `client_auth`,
/// clients must present a certificate signed by the CA (`tls-auth-clients yes`).
pub fn spec(files: &TlsFiles, client_auth: bool) -> Spec {
    let (cert, key, ca) = (files.path("server.crt"), files.path("server.key"), files.path("ca.crt"));
    Spec::new("redis-tls", "redis-server")
        .package("redis-server")
        .ports(2)
        .args(move |ctx| {
            let (tls, plain) = (ctx.port().to_string(), ctx.ports[1].to_string());
            let mut a: Vec<OsString> = Vec::new();
            for s in ["--tls-port", &tls, "--port", &plain, "--bind", "127.0.0.1", "--daemonize", "no"] {
                a.push(s.into());
            }
            for (opt, path) in [("--tls-cert-file", &cert), ("--tls-key-file", &key), ("--tls-ca-cert-file", &ca)] {
                a.push(opt.into());
                a.push(path.into());
            }
            let auth = if client_auth { "yes" } else { "no" };
            for s in
                ["--tls-auth-clients", auth, "--save", "", "--appendonly", "no", "--logfile", "", "--databases", "1024"]
            {
                a.push(s.into());
            }
            a.push("--dir".into());
            a.push(ctx.data.into());
            a
        })
        .ready(|ctx| {
            let plain = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, ctx.ports[1]));
            let mut c = RespConn::connect(plain, Duration::from_secs(1)).map_err(|e| e.to_string())?;
            match c.call(&["PING"]).map_err(|e| e.to_string())? {
                Resp::Simple(s) if s == "PONG" => {}
                other => return Err(format!("PING answered {other:?}")),
            }
            let info = c.call(&["INFO", "server"]).map_err(|e| e.to_string())?.text().unwrap_or_default();
            let pid = info.lines().find_map(|l| l.strip_prefix("process_id:")).map(str::trim);
            match (pid, ctx.pid) {
                (Some(p), Some(ours)) if p == ours.to_string() => Ok(()),
                (p, _) => Err(format!("the Redis on port {} is process {p:?}, not ours", ctx.ports[1])),
            }
        })
        .ready_timeout(Duration::from_secs(30))
}

/// A running TLS `redis-server` (1024 databases: [`RedisTls::next_db`] hands them out).
#[derive(Debug)]
pub struct RedisTls {
    server: Server,
    next_db: std::sync::atomic::AtomicU32,
}

impl RedisTls {
    /// Starts one with the certificates in `files`.
    ///
    /// # Errors
    ///
    /// As [`Server::start`].
    pub fn start(files: &TlsFiles, client_auth: bool) -> Result<RedisTls, StartError> {
        Server::start(spec(files, client_auth)).map(RedisTls::wrap)
    }

    /// [`RedisTls::start`], skipping when `redis-server` is not installed.
    ///
    /// # Panics
    ///
    /// When it fails to start, or is missing and required.
    pub fn start_or_skip(files: &TlsFiles, client_auth: bool) -> Option<RedisTls> {
        Server::start_or_skip(spec(files, client_auth)).map(RedisTls::wrap)
    }

    fn wrap(server: Server) -> RedisTls {
        RedisTls { server, next_db: std::sync::atomic::AtomicU32::new(1) }
    }

    /// A database no other caller of this process got from this server.
    ///
    /// # Panics
    ///
    /// After 1023 of them.
    pub fn next_db(&self) -> u32 {
        let db = self.next_db.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(db < 1024, "more than 1023 databases of one TLS server");
        db
    }

    /// Runs one command in database `db`, over the plain port; an error reply is an `Err`.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn cmd(&self, db: u32, args: &[&str]) -> std::io::Result<Resp> {
        let plain = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, self.server.ports()[1]));
        let mut c = RespConn::connect(plain, Duration::from_secs(5))?;
        if db != 0 {
            c.call(&["SELECT", &db.to_string()])?.ok()?;
        }
        c.call(args)?.ok()
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// `rediss://127.0.0.1:TLS_PORT/DB` (add `?ca=...`).
    pub fn url(&self, db: u32) -> String {
        format!("rediss://127.0.0.1:{}/{db}", self.server.port())
    }

    /// `?ca=PATH` for a file of `files`.
    pub fn ca_option(path: &Path) -> String {
        format!("ca={}", path.display())
    }
}

/// The TLS server (and its certificates) shared by every test of this test binary; `None` after a
/// loud skip when `openssl` or `redis-server` is not installed.
///
/// # Panics
///
/// When it fails to start.
pub fn shared() -> Option<&'static (TlsFiles, RedisTls)> {
    static SHARED: std::sync::OnceLock<Option<(TlsFiles, RedisTls)>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let files = TlsFiles::generate_or_skip()?;
            let server = RedisTls::start_or_skip(&files, false)?;
            Some((files, server))
        })
        .as_ref()
}
