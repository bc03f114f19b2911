//! Private `redis-server` instances (Debian package `redis-server`): one, a group of masters for
//! Redlock, or one shared by every test of a test binary, each test in its own namespace.
//!
//! Started as in `shared/DEPENDENCIES.md`: `--bind 127.0.0.1`, no RDB snapshots, `DEBUG`
//! allowed from loopback (`DEBUG SLEEP` stalls it), the log on stdout (into the server's log
//! file). A password, when asked for, goes in a config file in the server's home, never on its
//! command line.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::resp::{Resp, RespConn};
use super::server::{Group, LogOnPanic, Server, Spec, StartError, kill_first, restart_stopped};

/// How long the testkit's own Redis connections wait for a reply.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How to run `redis-server`.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Keep the data across kills and restarts (`appendonly yes`, `appendfsync always`).
    pub persistence: bool,
    /// Require this password (`requirepass`, written to a config file, never in argv).
    pub password: Option<String>,
    /// Logical databases: each [`RedisNs`] gets one of its own (default 1024).
    pub databases: u32,
    /// Run as this user (see [`Spec::run_as`]).
    pub user: Option<String>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions { persistence: false, password: None, databases: 1024, user: None }
    }
}

/// The [`Spec`] of a `redis-server` with `opts`. Its readiness probe sends `PING` (after `AUTH`
/// with a password) until the answer is `+PONG`, then checks that `INFO server` reports the
/// pid we started, not another Redis on the port.
pub fn spec(opts: &RedisOptions) -> Spec {
    let password = opts.password.clone();
    let probe_password = opts.password.clone();
    let persistence = opts.persistence;
    let databases = opts.databases.max(1);
    let mut spec = Spec::new("redis", "redis-server")
        .package("redis-server")
        .init(move |ctx| {
            let conf = ctx.home.join("redis.conf");
            let mut text = String::from("# written by interlock-testkit\n");
            if let Some(pw) = &password {
                text.push_str(&format!("requirepass \"{}\"\n", pw.replace('\\', "\\\\").replace('"', "\\\"")));
            }
            std::fs::write(&conf, text).map_err(|e| format!("write {}: {e}", conf.display()))?;
            std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| e.to_string())?;
            ctx.give(&conf).map_err(|e| e.to_string())
        })
        .args(move |ctx| {
            let mut a: Vec<OsString> = vec![ctx.home.join("redis.conf").into()];
            let port = ctx.port().to_string();
            let dbs = databases.to_string();
            for s in ["--port", &port, "--bind", "127.0.0.1", "--protected-mode", "yes", "--daemonize", "no"] {
                a.push(s.into());
            }
            a.push("--dir".into());
            a.push(ctx.data.into());
            for s in ["--save", "", "--logfile", "", "--databases", &dbs, "--enable-debug-command", "local"] {
                a.push(s.into());
            }
            let aof: &[&str] =
                if persistence { &["--appendonly", "yes", "--appendfsync", "always"] } else { &["--appendonly", "no"] };
            a.extend(aof.iter().map(OsString::from));
            a
        })
        .ready(move |ctx| {
            let mut c = RespConn::connect(ctx.addr(), Duration::from_secs(1)).map_err(|e| e.to_string())?;
            if let Some(pw) = &probe_password {
                c.call(&["AUTH", pw]).and_then(Resp::ok).map_err(|e| format!("AUTH: {e}"))?;
            }
            match c.call(&["PING"]).map_err(|e| e.to_string())? {
                Resp::Simple(s) if s == "PONG" => {}
                other => return Err(format!("PING answered {other:?}")), // -LOADING while it reads its AOF
            }
            let info = c.call(&["INFO", "server"]).map_err(|e| e.to_string())?.text().unwrap_or_default();
            let pid = info.lines().find_map(|l| l.strip_prefix("process_id:")).map(str::trim);
            match (pid, ctx.pid) {
                (Some(p), Some(ours)) if p == ours.to_string() => Ok(()),
                (p, _) => Err(format!("the Redis on port {} is process {p:?}, not ours", ctx.port())),
            }
        })
        .ready_timeout(Duration::from_secs(30));
    if let Some(u) = &opts.user {
        spec = spec.run_as(u);
    }
    spec
}

