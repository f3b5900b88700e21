//! The sandbox plan: every decision about an environment's isolation, computed
//! in the supervisor and applied step by step by the zygote child
//! (`runtimes/python/sandbox.py`), which decides nothing itself. The format and
//! the order in which the child applies it are docs/architecture.md's ("`sandbox`:
//! the plan").
//!
//! A [`PlanTemplate`] is computed once per function revision; everything that
//! does not depend on the environment is rendered to JSON then, so
//! [`PlanTemplate::for_env`] on the cold-start path only fills in the
//! environment's id and cgroups.
//!
//! The root it builds (all mounts `nosuid`; `nodev` except the /dev nodes):
//!
//! | path | what |
//! | --- | --- |
//! | `/` | tmpfs, read-only after pivot_root |
//! | `/var/lang` | the interpreter's `sys.base_prefix`, read-only (as on Lambda) |
//! | `/usr/lib/<triple>`, `/usr/lib64`, … | host library dirs, read-only, same paths |
//! | `/lib`, `/lib64` | symlinks, where the host has them |
//! | `/etc` | passwd, group, hosts, nsswitch.conf written; ld.so.cache read-only |
//! | `/var/task` | the function's code, read-only |
//! | `/opt` | empty (layers later) |
//! | `/tmp` | tmpfs of the function's ephemeral storage size, mode 1777 |
//! | `/dev` | read-only tmpfs with null, zero, full, random, urandom and fd links |
//! | `/proc` | a new procfs; OCI's masked paths masked, kernel knobs read-only |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use super::host::{HostLayout, HostPython};

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
/// field. `ops`, `after_pivot` and `seccomp_bpf` are the template's pre-rendered
/// JSON; [`PlanTemplate::ops`] has them typed.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxPlan {
    pub cgroup_procs: Vec<PathBuf>,
    pub unshare_flags: u64,
    pub new_root: String,
    pub root_tmpfs_options: String,
    pub ops: Prerendered,
    pub after_pivot: Prerendered,
    pub hostname: String,
    pub uid: u32,
    pub gid: u32,
    pub cap_last_cap: u32,
    pub rlimits: Vec<[u64; 3]>,
    pub workdir: String,
    /// base64 of `struct sock_filter[]`, native endian.
    pub seccomp_bpf: Prerendered,
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
    #[error("render the plan as JSON: {source}")]
    Render { source: serde_json::Error },
}

/// What a function revision's plan is made of.
#[derive(Debug, Clone, Copy)]
pub struct TemplateInputs<'a> {
    /// Host directory the child mounts its root tmpfs on (the same for every
    /// environment: each mounts its own tmpfs there in its own mount namespace).
    pub new_root: &'a Path,
    /// The function's code on the host (in the state dir).
    pub code_dir: &'a Path,
    pub python: &'a HostPython,
    /// The function's uid and gid (non-zero, distinct per function).
    pub uid: u32,
    pub gid: u32,
    /// Ephemeral storage (/tmp) in MB.
    pub tmp_mb: u32,
    /// The compiled seccomp program (`seccomp::compile`).
    pub seccomp_bpf: &'a [u8],
    /// `host::cap_last_cap`.
    pub cap_last_cap: u32,
    /// `HostLayout::discover`: library dirs, symlinks, /proc entries.
    pub host: &'a HostLayout,
    /// The function opted into the host's network: no network namespace.
    pub host_network: bool,
}

/// Everything of a plan but the environment's id and cgroups, rendered once.
#[derive(Debug, Clone)]
pub struct PlanTemplate {
    unshare_flags: u64,
    new_root: String,
    uid: u32,
    gid: u32,
    cap_last_cap: u32,
    rlimits: Vec<[u64; 3]>,
    ops: Vec<Op>,
    after_pivot: Vec<Op>,
    ops_json: Prerendered,
    after_pivot_json: Prerendered,
    seccomp_json: Prerendered,
}

impl PlanTemplate {
    pub fn new(inputs: &TemplateInputs) -> Result<PlanTemplate, PlanError> {
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
        let new_root = abs_str("new_root", inputs.new_root)?;
        let code_dir = abs_str("code_dir", inputs.code_dir)?;
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

        let ops = root_ops(inputs, base_prefix, code_dir, &lib_dirs, &symlinks);
        let after_pivot = after_pivot_ops(inputs.host);
        let unshare_flags = if inputs.host_network {
            UNSHARE_FLAGS & !(libc::CLONE_NEWNET as u64)
        } else {
            UNSHARE_FLAGS
        };
        let seccomp_b64 = base64::engine::general_purpose::STANDARD.encode(bpf);
        Ok(PlanTemplate {
            unshare_flags,
            new_root: new_root.to_owned(),
            uid: inputs.uid,
            gid: inputs.gid,
            cap_last_cap: inputs.cap_last_cap,
            rlimits: vec![
                [libc::RLIMIT_NOFILE as u64, NOFILE_LIMIT, NOFILE_LIMIT],
                // No core dumps: they would land in the read-only /var/task or
                // fill /tmp.
                [libc::RLIMIT_CORE as u64, 0, 0],
            ],
            ops_json: Prerendered::of(&ops)?,
            after_pivot_json: Prerendered::of(&after_pivot)?,
            seccomp_json: Prerendered::of(&seccomp_b64)?,
            ops,
            after_pivot,
        })
    }

