//! cgroups of execution environments, on both kernel interfaces.
//!
//! One environment is one cgroup (one per hierarchy on v1) below a parent that
//! belongs to lambdalet: by default `<supervisor's own cgroup>/lambdalet`, or a
//! configured `--cgroup-parent`. Nothing above that parent is ever written, except
//! on v2, where the default parent needs the controllers enabled in the
//! supervisor's own cgroup (see [`CgroupManager::prepare`]).
//!
//! * cgroup v2 (Documentation/admin-guide/cgroup-v2.rst): `memory.max`,
//!   `memory.swap.max`, `cpu.max`, `pids.max`, `memory.peak`, `memory.events`,
//!   `cgroup.kill`.
//! * cgroup v1 (Documentation/admin-guide/cgroup-v1/memory.rst, pids.rst and
//!   Documentation/scheduler/sched-bwc.rst): the same limits through the memory,
//!   cpu and pids hierarchies; hybrid hosts (v1 controllers plus an empty
//!   `unified` v2 mount) are v1 here.
//!
//! [`CgroupManager::detect`] only reads; [`CgroupManager::prepare`] creates the
//! parent once at startup; [`CgroupManager::create`] makes one environment's
//! cgroup; [`EnvCgroup`] measures, kills and removes it.
//!
//! The cgroupfs root is a parameter so that all of this also runs against a
//! temporary directory laid out like cgroupfs (the unit tests below).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::config::MB_PER_VCPU;

/// Leaf under the supervisor's own cgroup that holds the environments when no
/// parent is configured.
pub const DEFAULT_PARENT_LEAF: &str = "lambdalet";
/// v2 only: the leaf the supervisor moves itself into when its own cgroup must
/// become an inner node ("no internal processes", cgroup-v2.rst).
pub const SUPERVISOR_LEAF: &str = "supervisor";
/// CFS bandwidth period (sched-bwc.rst; the kernel's default too).
pub const CPU_PERIOD_US: u64 = 100_000;
/// No function gets more than 6 vCPUs, as on Lambda.
pub const MAX_VCPUS: u64 = 6;
/// The kernel refuses quotas below 1 ms (`min_cfs_quota_period`, kernel/sched/core.c).
pub const MIN_CPU_QUOTA_US: u64 = 1_000;
/// Processes (threads count too: pids.rst) per environment.
pub const PIDS_MAX: u64 = 1024;
/// Longest environment id accepted (it names a directory and, in the plan, part
/// of a hostname).
pub const ENV_ID_MAX: usize = 64;

const MIB: u64 = 1 << 20;
/// The v2 controllers an environment's cgroup needs.
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// The v1 hierarchies an environment's cgroup lives in, in this order everywhere.
const V1_HIERARCHIES: [&str; 3] = ["memory", "cpu", "pids"];
/// Bounds for killing and removing: rounds, and the sleep between them (doubling
/// from `RETRY_SLEEP_MIN` up to `RETRY_SLEEP_MAX`; about 1 s in all).
const KILL_ROUNDS: u32 = 60;
const RMDIR_ATTEMPTS: u32 = 60;
const RETRY_SLEEP_MIN: Duration = Duration::from_micros(500);
const RETRY_SLEEP_MAX: Duration = Duration::from_millis(20);

/// Which kernel interface the host offers for memory, cpu and pids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Errors of this module; each names the operation and the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("parse /proc/self/cgroup: line {line:?} is not `ID:CONTROLLERS:PATH`")]
    ParseProcSelfCgroup { line: String },
    #[error(
        "find the supervisor's own {hierarchy} cgroup: /proc/self/cgroup has no line for it \
         (is the {hierarchy} hierarchy mounted in this cgroup namespace?)"
    )]
    OwnCgroupNotFound { hierarchy: String },
    #[error("cgroup path {path:?} is not usable: {reason}")]
    InvalidCgroupPath { path: PathBuf, reason: &'static str },
    #[error(
        "environment id {env_id:?} is invalid: it must be 1–{ENV_ID_MAX} characters of \
         A–Z, a–z, 0–9, '-' and '_'"
    )]
    InvalidEnvId { env_id: String },
    #[error("detect cgroups under {root}: {reason}")]
    UnsupportedLayout { root: PathBuf, reason: String },
    #[error(
        "cgroup {path} does not offer the {missing} controller(s) in cgroup.controllers: \
         enable them in its parent's cgroup.subtree_control (systemd: Delegate=yes), or pass a \
         --cgroup-parent that has them"
    )]
    ControllersUnavailable { path: PathBuf, missing: String },
    #[error(
        "cgroup {path} holds processes other than the supervisor ({pids:?}): cgroup v2 cannot \
         enable controllers below a cgroup with processes; run the supervisor in a cgroup of its \
         own or pass a --cgroup-parent"
    )]
    OtherProcessesInCgroup { path: PathBuf, pids: Vec<i32> },
    #[error("read {path}: {source}")]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("create cgroup {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("write {value:?} to {path}: {source}")]
    WriteFile {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("move the supervisor (pid {pid}) into {path}: {source}")]
    MoveSupervisor {
        path: PathBuf,
        pid: u32,
        source: io::Error,
    },
    #[error(
        "enable controllers in {path}: {source} (EBUSY means the cgroup has processes of its own; \
         ENOENT/EINVAL that its parent does not delegate them)"
    )]
    EnableControllers { path: PathBuf, source: io::Error },
    #[error("list cgroup {path}: {source}")]
    ListDir { path: PathBuf, source: io::Error },
    #[error("kill the processes of cgroup {path}: {source}")]
    KillProcesses { path: PathBuf, source: io::Error },
    #[error("remove cgroup {path}: {source}")]
    Rmdir { path: PathBuf, source: io::Error },
}

/// One environment's limits, in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpu_quota_us: u64,
    pub cpu_period_us: u64,
    pub pids_max: u64,
}

impl Limits {
    /// Lambda's rules: memory as configured and no swap; CPU proportional to
    /// memory (1769 MB = 1 vCPU), capped at 6 vCPUs and at the host's CPUs;
    /// 1024 processes.
    pub fn for_function(memory_mb: u32, host_cpus: u32) -> Limits {
        let mb = u64::from(memory_mb);
        let vcpus = MAX_VCPUS.min(u64::from(host_cpus.max(1)));
        let quota = (CPU_PERIOD_US * mb / MB_PER_VCPU)
            .min(CPU_PERIOD_US * vcpus)
            .max(MIN_CPU_QUOTA_US);
        Limits {
            memory_bytes: mb * MIB,
            cpu_quota_us: quota,
            cpu_period_us: CPU_PERIOD_US,
            pids_max: PIDS_MAX,
        }
    }

    /// The limits during the init phase: at least one vCPU, as Lambda boosts
    /// CPU while a function initialises; a 128 MB function's 7 % of a CPU
    /// would stretch a 7 ms init to 100 ms. Memory and pids are unchanged,
    /// and init is bounded in time by the supervisor.
    pub fn for_init(&self, host_cpus: u32) -> Limits {
        let one_vcpu = self
            .cpu_period_us
            .min(self.cpu_period_us * u64::from(host_cpus.max(1)));
        Limits {
            cpu_quota_us: self.cpu_quota_us.max(one_vcpu),
            ..*self
        }
    }
}

/// Where environments' cgroups go on this host, and how to make them.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    /// The parent directory in each of the memory, cpu and pids hierarchies
    /// (the order of `V1_HIERARCHIES`).
    V1 { parents: [PathBuf; 3] },
    V2 {
        root: PathBuf,
        parent: PathBuf,
        /// The supervisor's own cgroup, when the default parent below it is used.
        own: Option<PathBuf>,
    },
}

