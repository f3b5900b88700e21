//! The supervisor's event loop: the client socket, the zygote channel, every
//! environment's worker socket, log pipe and pidfd, and the timers, all on one
//! mio poll. Nothing here blocks on a function.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{setsockopt, socketpair, sockopt, AddressFamily, SockFlag, SockType};
use serde_json::value::RawValue;

use super::concurrency::{Account, Counter};
use super::env::{BlankKind, Env, EnvState, NewEnv, WorkerLine, LOG_READ_BUDGET};
use super::invoke::{self, Invocation, Outcome};
use super::logs::{LogStore, TailBuffer};
use super::pidfd::{self, PidFd};
use super::queue::store::Store;
use super::queue::Queue;
use super::zygote::{self, Zygote, ZygoteReport};
use super::ServeOptions;
use crate::config::{FunctionSpec, Runtime};
use crate::metrics::{self, Metrics};
use crate::protocol::{
    self, op, ErrorKind, FunctionList, InvocationType, InvokeResult, LogLines, LogType,
    RequestLine, WireError, MAX_LINE_BYTES, MAX_SYNC_PAYLOAD_BYTES,
};
use crate::registry::{Function, Registry};
use crate::sandbox::cgroup::{CgroupManager, Limits};
use crate::sandbox::host::{self, HostLayout, HostNode, HostPython};
use crate::sandbox::plan::LANG_DIR;
use crate::sandbox::plan::{BlankInputs, BlankTemplate, SpecInputs, SpecTemplate};
use crate::sandbox::seccomp;

const LISTENER: Token = Token(0);
const ZYGOTE: Token = Token(1);
const ZYGOTE_PID: Token = Token(2);
const SIGNALS: Token = Token(3);
/// The event store's writer wakes the loop when batches are committed, and
/// the unpacking threads when a package is ready (server/staging.rs).
const STORE: Token = Token(4);
const FIRST_DYNAMIC: usize = 16;

/// How long an environment may take from spawn to ready (Lambda's init phase
/// limit for on-demand environments is 10 s).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle environments and stray children are looked at.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// A client that does not read its responses stops being read from once this
/// much is waiting for it (backpressure instead of unbounded memory).
const MAX_CONN_BACKLOG: usize = 16 * 1024 * 1024;
/// One read from a socket or pipe.
const READ_CHUNK: usize = 64 * 1024;
/// An invoke's log lines are kept until it ends, up to this many bytes.
const INVOKE_LOG_BUFFER: usize = 256 * 1024;
/// Environments being made at once, per host CPU. Making one is CPU work
/// (the zygote's fork, the sandbox's set-up, the init), so more at once only
/// queue behind each other: their Init Durations grow, their init clocks run
/// while they wait, and in a burst of short invokes most of them end up
/// unused because a warm environment took their invoke meanwhile.
const STARTS_PER_CPU: usize = 4;
/// How long to wait before provisioning again after a provisioned
/// environment's init failed.
const PROVISION_BACKOFF: Duration = Duration::from_secs(5);
/// How long to wait before making blanks again after one failed.
const BLANK_BACKOFF: Duration = Duration::from_secs(1);
/// How long a runtime that closed its channel may take to exit.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long shutdown waits for environments to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
enum Owner {
    Conn,
    Worker(u64),
    Log(u64),
    Pid(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Housekeeping,
    /// An invocation's deadline: (environment, invocation timer id).
    Deadline(u64, u64),
    InitDeadline(u64),
    /// Look again at an ended environment that was still dying.
    Dying(u64),
    /// The runtime closed its channel this long ago and has not exited.
    Closed(u64),
    /// A queued event's retry delay or backoff ends.
    Events,
}

/// An environment that has ended but whose processes or cgroup are not gone.
struct Dying {
    env_id: String,
    function: String,
    code_revision: u64,
    pidfd: Option<PidFd>,
    pid_token: Token,
    cgroup: Option<crate::sandbox::cgroup::EnvCgroup>,
    retries: u32,
}

struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: VecDeque<u8>,
    /// Bytes of an over-long line being discarded.
    discarding: bool,
    closed: bool,
    /// Registered for writable events (a reply is waiting for room).
    want_write: bool,
    /// The client's uid: only root may name host paths (Code.Path), since the
    /// supervisor reads them as root and a function could then read them.
    peer_uid: u32,
}

/// The per-function scheduling state: idle environments and waiting invokes.
#[derive(Default)]
struct Pool {
    /// Idle on-demand environments, the most recently used last.
    idle: Vec<u64>,
    /// Idle provisioned environments: taken before on-demand ones.
    idle_provisioned: Vec<u64>,
    /// On-demand environments starting for waiting invokes.
    starting: usize,
    /// Invocations in flight (waiting or running): its concurrency.
    in_flight: Counter,
    /// Why the last provisioned environment failed to initialise, and when
    /// provisioning is tried again.
    provision_failure: Option<String>,
    provision_retry_at: Option<Instant>,
    pending: VecDeque<Invocation>,
    /// The specialisation of the function's current revision, and its
    /// (revision id, template). The runtime section is made per environment:
    /// each has its own log stream, as on Lambda.
    template: Option<(String, SpecTemplate)>,
}

pub struct Supervisor {
    opts: ServeOptions,
    poll: Poll,
    listener: UnixListener,
    signals: SignalFd,
    registry: Registry,
    cgroups: CgroupManager,
    python: HostPython,
    host_cpus: u32,
    seccomp_bpf: Vec<u8>,
    logs: LogStore,
    runtime_dir: PathBuf,
    zygote: Option<Zygote>,
    zygote_generation: u64,
    /// How blanks are made, and the runtime section of their spawn request.
    blank_template: BlankTemplate,
    blank_runtime: Box<RawValue>,
    /// What container image functions' blanks are made of (server/image.rs).
    image_host: image::ImageHost,
    /// The host's node, and how node blanks are made (None: no nodejs
    /// runtime on this host).
    node: Option<NodeBlanks>,
    /// Blanks ready to be specialised (Python ones, then node ones), and no
    /// blank is made before this instant (after one failed, so a broken host
    /// does not spin).
    blanks: Vec<u64>,
    node_blanks: Vec<u64>,
    /// Whether a nodejs function exists (node blanks are kept only then):
    /// recomputed by `functions_changed` when a function is created,
    /// deleted or given another runtime, not on the invoke path.
    node_functions: bool,
    blank_backoff_until: Instant,
    conns: HashMap<Token, Conn>,
    owners: HashMap<Token, Owner>,
    envs: HashMap<u64, Env>,
    pools: HashMap<String, Pool>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    next_token: usize,
    next_env: u64,
    /// Names this run's environments (`<run_id>-<n>`).
    run_id: String,
    next_timer: u64,
    /// Environments whose log pipe still has data past the read budget.
    log_backlog: Vec<u64>,
    /// The buffer every read goes through, allocated once.
    scratch: Vec<u8>,
    /// Ended environments whose processes or cgroup are not gone yet.
    dying: HashMap<u64, Dying>,
    /// Functions with invokes waiting for room for a new environment.
    starved: BTreeSet<String>,
    /// DeleteFunction requests waiting for the function's environments to end.
    deletes: Vec<(String, Token, serde_json::Value)>,
    /// The account's concurrency limit and in-flight counts.
    account: Account,
    metrics: Metrics,
    /// Asynchronous invocations: the store, the queue, idempotency keys.
    events: events::Events,
    /// Packages being unpacked off the loop.
    staging: staging::Staging,
    shutting_down: bool,
}

pub(super) fn say(msg: std::fmt::Arguments) {
    eprintln!("lambdalet: {msg}");
}

macro_rules! info {
    ($($t:tt)*) => { $crate::supervisor::server::say(format_args!($($t)*)) };
}

mod capacity;
mod events;
mod image;
mod staging;

