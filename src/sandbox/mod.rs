//! The execution environment's kernel objects, one file per concept, and the
//! plan that a zygote child applies (docs/architecture.md).
//!
//! Everything here runs in the supervisor, before the fork (STYLE.md: compute
//! in the parent, the child only applies a plan):
//!
//! - [`host`]: facts about the host found once at startup (the real Python
//!   interpreter, CPUs, `cap_last_cap`, library dirs, /proc entries);
//! - [`cgroup`]: one cgroup per environment on cgroup v2 or v1 (hybrid hosts),
//!   its limits, measurements (peak memory, OOM kills), kill and removal;
//! - [`seccomp`]: the policy in `seccomp/` compiled to BPF bytes;
//! - [`plan`]: the sandbox plan in two halves: the blank (namespaces, the
//!   generic root), rendered once, and the specialisation (code, /tmp, ids,
//!   rlimits, filter), rendered once per function revision.
//!
//! The order at startup: `HostPython::discover`, `HostLayout::discover`,
//! `cgroup::CgroupManager::detect` → `prepare` → `remove_stale` (before any child
//! process exists: on v2 the supervisor may move itself into a leaf cgroup),
//! `seccomp::default_filter`, `plan::BlankTemplate::new`. Per blank:
//! `CgroupManager::create`, `BlankTemplate::for_env(env_id,
//! env_cgroup.procs_files())`, spawn. Per function revision:
//! `plan::SpecTemplate::new`; per cold start `EnvCgroup::set_limits` and the
//! template's plan. When an environment ends, `EnvCgroup::remove`.

pub mod cgroup;
pub mod host;
pub mod plan;
pub mod seccomp;