impl CgroupManager {
    /// Finds the cgroup interface and the parent of environments' cgroups. Reads
    /// only; [`CgroupManager::prepare`] makes the parent.
    ///
    /// * `cgroup_root`: where cgroupfs is mounted, normally `/sys/fs/cgroup`;
    /// * `proc_self_cgroup`: the contents of `/proc/self/cgroup` (cgroups(7));
    /// * `parent`: `--cgroup-parent`, relative to each hierarchy's root (`lambdalet`
    ///   and `/lambdalet` are the same); `None` is the supervisor's own cgroup in
    ///   each hierarchy + `/lambdalet`.
    pub fn detect(
        cgroup_root: &Path,
        proc_self_cgroup: &str,
        parent: Option<&Path>,
    ) -> Result<CgroupManager, CgroupError> {
        Self::detect_with_leaf(cgroup_root, proc_self_cgroup, parent, DEFAULT_PARENT_LEAF)
    }

    /// [`CgroupManager::detect`] with another name than `lambdalet` for the
    /// default parent's leaf (tests use a unique one so that they never meet a
    /// supervisor running on the same host).
    fn detect_with_leaf(
        cgroup_root: &Path,
        proc_self_cgroup: &str,
        parent: Option<&Path>,
        leaf: &str,
    ) -> Result<CgroupManager, CgroupError> {
        let own = parse_proc_self_cgroup(proc_self_cgroup)?;
        let parent = parent.map(relative_cgroup_path).transpose()?;
        let v1: Vec<Option<PathBuf>> = V1_HIERARCHIES
            .iter()
            .map(|c| find_v1_hierarchy(cgroup_root, c))
            .collect();
        let has_v2_root = cgroup_root.join("cgroup.controllers").is_file();

        if v1.iter().all(Option::is_none) {
            if !has_v2_root {
                return Err(CgroupError::UnsupportedLayout {
                    root: cgroup_root.to_owned(),
                    reason: "neither a cgroup v2 mount (cgroup.controllers) nor v1 memory, cpu \
                             and pids hierarchies were found"
                        .into(),
                });
            }
            let (parent_dir, own_dir) = match parent {
                Some(rel) => (cgroup_root.join(rel), None),
                None => {
                    let own_rel = own
                        .iter()
                        .find(|(controllers, _)| controllers.is_empty())
                        .map(|(_, path)| path)
                        .ok_or_else(|| CgroupError::OwnCgroupNotFound {
                            hierarchy: "unified (v2)".into(),
                        })?;
                    let own_dir = cgroup_root.join(relative_cgroup_path(own_rel)?);
                    (own_dir.join(leaf), Some(own_dir))
                }
            };
            return Ok(CgroupManager {
                layout: Layout::V2 {
                    root: cgroup_root.to_owned(),
                    parent: parent_dir,
                    own: own_dir,
                },
            });
        }

        let missing: Vec<&str> = V1_HIERARCHIES
            .iter()
            .zip(&v1)
            .filter(|(_, dir)| dir.is_none())
            .map(|(c, _)| *c)
            .collect();
        if !missing.is_empty() {
            return Err(CgroupError::UnsupportedLayout {
                root: cgroup_root.to_owned(),
                reason: format!(
                    "cgroup v1 is in use but the {} hierarchy is not mounted there; lambdalet needs \
                     memory, cpu and pids on the same cgroup version",
                    missing.join(", ")
                ),
            });
        }
        let mut parents: [PathBuf; 3] = Default::default();
        for (i, (controller, mount)) in V1_HIERARCHIES.iter().zip(v1).enumerate() {
            let mount = mount.expect("checked above");
            parents[i] = match &parent {
                Some(rel) => mount.join(rel),
                None => {
                    let own_rel = own
                        .iter()
                        .find(|(controllers, _)| controllers.iter().any(|c| c == controller))
                        .map(|(_, path)| path)
                        .ok_or_else(|| CgroupError::OwnCgroupNotFound {
                            hierarchy: (*controller).into(),
                        })?;
                    mount.join(relative_cgroup_path(own_rel)?).join(leaf)
                }
            };
        }
        Ok(CgroupManager {
            layout: Layout::V1 { parents },
        })
    }

    pub fn version(&self) -> CgroupVersion {
        match self.layout {
            Layout::V1 { .. } => CgroupVersion::V1,
            Layout::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// The parent directory of environments' cgroups, one per hierarchy.
    pub fn parent_dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1 { parents } => parents.to_vec(),
            Layout::V2 { parent, .. } => vec![parent.clone()],
        }
    }

    /// Creates the parent (idempotent; call once at startup, before the supervisor
    /// starts any child process).
    ///
    /// On v2 with the default parent, cgroup-v2.rst's "no internal processes" rule
    /// applies: controllers can only be enabled in `<own>/cgroup.subtree_control`
    /// while `<own>` has no processes (else EBUSY). So if the supervisor's own
    /// cgroup has processes, the supervisor moves itself (its own pid only, all its
    /// threads with it) into `<own>/supervisor`, then enables memory, cpu and pids
    /// in `<own>` and in `<own>/lambdalet`. Nothing outside `<own>` is written. A
    /// process in `<own>` that is not the supervisor is not touched: that is an
    /// error ([`CgroupError::OtherProcessesInCgroup`]). The root cgroup is exempt
    /// from the rule, so a supervisor there is never moved.
    pub fn prepare(&self) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 { parents } => {
                for dir in parents {
                    mkdir_p(dir)?;
                }
                Ok(())
            }
            Layout::V2 {
                root,
                parent,
                own: Some(own),
            } => {
                require_controllers(own)?;
                if own != root {
                    let procs = own.join("cgroup.procs");
                    let pids = read_pids(&procs).map_err(|source| CgroupError::ReadFile {
                        path: procs.clone(),
                        source,
                    })?;
                    if !pids.is_empty() {
                        let me = std::process::id();
                        let others: Vec<i32> = pids
                            .into_iter()
                            .filter(|&p| u32::try_from(p) != Ok(me))
                            .collect();
                        if !others.is_empty() {
                            return Err(CgroupError::OtherProcessesInCgroup {
                                path: own.clone(),
                                pids: others,
                            });
                        }
                        let leaf = own.join(SUPERVISOR_LEAF);
                        mkdir_existing_ok(&leaf)?;
                        let target = leaf.join("cgroup.procs");
                        write_value(&target, &me.to_string()).map_err(|source| {
                            CgroupError::MoveSupervisor {
                                path: target.clone(),
                                pid: me,
                                source,
                            }
                        })?;
                    }
                }
                enable_controllers(own)?;
                mkdir_existing_ok(parent)?;
                enable_controllers(parent)
            }
            Layout::V2 {
                parent, own: None, ..
            } => {
                mkdir_p(parent)?;
                require_controllers(parent)?;
                enable_controllers(parent)
            }
        }
    }

    /// Creates the cgroup of environment `env_id` with `limits` (a directory per
    /// hierarchy on v1). On failure, whatever was created is removed again.
    pub fn create(&self, env_id: &str, limits: &Limits) -> Result<EnvCgroup, CgroupError> {
        check_env_id(env_id)?;
        let dirs: Vec<PathBuf> = self.parent_dirs().iter().map(|p| p.join(env_id)).collect();
        let mut created = Vec::with_capacity(dirs.len());
        let result = (|| {
            for dir in &dirs {
                mkdir_cgroup(dir).map_err(|source| CgroupError::Mkdir {
                    path: dir.clone(),
                    source,
                })?;
                created.push(dir.clone());
            }
            match &self.layout {
                Layout::V1 { .. } => apply_v1_limits(&dirs, limits),
                Layout::V2 { .. } => apply_v2_limits(&dirs[0], limits),
            }
        })();
        if let Err(e) = result {
            // Nothing has joined these cgroups yet, so a plain rmdir succeeds.
            for dir in created.iter().rev() {
                let _ = rmdir_cgroup(dir);
            }
            return Err(e);
        }
        let dirs = match self.layout {
            Layout::V1 { .. } => {
                let [memory, cpu, pids]: [PathBuf; 3] =
                    dirs.try_into().expect("one directory per v1 hierarchy");
                EnvDirs::V1 { memory, cpu, pids }
            }
            Layout::V2 { .. } => EnvDirs::V2 {
                dir: dirs.into_iter().next().expect("one v2 directory"),
            },
        };
        Ok(EnvCgroup {
            env_id: env_id.to_owned(),
            dirs,
            peak_fd: OnceLock::new(),
            v1_peak_fd: OnceLock::new(),
            oom_fd: OnceLock::new(),
        })
    }

    /// Removes the environments' cgroups a previous run left under the parent
    /// (after a crash), killing their processes first. Returns how many
    /// environments were removed. Call at startup, before creating any.
    pub fn remove_stale(&self) -> Result<usize, CgroupError> {
        let mut names = BTreeSet::new();
        for parent in self.parent_dirs() {
            let entries = match fs::read_dir(&parent) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(CgroupError::ListDir {
                        path: parent,
                        source,
                    })
                }
            };
            for entry in entries {
                let entry = entry.map_err(|source| CgroupError::ListDir {
                    path: parent.clone(),
                    source,
                })?;
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir {
                    remove_tree(&entry.path(), self.version())?;
                    names.insert(entry.file_name());
                }
            }
        }
        Ok(names.len())
    }
}