impl Supervisor {
    pub fn new(opts: ServeOptions) -> Result<Supervisor, Box<dyn std::error::Error>> {
        let state_dir = &opts.state_dir;
        std::fs::create_dir_all(state_dir)
            .map_err(|e| format!("cannot create the state dir {}: {e}", state_dir.display()))?;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))?;

        let python = HostPython::discover(opts.python.as_deref())?;
        info!(
            "python {} at {} (prefix {})",
            python.version,
            python.executable.display(),
            python.base_prefix.display()
        );
        let host_node = HostNode::discover(opts.node.as_deref())?;
        match &host_node {
            Some(node) => info!("node {} at {}", node.version, node.executable.display()),
            None => info!("no node on PATH: the nodejs runtime is unavailable"),
        }
        let proc_self_cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
        let cgroups = CgroupManager::detect(
            Path::new("/sys/fs/cgroup"),
            &proc_self_cgroup,
            opts.cgroup_parent.as_deref(),
        )?;
        cgroups.prepare()?;
        // Whatever a previous run that was killed left behind goes first.
        let stale = cgroups.remove_stale()?;
        if stale > 0 {
            info!("removed {stale} environment cgroup(s) left by a previous run");
        }
        let seccomp_bpf = seccomp::default_filter()?;
        let registry = Registry::open(state_dir)?;
        // No environment of a previous run is alive any more (remove_stale
        // killed them), so no code revision but the current ones is in use.
        let names: Vec<String> = registry
            .list()
            .map(|f| f.spec.name.clone())
            .chain(registry.deleted_with_code()?)
            .collect();
        for name in names {
            if let Err(e) = registry.prune_code(&name, &BTreeSet::new()) {
                info!("cannot prune the old code of {name}: {e}");
            }
        }
        let logs = LogStore::open(
            &state_dir.join("logs"),
            super::logs::DEFAULT_MAX_BYTES_PER_FUNCTION,
        )?;
        let runtime_dir = zygote::install_python_runtime(state_dir)?;
        // The empty directory every environment mounts its own root tmpfs on,
        // in its own mount namespace.
        let rootfs_dir = state_dir.join("rootfs");
        std::fs::create_dir_all(&rootfs_dir)?;

        pidfd::become_subreaper()?;

        let poll = Poll::new()?;
        let listener = bind_socket(&opts)?;
        let mut sigs = SigSet::empty();
        sigs.add(Signal::SIGTERM);
        sigs.add(Signal::SIGINT);
        sigs.thread_block()?;
        let signals = SignalFd::with_flags(&sigs, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

        let host_layout = HostLayout::discover(Path::new("/"))?;
        let cap_last_cap = host::cap_last_cap(Path::new("/proc"))?;
        let functions_dir = registry.functions_dir().to_path_buf();
        let blank_template = BlankTemplate::new(&BlankInputs {
            new_root: &rootfs_dir,
            functions_dir: &functions_dir,
            python: &python,
            cap_last_cap,
            host: &host_layout,
            host_network: false,
        })?;
        let blank_runtime = RawValue::from_string(
            serde_json::json!({
                "python_prefix_host": python.base_prefix,
                "python_prefix_sandbox": LANG_DIR,
            })
            .to_string(),
        )?;
        let node = match host_node {
            Some(host) => {
                let runtime_dir = zygote::install_node_runtime(state_dir)?;
                Some(NodeBlanks {
                    template: blank_template.with_node(&host.executable, &runtime_dir)?,
                    runtime: node_blank_runtime(&python, &seccomp_bpf)?,
                    host,
                })
            }
            None => None,
        };
        let max_concurrency = opts.max_concurrency;
        let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), STORE)?);
        // mio allows one Waker per Poll: the unpacking threads share the
        // store's, and a wake-up looks at both.
        let staging = staging::Staging::new(std::sync::Arc::clone(&waker));
        let (store, loaded) = Store::open(state_dir, waker)?;
        let now = events::now_ms();
        let mut queue = Queue::new(opts.async_time_scale, loaded.next_seq);
        let queued = loaded.events.len();
        for meta in loaded.events {
            queue.insert(meta, now);
        }
        if queued > 0 {
            info!("{queued} queued event(s) recovered from the store");
        }
        let keys = loaded
            .keys
            .into_iter()
            .map(|k| {
                let state = events::KeyState::Done {
                    request_id: k.request_id,
                    expires_unix_ms: k.expires_unix_ms,
                };
                ((k.function, k.key), state)
            })
            .collect();
        let events = events::Events {
            store,
            queue,
            tickets: HashMap::new(),
            next_ticket: 1,
            keys,
            dirty: queued > 0,
            timer_at: None,
            drop_backlog: loaded.dead,
            dropping: false,
            tombstones: loaded.tombstones,
        };
        let mut sup = Supervisor {
            host_cpus: host::host_cpus(),
            opts,
            poll,
            listener,
            signals,
            registry,
            cgroups,
            python,
            seccomp_bpf,
            logs,
            runtime_dir,
            zygote: None,
            zygote_generation: 0,
            blank_template,
            blank_runtime,
            image_host: image::ImageHost {
                new_root: rootfs_dir,
                host: host_layout,
                cap_last_cap,
            },
            node,
            blanks: Vec::new(),
            node_blanks: Vec::new(),
            node_functions: false,
            blank_backoff_until: Instant::now(),
            conns: HashMap::new(),
            owners: HashMap::new(),
            envs: HashMap::new(),
            pools: HashMap::new(),
            timers: BinaryHeap::new(),
            next_token: FIRST_DYNAMIC,
            next_env: 1,
            run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
            next_timer: 1,
            log_backlog: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            dying: HashMap::new(),
            starved: BTreeSet::new(),
            deletes: Vec::new(),
            account: Account::new(max_concurrency),
            metrics: Metrics::new(),
            events,
            staging,
            shutting_down: false,
        };
        sup.update_reserved_total();
        // The blanks are made once the zygote is up, below.
        sup.node_functions = sup
            .registry
            .list()
            .any(|f| f.spec.runtime == Runtime::Nodejs);
        sup.poll
            .registry()
            .register(&mut sup.listener, LISTENER, Interest::READABLE)?;
        let sfd = sup.signals.as_raw_fd();
        sup.poll
            .registry()
            .register(&mut SourceFd(&sfd), SIGNALS, Interest::READABLE)?;
        sup.recover_events();
        sup.start_zygote()?;
        sup.refill_blanks();
        sup.provision_all();
        sup.add_timer(HOUSEKEEPING, Timer::Housekeeping);
        Ok(sup)
    }

    pub fn run(mut self) -> Result<(), Box<dyn std::error::Error>> {
        info!(
            "serving on {} (state {}, {} functions)",
            self.opts.socket.display(),
            self.opts.state_dir.display(),
            self.registry.list().count()
        );
        let mut events = Events::with_capacity(1024);
        while !self.shutting_down {
            let timeout = if !self.log_backlog.is_empty() {
                Some(Duration::ZERO)
            } else {
                self.timers
                    .peek()
                    .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            for event in events.iter() {
                self.dispatch(
                    event.token(),
                    event.is_readable() || event.is_read_closed(),
                    event.is_writable(),
                );
            }
            self.drain_log_backlog();
            self.fire_timers();
            if self.events.dirty {
                self.dispatch_events();
            }
        }
        self.shutdown();
        Ok(())
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool) {
        match token {
            LISTENER => self.accept(),
            ZYGOTE => {
                if writable {
                    self.flush_zygote();
                }
                if readable {
                    self.read_zygote();
                }
            }
            ZYGOTE_PID => self.zygote_exited(),
            STORE => {
                self.store_committed();
                self.staged();
            }
            SIGNALS => {
                while let Ok(Some(sig)) = self.signals.read_signal() {
                    info!("signal {}: shutting down", sig.ssi_signo);
                    self.shutting_down = true;
                }
            }
            t => match self.owners.get(&t).copied() {
                Some(Owner::Conn) => {
                    if writable {
                        self.flush_conn(t);
                    }
                    // Also after a write: reading may have paused for
                    // backpressure. Requests are only ever read here, at the
                    // top of the loop, never from inside a reply.
                    if readable || writable {
                        self.read_conn(t);
                    }
                }
                Some(Owner::Worker(env)) => self.worker_readable(env),
                Some(Owner::Log(env)) => self.log_readable(env),
                Some(Owner::Pid(env)) => self.env_exited(env),
                None => {}
            },
        }
    }

    fn token(&mut self, owner: Owner) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        self.owners.insert(t, owner);
        t
    }

    fn add_timer(&mut self, after: Duration, timer: Timer) {
        self.timers.push(Reverse((Instant::now() + after, timer)));
    }

    // ---- the zygote -------------------------------------------------------

    fn start_zygote(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        self.zygote_generation += 1;
        let mut z = Zygote::start(
            &self.python.executable,
            &self.runtime_dir,
            self.zygote_generation,
        )?;
        let fd = z.channel_fd();
        self.poll.registry().register(
            &mut SourceFd(&fd),
            ZYGOTE,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let pfd = z.pidfd.as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&pfd), ZYGOTE_PID, Interest::READABLE)?;
        // Requests queued for a zygote that died go to this one.
        if let Some(old) = self.zygote.as_mut() {
            for (msg, fds) in old.take_queue() {
                z.spawn(msg, fds)?;
            }
        }
        self.zygote = Some(z);
        Ok(())
    }

    fn flush_zygote(&mut self) {
        if let Some(z) = self.zygote.as_mut() {
            if let Err(e) = z.flush() {
                info!("zygote channel: {e}");
            }
        }
    }

    fn read_zygote(&mut self) {
        loop {
            let Some(z) = self.zygote.as_mut() else {
                return;
            };
            match z.recv() {
                Ok(Some(ZygoteReport::Hello { pid, preload_ms })) => {
                    z.ready_at = Some(Instant::now());
                    info!(
                        "python zygote {pid} ready in {:.1} ms (preload {preload_ms:.1} ms)",
                        z.started.elapsed().as_secs_f64() * 1000.0
                    );
                }
                Ok(Some(ZygoteReport::Spawned { .. })) => {}
                Ok(Some(ZygoteReport::SpawnFailed { env_id, error })) => {
                    info!("zygote could not fork {env_id}: {error}");
                    // The environment's worker socket closes with the request,
                    // which ends the environment through the normal path.
                }
                Ok(None) => return,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return,
                Err(e) => {
                    info!("zygote channel: {e}");
                    return;
                }
            }
        }
    }

    fn zygote_exited(&mut self) {
        let Some(z) = self.zygote.as_ref() else {
            return;
        };
        let status = match z.pidfd.try_wait() {
            Ok(Some(s)) => s,
            _ => return,
        };
        let fd = z.channel_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        let pfd = z.pidfd.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&pfd));
        if self.shutting_down {
            return;
        }
        info!(
            "python zygote {} died ({}); restarting it",
            z.pidfd.pid(),
            status.describe()
        );
        if let Err(e) = self.start_zygote() {
            info!("cannot restart the zygote: {e}; retrying in 1 s");
            self.zygote = None;
        }
    }

    // ---- client connections -----------------------------------------------

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    // unix(7) SO_PEERCRED: who is on the other end decides
                    // whether host paths may be named in requests.
                    let peer_uid = nix::sys::socket::getsockopt(&stream, sockopt::PeerCredentials)
                        .map(|c| c.uid())
                        .unwrap_or(u32::MAX);
                    let t = self.token(Owner::Conn);
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, t, Interest::READABLE)
                        .is_err()
                    {
                        self.owners.remove(&t);
                        continue;
                    }
                    self.conns.insert(
                        t,
                        Conn {
                            stream,
                            rbuf: Vec::new(),
                            wbuf: VecDeque::new(),
                            discarding: false,
                            closed: false,
                            want_write: false,
                            peer_uid,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    info!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn read_conn(&mut self, t: Token) {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut eof = false;
        let mut too_long = 0usize;
        {
            let Some(c) = self.conns.get_mut(&t) else {
                return;
            };
            let chunk = &mut self.scratch[..];
            loop {
                if c.wbuf.len() > MAX_CONN_BACKLOG {
                    break;
                }
                match c.stream.read(chunk) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        let drained = n < chunk.len();
                        let mut data = &chunk[..n];
                        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
                            if c.discarding {
                                c.discarding = false;
                                too_long += 1;
                            } else {
                                c.rbuf.extend_from_slice(&data[..pos]);
                                lines.push(std::mem::take(&mut c.rbuf));
                            }
                            data = &data[pos + 1..];
                        }
                        if !c.discarding {
                            c.rbuf.extend_from_slice(data);
                            if c.rbuf.len() > MAX_LINE_BYTES {
                                c.rbuf = Vec::new();
                                c.discarding = true;
                            }
                        }
                        // A short read emptied the socket: the next byte to
                        // arrive brings a new edge (epoll(7)), so the read
                        // that would return EAGAIN can be saved.
                        if drained {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        for _ in 0..too_long {
            let err = WireError::new(
                ErrorKind::RequestTooLargeException,
                format!("the request line is longer than {MAX_LINE_BYTES} bytes"),
            );
            self.reply(t, &serde_json::Value::Null, Err(err));
        }
        for line in lines {
            self.handle_line(t, &line);
        }
        if eof {
            if let Some(c) = self.conns.get_mut(&t) {
                c.closed = true;
            }
            self.maybe_close_conn(t);
        }
    }

    fn flush_conn(&mut self, t: Token) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        let mut blocked = false;
        while !c.wbuf.is_empty() {
            let (a, _) = c.wbuf.as_slices();
            match c.stream.write(a) {
                Ok(n) => {
                    c.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.wbuf.clear();
                    c.closed = true;
                    break;
                }
            }
        }
        // Writable events only while something waits to be written: with
        // edge-triggered epoll, a permanent WRITABLE interest wakes the loop
        // once more for every reply the client reads.
        if blocked != c.want_write {
            c.want_write = blocked;
            let interest = if blocked {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self.poll.registry().reregister(&mut c.stream, t, interest);
        }
        self.maybe_close_conn(t);
    }

    fn maybe_close_conn(&mut self, t: Token) {
        if let Some(c) = self.conns.get(&t) {
            if c.closed && c.wbuf.is_empty() {
                let mut c = self.conns.remove(&t).expect("present");
                let _ = self.poll.registry().deregister(&mut c.stream);
                self.owners.remove(&t);
            }
        }
    }

    fn reply(&mut self, t: Token, id: &serde_json::Value, result: Result<String, WireError>) {
        let line = match result {
            Ok(body) => body,
            Err(e) => protocol::error_line(id, &e),
        };
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        if c.closed && c.wbuf.is_empty() {
            return;
        }
        c.wbuf.extend(line.as_bytes());
        c.wbuf.push_back(b'\n');
        self.flush_conn(t);
    }

    fn reply_ok(&mut self, t: Token, id: &serde_json::Value, result: &impl serde::Serialize) {
        let line = protocol::success_line(id, result);
        self.reply(t, id, Ok(line));
    }

    // ---- operations ---------------------------------------------------------

    fn handle_line(&mut self, t: Token, line: &[u8]) {
        let text = match std::str::from_utf8(line) {
            Ok(s) => s,
            Err(e) => {
                let err = WireError::new(
                    ErrorKind::InvalidRequestContentException,
                    format!("the request line is not UTF-8: {e}"),
                );
                return self.reply(t, &serde_json::Value::Null, Err(err));
            }
        };
        if text.trim().is_empty() {
            return;
        }
        let req: RequestLine = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                // Try to recover the id so the client can match the error.
                let id = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(serde_json::Value::Null);
                let err = WireError::new(
                    ErrorKind::InvalidRequestContentException,
                    format!(
                        "could not parse the request: {e}; send one JSON object per line: {{\"id\": 1, \"op\": \"Invoke\", \"params\": {{...}}}}"
                    ),
                );
                return self.reply(t, &id, Err(err));
            }
        };
        let id = req.id.clone();
        let params = req.params.map(|p| p.get()).unwrap_or("{}");
        let result = match req.op.as_str() {
            op::INVOKE => return self.op_invoke(t, id, params),
            op::CREATE_FUNCTION | op::UPDATE_FUNCTION_CODE | op::PUBLISH_LAYER_VERSION => {
                return self.op_staged(t, id, &req.op, params)
            }
            op::UPDATE_FUNCTION_CONFIGURATION => self.op_update_config(params),
            op::GET_FUNCTION => parse::<protocol::FunctionName>(params).and_then(|p| {
                self.registry
                    .get(&p.function_name)
                    .map(|f| ok_json(&f.configuration()))
                    .ok_or_else(|| not_found(&p.function_name))
            }),
            op::LIST_FUNCTIONS => parse::<protocol::ListFunctions>(params).map(|_| {
                ok_json(&FunctionList {
                    functions: self.registry.list().map(Function::configuration).collect(),
                })
            }),
            op::DELETE_FUNCTION => return self.op_delete(t, id, params),
            op::PUT_FUNCTION_CONCURRENCY => self.op_put_concurrency(params),
            op::GET_FUNCTION_CONCURRENCY => self.op_get_concurrency(params),
            op::DELETE_FUNCTION_CONCURRENCY => self.op_delete_concurrency(params),
            op::PUT_PROVISIONED_CONCURRENCY_CONFIG => self.op_put_provisioned(params),
            op::GET_PROVISIONED_CONCURRENCY_CONFIG => self.op_get_provisioned(params),
            op::DELETE_PROVISIONED_CONCURRENCY_CONFIG => self.op_delete_provisioned(params),
            op::GET_ACCOUNT_SETTINGS => self.op_account_settings(params),
            op::GET_METRICS => self.op_metrics(params),
            op::PUT_FUNCTION_EVENT_INVOKE_CONFIG => {
                self.op_put_event_invoke_config(t, params, false)
            }
            op::UPDATE_FUNCTION_EVENT_INVOKE_CONFIG => {
                self.op_put_event_invoke_config(t, params, true)
            }
            op::GET_FUNCTION_EVENT_INVOKE_CONFIG => self.op_get_event_invoke_config(params),
            op::DELETE_FUNCTION_EVENT_INVOKE_CONFIG => self.op_delete_event_invoke_config(params),
            op::GET_EVENT_QUEUE => self.op_get_event_queue(params),
            op::LIST_LAYERS => parse::<protocol::ListLayers>(params)
                .map(|p| ok_json(&self.registry.list_layers(p.compatible_runtime.as_deref()))),
            op::LIST_LAYER_VERSIONS => parse::<protocol::LayerName>(params).and_then(|p| {
                let runtime = p.compatible_runtime.as_deref();
                Ok(ok_json(
                    &self.registry.list_layer_versions(&p.layer_name, runtime)?,
                ))
            }),
            op::GET_LAYER_VERSION => parse::<protocol::LayerVersionNumber>(params).and_then(|p| {
                Ok(ok_json(
                    &self
                        .registry
                        .get_layer_version(&p.layer_name, p.version_number)?,
                ))
            }),
            op::DELETE_LAYER_VERSION => {
                parse::<protocol::LayerVersionNumber>(params).and_then(|p| {
                    self.registry
                        .delete_layer_version(&p.layer_name, p.version_number)?;
                    Ok("{}".to_owned())
                })
            }
            op::GET_LOGS => parse::<protocol::GetLogs>(params).and_then(|p| {
                let name = match self.registry.get(&p.function_name) {
                    Some(f) => f.spec.name.clone(),
                    None => return Err(not_found(&p.function_name)),
                };
                let lines = self
                    .logs
                    .tail(&name, p.limit.unwrap_or(1000))
                    .map_err(|e| WireError::service(format!("cannot read the logs: {e}")))?;
                Ok(ok_json(&LogLines { lines }))
            }),
            other => Err(WireError::new(
                ErrorKind::InvalidRequestContentException,
                format!("unknown op {other:?}; the ops are {}", op::ALL.join(", ")),
            )),
        };
        let result = result.map(|raw| {
            let raw = RawValue::from_string(raw).expect("serialised JSON");
            protocol::success_line(&id, &raw)
        });
        self.reply(t, &id, result);
    }

    /// `field`: `Code` of a function, `Content` of a layer.
    fn check_code_path(
        &self,
        t: Token,
        code: &protocol::FunctionCode,
        field: &str,
    ) -> Result<(), WireError> {
        let uid = self.conns.get(&t).map_or(u32::MAX, |c| c.peer_uid);
        if code.image_uri.is_some() && uid != 0 {
            return Err(WireError::invalid(format!(
                "{field}.ImageUri names an image layout on the supervisor's host and is accepted from root clients only (this client is uid {uid})"
            )));
        }
        if code.path.is_some() && uid != 0 {
            return Err(WireError::invalid(format!(
                "{field}.Path names a file on the supervisor's host and is accepted from root clients only (this client is uid {uid}); send the package as {field}.ZipFile"
            )));
        }
        Ok(())
    }

    fn op_update_config(&mut self, params: &str) -> Result<String, WireError> {
        let req: protocol::UpdateFunctionConfiguration = parse(params)?;
        self.check_runtime_available(req.runtime.as_deref())?;
        let f = self.registry.update_configuration(&req)?;
        let (name, conf) = (f.spec.name.clone(), f.configuration());
        self.retire_function_envs(&name);
        self.provision(&name);
        self.functions_changed();
        Ok(ok_json(&conf))
    }

    /// A function was created or deleted, or its runtime changed.
    fn functions_changed(&mut self) {
        self.node_functions = self
            .registry
            .list()
            .any(|f| f.spec.runtime == Runtime::Nodejs);
        if self.node_functions {
            self.refill_blanks();
        }
    }

    /// DeleteFunction answers once every environment of the function has
    /// ended, so the caller sees no process, mount or cgroup of it afterwards;
    /// the loop serves everyone else meanwhile.
    fn op_delete(&mut self, t: Token, id: serde_json::Value, params: &str) {
        let req: protocol::FunctionName = match parse(params) {
            Ok(r) => r,
            Err(e) => return self.reply(t, &id, Err(e)),
        };
        // The name may be given as an ARN: key everything on the registry's.
        let f = match self.registry.delete(&req.function_name) {
            Ok(f) => f,
            Err(e) => return self.reply(t, &id, Err(e.into())),
        };
        let name = f.spec.name.clone();
        if f.concurrency.reserved.is_some() {
            self.update_reserved_total();
        }
        if let Some(mut pool) = self.pools.remove(&name) {
            for inv in pool.pending.drain(..) {
                let err = WireError::not_found(format!(
                    "Function not found: {} (deleted while the invoke waited)",
                    f.configuration().function_arn
                ));
                self.answer_error(inv, err);
            }
        }
        if let Err(e) = self.logs.remove(&name) {
            info!("cannot remove the logs of {name}: {e}");
        }
        self.metrics.forget(&name);
        self.drop_function_events(&name);
        self.functions_changed();
        info!("deleted function {name}");
        self.deletes.push((name.clone(), t, id));
        for env in self.env_ids_of(&name) {
            self.destroy_env(env, EndReason::Deleted);
        }
        if !self.function_has_envs(&name) {
            if let Err(e) = self.registry.prune_code(&name, &BTreeSet::new()) {
                info!("cannot remove the code of {name}: {e}");
            }
        }
        self.answer_deletes(&name);
    }

    fn op_invoke(&mut self, t: Token, id: serde_json::Value, params: &str) {
        // The payload limit is checked on the raw bytes before parsing.
        if params.len() > MAX_SYNC_PAYLOAD_BYTES + 64 * 1024 {
            let err = WireError::new(
                ErrorKind::RequestTooLargeException,
                format!(
                    "Request must be smaller than {MAX_SYNC_PAYLOAD_BYTES} bytes for the InvokeFunction operation"
                ),
            );
            return self.reply(t, &id, Err(err));
        }
        let req: protocol::Invoke = match parse(params) {
            Ok(r) => r,
            Err(e) => return self.reply(t, &id, Err(e)),
        };
        let payload = req
            .payload
            .unwrap_or_else(|| RawValue::from_string("{}".to_string()).expect("valid"));
        if payload.get().len() > MAX_SYNC_PAYLOAD_BYTES {
            let err = WireError::new(
                ErrorKind::RequestTooLargeException,
                format!(
                    "Request must be smaller than {MAX_SYNC_PAYLOAD_BYTES} bytes for the InvokeFunction operation (the payload has {} bytes)",
                    payload.get().len()
                ),
            );
            return self.reply(t, &id, Err(err));
        }
        let client_context = match req.client_context.as_deref().map(decode_client_context) {
            Some(Err(e)) => return self.reply(t, &id, Err(e)),
            Some(Ok(v)) => Some(v),
            None => None,
        };
        if req.idempotency_key.is_some() && req.invocation_type != InvocationType::Event {
            let err = WireError::invalid(
                "IdempotencyKey is for InvocationType Event only: a synchronous invoke is answered with its result, so a retry is the caller's to make",
            );
            return self.reply(t, &id, Err(err));
        }
        match req.invocation_type {
            InvocationType::RequestResponse => {}
            InvocationType::Event => {
                let key = req.idempotency_key;
                return self.accept_event(t, id, &req.function_name, key, payload, client_context);
            }
            InvocationType::DryRun => return self.dry_run(t, id, &req.function_name),
        }
        let Some(f) = self.registry.get(&req.function_name) else {
            return self.reply(t, &id, Err(not_found(&req.function_name)));
        };
        let function = f.spec.name.clone();
        let reserved = f.concurrency.reserved;
        let pool = self.pools.entry(function.clone()).or_default();
        let slot = match self.account.admit(&pool.in_flight, reserved) {
            Ok(slot) => slot,
            Err(throttle) => {
                self.metrics.throttled(&function, throttle.reason());
                return self.reply(t, &id, Err(throttle.into()));
            }
        };
        pool.pending.push_back(Invocation {
            request_id: uuid::Uuid::new_v4().to_string(),
            reply_to: Some((t, id)),
            function: function.clone(),
            payload,
            log_type: req.log_type,
            client_context,
            started: None,
            tail: None,
            log: Vec::new(),
            log_bytes: 0,
            timer: 0,
            slot: Some(slot),
            event: None,
        });
        self.schedule(&function);
    }

    // ---- scheduling ---------------------------------------------------------

    /// Match waiting invokes of `function` with idle environments, and start
    /// new environments for the ones that remain.
    fn schedule(&mut self, function: &str) {
        self.schedule_up_to(function, usize::MAX);
    }

    /// `schedule`, starting at most `limit` new environments; returns how
    /// many it started.
    fn schedule_up_to(&mut self, function: &str, limit: usize) -> usize {
        loop {
            let Some(pool) = self.pools.get_mut(function) else {
                return 0;
            };
            if pool.pending.is_empty() {
                return 0;
            }
            // Provisioned environments first (Lambda spills over to
            // on-demand ones only when they are all busy).
            let Some(env_id) = pool.idle_provisioned.pop().or_else(|| pool.idle.pop()) else {
                break;
            };
            let inv = pool.pending.pop_front().expect("non-empty");
            self.run_on(env_id, inv);
        }
        let (pending, starting) = {
            let pool = self.pools.get(function).expect("exists");
            (pool.pending.len(), pool.starting)
        };
        let mut started_here = 0;
        for _ in starting..pending.min(starting.saturating_add(limit)) {
            if self.starting_count() >= self.max_starting() {
                // The next start that finishes gives its slot to these
                // (schedule_waiting).
                break;
            }
            if !self.make_room() {
                // Every on-demand environment is busy or starting: these
                // invokes wait for one (admission keeps them within the
                // account's limit, so one will finish).
                self.starved.insert(function.to_string());
                break;
            }
            let started = self.start_env(function, false);
            let pool = self.pools.get_mut(function).expect("exists");
            match started {
                Ok(_) => {
                    pool.starting += 1;
                    started_here += 1;
                }
                Err(e) => {
                    info!("cannot start an environment for {function}: {e}");
                    if let Some(inv) = pool.pending.pop_front() {
                        self.answer_error(
                            inv,
                            WireError::service(format!("cannot start an environment: {e}")),
                        );
                    }
                }
            }
        }
        // Blanks taken here are replaced once the environments they became
        // have answered (or at the next housekeeping): making one now would
        // compete with those cold starts for the CPU.
        if (self.blanks.is_empty() && self.opts.prewarm > 0)
            || (self.node_blanks.is_empty() && self.node.is_some() && self.opts.prewarm_node > 0)
        {
            self.refill_blanks();
        }
        started_here
    }

    /// Environments being made now: blanks not yet ready (for the pool or
    /// for an invoke) and environments running their init.
    fn starting_count(&self) -> usize {
        self.envs
            .values()
            .filter(|e| {
                matches!(
                    e.state,
                    EnvState::Blank { ready: false } | EnvState::Starting
                )
            })
            .count()
    }

    fn max_starting(&self) -> usize {
        STARTS_PER_CPU * self.host_cpus.max(1) as usize
    }

    /// A start finished (or failed): its slot goes to invokes waiting for
    /// an environment first, then to provisioned environments, then to the
    /// blank pool.
    fn schedule_waiting(&mut self) {
        // Fewest environments first, one start per function per turn: a
        // freed slot goes to the function that has least, so that under load
        // every function gets environments, not whichever the map lists first.
        let mut waiting: Vec<(usize, String)> = self
            .pools
            .iter()
            .filter(|(_, p)| p.pending.len() > p.starting)
            .map(|(f, p)| {
                let running = (p.in_flight.get() as usize).saturating_sub(p.pending.len());
                let envs = running + p.starting + p.idle.len() + p.idle_provisioned.len();
                (envs, f.clone())
            })
            .collect();
        waiting.sort();
        while !waiting.is_empty() {
            waiting.retain(|(_, f)| self.schedule_up_to(f, 1) > 0);
        }
        if self.starting_count() < self.max_starting() {
            self.provision_all();
            self.refill_blanks();
        }
    }

    /// Whether one more on-demand environment may be made: the account's limit
    /// bounds them (invokes in flight never exceed it, but idle environments
    /// of other functions may fill it), so past it the least recently used
    /// idle on-demand environment is reclaimed first. Provisioned
    /// environments and the blank pool are bounded on their own.
    fn make_room(&mut self) -> bool {
        let on_demand = self
            .envs
            .values()
            .filter(|e| {
                let pooled_blank =
                    matches!(e.state, EnvState::Blank { .. }) && e.reserved_for.is_none();
                !e.provisioned && !pooled_blank
            })
            .count();
        if on_demand < self.account.max() as usize {
            return true;
        }
        let lru = self
            .envs
            .values()
            .filter_map(|e| match e.state {
                EnvState::Idle { since } if !e.provisioned => Some((since, e.id)),
                _ => None,
            })
            .min();
        match lru {
            Some((_, id)) => {
                self.destroy_env(id, EndReason::Reclaimed);
                true
            }
            None => false,
        }
    }

    /// Start an environment for `function`: specialise a ready blank of its
    /// kind, or make one for it when none is ready. The new environment's id.
    fn start_env(
        &mut self,
        function: &str,
        provisioned: bool,
    ) -> Result<u64, Box<dyn std::error::Error>> {
        let runtime = self
            .registry
            .get(function)
            .ok_or_else(|| format!("function {function} vanished"))?
            .spec
            .runtime;
        let kind = BlankKind::of(runtime);
        match self.take_pooled_blank(function, kind) {
            Some(blank) => {
                self.specialize(blank, function, provisioned)
                    .inspect_err(|_| self.destroy_env(blank, EndReason::Failed))?;
                Ok(blank)
            }
            None => {
                let id = self.spawn_blank(Some(function.to_string()), kind)?;
                if let Some(env) = self.envs.get_mut(&id) {
                    env.provisioned = provisioned;
                }
                Ok(id)
            }
        }
    }

    fn ready_blanks(&mut self, kind: BlankKind) -> &mut Vec<u64> {
        match kind {
            BlankKind::Python => &mut self.blanks,
            BlankKind::Node => &mut self.node_blanks,
        }
    }

    /// A function may only be given a runtime this host has.
    fn check_runtime_available(&self, runtime: Option<&str>) -> Result<(), WireError> {
        let Some(Ok(Runtime::Nodejs)) = runtime.map(Runtime::parse) else {
            return Ok(());
        };
        if self.node.is_none() {
            return Err(WireError::invalid(format!(
                "Runtime {}: this host has no node (none on the supervisor's PATH): \
                 install Node.js or start lambdalet serve with --node PATH",
                runtime.unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// Start a blank environment: namespaced and pivoted into the generic
    /// root by the zygote's child, waiting to be given a function. Made ahead
    /// of time (`--prewarm`, `--prewarm-node`), or for `reserved_for` when
    /// none was ready. A node blank starts its node before it says `blank`.
    fn spawn_blank(
        &mut self,
        reserved_for: Option<String>,
        kind: BlankKind,
    ) -> Result<u64, Box<dyn std::error::Error>> {
        let id = self.next_env;
        self.next_env += 1;
        // Unique across runs too: a restart must not reuse the cgroup name
        // of an environment a killed run left behind.
        let env_id = format!("{}-{id}", self.run_id);
        // The smallest function's memory with init's CPU: the blank itself
        // needs a few MB; its function's limits come with the specialisation.
        let limits = Limits::for_function(*crate::config::MEMORY_MB.start(), self.host_cpus)
            .for_init(self.host_cpus);
        let cgroup = self.cgroups.create(&env_id, &limits)?;

        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        // The kernel attaches the sender's pid to what PID 1 sends: unix(7).
        setsockopt(&ours, sockopt::PassCred, &true)?;
        zygote::set_nonblocking(ours.as_raw_fd())?;
        let (log_r, log_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Only our end is non-blocking: the function's stdout stays blocking.
        zygote::set_nonblocking(log_r.as_raw_fd())?;

        // A Python blank made for a container image function has the
        // image's root (server/image.rs).
        let mut image_root = None;
        let message = match (kind, self.node.as_ref()) {
            (BlankKind::Python, _) => {
                match self.blank_request(reserved_for.as_deref(), &env_id, cgroup.procs_files()) {
                    Ok((plan, runtime, root)) => {
                        image_root = root;
                        spawn_message(&env_id, &plan, &runtime)
                    }
                    Err(e) => {
                        let _ = cgroup.remove();
                        return Err(e);
                    }
                }
            }
            (BlankKind::Node, Some(node)) => {
                let plan = node.template.for_env(&env_id, cgroup.procs_files());
                spawn_message(&env_id, &plan, &node.runtime)
            }
            (BlankKind::Node, None) => {
                let _ = cgroup.remove();
                return Err("this host has no node: the nodejs runtime is unavailable".into());
            }
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e.into());
            }
        };
        let Some(zygote) = self.zygote.as_mut() else {
            let _ = cgroup.remove();
            return Err("the python zygote is not running".into());
        };
        let generation = zygote.generation;
        if let Err(e) = zygote.spawn(message, [theirs, log_w]) {
            let _ = cgroup.remove();
            return Err(e.into());
        }

        let worker_token = self.token(Owner::Worker(id));
        let log_token = self.token(Owner::Log(id));
        let pid_token = self.token(Owner::Pid(id));
        let mut env = Env::new(NewEnv {
            id,
            env_id,
            worker: ours,
            worker_token,
            log: log_r,
            log_token,
            pid_token,
            cgroup,
            limits,
            zygote_generation: generation,
            reserved_for,
            kind,
        });
        env.image_root = image_root;
        self.poll
            .registry()
            .register(&mut env.worker, worker_token, Interest::READABLE)?;
        self.poll
            .registry()
            .register(&mut env.log, log_token, Interest::READABLE)?;
        self.envs.insert(id, env);
        self.add_timer(INIT_TIMEOUT, Timer::InitDeadline(id));
        Ok(id)
    }

    /// Give the blank `id` to `function`: its limits, then one line with its
    /// code, /tmp, identity and filter (the specialisation) and its runtime
    /// section. The environment answers `ready` or `init_error`.
    fn specialize(
        &mut self,
        id: u64,
        function: &str,
        provisioned: bool,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let f = self
            .registry
            .get(function)
            .ok_or_else(|| format!("function {function} vanished"))?;
        let spec = f.spec.clone();
        let kind = self.envs.get(&id).map(|e| e.kind);
        if kind != Some(BlankKind::of(spec.runtime)) {
            return Err(format!(
                "{function} runs {}, which a {} blank cannot become",
                spec.runtime,
                kind.map_or("vanished", BlankKind::as_str)
            )
            .into());
        }
        let (revision_id, code_revision) = (f.revision_id.clone(), f.code_revision);
        let pool = self.pools.entry(function.to_string()).or_default();
        if pool
            .template
            .as_ref()
            .is_none_or(|(rev, _)| *rev != revision_id)
        {
            let template = if f.spec.image.is_some() {
                self.image_spec_template(f)?
            } else {
                SpecTemplate::new(&SpecInputs {
                    functions_dir: self.registry.functions_dir(),
                    code_dir: &f.code_dir,
                    opt_dir: f.opt_dir.as_deref(),
                    uid: f.uid,
                    gid: f.uid,
                    tmp_mb: spec.ephemeral_mb,
                    seccomp_bpf: &self.seccomp_bpf,
                })?
            };
            let pool = self.pools.entry(function.to_string()).or_default();
            pool.template = Some((revision_id.clone(), template));
        }
        let pool = self.pools.get(function).expect("made above");
        let (_, template) = pool.template.as_ref().expect("just set");
        let init = if provisioned {
            InitType::Provisioned
        } else {
            InitType::OnDemand
        };
        let mut runtime = runtime_section(
            &spec,
            &self.python,
            self.node.as_ref().map(|n| &n.host),
            init,
        );
        if spec.image.is_some() {
            runtime = image::image_runtime(&runtime, f)?;
        }
        let line = specialize_line(template.plan(), &runtime)?;
        let limits = Limits::for_function(spec.memory_mb, self.host_cpus);
        let env = self.envs.get_mut(&id).ok_or("the blank vanished")?;
        if let Some(cg) = env.cgroup.as_ref() {
            cg.set_limits(&limits.for_init(self.host_cpus))?;
        }
        env.function = function.to_string();
        env.provisioned = provisioned;
        env.revision_id = revision_id;
        env.code_revision = code_revision;
        env.memory_mb = spec.memory_mb;
        env.timeout = Duration::from_secs(u64::from(spec.timeout_s));
        env.limits = limits;
        // A blank made for this invoke counts from its spawn; a pooled
        // blank's cold start begins now.
        if env.reserved_for.take().is_none() {
            env.spawned_at = Instant::now();
        }
        env.phase_started = Instant::now();
        env.state = EnvState::Starting;
        env.send_line(&line)?;
        self.add_timer(INIT_TIMEOUT, Timer::InitDeadline(id));
        Ok(())
    }

    /// Keep `--prewarm` Python blanks, and `--prewarm-node` node blanks
    /// while a nodejs function exists, ready or on their way.
    fn refill_blanks(&mut self) {
        // Cheap tests first: this runs after every invoke.
        let node_short = self.node_functions
            && self.node.is_some()
            && self.node_blanks.len() < self.opts.prewarm_node;
        if (self.blanks.len() >= self.opts.prewarm && !node_short)
            || self.shutting_down
            || Instant::now() < self.blank_backoff_until
        {
            return;
        }
        for (kind, want) in [
            (BlankKind::Python, self.opts.prewarm),
            (
                BlankKind::Node,
                if self.node_functions {
                    self.opts.prewarm_node
                } else {
                    0
                },
            ),
        ] {
            let on_the_way = self
                .envs
                .values()
                .filter(|e| {
                    e.kind == kind
                        && matches!(e.state, EnvState::Blank { ready: false })
                        && e.reserved_for.is_none()
                })
                .count();
            let mut have = self.ready_blanks(kind).len() + on_the_way;
            while have < want && self.starting_count() < self.max_starting() {
                if let Err(e) = self.spawn_blank(None, kind) {
                    info!(
                        "cannot make a {} blank environment: {e}; retrying in {BLANK_BACKOFF:?}",
                        kind.as_str()
                    );
                    self.blank_backoff_until = Instant::now() + BLANK_BACKOFF;
                    return;
                }
                have += 1;
            }
        }
    }

    /// Send `inv` to the idle environment `env_id`.
    fn run_on(&mut self, env_id: u64, mut inv: Invocation) {
        let Some(env) = self.envs.get_mut(&env_id) else {
            // Vanished between idle and now: put the invoke back.
            self.requeue(inv);
            return;
        };
        let now = Instant::now();
        let deadline_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d + env.timeout)
            .unwrap_or_default()
            .as_millis();
        let line = invoke_line(&inv, deadline_ms, &function_arn(&env.function));
        if let Some(cg) = env.cgroup.as_ref() {
            // A kernel without a resettable peak reports the environment's.
            let _ = cg.reset_peak();
            env.oom_kills_before = cg.oom_kills().unwrap_or(0);
        }
        let start = invoke::start_line(&inv.request_id);
        if inv.log_type == LogType::Tail {
            let mut tail = TailBuffer::new();
            tail.push_line(&start);
            inv.tail = Some(tail);
        }
        // The invoke's log lines are written together when it ends: one
        // write per invoke instead of one per line (bounded, see pump_log).
        inv.log.push(start);
        inv.started = Some(now);
        inv.timer = self.next_timer;
        self.next_timer += 1;
        let timer = Timer::Deadline(env_id, inv.timer);
        let timeout = env.timeout;
        let sent = env.send_line(&line);
        if let Err(e) = &sent {
            info!("{}: cannot send the invoke: {e}", env.env_id);
        }
        env.state = EnvState::Busy(Box::new(inv));
        self.timers.push(Reverse((now + timeout, timer)));
        if sent.is_err() {
            self.env_failed(env_id, None);
        }
    }

    fn requeue(&mut self, inv: Invocation) {
        let function = inv.function.clone();
        if self.registry.get(&function).is_none() {
            return self.answer_error(inv, not_found(&function));
        }
        self.pools
            .entry(function.clone())
            .or_default()
            .pending
            .push_front(inv);
        self.schedule(&function);
    }

    // ---- environment events -------------------------------------------------

    fn worker_readable(&mut self, id: u64) {
        let mut lines = Vec::new();
        let Some(env) = self.envs.get_mut(&id) else {
            return;
        };
        let read = env.read_worker(&mut self.scratch, &mut lines);
        let (open, pid) = match read {
            Ok(r) => r,
            Err(e) => {
                info!("{}: {e}", env.env_id);
                (false, None)
            }
        };
        if let Some(pid) = pid {
            match PidFd::open(pid) {
                Ok(pfd) => {
                    let fd = pfd.as_raw_fd();
                    let token = env.pid_token;
                    env.pidfd = Some(pfd);
                    let _ = self.poll.registry().register(
                        &mut SourceFd(&fd),
                        token,
                        Interest::READABLE,
                    );
                }
                Err(e) => info!("{}: pidfd_open({pid}): {e}", env.env_id),
            }
        }
        for line in lines {
            self.worker_line(id, &line);
        }
        if !open {
            // The runtime closed its channel: it is exiting or dead. Its exit
            // status says why (exit status 3, signal: killed, OOM), and the
            // pidfd event that brings it follows at once; a runtime that
            // closed the channel but lingers is killed after CLOSE_GRACE.
            let Some(env) = self.envs.get_mut(&id) else {
                return;
            };
            let exited = env.pidfd.as_ref().map(|p| p.try_wait().ok().flatten());
            match exited {
                Some(None) => {
                    let _ = self.poll.registry().deregister(&mut env.worker);
                    self.add_timer(CLOSE_GRACE, Timer::Closed(id));
                }
                Some(status) => self.env_failed(id, status),
                None => self.env_failed(id, None),
            }
        }
    }

    fn worker_line(&mut self, id: u64, line: &[u8]) {
        let msg: WorkerLine = match serde_json::from_slice(line) {
            Ok(m) => m,
            Err(e) => {
                info!("env {id}: unreadable line from the runtime: {e}");
                return self.env_failed(id, None);
            }
        };
        let Some(env) = self.envs.get_mut(&id) else {
            return;
        };
        match (msg.t, &env.state) {
            ("blank", EnvState::Blank { ready: false }) => {
                if self.image_blank_ready(id) {
                    return;
                }
                let Some(env) = self.envs.get_mut(&id) else {
                    return;
                };
                let reserved = env.reserved_for.clone();
                let provisioned = env.provisioned;
                match reserved {
                    Some(function) if self.registry.get(&function).is_some() => {
                        if let Err(e) = self.specialize(id, &function, provisioned) {
                            info!("env {id}: cannot specialise for {function}: {e}");
                            self.env_failed(id, None);
                        }
                    }
                    _ => {
                        env.reserved_for = None;
                        env.provisioned = false;
                        env.state = EnvState::Blank { ready: true };
                        let kind = env.kind;
                        self.ready_blanks(kind).push(id);
                        // A waiting invoke of any function may take it.
                        self.schedule_waiting();
                    }
                }
            }
            ("ready", EnvState::Starting) => {
                // A provisioned environment's init is not part of any
                // invoke: its first REPORT has no Init Duration (as on Lambda).
                if !env.provisioned {
                    env.init_duration = Some(env.spawned_at.elapsed());
                }
                // Init ran with at least one vCPU; invokes get the function's share.
                if let Some(cg) = env.cgroup.as_ref() {
                    if let Err(e) = cg.set_cpu(&env.limits) {
                        info!("{}: {e}", env.env_id);
                        return self.env_failed(id, None);
                    }
                }
                let function = env.function.clone();
                let provisioned = env.provisioned;
                if let Some(pool) = self.pools.get_mut(&function) {
                    if provisioned {
                        pool.provision_failure = None;
                    } else {
                        pool.starting = pool.starting.saturating_sub(1);
                    }
                }
                self.env_idle(id);
                self.schedule_waiting();
            }
            ("init_error", EnvState::Starting) => {
                env.init_error = msg.error.map(|e| e.get().to_string());
                // The runtime exits next; the env ends through env_failed.
            }
            ("result", EnvState::Busy(_)) | ("error", EnvState::Busy(_)) => {
                let outcome =
                    if msg.t == "result" {
                        let payload = msg.payload.map(|p| p.to_owned()).unwrap_or_else(|| {
                            RawValue::from_string("null".into()).expect("valid")
                        });
                        Outcome::Success(payload)
                    } else {
                        let body = msg.error.map(|e| e.to_owned()).unwrap_or_else(|| {
                            invoke::error_body("Runtime.Unknown", "unknown error")
                        });
                        let error_type = serde_json::from_str::<serde_json::Value>(body.get())
                            .ok()
                            .and_then(|v| {
                                v.get("errorType")
                                    .and_then(|t| t.as_str())
                                    .map(String::from)
                            })
                            .unwrap_or_else(|| "Unhandled".to_string());
                        Outcome::FunctionError {
                            body,
                            error_type,
                            status: None,
                        }
                    };
                // Everything the function printed is in the pipe before the
                // response was written (the runtime flushes first).
                self.pump_log(id, usize::MAX);
                let env = self.envs.get_mut(&id).expect("present");
                let EnvState::Busy(inv) = std::mem::replace(
                    &mut env.state,
                    EnvState::Idle {
                        since: Instant::now(),
                    },
                ) else {
                    unreachable!("matched Busy above")
                };
                self.finish(id, *inv, outcome);
                // Blanks taken for cold starts are replaced now that an answer
                // is out: making one earlier competes with the cold start.
                self.refill_blanks();
                let env = self.envs.get(&id).expect("present");
                if env.retire {
                    self.destroy_env(id, EndReason::Retired);
                } else {
                    self.env_idle(id);
                }
            }
            (t, state) => {
                info!(
                    "{}: unexpected {t:?} from the runtime while {}",
                    env.env_id,
                    state.name()
                );
                self.env_failed(id, None);
            }
        }
    }

    /// The environment is ready for work: give it the next waiting invoke, or
    /// park it in the idle list.
    fn env_idle(&mut self, id: u64) {
        let Some(env) = self.envs.get_mut(&id) else {
            return;
        };
        env.state = EnvState::Idle {
            since: Instant::now(),
        };
        let function = env.function.clone();
        let current = self
            .registry
            .get(&function)
            .is_some_and(|f| f.revision_id == env.revision_id);
        if !current {
            return self.destroy_env(id, EndReason::Retired);
        }
        let provisioned = env.provisioned;
        let pool = self.pools.entry(function).or_default();
        if let Some(inv) = pool.pending.pop_front() {
            self.run_on(id, inv);
        } else if !self.starved.is_empty() && !provisioned {
            // Another function waits for room: this one makes it.
            self.destroy_env(id, EndReason::Reclaimed);
            for f in std::mem::take(&mut self.starved) {
                self.schedule(&f);
            }
        } else if provisioned {
            pool.idle_provisioned.push(id);
        } else {
            pool.idle.push(id);
        }
    }

    fn log_readable(&mut self, id: u64) {
        self.pump_log(id, LOG_READ_BUDGET);
    }

    /// Move log output of `id` into the store (and the running invoke's tail).
    fn pump_log(&mut self, id: u64, budget: usize) {
        let Some(env) = self.envs.get_mut(&id) else {
            return;
        };
        let mut lines = Vec::new();
        let more = env
            .read_log(&mut self.scratch, budget, &mut lines)
            .unwrap_or(false);
        if more && !self.log_backlog.contains(&id) {
            self.log_backlog.push(id);
        }
        if lines.is_empty() {
            return;
        }
        if let EnvState::Busy(inv) = &mut env.state {
            if let Some(tail) = inv.tail.as_mut() {
                for l in &lines {
                    tail.push_line(l);
                }
            }
            inv.log_bytes += lines.iter().map(String::len).sum::<usize>();
            inv.log.append(&mut lines);
            if inv.log_bytes < INVOKE_LOG_BUFFER {
                return;
            }
            // A chatty invoke: write what it has so far.
            inv.log_bytes = 0;
            lines = std::mem::take(&mut inv.log);
        }
        if env.function.is_empty() {
            // A blank's output (a sandbox failure, say) has no function to
            // be logged under: it goes to the supervisor's log.
            for l in &lines {
                info!("{}: {l}", env.env_id);
            }
            return;
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        if let Err(e) = self.logs.append(&env.function, &refs) {
            info!("cannot write the logs of {}: {e}", env.function);
        }
    }

    fn drain_log_backlog(&mut self) {
        for id in std::mem::take(&mut self.log_backlog) {
            self.pump_log(id, LOG_READ_BUDGET);
        }
    }

    fn env_exited(&mut self, id: u64) {
        if self.dying.contains_key(&id) {
            return self.reap_dying(id);
        }
        let status = match self.envs.get(&id).and_then(|e| e.pidfd.as_ref()) {
            Some(p) => match p.try_wait() {
                Ok(Some(s)) => Some(s),
                // Not yet reparented to us, or still running: a later event
                // or the kill in env_failed settles it.
                _ => return,
            },
            None => None,
        };
        self.env_failed(id, status);
    }

    /// The environment stopped working (exit, crash, bad message, OOM, EOF):
    /// answer its invoke if it had one, and remove it.
    fn env_failed(&mut self, id: u64, status: Option<pidfd::ExitStatus>) {
        let was_starting = self.envs.get(&id).is_some_and(|e| {
            matches!(
                e.state,
                EnvState::Blank { ready: false } | EnvState::Starting
            )
        });
        self.end_failed_env(id, status);
        if was_starting {
            self.schedule_waiting();
        }
    }

    fn end_failed_env(&mut self, id: u64, status: Option<pidfd::ExitStatus>) {
        let Some(env) = self.envs.get_mut(&id) else {
            return;
        };
        // The status, if PID 1 has already been reaped; a channel that closed
        // first leaves it None, and the error then says "exited".
        let status =
            status.or_else(|| env.pidfd.as_ref().and_then(|p| p.try_wait().ok().flatten()));
        self.pump_log(id, usize::MAX);
        // A spawn request the zygote died with, unread, closes the blank's
        // worker channel, maybe before the zygote's pidfd event: reading
        // the zygote's channel to its end tells (Zygote::closed).
        self.read_zygote();
        let zygote_gone = self.zygote.as_ref().is_none_or(|z| z.closed());
        let env = self.envs.get_mut(&id).expect("present");
        let oom = env
            .cgroup
            .as_ref()
            .and_then(|c| c.oom_kills().ok())
            .is_some_and(|n| n > env.oom_kills_before);
        // Only a blank still being built depends on its zygote: one that
        // died with it is lost, not failed.
        let lost_with_zygote = matches!(env.state, EnvState::Blank { ready: false })
            && (env.zygote_generation != self.zygote_generation || zygote_gone);
        match std::mem::replace(&mut env.state, EnvState::Starting) {
            EnvState::Busy(inv) => {
                let inv = *inv;
                let detail = status
                    .map(|s| s.describe())
                    .unwrap_or_else(|| "exited".into());
                let (error_type, message) = if oom {
                    (
                        "Runtime.OutOfMemory",
                        format!(
                            "RequestId: {} Error: Runtime exited with error: {detail} (memory limit of {} MB exceeded)",
                            inv.request_id, env.memory_mb
                        ),
                    )
                } else {
                    (
                        "Runtime.ExitError",
                        format!(
                            "RequestId: {} Error: Runtime exited with error: {detail}",
                            inv.request_id
                        ),
                    )
                };
                let outcome = Outcome::FunctionError {
                    body: invoke::error_body(error_type, &message),
                    error_type: error_type.to_string(),
                    status: Some("error"),
                };
                let function = env.function.clone();
                self.finish(id, inv, outcome);
                self.destroy_env(id, EndReason::Failed);
                self.schedule(&function);
            }
            EnvState::Blank { .. } if env.reserved_for.is_none() => {
                // A blank made ahead of time: nobody waits for it. Back off
                // before making more, unless its zygote simply died.
                if !lost_with_zygote {
                    info!(
                        "{}: a blank environment failed ({}); its output is above",
                        env.env_id,
                        status
                            .map(|s| s.describe())
                            .unwrap_or_else(|| "exited".into())
                    );
                    self.blank_backoff_until = Instant::now() + BLANK_BACKOFF;
                }
                self.destroy_env(id, EndReason::Failed);
            }
            EnvState::Blank { .. } | EnvState::Starting => {
                let init_error = env.init_error.take();
                let function = env
                    .reserved_for
                    .take()
                    .unwrap_or_else(|| env.function.clone());

                let detail = status
                    .map(|s| s.describe())
                    .unwrap_or_else(|| "exited".into());
                let elapsed = env.spawned_at.elapsed();
                let provisioned = env.provisioned;
                self.destroy_env(id, EndReason::Failed);
                if provisioned {
                    // Nobody waits for it: the status says why, and
                    // provisioning is tried again after a pause.
                    if !lost_with_zygote || init_error.is_some() {
                        let reason = provision_failure_reason(init_error.as_deref(), &detail);
                        info!(
                            "{function}: a provisioned environment failed to initialise: {reason}"
                        );
                        if let Some(pool) = self.pools.get_mut(&function) {
                            pool.provision_failure = Some(reason);
                            pool.provision_retry_at = Some(Instant::now() + PROVISION_BACKOFF);
                        }
                    }
                    return;
                }
                if let Some(pool) = self.pools.get_mut(&function) {
                    pool.starting = pool.starting.saturating_sub(1);
                }
                if lost_with_zygote && init_error.is_none() {
                    // Lost with its zygote, not the function's fault: retry.
                    self.schedule(&function);
                    return;
                }
                // Lambda answers the invoke that caused the cold start with
                // the init error.
                let Some(inv) = self
                    .pools
                    .get_mut(&function)
                    .and_then(|p| p.pending.pop_front())
                else {
                    return;
                };
                let body = match init_error {
                    Some(raw) => RawValue::from_string(raw).unwrap_or_else(|_| {
                        invoke::error_body("Runtime.Unknown", "unreadable init error")
                    }),
                    None if oom => invoke::error_body(
                        "Runtime.OutOfMemory",
                        &format!("RequestId: {} Error: Runtime exited with error: {detail} during init (memory limit exceeded)", inv.request_id),
                    ),
                    None => invoke::error_body(
                        "Runtime.ExitError",
                        &format!(
                            "RequestId: {} Error: Runtime exited with error: {detail} during init after {:.0} ms (see `lambdalet logs {function}`)",
                            inv.request_id,
                            elapsed.as_secs_f64() * 1000.0
                        ),
                    ),
                };
                // The invoke ran as far as the init: Lambda counts it, with
                // the init as its duration.
                self.metrics.invoked(
                    &function,
                    &metrics::Observation {
                        duration: elapsed,
                        max_memory_used_mb: 0,
                        error: Some(metrics::ErrorClass::Runtime),
                        init_duration: Some(elapsed),
                    },
                );
                self.answer_function_error(inv, body);
                self.schedule(&function);
            }
            EnvState::Idle { .. } => {
                self.destroy_env(id, EndReason::Failed);
            }
        }
    }

    /// Answer an invocation that never ran, with the body of an init failure.
    fn answer_function_error(&mut self, inv: Invocation, body: Box<RawValue>) {
        if inv.event.is_some() {
            return self.event_ended(inv, events::EventEnd::FunctionError(body));
        }
        let Some((t, id)) = inv.reply_to else { return };
        let result = InvokeResult {
            status_code: 200,
            function_error: Some("Unhandled".to_string()),
            log_result: None,
            executed_version: "$LATEST".to_string(),
            request_id: inv.request_id,
            payload: body,
        };
        self.reply_ok(t, &id, &result);
    }

    fn answer_error(&mut self, inv: Invocation, err: WireError) {
        if inv.event.is_some() {
            return self.event_ended(inv, events::EventEnd::System(err));
        }
        if let Some((t, id)) = inv.reply_to {
            self.reply(t, &id, Err(err));
        }
    }

    /// Write END and REPORT and answer the caller.
    fn finish(&mut self, env_id: u64, mut inv: Invocation, outcome: Outcome) {
        let Some(env) = self.envs.get_mut(&env_id) else {
            return;
        };
        let duration = inv.started.map(|s| s.elapsed()).unwrap_or_default();
        let peak = env
            .cgroup
            .as_ref()
            .and_then(|c| c.memory_peak().ok())
            .unwrap_or(0);
        let init = env.init_duration.take();
        let (status, error_type) = match &outcome {
            Outcome::Success(_) => (None, None),
            Outcome::FunctionError {
                status, error_type, ..
            } => (*status, status.map(|_| error_type.as_str())),
        };
        let error = match (&outcome, status) {
            (Outcome::Success(_), _) => None,
            (_, None) => Some(metrics::ErrorClass::Function),
            (_, Some("timeout")) => Some(metrics::ErrorClass::Timeout),
            (_, Some(_)) => Some(metrics::ErrorClass::Runtime),
        };
        self.metrics.invoked(
            &env.function,
            &metrics::Observation {
                duration,
                max_memory_used_mb: peak.div_ceil(1024 * 1024),
                error,
                init_duration: init,
            },
        );
        let end = invoke::end_line(&inv.request_id);
        let report = invoke::report_line(
            &inv.request_id,
            duration,
            env.memory_mb,
            peak,
            init,
            status,
            error_type,
        );
        let mut log = std::mem::take(&mut inv.log);
        log.push(end.clone());
        log.push(report.clone());
        let refs: Vec<&str> = log.iter().map(String::as_str).collect();
        if let Err(e) = self.logs.append(&env.function, &refs) {
            info!("cannot write the logs of {}: {e}", env.function);
        }
        let log_result = inv.tail.as_mut().map(|t| {
            t.push_line(&end);
            t.push_line(&report);
            t.base64()
        });
        if inv.event.is_some() {
            return self.event_outcome(inv, outcome);
        }
        let Some((t, id)) = inv.reply_to.take() else {
            return;
        };
        let (payload, function_error) = match outcome {
            Outcome::Success(p) => (p, None),
            Outcome::FunctionError { body, .. } => (body, Some("Unhandled".to_string())),
        };
        if payload.get().len() > MAX_SYNC_PAYLOAD_BYTES {
            let body = invoke::error_body(
                "Function.ResponseSizeTooLarge",
                &format!(
                    "Response payload size ({} bytes) exceeded maximum allowed payload size ({MAX_SYNC_PAYLOAD_BYTES} bytes).",
                    payload.get().len()
                ),
            );
            let result = InvokeResult {
                status_code: 200,
                function_error: Some("Unhandled".to_string()),
                log_result,
                executed_version: "$LATEST".to_string(),
                request_id: inv.request_id,
                payload: body,
            };
            return self.reply_ok(t, &id, &result);
        }
        let result = InvokeResult {
            status_code: 200,
            function_error,
            log_result,
            executed_version: "$LATEST".to_string(),
            request_id: inv.request_id,
            payload,
        };
        self.reply_ok(t, &id, &result);
    }

    /// End an environment: kill its PID 1 (the kernel then kills every
    /// process of its PID namespace, pid_namespaces(7)), close its channels,
    /// and remove its cgroup once it is empty. Nothing here waits: a tree
    /// still dying (a fork bomb takes a second or two) is finished by its
    /// pidfd event or the retry timer, in `reap_dying`.
    fn destroy_env(&mut self, id: u64, reason: EndReason) {
        let Some(mut env) = self.envs.remove(&id) else {
            return;
        };
        if let Some(p) = env.pidfd.as_ref() {
            if let Err(e) = p.kill() {
                info!("{}: kill: {e}", env.env_id);
            }
        } else if let Some(cg) = env.cgroup.as_ref() {
            // PID 1 never said hello, so its pid is unknown: the cgroup knows
            // every process of the environment.
            if let Err(e) = cg.kill_all() {
                info!("{}: cgroup kill: {e}", env.env_id);
            }
        }
        let _ = self.poll.registry().deregister(&mut env.worker);
        let _ = self.poll.registry().deregister(&mut env.log);
        self.owners.remove(&env.worker_token);
        self.owners.remove(&env.log_token);
        self.log_backlog.retain(|&e| e != id);
        if let Some(pool) = self.pools.get_mut(&env.function) {
            pool.idle.retain(|&e| e != id);
            pool.idle_provisioned.retain(|&e| e != id);
        }
        self.blanks.retain(|&e| e != id);
        self.node_blanks.retain(|&e| e != id);
        if let EnvState::Busy(mut inv) = std::mem::replace(&mut env.state, EnvState::Starting) {
            let refs: Vec<&str> = inv.log.iter().map(String::as_str).collect();
            let _ = self.logs.append(&env.function, &refs);
            inv.log.clear();
            // Only delete and shutdown end a busy environment here.
            let err = match reason {
                EndReason::Deleted => WireError::not_found(format!(
                    "Function not found: {} (deleted during the invoke)",
                    function_arn(&env.function)
                )),
                _ => WireError::service("the environment ended during the invoke"),
            };
            self.answer_error(*inv, err);
        }
        let dying = Dying {
            env_id: env.env_id,
            function: env.function,
            code_revision: env.code_revision,
            pidfd: env.pidfd,
            pid_token: env.pid_token,
            cgroup: env.cgroup,
            retries: 0,
        };
        self.dying.insert(id, dying);
        self.reap_dying(id);
    }

    /// Finish an ended environment if its processes are gone: reap PID 1,
    /// remove the cgroup, drop the code revision if nothing uses it, and
    /// answer a DeleteFunction that waited for it.
    fn reap_dying(&mut self, id: u64) {
        let Some(d) = self.dying.get_mut(&id) else {
            return;
        };
        let reaped = match d.pidfd.as_ref() {
            // ECHILD: not reparented to us yet (its parent A is still exiting).
            Some(p) => matches!(p.try_wait(), Ok(Some(_))),
            None => true,
        };
        let empty = reaped
            && d.cgroup
                .as_ref()
                .is_none_or(|cg| !cg.is_populated().unwrap_or(true));
        if !empty {
            d.retries += 1;
            if d.retries % 50 == 0 {
                info!("{}: still dying after {} s", d.env_id, d.retries / 10);
                if let Some(cg) = d.cgroup.as_ref() {
                    let _ = cg.kill_all();
                }
            }
            self.add_timer(Duration::from_millis(100), Timer::Dying(id));
            return;
        }
        let d = self.dying.remove(&id).expect("present");
        if let Some(p) = d.pidfd.as_ref() {
            let fd = p.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        self.owners.remove(&d.pid_token);
        if let Some(cg) = d.cgroup {
            if let Err(e) = cg.remove() {
                info!("{}: cgroup remove: {e}", d.env_id);
            }
        }
        let function = d.function;
        // Code revisions no environment uses any more can go.
        let in_use: BTreeSet<u64> = self
            .envs
            .values()
            .map(|e| (&e.function, e.code_revision))
            .chain(self.dying.values().map(|e| (&e.function, e.code_revision)))
            .filter(|(f, _)| **f == function)
            .map(|(_, rev)| rev)
            .collect();
        let _ = self.registry.prune_code(&function, &in_use);
        self.answer_deletes(&function);
    }

    /// The environments specialised for `function`.
    fn env_ids_of(&self, function: &str) -> Vec<u64> {
        self.envs
            .values()
            .filter(|e| e.function == function)
            .map(|e| e.id)
            .collect()
    }

    fn function_has_envs(&self, function: &str) -> bool {
        self.envs.values().any(|e| e.function == function)
            || self.dying.values().any(|d| d.function == function)
    }

    /// Answer the DeleteFunction requests of `function` once none of its
    /// environments is left.
    fn answer_deletes(&mut self, function: &str) {
        if self.function_has_envs(function) {
            return;
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deletes)
            .into_iter()
            .partition(|(f, _, _)| f == function);
        self.deletes = waiting;
        for (_, t, id) in done {
            self.reply(
                t,
                &id,
                Ok(protocol::success_line(&id, &serde_json::json!({}))),
            );
        }
    }

    /// New code or configuration: idle environments end now, busy ones after
    /// their invoke.
    fn retire_function_envs(&mut self, function: &str) {
        for id in self.env_ids_of(function) {
            let env = self.envs.get_mut(&id).expect("present");
            match env.state {
                EnvState::Idle { .. } => self.destroy_env(id, EndReason::Retired),
                _ => env.retire = true,
            }
        }
    }

    // ---- timers ---------------------------------------------------------------

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Housekeeping => {
                    self.housekeeping();
                    self.add_timer(HOUSEKEEPING, Timer::Housekeeping);
                }
                Timer::Deadline(env_id, timer_id) => self.deadline(env_id, timer_id),
                Timer::Dying(env_id) => self.reap_dying(env_id),
                Timer::Events => self.event_timer(),
                Timer::Closed(env_id) => {
                    if self.envs.contains_key(&env_id) {
                        self.env_failed(env_id, None);
                    }
                }
                Timer::InitDeadline(env_id) => {
                    // A blank's clock starts when the zygote can fork it: a
                    // zygote still preloading (slow hosts, emulators) is not
                    // the environment's fault.
                    let zygote_ready = self.zygote.as_ref().and_then(|z| z.ready_at);
                    if let Some(env) = self.envs.get_mut(&env_id) {
                        if matches!(env.state, EnvState::Blank { ready: false }) {
                            match zygote_ready {
                                None => {
                                    self.add_timer(INIT_TIMEOUT, Timer::InitDeadline(env_id));
                                    continue;
                                }
                                Some(at) if at > env.phase_started => env.phase_started = at,
                                Some(_) => {}
                            }
                        }
                        let env = &*env;
                        let starting = matches!(
                            env.state,
                            EnvState::Starting | EnvState::Blank { ready: false }
                        );
                        if starting
                            && env.phase_started.elapsed() + Duration::from_millis(1)
                                >= INIT_TIMEOUT
                        {
                            info!(
                                "{}: init did not finish within {INIT_TIMEOUT:?}",
                                env.env_id
                            );
                            let env = self.envs.get_mut(&env_id).expect("present");
                            env.init_error = Some(
                                invoke::error_body(
                                    "Sandbox.Timedout",
                                    &format!(
                                        "Init phase timed out after {:.2} seconds",
                                        INIT_TIMEOUT.as_secs_f64()
                                    ),
                                )
                                .get()
                                .to_string(),
                            );
                            self.env_failed(env_id, None);
                        } else if starting {
                            // Its clock was moved on (see above): look again
                            // when it runs out.
                            let left = INIT_TIMEOUT.saturating_sub(env.phase_started.elapsed());
                            self.add_timer(left, Timer::InitDeadline(env_id));
                        }
                    }
                }
            }
        }
    }

    fn deadline(&mut self, env_id: u64, timer_id: u64) {
        let Some(env) = self.envs.get_mut(&env_id) else {
            return;
        };
        let EnvState::Busy(inv) = &env.state else {
            return;
        };
        if inv.timer != timer_id {
            return;
        }
        // Lambda kills the whole environment on a timeout.
        self.pump_log(env_id, usize::MAX);
        let env = self.envs.get_mut(&env_id).expect("present");
        let EnvState::Busy(mut inv) = std::mem::replace(&mut env.state, EnvState::Starting) else {
            unreachable!()
        };
        let message = invoke::timeout_message(&inv.request_id, env.timeout);
        let line = format!(
            "{} {} Task timed out after {:.2} seconds",
            now_rfc3339(),
            inv.request_id,
            env.timeout.as_secs_f64()
        );
        if let Some(tail) = inv.tail.as_mut() {
            tail.push_line(&line);
        }
        inv.log.push(line);
        let outcome = Outcome::FunctionError {
            body: invoke::error_body("Sandbox.Timedout", &message),
            error_type: "Sandbox.Timedout".to_string(),
            status: Some("timeout"),
        };
        let function = env.function.clone();
        self.finish(env_id, *inv, outcome);
        self.destroy_env(env_id, EndReason::Failed);
        self.schedule(&function);
    }

    fn housekeeping(&mut self) {
        let keep_alive = self.opts.keep_alive;
        let expired: Vec<u64> = self
            .envs
            .values()
            .filter(|e| {
                !e.provisioned
                    && matches!(e.state, EnvState::Idle { since } if since.elapsed() >= keep_alive)
            })
            .map(|e| e.id)
            .collect();
        for id in expired {
            self.destroy_env(id, EndReason::Reclaimed);
        }
        // Node blanks (a started node each) are kept only while a nodejs
        // function exists.
        if !self.node_blanks.is_empty() && !self.node_functions {
            for id in std::mem::take(&mut self.node_blanks) {
                self.destroy_env(id, EndReason::Reclaimed);
            }
        }
        let tracked: BTreeSet<i32> = self
            .envs
            .values()
            .filter_map(|e| e.pidfd.as_ref().map(PidFd::pid))
            // An ended environment's PID 1 is reaped by reap_dying through
            // its pidfd; reaped here, waitid(P_PIDFD) says ECHILD forever.
            .chain(
                self.dying
                    .values()
                    .filter_map(|d| d.pidfd.as_ref().map(PidFd::pid)),
            )
            .chain(self.zygote.as_ref().map(|z| z.pidfd.pid()))
            .collect();
        pidfd::reap_untracked(|pid| tracked.contains(&pid));
        self.expire_events();
        for f in std::mem::take(&mut self.starved) {
            self.schedule(&f);
        }
        self.schedule_waiting();
        if self.zygote.is_none() {
            if let Err(e) = self.start_zygote() {
                info!("cannot start the zygote: {e}");
            }
        }
        self.refill_blanks();
    }

    fn shutdown(&mut self) {
        let ids: Vec<u64> = self.envs.keys().copied().collect();
        for id in ids {
            self.destroy_env(id, EndReason::Shutdown);
        }
        for (_, pool) in std::mem::take(&mut self.pools) {
            for inv in pool.pending {
                if let Some((t, id)) = inv.reply_to {
                    self.reply(
                        t,
                        &id,
                        Err(WireError::service("the supervisor is shutting down")),
                    );
                }
            }
        }
        // Nothing else is served now, so waiting here is fine (bounded).
        let deadline = Instant::now() + REAP_WAIT;
        while !self.dying.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            for id in self.dying.keys().copied().collect::<Vec<_>>() {
                self.reap_dying(id);
            }
        }
        if let Some(z) = self.zygote.take() {
            let _ = z.pidfd.kill_and_reap(REAP_WAIT);
        }
        // Every accepted event is already stored; this waits for the
        // removals and retries still being written.
        self.events.store.close();
        let _ = std::fs::remove_file(&self.opts.socket);
        info!("stopped");
    }
}

#[derive(Debug, Clone, Copy)]
enum EndReason {
    Deleted,
    Retired,
    Reclaimed,
    Failed,
    Shutdown,
}

fn parse<'a, T: serde::Deserialize<'a>>(params: &'a str) -> Result<T, WireError> {
    serde_json::from_str(params).map_err(|e| {
        WireError::new(
            ErrorKind::InvalidParameterValueException,
            format!("invalid params: {e}"),
        )
    })
}

fn ok_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("serialisable")
}

fn not_found(name: &str) -> WireError {
    WireError::not_found(format!("Function not found: {}", function_arn(name)))
}

pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:us-east-1:000000000000:function:{name}")
}