    /// The plan for one environment: `cgroup_procs` is `EnvCgroup::procs_files`.
    pub fn for_env(&self, env_id: &str, cgroup_procs: Vec<PathBuf>) -> SandboxPlan {
        SandboxPlan {
            cgroup_procs,
            unshare_flags: self.unshare_flags,
            new_root: self.new_root.clone(),
            root_tmpfs_options: ROOT_TMPFS_OPTIONS.to_owned(),
            ops: self.ops_json.clone(),
            after_pivot: self.after_pivot_json.clone(),
            hostname: hostname(env_id),
            uid: self.uid,
            gid: self.gid,
            cap_last_cap: self.cap_last_cap,
            rlimits: self.rlimits.clone(),
            workdir: TASK_DIR.to_owned(),
            seccomp_bpf: self.seccomp_json.clone(),
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

/// `lambdalet-<env_id>`, at most HOST_NAME_MAX bytes. It does not resolve
/// (/etc/hosts is per function revision, not per environment): like Lambda's
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

/// The steps before pivot_root, in order.
fn root_ops(
    inputs: &TemplateInputs,
    base_prefix: &str,
    code_dir: &str,
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
    if let Some(cache) = &inputs.host.ld_so_cache {
        let cache = cache.to_string_lossy();
        bind_ro(&mut ops, &cache, &cache, MountKind::File);
    }
    for (name, content) in etc_files(inputs.uid, inputs.gid) {
        ops.push(Op::Write {
            path: format!("/etc/{name}"),
            content,
            mode: 0o644,
        });
    }

    // The code: read-only, but executable (custom runtimes exec a bootstrap,
    // Python packages ship native extensions).
    bind_ro(&mut ops, code_dir, TASK_DIR, MountKind::Dir);
    ops.push(Op::Mkdir {
        path: OPT_DIR.into(),
        mode: 0o755,
    });

    // /tmp: writable, sticky, size-limited; exec allowed as on Lambda.
    ops.push(Op::Mount {
        source: Some("tmpfs".into()),
        target: "/tmp".into(),
        fstype: Some("tmpfs".into()),
        flags: flags(libc::MS_NOSUID | libc::MS_NODEV),
        data: Some(format!("size={}m,mode=1777", inputs.tmp_mb)),
        kind: MountKind::Dir,
    });

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

/// The steps after pivot_root: /proc (mounted after pivot so that every source
/// is a sandbox path), then the root made read-only, last since the steps
/// before may create mount points in it.
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
fn etc_files(uid: u32, gid: u32) -> [(&'static str, String); 4] {
    [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/sbin/nologin\n\
                 {SANDBOX_USER}:x:{uid}:{gid}::/tmp:/sbin/nologin\n"
            ),
        ),
        ("group", format!("root:x:0:\n{SANDBOX_USER}:x:{gid}:\n")),
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
    use serde_json::Value;
    use std::collections::{BTreeMap, BTreeSet};

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

    fn inputs<'a>(py: &'a HostPython, host: &'a HostLayout) -> TemplateInputs<'a> {
        TemplateInputs {
            new_root: Path::new("/state/rootfs"),
            code_dir: Path::new("/state/functions/hello/code"),
            python: py,
            uid: 11000,
            gid: 11000,
            tmp_mb: 777,
            seccomp_bpf: &BPF,
            cap_last_cap: 40,
            host,
            host_network: false,
        }
    }

    fn plan_json(inputs: &TemplateInputs) -> Value {
        let template = PlanTemplate::new(inputs).unwrap();
        let plan = template.for_env(
            "e-17",
            vec![
                "/sys/fs/cgroup/memory/l/e-17/cgroup.procs".into(),
                "/sys/fs/cgroup/cpu/l/e-17/cgroup.procs".into(),
            ],
        );
        let text = serde_json::to_string(&plan).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The example plan in docs/architecture.md.
    fn documented_plan() -> Value {
        let doc = include_str!("../../docs/architecture.md");
        let section = doc.split("### `sandbox`").nth(1).expect("sandbox section");
        let block = section
            .split("```json")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("json block");
        serde_json::from_str(block).expect("the documented plan is JSON")
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn serialises_to_the_documented_shape() {
        let (_tmp, host) = host();
        let py = python();
        let ours = plan_json(&inputs(&py, &host));
        let doc = documented_plan();
        assert_eq!(keys(&ours), keys(&doc), "top-level fields");
        // Every op kind in the documented example has exactly its fields here.
        let mut doc_ops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for op in doc["ops"]
            .as_array()
            .unwrap()
            .iter()
            .chain(doc["after_pivot"].as_array().unwrap())
        {
            doc_ops.insert(op["op"].as_str().unwrap().into(), keys(op));
        }
        let mut seen = BTreeSet::new();
        for op in ours["ops"]
            .as_array()
            .unwrap()
            .iter()
            .chain(ours["after_pivot"].as_array().unwrap())
        {
            let kind = op["op"].as_str().unwrap().to_owned();
            assert_eq!(Some(&keys(op)), doc_ops.get(&kind), "{op}");
            seen.insert(kind);
        }
        assert_eq!(seen, doc_ops.keys().cloned().collect(), "op kinds");
        // Scalar types as documented.
        for field in ["unshare_flags", "uid", "gid", "cap_last_cap"] {
            assert!(ours[field].is_u64(), "{field}");
        }
        for field in [
            "new_root",
            "root_tmpfs_options",
            "hostname",
            "workdir",
            "seccomp_bpf",
        ] {
            assert!(ours[field].is_string(), "{field}");
        }
        assert_eq!(ours["rlimits"][0], serde_json::json!([7, 1024, 1024]));
        assert_eq!(ours["rlimits"][1], serde_json::json!([4, 0, 0]));
    }

    #[test]
    fn values_follow_the_inputs() {
        let (_tmp, host) = host();
        let py = python();
        let mut inp = inputs(&py, &host);
        let plan = plan_json(&inp);
        assert_eq!(plan["hostname"], "lambdalet-e-17");
        assert_eq!(plan["new_root"], "/state/rootfs");
        assert_eq!(plan["workdir"], "/var/task");
        assert_eq!(plan["uid"], 11000);
        assert_eq!(plan["cap_last_cap"], 40);
        assert_eq!(plan["unshare_flags"], 0x6e02_0000u64);
        assert_eq!(
            plan["cgroup_procs"][1],
            "/sys/fs/cgroup/cpu/l/e-17/cgroup.procs"
        );
        let bpf = base64::engine::general_purpose::STANDARD
            .decode(plan["seccomp_bpf"].as_str().unwrap())
            .unwrap();
        assert_eq!(bpf, BPF);

        let ops = plan["ops"].as_array().unwrap();
        let find = |target: &str| {
            ops.iter()
                .find(|o| o["op"] == "mount" && o["target"] == target)
                .unwrap_or_else(|| panic!("no mount on {target}"))
        };
        let tmp = find("/tmp");
        assert_eq!(tmp["data"], "size=777m,mode=1777");
        assert_eq!(tmp["flags"], 2 | 4); // nosuid, nodev; exec allowed
        let task = find("/var/task");
        assert_eq!(task["source"], "/state/functions/hello/code");
        assert_eq!(task["flags"], 4096);
        let lang = find("/var/lang");
        assert_eq!(lang["source"], "/opt/py/3.11.7");
        let remount_task = ops
            .iter()
            .find(|o| o["op"] == "remount" && o["target"] == "/var/task")
            .unwrap();
        assert_eq!(remount_task["flags"], 32 | 4096 | 1 | 2 | 4);
        let passwd = ops
            .iter()
            .find(|o| o["op"] == "write" && o["path"] == "/etc/passwd")
            .unwrap();
        assert!(passwd["content"]
            .as_str()
            .unwrap()
            .contains("sbx_user1051:x:11000:11000::/tmp:/sbin/nologin\n"));
        let triple = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
        assert_eq!(find(&triple)["source"], triple.as_str());
        assert_eq!(find("/etc/ld.so.cache")["kind"], "file");
        assert!(ops
            .iter()
            .any(|o| o["op"] == "symlink" && o["path"] == "/lib" && o["target"] == "usr/lib"));

        // Other sizes and the host network.
        inp.tmp_mb = 10240;
        inp.host_network = true;
        let plan = plan_json(&inp);
        let tmp = plan["ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["target"] == "/tmp")
            .unwrap()
            .clone();
        assert_eq!(tmp["data"], "size=10240m,mode=1777");
        assert_eq!(plan["unshare_flags"], 0x2e02_0000u64);
    }

    /// The state dir may only appear where the child must name a host path:
    /// `new_root` and the sources of mounts.
    #[test]
    fn state_dir_appears_only_as_mount_sources() {
        fn walk(v: &Value, key: &str, parent: Option<&Value>, bad: &mut Vec<String>) {
            match v {
                Value::String(s) if s.contains("/state") => {
                    let is_mount_source =
                        key == "source" && parent.is_some_and(|p| p["op"] == "mount");
                    if !(is_mount_source || key == "new_root") {
                        bad.push(format!("{key}: {s}"));
                    }
                }
                Value::Array(items) => items.iter().for_each(|i| walk(i, key, parent, bad)),
                Value::Object(map) => map.iter().for_each(|(k, i)| walk(i, k, Some(v), bad)),
                _ => {}
            }
        }
        let (_tmp, host) = host();
        let py = python();
        let plan = plan_json(&inputs(&py, &host));
        let mut bad = Vec::new();
        walk(&plan, "", None, &mut bad);
        assert!(bad.is_empty(), "{bad:?}");
    }

    #[test]
    fn proc_is_masked_only_where_the_host_has_the_entry() {
        let (_tmp, host) = host();
        let py = python();
        let plan = plan_json(&inputs(&py, &host));
        let after = plan["after_pivot"].as_array().unwrap();
        let mounted: BTreeMap<String, &Value> = after
            .iter()
            .filter(|o| o["op"] == "mount")
            .map(|o| (o["target"].as_str().unwrap().to_owned(), o))
            .collect();
        assert_eq!(mounted["/proc"]["fstype"], "proc");
        assert_eq!(mounted["/proc"]["flags"], 2 | 4 | 8);
        for file in ["kcore", "keys", "timer_list", "sysrq-trigger"] {
            let m = mounted[&format!("/proc/{file}")];
            assert_eq!(
                (m["source"].as_str(), m["kind"].as_str()),
                (Some("/dev/null"), Some("file"))
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
            assert!(after.iter().any(|o| o["op"] == "remount"
                && o["target"] == path.as_str()
                && o["flags"].as_u64().unwrap() & 1 == 1));
        }
        // The root goes read-only last.
        let last = after.last().unwrap();
        assert_eq!(
            (last["op"].as_str(), last["target"].as_str()),
            (Some("remount"), Some("/"))
        );
        assert_eq!(last["flags"], 32 | 4096 | 1 | 2 | 4 | 8);
    }

    #[test]
    fn dev_is_populated_before_it_turns_read_only() {
        let (_tmp, host) = host();
        let py = python();
        let template = PlanTemplate::new(&inputs(&py, &host)).unwrap();
        let ops = template.ops();
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
        assert!(dev_ops.iter().all(|&i| i < ro));
        // Device nodes keep dev: no nodev on their binds.
        for op in ops {
            if let Op::Mount { target, flags, .. } = op {
                if target.starts_with("/dev/") {
                    assert_eq!(*flags, MS_BIND);
                }
            }
        }
        // Every bind but the /dev nodes is followed by its read-only remount.
        for (i, op) in ops.iter().enumerate() {
            if let Op::Mount { target, flags, .. } = op {
                if *flags == MS_BIND && !target.starts_with("/dev/") {
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

    #[test]
    fn refuses_bad_inputs() {
        let (_tmp, host) = host();
        let py = python();
        let mut inp = inputs(&py, &host);
        inp.uid = 0;
        assert!(matches!(
            PlanTemplate::new(&inp),
            Err(PlanError::RunsAsRoot { .. })
        ));
        let mut inp = inputs(&py, &host);
        inp.tmp_mb = 0;
        assert!(matches!(
            PlanTemplate::new(&inp),
            Err(PlanError::InvalidTmpSize { .. })
        ));
        let mut inp = inputs(&py, &host);
        inp.seccomp_bpf = &BPF[..7];
        assert!(matches!(
            PlanTemplate::new(&inp),
            Err(PlanError::InvalidSeccompProgram { len: 7 })
        ));
        let mut inp = inputs(&py, &host);
        inp.code_dir = Path::new("relative/code");
        assert!(matches!(
            PlanTemplate::new(&inp),
            Err(PlanError::NotAbsolute { .. })
        ));
    }

    #[test]
    fn hostnames_fit_host_name_max() {
        assert_eq!(hostname("e-1"), "lambdalet-e-1");
        let long = "x".repeat(80);
        assert_eq!(hostname(&long).len(), 64);
        assert!(hostname(&"é".repeat(40)).len() <= 64);
    }
}