/// One running `redis-server` with its helpers; derefs to its [`Server`] for the generic fault
/// hooks (`kill`, `restart`, `pause`, ...).
#[derive(Debug)]
pub struct Redis {
    server: Server,
    password: Option<String>,
    databases: u32,
    next_db: AtomicU32,
}

impl Deref for Redis {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

/// One client connection as `CLIENT LIST` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// `id=`: what `CLIENT KILL ID` takes.
    pub id: u64,
    /// `addr=`: the client's address and port.
    pub addr: String,
    /// `name=`: set by `CLIENT SETNAME` (empty when not).
    pub name: String,
    /// `db=`: the database it has selected.
    pub db: u32,
    /// `cmd=`: its last command.
    pub cmd: String,
}

impl ClientInfo {
    fn parse(line: &str) -> Option<ClientInfo> {
        let field = |k: &str| line.split(' ').find_map(|f| f.strip_prefix(k)?.strip_prefix('=')).unwrap_or("");
        Some(ClientInfo {
            id: field("id").parse().ok()?,
            addr: field("addr").to_owned(),
            name: field("name").to_owned(),
            db: field("db").parse().unwrap_or(0),
            cmd: field("cmd").to_owned(),
        })
    }
}

impl Redis {
    /// Starts a `redis-server` on a fresh port.
    ///
    /// # Errors
    ///
    /// As [`Server::start`].
    pub fn start(opts: &RedisOptions) -> Result<Redis, StartError> {
        Server::start(spec(opts)).map(|s| Redis::wrap(s, opts))
    }

    /// [`Redis::start`], skipping (loudly, or failing with `INTERLOCK_TEST_REQUIRE=1`) when
    /// `redis-server` is not installed.
    ///
    /// # Panics
    ///
    /// When it fails to start, or is missing and required.
    pub fn start_or_skip(opts: &RedisOptions) -> Option<Redis> {
        Server::start_or_skip(spec(opts)).map(|s| Redis::wrap(s, opts))
    }

    fn wrap(server: Server, opts: &RedisOptions) -> Redis {
        Redis { server, password: opts.password.clone(), databases: opts.databases.max(1), next_db: AtomicU32::new(1) }
    }

    /// The generic server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// `redis://[:PASSWORD@]127.0.0.1:PORT/DB`.
    pub fn url(&self, db: u32) -> String {
        let auth = self.password.as_ref().map(|p| format!(":{p}@")).unwrap_or_default();
        format!("redis://{auth}127.0.0.1:{}/{db}", self.port())
    }

    /// A new connection, authenticated when the server has a password.
    ///
    /// # Errors
    ///
    /// When it cannot connect or authenticate.
    pub fn connect(&self) -> io::Result<RespConn> {
        connect(self.addr(), self.password.as_deref())
    }

    /// Runs one command in database `db` on a connection of its own; an error reply is an `Err`.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn cmd(&self, db: u32, args: &[&str]) -> io::Result<Resp> {
        let mut c = self.connect()?;
        if db != 0 {
            c.call(&["SELECT", &db.to_string()])?.ok()?;
        }
        c.call(args)?.ok()
    }

    /// Every client connection but the one asking (`CLIENT LIST`).
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn clients(&self) -> io::Result<Vec<ClientInfo>> {
        let mut c = self.connect()?;
        let me = c.call(&["CLIENT", "ID"])?.ok()?.int();
        let list = c.call(&["CLIENT", "LIST"])?.ok()?.text().unwrap_or_default();
        Ok(list.lines().filter_map(ClientInfo::parse).filter(|ci| Some(ci.id as i64) != me).collect())
    }

    /// Fault hook: closes client connection `id` server-side (`CLIENT KILL ID`); false when
    /// there was none.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn kill_client(&self, id: u64) -> io::Result<bool> {
        Ok(self.cmd(0, &["CLIENT", "KILL", "ID", &id.to_string()])?.int() == Some(1))
    }

    /// Fault hook: closes, server-side, every client connection that `pick` selects; returns how
    /// many.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn kill_clients_where(&self, pick: impl Fn(&ClientInfo) -> bool) -> io::Result<usize> {
        let mut n = 0;
        for c in self.clients()?.iter().filter(|c| pick(c)) {
            n += usize::from(self.kill_client(c.id)?);
        }
        Ok(n)
    }

    /// A namespace of its own for one test case: a database no other case of this process gets
    /// from this server, and a unique key prefix. Prints this server's log tail if the case
    /// panics while the namespace lives.
    ///
    /// # Panics
    ///
    /// When every database has been handed out ([`RedisOptions::databases`]).
    pub fn namespace(&self) -> RedisNs<'_> {
        RedisNs {
            redis: self,
            db: next_db(&self.next_db, self.databases),
            prefix: format!("{}:", crate::unique("t")),
            _log: self.server.log_on_panic(),
        }
    }
}

