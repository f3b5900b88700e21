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

/// Rust functions built with the host's cargo, shared with the tests.
#[path = "../../tests/common/rust_function.rs"]
pub mod rust_function;

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
    /// may still be starting), with Lambda's default timeout.
    pub fn deploy(&self, name: &str, code: &Path, memory_mb: u32) -> Result<(), Error> {
        self.deploy_with_timeout(name, code, memory_mb, 3)
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

    /// A read that waits longer than `timeout` fails (None: waits forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.writer.set_read_timeout(timeout)
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

/// `Init Duration` and `Duration` of the REPORT line of `request_id` (Err if
/// it has no Init Duration: not a cold start).
pub fn report_durations(
    client: &mut Client,
    function: &str,
    request_id: &str,
) -> Result<(Duration, Duration), Error> {
    let logs = client.call(
        "GetLogs",
        serde_json::json!({"FunctionName": function, "Limit": 16}),
    )?;
    let lines = logs["Lines"].as_array().ok_or("GetLogs: no Lines")?;
    let report = lines
        .iter()
        .filter_map(|l| l.as_str())
        .find(|l| l.starts_with("REPORT") && l.contains(request_id))
        .ok_or_else(|| format!("no REPORT line for {request_id}"))?;
    let field = |name: &str| -> Result<Duration, Error> {
        let v = report
            .split('\t')
            .find_map(|f| f.trim().strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix(" ms"))
            .ok_or_else(|| format!("no {name} in {report:?}: not a cold start?"))?;
        Ok(Duration::from_secs_f64(v.trim().parse::<f64>()? / 1e3))
    };
    Ok((field("Init Duration:")?, field("Duration:")?))
}

/// One cold start of `function`, whose handler answers
/// `{"message": <message>, …}`: retire its warm environment
/// (UpdateFunctionConfiguration, not timed), let the kernel finish the
/// teardown (`settle`), time the Invoke from its first byte written to the
/// last byte read, and read its REPORT line. (client-observed, Init
/// Duration, Duration).
pub fn cold_invoke(
    client: &mut Client,
    function: &str,
    i: usize,
    settle: Duration,
    message: &str,
) -> Result<(Duration, Duration, Duration), Error> {
    client.call(
        "UpdateFunctionConfiguration",
        serde_json::json!({"FunctionName": function, "Description": format!("cold start {i}")}),
    )?;
    std::thread::sleep(settle);
    let line = format!(
        "{}\n",
        serde_json::json!({"id": i, "op": "Invoke", "params": {"FunctionName": function, "Payload": {}}})
    );
    let t = Instant::now();
    client.send(line.as_bytes())?;
    let answer = client.read_line()?;
    let took = t.elapsed();
    let v: Value = serde_json::from_slice(answer)?;
    let r = &v["result"];
    if r["Payload"]["message"] != message || r.get("FunctionError").is_some() {
        return Err(format!("unexpected invoke answer: {v}").into());
    }
    let request_id = r["RequestId"].as_str().ok_or("no RequestId")?.to_string();
    let (init, invoke) = report_durations(client, function, &request_id)?;
    Ok((took, init, invoke))
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

// ---- many invokes at once ----------------------------------------------------

/// One answer of a batch: when its request was written, when its answer was
/// read, and the response (`result` or `error`).
pub struct Answer {
    pub sent: Instant,
    pub received: Instant,
    pub response: Value,
}

impl Answer {
    pub fn latency(&self) -> Duration {
        self.received.saturating_duration_since(self.sent)
    }
}

/// Writes one Invoke of `function` per payload, spread round-robin over
/// `connections` connections (each connection's requests in one write, all
/// connections one after the other, before any answer is read), and reads
/// every answer as it comes, one reader thread per connection, so that each
/// answer is timed when it arrives. Answers come back in the order they
/// complete (docs/protocol.md § Pipelining): they are matched by id and
/// returned in the order of `payloads`. An answer not read within
/// `timeout` of the first write is an error (a hang fails the bench).
pub fn invoke_batch(
    socket: &Path,
    function: &str,
    payloads: &[Value],
    connections: usize,
    timeout: Duration,
) -> Result<Vec<Answer>, Error> {
    let connections = connections.clamp(1, payloads.len().max(1));
    let mut streams = Vec::with_capacity(connections);
    let mut batches = vec![Vec::new(); connections];
    let mut counts = vec![0usize; connections];
    for (i, p) in payloads.iter().enumerate() {
        let c = i % connections;
        let mut line = serde_json::to_vec(&serde_json::json!({
            "id": i, "op": "Invoke", "params": {"FunctionName": function, "Payload": p}
        }))?;
        line.push(b'\n');
        batches[c].extend_from_slice(&line);
        counts[c] += 1;
    }
    for _ in 0..connections {
        let s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(timeout))?;
        streams.push(s);
    }
    type Read = Result<Vec<(Instant, Value)>, String>;
    let mut readers: Vec<std::thread::JoinHandle<Read>> = Vec::with_capacity(connections);
    for (s, &n) in streams.iter().zip(&counts) {
        let mut r = BufReader::with_capacity(1 << 16, s.try_clone()?);
        readers.push(std::thread::spawn(move || -> Read {
            let mut got = Vec::with_capacity(n);
            let mut line = Vec::with_capacity(1024);
            while got.len() < n {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) => return Err("the supervisor closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(format!("after {} of {n} answers: {e}", got.len()));
                    }
                }
                let at = Instant::now();
                let v: Value = serde_json::from_slice(&line).map_err(|e| e.to_string())?;
                got.push((at, v));
            }
            Ok(got)
        }));
    }
    let mut sent = vec![Instant::now(); connections];
    for (c, s) in streams.iter_mut().enumerate() {
        sent[c] = Instant::now();
        s.write_all(&batches[c])?;
    }
    let mut answers: Vec<Option<Answer>> = (0..payloads.len()).map(|_| None).collect();
    for (c, h) in readers.into_iter().enumerate() {
        let got = h.join().map_err(|_| "reader thread panicked")??;
        for (received, response) in got {
            let id = response["id"]
                .as_u64()
                .filter(|&id| (id as usize) < answers.len())
                .ok_or_else(|| format!("an answer with an unexpected id: {response}"))?;
            answers[id as usize] = Some(Answer {
                sent: sent[c],
                received,
                response,
            });
        }
    }
    answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.ok_or_else(|| format!("no answer for request {i}").into()))
        .collect()
}