/// One environment's cgroup. It is not removed on drop (removal may have to
/// wait for processes to die): call [`EnvCgroup::remove`];
/// [`CgroupManager::remove_stale`] catches what a crash left behind.
#[derive(Debug)]
pub struct EnvCgroup {
    env_id: String,
    dirs: EnvDirs,
    /// v2 on kernels ≥ 6.12: the `memory.peak` descriptor a reset was written
    /// through. The reset only applies to reads through that same descriptor
    /// (cgroup-v2.rst, memory.peak), so it is kept for later reads.
    peak_fd: OnceLock<File>,
    /// v1 `memory.max_usage_in_bytes` and the OOM counter's file, opened once:
    /// they are read (and the peak reset) around every invoke, where an
    /// open/read/close per access would be most of the supervisor's work.
    v1_peak_fd: OnceLock<File>,
    oom_fd: OnceLock<File>,
}

#[derive(Debug)]
enum EnvDirs {
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
    V2 {
        dir: PathBuf,
    },
}

impl EnvCgroup {
    pub fn env_id(&self) -> &str {
        &self.env_id
    }

    pub fn version(&self) -> CgroupVersion {
        match self.dirs {
            EnvDirs::V1 { .. } => CgroupVersion::V1,
            EnvDirs::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// The environment's directory in each hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.dirs {
            EnvDirs::V1 { memory, cpu, pids } => vec![memory.clone(), cpu.clone(), pids.clone()],
            EnvDirs::V2 { dir } => vec![dir.clone()],
        }
    }

    /// Sets every limit: a blank made ahead of time gets its function's when it
    /// is specialised.
    pub fn set_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        match &self.dirs {
            EnvDirs::V1 { memory, .. } => {
                // memory+swap must never be below memory (cgroup-v1/memory.rst
                // 2.4): raise it first, lower it last.
                let limit = memory.join("memory.limit_in_bytes");
                let memsw = memory.join("memory.memsw.limit_in_bytes");
                let current = read_u64(&limit).map_err(|source| CgroupError::ReadFile {
                    path: limit.clone(),
                    source,
                })?;
                let bytes = limits.memory_bytes.to_string();
                let has_memsw = memsw.exists();
                if has_memsw && limits.memory_bytes >= current {
                    write_checked(&memsw, &bytes)?;
                }
                write_checked(&limit, &bytes)?;
                if has_memsw && limits.memory_bytes < current {
                    write_checked(&memsw, &bytes)?;
                }
            }
            EnvDirs::V2 { dir } => {
                write_checked(&dir.join("memory.max"), &limits.memory_bytes.to_string())?
            }
        }
        self.set_cpu(limits)?;
        let pids = match &self.dirs {
            EnvDirs::V1 { pids, .. } => pids.join("pids.max"),
            EnvDirs::V2 { dir } => dir.join("pids.max"),
        };
        write_checked(&pids, &limits.pids_max.to_string())
    }

    /// Sets the CPU quota (the function's own after its init phase).
    pub fn set_cpu(&self, limits: &Limits) -> Result<(), CgroupError> {
        match &self.dirs {
            EnvDirs::V1 { cpu, .. } => write_checked(
                &cpu.join("cpu.cfs_quota_us"),
                &limits.cpu_quota_us.to_string(),
            ),
            EnvDirs::V2 { dir } => write_checked(
                &dir.join("cpu.max"),
                &format!("{} {}", limits.cpu_quota_us, limits.cpu_period_us),
            ),
        }
    }

    /// Each hierarchy's `cgroup.procs`: the child writes `0` to each to join
    /// (the plan's `cgroup_procs`).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Peak memory use in bytes: v1 `memory.max_usage_in_bytes`; v2 `memory.peak`
    /// (since the last [`EnvCgroup::reset_peak`] where the kernel supports it),
    /// or `memory.current` on kernels without `memory.peak` (< 5.19).
    pub fn memory_peak(&self) -> io::Result<u64> {
        match &self.dirs {
            EnvDirs::V1 { memory, .. } => {
                let fd = cached(
                    &self.v1_peak_fd,
                    &memory.join("memory.max_usage_in_bytes"),
                    true,
                )?;
                parse_u64(&pread_text(fd)?)
            }
            EnvDirs::V2 { dir } => {
                if let Some(mut fd) = self.peak_fd.get() {
                    fd.seek(SeekFrom::Start(0))?;
                    let mut text = String::new();
                    fd.read_to_string(&mut text)?;
                    return parse_u64(&text);
                }
                match read_u64(&dir.join("memory.peak")) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        read_u64(&dir.join("memory.current"))
                    }
                    other => other,
                }
            }
        }
    }

    /// Starts a new peak measurement (before an invoke). v1: writing 0 to
    /// `memory.max_usage_in_bytes` resets it to the current use. v2: writing to
    /// `memory.peak` works from Linux 6.12 on and only for reads through the
    /// same descriptor, which is kept; on older kernels (EINVAL, EACCES,
    /// EBADF, ENOENT) the peak stays the one since creation.
    pub fn reset_peak(&self) -> io::Result<()> {
        match &self.dirs {
            EnvDirs::V1 { memory, .. } => {
                let fd = cached(
                    &self.v1_peak_fd,
                    &memory.join("memory.max_usage_in_bytes"),
                    true,
                )?;
                fd.write_at(b"0", 0).map(|_| ())
            }
            EnvDirs::V2 { dir } => {
                let unsupported = |e: &io::Error| {
                    matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EACCES | libc::EBADF | libc::ENOENT)
                    )
                };
                if let Some(mut fd) = self.peak_fd.get() {
                    return fd.write_all(b"reset\n");
                }
                let path = dir.join("memory.peak");
                let mut fd = match fs::OpenOptions::new().read(true).write(true).open(&path) {
                    Ok(fd) => fd,
                    Err(e) if unsupported(&e) => return Ok(()),
                    Err(e) => return Err(e),
                };
                match fd.write_all(b"reset\n") {
                    Ok(()) => {
                        let _ = self.peak_fd.set(fd);
                        Ok(())
                    }
                    Err(e) if unsupported(&e) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// How many processes the OOM killer killed in this cgroup: the `oom_kill`
    /// line of v1 `memory.oom_control` (Linux ≥ 4.13) or v2 `memory.events`.
    pub fn oom_kills(&self) -> io::Result<u64> {
        let path = match &self.dirs {
            EnvDirs::V1 { memory, .. } => memory.join("memory.oom_control"),
            EnvDirs::V2 { dir } => dir.join("memory.events"),
        };
        let text = pread_text(cached(&self.oom_fd, &path, false)?)?;
        keyed_u64(&text, "oom_kill").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has no oom_kill line", path.display()),
            )
        })
    }

    /// SIGKILLs every process of the environment and waits (bounded) until the
    /// cgroup is empty. v2: `cgroup.kill` (Linux ≥ 5.14), atomic and recursive;
    /// without it, and on v1 (where the freezer is not mounted on every host),
    /// a loop over `cgroup.procs` (see [`kill_listed`]).
    pub fn kill_all(&self) -> io::Result<()> {
        kill_cgroup(&self.dirs(), self.version())
    }

    /// Whether any process is in the cgroup (v2: `populated` of `cgroup.events`).
    pub fn is_populated(&self) -> io::Result<bool> {
        match &self.dirs {
            EnvDirs::V2 { dir } => {
                let text = fs::read_to_string(dir.join("cgroup.events"))?;
                Ok(keyed_u64(&text, "populated").unwrap_or(0) != 0)
            }
            EnvDirs::V1 { .. } => Ok(!self.pids()?.is_empty()),
        }
    }

    /// The processes (thread group ids) in the cgroup, as the kernel lists them in
    /// `cgroup.procs` (on v1: of any of the three hierarchies).
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        read_pids_union(&self.procs_files())
    }

    /// Removes the cgroup's directories. A cgroup with processes cannot be
    /// removed (EBUSY): then its processes are killed and the rmdir retried,
    /// with short sleeps, about 1 s in all.
    pub fn remove(self) -> Result<(), CgroupError> {
        let version = self.version();
        let dirs = self.dirs();
        drop(self.peak_fd);
        drop(self.v1_peak_fd);
        drop(self.oom_fd);
        for dir in &dirs {
            rmdir_retrying(dir, &dirs, version)?;
        }
        Ok(())
    }
}

