//! What both benchmarks share: finding the release binary, a supervisor of
//! their own on a temporary state dir, a blocking socket client, the real
//! Python interpreter, percentiles and the results file.
//!
//! The benchmarks are plain programs (`harness = false`): they need root (the
//! supervisor does), start everything they measure themselves, and clean up
//! after themselves (the supervisor dies with them: PR_SET_PDEATHSIG).

#![allow(dead_code)] // each bench uses a different part of this module

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub type Error = Box<dyn std::error::Error>;

/// The crate's root, where `examples/` are.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An example function's code directory.
pub fn example(name: &str) -> PathBuf {
    manifest_dir().join("examples").join(name)
}

/// Exits with a clear message unless running as root: the supervisor makes
/// namespaces, mounts and cgroups.
pub fn require_root(bench: &str) {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "{bench}: this benchmark starts its own `lambdalet serve`, which needs root \
             (namespaces, mounts, cgroups). Run it as root, e.g. `sudo -E make bench` or \
             `sudo -E cargo bench --bench {bench}`."
        );
        std::process::exit(2);
    }
}

/// The cargo target directory: `$CARGO_TARGET_DIR`, else the one this bench
/// executable was built into (`<target>/release/deps/<bench>-<hash>`).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            manifest_dir().join(dir)
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| manifest_dir().join("target"))
}

/// The release `lambdalet` binary: `$LAMBDALET_BIN`, else the one cargo built
/// alongside this bench, else `<target>/release/lambdalet`, built first if it
/// is missing.
pub fn lambdalet_bin() -> Result<PathBuf, Error> {
    if let Some(bin) = std::env::var_os("LAMBDALET_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            return Err(format!("LAMBDALET_BIN={} is not a file", bin.display()).into());
        }
        return Ok(bin);
    }
    // Cargo builds the package's binaries for its benches and says where.
    if let Some(bin) = option_env!("CARGO_BIN_EXE_lambdalet") {
        if Path::new(bin).is_file() {
            return Ok(PathBuf::from(bin));
        }
    }
    let bin = target_dir().join("release").join("lambdalet");
    if !bin.is_file() {
        eprintln!(
            "lambdalet binary not found at {}: building it with `cargo build --release` \
             (set LAMBDALET_BIN to use another one)",
            bin.display()
        );
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--release", "--bin", "lambdalet"])
            .current_dir(manifest_dir())
            .env("CARGO_TARGET_DIR", target_dir())
            .status()?;
        if !status.success() || !bin.is_file() {
            return Err(format!(
                "`cargo build --release` failed ({status}); {} is still missing",
                bin.display()
            )
            .into());
        }
    }
    Ok(bin)
}

/// The real interpreter behind `python3` (never a pyenv shim: it adds ~90 ms
/// per start, DESIGN.md § Measured on this host) and its installation prefix.
pub struct Python {
    pub executable: PathBuf,
    pub base_prefix: PathBuf,
    pub version: String,
}