/// `Init Duration` of the REPORT lines of `function`'s newest invokes, by
/// request id (cold starts only carry one).
pub fn init_durations(
    client: &mut Client,
    function: &str,
    limit: usize,
) -> Result<std::collections::HashMap<String, Duration>, Error> {
    let logs = client.call(
        "GetLogs",
        serde_json::json!({"FunctionName": function, "Limit": limit}),
    )?;
    let lines = logs["Lines"].as_array().ok_or("GetLogs: no Lines")?;
    let mut out = std::collections::HashMap::new();
    for l in lines.iter().filter_map(|l| l.as_str()) {
        let Some(rest) = l.strip_prefix("REPORT RequestId: ") else {
            continue;
        };
        let mut fields = rest.split('\t');
        let id = fields.next().unwrap_or_default().trim().to_string();
        let init = fields.find_map(|f| {
            f.trim()
                .strip_prefix("Init Duration:")?
                .trim()
                .strip_suffix(" ms")?
                .trim()
                .parse::<f64>()
                .ok()
        });
        if let Some(ms) = init {
            out.insert(id, Duration::from_secs_f64(ms / 1e3));
        }
    }
    Ok(out)
}

// ---- the supervisor's processes and cgroups -----------------------------------

impl Supervisor {
    /// Deploys `code` as `name` with a memory size and a timeout, and invokes
    /// it until it answers (the zygote may still be starting).
    pub fn deploy_with_timeout(
        &self,
        name: &str,
        code: &Path,
        memory_mb: u32,
        timeout_s: u32,
    ) -> Result<(), Error> {
        self.deploy_runtime(name, "python3", "app.handler", code, memory_mb, timeout_s)
    }

    /// Deploys a custom runtime: `code` holds an executable `bootstrap`.
    pub fn deploy_provided(&self, name: &str, code: &Path, memory_mb: u32) -> Result<(), Error> {
        self.deploy_runtime(name, "provided.al2023", "hello", code, memory_mb, 3)
    }

    /// Deploys `code` with a runtime and handler, and invokes it until it
    /// answers.
    pub fn deploy_runtime(
        &self,
        name: &str,
        runtime: &str,
        handler: &str,
        code: &Path,
        memory_mb: u32,
        timeout_s: u32,
    ) -> Result<(), Error> {
        let mut c = self.client()?;
        c.call(
            "CreateFunction",
            serde_json::json!({
                "FunctionName": name,
                "Runtime": runtime,
                "Handler": handler,
                "Code": {"Path": code},
                "MemorySize": memory_mb,
                "Timeout": timeout_s,
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

    /// The environments' cgroups (blanks included): the directories below
    /// the bench's parent in the memory hierarchy (cgroup v1), else in the
    /// unified one.
    pub fn env_cgroups(&self) -> Vec<PathBuf> {
        for root in [
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/unified",
        ] {
            let dir = Path::new(root).join(&self.cgroup_parent);
            if !dir.join("cgroup.procs").is_file() {
                continue;
            }
            let mut envs: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.join("cgroup.procs").is_file())
                        .collect()
                })
                .unwrap_or_default();
            envs.sort();
            return envs;
        }
        Vec::new()
    }

    /// The python zygote: the supervisor's child that runs `zygote.py` and
    /// is in none of the environments' cgroups (environments are forked
    /// from it and reparented to the supervisor, so they look alike).
    pub fn zygote_pid(&self) -> Option<u32> {
        children_of(self.pid()).into_iter().find(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cgroups =
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains("zygote.py")
                && !cgroups.contains(&self.cgroup_parent)
        })
    }

