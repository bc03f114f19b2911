//! A generic private server process: [`Spec`] says how to run and probe it, [`Server`] is one
//! running instance, [`Group`] several that know each other's ports.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::ports::PortLease;
use super::{access, listeners, programs, spawn};

/// The marker written to a server's log before each start.
const START_MARK: &str = "--- interlock-testkit: start";
/// How many times a first start is tried on fresh ports when the port was taken under us.
const START_ATTEMPTS: usize = 3;
/// How long a restart keeps trying its own port while something else holds it.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(15);

type ArgsFn = dyn Fn(&Ctx<'_>) -> Vec<OsString> + Send + Sync;
type CheckFn = dyn Fn(&Ctx<'_>) -> Result<(), String> + Send + Sync;

/// A system user to run a server as (looked up in `/etc/passwd`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The login name.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

impl User {
    /// Looks `name` up in `/etc/passwd`.
    pub fn lookup(name: &str) -> Option<User> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0] != name {
                return None;
            }
            Some(User { name: name.to_owned(), uid: f[2].parse().ok()?, gid: f[3].parse().ok()? })
        })
    }
}

/// What a [`Spec`]'s closures know about the instance they start or probe.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    /// The instance's name, for messages: `redis-3`.
    pub name: &'a str,
    /// Its index in its [`Group`] (0 for a lone server).
    pub index: usize,
    /// Its ports on 127.0.0.1 ([`Spec::ports`] of them): `ports[0]` is the client port.
    pub ports: &'a [u16],
    /// Every member's ports, this one's included, by index (for ensembles).
    pub peers: &'a [Vec<u16>],
    /// Its home: the working directory, where its log and config files live.
    pub home: &'a Path,
    /// Its data directory (`home/data`, empty at first, owned by its user), kept across restarts.
    pub data: &'a Path,
    /// The file that gets its stdout and stderr, kept across restarts.
    pub log: &'a Path,
    /// Its process id, in readiness probes (`None` in `args` and `init`).
    pub pid: Option<u32>,
    /// The user it runs as, if not as this process's.
    pub user: Option<&'a User>,
    /// The [`Spec::tool`]s, found before the start, and the [`Spec::search`] directories.
    tools: &'a Tools,
}

/// The tools of a [`Spec`], found: `(name, path)`, and the directories searched.
#[derive(Debug, Default)]
pub(crate) struct Tools {
    found: Vec<(String, PathBuf)>,
    dirs: Vec<PathBuf>,
}

impl Tools {
    /// Where the program or tool `name` is: as found before the start, else looked for now.
    fn path(&self, name: &str) -> PathBuf {
        self.found
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .or_else(|| programs::find_program(name, &self.dirs))
            .unwrap_or_else(|| PathBuf::from(name))
    }
}

impl Ctx<'_> {
    /// The client port.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()))
    }

    /// A command run as the server's user in its home, for `init` steps (`initdb`, ...).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.home).stdin(Stdio::null());
        if let Some(u) = self.user {
            as_user(&mut cmd, u, self.home);
        }
        cmd
    }

    /// [`Ctx::command`] for the tool `name` of the [`Spec`] ([`Spec::tool`]: `initdb`,
    /// `pg_isready`, `mariadb-install-db`), from where it was found before the start: the
    /// [`Spec::search`] directories, then `$PATH`.
    pub fn tool(&self, name: &str) -> Command {
        self.command(self.tools.path(name))
    }

    /// Hands `path` (a file an `init` step wrote) to the server's user.
    ///
    /// # Errors
    ///
    /// When `chown` fails.
    pub fn give(&self, path: &Path) -> io::Result<()> {
        match self.user {
            Some(u) => std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)),
            None => Ok(()),
        }
    }
}

/// Like `setpriv --reuid --regid --reset-env`, but with std's `uid`/`gid`, which run before our
/// `pre_exec` (see `spawn.rs`): a parent-death signal set before a change of user is cleared.
fn as_user(cmd: &mut Command, u: &User, home: &Path) {
    cmd.uid(u.uid).gid(u.gid).env_clear();
    cmd.env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", home)
        .env("USER", &u.name)
        .env("LOGNAME", &u.name);
}

