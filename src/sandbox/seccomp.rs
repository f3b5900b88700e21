//! The seccomp filter installed last in every environment, before user code.
//!
//! The policy is data (`seccomp/default.json`, reviewed with a comment per
//! syscall) in seccompiler's JSON format
//! (<https://github.com/rust-vmm/seccompiler/blob/main/docs/json_format.md>). It
//! is compiled here, in the supervisor, to the raw `struct sock_filter` array
//! the child hands to `seccomp(SECCOMP_SET_MODE_FILTER)` (seccomp(2)); the child
//! does no parsing.
//!
//! One seccompiler filter has a single match action, and the default policy
//! needs two (EPERM for dangerous syscalls, ENOSYS for clone3). So a policy file
//! may hold several filters, and [`compile`] chains them into one BPF program:
//!
//! * filters run in the order of their names; a filter's "allow" continues with
//!   the next filter, its first other verdict is final. (Every `RET ALLOW` of
//!   a filter but the last becomes a forward jump to the next filter's start.)
//!   For deny-list filters on disjoint syscalls this is exactly what installing
//!   them separately would do, so a syscall may appear in one filter only;
//! * a filter named `NAME@ARCH` (`deny_eperm@x86_64`) is only compiled for that
//!   architecture: `iopl` and `ioperm` exist on x86 only, and seccompiler refuses
//!   unknown syscall names, which catches typos everywhere else.
//!
//! Two properties come from how seccompiler builds each filter and from the
//! chaining:
//!
//! * every filter starts by checking `seccomp_data.arch` and kills the process
//!   on any other architecture, so 32-bit syscalls on x86_64 (int 0x80, another
//!   syscall table a deny-list would miss) are refused outright;
//! * on x86_64 a guard in front returns ENOSYS for syscall numbers with the x32
//!   bit (`__X32_SYSCALL_BIT`, 0x40000000): x32 calls carry AUDIT_ARCH_X86_64 but
//!   different numbers, so a deny-list of x86_64 numbers would let `mount` through
//!   as x32 on kernels built with CONFIG_X86_X32_ABI (as libseccomp also guards).
//!
//! The kernel (≥ 5.11) caches which syscalls a filter always allows
//! (SECCOMP_CACHE, kernel/seccomp.c `seccomp_cache_prepare`); its emulator
//! understands the jumps used here, so syscalls that no rule names cost nothing
//! per call.

use std::collections::BTreeMap;

use seccompiler::sock_filter;
pub use seccompiler::TargetArch;

/// The default policy, embedded at build time.
pub const DEFAULT_POLICY: &[u8] = include_bytes!("../../seccomp/default.json");

/// Bytes per `struct sock_filter` (linux/filter.h): u16 code, u8 jt, u8 jf, u32 k.
pub const SOCK_FILTER_SIZE: usize = 8;
/// BPF_MAXINSNS (linux/bpf_common.h): the kernel refuses longer programs.
const BPF_MAXINSNS: usize = 4096;