fn decode_client_context(b64: &str) -> Result<serde_json::Value, WireError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| WireError::invalid(format!("ClientContext is not valid base64: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        WireError::invalid(format!("ClientContext is not base64 of a JSON object: {e}"))
    })
}

fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let ms = now.subsec_millis();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::registry::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The invoke line sent to the runtime. The payload is embedded raw.
fn invoke_line(inv: &Invocation, deadline_ms: u128, arn: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        t: &'static str,
        request_id: &'a str,
        deadline_ms: u128,
        invoked_function_arn: &'a str,
        client_context: &'a Option<serde_json::Value>,
        identity: Option<()>,
        payload: &'a RawValue,
    }
    let mut v = serde_json::to_vec(&Line {
        t: "invoke",
        request_id: &inv.request_id,
        deadline_ms,
        invoked_function_arn: arn,
        client_context: &inv.client_context,
        identity: None,
        payload: &inv.payload,
    })
    .expect("serialisable");
    v.push(b'\n');
    v
}

fn spawn_message(
    env_id: &str,
    plan: &impl serde::Serialize,
    runtime: &RawValue,
) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(serde::Serialize)]
    struct Spawn<'a, P: serde::Serialize> {
        t: &'static str,
        env_id: &'a str,
        sandbox: &'a P,
        runtime: &'a RawValue,
    }
    serde_json::to_vec(&Spawn {
        t: "spawn",
        env_id,
        sandbox: plan,
        runtime,
    })
}