/// How to run one kind of server: its program and arguments, how to tell it is ready, how to stop
/// it. Cloned into every instance it starts.
#[derive(Clone)]
pub struct Spec {
    name: String,
    program: String,
    args: Arc<ArgsFn>,
    init: Option<Arc<CheckFn>>,
    ready: Arc<CheckFn>,
    ports: usize,
    stop_signal: Signal,
    ready_timeout: Duration,
    user: Option<String>,
    env: Vec<(OsString, OsString)>,
    search: Vec<String>,
    tools: Vec<String>,
    requires: Vec<PathBuf>,
    package: Option<String>,
    unleased_listeners: bool,
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spec")
            .field("name", &self.name)
            .field("program", &self.program)
            .field("ports", &self.ports)
            .field("stop_signal", &self.stop_signal)
            .field("ready_timeout", &self.ready_timeout)
            .field("user", &self.user)
            .field("search", &self.search)
            .field("tools", &self.tools)
            .field("requires", &self.requires)
            .finish_non_exhaustive()
    }
}

impl Spec {
    /// A server called `name` (for directories and messages) run by `program` (a path, or a
    /// name looked up on `$PATH`), with no arguments, one port, ready once its port accepts a
    /// TCP connection, stopped by SIGTERM.
    pub fn new(name: &str, program: &str) -> Spec {
        Spec {
            name: name.to_owned(),
            program: program.to_owned(),
            args: Arc::new(|_| Vec::new()),
            init: None,
            ready: Arc::new(|ctx| {
                std::net::TcpStream::connect_timeout(&ctx.addr(), Duration::from_secs(1))
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
            ports: 1,
            stop_signal: Signal::TERM,
            ready_timeout: Duration::from_secs(60),
            user: None,
            env: Vec::new(),
            search: Vec::new(),
            tools: Vec::new(),
            requires: Vec::new(),
            package: None,
            unleased_listeners: false,
        }
    }

    /// Its arguments, built for each start from the instance's ports and directories.
    pub fn args(mut self, f: impl Fn(&Ctx<'_>) -> Vec<OsString> + Send + Sync + 'static) -> Spec {
        self.args = Arc::new(f);
        self
    }

    /// Work done once per instance before its first start (config files, `initdb`, ...).
    pub fn init(mut self, f: impl Fn(&Ctx<'_>) -> Result<(), String> + Send + Sync + 'static) -> Spec {
        self.init = Some(Arc::new(f));
        self
    }

    /// The readiness probe: `Ok` once the server serves (and is the process we started: the
    /// probe gets its pid). Called every few tens of milliseconds until it succeeds, the process
    /// exits, or [`Spec::ready_timeout`] passes.
    pub fn ready(mut self, f: impl Fn(&Ctx<'_>) -> Result<(), String> + Send + Sync + 'static) -> Spec {
        self.ready = Arc::new(f);
        self
    }

    /// How many ports each instance gets (client, peer, election, ...; default 1).
    pub fn ports(mut self, n: usize) -> Spec {
        self.ports = n.max(1);
        self
    }

    /// The signal that [`Server::stop`] and restarts send (default SIGTERM).
    pub fn stop_signal(mut self, sig: Signal) -> Spec {
        self.stop_signal = sig;
        self
    }

    /// How long a start may take before it fails (default 60 s: no speed is asserted).
    pub fn ready_timeout(mut self, d: Duration) -> Spec {
        self.ready_timeout = d;
        self
    }

    /// Runs the server as `user` (its data directory is handed to that user). This process
    /// must be root, unless `user` is its own user.
    pub fn run_as(mut self, user: &str) -> Spec {
        self.user = Some(user.to_owned());
        self
    }

    /// [`Spec::run_as`] when this process is root (for servers that refuse root, such as
    /// PostgreSQL); nothing otherwise.
    pub fn run_as_when_root(self, user: &str) -> Spec {
        if rustix::process::geteuid().is_root() { self.run_as(user) } else { self }
    }

    /// An environment variable for the server.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Spec {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Looks for the program and the [`Spec::tool`]s in the directories `pattern` names before
    /// `$PATH`: a path whose components may be `*`, the newest version first
    /// ([`super::dirs_matching`]): `.search("/usr/lib/postgresql/*/bin")`.
    pub fn search(mut self, pattern: &str) -> Spec {
        self.search.push(pattern.to_owned());
        self
    }

    /// Another program the server needs (an `init` step's `initdb`, a probe's `pg_isready`):
    /// found before the start as the program is, or the start is [`StartError::Missing`]; run it
    /// with [`Ctx::tool`].
    pub fn tool(mut self, name: &str) -> Spec {
        self.tools.push(name.to_owned());
        self
    }

    /// A file the server needs (`/usr/share/java/zookeeper.jar` for `java`): missing, the start
    /// is [`StartError::Missing`], before anything runs.
    pub fn requires(mut self, path: impl Into<PathBuf>) -> Spec {
        self.requires.push(path.into());
        self
    }

    /// The Debian package that installs the program, its tools and files, named when one is
    /// missing.
    pub fn package(mut self, name: &str) -> Spec {
        self.package = Some(name.to_owned());
        self
    }

    /// Lets the server listen on ports its Spec does not lease. By default a server found
    /// listening on one once it is ready fails to start ([`StartError::UnleasedPort`]): two tests
    /// starting it at once would clash on that port.
    pub fn allow_unleased_listeners(mut self) -> Spec {
        self.unleased_listeners = true;
        self
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The program's path, if it exists (in the [`Spec::search`] directories, then on `$PATH`).
    pub fn program_path(&self) -> Option<PathBuf> {
        programs::find_program(&self.program, &self.search_dirs())
    }

    fn search_dirs(&self) -> Vec<PathBuf> {
        self.search.iter().flat_map(|p| programs::dirs_matching(p)).collect()
    }

    /// The program and every tool and file, found; or what is missing.
    fn find_all(&self) -> Result<(PathBuf, Tools), StartError> {
        let missing = |what: String| StartError::Missing { program: what, package: self.package.clone() };
        let dirs = self.search_dirs();
        let program = programs::find_program(&self.program, &dirs)
            .ok_or_else(|| missing(programs::describe_missing(&self.program, &self.search)))?;
        let mut found = Vec::new();
        for t in &self.tools {
            let path =
                programs::find_program(t, &dirs).ok_or_else(|| missing(programs::describe_missing(t, &self.search)))?;
            found.push((t.clone(), path));
        }
        if let Some(f) = programs::first_missing_file(&self.requires) {
            return Err(missing(format!("{} (needed by {})", f.display(), self.name)));
        }
        Ok((program, Tools { found, dirs }))
    }
}

/// Why a server did not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// Its program, a [`Spec::tool`] or a [`Spec::requires`] file is not installed: checked before
    /// anything is started.
    #[non_exhaustive]
    Missing {
        /// What is missing: the program or tool as the [`Spec`] names it (and where it was
        /// looked for), or the file's path.
        program: String,
        /// The Debian package that installs it ([`Spec::package`]), when the Spec says.
        package: Option<String>,
    },
    /// This process could not prepare what every server needs: its server directory in
    /// `$TMPDIR`, a port lease, the reaper or the spawner thread (a local I/O failure, before
    /// any server ran).
    #[non_exhaustive]
    Setup {
        /// What could not be done, with the path involved.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// It opens a port that its [`Spec`] does not lease: it exited because that port was in use
    /// (`taken`: starting again cannot help, unlike a clash on its own leased ports, which is
    /// retried on fresh ports), or it listens there once ready (another test's server could take
    /// it first). Lease the port ([`Spec::ports`]) and pass it in the arguments, or turn that
    /// listener off (ZooKeeper's admin server: `admin.enableServer=false`).
    #[non_exhaustive]
    UnleasedPort {
        /// The instance (`zookeeper-2`).
        server: String,
        /// The ports: those the log names (possibly none) when `taken`, those it listens on when
        /// not.
        ports: Vec<u16>,
        /// It exited because the port was in use (else: it listens on it).
        taken: bool,
        /// The last lines of its log.
        log_tail: String,
    },
    /// It did not become ready.
    #[non_exhaustive]
    Failed {
        /// The instance (`redis-3`).
        server: String,
        /// What went wrong.
        reason: String,
        /// The last lines of its log.
        log_tail: String,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Missing { program, package: None } => write!(f, "{program} is not installed"),
            StartError::Missing { program, package: Some(p) } => {
                write!(f, "{program} is not installed (Debian package {p})")
            }
            StartError::UnleasedPort { server, ports, taken, log_tail } => {
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                let named = if list.is_empty() { "not named in its log".to_owned() } else { list.join(", ") };
                if *taken {
                    write!(
                        f,
                        "{server} did not start: a port it opens that its Spec does not lease is in use ({named}); \
                               its own ports were free, so starting again cannot help"
                    )?;
                } else {
                    write!(
                        f,
                        "{server} listens on ports its Spec does not lease ({named}): another test's server may \
                               take them first"
                    )?;
                }
                write!(
                    f,
                    "; lease them (Spec::ports) and pass them in its arguments, or turn that listener off\n\
                           --- last lines of its log ---\n{log_tail}"
                )
            }
            StartError::Setup { what, source } => write!(f, "{what}: {source}"),
            StartError::Failed { server, reason, log_tail } => {
                write!(f, "{server} did not start: {reason}\n--- last lines of its log ---\n{log_tail}")
            }
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Setup { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl StartError {
    /// A [`StartError::Setup`].
    pub(crate) fn setup(what: impl Into<String>, source: io::Error) -> StartError {
        StartError::Setup { what: what.into(), source }
    }

    /// A [`StartError::Failed`].
    pub(crate) fn failed(server: impl Into<String>, reason: impl Into<String>, log_tail: String) -> StartError {
        StartError::Failed { server: server.into(), reason: reason.into(), log_tail }
    }

    /// `r`'s server, or `None` after a [`crate::skip`] when its program is missing (a failure with
    /// `INTERLOCK_TEST_REQUIRE=1`). For the `start_or_skip` functions of the server modules.
    ///
    /// # Panics
    ///
    /// When the start failed for any other reason, or the program is missing and required.
    pub fn or_skip<T>(r: Result<T, StartError>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(e @ StartError::Missing { .. }) => {
                crate::skip(&e.to_string());
                None
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Why one launch failed.
struct LaunchError {
    kind: Launch,
    reason: String,
}

impl LaunchError {
    fn other(reason: impl Into<String>) -> LaunchError {
        LaunchError { kind: Launch::Other, reason: reason.into() }
    }
}

/// What kind of failure a launch met.
enum Launch {
    /// It exited over an address in use, and one of its own leased ports is held by another
    /// program: start it again, on fresh ports (a first start) or later (a restart).
    OwnPortTaken,
    /// It exited over an address in use, but its own ports were free: a port its Spec does not
    /// lease (those the log names).
    OtherPortTaken(Vec<u16>),
    /// It is ready, but listens on ports its Spec does not lease.
    Listens(Vec<u16>),
    /// Anything else.
    Other,
}

#[derive(Debug, Default)]
struct State {
    child: Option<Child>,
    last_exit: Option<ExitStatus>,
    starts: u32,
}

/// One private server process that we started, on leased loopback ports, in a home directory of
/// its own under [`super::session_dir`]. It is SIGKILLed and its home removed on drop; if the
/// test is panicking then, the tail of its log is printed first. Every method takes `&self`, so
/// that servers shared through a `static` can be broken too.
pub struct Server {
    spec: Spec,
    name: String,
    index: usize,
    leases: Vec<PortLease>,
    ports: Vec<u16>,
    peers: Arc<Vec<Vec<u16>>>,
    home: PathBuf,
    data: PathBuf,
    log: PathBuf,
    program: PathBuf,
    tools: Arc<Tools>,
    user: Option<User>,
    state: Mutex<State>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("ports", &self.ports)
            .field("pid", &self.pid())
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts one instance of `spec` on a fresh port and waits until it is ready.
    ///
    /// # Errors
    ///
    /// [`StartError::Missing`] when the program is not installed, [`StartError::Failed`] (with
    /// the tail of its log) when it exits or is not ready in time.
    pub fn start(spec: Spec) -> Result<Server, StartError> {
        Group::start(spec, 1).map(|g| g.into_members().pop().expect("one member"))
    }

    /// [`Server::start`], but a missing program [`crate::skip`]s (loudly; a failure with
    /// `INTERLOCK_TEST_REQUIRE=1`) and returns `None`.
    ///
    /// # Panics
    ///
    /// When the server fails to start, or is missing and required.
    pub fn start_or_skip(spec: Spec) -> Option<Server> {
        StartError::or_skip(Server::start(spec))
    }

    /// Makes the home and data directories and runs `init`; does not start the process.
    fn prepare(
        spec: &Spec,
        (program, tools): (&Path, &Arc<Tools>),
        index: usize,
        leases: Vec<PortLease>,
        peers: Arc<Vec<Vec<u16>>>,
    ) -> Result<Server, StartError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!("{}-{}", spec.name, N.fetch_add(1, Ordering::Relaxed) + 1);
        let fail = |reason: String| StartError::failed(&name, reason, String::new());
        let user = match &spec.user {
            Some(u) => Some(User::lookup(u).ok_or_else(|| fail(format!("no user {u} in /etc/passwd")))?),
            None => None,
        };
        let home =
            spawn::session_dir().map_err(|e| StartError::setup("cannot prepare private servers", e))?.join(&name);
        if let Some((dir, mode, owner)) = user.as_ref().and_then(|u| access::blocked_on_the_way(u, &home)) {
            let u = user.as_ref().map_or("", |u| u.name.as_str());
            return Err(StartError::setup(
                format!(
                    "{u} cannot reach its server directory {}: {} (mode {mode:04o}, owner uid {owner}) is not \
                     searchable by it; set TMPDIR to a directory that every user can traverse, such as /tmp",
                    home.display(),
                    dir.display()
                ),
                io::Error::from(io::ErrorKind::PermissionDenied),
            ));
        }
        let data = home.join("data");
        std::fs::create_dir_all(&data)
            .map_err(|e| StartError::setup(format!("cannot create {}", data.display()), e))?;
        let log = home.join("server.log");
        File::create(&log).map_err(|e| StartError::setup(format!("cannot create {}", log.display()), e))?;
        if let Some(u) = &user {
            for p in [&home, &data] {
                std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid))
                    .map_err(|e| fail(format!("chown {} to {}: {e}", p.display(), u.name)))?;
            }
        }
        let ports = leases.iter().map(PortLease::port).collect();
        let server = Server {
            spec: spec.clone(),
            name,
            index,
            leases,
            ports,
            peers,
            home,
            data,
            log,
            program: program.to_owned(),
            tools: Arc::clone(tools),
            user,
            state: Mutex::new(State::default()),
        };
        if let Some(init) = &server.spec.init {
            init(&server.ctx(None)).map_err(|reason| server.failed(reason))?;
        }
        Ok(server)
    }

    fn ctx(&self, pid: Option<u32>) -> Ctx<'_> {
        Ctx {
            name: &self.name,
            index: self.index,
            ports: &self.ports,
            peers: &self.peers,
            home: &self.home,
            data: &self.data,
            log: &self.log,
            pid,
            user: self.user.as_ref(),
            tools: &self.tools,
        }
    }

    fn failed(&self, reason: String) -> StartError {
        StartError::failed(&self.name, reason, self.log_tail(30))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the process (not waiting for readiness); a previous one must be gone.
    fn spawn(&self) -> Result<(), LaunchError> {
        let mut st = self.state();
        debug_assert!(st.child.is_none(), "spawn while running");
        st.starts += 1;
        let err = |what: &str, e: io::Error| LaunchError::other(format!("{what}: {e}"));
        let mut log = OpenOptions::new().append(true).open(&self.log).map_err(|e| err("open the log", e))?;
        let ctx = self.ctx(None);
        let args = (self.spec.args)(&ctx);
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy())
            .map(|a| if a.is_empty() || a.contains(' ') { format!("'{a}'") } else { a.into_owned() })
            .collect();
        writeln!(log, "{START_MARK} #{}: {} {} ---", st.starts, self.program.display(), shown.join(" "))
            .map_err(|e| err("write the log", e))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&args).current_dir(&self.home).stdin(Stdio::null());
        cmd.stdout(log.try_clone().map_err(|e| err("dup the log", e))?).stderr(log);
        if let Some(u) = &self.user {
            as_user(&mut cmd, u, &self.home);
        }
        cmd.envs(self.spec.env.iter().map(|(k, v)| (k, v)));
        let child = spawn::spawn(cmd).map_err(|e| err(&format!("spawn {}", self.program.display()), e))?;
        st.child = Some(child);
        Ok(())
    }

    /// Waits until the readiness probe passes, the process exits, or `deadline`.
    fn wait_ready(&self, deadline: Instant) -> Result<(), LaunchError> {
        let mut pause = Duration::from_millis(10);
        loop {
            let pid = {
                let mut st = self.state();
                let Some(child) = st.child.as_mut() else {
                    return Err(LaunchError::other("it is not running"));
                };
                match child.try_wait() {
                    Ok(None) => child.id(),
                    Ok(Some(status)) => {
                        st.child = None;
                        st.last_exit = Some(status);
                        drop(st);
                        return Err(self.exited(status));
                    }
                    Err(e) => return Err(LaunchError::other(format!("wait: {e}"))),
                }
            };
            let last = match (self.spec.ready)(&self.ctx(Some(pid))) {
                // Ready, and still the process we started (not another one answering on the port).
                Ok(()) if self.is_running() => return self.check_listeners(pid),
                Ok(()) => "the probe passed but the process has exited".to_owned(),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                self.kill();
                return Err(LaunchError::other(format!(
                    "not ready after {:?}; last probe: {last}",
                    self.spec.ready_timeout
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Why it exited before it was ready: over an address in use, one of its own ports (held by
    /// another program now) or another one; or anything else.
    fn exited(&self, status: ExitStatus) -> LaunchError {
        let reason = format!("it exited ({}) before it was ready", describe(status));
        let since = self.log_since_start();
        if !listeners::says_in_use(&since) {
            return LaunchError::other(reason);
        }
        match listeners::whose_port(&since, &self.ports) {
            listeners::Clash::Other(ports) => LaunchError { kind: Launch::OtherPortTaken(ports), reason },
            listeners::Clash::Own => {
                let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
                LaunchError {
                    kind: Launch::OwnPortTaken,
                    reason: format!("{reason}: one of its ports ({}) was in use", ports.join(", ")),
                }
            }
        }
    }

    /// Fails a server that is ready but listens on ports it did not lease (unless its Spec allows
    /// it, or `/proc` cannot tell).
    fn check_listeners(&self, pid: u32) -> Result<(), LaunchError> {
        if self.spec.unleased_listeners {
            return Ok(());
        }
        let Some(listening) = listeners::listening_ports(pid) else { return Ok(()) };
        let extra: Vec<u16> = listening.into_iter().filter(|p| !self.ports.contains(p)).collect();
        if extra.is_empty() {
            return Ok(());
        }
        self.kill();
        Err(LaunchError { kind: Launch::Listens(extra), reason: "it listens on ports it did not lease".into() })
    }

    /// The [`StartError`] of a launch that failed for good.
    fn launch_failed(&self, e: LaunchError) -> StartError {
        let (ports, taken) = match e.kind {
            Launch::OtherPortTaken(ports) => (ports, true),
            Launch::Listens(ports) => (ports, false),
            Launch::OwnPortTaken | Launch::Other => return self.failed(e.reason),
        };
        StartError::UnleasedPort { server: self.name.clone(), ports, taken, log_tail: self.log_tail(30) }
    }

    /// The log written since the last start marker.
    fn log_since_start(&self) -> String {
        let text = std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        match text.rfind(START_MARK) {
            Some(i) => text[i..].to_owned(),
            None => text,
        }
    }

    /// The instance's name (`redis-3`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its client port on 127.0.0.1 (the same across restarts).
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// All its ports ([`Spec::ports`]), client port first.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()))
    }

    /// Its home directory (working directory, log, config files).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Its data directory, kept across restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Its log file (stdout and stderr of every start, each after a `--- interlock-testkit:
    /// start #N` line).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The user it runs as, when not as this process's.
    pub fn user(&self) -> Option<&User> {
        self.user.as_ref()
    }

    /// Its current process id (`None` once stopped or killed).
    pub fn pid(&self) -> Option<u32> {
        self.state().child.as_ref().map(Child::id)
    }

    /// True while its process runs (a paused one counts as running).
    pub fn is_running(&self) -> bool {
        let mut st = self.state();
        let Some(child) = st.child.as_mut() else { return false };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                st.child = None;
                st.last_exit = Some(status);
                false
            }
            Err(_) => false,
        }
    }

    /// How its last process ended, once it has.
    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.state().last_exit
    }

    /// Sends `sig` to its process (nothing when it is not running).
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw) {
            // ESRCH: it died on its own but is not reaped yet; anything else is a bug.
            match rustix::process::kill_process(pid, sig) {
                Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                Err(e) => panic!("signal {sig:?} to {}: {e}", self.name),
            }
        }
    }

    /// Fault hook: SIGKILL, and wait for it. Its ports and data directory stay.
    pub fn kill(&self) {
        let mut st = self.state();
        if let Some(mut child) = st.child.take() {
            let _ = child.kill();
            st.last_exit = child.wait().ok();
        }
    }

    /// Stops it with its [`Spec::stop_signal`] and waits (SIGKILL after 30 s). Returns how it
    /// ended, `None` when it was not running.
    pub fn stop(&self) -> Option<ExitStatus> {
        self.stop_with(self.spec.stop_signal, Duration::from_secs(30))
    }

    /// Fault hook: stops it with `sig` (and SIGCONT, in case it is paused), waits up to `grace`,
    /// then SIGKILLs it. Returns how it ended, `None` when it was not running.
    pub fn stop_with(&self, sig: Signal, grace: Duration) -> Option<ExitStatus> {
        if !self.is_running() {
            return None;
        }
        self.signal(sig);
        if sig != Signal::CONT {
            self.signal(Signal::CONT);
        }
        let deadline = Instant::now() + grace;
        let mut st = self.state();
        let mut child = st.child.take()?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        st.last_exit = status;
        status
    }

    /// Fault hook: SIGSTOP. It keeps its connections but answers nothing until [`Server::resume`].
    pub fn pause(&self) {
        self.signal(Signal::STOP);
    }

    /// Fault hook: SIGCONT after [`Server::pause`].
    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    /// Fault hook: stops it if it runs ([`Server::stop`]), then starts it again on the same
    /// ports and data directory and waits until it is ready. While another process holds its
    /// port, it tries again for up to 15 s.
    ///
    /// # Errors
    ///
    /// [`StartError::Failed`] with the tail of its log.
    pub fn restart(&self) -> Result<(), StartError> {
        self.stop();
        launch(&[self], true)
    }

    /// How many times its process was started.
    pub fn starts(&self) -> u32 {
        self.state().starts
    }

    /// A guard that prints the tail of this server's log if the current thread panics while it
    /// lives (for servers shared by many tests, which are never dropped).
    pub fn log_on_panic(&self) -> LogOnPanic<'_> {
        LogOnPanic { servers: vec![self] }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_tail(self);
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.home);
        self.leases.clear();
    }
}

fn print_tail(s: &Server) {
    eprintln!("--- last lines of {} ({}) ---\n{}\n---", s.name, s.log.display(), s.log_tail(40));
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// Spawns every server, then waits for every one to be ready (an ensemble needs its peers up
/// before any member is). With `retry_in_use`, a server whose port was taken is started again on
/// the same port until [`RESTART_PORT_WAIT`] passes; without, that is an `in_use` error.
fn launch(servers: &[&Server], retry_in_use: bool) -> Result<(), StartError> {
    launch_inner(servers, retry_in_use).map_err(|(s, e)| s.launch_failed(e))
}

fn launch_inner<'a>(servers: &[&'a Server], retry_in_use: bool) -> Result<(), (&'a Server, LaunchError)> {
    let port_deadline = Instant::now() + RESTART_PORT_WAIT;
    let mut pending: Vec<&Server> = servers.to_vec();
    loop {
        for s in &pending {
            s.spawn().map_err(|e| (*s, e))?;
        }
        let ready_by = Instant::now() + pending.iter().map(|s| s.spec.ready_timeout).max().unwrap_or_default();
        let mut in_use = Vec::new();
        for s in &pending {
            match s.wait_ready(ready_by) {
                Ok(()) => {}
                Err(e) if matches!(e.kind, Launch::OwnPortTaken) && retry_in_use && Instant::now() < port_deadline => {
                    in_use.push(*s);
                }
                Err(e) => return Err((*s, e)),
            }
        }
        if in_use.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
        pending = in_use;
    }
}

/// Several instances of one [`Spec`] that know each other's ports ([`Ctx::peers`]): Redis
/// masters for Redlock, a ZooKeeper ensemble, etcd members. Started together; each member is a
/// [`Server`] with its own fault hooks.
#[derive(Debug)]
pub struct Group {
    members: Vec<Server>,
}

impl Group {
    /// Starts `n` instances of `spec`, each on its own ports, and waits until all are ready.
    ///
    /// # Errors
    ///
    /// As [`Server::start`].
    pub fn start(spec: Spec, n: usize) -> Result<Group, StartError> {
        let (program, tools) = spec.find_all()?;
        let tools = Arc::new(tools);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let leases = (0..n)
                .map(|_| (0..spec.ports).map(|_| PortLease::lease()).collect::<io::Result<Vec<_>>>())
                .collect::<io::Result<Vec<_>>>()
                .map_err(|e| StartError::setup("cannot lease a loopback port", e))?;
            let peers = Arc::new(leases.iter().map(|l| l.iter().map(PortLease::port).collect()).collect::<Vec<_>>());
            let mut members = Vec::with_capacity(n);
            for (index, l) in leases.into_iter().enumerate() {
                members.push(Server::prepare(&spec, (&program, &tools), index, l, Arc::clone(&peers))?);
            }
            let refs: Vec<&Server> = members.iter().collect();
            match launch_inner(&refs, false) {
                Ok(()) => return Ok(Group { members }),
                // The port was taken between our probe and the server's bind: new ports.
                Err((_, e)) if matches!(e.kind, Launch::OwnPortTaken) && attempt < START_ATTEMPTS => {}
                Err((s, e)) => return Err(s.launch_failed(e)),
            }
        }
    }

    /// [`Group::start`], but a missing program [`crate::skip`]s and returns `None`.
    ///
    /// # Panics
    ///
    /// When a member fails to start, or the program is missing and required.
    pub fn start_or_skip(spec: Spec, n: usize) -> Option<Group> {
        StartError::or_skip(Group::start(spec, n))
    }

    /// The members, by index.
    pub fn members(&self) -> &[Server] {
        &self.members
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &Server {
        &self.members[i]
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True for a group of none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client port, by index.
    pub fn ports(&self) -> Vec<u16> {
        self.members.iter().map(Server::port).collect()
    }

    /// Fault hook: SIGKILLs the first `k` running members; returns their indices.
    pub fn kill_k(&self, k: usize) -> Vec<usize> {
        kill_first(self.members.iter(), k)
    }

    /// Restarts every member that is not running (spawned together, then waited for, so that a
    /// quorum can form); returns their indices.
    ///
    /// # Errors
    ///
    /// As [`Server::restart`].
    pub fn restart_stopped(&self) -> Result<Vec<usize>, StartError> {
        restart_stopped(self.members.iter())
    }

    /// The members, to wrap them in a backend's own type.
    pub fn into_members(mut self) -> Vec<Server> {
        std::mem::take(&mut self.members)
    }

    /// A guard that prints every member's log tail if the current thread panics while it lives.
    pub fn log_on_panic(&self) -> LogOnPanic<'_> {
        LogOnPanic { servers: self.members.iter().collect() }
    }
}

/// SIGKILLs the first `k` running servers; returns their indices.
pub(crate) fn kill_first<'a>(servers: impl Iterator<Item = &'a Server>, k: usize) -> Vec<usize> {
    let mut killed = Vec::new();
    for (i, s) in servers.enumerate() {
        if killed.len() == k {
            break;
        }
        if s.is_running() {
            s.kill();
            killed.push(i);
        }
    }
    killed
}

/// Restarts every server that is not running, together.
pub(crate) fn restart_stopped<'a>(servers: impl Iterator<Item = &'a Server>) -> Result<Vec<usize>, StartError> {
    let stopped: Vec<(usize, &Server)> = servers.enumerate().filter(|(_, s)| !s.is_running()).collect();
    launch(&stopped.iter().map(|(_, s)| *s).collect::<Vec<_>>(), true)?;
    Ok(stopped.into_iter().map(|(i, _)| i).collect())
}

/// Prints the log tails of its servers when dropped during a panic. See
/// [`Server::log_on_panic`].
#[derive(Debug)]
pub struct LogOnPanic<'a> {
    servers: Vec<&'a Server>,
}

impl<'a> LogOnPanic<'a> {
    /// A guard for several servers.
    pub fn many(servers: impl IntoIterator<Item = &'a Server>) -> LogOnPanic<'a> {
        LogOnPanic { servers: servers.into_iter().collect() }
    }
}

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in &self.servers {
                print_tail(s);
            }
        }
    }
}