// Classic BPF opcodes (linux/bpf_common.h) and seccomp return values
// (linux/seccomp.h) for the instructions written here by hand.
/// `BPF_LD | BPF_W | BPF_ABS`.
const BPF_LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JA`.
const BPF_JMP_JA: u16 = 0x05;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const BPF_JMP_JGE_K: u16 = 0x35;
/// `BPF_RET | BPF_K`.
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// `offsetof(struct seccomp_data, nr)`.
const SECCOMP_DATA_NR: u32 = 0;
/// `__X32_SYSCALL_BIT` (arch/x86/include/uapi/asm/unistd.h).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "parse the seccomp policy: {source} (it must be a JSON object of seccompiler filters)"
    )]
    ParsePolicy { source: serde_json::Error },
    #[error("the seccomp policy has no filter for {arch:?}")]
    EmptyPolicy { arch: TargetArch },
    #[error(
        "syscall {syscall:?} is in both filters {first:?} and {second:?} of the seccomp policy: \
         chained filters must name disjoint syscalls"
    )]
    SyscallInTwoFilters {
        syscall: String,
        first: String,
        second: String,
    },
    #[error("compile seccomp filter {filter:?} for {arch:?}: {source}")]
    CompileFilter {
        filter: String,
        arch: TargetArch,
        source: seccompiler::Error,
    },
    #[error(
        "the seccomp program has {len} instructions, more than the kernel's {BPF_MAXINSNS}: \
         shorten the policy"
    )]
    ProgramTooLong { len: usize },
    #[error("no seccomp support for this host's architecture {arch:?}")]
    UnsupportedArch { arch: String },
}

/// The architecture this binary runs on.
pub fn host_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|_| SeccompError::UnsupportedArch {
        arch: std::env::consts::ARCH.to_owned(),
    })
}

/// The default policy compiled for the host's architecture.
pub fn default_filter() -> Result<Vec<u8>, SeccompError> {
    compile(DEFAULT_POLICY, host_arch()?)
}

/// Compiles a policy (seccompiler JSON; several filters are chained as the
/// module documentation says) to `struct sock_filter` bytes in native byte
/// order, ready for `seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog)`.
pub fn compile(policy_json: &[u8], arch: TargetArch) -> Result<Vec<u8>, SeccompError> {
    let filters: BTreeMap<String, serde_json::Value> = serde_json::from_slice(policy_json)
        .map_err(|source| SeccompError::ParsePolicy { source })?;
    let arch_name = arch_name(arch);
    let selected: Vec<(&String, &serde_json::Value)> = filters
        .iter()
        .filter(|(name, _)| match name.split_once('@') {
            Some((_, only)) => only == arch_name,
            None => true,
        })
        .collect();
    if selected.is_empty() {
        return Err(SeccompError::EmptyPolicy { arch });
    }
    check_disjoint(&selected)?;

    let mut program: Vec<sock_filter> = Vec::new();
    if arch == TargetArch::x86_64 {
        program.extend(x32_guard());
    }
    let last = selected.len() - 1;
    for (i, (name, filter)) in selected.into_iter().enumerate() {
        let one = serde_json::json!({ name.as_str(): filter }).to_string();
        let mut map = seccompiler::compile_from_json(one.as_bytes(), arch).map_err(|source| {
            SeccompError::CompileFilter {
                filter: name.clone(),
                arch,
                source,
            }
        })?;
        let mut bpf = map
            .remove(name.as_str())
            .expect("compiled the one filter given");
        if i != last {
            chain_allow_to_next(&mut bpf);
        }
        program.extend(bpf);
    }
    if program.len() > BPF_MAXINSNS {
        return Err(SeccompError::ProgramTooLong { len: program.len() });
    }
    Ok(to_bytes(&program))
}

/// Native-endian `struct sock_filter` bytes back to instructions (for
/// installing the program from Rust, e.g. in tests).
pub fn from_bytes(bytes: &[u8]) -> Vec<sock_filter> {
    bytes
        .chunks_exact(SOCK_FILTER_SIZE)
        .map(|c| sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

fn to_bytes(program: &[sock_filter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * SOCK_FILTER_SIZE);
    for insn in program {
        out.extend_from_slice(&insn.code.to_ne_bytes());
        out.push(insn.jt);
        out.push(insn.jf);
        out.extend_from_slice(&insn.k.to_ne_bytes());
    }
    out
}

fn arch_name(arch: TargetArch) -> &'static str {
    match arch {
        TargetArch::x86_64 => "x86_64",
        TargetArch::aarch64 => "aarch64",
        TargetArch::riscv64 => "riscv64",
    }
}

/// `nr >= 0x40000000` → ENOSYS, as a kernel without x32 would answer.
fn x32_guard() -> [sock_filter; 3] {
    [
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: SECCOMP_DATA_NR,
        },
        sock_filter {
            code: BPF_JMP_JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
    ]
}

/// Rewrites every `RET ALLOW` of `bpf` into `JA` to the instruction after the
/// program (the next filter's first). `JA`'s 32-bit offset counts from the next
/// instruction, so the jump from index `i` is `len - 1 - i`. The instruction
/// count does not change, so the program's own jumps stay valid.
fn chain_allow_to_next(bpf: &mut [sock_filter]) {
    let len = bpf.len();
    for (i, insn) in bpf.iter_mut().enumerate() {
        if insn.code == BPF_RET_K && insn.k == SECCOMP_RET_ALLOW {
            *insn = sock_filter {
                code: BPF_JMP_JA,
                jt: 0,
                jf: 0,
                k: (len - 1 - i) as u32,
            };
        }
    }
}

/// Chained filters act like separately installed ones only if no syscall is in
/// two of them (the kernel would pick the strictest verdict; the chain takes the
/// first).
fn check_disjoint(filters: &[(&String, &serde_json::Value)]) -> Result<(), SeccompError> {
    let mut owner: BTreeMap<&str, &String> = BTreeMap::new();
    for (name, filter) in filters {
        let rules = filter
            .get("filter")
            .and_then(|f| f.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut mine = std::collections::BTreeSet::new();
        for rule in rules {
            if let Some(syscall) = rule.get("syscall").and_then(|s| s.as_str()) {
                mine.insert(syscall);
            }
        }
        for syscall in mine {
            if let Some(first) = owner.insert(syscall, name) {
                return Err(SeccompError::SyscallInTwoFilters {
                    syscall: syscall.to_owned(),
                    first: first.clone(),
                    second: (*name).clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    #[test]
    fn default_policy_compiles_for_every_arch() {
        let bytes = default_filter().unwrap();
        assert_eq!(bytes.len() % SOCK_FILTER_SIZE, 0);
        let program = from_bytes(&bytes);
        assert!(
            program.len() > 100 && program.len() < 1000,
            "{}",
            program.len()
        );
        // Ends with the last filter's default action: allow.
        assert_eq!(
            (program.last().unwrap().code, program.last().unwrap().k),
            (BPF_RET_K, SECCOMP_RET_ALLOW)
        );
        // Only the last filter may allow; earlier ones jump onwards.
        let allows = program
            .iter()
            .filter(|i| i.code == BPF_RET_K && i.k == SECCOMP_RET_ALLOW)
            .count();
        assert!(allows >= 1);
        for arch in [TargetArch::x86_64, TargetArch::aarch64, TargetArch::riscv64] {
            compile(DEFAULT_POLICY, arch).unwrap();
        }
        assert!(matches!(
            compile(b"{}", TargetArch::x86_64),
            Err(SeccompError::EmptyPolicy { .. })
        ));
        assert!(matches!(
            compile(b"[", TargetArch::x86_64),
            Err(SeccompError::ParsePolicy { .. })
        ));
    }

    #[test]
    fn refuses_overlapping_filters_and_unknown_syscalls() {
        let overlap = br#"{
            "a": {"mismatch_action": "allow", "match_action": {"errno": 1}, "filter": [{"syscall": "mount"}]},
            "b": {"mismatch_action": "allow", "match_action": {"errno": 38}, "filter": [{"syscall": "mount"}]}
        }"#;
        assert!(matches!(
            compile(overlap, TargetArch::x86_64),
            Err(SeccompError::SyscallInTwoFilters { .. })
        ));
        let typo = br#"{"a": {"mismatch_action": "allow", "match_action": {"errno": 1},
            "filter": [{"syscall": "mountt"}]}}"#;
        assert!(matches!(
            compile(typo, TargetArch::x86_64),
            Err(SeccompError::CompileFilter { .. })
        ));
        // An arch-specific filter is left out on other architectures.
        let x86_only = br#"{"a@x86_64": {"mismatch_action": "allow", "match_action": {"errno": 1},
            "filter": [{"syscall": "iopl"}]}}"#;
        compile(x86_only, TargetArch::x86_64).unwrap();
        assert!(matches!(
            compile(x86_only, TargetArch::aarch64),
            Err(SeccompError::EmptyPolicy { .. })
        ));
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Forks; the child runs `checks` (raw syscalls only: it must stay
    /// async-signal-safe, the test harness is multithreaded) and exits with its
    /// result. Returns the child's exit code.
    fn in_child(checks: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only makes raw syscalls through libc (prctl, seccomp,
        // unshare, keyctl, clone, personality, getpid, waitpid) and leaves with
        // _exit, never returning into the harness; none of it allocates or takes
        // locks.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = checks();
                // SAFETY: _exit ends the child without running the parent's
                // atexit handlers or destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, code) => code,
                other => panic!("child ended with {other:?}"),
            },
        }
    }

    /// Raw syscall returning `Err(errno)` on failure.
    fn sys(nr: libc::c_long, a: libc::c_long, b: libc::c_long) -> Result<libc::c_long, i32> {
        // SAFETY: only called with syscalls whose arguments here are integers or
        // NULL pointers; none writes to memory of ours.
        let rc = unsafe { libc::syscall(nr, a, b, 0, 0, 0) };
        if rc == -1 {
            Err(errno())
        } else {
            Ok(rc)
        }
    }

    #[test]
    fn filter_refuses_dangerous_syscalls_and_allows_the_rest() {
        let program = from_bytes(&default_filter().unwrap());
        const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
        const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
        const ADDR_NO_RANDOMIZE: libc::c_long = 0x0040000;

        // Control: without the filter, unshare(CLONE_NEWUSER) is not refused
        // with EPERM here, so an EPERM below comes from the filter.
        let control = in_child(
            || match sys(libc::SYS_unshare, libc::CLONE_NEWUSER as _, 0) {
                Ok(_) => 0,
                Err(e) => e,
            },
        );
        assert_ne!(control, libc::EPERM, "control: unshare already refused");

        let code = in_child(|| {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return 100;
            }
            if seccompiler::apply_filter(&program).is_err() {
                return 101;
            }
            // Refused with EPERM.
            if sys(libc::SYS_unshare, libc::CLONE_NEWUSER as _, 0) != Err(libc::EPERM) {
                return 1;
            }
            if sys(
                libc::SYS_keyctl,
                KEYCTL_GET_KEYRING_ID,
                KEY_SPEC_SESSION_KEYRING,
            ) != Err(libc::EPERM)
            {
                return 2;
            }
            if sys(libc::SYS_mount, 0, 0) != Err(libc::EPERM) {
                return 3;
            }
            if sys(libc::SYS_personality, ADDR_NO_RANDOMIZE, 0) != Err(libc::EPERM) {
                return 4;
            }
            // clone with a namespace flag: EPERM; if it ever succeeded, the
            // grandchild leaves at once.
            match sys(libc::SYS_clone, (libc::CLONE_NEWNS | libc::SIGCHLD) as _, 0) {
                Err(libc::EPERM) => {}
                // SAFETY: _exit in the grandchild.
                Ok(0) => unsafe { libc::_exit(0) },
                _ => return 5,
            }
            // clone3: ENOSYS, so that libc falls back to clone.
            if sys(libc::SYS_clone3, 0, 0) != Err(libc::ENOSYS) {
                return 6;
            }
            // x32 numbering is refused as if absent.
            #[cfg(target_arch = "x86_64")]
            if sys(0x4000_0000 | libc::SYS_getpid, 0, 0) != Err(libc::ENOSYS) {
                return 7;
            }
            // Allowed: getpid, the persona query, and a plain fork.
            // SAFETY: getpid has no arguments.
            if sys(libc::SYS_getpid, 0, 0) != Ok(unsafe { libc::getpid() } as _) {
                return 8;
            }
            if sys(libc::SYS_personality, 0xffff_ffff, 0).is_err() {
                return 9;
            }
            match sys(libc::SYS_clone, libc::SIGCHLD as _, 0) {
                // SAFETY: _exit in the grandchild.
                Ok(0) => unsafe { libc::_exit(0) },
                Ok(pid) => {
                    let mut status = 0;
                    // SAFETY: waitpid on our own child with a valid status pointer.
                    if unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) }
                        != pid as libc::pid_t
                    {
                        return 11;
                    }
                }
                Err(_) => return 10,
            }
            0
        });
        assert_eq!(code, 0, "check {code} failed in the filtered child");
    }

    /// The real interpreter under the filter: threads (glibc tries clone3 first,
    /// gets ENOSYS, falls back to clone) and fork work, unshare does not.
    #[test]
    fn python_runs_under_the_filter() {
        use std::os::unix::process::CommandExt;
        let Ok(python) = crate::sandbox::host::HostPython::discover(None) else {
            eprintln!("skipping python_runs_under_the_filter: no python3");
            return;
        };
        let program = from_bytes(&default_filter().unwrap());
        let script = r#"
import ctypes, os, threading
out = []
t = threading.Thread(target=lambda: out.append(1)); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
_, status = os.waitpid(pid, 0)
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.unshare(0x10000000)
print(out[0], os.waitstatus_to_exitcode(status), rc, ctypes.get_errno())
"#;
        let mut cmd = std::process::Command::new(&python.executable);
        cmd.args(["-I", "-S", "-c", script]);
        // SAFETY: the closure runs between fork and exec; it only makes the prctl
        // and seccomp syscalls (seccompiler::apply_filter) and builds an
        // io::Error from an errno, which does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                seccompiler::apply_filter(&program)
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))
            });
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 7 -1 1");
    }
}