pub fn real_python() -> Result<Python, Error> {
    let out = Command::new("python3")
        .args(["-I", "-c", "import sys,platform;print(sys.executable);print(sys.base_prefix);print(platform.python_version())"])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!("python3 failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines();
    let (Some(exe), Some(prefix), Some(version)) = (lines.next(), lines.next(), lines.next())
    else {
        return Err(format!("unexpected output of python3: {text:?}").into());
    };
    Ok(Python {
        executable: std::fs::canonicalize(exe)?,
        base_prefix: std::fs::canonicalize(prefix)?,
        version: version.to_string(),
    })
}

/// Makes the process started by `cmd` get SIGTERM when the bench dies
/// (PR_SET_PDEATHSIG), so that a bench killed half-way leaves no process.
pub fn die_with_bench(cmd: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent; it is all this closure does between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

// ---- the supervisor under test ------------------------------------------------

/// A `lambdalet serve` of the bench's own: a temporary state dir and socket,
/// and environments' cgroups below `lambdalet-bench-<pid>-<n>` in each
/// hierarchy (one parent per supervisor: each removes what it finds below its
/// parent at startup).
pub struct Supervisor {
    child: Child,
    pub socket: PathBuf,
    pub cgroup_parent: String,
    log: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Supervisor {
    /// Starts `lambdalet serve` with `extra` arguments after the bench's own.
    pub fn start(bin: &Path, extra: &[&str]) -> Result<Supervisor, Error> {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        remove_stale_cgroups();
        let dir = tempfile::Builder::new()
            .prefix("lambdalet-bench-")
            .tempdir()?;
        let socket = dir.path().join("lambdalet.sock");
        let log = dir.path().join("supervisor.log");
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cgroup_parent = format!("lambdalet-bench-{}-{n}", std::process::id());
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(&socket)
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        // The supervisor goes when the bench goes, even on Ctrl-C.
        die_with_bench(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut sup = Supervisor {
            child,
            socket,
            cgroup_parent,
            log,
            dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = sup.child.try_wait()? {
                return Err(format!(
                    "`lambdalet serve` exited with {status}:\n{}",
                    sup.log_text()
                )
                .into());
            }
            if let Ok(mut c) = Client::connect(&sup.socket) {
                if c.call("ListFunctions", serde_json::json!({})).is_ok() {
                    return Ok(sup);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`lambdalet serve` did not answer within 60 s:\n{}",
                    sup.log_text()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Result<Client, Error> {
        Client::connect(&self.socket)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The supervisor's pid (to profile it or its zygote).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Deploys `code` as `name` and invokes it until it answers (the zygote
    /// may still be starting); returns the first answer.
    pub fn deploy(&self, name: &str, code: &Path, memory_mb: u32) -> Result<(), Error> {
        let mut c = self.client()?;
        c.call(
            "CreateFunction",
            serde_json::json!({
                "FunctionName": name,
                "Runtime": "python3",
                "Handler": "app.handler",
                "Code": {"Path": code},
                "MemorySize": memory_mb,
            }),
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match c.call(
                "Invoke",
                serde_json::json!({"FunctionName": name, "Payload": {}}),
            ) {
                Ok(r) if r.get("FunctionError").is_none() => return Ok(()),
                Ok(r) => return Err(format!("{name} failed: {r}\n{}", self.log_text()).into()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("{name} never answered: {e}\n{}", self.log_text()).into())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// The cgroup hierarchies a bench's parent may be in (v1 and v2).
const CGROUP_ROOTS: [&str; 5] = [
    "/sys/fs/cgroup",
    "/sys/fs/cgroup/memory",
    "/sys/fs/cgroup/cpu",
    "/sys/fs/cgroup/pids",
    "/sys/fs/cgroup/unified",
];

/// Removes `dir` (a cgroup) and the empty cgroups below it.
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.flatten() {
            if c.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = remove_cgroup_tree(&c.path());
            }
        }
    }
    std::fs::remove_dir(dir)
}

/// `lambdalet-bench-<pid>-<n>` cgroups of bench runs that were killed (their
/// pid is gone): a killed bench cannot clean up after itself.
fn remove_stale_cgroups() {
    for root in CGROUP_ROOTS {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("lambdalet-bench-"))
            else {
                continue;
            };
            let pid = pid.split('-').next().unwrap_or_default();
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = remove_cgroup_tree(&e.path());
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // SIGTERM: the supervisor ends its environments and its zygote.
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            eprintln!("lambdalet serve did not stop on SIGTERM within 10 s: killing it");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The parent cgroups the supervisor made for us (its environments'
        // own are gone with them).
        for root in CGROUP_ROOTS {
            let dir = Path::new(root).join(&self.cgroup_parent);
            if dir.is_dir() {
                if let Err(e) = remove_cgroup_tree(&dir) {
                    eprintln!("cannot remove the bench's cgroup {}: {e}", dir.display());
                }
            }
        }
        if std::env::var_os("LAMBDALET_BENCH_KEEP").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("state dir kept at {}", d.keep().display());
            }
        }
    }
}

// ---- a blocking client ----------------------------------------------------------

/// One connection to the supervisor, line-delimited JSON (docs/protocol.md).
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
    line: Vec<u8>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, Error> {
        let stream = UnixStream::connect(path)?;
        Ok(Client {
            reader: BufReader::with_capacity(1 << 16, stream.try_clone()?),
            writer: stream,
            next_id: 1,
            line: Vec::with_capacity(1 << 16),
        })
    }

    /// One request, one response; the `result`, or the `error` as an Err.
    pub fn call(&mut self, op: &str, params: Value) -> Result<Value, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line =
            serde_json::to_vec(&serde_json::json!({"id": id, "op": op, "params": params}))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let text = self.read_line()?;
        let mut v: Value = serde_json::from_slice(text)?;
        if v["id"] != id {
            return Err(format!("response for id {} while waiting for {id}", v["id"]).into());
        }
        if let Some(e) = v.get("error") {
            return Err(format!("{op}: {e}").into());
        }
        Ok(v["result"].take())
    }

    /// Writes pre-formatted request bytes (one or more whole lines).
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// The next response line, without its `\n`.
    pub fn read_line(&mut self) -> Result<&[u8], Error> {
        self.line.clear();
        let n = self.reader.read_until(b'\n', &mut self.line)?;
        if n == 0 || self.line.last() != Some(&b'\n') {
            return Err("the supervisor closed the connection".into());
        }
        self.line.pop();
        Ok(&self.line)
    }
}

// ---- numbers --------------------------------------------------------------------

/// Latency samples and their order statistics (nearest rank).
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    pub fn new(mut v: Vec<Duration>) -> Samples {
        v.sort();
        Samples { sorted: v }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The p-th percentile, nearest-rank: the smallest sample with at least
    /// p % of the samples at or below it.
    pub fn pct(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }

    pub fn min(&self) -> Duration {
        self.sorted.first().copied().unwrap_or_default()
    }

    pub fn mean(&self) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        self.sorted.iter().sum::<Duration>() / self.sorted.len() as u32
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

pub fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "–".into();
    }
    format!("{:.1}×", a.as_secs_f64() / b.as_secs_f64())
}

/// `/proc/loadavg`'s three averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The machine, for the results' header: CPU model, CPUs, kernel, date.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{} · {cpus} CPUs · Linux {} · {}",
        model,
        command_line("uname", &["-r"]),
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    )
}

/// Writes `<target>/bench-results/<name>.md` and says where.
pub fn write_results(name: &str, markdown: &str) {
    let dir = target_dir().join("bench-results");
    let path = dir.join(format!("{name}.md"));
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, markdown)) {
        Ok(()) => eprintln!("results written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

/// A markdown table from a header and rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}|",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { " --- " } else { " ---: " })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}

/// An environment variable as a number, or the default.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