fn connect(addr: SocketAddr, password: Option<&str>) -> io::Result<RespConn> {
    let mut c = RespConn::connect(addr, TIMEOUT)?;
    if let Some(pw) = password {
        c.call(&["AUTH", pw])?.ok()?;
    }
    Ok(c)
}

fn next_db(next: &AtomicU32, databases: u32) -> u32 {
    let db = next.fetch_add(1, Ordering::Relaxed);
    assert!(
        db < databases,
        "more than {} Redis namespaces in one process: raise RedisOptions::databases",
        databases - 1
    );
    db
}

/// One test case's part of a Redis server: its own database and key prefix.
#[derive(Debug)]
pub struct RedisNs<'a> {
    redis: &'a Redis,
    /// The database index, used by nobody else in this process.
    pub db: u32,
    /// A unique key prefix (`t-PID-...:`), for backends that take one.
    pub prefix: String,
    _log: LogOnPanic<'a>,
}

impl RedisNs<'_> {
    /// The server's URL with this namespace's database.
    pub fn url(&self) -> String {
        self.redis.url(self.db)
    }

    /// The server.
    pub fn redis(&self) -> &Redis {
        self.redis
    }

    /// Every key in this namespace's database (`KEYS *`), sorted: what a case left behind.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn keys(&self) -> io::Result<Vec<String>> {
        keys(self.redis, self.db)
    }

    /// Runs one command in this namespace's database.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn cmd(&self, args: &[&str]) -> io::Result<Resp> {
        self.redis.cmd(self.db, args)
    }

    /// Fault hook: closes, server-side, every client connection that has this namespace's
    /// database selected; returns how many.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn kill_clients(&self) -> io::Result<usize> {
        self.redis.kill_clients_where(|c| c.db == self.db)
    }
}

fn keys(r: &Redis, db: u32) -> io::Result<Vec<String>> {
    let mut keys: Vec<String> = match r.cmd(db, &["KEYS", "*"])? {
        Resp::Array(items) => items.iter().filter_map(Resp::text).collect(),
        _ => Vec::new(),
    };
    keys.sort();
    Ok(keys)
}

/// N independent `redis-server` masters (Redlock's 3 or 5), started together.
#[derive(Debug)]
pub struct RedisGroup {
    members: Vec<Redis>,
    databases: u32,
    next_db: AtomicU32,
}

impl RedisGroup {
    /// Starts `n` masters.
    ///
    /// # Errors
    ///
    /// As [`Group::start`].
    pub fn start(n: usize, opts: &RedisOptions) -> Result<RedisGroup, StartError> {
        let members = Group::start(spec(opts), n)?.into_members().into_iter().map(|s| Redis::wrap(s, opts)).collect();
        Ok(RedisGroup { members, databases: opts.databases.max(1), next_db: AtomicU32::new(1) })
    }

    /// [`RedisGroup::start`], skipping when `redis-server` is not installed.
    ///
    /// # Panics
    ///
    /// When a member fails to start, or the program is missing and required.
    pub fn start_or_skip(n: usize, opts: &RedisOptions) -> Option<RedisGroup> {
        StartError::or_skip(RedisGroup::start(n, opts))
    }

    /// The masters, by index.
    pub fn members(&self) -> &[Redis] {
        &self.members
    }

    /// Master `i`.
    pub fn member(&self, i: usize) -> &Redis {
        &self.members[i]
    }

