//! One execution environment as the supervisor sees it: its channels, its
//! cgroup, its PID 1, and its lifecycle state (docs/architecture.md).

use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::net::UnixStream;
use mio::unix::pipe::Receiver;
use mio::Token;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use super::invoke::Invocation;
use super::logs::LineSplitter;
use super::pidfd::PidFd;
use crate::protocol::MAX_SYNC_PAYLOAD_BYTES;
use crate::sandbox::cgroup::{EnvCgroup, Limits};

/// The longest line an environment may send: a maximal response plus framing.
/// Longer means a broken or hostile runtime, and the environment is killed.
pub const MAX_WORKER_LINE: usize = MAX_SYNC_PAYLOAD_BYTES + 64 * 1024;
/// The longest log line kept whole; longer ones are cut into pieces.
pub const MAX_LOG_LINE: usize = 256 * 1024;
/// Bytes read from one environment's log pipe per event-loop turn, so a
/// flooding function cannot monopolise the loop.
pub const LOG_READ_BUDGET: usize = 1024 * 1024;

/// Lifecycle of an environment. Transitions: Blank (starting) → Blank (ready)
/// or, when it was made for a waiting invoke, straight to Starting; Blank →
/// Starting (specialised for a function); Starting → Idle (ready) or Dead
/// (init failed); Idle → Busy (invoke) or Dead (reclaimed); Busy → Idle
/// (response) or Dead (timeout, crash, out of memory). Any → Dead on delete or
/// shutdown.
#[derive(Debug)]
pub enum EnvState {
    /// Made ahead of time, no function yet: `ready` once it said `blank`.
    Blank {
        ready: bool,
    },
    /// Specialised for a function, its init phase running.
    Starting,
    Idle {
        since: Instant,
    },
    Busy(Box<Invocation>),
}

impl EnvState {
    pub fn name(&self) -> &'static str {
        match self {
            EnvState::Blank { ready: false } => "blank (starting)",
            EnvState::Blank { ready: true } => "blank",
            EnvState::Starting => "starting",
            EnvState::Idle { .. } => "idle",
            EnvState::Busy(_) => "busy",
        }
    }
}

pub struct Env {
    pub id: u64,
    pub env_id: String,
    /// The function it runs; empty while it is a blank.
    pub function: String,
    /// The function revision (code and configuration) this environment runs.
    pub revision_id: String,
    pub code_revision: u64,
    pub memory_mb: u32,
    pub timeout: Duration,
    pub state: EnvState,
    pub worker: UnixStream,
    pub worker_token: Token,
    pub log: Receiver,
    pub log_token: Token,
    pub pidfd: Option<PidFd>,
    pub pid_token: Token,
    pub cgroup: Option<EnvCgroup>,
    /// The function's limits (the cgroup has init's CPU boost until ready).
    pub limits: Limits,
    /// Where its cold start began: its spawn, or its specialisation if it
    /// was a blank made ahead of time.
    pub spawned_at: Instant,
    /// When its current phase (blank start-up, init) began, for the init
    /// deadline.
    pub phase_started: Instant,
    /// The function a blank was made for (an invoke is waiting for it).
    pub reserved_for: Option<String>,
    /// For a blank made for a container image function: the code revision
    /// whose root it is pivoted into (server/image.rs); it serves only that.
    pub image_root: Option<u64>,
    /// Which runtimes it can become: a node blank holds a started node.
    pub kind: BlankKind,
    /// Set when the environment became ready; reported by its first invoke.
    pub init_duration: Option<Duration>,
    /// Initialised ahead of time for provisioned concurrency: kept warm (never
    /// reclaimed for idleness), used before on-demand environments, and its
    /// first invoke is not a cold start.
    pub provisioned: bool,
    pub zygote_generation: u64,
    /// Retire after the current invoke (code or configuration changed).
    pub retire: bool,
    /// OOM kills already counted in the cgroup when the current invoke began.
    pub oom_kills_before: u64,
    rbuf: Vec<u8>,
    pub splitter: LineSplitter,
    /// An init_error the runtime reported, for the invoke that is waiting.
    pub init_error: Option<String>,
}

/// What a line from the runtime says (docs/architecture.md § Worker channel).
#[derive(Debug, serde::Deserialize)]
pub struct WorkerLine<'a> {
    pub t: &'a str,
    #[serde(borrow, default)]
    pub payload: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a serde_json::value::RawValue>,
}

/// The two kinds of blank: a Python blank becomes a python3 or provided
/// environment, a node blank (B with a pre-started node) a nodejs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlankKind {
    Python,
    Node,
}

impl BlankKind {
    pub fn of(runtime: crate::config::Runtime) -> BlankKind {
        match runtime {
            crate::config::Runtime::Nodejs => BlankKind::Node,
            crate::config::Runtime::Python3 | crate::config::Runtime::Provided => BlankKind::Python,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BlankKind::Python => "python",
            BlankKind::Node => "node",
        }
    }
}

