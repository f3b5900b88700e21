//! Process handles as pidfds (pidfd_open(2)): race-free signalling and
//! reaping of the zygote and of every environment's PID 1, pollable in the
//! event loop (a pidfd is readable once its process has exited).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// How a process ended, as waitid(2) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// Lambda's wording: `exit status 1`, `signal: killed`.
    pub fn describe(self) -> String {
        match self {
            ExitStatus::Exited(code) => format!("exit status {code}"),
            ExitStatus::Signaled(libc::SIGKILL) => "signal: killed".to_string(),
            ExitStatus::Signaled(sig) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str().trim_start_matches("SIG").to_lowercase())
                    .unwrap_or_else(|_| sig.to_string());
                format!("signal: {name}")
            }
        }
    }
}

#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
    /// Set once reaped: a reaped pid may be reused, so it is never waited on
    /// or signalled again.
    status: std::cell::Cell<Option<ExitStatus>>,
}

impl PidFd {
    pub fn open(pid: i32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(PidFd {
            fd,
            pid,
            status: std::cell::Cell::new(None),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// SIGKILL through the pidfd: it can never hit a recycled pid.
    pub fn kill(&self) -> io::Result<()> {
        if self.status.get().is_some() {
            return Ok(());
        }
        // SAFETY: a valid pidfd, a signal number, a null siginfo and flags 0.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            // ESRCH: it is already gone, which is what we wanted.
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Reap the process if it has exited. `Ok(None)`: still running (or not
    /// yet reparented to us, see docs/architecture.md).
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status.get() {
            return Ok(Some(status));
        }
        // SAFETY: siginfo_t is plain data; zeroed is a valid initial value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: P_PIDFD with our own pidfd and a valid siginfo pointer.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.fd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: waitid filled `info`; si_pid is 0 when nothing has exited.
        let pid = unsafe { info.si_pid() };
        if pid == 0 {
            return Ok(None);
        }
        // SAFETY: as above, for a CLD_* siginfo.
        let status = unsafe { info.si_status() };
        let status = match info.si_code {
            libc::CLD_EXITED => ExitStatus::Exited(status),
            _ => ExitStatus::Signaled(status),
        };
        self.status.set(Some(status));
        Ok(Some(status))
    }

    /// Kill and reap, waiting at most `limit`. Blocking: only for shutdown,
    /// where nothing else is served any more.
    pub fn kill_and_reap(&self, limit: std::time::Duration) -> io::Result<Option<ExitStatus>> {
        self.kill()?;
        let start = std::time::Instant::now();
        loop {
            match self.try_wait() {
                Ok(Some(status)) => return Ok(Some(status)),
                Ok(None) => {}
                // Not (yet) our child: its parent A has not exited. Keep trying.
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {}
                Err(e) => return Err(e),
            }
            if start.elapsed() > limit {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Make this process a child subreaper (prctl(2) PR_SET_CHILD_SUBREAPER): an
/// environment's PID 1 is orphaned when its short-lived parent exits and must
/// land here, not at the host's init, so we can reap it and read its status.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with an integer option and argument.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reap children that are not tracked by any pidfd (orphans reparented to us,
/// e.g. when a zygote died with children in flight). `tracked` says whether a
/// pid belongs to someone who will reap it through its pidfd.
pub fn reap_untracked(tracked: impl Fn(i32) -> bool) {
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid initial value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // WNOWAIT: peek first, so a tracked child's status stays for its owner.
        // SAFETY: P_ALL with a valid siginfo pointer.
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: filled by waitid when rc == 0.
        let pid = unsafe { info.si_pid() };
        if rc < 0 || pid == 0 || tracked(pid) {
            return;
        }
        // SAFETY: reaps exactly the untracked pid just seen.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
}
