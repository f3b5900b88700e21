//! The plan of a container image function's environment
//! (docs/architecture.md § Container images): the image's unpacked root
//! instead of the generic root tmpfs.
//!
//! | path | what |
//! | --- | --- |
//! | `/` | the image's rootfs (state dir), bound read-only, nosuid, nodev |
//! | `/.lambdalet/python` | the interpreter B runs on, read-only |
//! | `/dev` | as in every environment: a read-only tmpfs with the harmless nodes |
//! | `/proc` | as in every environment, masked |
//! | `/tmp` | tmpfs of the function's ephemeral storage size, mode 1777 |
//!
//! Nothing else of the host: no library dirs (the image brings its own, or
//! none, for a static binary; B, already running, maps none of them anew),
//! no `/etc` files (the image's own), no functions mount (the blank is made
//! for one function revision: its root is that revision's). The mount points
//! exist in the rootfs (`registry::image::MOUNT_POINTS`, made at unpack
//! time), since a read-only root cannot get new directories.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::{
    abs_str, after_pivot_ops, bind_ro, dev_ops, flags, hostname, BlankPlan, MountKind, Op,
    PlanError, Prerendered, SpecPlan, SpecTemplate, NOFILE_LIMIT, UNSHARE_FLAGS,
};
use crate::registry::image::SANDBOX_PYTHON_DIR;
use crate::sandbox::host::{HostLayout, HostPython};

/// What an image function's blank is made of.
#[derive(Debug, Clone, Copy)]
pub struct ImageBlankInputs<'a> {
    /// The empty host directory every environment mounts its root on.
    pub new_root: &'a Path,
    /// The revision's unpacked image root (`registry::image::ROOTFS_DIR`).
    pub rootfs: &'a Path,
    pub python: &'a HostPython,
    pub cap_last_cap: u32,
    pub host: &'a HostLayout,
}

/// The spawn request's `sandbox` for a blank of an image function.
pub fn blank_plan(
    inputs: &ImageBlankInputs,
    env_id: &str,
    cgroup_procs: Vec<PathBuf>,
) -> Result<BlankPlan, PlanError> {
    let new_root = abs_str("new_root", inputs.new_root)?;
    let rootfs = abs_str("image rootfs", inputs.rootfs)?;
    let base_prefix = abs_str("python base_prefix", &inputs.python.base_prefix)?;
    let mut ops = Vec::with_capacity(16);
    // B's interpreter, where it clashes with nothing an image has; the
    // zygote relocates its modules to this prefix (bootstrap.relocate).
    bind_ro(&mut ops, base_prefix, SANDBOX_PYTHON_DIR, MountKind::Dir);
    dev_ops(&mut ops);
    let after_pivot = after_pivot_ops(inputs.host);
    Ok(BlankPlan {
        cgroup_procs,
        unshare_flags: UNSHARE_FLAGS,
        new_root: new_root.to_owned(),
        root_tmpfs_options: super::ROOT_TMPFS_OPTIONS.to_owned(),
        root_bind: Some(rootfs.to_owned()),
        ops: Prerendered::of(&ops)?,
        after_pivot: Prerendered::of(&after_pivot)?,
        hostname: hostname(env_id),
        cap_last_cap: inputs.cap_last_cap,
    })
}

/// What an image function's revision adds to its blank.
#[derive(Debug, Clone, Copy)]
pub struct ImageSpecInputs<'a> {
    pub uid: u32,
    pub gid: u32,
    pub tmp_mb: u32,
    pub seccomp_bpf: &'a [u8],
}

impl SpecTemplate {
    /// The specialisation of an image function: only /tmp is left to mount
    /// (the root is the image's, read-only since the blank bound it); then
    /// the same rlimits, identity and filter as every function. B works in
    /// `/`: the image's WorkingDir is its child's (provided.py).
    pub fn for_image(inputs: &ImageSpecInputs) -> Result<SpecTemplate, PlanError> {
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
        let ops = vec![Op::Mount {
            source: Some("tmpfs".into()),
            target: "/tmp".into(),
            fstype: Some("tmpfs".into()),
            flags: flags(libc::MS_NOSUID | libc::MS_NODEV),
            data: Some(format!("size={}m,mode=1777", inputs.tmp_mb)),
            kind: MountKind::Dir,
        }];
        Ok(SpecTemplate {
            plan: SpecPlan {
                ops,
                uid: inputs.uid,
                gid: inputs.gid,
                rlimits: vec![
                    [libc::RLIMIT_NOFILE as u64, NOFILE_LIMIT, NOFILE_LIMIT],
                    [libc::RLIMIT_CORE as u64, 0, 0],
                ],
                workdir: "/".to_owned(),
                seccomp_bpf: base64::engine::general_purpose::STANDARD.encode(bpf),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn host() -> HostLayout {
        HostLayout {
            lib_dirs: vec![PathBuf::from("/usr/lib/x86_64-linux-gnu")],
            ld_so_cache: Some(PathBuf::from("/etc/ld.so.cache")),
            root_symlinks: Vec::new(),
            proc_entries: BTreeMap::from([("kcore".to_string(), false), ("sys".to_string(), true)]),
        }
    }

    #[test]
    fn an_image_blank_binds_the_rootfs_and_nothing_of_the_host_but_python_and_dev() {
        let python = HostPython {
            executable: PathBuf::from("/usr/bin/python3"),
            base_prefix: PathBuf::from("/usr"),
            prefix: PathBuf::from("/usr"),
            version: "3.11.2".into(),
        };
        let host = host();
        let plan = blank_plan(
            &ImageBlankInputs {
                new_root: Path::new("/state/rootfs"),
                rootfs: Path::new("/state/functions/f/code/1/rootfs"),
                python: &python,
                cap_last_cap: 40,
                host: &host,
            },
            "e1",
            vec![],
        )
        .unwrap();
        assert_eq!(
            plan.root_bind.as_deref(),
            Some("/state/functions/f/code/1/rootfs")
        );
        let ops: Vec<serde_json::Value> = serde_json::from_str(plan.ops.get()).unwrap();
        let sources: Vec<&str> = ops
            .iter()
            .filter(|o| o["op"] == "mount")
            .filter_map(|o| o["source"].as_str())
            .filter(|s| s.starts_with('/'))
            .collect();
        assert_eq!(
            sources,
            [
                "/usr",
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/random",
                "/dev/urandom"
            ]
        );
        assert!(ops.iter().all(|o| o["op"] != "write" && o["op"] != "mkdir"));
    }

    #[test]
    fn an_image_specialisation_mounts_tmp_only_and_runs_unprivileged() {
        let t = SpecTemplate::for_image(&ImageSpecInputs {
            uid: 11000,
            gid: 11000,
            tmp_mb: 512,
            seccomp_bpf: &[0; 8],
        })
        .unwrap();
        assert_eq!(t.plan().ops.len(), 1);
        assert_eq!(t.plan().workdir, "/");
        assert!(SpecTemplate::for_image(&ImageSpecInputs {
            uid: 0,
            gid: 0,
            tmp_mb: 512,
            seccomp_bpf: &[0; 8],
        })
        .is_err());
    }
}