/// The line that turns a blank into a function's environment.
fn specialize_line(
    plan: &crate::sandbox::plan::SpecPlan,
    runtime: &RawValue,
) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(serde::Serialize)]
    struct Specialize<'a> {
        t: &'static str,
        sandbox: &'a crate::sandbox::plan::SpecPlan,
        runtime: &'a RawValue,
    }
    let mut v = serde_json::to_vec(&Specialize {
        t: "specialize",
        sandbox: plan,
        runtime,
    })?;
    v.push(b'\n');
    Ok(v)
}

/// How node blanks are made: the host's node, the blank plan with node and
/// the runtime bound in, and the spawn request's runtime section.
struct NodeBlanks {
    host: HostNode,
    template: BlankTemplate,
    runtime: Box<RawValue>,
}

/// V8 sizes its heap from the memory limit it sees at start, and a node
/// blank starts in the smallest function's cgroup (128 MB: a 259 MB heap
/// limit) before any function is chosen. So every node blank gets the heap
/// limit Lambda gives its largest function (90% of 10,240 MB); each
/// function's memory is enforced by its cgroup.
const NODE_MAX_OLD_SPACE_MB: u32 = 9216;

/// The spawn request's runtime section for a node blank: the Python
/// blank's, and how B's child execs node (docs/architecture.md § Node.js
/// environments).
fn node_blank_runtime(
    python: &HostPython,
    seccomp_bpf: &[u8],
) -> Result<Box<RawValue>, serde_json::Error> {
    use base64::Engine as _;
    RawValue::from_string(
        serde_json::json!({
            "python_prefix_host": python.base_prefix,
            "python_prefix_sandbox": LANG_DIR,
            "node": {
                "path": crate::sandbox::plan::NODE_BINARY,
                "args": [
                    format!("--max-old-space-size={NODE_MAX_OLD_SPACE_MB}"),
                    "--expose-gc",
                    format!("{}/bootstrap.js", crate::sandbox::plan::NODE_RUNTIME_DIR),
                ],
                "seccomp_bpf": base64::engine::general_purpose::STANDARD.encode(seccomp_bpf),
            },
        })
        .to_string(),
    )
}

