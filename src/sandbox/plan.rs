//! The sandbox plan: every decision about an environment's isolation, computed
//! in the supervisor and applied step by step by the zygote child
//! (`runtimes/python/sandbox.py`), which decides nothing itself. The format and
//! the order in which the child applies it are docs/architecture.md's ("`sandbox`:
//! the plan").
//!
//! A plan has two halves. The blank half ([`BlankTemplate`], computed once per
//! runtime) namespaces a zygote child and pivots it into a generic root (with
//! the state dir's code directory bound at a private path); such
//! blanks are made ahead of time, off the invoke path. The specialisation
//! ([`SpecTemplate`], computed once per function revision) binds the function's
//! code, detaches the others, mounts its /tmp, drops to the function's uid
//! and installs seccomp: that is all a cold start has left to do.
//!
//! The root it builds (all mounts `nosuid`; `nodev` except the /dev nodes):
//!
//! | path | what |
//! | --- | --- |
//! | `/` | tmpfs, read-only once specialised |
//! | `/var/lang` | the interpreter's `sys.base_prefix`, read-only (as on Lambda) |
//! | `/usr/lib/<triple>`, `/usr/lib64`, … | host library dirs, read-only, same paths |
//! | `/lib`, `/lib64` | symlinks, where the host has them |
//! | `/etc` | passwd, group, hosts, nsswitch.conf written; ld.so.cache read-only |
//! | `/var/task` | the function's code, read-only |
//! | `/opt` | the function's layers merged in order, read-only; else empty |
//! | `/tmp` | tmpfs of the function's ephemeral storage size, mode 1777 |
//! | `/dev` | read-only tmpfs with null, zero, full, random, urandom and fd links |
//! | `/proc` | a new procfs; OCI's masked paths masked, kernel knobs read-only |
//!
//! A container image function's environment has the image's own root
//! instead (`plan/image.rs`): the same /dev, /proc and /tmp, the
//! interpreter at `/.lambdalet/python`, nothing else of the host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use super::host::{HostLayout, HostPython};

pub mod image;

/// Namespaces the child unshares (architecture.md step 1): mount, UTS, IPC,
/// network, PID, cgroup. No user namespace: the child starts as real root and
/// drops to the function's uid itself, so no id maps are needed.
pub const UNSHARE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWCGROUP) as u64;
/// The root tmpfs holds only directories, symlinks and a few small /etc files.
pub const ROOT_TMPFS_OPTIONS: &str = "size=4m,mode=0755";
/// The interpreter's installation inside the sandbox, as on Lambda.
pub const LANG_DIR: &str = "/var/lang";
/// The function's code (`LAMBDA_TASK_ROOT`) and the working directory.
pub const TASK_DIR: &str = "/var/task";
/// Layers, merged (empty for now).
pub const OPT_DIR: &str = "/opt";
/// Where a blank sees the state dir's `functions` directory (read-only, 0700
/// mount point), until its specialisation has bound one function's code from
/// it; then it is detached and removed, before any user code runs. A blank
/// holds no other host mount: it does not pin the host's mount tree.
pub const FUNCTIONS_MOUNT: &str = "/.lambdalet-functions";
/// Where a node blank finds the host's node binary (read-only).
pub const NODE_BINARY: &str = "/var/runtime/bin/node";
/// Where a node blank finds lambdalet's Node.js runtime (read-only).
pub const NODE_RUNTIME_DIR: &str = "/var/runtime/node";
/// Lambda's user name for function code.
pub const SANDBOX_USER: &str = "sbx_user1051";
/// Open files per environment.
pub const NOFILE_LIMIT: u64 = 1024;
/// Hostnames are `lambdalet-<env_id>`, cut to HOST_NAME_MAX (64, gethostname(2)).
pub const HOSTNAME_PREFIX: &str = "lambdalet-";
const HOST_NAME_MAX: usize = 64;

/// OCI runtime-spec's default masked files (config-linux.md, as runc/crun
/// apply them): /dev/null is bound over each that exists.
const PROC_MASKED: &[&str] = &[
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "sysrq-trigger",
];
/// Masked directories: an empty read-only tmpfs over each that exists.
const PROC_MASKED_DIRS: &[&str] = &["acpi", "asound", "scsi"];
/// Kernel knobs kept visible but read-only (OCI's default readonlyPaths).
const PROC_READONLY: &[&str] = &["bus", "fs", "irq", "sys"];
/// Device nodes bound from the host's /dev.
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// Mount flags as the plan carries them. `c_ulong` is u64 here but u32 on
/// 32-bit targets, hence the cast.
#[allow(clippy::unnecessary_cast)]
const fn flags(f: libc::c_ulong) -> u64 {
    f as u64
}
const MS_BIND: u64 = flags(libc::MS_BIND);
/// Bind mounts ignore every flag but MS_REC on creation (mount(2), "Creating a
/// bind mount"); read-only and friends take a second, remount call. A bind
/// remount sets all per-mount flags at once, so nosuid/nodev must be repeated.
const RO_BIND_REMOUNT: u64 =
    flags(libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV);

/// One step of the plan. Paths (`path`, `target`) are inside the new root; the
/// `source` of a mount is a path as the child sees it at that step (host paths
/// before pivot_root, sandbox paths in `after_pivot`) or a filesystem name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Mkdir {
        path: String,
        mode: u32,
    },
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: u64,
        data: Option<String>,
        kind: MountKind,
    },
    Remount {
        target: String,
        flags: u64,
    },
    Write {
        path: String,
        content: String,
        mode: u32,
    },
    Symlink {
        target: String,
        path: String,
    },
    Umount {
        target: String,
        flags: u64,
    },
    Rmdir {
        path: String,
    },
}

/// What the child creates as the mount point before mounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    Dir,
    File,
}

/// JSON rendered once and shared: serialises as the JSON it holds.
#[derive(Clone)]
pub struct Prerendered(Arc<RawValue>);

