//! Facts about the host that the sandbox plan is built from, found once at
//! startup: the real Python interpreter, the CPU count, the highest capability
//! number, and which library directories, top-level symlinks and /proc entries
//! exist.
//!
//! Host roots (`/`, `/proc`) are parameters so that tests run against a
//! temporary directory.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use serde::Deserialize;

/// Prints what the plan needs to know about an interpreter, as JSON.
/// `sys.executable` is the real binary even when started through a pyenv shim,
/// which is the point: the shim (a shell script, ~90 ms, DESIGN.md) is paid
/// here once, never per environment.
const PYTHON_PROBE: &str = "import json, platform, sys; print(json.dumps({\
'executable': sys.executable, 'base_prefix': sys.base_prefix, \
'prefix': sys.prefix, 'version': platform.python_version()}))";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "run {python} to find the real interpreter: {source} (install python3 or pass its path)"
    )]
    RunPython { python: PathBuf, source: io::Error },
    #[error("{python} -I -c <probe> failed ({status}): {stderr}")]
    PythonFailed {
        python: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    #[error("parse the probe output of {python} ({output:?}): {source}")]
    ParsePythonOutput {
        python: PathBuf,
        output: String,
        source: serde_json::Error,
    },
    #[error("{python} reports sys.executable {executable:?}, which cannot be resolved: {source}")]
    ResolveExecutable {
        python: PathBuf,
        executable: PathBuf,
        source: io::Error,
    },
    #[error("{python} reports a relative {what} {path:?}: expected an absolute path")]
    RelativePythonPath {
        python: PathBuf,
        what: &'static str,
        path: PathBuf,
    },
    #[error("run {node} --version: {source} (install node or pass --node PATH)")]
    RunNode { node: PathBuf, source: io::Error },
    #[error("{node} --version failed or printed no version ({status}): {output:?}")]
    NodeVersion {
        node: PathBuf,
        status: ExitStatus,
        output: String,
    },
    #[error("read {path}: {source}")]
    ReadCapLastCap { path: PathBuf, source: io::Error },
    #[error("parse {path}: {content:?} is not a capability number")]
    ParseCapLastCap { path: PathBuf, content: String },
    #[error("list {path}: {source}")]
    ListProc { path: PathBuf, source: io::Error },
}

/// The host's real Python interpreter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HostPython {
    /// `sys.executable`, resolved with realpath(3): never a shim or symlink.
    pub executable: PathBuf,
    /// `sys.base_prefix`: the installation, mounted read-only at `/var/lang`.
    pub base_prefix: PathBuf,
    /// `sys.prefix`: differs from `base_prefix` in a virtual environment, which
    /// the sandbox does not mount (only `base_prefix` is).
    pub prefix: PathBuf,
    /// `platform.python_version()`, e.g. `3.11.7`.
    pub version: String,
}

