//! The supervisor's side of a runtime zygote: start it, send it spawn requests
//! with the environment's fds attached, read what it reports
//! (docs/architecture.md § Zygote channel).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::sys::socket::{
    recv, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage, MsgFlags,
    SockFlag, SockType,
};
use serde::Deserialize;

use super::pidfd::PidFd;

/// The Python runtime files, embedded so the supervisor and the runtime it
/// starts always come from the same build.
const PYTHON_RUNTIME: &[(&str, &str)] = &[
    ("zygote.py", include_str!("../../runtimes/python/zygote.py")),
    (
        "sandbox.py",
        include_str!("../../runtimes/python/sandbox.py"),
    ),
    (
        "bootstrap.py",
        include_str!("../../runtimes/python/bootstrap.py"),
    ),
    (
        "provided.py",
        include_str!("../../runtimes/python/provided.py"),
    ),
    (
        "nodehost.py",
        include_str!("../../runtimes/python/nodehost.py"),
    ),
];

/// The Node.js runtime files (docs/architecture.md § Node.js environments),
/// bound read-only into node environments at /var/runtime/node.
const NODE_RUNTIME: &[(&str, &str)] = &[
    (
        "bootstrap.js",
        include_str!("../../runtimes/node/bootstrap.js"),
    ),
    ("channel.js", include_str!("../../runtimes/node/channel.js")),
    ("errors.js", include_str!("../../runtimes/node/errors.js")),
    ("invoke.js", include_str!("../../runtimes/node/invoke.js")),
    ("loader.js", include_str!("../../runtimes/node/loader.js")),
    ("logging.js", include_str!("../../runtimes/node/logging.js")),
    (
        "package.json",
        include_str!("../../runtimes/node/package.json"),
    ),
    ("prime.mjs", include_str!("../../runtimes/node/prime.mjs")),
];

/// The zygote's end of the channel is this fd in the zygote.
const ZYGOTE_CHANNEL_FD: RawFd = 3;
/// Spawn requests are ~10 KB; a burst of hundreds must not hit EAGAIN at once.
const CHANNEL_SNDBUF: usize = 8 * 1024 * 1024;
/// Largest datagram the zygote sends us.
const MAX_REPORT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    #[error("cannot write the runtime file {path}: {source}")]
    WriteRuntime { path: PathBuf, source: io::Error },
    #[error("cannot create the zygote channel: {0}")]
    Channel(#[source] nix::Error),
    #[error("cannot start the zygote {python}: {source}")]
    Start { python: PathBuf, source: io::Error },
}

/// What the zygote reports.
#[derive(Debug, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ZygoteReport {
    Hello {
        pid: i32,
        #[serde(default)]
        preload_ms: f64,
    },
    Spawned {
        env_id: String,
        pid: i32,
    },
    SpawnFailed {
        env_id: String,
        error: String,
    },
}

struct Pending {
    message: Vec<u8>,
    fds: [OwnedFd; 2],
}

pub struct Zygote {
    pub generation: u64,
    pub started: Instant,
    /// When it said hello: before that it is still preloading (the only
    /// other state a zygote has is dead, seen through its pidfd).
    pub ready_at: Option<Instant>,
    pub pidfd: PidFd,
    channel: OwnedFd,
    queue: VecDeque<Pending>,
    /// The zygote closed its end of the channel: it is dead or dying, and
    /// its pidfd event may not have been handled yet.
    closed: bool,
}

/// Write the embedded Python runtime below `dir` (state dir), returning the dir.
pub fn install_python_runtime(dir: &Path) -> Result<PathBuf, ZygoteError> {
    install_runtime(&dir.join("runtime").join("python"), PYTHON_RUNTIME)
}

/// Write the embedded Node.js runtime below `dir` (state dir), returning the dir.
pub fn install_node_runtime(dir: &Path) -> Result<PathBuf, ZygoteError> {
    install_runtime(&dir.join("runtime").join("node"), NODE_RUNTIME)
}

fn install_runtime(dir: &Path, files: &[(&str, &str)]) -> Result<PathBuf, ZygoteError> {
    let dir = dir.to_owned();
    for (name, text) in files {
        let path = dir.join(name);
        let write = || -> io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| ZygoteError::WriteRuntime {
            path: path.clone(),
            source,
        })?;
    }
    Ok(dir)
}