impl Prerendered {
    fn of<T: Serialize>(value: &T) -> Result<Prerendered, PlanError> {
        let raw = serde_json::value::to_raw_value(value)
            .map_err(|source| PlanError::Render { source })?;
        Ok(Prerendered(Arc::from(raw)))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl std::fmt::Debug for Prerendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for Prerendered {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// The `sandbox` object of a spawn request (docs/architecture.md), field for
/// field: a blank environment. `ops` and `after_pivot` are the template's
/// pre-rendered JSON; [`BlankTemplate::ops`] has them typed.
#[derive(Debug, Clone, Serialize)]
pub struct BlankPlan {
    pub cgroup_procs: Vec<PathBuf>,
    pub unshare_flags: u64,
    pub new_root: String,
    pub root_tmpfs_options: String,
    /// A container image's unpacked root (a host path), bound read-only at
    /// `new_root` instead of the root tmpfs (plan/image.rs); None: the tmpfs.
    pub root_bind: Option<String>,
    pub ops: Prerendered,
    pub after_pivot: Prerendered,
    pub hostname: String,
    pub cap_last_cap: u32,
}

/// The `sandbox` object of a specialize message: what makes a blank the
/// environment of one function revision.
#[derive(Debug, Clone, Serialize)]
pub struct SpecPlan {
    pub ops: Vec<Op>,
    pub uid: u32,
    pub gid: u32,
    pub rlimits: Vec<[u64; 3]>,
    pub workdir: String,
    /// base64 of `struct sock_filter[]`, native endian.
    pub seccomp_bpf: String,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{what} {path:?} must be an absolute path")]
    NotAbsolute { what: &'static str, path: PathBuf },
    #[error("{what} {path:?} is not valid UTF-8, which the plan (JSON) cannot carry")]
    NonUtf8Path { what: &'static str, path: PathBuf },
    #[error(
        "function code must not run as root (uid {uid}, gid {gid}): give it its own uid and gid"
    )]
    RunsAsRoot { uid: u32, gid: u32 },
    #[error("/tmp size {mb} MB is invalid: it must be at least 1 MB")]
    InvalidTmpSize { mb: u32 },
    #[error("seccomp program of {len} bytes is invalid: it must be a non-empty array of 8-byte struct sock_filter")]
    InvalidSeccompProgram { len: usize },
    #[error("code dir {code_dir:?} is not below the functions dir {functions_dir:?}, the only host directory a blank can bind code from")]
    CodeOutsideFunctions {
        code_dir: PathBuf,
        functions_dir: PathBuf,
    },
    #[error("render the plan as JSON: {source}")]
    Render { source: serde_json::Error },
}

/// What a blank is made of: the runtime and the host, nothing of a function.
#[derive(Debug, Clone, Copy)]
pub struct BlankInputs<'a> {
    /// Host directory the child mounts its root tmpfs on (the same for every
    /// environment: each mounts its own tmpfs there in its own mount namespace).
    pub new_root: &'a Path,
    /// The state dir's `functions` directory, where every code revision is.
    pub functions_dir: &'a Path,
    pub python: &'a HostPython,
    /// `host::cap_last_cap`.
    pub cap_last_cap: u32,
    /// `HostLayout::discover`: library dirs, symlinks, /proc entries.
    pub host: &'a HostLayout,
    /// The environment uses the host's network: no network namespace.
    pub host_network: bool,
}

/// Everything of a blank but its id and cgroups, rendered once.
#[derive(Debug, Clone)]
pub struct BlankTemplate {
    unshare_flags: u64,
    new_root: String,
    cap_last_cap: u32,
    ops: Vec<Op>,
    after_pivot: Vec<Op>,
    ops_json: Prerendered,
    after_pivot_json: Prerendered,
}

impl BlankTemplate {
    pub fn new(inputs: &BlankInputs) -> Result<BlankTemplate, PlanError> {
        let new_root = abs_str("new_root", inputs.new_root)?;
        let functions_dir = abs_str("functions_dir", inputs.functions_dir)?;
        let base_prefix = abs_str("python base_prefix", &inputs.python.base_prefix)?;
        let mut lib_dirs = Vec::with_capacity(inputs.host.lib_dirs.len());
        for dir in &inputs.host.lib_dirs {
            lib_dirs.push(abs_str("library dir", dir)?);
        }
        let mut symlinks = Vec::new();
        for (path, target) in &inputs.host.root_symlinks {
            symlinks.push((
                abs_str("root symlink", path)?,
                utf8("root symlink target", target)?.to_owned(),
            ));
        }
        let ops = root_ops(
            inputs.host,
            base_prefix,
            functions_dir,
            &lib_dirs,
            &symlinks,
        );
        let after_pivot = after_pivot_ops(inputs.host);
        let unshare_flags = if inputs.host_network {
            UNSHARE_FLAGS & !(libc::CLONE_NEWNET as u64)
        } else {
            UNSHARE_FLAGS
        };
        Ok(BlankTemplate {
            unshare_flags,
            new_root: new_root.to_owned(),
            cap_last_cap: inputs.cap_last_cap,
            ops_json: Prerendered::of(&ops)?,
            after_pivot_json: Prerendered::of(&after_pivot)?,
            ops,
            after_pivot,
        })
    }

    /// The template of a Node.js blank: this one, with the host's node binary
    /// bound read-only at [`NODE_BINARY`] and lambdalet's Node.js runtime at
    /// [`NODE_RUNTIME_DIR`] (noexec: node only reads it).
    pub fn with_node(&self, node: &Path, runtime_dir: &Path) -> Result<BlankTemplate, PlanError> {
        let node = abs_str("node binary", node)?;
        let runtime_dir = abs_str("node runtime dir", runtime_dir)?;
        let mut ops = self.ops.clone();
        bind_ro(&mut ops, node, NODE_BINARY, MountKind::File);
        ops.push(Op::Mount {
            source: Some(runtime_dir.to_owned()),
            target: NODE_RUNTIME_DIR.to_owned(),
            fstype: None,
            flags: MS_BIND,
            data: None,
            kind: MountKind::Dir,
        });
        ops.push(Op::Remount {
            target: NODE_RUNTIME_DIR.to_owned(),
            flags: RO_BIND_REMOUNT | flags(libc::MS_NOEXEC),
        });
        Ok(BlankTemplate {
            ops_json: Prerendered::of(&ops)?,
            ops,
            ..self.clone()
        })
    }

    /// The plan for one blank: `cgroup_procs` is `EnvCgroup::procs_files`.
    pub fn for_env(&self, env_id: &str, cgroup_procs: Vec<PathBuf>) -> BlankPlan {
        BlankPlan {
            cgroup_procs,
            unshare_flags: self.unshare_flags,
            new_root: self.new_root.clone(),
            root_tmpfs_options: ROOT_TMPFS_OPTIONS.to_owned(),
            root_bind: None,
            ops: self.ops_json.clone(),
            after_pivot: self.after_pivot_json.clone(),
            hostname: hostname(env_id),
            cap_last_cap: self.cap_last_cap,
        }
    }

    /// The steps before pivot_root, typed.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The steps after pivot_root, typed.
    pub fn after_pivot(&self) -> &[Op] {
        &self.after_pivot
    }
}

/// What a function revision adds to a blank.
#[derive(Debug, Clone, Copy)]
pub struct SpecInputs<'a> {
    /// The state dir's `functions` directory (as in [`BlankInputs`]).
    pub functions_dir: &'a Path,
    /// The function's code on the host: a directory below `functions_dir`.
    pub code_dir: &'a Path,
    /// The function's layers merged in order (`registry::merge`), a
    /// directory below `functions_dir`; None: /opt stays empty.
    pub opt_dir: Option<&'a Path>,
    /// The function's uid and gid (non-zero, distinct per function).
    pub uid: u32,
    pub gid: u32,
    /// Ephemeral storage (/tmp) in MB.
    pub tmp_mb: u32,
    /// The compiled seccomp program (`seccomp::compile`).
    pub seccomp_bpf: &'a [u8],
}

/// The specialisation of one function revision, computed once.
#[derive(Debug, Clone)]
pub struct SpecTemplate {
    plan: SpecPlan,
}

impl SpecTemplate {
    pub fn new(inputs: &SpecInputs) -> Result<SpecTemplate, PlanError> {
        if inputs.uid == 0 || inputs.gid == 0 {
            return Err(PlanError::RunsAsRoot {
                uid: inputs.uid,
                gid: inputs.gid,
            });
        }
        if inputs.tmp_mb == 0 {
            return Err(PlanError::InvalidTmpSize { mb: inputs.tmp_mb });
        }
        let bpf = inputs.seccomp_bpf;
        if bpf.is_empty() || !bpf.len().is_multiple_of(8) {
            return Err(PlanError::InvalidSeccompProgram { len: bpf.len() });
        }
        let code_dir = below_functions("code_dir", inputs.code_dir, inputs.functions_dir)?;
        let opt_dir = inputs
            .opt_dir
            .map(|dir| below_functions("opt_dir", dir, inputs.functions_dir))
            .transpose()?;
        Ok(SpecTemplate {
            plan: SpecPlan {
                ops: spec_ops(code_dir, opt_dir, inputs.uid, inputs.gid, inputs.tmp_mb),
                uid: inputs.uid,
                gid: inputs.gid,
                rlimits: vec![
                    [libc::RLIMIT_NOFILE as u64, NOFILE_LIMIT, NOFILE_LIMIT],
                    // No core dumps: they would land in the read-only
                    // /var/task or fill /tmp.
                    [libc::RLIMIT_CORE as u64, 0, 0],
                ],
                workdir: TASK_DIR.to_owned(),
                seccomp_bpf: base64::engine::general_purpose::STANDARD.encode(bpf),
            },
        })
    }