    /// Lines of the supervisor's log other than the routine ones (start-up,
    /// functions created and deleted, shutdown): what a bench should show.
    pub fn unusual_log_lines(&self) -> Vec<String> {
        const ROUTINE: [&str; 7] = [
            "lambdalet: python ",
            "lambdalet: serving on ",
            "lambdalet: created function ",
            "lambdalet: deleted function ",
            "lambdalet: signal 15: shutting down",
            "lambdalet: stopped",
            "lambdalet: removed ",
        ];
        self.log_text()
            .lines()
            .filter(|l| !l.trim().is_empty() && !ROUTINE.iter().any(|r| l.starts_with(r)))
            .map(str::to_string)
            .collect()
    }
}

/// The pids in a cgroup (its `cgroup.procs`).
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A number (bytes) from a one-value cgroup file such as `memory.usage_in_bytes`.
pub fn cgroup_value(dir: &Path, file: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn proc_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// The fields of /proc/PID/stat after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    proc_pids()
        .filter(|&p| {
            stat_fields(p).is_some_and(|f| f.get(1).and_then(|pp| pp.parse().ok()) == Some(pid))
        })
        .collect()
}

/// Processes in a cgroup whose path has the component `name`, in any
/// hierarchy: what a bench's supervisor left behind if it is not empty.
pub fn processes_in_cgroups_named(name: &str) -> Vec<u32> {
    proc_pids()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/cgroup")).is_ok_and(|c| {
                c.lines()
                    .any(|l| l.split('/').any(|component| component == name))
            })
        })
        .collect()
}

/// CPU time of a process (user + system), and that of its children it has
/// waited for, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Option<(Duration, Duration)> {
    let f = stat_fields(pid)?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14-17 (utime, stime, cutime, cstime), at 11-14 here.
    let own = (tick(11) + tick(12)) as f64 / hz;
    let children = (tick(13) + tick(14)) as f64 / hz;
    Some((
        Duration::from_secs_f64(own),
        Duration::from_secs_f64(children),
    ))
}

/// The host's CPU time, busy and total over all CPUs, from /proc/stat
/// (busy: all but idle and iowait).
pub fn host_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (Duration::ZERO, Duration::ZERO);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // guest and guest_nice (9, 10) are already counted in user and nice.
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (
        Duration::from_secs_f64(total.saturating_sub(idle) as f64 / hz),
        Duration::from_secs_f64(total as f64 / hz),
    )
}