// ---- v1 and v2 limits ----------------------------------------------------------

/// v1: `dirs` are the memory, cpu and pids directories, in that order.
fn apply_v1_limits(dirs: &[PathBuf], limits: &Limits) -> Result<(), CgroupError> {
    let [memory, cpu, pids] = dirs else {
        unreachable!("one directory per v1 hierarchy")
    };
    let bytes = limits.memory_bytes.to_string();
    // The memory limit first: memsw must never be below it (cgroup-v1/memory.rst
    // 2.4 "memory.memsw.limit_in_bytes ... should be set after memory.limit_in_bytes").
    write_checked(&memory.join("memory.limit_in_bytes"), &bytes)?;
    let memsw = memory.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        // memory+swap = memory: the environment cannot use swap at all.
        write_checked(&memsw, &bytes)?;
    } else {
        // Swap accounting is off (swapaccount=0 or no CONFIG_MEMCG_SWAP), so
        // memory+swap cannot be capped. swappiness 0 stops reclaim from swapping
        // this cgroup's anonymous memory (cgroup-v1/memory.rst 5.3), which is the
        // closest v1 gets to "no swap".
        write_checked(&memory.join("memory.swappiness"), "0")?;
    }
    // memory.oom_control is left as it is: the OOM killer stays enabled and kills
    // within the cgroup when the limit is hit.
    write_checked(
        &cpu.join("cpu.cfs_period_us"),
        &limits.cpu_period_us.to_string(),
    )?;
    write_checked(
        &cpu.join("cpu.cfs_quota_us"),
        &limits.cpu_quota_us.to_string(),
    )?;
    write_checked(&pids.join("pids.max"), &limits.pids_max.to_string())
}

fn apply_v2_limits(dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
    write_checked(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
    // No swap. The file is absent when the kernel has no swap support
    // (CONFIG_SWAP=n or swapaccount=0): then there is no swap to forbid.
    write_optional(&dir.join("memory.swap.max"), "0")?;
    // When the OOM killer strikes, it kills the whole environment rather than
    // one process of it (cgroup-v2.rst, memory.oom.group; Linux ≥ 4.19): the
    // environment is reset either way, as Lambda resets it.
    write_optional(&dir.join("memory.oom.group"), "1")?;
    write_checked(
        &dir.join("cpu.max"),
        &format!("{} {}", limits.cpu_quota_us, limits.cpu_period_us),
    )?;
    write_checked(&dir.join("pids.max"), &limits.pids_max.to_string())
}

/// The file behind `cell`, opened on first use (read-write if `write`).
fn cached<'a>(cell: &'a OnceLock<File>, path: &Path, write: bool) -> io::Result<&'a File> {
    if let Some(fd) = cell.get() {
        return Ok(fd);
    }
    let fd = fs::OpenOptions::new().read(true).write(write).open(path)?;
    Ok(cell.get_or_init(|| fd))
}

/// A cgroup file's whole text, read from offset 0 with pread(2): the kernel
/// regenerates a seq_file's content for a read at 0, so one descriptor serves
/// every later read.
fn pread_text(fd: &File) -> io::Result<String> {
    let mut buf = [0u8; 512];
    let mut len = 0;
    loop {
        let want = buf.len() - len;
        let n = fd.read_at(&mut buf[len..], len as u64)?;
        len += n;
        // A short read is the end: these files are a few lines long.
        if n < want || len == buf.len() {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

fn write_checked(path: &Path, value: &str) -> Result<(), CgroupError> {
    write_value(path, value).map_err(|source| CgroupError::WriteFile {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Like [`write_checked`], but a file the kernel does not offer is skipped.
fn write_optional(path: &Path, value: &str) -> Result<(), CgroupError> {
    match write_value(path, value) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(|source| CgroupError::WriteFile {
            path: path.to_owned(),
            value: value.to_owned(),
            source,
        }),
    }
}

// ---- v2 delegation -----------------------------------------------------------

fn require_controllers(dir: &Path) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.controllers");
    let text = fs::read_to_string(&path).map_err(|source| CgroupError::ReadFile {
        path: path.clone(),
        source,
    })?;
    let available: BTreeSet<&str> = text.split_whitespace().collect();
    let missing: Vec<&str> = V2_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !available.contains(c))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CgroupError::ControllersUnavailable {
            path: dir.to_owned(),
            missing: missing.join(", "),
        })
    }
}

fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let value: Vec<String> = V2_CONTROLLERS.iter().map(|c| format!("+{c}")).collect();
    write_value(&dir.join("cgroup.subtree_control"), &value.join(" ")).map_err(|source| {
        CgroupError::EnableControllers {
            path: dir.to_owned(),
            source,
        }
    })
}

// ---- killing and removing ----------------------------------------------------

/// Kills every process in the cgroup whose directories are `dirs`.
fn kill_cgroup(dirs: &[PathBuf], version: CgroupVersion) -> io::Result<()> {
    if version == CgroupVersion::V2 {
        match write_value(&dirs[0].join("cgroup.kill"), "1") {
            Ok(()) => return wait_empty(dirs),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let procs: Vec<PathBuf> = dirs.iter().map(|d| d.join("cgroup.procs")).collect();
    let mut sleep = RETRY_SLEEP_MIN;
    for _ in 0..KILL_ROUNDS {
        let pids = read_pids_union(&procs)?;
        if pids.is_empty() {
            return Ok(());
        }
        kill_listed(&procs, &pids)?;
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(RETRY_SLEEP_MAX);
    }
    still_busy(&procs)
}

/// Waits (bounded) until the processes `cgroup.kill` signalled are gone.
fn wait_empty(dirs: &[PathBuf]) -> io::Result<()> {
    let procs: Vec<PathBuf> = dirs.iter().map(|d| d.join("cgroup.procs")).collect();
    let mut sleep = RETRY_SLEEP_MIN;
    for _ in 0..KILL_ROUNDS {
        if read_pids_union(&procs)?.is_empty() {
            return Ok(());
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(RETRY_SLEEP_MAX);
    }
    still_busy(&procs)
}

fn still_busy(procs: &[PathBuf]) -> io::Result<()> {
    let left = read_pids_union(procs)?;
    if left.is_empty() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "processes {left:?} are still in {} after SIGKILL",
            procs[0].display()
        ),
    ))
}