    pub fn plan(&self) -> &SpecPlan {
        &self.plan
    }
}

/// `dir` relative to `functions_dir`: some function's own directory, never
/// the functions dir itself (which holds every function's records), the only
/// host directory a blank can bind from.
fn below_functions<'p>(
    what: &'static str,
    dir: &'p Path,
    functions_dir: &Path,
) -> Result<&'p str, PlanError> {
    abs_str(what, dir)?;
    let rel = dir
        .strip_prefix(functions_dir)
        .ok()
        .filter(|rel| {
            rel.components().next().is_some()
                && rel
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
        })
        .ok_or_else(|| PlanError::CodeOutsideFunctions {
            code_dir: dir.to_owned(),
            functions_dir: functions_dir.to_owned(),
        })?;
    utf8(what, rel)
}

/// `lambdalet-<env_id>`, at most HOST_NAME_MAX bytes. It does not resolve
/// (/etc/hosts is the blank's, the same for every environment): like Lambda's
/// hostnames, it is for logs and `platform.node()`.
pub fn hostname(env_id: &str) -> String {
    let mut name = format!("{HOSTNAME_PREFIX}{env_id}");
    let mut cut = name.len().min(HOST_NAME_MAX);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    name.truncate(cut);
    name
}

/// The steps before pivot_root, in order: everything that is the same for
/// every function.
fn root_ops(
    host: &HostLayout,
    base_prefix: &str,
    functions_dir: &str,
    lib_dirs: &[&str],
    symlinks: &[(&str, String)],
) -> Vec<Op> {
    let mut ops = Vec::with_capacity(48);

    // The interpreter, where Lambda has it. Its extension modules are mmap'ed
    // PROT_EXEC, so no noexec here or on the library dirs.
    bind_ro(&mut ops, base_prefix, LANG_DIR, MountKind::Dir);
    // The libraries those extension modules link against (libssl, libffi, …),
    // at the paths ld.so.cache and DT_RUNPATH name.
    for dir in lib_dirs {
        bind_ro(&mut ops, dir, dir, MountKind::Dir);
    }

    ops.push(Op::Mkdir {
        path: "/etc".into(),
        mode: 0o755,
    });
    if let Some(cache) = &host.ld_so_cache {
        let cache = cache.to_string_lossy();
        bind_ro(&mut ops, &cache, &cache, MountKind::File);
    }
    for (name, content) in etc_files() {
        ops.push(Op::Write {
            path: format!("/etc/{name}"),
            content,
            mode: 0o644,
        });
    }
    // Mount points the specialisation fills: the code, /tmp; layers later.
    for dir in [TASK_DIR, "/tmp", OPT_DIR] {
        ops.push(Op::Mkdir {
            path: dir.into(),
            mode: 0o755,
        });
    }
    // Every function's code, until the specialisation picks one.
    ops.push(Op::Mkdir {
        path: FUNCTIONS_MOUNT.into(),
        mode: 0o700,
    });
    bind_ro(&mut ops, functions_dir, FUNCTIONS_MOUNT, MountKind::Dir);

    dev_ops(&mut ops);

    // Last: nothing after this goes through them before pivot_root, so no path
    // is resolved through a symlink while the host's root is still "/".
    for (path, target) in symlinks {
        ops.push(Op::Symlink {
            target: target.clone(),
            path: (*path).to_owned(),
        });
    }
    ops
}

/// /dev: a small tmpfs with the harmless nodes bound from the host, read-only
/// once they exist (before pivot_root: the sources are host paths).
fn dev_ops(ops: &mut Vec<Op>) {
    // /dev: a small tmpfs with the harmless nodes bound from the host. The tmpfs
    // itself is nodev; each bound node is its own mount with the host /dev's
    // flags, and open(2) checks the node's mount (may_open_dev, fs/namei.c), so
    // the nodes work. No /dev/shm, as on Lambda.
    ops.push(Op::Mount {
        source: Some("tmpfs".into()),
        target: "/dev".into(),
        fstype: Some("tmpfs".into()),
        flags: flags(libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV),
        data: Some("size=64k,mode=0755".into()),
        kind: MountKind::Dir,
    });
    for node in DEV_NODES {
        let path = format!("/dev/{node}");
        ops.push(Op::Mount {
            source: Some(path.clone()),
            target: path,
            fstype: None,
            flags: MS_BIND,
            data: None,
            kind: MountKind::File,
        });
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ops.push(Op::Symlink {
            target: target.into(),
            path: format!("/dev/{link}"),
        });
    }
    // Only after its nodes and links exist.
    ops.push(Op::Remount {
        target: "/dev".into(),
        flags: flags(
            libc::MS_REMOUNT
                | libc::MS_BIND
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NOEXEC
                | libc::MS_NODEV,
        ),
    });
}