/// Where a custom runtime's bootstrap finds the Runtime API
/// (`AWS_LAMBDA_RUNTIME_API`, as on Lambda): its own loopback, since each
/// environment has its own network namespace.
const RUNTIME_API_ADDRESS: &str = "127.0.0.1:9001";

/// The runtime section of a spawn request (docs/architecture.md § runtime):
/// the handler and the environment variables Lambda defines.
fn runtime_section(
    spec: &FunctionSpec,
    python: &HostPython,
    node: Option<&HostNode>,
    init: InitType,
) -> Box<RawValue> {
    let name = &spec.name;
    let mut env: std::collections::BTreeMap<String, String> = spec.environment.clone();
    let log_stream = format!(
        "{}/[$LATEST]{}",
        now_rfc3339().get(..10).unwrap_or("").replace('-', "/"),
        uuid::Uuid::new_v4().simple()
    );
    let major_minor: String = python
        .version
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    let mut reserved = vec![
        ("AWS_LAMBDA_FUNCTION_NAME", name.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            spec.memory_mb.to_string(),
        ),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_string()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
        ("AWS_LAMBDA_LOG_STREAM_NAME", log_stream.clone()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", init.as_str().to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ("LAMBDA_TASK_ROOT", "/var/task".to_string()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_string()),
        ("_HANDLER", spec.handler.clone()),
        ("TZ", ":UTC".to_string()),
        ("LANG", "en_US.UTF-8".to_string()),
        ("HOME", "/tmp".to_string()),
    ];
    if spec.runtime == Runtime::Nodejs {
        // As Lambda's nodejsNN.x: the runtime's paths, then the layers'
        // node_modules (NODE_PATH applies to require(), not to import).
        let major = node.map(HostNode::major).unwrap_or("20");
        reserved.extend([
            ("AWS_EXECUTION_ENV", format!("AWS_Lambda_nodejs{major}.x")),
            (
                "PATH",
                "/var/runtime/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin".to_string(),
            ),
            (
                "LD_LIBRARY_PATH",
                "/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"
                    .to_string(),
            ),
            (
                "NODE_PATH",
                format!(
                    "/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules:\
                     /var/runtime/node_modules:/var/runtime:/var/task"
                ),
            ),
        ]);
    } else if spec.runtime == Runtime::Provided {
        // As on provided.al2023: no AWS_EXECUTION_ENV, no language paths;
        // the Runtime API's address (the runtime may move it off 9001 if
        // that port is taken, on the host's network).
        reserved.extend([
            ("AWS_LAMBDA_RUNTIME_API", RUNTIME_API_ADDRESS.to_string()),
            ("PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin".to_string()),
            (
                "LD_LIBRARY_PATH",
                "/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"
                    .to_string(),
            ),
        ]);
    } else {
        reserved.extend([
            ("AWS_EXECUTION_ENV", format!("AWS_Lambda_python{major_minor}")),
            (
                "PATH",
                "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin".to_string(),
            ),
            (
                "LD_LIBRARY_PATH",
                "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"
                    .to_string(),
            ),
            ("PYTHONPATH", "/var/runtime".to_string()),
        ]);
    }
    for (k, v) in reserved {
        env.insert(k.to_string(), v);
    }
    let v = serde_json::json!({
        "kind": spec.runtime.as_str(),
        "handler": spec.handler,
        "env": env,
        "python_prefix_host": python.base_prefix,
        "python_prefix_sandbox": "/var/lang",
        "function_name": name,
        "function_version": "$LATEST",
        "invoked_function_arn": function_arn(name),
        "memory_limit_in_mb": spec.memory_mb,
        "log_group_name": format!("/aws/lambda/{name}"),
        "log_stream_name": log_stream,
    });
    RawValue::from_string(v.to_string()).expect("json! serialises")
}

/// How an environment came to be initialised (AWS_LAMBDA_INITIALIZATION_TYPE).
#[derive(Debug, Clone, Copy)]
enum InitType {
    OnDemand,
    Provisioned,
}

impl InitType {
    fn as_str(self) -> &'static str {
        match self {
            InitType::OnDemand => "on-demand",
            InitType::Provisioned => "provisioned-concurrency",
        }
    }
}

