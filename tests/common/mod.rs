//! The harness of the root integration tests: it starts the real `lambdalet
//! serve` binary with a private state dir, socket and cgroup parent, talks to
//! it over its socket, and cleans up whatever the run left behind.
//!
//! Every test binary includes this module and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::{Debug, Display};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

pub mod rust_function;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_lambdalet");
/// How long the supervisor may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM'd supervisor may take to stop before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a single response may take (the slowest test invoke is ~5 s).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique small number within this test process.
pub fn unique() -> u64 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

// ---- the privilege gate (bubblewrap's tests/libtest.sh habit) -------------

/// True if the test may go on. A test that needs root skips on a laptop, but
/// in CI (CI set) every test must run, so a missing root is a failure there.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test needs root and CI must run it");
    }
    eprintln!("skipping: needs root");
    false
}

// ---- soft assertions ------------------------------------------------------

/// Collects every failed check of a test so one run reports them all, then
/// fails the test at `finish` with the whole list.
pub struct Checks {
    what: String,
    failures: Vec<String>,
    passed: usize,
}

impl Checks {
    pub fn new(what: impl Into<String>) -> Checks {
        Checks {
            what: what.into(),
            failures: Vec::new(),
            passed: 0,
        }
    }

    pub fn check(&mut self, ok: bool, what: impl Display) -> bool {
        if ok {
            self.passed += 1;
        } else {
            self.failures.push(what.to_string());
        }
        ok
    }

    pub fn eq<T: PartialEq + Debug>(&mut self, what: impl Display, got: T, want: T) -> bool {
        let ok = got == want;
        self.check(ok, format_args!("{what}: got {got:?}, want {want:?}"))
    }

    pub fn fail(&mut self, what: impl Display) {
        self.failures.push(what.to_string());
    }

    pub fn finish(self) {
        if !self.failures.is_empty() {
            let mut msg = format!(
                "{}: {} check(s) failed ({} passed):\n",
                self.what,
                self.failures.len(),
                self.passed
            );
            for f in &self.failures {
                msg.push_str("  - ");
                msg.push_str(f);
                msg.push('\n');
            }
            panic!("{msg}");
        }
    }
}

// ---- the supervisor -------------------------------------------------------

/// A running `lambdalet serve` with its own state dir, socket and cgroup
/// parent. Dropping it stops the supervisor (SIGTERM, then SIGKILL), dumps its
/// stderr if the test is failing, and removes what it left in the cgroup tree.
pub struct Supervisor {
    /// Holds the state dir, the socket, stderr logs and function sources.
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// The `--cgroup-parent` argument: a name unique to this supervisor.
    pub cgroup_parent: String,
    child: Option<Child>,
    /// stderr of each run (one file per start).
    stderr_files: Vec<PathBuf>,
    extra_args: Vec<String>,
}

impl Supervisor {
    /// A supervisor without a pool of blank environments, so that every
    /// environment under its cgroup parent belongs to a function: the tests
    /// that count processes and cgroups rely on that. `start_with` takes the
    /// pool's size (`--prewarm`) like any other argument.
    pub fn start() -> Supervisor {
        Self::start_with(&["--prewarm", "0"])
    }