/// SIGKILLs the processes `pids` read from the `procs` files, without the race of
/// a pid being reused by a process outside the cgroup between the read and the
/// kill: each pid is pinned with pidfd_open(2) first, the cgroup is listed
/// again, and only pids still listed are signalled through their pidfd
/// (pidfd_send_signal(2)). If the pid was reused in between, the pidfd refers to
/// the old, dead process and the signal goes nowhere. Kernels without pidfds
/// (< 5.3) fall back to kill(2).
fn kill_listed(procs: &[PathBuf], pids: &[i32]) -> io::Result<()> {
    let mut pinned: Vec<(i32, Option<OwnedFd>)> = Vec::with_capacity(pids.len());
    for &pid in pids {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
        // or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            // SAFETY: the kernel just returned this descriptor and nothing else
            // owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            pinned.push((pid, Some(fd)));
        } else {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ESRCH) => {} // already gone
                Some(libc::ENOSYS) => pinned.push((pid, None)),
                _ => return Err(io::Error::last_os_error()),
            }
        }
    }
    let listed: BTreeSet<i32> = read_pids_union(procs)?.into_iter().collect();
    for (pid, fd) in pinned {
        if !listed.contains(&pid) {
            continue;
        }
        let rc = match &fd {
            // SAFETY: a valid pidfd, SIGKILL, no siginfo (NULL), flags 0.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            // SAFETY: kill(2) takes plain integers.
            None => i64::from(unsafe { libc::kill(pid, libc::SIGKILL) }),
        };
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// rmdir of one of an environment's directories; if the cgroup is busy, kills
/// the environment's processes (in all of `all_dirs`) and tries again.
fn rmdir_retrying(
    dir: &Path,
    all_dirs: &[PathBuf],
    version: CgroupVersion,
) -> Result<(), CgroupError> {
    let mut sleep = RETRY_SLEEP_MIN;
    let mut last = None;
    for _ in 0..RMDIR_ATTEMPTS {
        match rmdir_cgroup(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                kill_cgroup(all_dirs, version).map_err(|source| CgroupError::KillProcesses {
                    path: dir.to_owned(),
                    source,
                })?;
                last = Some(e);
            }
            Err(source) => {
                return Err(CgroupError::Rmdir {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(RETRY_SLEEP_MAX);
    }
    Err(CgroupError::Rmdir {
        path: dir.to_owned(),
        source: last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY)),
    })
}

/// Removes a cgroup directory and any cgroups below it, deepest first, killing
/// their processes.
fn remove_tree(dir: &Path, version: CgroupVersion) -> Result<(), CgroupError> {
    let entries = fs::read_dir(dir).map_err(|source| CgroupError::ListDir {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::ListDir {
            path: dir.to_owned(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path(), version)?;
        }
    }
    let dirs = [dir.to_owned()];
    kill_cgroup(&dirs, version).map_err(|source| CgroupError::KillProcesses {
        path: dir.to_owned(),
        source,
    })?;
    rmdir_retrying(dir, &dirs, version)
}

// ---- paths and files ---------------------------------------------------------

/// `/proc/self/cgroup` as `(controllers, path)` per hierarchy; the v2 line
/// (`0::/path`) has no controllers. cgroups(7), "/proc/[pid]/cgroup".
fn parse_proc_self_cgroup(text: &str) -> Result<Vec<(Vec<String>, String)>, CgroupError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(CgroupError::ParseProcSelfCgroup { line: line.into() });
            };
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            Ok((controllers, path.to_owned()))
        })
        .collect()
}

/// A cgroup path relative to a hierarchy's root: leading `/` dropped; `..` (a
/// process outside its cgroup namespace's root shows those) refused.
fn relative_cgroup_path(path: impl AsRef<Path>) -> Result<PathBuf, CgroupError> {
    let path = path.as_ref();
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => rel.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(CgroupError::InvalidCgroupPath {
                    path: path.to_owned(),
                    reason: "it must not contain '..' (a cgroup outside this cgroup namespace?)",
                })
            }
        }
    }
    Ok(rel)
}

/// The mount point of the v1 hierarchy that has `controller`: `root/<controller>`
/// or a co-mounted `root/cpu,cpuacct`. A v1 hierarchy root has `cgroup.procs`
/// and no `cgroup.controllers` (that would be a v2 cgroup of the same name).
fn find_v1_hierarchy(root: &Path, controller: &str) -> Option<PathBuf> {
    let is_v1 =
        |dir: &Path| dir.join("cgroup.procs").is_file() && !dir.join("cgroup.controllers").exists();
    let direct = root.join(controller);
    if is_v1(&direct) {
        return Some(direct);
    }
    let entries = fs::read_dir(root).ok()?;
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.split(',').any(|c| c == controller))
        })
        .map(|e| e.path())
        .filter(|p| is_v1(p))
        .collect();
    candidates.sort();
    candidates.into_iter().next()
}

fn check_env_id(env_id: &str) -> Result<(), CgroupError> {
    let ok = !env_id.is_empty()
        && env_id.len() <= ENV_ID_MAX
        && env_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidEnvId {
            env_id: env_id.to_owned(),
        })
    }
}

fn mkdir_existing_ok(dir: &Path) -> Result<(), CgroupError> {
    match mkdir_cgroup(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Mkdir {
            path: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// `mkdir -p` of a cgroup path: creates the missing directories top-down (each a
/// cgroup; the hierarchy's root always exists).
fn mkdir_p(dir: &Path) -> Result<(), CgroupError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        mkdir_p(parent)?;
    }
    mkdir_existing_ok(dir)
}

/// mkdir(2) of a cgroup: the kernel fills the new directory with the interface
/// files of the enabled controllers.
fn mkdir_cgroup(dir: &Path) -> io::Result<()> {
    fs::create_dir(dir)?;
    #[cfg(test)]
    fakefs::after_mkdir(dir)?;
    Ok(())
}

/// rmdir(2) of a cgroup: on cgroupfs a cgroup directory is removed with its
/// interface files by one rmdir, refused with EBUSY while it has processes or
/// child cgroups (cgroup-v2.rst "Basic Operations").
fn rmdir_cgroup(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    fakefs::before_rmdir(dir)?;
    fs::remove_dir(dir)
}

/// Writes `value` to an existing cgroup file in one write(2). The file is never
/// created: a missing interface file is an error (ENOENT) the caller decides on.
/// O_TRUNC is what a shell's `echo v > file` does too; cgroupfs ignores it.
fn write_value(path: &Path, value: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    file.write_all(value.as_bytes())
}

fn read_u64(path: &Path) -> io::Result<u64> {
    parse_u64(&fs::read_to_string(path)?)
}

fn parse_u64(text: &str) -> io::Result<u64> {
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}: {e}")))
}

/// The value of `key` in a flat-keyed file (`key value` per line).
fn keyed_u64(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The pids in a `cgroup.procs` file; a cgroup that no longer exists has none.
fn read_pids(path: &Path) -> io::Result<Vec<i32>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    text.split_whitespace()
        .map(|p| {
            p.parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{p:?}: {e}")))
        })
        .collect()
}

fn read_pids_union(paths: &[PathBuf]) -> io::Result<Vec<i32>> {
    let mut all = BTreeSet::new();
    for path in paths {
        all.extend(read_pids(path)?);
    }
    Ok(all.into_iter().collect())
}