/// The StatusReason of a provisioned-concurrency config whose environment
/// failed its init: Lambda's code, then what the runtime said.
fn provision_failure_reason(init_error: Option<&str>, exit: &str) -> String {
    let said = init_error
        .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw).ok())
        .map(|v| {
            format!(
                "{}: {}",
                v["errorType"].as_str().unwrap_or("Runtime.Unknown"),
                v["errorMessage"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_else(|| format!("the runtime exited during init: {exit}"));
    format!("FUNCTION_ERROR_INIT_FAILURE: {said}")
}

fn bind_socket(opts: &ServeOptions) -> Result<UnixListener, Box<dyn std::error::Error>> {
    let path = &opts.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create the socket's directory {}: {e}",
                dir.display()
            )
        })?;
    }
    if path.exists() {
        // A socket nobody answers on is left from a killed run; a live one
        // means another supervisor owns it.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another supervisor is listening on {}; stop it or pass --socket",
                path.display()
            )
            .into());
        }
        std::fs::remove_file(path)?;
    }
    // Bind with a umask that leaves no window where the socket is open to all.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    if let Some(group) = &opts.socket_group {
        let g = nix::unistd::Group::from_name(group)?
            .ok_or_else(|| format!("--socket-group {group}: no such group"))?;
        nix::unistd::chown(path, None, Some(g.gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.socket_mode))?;
    Ok(listener)
}