    /// How many masters.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True for a group of none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every master's URL with database `db`, by index.
    pub fn urls(&self, db: u32) -> Vec<String> {
        self.members.iter().map(|r| r.url(db)).collect()
    }

    /// Fault hook: SIGKILLs the first `k` running masters (a Redlock minority when
    /// `k < n/2`); returns their indices.
    pub fn kill_k(&self, k: usize) -> Vec<usize> {
        kill_first(self.members.iter().map(|r| &r.server), k)
    }

    /// Restarts every master that is not running, on its own port; returns their indices.
    ///
    /// # Errors
    ///
    /// As [`Server::restart`].
    pub fn restart_stopped(&self) -> Result<Vec<usize>, StartError> {
        restart_stopped(self.members.iter().map(|r| &r.server))
    }

    /// A namespace for one test case: the same database on every master, and a key prefix.
    ///
    /// # Panics
    ///
    /// When every database has been handed out.
    pub fn namespace(&self) -> RedisGroupNs<'_> {
        RedisGroupNs {
            group: self,
            db: next_db(&self.next_db, self.databases),
            prefix: format!("{}:", crate::unique("t")),
            _log: LogOnPanic::many(self.members.iter().map(|r| &r.server)),
        }
    }
}

/// One test case's part of a [`RedisGroup`].
#[derive(Debug)]
pub struct RedisGroupNs<'a> {
    group: &'a RedisGroup,
    /// The database index on every master.
    pub db: u32,
    /// A unique key prefix.
    pub prefix: String,
    _log: LogOnPanic<'a>,
}

impl RedisGroupNs<'_> {
    /// Every master's URL with this namespace's database.
    pub fn urls(&self) -> Vec<String> {
        self.group.urls(self.db)
    }

    /// The group.
    pub fn group(&self) -> &RedisGroup {
        self.group
    }

    /// The keys of this namespace's database on master `i`.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn keys_on(&self, i: usize) -> io::Result<Vec<String>> {
        keys(self.group.member(i), self.db)
    }

    /// Fault hook: closes, on master `i`, every client connection that has this namespace's
    /// database selected; returns how many.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn kill_clients_on(&self, i: usize) -> io::Result<usize> {
        self.group.member(i).kill_clients_where(|c| c.db == self.db)
    }
}

/// The `redis-server` shared by every test of this test binary (started by the first caller;
/// each test takes a [`Redis::namespace`]). `None` after a loud skip when `redis-server` is not
/// installed. Fault tests that stop, pause or kill a server start their own instead.
///
/// # Panics
///
/// When it fails to start, or is missing and required.
pub fn shared() -> Option<&'static Redis> {
    static SHARED: OnceLock<Option<Redis>> = OnceLock::new();
    SHARED.get_or_init(|| Redis::start_or_skip(&RedisOptions::default())).as_ref()
}

/// The group of `n` masters shared by every test of this test binary (one per `n`).
///
/// # Panics
///
/// As [`shared`].
pub fn shared_group(n: usize) -> Option<&'static RedisGroup> {
    static GROUPS: Mutex<Vec<(usize, Option<&'static RedisGroup>)>> = Mutex::new(Vec::new());
    let mut groups = GROUPS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, g)) = groups.iter().find(|(k, _)| *k == n) {
        return *g;
    }
    let g = RedisGroup::start_or_skip(n, &RedisOptions::default()).map(|g| &*Box::leak(Box::new(g)));
    groups.push((n, g));
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_list_lines_parse() {
        let line = "id=7 addr=127.0.0.1:40000 laddr=127.0.0.1:20001 fd=9 name=holder age=0 idle=0 flags=N db=12 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 omem=0 tot-mem=1800 events=r cmd=ping user=default redir=-1 resp=2";
        let c = ClientInfo::parse(line).unwrap();
        assert_eq!(
            (c.id, c.addr.as_str(), c.name.as_str(), c.db, c.cmd.as_str()),
            (7, "127.0.0.1:40000", "holder", 12, "ping")
        );
        assert_eq!(ClientInfo::parse("id=8 addr=x name= db=0").unwrap().name, "");
        assert_eq!(ClientInfo::parse("garbage"), None);
    }
}