/// Test-only stand-in for what cgroupfs does on mkdir and rmdir, for trees built
/// in a temporary directory. On a real cgroupfs (statfs magic) it does nothing,
/// so the root-only tests run the production path unchanged.
#[cfg(test)]
mod fakefs {
    use std::fs;
    use std::io;
    use std::path::Path;

    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};

    fn is_fake(dir: &Path) -> bool {
        statfs(dir).is_ok_and(|s| {
            s.filesystem_type() != CGROUP_SUPER_MAGIC && s.filesystem_type() != CGROUP2_SUPER_MAGIC
        })
    }

    /// The new cgroup gets the interface files of its parent, empty, except
    /// `cgroup.controllers`, which lists what the parent enabled in
    /// `cgroup.subtree_control`.
    pub(super) fn after_mkdir(dir: &Path) -> io::Result<()> {
        if !is_fake(dir) {
            return Ok(());
        }
        let parent = dir.parent().expect("a cgroup has a parent");
        for entry in fs::read_dir(parent)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name();
            let content = if name == "cgroup.controllers" {
                let enabled =
                    fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
                enabled
                    .split_whitespace()
                    .filter_map(|c| c.strip_prefix('+'))
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                String::new()
            };
            fs::write(dir.join(&name), content)?;
        }
        Ok(())
    }

    /// rmdir on cgroupfs removes the interface files with the directory.
    pub(super) fn before_rmdir(dir: &Path) -> io::Result<()> {
        if !dir.exists() || !is_fake(dir) {
            return Ok(());
        }
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn init_gets_at_least_one_vcpu() {
        let l = Limits::for_function(128, 2);
        assert_eq!(l.cpu_quota_us, 7235);
        let init = l.for_init(2);
        assert_eq!(init.cpu_quota_us, 100_000);
        assert_eq!(init.memory_bytes, l.memory_bytes);
        let big = Limits::for_function(3538, 2);
        assert_eq!(big.for_init(2).cpu_quota_us, big.cpu_quota_us);
    }

    use super::*;
    use std::collections::BTreeMap;

    const V1_FILES_MEMORY: &[&str] = &[
        "cgroup.procs",
        "tasks",
        "notify_on_release",
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.swappiness",
        "memory.max_usage_in_bytes",
        "memory.usage_in_bytes",
        "memory.oom_control",
    ];
    const V1_FILES_CPU: &[&str] = &[
        "cgroup.procs",
        "tasks",
        "cpu.cfs_period_us",
        "cpu.cfs_quota_us",
        "cpu.shares",
    ];
    const V1_FILES_PIDS: &[&str] = &["cgroup.procs", "tasks", "pids.max", "pids.current"];
    const V2_FILES: &[&str] = &[
        "cgroup.controllers",
        "cgroup.subtree_control",
        "cgroup.procs",
        "cgroup.events",
        "cgroup.kill",
        "memory.max",
        "memory.swap.max",
        "memory.oom.group",
        "memory.peak",
        "memory.current",
        "memory.events",
        "cpu.max",
        "pids.max",
    ];

    fn touch_all(dir: &Path, files: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        for f in files {
            fs::write(dir.join(f), "").unwrap();
        }
    }

    /// A hybrid host like the development machines: memory co-located in a
    /// nested own cgroup, `cpu,cpuacct` co-mounted with a `cpu` symlink, pids at
    /// the root, and an empty unified mount.
    fn fake_v1(with_memsw: bool) -> (tempfile::TempDir, String) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mut memory_files: Vec<&str> = V1_FILES_MEMORY.to_vec();
        if !with_memsw {
            memory_files.retain(|f| *f != "memory.memsw.limit_in_bytes");
        }
        touch_all(&root.join("memory"), &memory_files);
        touch_all(&root.join("memory/app/sup"), &memory_files);
        touch_all(&root.join("cpu,cpuacct"), V1_FILES_CPU);
        std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).unwrap();
        touch_all(&root.join("pids"), V1_FILES_PIDS);
        touch_all(
            &root.join("unified"),
            &["cgroup.controllers", "cgroup.procs"],
        );
        let proc_self = "9:name=systemd:/\n8:pids:/\n4:memory:/app/sup\n\
                         2:cpu,cpuacct:/\n0::/\n"
            .to_owned();
        (tmp, proc_self)
    }

    /// A pure v2 host where systemd delegated `/svc/lambdalet.service` (memory,
    /// cpu, pids available) and the supervisor runs in it.
    fn fake_v2(own_procs: &str) -> (tempfile::TempDir, String) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        touch_all(root, V2_FILES);
        fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        fs::write(root.join("cgroup.subtree_control"), "cpu memory pids").unwrap();
        fs::write(root.join("cgroup.procs"), "1\n").unwrap();
        let own = root.join("svc/lambdalet.service");
        touch_all(&own, V2_FILES);
        fs::write(own.join("cgroup.controllers"), "cpu memory pids").unwrap();
        fs::write(own.join("cgroup.procs"), own_procs).unwrap();
        (tmp, "0::/svc/lambdalet.service\n".to_owned())
    }

    fn read(path: impl AsRef<Path>) -> String {
        fs::read_to_string(path).unwrap()
    }

    /// Every file under `root` with its contents (directories as "<dir>").
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                let kind = entry.file_type().unwrap();
                if kind.is_dir() {
                    out.insert(path.clone(), "<dir>".into());
                    stack.push(path);
                } else if kind.is_file() {
                    out.insert(path.clone(), read(&path));
                }
            }
        }
        out
    }

    #[test]
    fn limits_follow_memory() {
        let l = Limits::for_function(128, 2);
        assert_eq!(l.memory_bytes, 134_217_728);
        assert_eq!((l.cpu_quota_us, l.cpu_period_us), (7_235, 100_000));
        assert_eq!(l.pids_max, 1024);
        let l = Limits::for_function(1769, 2);
        assert_eq!(l.memory_bytes, 1_854_930_944);
        assert_eq!(l.cpu_quota_us, 100_000);
        let l = Limits::for_function(3008, 2);
        assert_eq!(l.memory_bytes, 3_154_116_608);
        assert_eq!(l.cpu_quota_us, 170_039);
        let l = Limits::for_function(10240, 2);
        assert_eq!(l.memory_bytes, 10_737_418_240);
        assert_eq!(l.cpu_quota_us, 200_000, "capped at the host's 2 CPUs");
        assert_eq!(Limits::for_function(10240, 64).cpu_quota_us, 578_858);
        assert_eq!(Limits::for_function(10240, 0).cpu_quota_us, 100_000);
        assert_eq!(Limits::for_function(1, 2).cpu_quota_us, MIN_CPU_QUOTA_US);
        // 6 vCPUs at most, whatever the memory.
        assert_eq!(Limits::for_function(u32::MAX, 64).cpu_quota_us, 600_000);
    }

    #[test]
    fn detects_hybrid_v1_and_default_parents() {
        let (tmp, proc_self) = fake_v1(true);
        let root = tmp.path();
        let m = CgroupManager::detect(root, &proc_self, None).unwrap();
        assert_eq!(m.version(), CgroupVersion::V1);
        assert_eq!(
            m.parent_dirs(),
            vec![
                root.join("memory/app/sup/lambdalet"),
                root.join("cpu/lambdalet"),
                root.join("pids/lambdalet"),
            ]
        );
        for parent in ["x/y", "/x/y"] {
            let m = CgroupManager::detect(root, &proc_self, Some(Path::new(parent))).unwrap();
            assert_eq!(
                m.parent_dirs(),
                vec![
                    root.join("memory/x/y"),
                    root.join("cpu/x/y"),
                    root.join("pids/x/y")
                ]
            );
        }
        assert!(matches!(
            CgroupManager::detect(root, &proc_self, Some(Path::new("a/../../b"))),
            Err(CgroupError::InvalidCgroupPath { .. })
        ));
    }

    #[test]
    fn finds_co_mounted_cpu_without_symlink() {
        let (tmp, proc_self) = fake_v1(true);
        fs::remove_file(tmp.path().join("cpu")).unwrap();
        let m = CgroupManager::detect(tmp.path(), &proc_self, None).unwrap();
        assert_eq!(m.parent_dirs()[1], tmp.path().join("cpu,cpuacct/lambdalet"));
    }

    #[test]
    fn refuses_partial_or_missing_layouts() {
        let (tmp, proc_self) = fake_v1(true);
        fs::remove_dir_all(tmp.path().join("pids")).unwrap();
        let err = CgroupManager::detect(tmp.path(), &proc_self, None).unwrap_err();
        assert!(err.to_string().contains("pids"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            CgroupManager::detect(empty.path(), "0::/\n", None),
            Err(CgroupError::UnsupportedLayout { .. })
        ));
        let (tmp, _) = fake_v1(true);
        assert!(matches!(
            CgroupManager::detect(tmp.path(), "0::/\n", None),
            Err(CgroupError::OwnCgroupNotFound { .. })
        ));
        assert!(matches!(
            CgroupManager::detect(tmp.path(), "garbage\n", None),
            Err(CgroupError::ParseProcSelfCgroup { .. })
        ));
    }

    #[test]
    fn v1_create_writes_limits_and_remove_cleans_up() {
        let (tmp, proc_self) = fake_v1(true);
        let root = tmp.path();
        let m = CgroupManager::detect(root, &proc_self, None).unwrap();
        m.prepare().unwrap();
        m.prepare().unwrap(); // idempotent
        let before = snapshot(root);
        let expect = [
            (128, "134217728", "7235"),
            (1769, "1854930944", "100000"),
            (3008, "3154116608", "170039"),
            (10240, "10737418240", "200000"),
        ];
        for (mb, bytes, quota) in expect {
            let env = m.create("e-1", &Limits::for_function(mb, 2)).unwrap();
            let mem = root.join("memory/app/sup/lambdalet/e-1");
            let cpu = root.join("cpu/lambdalet/e-1");
            let pids = root.join("pids/lambdalet/e-1");
            assert_eq!(read(mem.join("memory.limit_in_bytes")), bytes);
            assert_eq!(read(mem.join("memory.memsw.limit_in_bytes")), bytes);
            assert_eq!(
                read(mem.join("memory.swappiness")),
                "",
                "untouched with memsw"
            );
            assert_eq!(
                read(mem.join("memory.oom_control")),
                "",
                "OOM killer left on"
            );
            assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(cpu.join("cpu.cfs_quota_us")), quota);
            assert_eq!(read(pids.join("pids.max")), "1024");
            assert_eq!(
                env.procs_files(),
                vec![
                    mem.join("cgroup.procs"),
                    cpu.join("cgroup.procs"),
                    pids.join("cgroup.procs")
                ]
            );
            env.remove().unwrap();
            assert!(!mem.exists() && !cpu.exists() && !pids.exists());
            assert_eq!(snapshot(root), before, "{mb} MB left something behind");
        }
    }

    #[test]
    fn v1_without_swap_accounting_sets_swappiness() {
        let (tmp, proc_self) = fake_v1(false);
        let m = CgroupManager::detect(tmp.path(), &proc_self, None).unwrap();
        m.prepare().unwrap();
        let env = m.create("e", &Limits::for_function(128, 2)).unwrap();
        let mem = tmp.path().join("memory/app/sup/lambdalet/e");
        assert_eq!(read(mem.join("memory.swappiness")), "0");
        assert!(!mem.join("memory.memsw.limit_in_bytes").exists());
        env.remove().unwrap();
    }

    #[test]
    fn v1_failed_create_removes_what_it_made() {
        let (tmp, proc_self) = fake_v1(true);
        let root = tmp.path();
        let m = CgroupManager::detect(root, &proc_self, None).unwrap();
        m.prepare().unwrap();
        // A pids hierarchy without pids.max makes the last write fail.
        fs::remove_file(root.join("pids/lambdalet/pids.max")).unwrap();
        let before = snapshot(root);
        let err = m.create("e", &Limits::for_function(128, 2)).unwrap_err();
        assert!(matches!(err, CgroupError::WriteFile { .. }), "{err}");
        assert_eq!(snapshot(root), before);
    }

    #[test]
    fn v1_measurements_read_the_kernel_files() {
        let (tmp, proc_self) = fake_v1(true);
        let m = CgroupManager::detect(tmp.path(), &proc_self, None).unwrap();
        m.prepare().unwrap();
        let env = m.create("e", &Limits::for_function(128, 2)).unwrap();
        let mem = tmp.path().join("memory/app/sup/lambdalet/e");
        fs::write(mem.join("memory.max_usage_in_bytes"), "4096\n").unwrap();
        fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(env.memory_peak().unwrap(), 4096);
        assert_eq!(env.oom_kills().unwrap(), 2);
        env.reset_peak().unwrap();
        // The kernel takes each write to a cgroup file whole; this plain file
        // only shows that "0" was written at offset 0 of the kept descriptor.
        assert!(read(mem.join("memory.max_usage_in_bytes")).starts_with('0'));
        assert!(!env.is_populated().unwrap());
        env.kill_all().unwrap(); // nothing to kill
        env.remove().unwrap();
    }

    #[test]
    fn rejects_bad_env_ids() {
        let (tmp, proc_self) = fake_v1(true);
        let m = CgroupManager::detect(tmp.path(), &proc_self, None).unwrap();
        m.prepare().unwrap();
        let long = "a".repeat(ENV_ID_MAX + 1);
        for bad in ["", "..", "a/b", "memory.max", "é", long.as_str()] {
            assert!(
                matches!(
                    m.create(bad, &Limits::for_function(128, 2)),
                    Err(CgroupError::InvalidEnvId { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn v1_remove_stale_removes_leftovers_only_under_the_parent() {
        let (tmp, proc_self) = fake_v1(true);
        let root = tmp.path();
        let m = CgroupManager::detect(root, &proc_self, None).unwrap();
        m.prepare().unwrap();
        let limits = Limits::for_function(128, 2);
        // Two environments of a crashed run (never removed).
        std::mem::forget(m.create("old-1", &limits).unwrap());
        std::mem::forget(m.create("old-2", &limits).unwrap());
        let sibling = root.join("memory/app/sup/other");
        fs::create_dir(&sibling).unwrap();
        assert_eq!(m.remove_stale().unwrap(), 2);
        for parent in m.parent_dirs() {
            assert!(parent.is_dir());
            let left: Vec<_> = fs::read_dir(&parent)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
                .collect();
            assert!(left.is_empty(), "{}", parent.display());
        }
        assert!(sibling.is_dir(), "cgroups outside the parent are not ours");
        assert_eq!(m.remove_stale().unwrap(), 0);
    }

    #[test]
    fn v2_detects_default_parent_below_own_cgroup() {
        let (tmp, proc_self) = fake_v2("");
        let root = tmp.path();
        let m = CgroupManager::detect(root, &proc_self, None).unwrap();
        assert_eq!(m.version(), CgroupVersion::V2);
        assert_eq!(
            m.parent_dirs(),
            vec![root.join("svc/lambdalet.service/lambdalet")]
        );
        let m = CgroupManager::detect(root, &proc_self, Some(Path::new("/deleg/x"))).unwrap();
        assert_eq!(m.parent_dirs(), vec![root.join("deleg/x")]);
    }

    #[test]
    fn v2_delegation_moves_only_the_supervisor_and_stays_in_its_subtree() {
        let me = std::process::id();
        let (tmp, proc_self) = fake_v2(&format!("{me}\n"));
        let root = tmp.path();
        let own = root.join("svc/lambdalet.service");
        let m = CgroupManager::detect(root, &proc_self, None).unwrap();
        let before = snapshot(root);
        m.prepare().unwrap();
        // The supervisor moved itself into a leaf…
        assert_eq!(read(own.join("supervisor/cgroup.procs")), me.to_string());
        // …so controllers can be enabled in its own cgroup and in the parent.
        assert_eq!(
            read(own.join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(
            read(own.join("lambdalet/cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        let env = m.create("e-17", &Limits::for_function(3008, 2)).unwrap();
        let dir = own.join("lambdalet/e-17");
        assert_eq!(read(dir.join("memory.max")), "3154116608");
        assert_eq!(read(dir.join("memory.swap.max")), "0");
        assert_eq!(read(dir.join("memory.oom.group")), "1");
        assert_eq!(read(dir.join("cpu.max")), "170039 100000");
        assert_eq!(read(dir.join("pids.max")), "1024");
        assert_eq!(read(dir.join("cgroup.controllers")), "memory cpu pids");
        assert_eq!(env.procs_files(), vec![dir.join("cgroup.procs")]);

        // Measurements and kill through the v2 files.
        fs::write(dir.join("memory.peak"), "8192\n").unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        fs::write(dir.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        assert_eq!(env.memory_peak().unwrap(), 8192);
        assert_eq!(env.oom_kills().unwrap(), 1);
        assert!(!env.is_populated().unwrap());
        env.kill_all().unwrap();
        assert_eq!(read(dir.join("cgroup.kill")), "1");

        // Nothing outside the supervisor's own cgroup changed.
        let after = snapshot(root);
        for (path, content) in &after {
            if !path.starts_with(&own) {
                assert_eq!(
                    before.get(path),
                    Some(content),
                    "{} changed",
                    path.display()
                );
            }
        }
        for path in before.keys() {
            assert!(after.contains_key(path), "{} vanished", path.display());
        }
        env.remove().unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn v2_peak_falls_back_to_current_and_tolerates_missing_files() {
        let (tmp, proc_self) = fake_v2("");
        let root = tmp.path();
        let own = root.join("svc/lambdalet.service");
        for f in [
            "memory.peak",
            "memory.swap.max",
            "memory.oom.group",
            "cgroup.kill",
        ] {
            fs::remove_file(own.join(f)).unwrap();
        }
        let m = CgroupManager::detect(root, &proc_self, None).unwrap();
        m.prepare().unwrap();
        // Own cgroup had no processes: nobody was moved.
        assert!(!own.join("supervisor").exists());
        let env = m.create("e", &Limits::for_function(128, 2)).unwrap();
        let dir = own.join("lambdalet/e");
        fs::write(dir.join("memory.current"), "123\n").unwrap();
        assert_eq!(env.memory_peak().unwrap(), 123);
        env.reset_peak().unwrap(); // no memory.peak: ignored
        env.kill_all().unwrap(); // no cgroup.kill: the procs loop, empty
        env.remove().unwrap();
    }

    #[test]
    fn v2_refuses_other_processes_and_missing_controllers() {
        let (tmp, proc_self) = fake_v2("1\n2\n");
        let root = tmp.path();
        let m = CgroupManager::detect(root, &proc_self, None).unwrap();
        let before = snapshot(root);
        match m.prepare() {
            Err(CgroupError::OtherProcessesInCgroup { pids, .. }) => assert_eq!(pids, vec![1, 2]),
            other => panic!("{other:?}"),
        }
        assert_eq!(snapshot(root), before, "nothing moved, nothing written");

        let (tmp, proc_self) = fake_v2("");
        let own = tmp.path().join("svc/lambdalet.service");
        fs::write(own.join("cgroup.controllers"), "memory").unwrap();
        let m = CgroupManager::detect(tmp.path(), &proc_self, None).unwrap();
        let err = m.prepare().unwrap_err();
        assert!(err.to_string().contains("cpu, pids"), "{err}");
    }

    #[test]
    fn v2_supervisor_in_root_cgroup_is_not_moved() {
        let (tmp, _) = fake_v2("");
        let root = tmp.path();
        let m = CgroupManager::detect(root, "0::/\n", None).unwrap();
        m.prepare().unwrap();
        assert!(!root.join("supervisor").exists());
        assert_eq!(
            read(root.join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert!(root.join("lambdalet").is_dir());
    }

    // ---- root-only: the real cgroupfs of this host ----

    /// Root tests skip with a message when not root, unless `CI` is set.
    fn root_or_skip(name: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        if std::env::var_os("CI").is_some() {
            panic!("{name} requires root");
        }
        eprintln!("skipping {name}: requires root");
        false
    }

    /// Child role of `oom_kills_a_hog_and_remove_leaves_nothing`: join the cgroups
    /// named in the environment, then touch 256 MiB.
    #[test]
    fn child_entry_memory_hog() {
        let Some(procs) = std::env::var_os("LAMBDALET_TEST_HOG_CGROUP_PROCS") else {
            return;
        };
        for path in std::env::split_paths(&procs) {
            write_value(&path, "0").unwrap();
        }
        // Zeroed pages are only charged once written: touch one byte per page.
        let mut hog = vec![0u8; 256 << 20];
        for i in (0..hog.len()).step_by(4096) {
            // SAFETY: `i` is within `hog`; volatile so the write is not elided.
            unsafe { std::ptr::write_volatile(hog.as_mut_ptr().add(i), 1) };
        }
        println!("survived with {} bytes", hog.len());
        std::process::exit(3);
    }

    #[test]
    fn oom_kills_a_hog_and_remove_leaves_nothing() {
        use std::os::unix::process::ExitStatusExt;
        if !root_or_skip("oom_kills_a_hog_and_remove_leaves_nothing") {
            return;
        }
        let proc_self = read("/proc/self/cgroup");
        let leaf = format!("lambdalet-test-{}", std::process::id());
        let m =
            CgroupManager::detect_with_leaf(Path::new("/sys/fs/cgroup"), &proc_self, None, &leaf)
                .unwrap();
        m.prepare().unwrap();
        let limits = Limits {
            memory_bytes: 64 << 20,
            ..Limits::for_function(128, 2)
        };
        let env = m.create("oom-test", &limits).unwrap();
        let dirs = env.dirs();
        // What the kernel holds is what was written.
        match env.version() {
            CgroupVersion::V1 => {
                assert_eq!(
                    read_u64(&dirs[0].join("memory.limit_in_bytes")).unwrap(),
                    64 << 20
                );
                assert_eq!(read_u64(&dirs[1].join("cpu.cfs_quota_us")).unwrap(), 7235);
                assert_eq!(read(dirs[2].join("pids.max")).trim(), "1024");
            }
            CgroupVersion::V2 => {
                assert_eq!(read(dirs[0].join("cpu.max")).trim(), "7235 100000");
            }
        }
        env.reset_peak().unwrap();

        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sandbox::cgroup::tests::child_entry_memory_hog"])
            .args(["--nocapture", "--test-threads=1"])
            .env(
                "LAMBDALET_TEST_HOG_CGROUP_PROCS",
                std::env::join_paths(env.procs_files()).unwrap(),
            )
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        let peak = env.memory_peak().unwrap();
        let kills = env.oom_kills().unwrap();
        let cleanup = |env: EnvCgroup| {
            env.remove().unwrap();
            for parent in m.parent_dirs() {
                fs::remove_dir(&parent).unwrap();
            }
        };
        if status.signal() != Some(libc::SIGKILL) {
            cleanup(env);
            panic!("the hog was not SIGKILLed: {status:?}");
        }
        assert!(kills >= 1, "oom_kill = {kills}");
        assert!(
            peak > (48 << 20) && peak <= (64 << 20) + (1 << 20),
            "peak {peak} not near the 64 MiB limit"
        );
        assert!(!env.is_populated().unwrap());
        cleanup(env);
        for dir in dirs {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }

    #[test]
    fn remove_kills_processes_and_remove_stale_cleans_up() {
        if !root_or_skip("remove_kills_processes_and_remove_stale_cleans_up") {
            return;
        }
        let proc_self = read("/proc/self/cgroup");
        let leaf = format!("lambdalet-test-stale-{}", std::process::id());
        let m =
            CgroupManager::detect_with_leaf(Path::new("/sys/fs/cgroup"), &proc_self, None, &leaf)
                .unwrap();
        m.prepare().unwrap();
        let limits = Limits::for_function(128, 2);
        let spawn_sleeper = |env: &EnvCgroup| {
            let mut child = std::process::Command::new("sleep")
                .arg("600")
                .spawn()
                .unwrap();
            for procs in env.procs_files() {
                write_value(&procs, &child.id().to_string()).unwrap();
            }
            // Reap in the background once killed.
            std::thread::spawn(move || child.wait());
        };
        // remove() of a busy cgroup kills its processes first.
        let env = m.create("busy", &limits).unwrap();
        spawn_sleeper(&env);
        assert!(env.is_populated().unwrap());
        assert_eq!(env.pids().unwrap().len(), 1);
        let dirs = env.dirs();
        env.remove().unwrap();
        assert!(dirs.iter().all(|d| !d.exists()));

        // A crashed run's environment, with a process in it.
        let env = m.create("stale", &limits).unwrap();
        spawn_sleeper(&env);
        let dirs = env.dirs();
        std::mem::forget(env);
        assert_eq!(m.remove_stale().unwrap(), 1);
        assert!(dirs.iter().all(|d| !d.exists()));
        for parent in m.parent_dirs() {
            fs::remove_dir(&parent).unwrap();
        }
    }
}