impl HostPython {
    /// Runs `explicit` (or `python3` from `PATH`) once with `-I` (isolated:
    /// no PYTHON* variables, no user site) and asks it where it really is.
    pub fn discover(explicit: Option<&Path>) -> Result<HostPython, HostError> {
        let python = explicit.unwrap_or(Path::new("python3")).to_owned();
        let out = Command::new(&python)
            // -S: the probe needs no site-packages, and a site .pth file can
            // cost more than the interpreter itself (DESIGN.md).
            .args(["-I", "-S", "-c", PYTHON_PROBE])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| HostError::RunPython {
                python: python.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(HostError::PythonFailed {
                python,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let output = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // The probe's line is the last one (a sitecustomize could print before it).
        let line = output.lines().last().unwrap_or_default();
        let mut found: HostPython =
            serde_json::from_str(line).map_err(|source| HostError::ParsePythonOutput {
                python: python.clone(),
                output: output.clone(),
                source,
            })?;
        found.executable =
            fs::canonicalize(&found.executable).map_err(|source| HostError::ResolveExecutable {
                python: python.clone(),
                executable: found.executable.clone(),
                source,
            })?;
        for (what, path) in [
            ("sys.base_prefix", &found.base_prefix),
            ("sys.prefix", &found.prefix),
        ] {
            if !path.is_absolute() {
                return Err(HostError::RelativePythonPath {
                    python,
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(found)
    }
}

/// The host's Node.js, for the `nodejs` runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNode {
    /// The binary, resolved with realpath(3); bound read-only into node
    /// environments.
    pub executable: PathBuf,
    /// `node --version` without its `v`, e.g. `20.20.2`.
    pub version: String,
}

impl HostNode {
    /// The major version, e.g. `20` (for `AWS_EXECUTION_ENV` and
    /// `/opt/nodejs/node20/node_modules`).
    pub fn major(&self) -> &str {
        self.version.split('.').next().unwrap_or("")
    }

    /// Finds `explicit` (or `node` on `PATH`), resolves it and asks its
    /// version once. `Ok(None)` when no `node` is on `PATH` and none was
    /// named: the `nodejs` runtime is then unavailable, and said so when a
    /// function asks for it.
    pub fn discover(explicit: Option<&Path>) -> Result<Option<HostNode>, HostError> {
        let named = match explicit {
            Some(p) => p.to_owned(),
            None => match find_on_path("node") {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        let executable = fs::canonicalize(&named).map_err(|source| HostError::RunNode {
            node: named.clone(),
            source,
        })?;
        let out = Command::new(&executable)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| HostError::RunNode {
                node: executable.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let version = text.strip_prefix('v').unwrap_or(&text).to_owned();
        if !out.status.success() || !version.split('.').all(|p| p.parse::<u32>().is_ok()) {
            return Err(HostError::NodeVersion {
                node: executable,
                status: out.status,
                output: text,
            });
        }
        Ok(Some(HostNode {
            executable,
            version,
        }))
    }
}

/// The first executable `name` in `PATH`, as execvp(3) would find it.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The CPUs the supervisor (and so every environment) may run on:
/// sched_getaffinity(2), which honours taskset and cpusets, unlike the
/// number of CPUs in the machine. At least 1.
pub fn host_cpus() -> u32 {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => {
            let n = (0..CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count();
            u32::try_from(n).unwrap_or(u32::MAX).max(1)
        }
        Err(_) => std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
    }
}

/// The highest capability number the running kernel knows
/// (`/proc/sys/kernel/cap_last_cap`, capabilities(7)): the child drops
/// 0..=this from its bounding set, including capabilities newer than libc.
pub fn cap_last_cap(proc_root: &Path) -> Result<u32, HostError> {
    let path = proc_root.join("sys/kernel/cap_last_cap");
    let content = fs::read_to_string(&path).map_err(|source| HostError::ReadCapLastCap {
        path: path.clone(),
        source,
    })?;
    content
        .trim()
        .parse()
        .map_err(|_| HostError::ParseCapLastCap { path, content })
}

/// What of the host's filesystem the sandbox root exposes or masks, found once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLayout {
    /// Library directories the interpreter and its extension modules load from,
    /// as canonical absolute paths (bound read-only at the same path).
    pub lib_dirs: Vec<PathBuf>,
    /// Top-level symlinks to recreate, `(path, target)`, e.g. `("/lib", "usr/lib")`
    /// on merged-/usr hosts, so that paths like /lib64/ld-linux-x86-64.so.2 and
    /// the ones in ld.so.cache resolve.
    pub root_symlinks: Vec<(PathBuf, PathBuf)>,
    /// `/etc/ld.so.cache`, if the host has one (dlopen(3) reads it on every
    /// search, not only at startup).
    pub ld_so_cache: Option<PathBuf>,
    /// Non-numeric entries of the host's `/proc`, with whether each is a
    /// directory. The sandbox's own /proc is a new instance of the same kernel's
    /// procfs, so it has the same entries: masking decisions are taken here.
    pub proc_entries: BTreeMap<String, bool>,
}

impl HostLayout {
    /// Looks at `host_root` (normally `/`).
    pub fn discover(host_root: &Path) -> Result<HostLayout, HostError> {
        let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
        let candidates = [
            format!("usr/lib/{triple}"),
            "usr/lib64".to_owned(),
            format!("lib/{triple}"),
            "lib64".to_owned(),
        ];
        let canonical_root = fs::canonicalize(host_root).unwrap_or_else(|_| host_root.to_owned());
        let mut lib_dirs: Vec<PathBuf> = Vec::new();
        for candidate in &candidates {
            // realpath inside host_root: /lib/x86_64-linux-gnu on a merged-/usr
            // host is /usr/lib/x86_64-linux-gnu and is bound once.
            let Ok(real) = fs::canonicalize(host_root.join(candidate)) else {
                continue;
            };
            let Ok(rel) = real.strip_prefix(&canonical_root) else {
                continue;
            };
            if !real.is_dir() {
                continue;
            }
            let abs = Path::new("/").join(rel);
            if !lib_dirs.iter().any(|d| abs.starts_with(d)) {
                lib_dirs.push(abs);
            }
        }

        let mut root_symlinks = Vec::new();
        for name in ["lib", "lib64"] {
            let path = host_root.join(name);
            let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                if let Ok(target) = fs::read_link(&path) {
                    root_symlinks.push((Path::new("/").join(name), target));
                }
            }
        }

        let ld_so_cache = host_root
            .join("etc/ld.so.cache")
            .is_file()
            .then(|| PathBuf::from("/etc/ld.so.cache"));

        let proc = host_root.join("proc");
        let mut proc_entries = BTreeMap::new();
        let entries = fs::read_dir(&proc).map_err(|source| HostError::ListProc {
            path: proc.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.bytes().all(|b| b.is_ascii_digit()) {
                continue; // processes
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            proc_entries.insert(name, is_dir);
        }

        Ok(HostLayout {
            lib_dirs,
            root_symlinks,
            ld_so_cache,
            proc_entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_the_real_interpreter() {
        let Ok(python) = HostPython::discover(None) else {
            eprintln!("skipping discovers_the_real_interpreter: no python3 on PATH");
            return;
        };
        assert!(python.executable.is_absolute());
        assert_eq!(
            fs::canonicalize(&python.executable).unwrap(),
            python.executable
        );
        assert!(
            python.executable.starts_with(&python.base_prefix)
                || python.base_prefix == Path::new("/usr")
        );
        assert!(python.version.starts_with("3."), "{}", python.version);
        // Running the resolved binary again gives the same answer, without a shim.
        let again = HostPython::discover(Some(&python.executable)).unwrap();
        assert_eq!(again, python);
    }

    #[test]
    fn reports_a_missing_or_failing_interpreter() {
        assert!(matches!(
            HostPython::discover(Some(Path::new("/nonexistent/python3"))),
            Err(HostError::RunPython { .. })
        ));
        assert!(matches!(
            HostPython::discover(Some(Path::new("/bin/false"))),
            Err(HostError::PythonFailed { .. })
        ));
    }

    #[test]
    fn counts_cpus_and_capabilities() {
        assert!(host_cpus() >= 1);
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("sys/kernel")).unwrap();
        fs::write(tmp.path().join("sys/kernel/cap_last_cap"), "40\n").unwrap();
        assert_eq!(cap_last_cap(tmp.path()).unwrap(), 40);
        fs::write(tmp.path().join("sys/kernel/cap_last_cap"), "x\n").unwrap();
        assert!(matches!(
            cap_last_cap(tmp.path()),
            Err(HostError::ParseCapLastCap { .. })
        ));
        assert!(cap_last_cap(Path::new("/proc")).unwrap() >= 36);
    }

    #[test]
    fn layout_of_a_merged_usr_host() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
        fs::create_dir_all(root.join("usr/lib").join(&triple)).unwrap();
        fs::create_dir_all(root.join("usr/lib64")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib64", root.join("lib64")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/ld.so.cache"), "").unwrap();
        fs::create_dir_all(root.join("proc/sys")).unwrap();
        fs::create_dir_all(root.join("proc/1")).unwrap();
        fs::write(root.join("proc/keys"), "").unwrap();

        let layout = HostLayout::discover(root).unwrap();
        assert_eq!(
            layout.lib_dirs,
            vec![
                PathBuf::from(format!("/usr/lib/{triple}")),
                PathBuf::from("/usr/lib64")
            ]
        );
        assert_eq!(
            layout.root_symlinks,
            vec![
                (PathBuf::from("/lib"), PathBuf::from("usr/lib")),
                (PathBuf::from("/lib64"), PathBuf::from("usr/lib64"))
            ]
        );
        assert_eq!(layout.ld_so_cache, Some(PathBuf::from("/etc/ld.so.cache")));
        assert_eq!(
            layout.proc_entries,
            BTreeMap::from([("keys".to_owned(), false), ("sys".to_owned(), true)])
        );
    }

    #[test]
    fn layout_of_a_split_usr_host() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
        fs::create_dir_all(root.join("usr/lib").join(&triple)).unwrap();
        fs::create_dir_all(root.join("lib").join(&triple)).unwrap();
        fs::create_dir_all(root.join("lib64")).unwrap();
        fs::create_dir_all(root.join("proc")).unwrap();
        let layout = HostLayout::discover(root).unwrap();
        assert_eq!(
            layout.lib_dirs,
            vec![
                PathBuf::from(format!("/usr/lib/{triple}")),
                PathBuf::from(format!("/lib/{triple}")),
                PathBuf::from("/lib64"),
            ]
        );
        assert!(layout.root_symlinks.is_empty());
        assert_eq!(layout.ld_so_cache, None);
    }

    #[test]
    fn layout_of_this_host() {
        let layout = HostLayout::discover(Path::new("/")).unwrap();
        assert!(!layout.lib_dirs.is_empty());
        assert!(layout.proc_entries.get("sys") == Some(&true));
    }
}
