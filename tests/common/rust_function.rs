//! Rust functions for the `provided` runtime, built with the host's cargo:
//! an example cargo project (`examples/<name>`, whose binary is `bootstrap`)
//! is copied into `<target>/tmp/rust-functions/<name>` and built there, in
//! release mode. The build is cached between runs (cargo rebuilds only what
//! changed; the copy keeps the mtimes of unchanged files) and serialised
//! between processes by a lock file: nextest runs each test in a process of
//! its own, and a bench may build at the same time.
//!
//! Shared by the tests (tests/common) and the benches (benches/common, by
//! `#[path]`): it needs only std and nix.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one build may take. A cold build of `rust-hello` (download 42
/// crates, compile 68, release) took 2 min 28 s on the 2-vCPU development
/// host with other builds running; CI hosts may be slower still.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Where the builds live: the project's target dir, so `cargo clean` removes
/// them and nothing is written to the source tree.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("rust-functions")
}

/// The example project `examples/<name>`.
fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// Builds `examples/<name>` and returns the path of its `bootstrap` binary.
/// Err carries cargo's output (a build failure, or no registry to fetch the
/// crates from) or says what timed out.
pub fn build(name: &str) -> Result<PathBuf, String> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
    let lock_path = cache.join(format!("{name}.lock"));
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    // Held until the end of this function (dropping it unlocks): one process
    // copies and builds at a time; the others then find the build done.
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("flock {}: {e}", lock_path.display()))?;

    let project = cache.join(name);
    sync_tree(&example_dir(name), &project)
        .map_err(|e| format!("copy examples/{name} to {}: {e}", project.display()))?;
    let log_path = cache.join(format!("{name}.build.log"));
    let log = fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO"));
    // At the lowest CPU priority: the first build takes minutes of both CPUs
    // while other tests, some of them timing-sensitive, run beside it.
    // SAFETY: the closure runs between fork and exec and only calls nice(2),
    // a system call that is async-signal-safe and touches no memory of the
    // parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::nice(19);
            Ok(())
        });
    }
    let mut child = cmd
        .args(["build", "--release"])
        .arg("--manifest-path")
        .arg(project.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(project.join("target"))
        // The project's own build settings must not leak into this one (the
        // tests may run with CARGO_TARGET_DIR set for lambdalet).
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("run {}: {e}", env!("CARGO")))?;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if started.elapsed() > BUILD_TIMEOUT => {
                // Our own child, by its handle (its PID).
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "cargo build of examples/{name} took over {BUILD_TIMEOUT:?}; log:\n{}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "cargo build of examples/{name} failed ({status}):\n{output}"
        ));
    }
    let took = started.elapsed();
    if output.contains("Compiling") {
        eprintln!(
            "built examples/{name} in {:.1} s ({})",
            took.as_secs_f64(),
            log_path.display()
        );
    }
    let bin = project.join("target/release/bootstrap");
    if !bin.is_file() {
        return Err(format!("cargo built no {}:\n{output}", bin.display()));
    }
    Ok(bin)
}

/// Builds `examples/<name>`, or decides the caller should skip: Ok(None) when
/// the build failed outside CI (a laptop without a registry), Err in CI
/// (CI set), where every test must run.
pub fn build_or_skip(name: &str) -> Result<Option<PathBuf>, String> {
    match build(name) {
        Ok(bin) => Ok(Some(bin)),
        Err(why) if std::env::var_os("CI").is_some() => Err(why),
        Err(why) => {
            eprintln!("skipping: {why}");
            Ok(None)
        }
    }
}

/// Makes `dst` a copy of `src` (regular files and directories), rewriting
/// only the files whose content differs, so that cargo sees unchanged files
/// as unchanged. Files under `dst` that `src` lacks are left alone (cargo's
/// `target/` and `Cargo.lock` live there).
fn sync_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if entry.file_name() == "target" {
                continue;
            }
            sync_tree(&from, &to)?;
        } else if kind.is_file() {
            let content = fs::read(&from)?;
            if fs::read(&to).ok().as_deref() != Some(content.as_slice()) {
                fs::write(&to, content)?;
            }
        }
    }
    Ok(())
}