    /// Start with these `serve` arguments (e.g. `--keep-alive 1`).
    pub fn start_with(extra_args: &[&str]) -> Supervisor {
        let dir = tempfile::Builder::new()
            .prefix("lambdalet-test-")
            .tempdir()
            .expect("create a temp dir");
        let state_dir = dir.path().join("state");
        let socket = dir.path().join("lambdalet.sock");
        let cgroup_parent = format!("lambdalet-test-{}-{}", std::process::id(), unique());
        let mut sup = Supervisor {
            dir,
            state_dir,
            socket,
            cgroup_parent,
            child: None,
            stderr_files: Vec::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        sup.spawn();
        sup
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the supervisor is already running");
        let stderr_path = self
            .dir
            .path()
            .join(format!("serve-{}.stderr", self.stderr_files.len() + 1));
        let stderr = fs::File::create(&stderr_path).expect("create the stderr file");
        self.stderr_files.push(stderr_path);
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // A secret in the supervisor's environment that no function may see.
            .env("LAMBDALET_TEST_HOST_SECRET", "host-secret-value");
        let child = cmd.spawn().expect("start lambdalet serve");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "lambdalet serve exited with {status} before listening; stderr:\n{}",
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "lambdalet serve did not listen on {} within {START_TIMEOUT:?}; stderr:\n{}",
                    self.socket.display(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The supervisor's host PID.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// The supervisor's host PID, or None when it is not running (after
    /// `stop` or `kill9`).
    pub fn running_pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Everything every run wrote on stderr so far.
    pub fn stderr(&self) -> String {
        let mut out = String::new();
        for (i, path) in self.stderr_files.iter().enumerate() {
            out.push_str(&format!("--- serve run {} ---\n", i + 1));
            out.push_str(&fs::read_to_string(path).unwrap_or_default());
        }
        out
    }

    /// SIGKILL the supervisor and wait for it to die.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the supervisor and wait (bounded) for it to exit; SIGKILL after.
    /// Returns its exit status, or None if it had to be killed.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("lambdalet serve did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// Start the supervisor again on the same state dir, socket and cgroup parent.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// A fresh directory for a function's sources, with `files` written in it.
    /// Readable by everyone, like a user's checkout.
    pub fn write_code(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self
            .dir
            .path()
            .join("src")
            .join(format!("{name}-{}", unique()));
        fs::create_dir_all(&dir).unwrap();
        for (path, text) in files {
            let p = dir.join(path);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).unwrap();
            }
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        }
        dir
    }

    /// Where the registry keeps a function's code revisions.
    pub fn code_revisions_dir(&self, function: &str) -> PathBuf {
        self.state_dir.join("functions").join(function).join("code")
    }

    /// The directories of this supervisor's cgroup parent, one per hierarchy
    /// where it exists.
    pub fn cgroup_parent_dirs(&self) -> Vec<PathBuf> {
        find_cgroup_dirs(&self.cgroup_parent)
    }

    /// Every cgroup directory below the parent (the environments' cgroups),
    /// in every hierarchy.
    pub fn env_cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for parent in self.cgroup_parent_dirs() {
            collect_subdirs(&parent, &mut out);
        }
        out.sort();
        out
    }

    /// Host PIDs of the processes that descend from this supervisor (through
    /// the subreaper, environments' PID 1s are its children) and run as `uid`.
    pub fn processes_of_uid(&self, uid: u32) -> Vec<i32> {
        let Some(child) = self.child.as_ref() else {
            return Vec::new();
        };
        let sup = child.id() as i32;
        all_processes()
            .into_iter()
            .filter(|p| p.uid == Some(uid) && !p.zombie && descends_from(p.pid, sup))
            .map(|p| p.pid)
            .collect()
    }

    /// Host PIDs of every process in any cgroup below the parent.
    pub fn processes_in_cgroups(&self) -> BTreeSet<i32> {
        let mut pids = BTreeSet::new();
        for dir in self.env_cgroup_dirs() {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids
    }

    // ---- function helpers -------------------------------------------------

    /// Deploy a python3 function from `files` (written to a fresh source dir,
    /// sent as Code.Path). `extra` is merged into the CreateFunction params.
    pub fn create_python(
        &self,
        name: &str,
        files: &[(&str, &str)],
        handler: &str,
        extra: Value,
    ) -> Value {
        let code = self.write_code(name, files);
        let mut params = json!({
            "FunctionName": name,
            "Runtime": "python3",
            "Handler": handler,
            "Code": {"Path": code.to_str().unwrap()},
        });
        merge(&mut params, extra);
        match self.client().request("CreateFunction", params) {
            Ok(v) => v,
            Err((kind, msg)) => panic!(
                "CreateFunction {name} failed: {kind}: {msg}\nsupervisor stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Invoke synchronously; returns the InvokeResult (StatusCode,
    /// FunctionError, Payload, LogResult, RequestId). Panics on a wire error.
    pub fn invoke(&self, name: &str, payload: Value) -> Value {
        self.client().invoke(name, payload)
    }

    /// Invoke and return the payload, panicking if it was a function error.
    pub fn invoke_ok(&self, name: &str, payload: Value) -> Value {
        let r = self.invoke(name, payload);
        assert!(
            r.get("FunctionError").is_none(),
            "invoke of {name} failed with a function error: {r}\nsupervisor stderr:\n{}",
            self.stderr()
        );
        r["Payload"].clone()
    }

    pub fn request(&self, op: &str, params: Value) -> Result<Value, (String, String)> {
        self.client().request(op, params)
    }

    /// The function's log lines (GetLogs).
    pub fn logs(&self, name: &str) -> Vec<String> {
        let v = self
            .request("GetLogs", json!({"FunctionName": name}))
            .unwrap_or_else(|e| panic!("GetLogs {name}: {e:?}"));
        v["Lines"]
            .as_array()
            .expect("Lines is an array")
            .iter()
            .map(|l| l.as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        self.stop();
        if panicking {
            eprintln!(
                "==== lambdalet serve stderr ====\n{}==== end ====",
                self.stderr()
            );
        }
        // Whatever the supervisor left in its cgroup parent: kill the
        // processes it started there (by PID) and remove the directories.
        cleanup_cgroup_parent(&self.cgroup_parent);
    }
}

/// Merge the keys of `extra` (an object) into `base` (an object).
pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

// ---- the client -----------------------------------------------------------

/// One connection to the supervisor's socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT)).unwrap();
        let writer = stream.try_clone().unwrap();
        Client {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        }
    }

    /// Send raw bytes (a line needs its own '\n').
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to the socket");
        self.writer.flush().unwrap();
    }

    /// Send one request object as a line; returns its id.
    pub fn send(&mut self, op: &str, params: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        self.send_with_id(id.clone(), op, params);
        id
    }

    pub fn send_with_id(&mut self, id: Value, op: &str, params: Value) {
        let mut line = serde_json::to_vec(&json!({"id": id, "op": op, "params": params})).unwrap();
        line.push(b'\n');
        self.send_raw(&line);
    }

    /// Read one response line (panics on EOF or after the read timeout).
    pub fn recv_line(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read a response line: {e}"));
        assert!(n > 0, "the supervisor closed the connection");
        assert!(
            line.ends_with('\n'),
            "response line without a newline: {line:?}"
        );
        line.pop();
        line
    }

    pub fn recv(&mut self) -> Value {
        let line = self.recv_line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("response is not JSON ({e}): {line}"))
    }

    /// True if the supervisor closed the connection (EOF) within `wait`.
    pub fn is_closed_within(&mut self, wait: Duration) -> bool {
        self.reader.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 1];
        let closed = matches!(self.reader.read(&mut buf), Ok(0));
        self.reader
            .get_ref()
            .set_read_timeout(Some(RESPONSE_TIMEOUT))
            .unwrap();
        closed
    }

    /// One request, one response: the `result`, or `(error type, message)`.
    pub fn request(&mut self, op: &str, params: Value) -> Result<Value, (String, String)> {
        let id = self.send(op, params);
        let resp = self.recv();
        assert_eq!(
            resp["id"], id,
            "response id does not match the request: {resp}"
        );
        split_response(resp)
    }

    pub fn invoke(&mut self, name: &str, payload: Value) -> Value {
        self.invoke_with(name, payload, json!({}))
    }

    /// Invoke with extra Invoke params (LogType, ClientContext).
    pub fn invoke_with(&mut self, name: &str, payload: Value, extra: Value) -> Value {
        let mut params = json!({"FunctionName": name, "Payload": payload});
        merge(&mut params, extra);
        match self.request("Invoke", params) {
            Ok(v) => v,
            Err((kind, msg)) => panic!("Invoke {name} failed: {kind}: {msg}"),
        }
    }
}

/// `{"result": …}` → Ok, `{"error": {"type", "message"}}` → Err.
pub fn split_response(resp: Value) -> Result<Value, (String, String)> {
    if let Some(err) = resp.get("error") {
        return Err((
            err["type"].as_str().unwrap_or("<no type>").to_string(),
            err["message"]
                .as_str()
                .unwrap_or("<no message>")
                .to_string(),
        ));
    }
    match resp.get("result") {
        Some(r) => Ok(r.clone()),
        None => panic!("response has neither result nor error: {resp}"),
    }
}

/// Decode an InvokeResult's LogResult (base64) as text.
pub fn decode_log_result(result: &Value) -> String {
    let b64 = result["LogResult"]
        .as_str()
        .unwrap_or_else(|| panic!("no LogResult in {result}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_else(|e| panic!("LogResult is not base64 ({e}): {b64}"));
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---- host observations ----------------------------------------------------

/// One host process, from /proc/PID/status.
#[derive(Debug, Clone)]
pub struct HostProcess {
    pub pid: i32,
    pub ppid: i32,
    pub uid: Option<u32>,
    pub zombie: bool,
    pub name: String,
}

pub fn read_process(pid: i32) -> Option<HostProcess> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut p = HostProcess {
        pid,
        ppid: 0,
        uid: None,
        zombie: false,
        name: String::new(),
    };
    for line in text.lines() {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        match k {
            "Name" => p.name = v.to_string(),
            "State" => p.zombie = v.starts_with('Z') || v.starts_with('X'),
            "PPid" => p.ppid = v.parse().unwrap_or(0),
            "Uid" => p.uid = v.split_whitespace().next().and_then(|u| u.parse().ok()),
            _ => {}
        }
    }
    Some(p)
}

pub fn all_processes() -> Vec<HostProcess> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_process)
        .collect()
}

/// True if `pid` is `ancestor` or one of its descendants.
pub fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut cur = pid;
    for _ in 0..64 {
        if cur == ancestor {
            return true;
        }
        if cur <= 1 {
            return false;
        }
        match read_process(cur) {
            Some(p) => cur = p.ppid,
            None => return false,
        }
    }
    false
}