pub struct NewEnv {
    pub id: u64,
    pub env_id: String,
    pub worker: OwnedFd,
    pub worker_token: Token,
    pub log: OwnedFd,
    pub log_token: Token,
    pub pid_token: Token,
    pub cgroup: EnvCgroup,
    pub limits: Limits,
    pub zygote_generation: u64,
    pub reserved_for: Option<String>,
    pub kind: BlankKind,
}

impl Env {
    pub fn new(n: NewEnv) -> Env {
        let worker = UnixStream::from_std(std::os::unix::net::UnixStream::from(n.worker));
        let log = Receiver::from(n.log);
        Env {
            id: n.id,
            env_id: n.env_id,
            function: String::new(),
            revision_id: String::new(),
            code_revision: 0,
            memory_mb: 0,
            timeout: Duration::ZERO,
            state: EnvState::Blank { ready: false },
            worker,
            worker_token: n.worker_token,
            log,
            log_token: n.log_token,
            pidfd: None,
            pid_token: n.pid_token,
            cgroup: Some(n.cgroup),
            limits: n.limits,
            spawned_at: Instant::now(),
            phase_started: Instant::now(),
            reserved_for: n.reserved_for,
            image_root: None,
            kind: n.kind,
            init_duration: None,
            provisioned: false,
            zygote_generation: n.zygote_generation,
            retire: false,
            oom_kills_before: 0,
            rbuf: Vec::new(),
            splitter: LineSplitter::new(MAX_LOG_LINE),
            init_error: None,
        }
    }

    /// Read what the runtime sent. Returns complete lines through `out`;
    /// `Ok(false)` when the runtime closed its end. Until the PID is known,
    /// reads go through recvmsg to pick up the SCM_CREDENTIALS the kernel
    /// attaches (unix(7) SO_PASSCRED): that is how we learn PID 1's host pid.
    /// `chunk` is the supervisor's scratch buffer (zeroing a fresh one per
    /// read would cost more than the read).
    pub fn read_worker(
        &mut self,
        chunk: &mut [u8],
        out: &mut Vec<Vec<u8>>,
    ) -> io::Result<(bool, Option<i32>)> {
        let mut pid = None;
        loop {
            let n = if self.pidfd.is_none() && pid.is_none() {
                let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
                let mut iov = [IoSliceMut::new(&mut *chunk)];
                match recvmsg::<()>(
                    self.worker.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(msg) => {
                        for c in msg.cmsgs()? {
                            if let ControlMessageOwned::ScmCredentials(cred) = c {
                                if cred.pid() > 0 {
                                    pid = Some(cred.pid());
                                }
                            }
                        }
                        msg.bytes
                    }
                    Err(nix::Error::EAGAIN) => return Ok((true, pid)),
                    Err(e) => return Err(e.into()),
                }
            } else {
                match self.worker.read(chunk) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((true, pid)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                return Ok((false, pid));
            }
            // A short read emptied the socket (see read_conn).
            let drained = n < chunk.len();
            let mut data = &chunk[..n];
            while let Some(pos) = data.iter().position(|&b| b == b'\n') {
                if self.rbuf.is_empty() {
                    out.push(data[..pos].to_vec());
                } else {
                    self.rbuf.extend_from_slice(&data[..pos]);
                    out.push(std::mem::take(&mut self.rbuf));
                }
                data = &data[pos + 1..];
            }
            self.rbuf.extend_from_slice(data);
            if self.rbuf.len() > MAX_WORKER_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the runtime sent a line longer than {MAX_WORKER_LINE} bytes"),
                ));
            }
            if drained {
                return Ok((true, pid));
            }
        }
    }

    /// Send one line to the runtime. The socket buffer normally takes a whole
    /// invoke; a payload larger than the buffer is written blocking-with-poll,
    /// since the runtime reads its socket whenever it is idle.
    pub fn send_line(&mut self, line: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < line.len() {
            match self.worker.write(&line[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [nix::poll::PollFd::new(
                        std::os::fd::AsFd::as_fd(&self.worker),
                        nix::poll::PollFlags::POLLOUT,
                    )];
                    let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16))?;
                    if ready == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the runtime did not read its invoke within 1 s",
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read log output, at most `budget` bytes. Returns (lines, more_pending).
    pub fn read_log(
        &mut self,
        chunk: &mut [u8],
        budget: usize,
        lines: &mut Vec<String>,
    ) -> io::Result<bool> {
        let mut total = 0;
        loop {
            if total >= budget {
                return Ok(true);
            }
            match self.log.read(chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    total += n;
                    self.splitter.push(&chunk[..n], lines);
                    // A short read emptied the pipe (see read_conn).
                    if n < chunk.len() {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