/// The steps after pivot_root: /proc (mounted after pivot so that every source
/// is a sandbox path) and its masks. The root stays writable until the end of
/// the specialisation, which still creates files in it.
fn after_pivot_ops(host: &HostLayout) -> Vec<Op> {
    let mut ops = Vec::with_capacity(16);
    ops.push(Op::Mount {
        source: Some("proc".into()),
        target: "/proc".into(),
        fstype: Some("proc".into()),
        flags: flags(libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC),
        data: None,
        kind: MountKind::Dir,
    });
    // Masking as OCI runtimes do it, only for what this kernel has (a mount on
    // a missing /proc entry would fail: procfs cannot create files).
    for name in PROC_MASKED.iter().chain(PROC_MASKED_DIRS) {
        let Some(&is_dir) = host.proc_entries.get(*name) else {
            continue;
        };
        let target = format!("/proc/{name}");
        ops.push(if is_dir {
            Op::Mount {
                source: Some("tmpfs".into()),
                target,
                fstype: Some("tmpfs".into()),
                flags: flags(libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC),
                data: Some("size=4k,mode=0555".into()),
                kind: MountKind::Dir,
            }
        } else {
            Op::Mount {
                source: Some("/dev/null".into()),
                target,
                fstype: None,
                flags: MS_BIND,
                data: None,
                kind: MountKind::File,
            }
        });
    }
    for name in PROC_READONLY {
        if host.proc_entries.get(*name) != Some(&true) {
            continue;
        }
        let path = format!("/proc/{name}");
        ops.push(Op::Mount {
            source: Some(path.clone()),
            target: path.clone(),
            fstype: None,
            flags: MS_BIND,
            data: None,
            kind: MountKind::Dir,
        });
        ops.push(Op::Remount {
            target: path,
            flags: RO_BIND_REMOUNT | flags(libc::MS_NOEXEC),
        });
    }
    ops
}

/// The specialisation's steps: the function's code bound from the functions
/// mount, which is then detached (after this no other function's code is
/// reachable), its user in /etc, its /tmp, and the root made read-only last.
/// `code_dir` and `opt_dir` are relative to the functions dir.
fn spec_ops(code_dir: &str, opt_dir: Option<&str>, uid: u32, gid: u32, tmp_mb: u32) -> Vec<Op> {
    let mut ops = Vec::with_capacity(14);
    // The code: read-only, but executable (custom runtimes exec a bootstrap,
    // Python packages ship native extensions).
    bind_ro(
        &mut ops,
        &format!("{FUNCTIONS_MOUNT}/{code_dir}"),
        TASK_DIR,
        MountKind::Dir,
    );
    // The layers, merged at create/update time into one tree of the state
    // dir (registry::merge says why not overlayfs): bound like the code,
    // read-only and executable (/opt/bin). Before the functions mount goes,
    // since that is where the tree is reachable from.
    if let Some(opt_dir) = opt_dir {
        bind_ro(
            &mut ops,
            &format!("{FUNCTIONS_MOUNT}/{opt_dir}"),
            OPT_DIR,
            MountKind::Dir,
        );
    }
    ops.push(Op::Umount {
        target: FUNCTIONS_MOUNT.into(),
        flags: libc::MNT_DETACH as u64,
    });
    ops.push(Op::Rmdir {
        path: FUNCTIONS_MOUNT.into(),
    });
    for (name, content) in user_files(uid, gid) {
        ops.push(Op::Write {
            path: format!("/etc/{name}"),
            content,
            mode: 0o644,
        });
    }
    // /tmp: writable, sticky, size-limited; exec allowed as on Lambda.
    ops.push(Op::Mount {
        source: Some("tmpfs".into()),
        target: "/tmp".into(),
        fstype: Some("tmpfs".into()),
        flags: flags(libc::MS_NOSUID | libc::MS_NODEV),
        data: Some(format!("size={tmp_mb}m,mode=1777")),
        kind: MountKind::Dir,
    });
    // The root tmpfs read-only. MS_BIND makes this change only the mount's
    // flags, not the tmpfs superblock's (mount(2), "Remounting an existing
    // mount"), and works whatever options the root tmpfs was mounted with.
    ops.push(Op::Remount {
        target: "/".into(),
        flags: RO_BIND_REMOUNT | flags(libc::MS_NOEXEC),
    });
    ops
}

/// Bind `source` (a host path) read-only at `target`.
fn bind_ro(ops: &mut Vec<Op>, source: &str, target: &str, kind: MountKind) {
    // Not MS_REC: submounts of the host below `source` stay hidden, and a
    // remount only changes the top mount, so a recursive bind could expose
    // writable submounts.
    ops.push(Op::Mount {
        source: Some(source.to_owned()),
        target: target.to_owned(),
        fstype: None,
        flags: MS_BIND,
        data: None,
        kind,
    });
    ops.push(Op::Remount {
        target: target.to_owned(),
        flags: RO_BIND_REMOUNT,
    });
}

/// /etc as a Lambda function sees it: its user, loopback names, files-only NSS
/// (glibc ≥ 2.34 has the files and dns modules built in, so no libnss_*.so is
/// needed). `hosts: files dns` so that functions with the host network can
/// resolve names once a resolv.conf is provided; without one, glibc asks
/// 127.0.0.1, which fails at once in an own network namespace.
fn etc_files() -> [(&'static str, String); 2] {
    [
        (
            "hosts",
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".into(),
        ),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n\
             networks: files\nprotocols: files\nservices: files\n"
                .into(),
        ),
    ]
}

/// /etc/passwd and /etc/group naming the function's user.
fn user_files(uid: u32, gid: u32) -> [(&'static str, String); 2] {
    [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/sbin/nologin\n\
                 {SANDBOX_USER}:x:{uid}:{gid}::/tmp:/sbin/nologin\n"
            ),
        ),
        ("group", format!("root:x:0:\n{SANDBOX_USER}:x:{gid}:\n")),
    ]
}

fn utf8<'p>(what: &'static str, path: &'p Path) -> Result<&'p str, PlanError> {
    path.to_str().ok_or_else(|| PlanError::NonUtf8Path {
        what,
        path: path.to_owned(),
    })
}