/// True if the process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    read_process(pid).is_some_and(|p| !p.zombie)
}

/// Wait (bounded) until none of `pids` is alive; returns the ones still alive.
pub fn wait_gone(pids: &[i32], wait: Duration) -> Vec<i32> {
    let deadline = Instant::now() + wait;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The supervisor's zygotes: its live children whose command line runs
/// the runtime's zygote and that share its PID namespace. Environments'
/// PID 1s are its children too (it is their subreaper) and, forked from a
/// zygote, have the same command line; only their PID namespace differs.
pub fn zygote_pids(sup_pid: i32) -> Vec<i32> {
    let pid_ns = |pid: i32| fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let sup_ns = pid_ns(sup_pid);
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == sup_pid && !p.zombie)
        .map(|p| p.pid)
        .filter(|&p| describe_pid(p).contains("zygote") && pid_ns(p) == sup_ns)
        .collect()
}

/// Lines of a mountinfo file that mention `needle`.
pub fn mounts_mentioning(mountinfo: &Path, needle: &str) -> Vec<String> {
    fs::read_to_string(mountinfo)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// A description of a process for failure messages.
pub fn describe_pid(pid: i32) -> String {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    format!("{pid} ({:?}: {cmdline})", read_process(pid))
}

// ---- cgroups --------------------------------------------------------------

/// Every directory named `name` in the cgroup hierarchies (v1 controllers
/// and the v2 unified tree), searched a few levels deep.
pub fn find_cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(CGROUP_ROOT) else {
        return out;
    };
    let mut seen = BTreeSet::new();
    for e in rd.flatten() {
        let path = e.path();
        // Co-mounted controllers are symlinks (cpu -> cpu,cpuacct): visit
        // each real hierarchy once.
        let real = fs::canonicalize(&path).unwrap_or(path.clone());
        if !real.is_dir() || !seen.insert(real.clone()) {
            continue;
        }
        find_named(&real, name, 0, &mut out);
    }
    out.sort();
    out
}