/// Waits (at most `max`) until the host's CPUs are idle but for `busy_frac`
/// over a 200 ms window: the kernel's deferred teardown of environments
/// (network namespaces, cgroups) and a refill of the pool are over. Returns
/// whether it got quiet (a shared host may never be).
pub fn wait_quiet(busy_frac: f64, max: Duration) -> bool {
    let deadline = Instant::now() + max;
    loop {
        let (b0, t0) = host_cpu();
        std::thread::sleep(Duration::from_millis(200));
        let (b1, t1) = host_cpu();
        let total = (t1 - t0).as_secs_f64();
        if total > 0.0 && (b1 - b0).as_secs_f64() / total <= busy_frac {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// A process's memory from /proc/PID/smaps_rollup, in KiB: RSS, PSS (shared
/// pages divided among the processes that map them) and USS (its private
/// pages, clean and dirty: what its exit gives back).
#[derive(Clone, Copy, Default, Debug)]
pub struct ProcMem {
    pub rss: u64,
    pub pss: u64,
    pub uss: u64,
}

impl ProcMem {
    pub fn of(pid: u32) -> Option<ProcMem> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        let mut m = ProcMem::default();
        for l in text.lines() {
            let Some((key, value)) = l.split_once(':') else {
                continue;
            };
            let kib = || {
                value
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            match key {
                "Rss" => m.rss = kib(),
                "Pss" => m.pss = kib(),
                "Private_Clean" | "Private_Dirty" => m.uss += kib(),
                _ => {}
            }
        }
        Some(m)
    }

    pub fn add(self, o: ProcMem) -> ProcMem {
        ProcMem {
            rss: self.rss + o.rss,
            pss: self.pss + o.pss,
            uss: self.uss + o.uss,
        }
    }
}

/// A field of /proc/meminfo (`MemAvailable`, …), in KiB.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process's resident set (`VmRSS` of /proc/PID/status), in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// KiB as MiB with two decimals.
pub fn mib(kib: u64) -> String {
    format!("{:.2}", kib as f64 / 1024.0)
}

/// Whether `lambdalet serve --help` lists `flag` (a flag the supervisor may
/// not have yet: pass it only if it does).
pub fn serve_has_flag(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(|c: char| c.is_whitespace() || c == ',')
                .any(|w| w == flag)
        })
}

// ---- peers: bubblewrap --------------------------------------------------------

/// `bwrap`, installing bubblewrap with apt-get if it is missing (None if that
/// fails: the bubblewrap peers are then skipped).
pub fn find_bwrap(bench: &str) -> Option<std::ffi::OsString> {
    let found = || {
        Command::new("sh")
            .args(["-c", "command -v bwrap"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().into())
    };
    if let Some(b) = found() {
        return Some(b);
    }
    eprintln!(
        "{bench}: bwrap is missing: `apt-get install -y bubblewrap` (the bubblewrap peer needs it)"
    );
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "bubblewrap"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("{bench}: could not install bubblewrap; the bubblewrap peers are skipped");
        return None;
    }
    found()
}

/// bubblewrap around the real python3 running `script` with `code` at
/// /var/task (its argv[1]), as tightly as it allows: every namespace, the
/// interpreter's prefix, /usr and the code dir read-only, its own /proc, a
/// minimal /dev, a private /tmp (the coldstart bench's bubblewrap peer).
pub fn bwrap_python_argv(
    bwrap: &std::ffi::OsStr,
    py: &Python,
    code: &Path,
    python_flags: &[&str],
    script: &str,
) -> Vec<std::ffi::OsString> {
    use std::ffi::OsString;
    let mut a: Vec<OsString> = vec![
        bwrap.into(),
        "--unshare-all".into(),
        "--die-with-parent".into(),
    ];
    let ro = |a: &mut Vec<OsString>, src: &Path, dst: &Path| {
        a.extend(["--ro-bind".into(), src.into(), dst.into()]);
    };
    ro(&mut a, &py.base_prefix, &py.base_prefix);
    ro(&mut a, Path::new("/usr"), Path::new("/usr"));
    // /lib, /lib64, /bin, /sbin: symlinks into /usr on a merged-/usr host,
    // directories elsewhere.
    for dir in ["/lib", "/lib64", "/lib32", "/bin", "/sbin"] {
        let p = Path::new(dir);
        match std::fs::read_link(p) {
            Ok(target) => a.extend(["--symlink".into(), target.into(), p.into()]),
            Err(_) if p.is_dir() => ro(&mut a, p, p),
            Err(_) => {}
        }
    }
    ro(&mut a, code, Path::new("/var/task"));
    for x in [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--chdir",
        "/var/task",
        "--",
    ] {
        a.push(x.into());
    }
    a.push(py.executable.clone().into());
    a.extend(python_flags.iter().map(OsString::from));
    a.extend(["-c".into(), script.into(), "/var/task".into()]);
    a
}

impl Supervisor {
    /// The last `n` lines of the supervisor's log (for error messages).
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// One line per process, for a bench that fails on processes that do not
/// go: pid, parent, state, where it sleeps in the kernel (wchan) and the top
/// of its kernel stack (root only), and its command.
pub fn describe_processes(pids: &[u32]) -> String {
    let mut out = String::new();
    for &pid in pids {
        let f = stat_fields(pid).unwrap_or_default();
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
        let top: Vec<&str> = stack
            .lines()
            .take(4)
            .map(|l| l.split_whitespace().nth(1).unwrap_or(l))
            .collect();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let _ = writeln!(
            out,
            "  pid {pid} ppid {} state {} wchan {wchan} stack [{}] {}",
            f.get(1).map_or("?", String::as_str),
            f.first().map_or("?", String::as_str),
            top.join(" < "),
            cmd.chars().take(80).collect::<String>()
        );
    }
    out
}

/// Markdown for unusual supervisor log lines: each kind of line (numbers and
/// ids blanked out) once, with how many times it came and one example.
pub fn log_summary(what: &str, lines: &[String]) -> String {
    if lines.is_empty() {
        return format!("{what}: nothing but start-up and shutdown.\n");
    }
    let mut kinds: Vec<(String, usize, &str)> = Vec::new();
    for l in lines {
        let kind = l
            .split(' ')
            .map(|w| {
                if w.chars().any(|c| c.is_ascii_digit()) {
                    "#"
                } else {
                    w
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some(k) => k.1 += 1,
            None => kinds.push((kind, 1, l)),
        }
    }
    let mut out = format!("{what}: {} unusual line(s):\n\n", lines.len());
    for (_, count, example) in kinds.iter().take(20) {
        let _ = writeln!(out, "- {count} × `{example}`");
    }
    out
}