impl Zygote {
    pub fn start(
        python: &Path,
        runtime_dir: &Path,
        generation: u64,
    ) -> Result<Zygote, ZygoteError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(ZygoteError::Channel)?;
        // Root may raise the buffer past wmem_max (socket(7) SO_SNDBUFFORCE);
        // if that fails the queue below still keeps every request.
        let _ = setsockopt(&ours, sockopt::SndBufForce, &CHANNEL_SNDBUF);
        set_nonblocking(ours.as_raw_fd()).map_err(ZygoteError::Channel)?;

        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = Command::new(python);
        cmd.arg("-I")
            .arg("-B")
            .arg(runtime_dir.join("zygote.py"))
            .env_clear()
            .env("LAMBDALET_ZYGOTE_FD", ZYGOTE_CHANNEL_FD.to_string())
            .env("PYTHONHASHSEED", "random")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe calls (dup2, sigprocmask, prctl).
        unsafe {
            cmd.pre_exec(move || {
                // The channel goes to fd 3 without CLOEXEC (dup2 clears it).
                if libc::dup2(theirs_fd, ZYGOTE_CHANNEL_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // The supervisor blocks the signals it reads through a
                // signalfd; its children must not inherit that mask.
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                // If the supervisor dies, so does the zygote (prctl(2)).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ZygoteError::Start {
            python: python.to_path_buf(),
            source,
        })?;
        drop(theirs);
        let pidfd = PidFd::open(child.id() as i32).map_err(|source| ZygoteError::Start {
            python: python.to_path_buf(),
            source,
        })?;
        // The pidfd owns reaping from here on; std's Child is not used again.
        drop(child);
        Ok(Zygote {
            generation,
            started: Instant::now(),
            ready_at: None,
            pidfd,
            channel: ours,
            queue: VecDeque::new(),
            closed: false,
        })
    }

    /// Whether the zygote has closed its end of the channel, as `recv` or
    /// `flush` found. The kernel shuts the channel down before it drops the
    /// requests queued in it (unix_release_sock), so once a blank's worker
    /// socket closes because its request was dropped unread, reading the
    /// channel to its end makes this true: that blank was lost with its
    /// zygote, whether or not the zygote's pidfd event was handled yet.
    pub fn closed(&self) -> bool {
        self.closed
    }

    pub fn channel_fd(&self) -> RawFd {
        self.channel.as_raw_fd()
    }

    /// Queue a spawn request with its two fds ([worker socket, log pipe
    /// write end]); sent at once if the channel has room.
    pub fn spawn(&mut self, message: Vec<u8>, fds: [OwnedFd; 2]) -> io::Result<()> {
        self.queue.push_back(Pending { message, fds });
        self.flush()
    }

    /// Send queued requests until the channel is full. Returns Ok when the
    /// queue is empty or the channel would block (wait for writable).
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some(p) = self.queue.front() {
            let fds = [p.fds[0].as_raw_fd(), p.fds[1].as_raw_fd()];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let iov = [IoSlice::new(&p.message)];
            match sendmsg::<()>(
                self.channel.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => {
                    // Our copies close here; the zygote holds its own now.
                    self.queue.pop_front();
                }
                Err(nix::Error::EAGAIN) => return Ok(()),
                // The zygote died and the supervisor has not seen its pidfd
                // event yet: the requests stay queued, for the next zygote
                // (`take_queue`), instead of failing the cold starts that
                // wait for them.
                Err(nix::Error::EPIPE | nix::Error::ECONNRESET) => {
                    self.closed = true;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Read one report; `Ok(None)` when there is nothing more to read now.
    /// `Err(UnexpectedEof)` when the zygote closed its end.
    pub fn recv(&mut self) -> io::Result<Option<ZygoteReport>> {
        let mut buf = vec![0u8; MAX_REPORT];
        match recv(self.channel.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            // ECONNRESET: it closed its end with requests of ours unread.
            Ok(0) | Err(nix::Error::ECONNRESET) => {
                self.closed = true;
                Err(io::ErrorKind::UnexpectedEof.into())
            }
            Ok(n) => serde_json::from_slice(&buf[..n])
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(nix::Error::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Take the requests that were queued but never sent, to send them to
    /// the next zygote.
    pub fn take_queue(&mut self) -> Vec<(Vec<u8>, [OwnedFd; 2])> {
        self.queue.drain(..).map(|p| (p.message, p.fds)).collect()
    }
}

pub fn set_nonblocking(fd: RawFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