fn find_named(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 6 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let p = e.path();
        if e.file_name().to_str() == Some(name) {
            out.push(p);
        } else {
            find_named(&p, name, depth + 1, out);
        }
    }
}

fn collect_subdirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(e.path());
            collect_subdirs(&e.path(), out);
        }
    }
}

/// Kill every process left in the cgroups below `name` (by PID: they were
/// started by the test's supervisor) and remove the directories, deepest
/// first. Reports what it had to clean on stderr.
pub fn cleanup_cgroup_parent(name: &str) {
    for parent in find_cgroup_dirs(name) {
        let mut dirs = Vec::new();
        collect_subdirs(&parent, &mut dirs);
        dirs.push(parent.clone());
        // Deepest first.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in &dirs {
            for attempt in 0..50 {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                if pids.is_empty() {
                    break;
                }
                if attempt == 0 {
                    eprintln!("cleanup: killing {pids:?} left in {}", dir.display());
                }
                for p in pids {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Err(e) = fs::remove_dir(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("cleanup: cannot remove {}: {e}", dir.display());
                }
            }
        }
    }
}

// ---- the CLI --------------------------------------------------------------

/// The outcome of one CLI run.
#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Run `lambdalet --socket SOCKET ARGS...` with a bounded wait.
pub fn cli(socket: &Path, args: &[&str]) -> CliRun {
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the lambdalet CLI");
    CliRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---- control-plane latency -------------------------------------------------

/// Measures how long the supervisor takes to answer a cheap request
/// (ListFunctions) on its own connection, every 10 ms, while something else
/// happens: the supervisor's loop must never be blocked by a function.
pub struct LatencyProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<Duration>>>,
}

impl LatencyProbe {
    pub fn start(socket: &Path) -> LatencyProbe {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let mut client = Client::connect(socket);
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let t = Instant::now();
                let _ = client.request("ListFunctions", json!({}));
                samples.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        });
        LatencyProbe {
            stop,
            handle: Some(handle),
        }
    }

    /// Stop and return the slowest answer seen.
    pub fn stop(mut self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.handle.take().unwrap().join().unwrap_or_default();
        samples.into_iter().max().unwrap_or_default()
    }
}

/// A zip archive of `entries` (name, contents), base64-encoded.
pub fn zip_b64(entries: &[(&str, &str)]) -> String {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
        for (name, text) in entries {
            zip.start_file(*name, opts).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
    }
    base64::engine::general_purpose::STANDARD.encode(buf.into_inner())
}