fn abs_str<'p>(what: &'static str, path: &'p Path) -> Result<&'p str, PlanError> {
    if !path.is_absolute() {
        return Err(PlanError::NotAbsolute {
            what,
            path: path.to_owned(),
        });
    }
    utf8(what, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::collections::{BTreeMap, BTreeSet};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    fn python() -> HostPython {
        HostPython {
            executable: "/opt/py/3.11.7/bin/python3.11".into(),
            base_prefix: "/opt/py/3.11.7".into(),
            prefix: "/opt/py/3.11.7".into(),
            version: "3.11.7".into(),
        }
    }

    /// A host root in a temp dir: merged /usr, some /proc entries missing.
    fn host() -> (tempfile::TempDir, HostLayout) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
        std::fs::create_dir_all(root.join("usr/lib").join(triple)).unwrap();
        std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib64", root.join("lib64")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/ld.so.cache"), "").unwrap();
        for dir in ["sys", "irq", "fs", "acpi", "42"] {
            std::fs::create_dir_all(root.join("proc").join(dir)).unwrap();
        }
        for file in ["kcore", "keys", "timer_list", "sysrq-trigger", "cpuinfo"] {
            std::fs::write(root.join("proc").join(file), "").unwrap();
        }
        let layout = HostLayout::discover(root).unwrap();
        (tmp, layout)
    }

    const BPF: [u8; 16] = [6, 0, 0, 0, 0, 0, 0xff, 0x7f, 6, 0, 0, 0, 0, 0, 0xff, 0x7f];
    const FUNCTIONS_DIR: &str = "/state/functions";
    const CODE_DIR: &str = "/state/functions/hello/code/3";
    /// Where a blank sees CODE_DIR.
    fn code_in_blank() -> String {
        format!("{FUNCTIONS_MOUNT}/hello/code/3")
    }

    fn blank_inputs<'a>(py: &'a HostPython, host: &'a HostLayout) -> BlankInputs<'a> {
        BlankInputs {
            new_root: Path::new("/state/rootfs"),
            functions_dir: Path::new(FUNCTIONS_DIR),
            python: py,
            cap_last_cap: 40,
            host,
            host_network: false,
        }
    }

    /// Distinct uid and gid, so that a swap shows.
    fn spec_inputs() -> SpecInputs<'static> {
        SpecInputs {
            functions_dir: Path::new(FUNCTIONS_DIR),
            code_dir: Path::new(CODE_DIR),
            opt_dir: None,
            uid: 11000,
            gid: 11001,
            tmp_mb: 777,
            seccomp_bpf: &BPF,
        }
    }

    /// The `sandbox` of a spawn request, as the zygote reads it.
    fn blank_json(inputs: &BlankInputs) -> Value {
        let template = BlankTemplate::new(inputs).unwrap();
        let plan = template.for_env(
            "e-17",
            vec![
                "/sys/fs/cgroup/memory/l/e-17/cgroup.procs".into(),
                "/sys/fs/cgroup/cpu/l/e-17/cgroup.procs".into(),
            ],
        );
        serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap()
    }

    /// The `sandbox` of a specialize line, as B reads it.
    fn spec_json(inputs: &SpecInputs) -> Value {
        let template = SpecTemplate::new(inputs).unwrap();
        serde_json::from_str(&serde_json::to_string(template.plan()).unwrap()).unwrap()
    }

    #[test]
    fn a_node_blank_binds_node_and_its_runtime_read_only_after_the_python_ops() {
        let (_tmp, host) = host();
        let py = python();
        let inputs = blank_inputs(&py, &host);
        let python_blank = BlankTemplate::new(&inputs).unwrap();
        let node_blank = python_blank
            .with_node(Path::new("/usr/bin/node"), Path::new("/state/runtime/node"))
            .unwrap();
        let (p, n) = (python_blank.ops(), node_blank.ops());
        assert_eq!(&n[..p.len()], p, "everything of a Python blank, in order");
        let ro = RO_BIND_REMOUNT;
        assert_eq!(
            &n[p.len()..],
            [
                Op::Mount {
                    source: Some("/usr/bin/node".into()),
                    target: NODE_BINARY.into(),
                    fstype: None,
                    flags: MS_BIND,
                    data: None,
                    kind: MountKind::File,
                },
                Op::Remount {
                    target: NODE_BINARY.into(),
                    flags: ro,
                },
                Op::Mount {
                    source: Some("/state/runtime/node".into()),
                    target: NODE_RUNTIME_DIR.into(),
                    fstype: None,
                    flags: MS_BIND,
                    data: None,
                    kind: MountKind::Dir,
                },
                Op::Remount {
                    target: NODE_RUNTIME_DIR.into(),
                    flags: ro | flags(libc::MS_NOEXEC),
                },
            ]
        );
        // The rendered plan carries the same ops.
        let plan: Value = serde_json::from_str(
            &serde_json::to_string(&node_blank.for_env("e-1", vec![])).unwrap(),
        )
        .unwrap();
        assert_eq!(plan["ops"].as_array().unwrap().len(), n.len());
        assert!(python_blank
            .with_node(Path::new("node"), Path::new("/x"))
            .is_err());
    }

    /// The first JSON block after `heading` in docs/architecture.md.
    fn documented(heading: &str) -> Value {
        let doc = include_str!("../../docs/architecture.md");
        let section = doc
            .split(heading)
            .nth(1)
            .unwrap_or_else(|| panic!("no {heading:?} in docs/architecture.md"));
        let block = section
            .split("```json")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("json block");
        serde_json::from_str(block).expect("the documented example is JSON")
    }

    /// The documented blank plan (a spawn request's `sandbox`).
    fn documented_blank() -> Value {
        documented("### `sandbox`")
    }

    /// The documented specialize line.
    fn documented_specialize() -> Value {
        documented("#### `specialize`")
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    fn ops_of(v: &Value) -> &[Value] {
        v.as_array().unwrap()
    }

    /// The op of `kind` on `target` (mounts, remounts, umounts) or `path`.
    fn find<'v>(ops: &'v [Value], kind: &str, at: &str) -> Option<&'v Value> {
        ops.iter()
            .find(|o| o["op"] == kind && (o["target"] == at || o["path"] == at))
    }

    #[test]
    fn serialises_to_the_documented_shape() {
        let (_tmp, host) = host();
        let py = python();
        let blank = blank_json(&blank_inputs(&py, &host));
        let spec = spec_json(&spec_inputs());
        let doc_blank = documented_blank();
        let doc_line = documented_specialize();
        let doc_spec = &doc_line["sandbox"];
        assert_eq!(keys(&blank), keys(&doc_blank), "spawn request's sandbox");
        assert_eq!(doc_line["t"], "specialize");
        assert_eq!(keys(&spec), keys(doc_spec), "specialize line's sandbox");

        // Every op kind in the documented examples has exactly its fields
        // here, and every kind the plans use is documented.
        let doc_ops = || {
            ops_of(&doc_blank["ops"])
                .iter()
                .chain(ops_of(&doc_blank["after_pivot"]))
                .chain(ops_of(&doc_spec["ops"]))
        };
        let our_ops = || {
            ops_of(&blank["ops"])
                .iter()
                .chain(ops_of(&blank["after_pivot"]))
                .chain(ops_of(&spec["ops"]))
        };
        let mut doc_kinds: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for op in doc_ops() {
            doc_kinds.insert(op["op"].as_str().unwrap().into(), keys(op));
        }
        let mut seen = BTreeSet::new();
        for op in our_ops() {
            let kind = op["op"].as_str().unwrap().to_owned();
            assert_eq!(Some(&keys(op)), doc_kinds.get(&kind), "{op}");
            seen.insert(kind);
        }
        assert_eq!(seen, doc_kinds.keys().cloned().collect(), "op kinds");

        // The documented numbers are ours: an op the example shows on a path
        // the plans also have carries the same flags, mode, kind and fstype.
        for doc_op in doc_ops() {
            let at = doc_op
                .get("target")
                .filter(|_| doc_op["op"] != "symlink")
                .or_else(|| doc_op.get("path"))
                .and_then(Value::as_str)
                .unwrap();
            let kind = doc_op["op"].as_str().unwrap();
            let Some(ours) = our_ops().find(|o| {
                o["op"] == kind && (o["target"] == at && kind != "symlink" || o["path"] == at)
            }) else {
                continue;
            };
            for field in ["flags", "mode", "kind", "fstype"] {
                assert_eq!(ours.get(field), doc_op.get(field), "{field} of {doc_op}");
            }
        }

        // Scalars as documented.
        for (plan, doc, field) in [
            (&blank, &doc_blank, "unshare_flags"),
            (&blank, &doc_blank, "root_tmpfs_options"),
            (&spec, doc_spec, "workdir"),
            (&spec, doc_spec, "rlimits"),
        ] {
            assert_eq!(plan[field], doc[field], "{field}");
        }
        for field in ["new_root", "hostname"] {
            assert!(blank[field].is_string(), "{field}");
        }
        assert!(blank["cap_last_cap"].is_u64());
        for field in ["uid", "gid"] {
            assert!(spec[field].is_u64(), "{field}");
        }
        assert!(spec["seccomp_bpf"].is_string());
        assert_eq!(spec["rlimits"], json!([[7, 1024, 1024], [4, 0, 0]]));
    }

    /// `ops` and `after_pivot` are rendered once; what is sent is what the
    /// typed accessors say.
    #[test]
    fn prerendered_ops_match_the_typed_ones() {
        let (_tmp, host) = host();
        let py = python();
        let inputs = blank_inputs(&py, &host);
        let template = BlankTemplate::new(&inputs).unwrap();
        let blank = blank_json(&inputs);
        assert_eq!(blank["ops"], serde_json::to_value(template.ops()).unwrap());
        assert_eq!(
            blank["after_pivot"],
            serde_json::to_value(template.after_pivot()).unwrap()
        );
    }

    #[test]
    fn blank_values_follow_the_inputs() {
        let (_tmp, host) = host();
        let py = python();
        let mut inputs = blank_inputs(&py, &host);
        let plan = blank_json(&inputs);
        assert_eq!(plan["hostname"], "lambdalet-e-17");
        assert_eq!(plan["new_root"], "/state/rootfs");
        assert_eq!(plan["root_tmpfs_options"], "size=4m,mode=0755");
        assert_eq!(plan["cap_last_cap"], 40);
        // NEWNS|NEWUTS|NEWIPC|NEWNET|NEWPID|NEWCGROUP.
        assert_eq!(plan["unshare_flags"], 0x6e02_0000u64);
        assert_eq!(
            plan["cgroup_procs"],
            json!([
                "/sys/fs/cgroup/memory/l/e-17/cgroup.procs",
                "/sys/fs/cgroup/cpu/l/e-17/cgroup.procs"
            ])
        );

        let ops = ops_of(&plan["ops"]);
        let mount = |target: &str| {
            find(ops, "mount", target).unwrap_or_else(|| panic!("no mount on {target}"))
        };
        assert_eq!(mount("/var/lang")["source"], "/opt/py/3.11.7");
        assert_eq!(mount("/var/lang")["flags"], 4096);
        let triple = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
        assert_eq!(mount(&triple)["source"], triple.as_str());
        assert_eq!(mount("/etc/ld.so.cache")["kind"], "file");
        assert_eq!(mount("/dev")["fstype"], "tmpfs");
        assert!(ops
            .iter()
            .any(|o| o["op"] == "symlink" && o["path"] == "/lib" && o["target"] == "usr/lib"));
        // Only what is the same for every function: the function's mount
        // points exist but stay empty, and its user is not named yet.
        for dir in ["/var/task", "/tmp", "/opt"] {
            assert_eq!(find(ops, "mkdir", dir).unwrap()["mode"], 0o755, "{dir}");
            assert!(find(ops, "mount", dir).is_none(), "{dir}");
        }
        for file in ["/etc/passwd", "/etc/group"] {
            assert!(find(ops, "write", file).is_none(), "{file}");
        }
        assert!(find(ops, "write", "/etc/hosts").is_some());
        // Every function's code, read-only, below a directory only root
        // may enter, until the specialisation picks one.
        assert_eq!(find(ops, "mkdir", FUNCTIONS_MOUNT).unwrap()["mode"], 0o700);
        assert_eq!(mount(FUNCTIONS_MOUNT)["source"], FUNCTIONS_DIR);
        assert_eq!(mount(FUNCTIONS_MOUNT)["flags"], 4096);

        // The host network: every namespace but the network's.
        inputs.host_network = true;
        let plan = blank_json(&inputs);
        assert_eq!(plan["unshare_flags"], 0x2e02_0000u64);
        assert_eq!(
            plan["unshare_flags"].as_u64().unwrap() & libc::CLONE_NEWNET as u64,
            0
        );
    }

    #[test]
    fn spec_values_follow_the_inputs() {
        let mut inputs = spec_inputs();
        let plan = spec_json(&inputs);
        assert_eq!(plan["uid"], 11000);
        assert_eq!(plan["gid"], 11001);
        assert_eq!(plan["workdir"], "/var/task");
        let bpf = base64::engine::general_purpose::STANDARD
            .decode(plan["seccomp_bpf"].as_str().unwrap())
            .unwrap();
        assert_eq!(bpf, BPF);
        assert_eq!(
            plan["rlimits"],
            json!([
                [libc::RLIMIT_NOFILE, NOFILE_LIMIT, NOFILE_LIMIT],
                [libc::RLIMIT_CORE, 0, 0]
            ])
        );

        let ops = ops_of(&plan["ops"]);
        let task = find(ops, "mount", "/var/task").unwrap();
        assert_eq!(task["source"], code_in_blank());
        assert_eq!(task["flags"], 4096); // MS_BIND alone: not MS_REC
        assert_eq!(task["kind"], "dir");
        // MS_REMOUNT|MS_BIND|MS_RDONLY|MS_NOSUID|MS_NODEV; exec allowed.
        assert_eq!(
            find(ops, "remount", "/var/task").unwrap()["flags"],
            32 | 4096 | 1 | 2 | 4
        );
        let tmp = find(ops, "mount", "/tmp").unwrap();
        assert_eq!(tmp["data"], "size=777m,mode=1777");
        assert_eq!(tmp["flags"], 2 | 4); // nosuid, nodev; exec allowed
        let passwd = find(ops, "write", "/etc/passwd").unwrap();
        assert!(passwd["content"]
            .as_str()
            .unwrap()
            .contains("sbx_user1051:x:11000:11001::/tmp:/sbin/nologin\n"));
        let group = find(ops, "write", "/etc/group").unwrap();
        assert!(group["content"]
            .as_str()
            .unwrap()
            .contains("sbx_user1051:x:11001:\n"));

        inputs.tmp_mb = 10240;
        let plan = spec_json(&inputs);
        let tmp = find(ops_of(&plan["ops"]), "mount", "/tmp").unwrap();
        assert_eq!(tmp["data"], "size=10240m,mode=1777");
        // Without layers /opt is the blank's empty directory: nothing bound.
        assert!(find(ops_of(&plan["ops"]), "mount", "/opt").is_none());
    }

    #[test]
    fn layers_are_bound_read_only_at_opt_before_the_functions_mount_goes() {
        let opt = format!("{FUNCTIONS_DIR}/hello/opt/3");
        let mut inputs = spec_inputs();
        inputs.opt_dir = Some(Path::new(&opt));
        let plan = spec_json(&inputs);
        let ops = ops_of(&plan["ops"]);
        let mount = find(ops, "mount", "/opt").unwrap();
        assert_eq!(mount["source"], format!("{FUNCTIONS_MOUNT}/hello/opt/3"));
        assert_eq!(mount["flags"], 4096);
        // Read-only, nosuid, nodev; exec allowed (/opt/bin).
        assert_eq!(
            find(ops, "remount", "/opt").unwrap()["flags"],
            32 | 4096 | 1 | 2 | 4
        );
        let at = |kind: &str, target: &str| {
            ops.iter()
                .position(|o| o["op"] == kind && o["target"] == target)
                .unwrap()
        };
        assert!(at("remount", "/opt") < at("umount", FUNCTIONS_MOUNT));
        // Never from outside the functions dir.
        for bad in ["/etc", FUNCTIONS_DIR, "/state/functions/../x"] {
            inputs.opt_dir = Some(Path::new(bad));
            assert!(SpecTemplate::new(&inputs).is_err(), "{bad}");
        }
    }

    /// A host path may only appear where the child must name one: the
    /// blank's `new_root` and the sources of its binds. The specialisation
    /// runs after pivot_root and names no host path at all: the function's
    /// code only as a mount source below the functions mount.
    #[test]
    fn state_dir_appears_only_as_mount_sources() {
        /// (key, value) of every string containing `needle`; a mount's
        /// source is keyed "mount source".
        fn walk(
            v: &Value,
            needle: &str,
            key: &str,
            parent: Option<&Value>,
            found: &mut Vec<(String, String)>,
        ) {
            match v {
                Value::String(s) if s.contains(needle) => {
                    let is_mount_source =
                        key == "source" && parent.is_some_and(|p| p["op"] == "mount");
                    let key = if is_mount_source { "mount source" } else { key };
                    found.push((key.to_owned(), s.clone()));
                }
                Value::Array(items) => items
                    .iter()
                    .for_each(|i| walk(i, needle, key, parent, found)),
                Value::Object(map) => map
                    .iter()
                    .for_each(|(k, i)| walk(i, needle, k, Some(v), found)),
                _ => {}
            }
        }
        let (_tmp, host) = host();
        let py = python();
        let mut found = Vec::new();
        walk(
            &blank_json(&blank_inputs(&py, &host)),
            "/state",
            "",
            None,
            &mut found,
        );
        found.sort();
        assert_eq!(
            found,
            [
                ("mount source".to_owned(), FUNCTIONS_DIR.to_owned()),
                ("new_root".to_owned(), "/state/rootfs".to_owned()),
            ]
        );

        let spec = spec_json(&spec_inputs());
        let mut found = Vec::new();
        walk(&spec, "/state", "", None, &mut found);
        assert_eq!(found, []);
        walk(&spec, "hello", "", None, &mut found);
        assert_eq!(found, [("mount source".to_owned(), code_in_blank())]);
    }

    /// The specialisation binds the code from the functions mount, then
    /// detaches that mount and removes its directory before anything else
    /// (no other function's code stays reachable), and makes / read-only
    /// last.
    #[test]
    fn spec_detaches_the_functions_first_and_seals_the_root_last() {
        let template = SpecTemplate::new(&spec_inputs()).unwrap();
        let ops = &template.plan().ops;
        assert_eq!(
            ops[..4],
            [
                Op::Mount {
                    source: Some(code_in_blank()),
                    target: TASK_DIR.into(),
                    fstype: None,
                    flags: MS_BIND,
                    data: None,
                    kind: MountKind::Dir,
                },
                Op::Remount {
                    target: TASK_DIR.into(),
                    flags: RO_BIND_REMOUNT,
                },
                Op::Umount {
                    target: FUNCTIONS_MOUNT.into(),
                    flags: libc::MNT_DETACH as u64,
                },
                Op::Rmdir {
                    path: FUNCTIONS_MOUNT.into(),
                },
            ]
        );
        // Nothing after the detach names the functions mount.
        for op in &ops[4..] {
            assert!(!format!("{op:?}").contains(FUNCTIONS_MOUNT), "{op:?}");
        }
        assert_eq!(
            ops.last(),
            Some(&Op::Remount {
                target: "/".into(),
                flags: RO_BIND_REMOUNT | flags(libc::MS_NOEXEC),
            })
        );
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::Remount { target, .. } if target == "/"))
                .count(),
            1
        );

        // The blank leaves / writable for it (the specialisation still
        // writes /etc, mounts /tmp and removes a directory) and detaches
        // nothing itself.
        let (_tmp, host) = host();
        let py = python();
        let blank = BlankTemplate::new(&blank_inputs(&py, &host)).unwrap();
        for op in blank.ops().iter().chain(blank.after_pivot()) {
            assert!(
                !matches!(op, Op::Remount { target, .. } if target == "/"),
                "{op:?}"
            );
            assert!(
                !matches!(op, Op::Umount { .. } | Op::Rmdir { .. }),
                "{op:?}"
            );
        }
    }

    #[test]
    fn proc_is_masked_only_where_the_host_has_the_entry() {
        let (_tmp, host) = host();
        let py = python();
        let plan = blank_json(&blank_inputs(&py, &host));
        // /proc is after pivot_root only: its sources are sandbox paths.
        assert!(ops_of(&plan["ops"])
            .iter()
            .filter(|o| o["op"] == "mount" || o["op"] == "remount")
            .all(|o| !o["target"].as_str().unwrap().starts_with("/proc")));
        let after = ops_of(&plan["after_pivot"]);
        let mounted: BTreeMap<String, &Value> = after
            .iter()
            .filter(|o| o["op"] == "mount")
            .map(|o| (o["target"].as_str().unwrap().to_owned(), o))
            .collect();
        assert_eq!(after[0]["target"], "/proc");
        assert_eq!(mounted["/proc"]["fstype"], "proc");
        assert_eq!(mounted["/proc"]["flags"], 2 | 4 | 8);
        for file in ["kcore", "keys", "timer_list", "sysrq-trigger"] {
            let m = mounted[&format!("/proc/{file}")];
            assert_eq!(
                (
                    m["source"].as_str(),
                    m["kind"].as_str(),
                    m["flags"].as_u64()
                ),
                (Some("/dev/null"), Some("file"), Some(4096))
            );
        }
        assert_eq!(mounted["/proc/acpi"]["fstype"], "tmpfs");
        assert_eq!(mounted["/proc/acpi"]["flags"], 1 | 2 | 4 | 8);
        for absent in [
            "latency_stats",
            "timer_stats",
            "sched_debug",
            "scsi",
            "asound",
            "bus",
        ] {
            assert!(
                !mounted.contains_key(&format!("/proc/{absent}")),
                "{absent}"
            );
        }
        for ro in ["sys", "irq", "fs"] {
            let path = format!("/proc/{ro}");
            assert_eq!(mounted[&path]["source"], path.as_str());
            let remount = find(after, "remount", &path).unwrap();
            assert_eq!(remount["flags"], 32 | 4096 | 1 | 2 | 4 | 8);
        }
    }

    #[test]
    fn dev_is_populated_before_it_turns_read_only() {
        let (_tmp, host) = host();
        let py = python();
        let template = BlankTemplate::new(&blank_inputs(&py, &host)).unwrap();
        let ops = template.ops();
        let tmpfs = ops
            .iter()
            .position(|o| matches!(o, Op::Mount { target, .. } if target == "/dev"))
            .unwrap();
        let ro = ops
            .iter()
            .position(|o| matches!(o, Op::Remount { target, .. } if target == "/dev"))
            .unwrap();
        let dev_ops: Vec<usize> = ops
            .iter()
            .enumerate()
            .filter(|(_, o)| match o {
                Op::Mount { target, .. } => target.starts_with("/dev/"),
                Op::Symlink { path, .. } => path.starts_with("/dev/"),
                _ => false,
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(dev_ops.len(), 9);
        assert!(dev_ops.iter().all(|&i| tmpfs < i && i < ro));
        // Device nodes keep dev: no nodev on their binds.
        for op in ops {
            if let Op::Mount { target, flags, .. } = op {
                if target.starts_with("/dev/") {
                    assert_eq!(*flags, MS_BIND);
                }
            }
        }
    }

    /// Bind mounts ignore MS_RDONLY on creation: every bind of a host tree
    /// (the blank's before pivot_root, the specialisation's code) is
    /// followed at once by its read-only remount.
    #[test]
    fn every_bind_is_followed_by_its_read_only_remount() {
        let (_tmp, host) = host();
        let py = python();
        let blank = BlankTemplate::new(&blank_inputs(&py, &host)).unwrap();
        let spec = SpecTemplate::new(&spec_inputs()).unwrap();
        let mut binds = 0;
        for ops in [blank.ops(), &spec.plan().ops] {
            for (i, op) in ops.iter().enumerate() {
                if let Op::Mount { target, flags, .. } = op {
                    if *flags == MS_BIND && !target.starts_with("/dev/") {
                        binds += 1;
                        assert_eq!(
                            ops[i + 1],
                            Op::Remount {
                                target: target.clone(),
                                flags: RO_BIND_REMOUNT
                            }
                        );
                    }
                }
            }
        }
        // /var/lang, two library dirs, ld.so.cache, the functions dir;
        // /var/task.
        assert_eq!(binds, 6);
    }

    #[test]
    fn refuses_bad_inputs() {
        fn refused(change: impl FnOnce(&mut SpecInputs<'static>)) -> PlanError {
            let mut inputs = spec_inputs();
            change(&mut inputs);
            SpecTemplate::new(&inputs).unwrap_err()
        }
        assert!(matches!(
            refused(|i| i.uid = 0),
            PlanError::RunsAsRoot { uid: 0, gid: 11001 }
        ));
        assert!(matches!(
            refused(|i| i.gid = 0),
            PlanError::RunsAsRoot { uid: 11000, gid: 0 }
        ));
        assert!(matches!(
            refused(|i| i.tmp_mb = 0),
            PlanError::InvalidTmpSize { mb: 0 }
        ));
        assert!(matches!(
            refused(|i| i.seccomp_bpf = &BPF[..7]),
            PlanError::InvalidSeccompProgram { len: 7 }
        ));
        assert!(matches!(
            refused(|i| i.seccomp_bpf = &[]),
            PlanError::InvalidSeccompProgram { len: 0 }
        ));
        assert!(matches!(
            refused(|i| i.code_dir = Path::new("relative/code")),
            PlanError::NotAbsolute {
                what: "code_dir",
                ..
            }
        ));
        assert!(matches!(
            refused(|i| i.code_dir = Path::new(OsStr::from_bytes(b"/state/functions/\xff"))),
            PlanError::NonUtf8Path {
                what: "code_dir",
                ..
            }
        ));
        // Code can only come from below the functions dir, as the blank
        // binds nothing else.
        for outside in [
            "/state/other/code",
            "/state/functions-old/hello/code/3",
            "/state/functions/../secrets",
            "/state/functions/hello/../../secrets",
            // The functions dir itself would show every function's records.
            "/state/functions",
        ] {
            assert!(
                matches!(
                    refused(|i| i.code_dir = Path::new(outside)),
                    PlanError::CodeOutsideFunctions { .. }
                ),
                "{outside}"
            );
        }

        let (_tmp, host) = host();
        let py = python();
        let mut inputs = blank_inputs(&py, &host);
        inputs.new_root = Path::new("state/rootfs");
        assert!(matches!(
            BlankTemplate::new(&inputs),
            Err(PlanError::NotAbsolute {
                what: "new_root",
                ..
            })
        ));
        let mut inputs = blank_inputs(&py, &host);
        inputs.functions_dir = Path::new("state/functions");
        assert!(matches!(
            BlankTemplate::new(&inputs),
            Err(PlanError::NotAbsolute {
                what: "functions_dir",
                ..
            })
        ));
        let mut relative = python();
        relative.base_prefix = "opt/py".into();
        let inputs = blank_inputs(&relative, &host);
        assert!(matches!(
            BlankTemplate::new(&inputs),
            Err(PlanError::NotAbsolute { .. })
        ));
    }

    #[test]
    fn hostnames_fit_host_name_max() {
        assert_eq!(hostname("e-1"), "lambdalet-e-1");
        let long = "x".repeat(80);
        assert_eq!(hostname(&long).len(), 64);
        let multibyte = hostname(&"é".repeat(40));
        assert!(multibyte.len() <= 64 && multibyte.len() >= 63);
    }
}
