//! Root integration tests: every way an environment ends leaves nothing of it
//! on the host (issue 3, item 4). Keep-alive reclaim, a code or
//! configuration update, DeleteFunction, the zygote's death, SIGTERM and a
//! `kill -9` followed by a restart are each driven through the real
//! `lambdalet serve`; one helper ([`Footprint`], [`Baseline`],
//! [`leftovers`]) looks at everything an environment can own on the host.
//!
//! What an environment owns, and how each is seen from outside:
//!
//! * processes: every pid in its cgroups and every process of the
//!   function's uid below the supervisor, each with its start time so a
//!   recycled pid is not mistaken for a survivor;
//! * namespaces: the mount, network, PID, IPC, UTS and cgroup namespaces
//!   of those processes that are not the host's. A namespace lives as long
//!   as a process, an open descriptor or an nsfs bind mount holds it
//!   (namespaces(7)), so all three are searched host-wide;
//! * cgroups: its directory in every hierarchy below the supervisor's
//!   parent;
//! * mounts: none may mention the state dir in the host's or the
//!   supervisor's mount table (an environment's mounts live in its own
//!   mount namespace), and the host's view of `state/rootfs` stays empty;
//! * files: no code revision but a live function's current one, no
//!   directory of a deleted function, nothing new at the state dir's top;
//! * the supervisor's descriptors (sockets, pipes, pidfds, cgroup files):
//!   back to what it held before the environments came.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{require_root, Checks, Supervisor};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Writes a file into its private /tmp at init, sleeps or leaves a detached
/// grandchild behind when asked, and reports its token, uid and /tmp.
const APP: &str = r#"
import os, time, uuid

TOKEN = uuid.uuid4().hex
MARK = "/tmp/teardown-mark-" + TOKEN
with open(MARK, "w") as f:
    f.write("written at init\n")

def handler(event, context):
    mode = event.get("mode")
    if mode == "sleep":
        time.sleep(event["seconds"])
    if mode == "spawn":
        # A detached grandchild that would outlive a careless teardown.
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(300)
                os._exit(0)
            os._exit(0)
        os.waitpid(pid, 0)
    return {"token": TOKEN, "uid": os.getuid(), "mark": MARK, "v": 1,
            "tmp": sorted(os.listdir("/tmp")), "color": os.environ.get("COLOR")}
"#;

/// The namespace kinds an environment unshares (docs/architecture.md, step 1).
const NS_KINDS: [&str; 6] = ["mnt", "net", "pid", "ipc", "uts", "cgroup"];
/// How long an ending that is not promised to be synchronous (keep-alive,
/// update) may take to finish in the background.
const SETTLE: Duration = Duration::from_secs(3);
/// How long the zygote may take to come back after it died.
const ZYGOTE_RESTART: Duration = Duration::from_secs(5);

fn app(version: u32) -> String {
    APP.replace("\"v\": 1", &format!("\"v\": {version}"))
}

// ---- what environments own ---------------------------------------------------

/// Everything a set of environments owned at one moment, taken while they
/// ran. [`leftovers`] then looks for any of it afterwards.
#[derive(Default, Debug)]
struct Footprint {
    /// pid → its start time (/proc/PID/stat field 22), so a recycled pid is
    /// not taken for a survivor.
    procs: BTreeMap<i32, u64>,
    /// Namespaces of those processes that are not the host's, as
    /// /proc/PID/ns/* names them (`mnt:[4026532301]`), each with when it
    /// was last seen held, in the unit of start times (clock ticks since
    /// boot). The kernel gives a freed namespace's inode number to the
    /// next namespace made (another test's environment, say): a process
    /// that started after that moment cannot hold the namespace seen then,
    /// unless it was forked inside the environment.
    namespaces: BTreeMap<String, u64>,
    cgroups: BTreeSet<PathBuf>,
}

impl Footprint {
    /// What the supervisor's environments own now: the processes in its
    /// cgroups and those of `uids` below it.
    fn take(sup: &Supervisor, uids: &[u32]) -> Footprint {
        let mut pids: BTreeSet<i32> = sup.processes_in_cgroups();
        if sup.running_pid().is_some() {
            // Functions never run as root; uid 0 would be the supervisor.
            for &uid in uids.iter().filter(|&&u| u != 0) {
                pids.extend(sup.processes_of_uid(uid));
            }
        }
        let host = host_namespaces();
        let now = now_ticks();
        let mut fp = Footprint::default();
        for pid in pids {
            let Some(start) = start_time(pid) else {
                continue;
            };
            fp.procs.insert(pid, start);
            for ns in namespaces_of(pid) {
                if !host.contains(&ns) {
                    fp.namespaces.insert(ns, now);
                }
            }
        }
        fp.cgroups = sup.env_cgroup_dirs().into_iter().collect();
        fp
    }

    fn add(&mut self, other: Footprint) {
        self.procs.extend(other.procs);
        for (ns, seen) in other.namespaces {
            let last = self.namespaces.entry(ns).or_default();
            *last = (*last).max(seen);
        }
        self.cgroups.extend(other.cgroups);
    }

    /// The part of `self` that is not in `other`.
    fn minus(&self, other: &Footprint) -> Footprint {
        Footprint {
            procs: self
                .procs
                .iter()
                .filter(|(p, _)| !other.procs.contains_key(p))
                .map(|(&p, &s)| (p, s))
                .collect(),
            namespaces: self
                .namespaces
                .iter()
                .filter(|(ns, _)| !other.namespaces.contains_key(*ns))
                .map(|(ns, &seen)| (ns.clone(), seen))
                .collect(),
            cgroups: self.cgroups.difference(&other.cgroups).cloned().collect(),
        }
    }

    /// Environments have namespaces of every kind they unshare.
    fn namespace_kinds(&self) -> BTreeSet<&str> {
        self.namespaces
            .keys()
            .filter_map(|n| n.split(':').next())
            .collect()
    }
}

/// What the supervisor holds, and what its state dir has, when no
/// environment of the test runs yet (blanks of the pool aside).
#[derive(Debug)]
struct Baseline {
    /// The supervisor's descriptors by kind (see [`fd_kind`]).
    fds: BTreeMap<String, usize>,
    /// Entries at the top of the state dir and below `runtime/`.
    state: BTreeSet<PathBuf>,
}

impl Baseline {
    fn take(sup: &Supervisor) -> Baseline {
        Baseline {
            fds: sup_fds(sup),
            state: state_skeleton(&sup.state_dir),
        }
    }
}

/// The namespaces of this test process, which are the host's.
fn host_namespaces() -> BTreeSet<String> {
    namespaces_of(std::process::id() as i32)
}

fn namespaces_of(pid: i32) -> BTreeSet<String> {
    NS_KINDS
        .iter()
        .filter_map(|kind| fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect()
}

/// Field 22 of /proc/PID/stat (starttime), read past the command name,
/// which may contain spaces and parentheses.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // rest starts at field 3 (state): starttime is the 20th from there.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Clock ticks since boot, the unit of /proc/PID/stat's starttime.
fn now_ticks() -> u64 {
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    (uptime * hz as f64) as u64
}

fn proc_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The kind of what a descriptor refers to: `socket`, `pipe`,
/// `anon_inode:[pidfd]`, `cgroup:memory.oom_control`, or the path.
fn fd_kind(target: &str) -> String {
    if let Some(rest) = target.strip_prefix("/sys/fs/cgroup/") {
        let file = rest.rsplit('/').next().unwrap_or(rest);
        return format!("cgroup:{file}");
    }
    match target.split_once(":[") {
        Some((kind, _)) if kind != "anon_inode" => kind.to_string(),
        _ => target.to_string(),
    }
}

/// The supervisor's descriptors by kind; its open log files (a bounded
/// cache kept by the log store) are left out.
fn sup_fds(sup: &Supervisor) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Some(pid) = sup.running_pid() else {
        return out;
    };
    let logs = sup.state_dir.join("logs");
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in rd.flatten() {
        // 0-2 are the supervisor's stdio, the test's files.
        let fd: u32 = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if fd <= 2 {
            continue;
        }
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        if target.starts_with(&logs) {
            continue;
        }
        *out.entry(fd_kind(&target.to_string_lossy())).or_default() += 1;
    }
    out
}

/// The state dir's top-level entries and the runtime files: nothing of an
/// environment belongs there.
fn state_skeleton(state: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for dir in [state.to_path_buf(), state.join("runtime")] {
        if let Ok(rd) = fs::read_dir(&dir) {
            out.extend(rd.flatten().map(|e| e.path()));
        }
    }
    if let Ok(rd) = fs::read_dir(state.join("runtime/python")) {
        out.extend(rd.flatten().map(|e| e.path()));
    }
    out
}

// ---- what is left --------------------------------------------------------------

/// Everything of `fp` still on the host, and everything the state dir
/// holds beyond `base` and the current code of `live` functions.
fn env_leftovers(sup: &Supervisor, base: &Baseline, fp: &Footprint, live: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let sup_pid = sup.running_pid();

    // Processes: alive with the same start time, or a zombie the
    // supervisor has not reaped.
    for (&pid, &start) in &fp.procs {
        if start_time(pid) != Some(start) {
            continue;
        }
        match common::read_process(pid) {
            Some(p) if !p.zombie => out.push(format!("process {}", common::describe_pid(pid))),
            Some(p) if Some(p.ppid) == sup_pid => {
                out.push(format!("zombie the supervisor did not reap: {p:?}"))
            }
            _ => {}
        }
    }

    // Namespaces: held by a process, a descriptor or an nsfs mount. A
    // zombie holds none (it keeps only its pid). A process that started
    // after a namespace was last seen holds another namespace that reused
    // its inode number, unless it is in one of our cgroups.
    if !fp.namespaces.is_empty() {
        for pid in proc_pids() {
            if common::read_process(pid).is_none_or(|p| p.zombie) {
                continue;
            }
            let started = start_time(pid).unwrap_or(u64::MAX);
            let ours = fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&sup.cgroup_parent));
            let could_hold = |ns: &str| {
                fp.namespaces
                    .get(ns)
                    .is_some_and(|&seen| ours || started <= seen)
            };
            for ns in namespaces_of(pid) {
                if could_hold(&ns) {
                    out.push(format!(
                        "{ns} is still the namespace of {}",
                        common::describe_pid(pid)
                    ));
                }
            }
            let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(target) = fs::read_link(e.path()) else {
                    continue;
                };
                let target = target.to_string_lossy();
                if could_hold(&target) {
                    out.push(format!(
                        "{target} is held open by fd {} of {}",
                        e.file_name().to_string_lossy(),
                        common::describe_pid(pid)
                    ));
                }
            }
        }
    }

    // Mounts: none may mention the state dir (environments mount in their
    // own namespaces) or bind an environment's namespace.
    let state = sup.state_dir.display().to_string();
    let mut infos = vec![PathBuf::from("/proc/self/mountinfo")];
    if let Some(pid) = sup_pid {
        infos.push(PathBuf::from(format!("/proc/{pid}/mountinfo")));
    }
    for info in &infos {
        for line in fs::read_to_string(info).unwrap_or_default().lines() {
            if line.contains(&state) || fp.namespaces.keys().any(|n| line.contains(n.as_str())) {
                out.push(format!("mount in {}: {line}", info.display()));
            }
        }
    }

    // cgroups.
    for dir in &fp.cgroups {
        if dir.exists() {
            out.push(format!("cgroup {}", dir.display()));
        }
    }

    // The state dir.
    out.extend(state_leftovers(sup, base, live));
    out
}

/// The supervisor's descriptors of each kind beyond `base` (none when it is
/// not running).
fn fd_leftovers(sup: &Supervisor, base: &Baseline) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, n) in sup_fds(sup) {
        let before = base.fds.get(&kind).copied().unwrap_or(0);
        if n > before {
            out.push(format!(
                "the supervisor holds {n} fd(s) of kind {kind}, {before} before"
            ));
        }
    }
    out
}

/// Files of the state dir an environment or an old code revision left.
fn state_leftovers(sup: &Supervisor, base: &Baseline, live: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let state = &sup.state_dir;
    // Every environment mounts its root tmpfs on rootfs in its own mount
    // namespace: on the host it stays an empty directory.
    if let Ok(rd) = fs::read_dir(state.join("rootfs")) {
        for e in rd.flatten() {
            out.push(format!("{} on the host", e.path().display()));
        }
    }
    for path in state_skeleton(state) {
        if !base.state.contains(&path) {
            out.push(format!("new in the state dir: {}", path.display()));
        }
    }
    if let Ok(rd) = fs::read_dir(state.join("functions")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name.as_str()) {
                out.push(format!(
                    "a deleted function's directory: {}",
                    e.path().display()
                ));
                continue;
            }
            let revisions: Vec<String> = fs::read_dir(e.path().join("code"))
                .map(|rd| {
                    rd.flatten()
                        .map(|r| r.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if revisions.len() != 1 {
                out.push(format!(
                    "{name} has code revisions {revisions:?}, only its current one may remain"
                ));
            }
            if let Ok(rd) = fs::read_dir(e.path()) {
                for f in rd.flatten() {
                    let n = f.file_name().to_string_lossy().into_owned();
                    if n != "code" && n != "function.json" {
                        out.push(format!("in {name}'s directory: {}", f.path().display()));
                    }
                }
            }
        }
    }
    out
}

/// Everything of `fp` on the host and beyond `base` in the supervisor and
/// its state dir ([`env_leftovers`] and [`fd_leftovers`]). Empty when the
/// environments ended completely.
fn leftovers(sup: &Supervisor, base: &Baseline, fp: &Footprint, live: &[&str]) -> Vec<String> {
    let mut out = env_leftovers(sup, base, fp, live);
    out.extend(fd_leftovers(sup, base));
    out
}

/// [`leftovers`] polled until empty or `within` passed; the last answer.
fn leftovers_within(
    within: Duration,
    sup: &Supervisor,
    base: &Baseline,
    fp: &Footprint,
    live: &[&str],
) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = leftovers(sup, base, fp, live);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that `fp` is a real environment's footprint (so that "nothing
/// left" is not vacuous): processes, its own namespaces of every kind, and
/// cgroups in every hierarchy.
fn check_footprint(c: &mut Checks, sup: &Supervisor, what: &str, fp: &Footprint, min_procs: usize) {
    c.check(
        fp.procs.len() >= min_procs,
        format_args!(
            "{what}: at least {min_procs} process(es) seen: {:?}",
            fp.procs.keys()
        ),
    );
    let kinds = fp.namespace_kinds();
    c.check(
        NS_KINDS.iter().all(|k| kinds.contains(k)),
        format_args!("{what}: namespaces of every kind seen: {kinds:?}"),
    );
    let parents = sup.cgroup_parent_dirs();
    c.check(
        !parents.is_empty()
            && parents
                .iter()
                .all(|p| fp.cgroups.iter().any(|d| d.starts_with(p))),
        format_args!("{what}: cgroups in every hierarchy seen: {:?}", fp.cgroups),
    );
}

// ---- driving the supervisor ------------------------------------------------------

/// Wait (bounded) until `cond` holds; whether it did.
fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until exactly `n` processes are in the supervisor's cgroups and
/// stay so for 300 ms (a blank's short-lived parent A is in its cgroup
/// while it is made, and a blank says `blank` only after its set-up).
fn wait_for_settled_envs(sup: &Supervisor, n: usize) -> bool {
    let mut stable_since: Option<Instant> = None;
    wait_until(Duration::from_secs(20), || {
        if sup.processes_in_cgroups().len() == n {
            let since = *stable_since.get_or_insert_with(Instant::now);
            since.elapsed() >= Duration::from_millis(300)
        } else {
            stable_since = None;
            false
        }
    })
}

/// Wait until the number of processes in the supervisor's cgroups has not
/// changed for 500 ms; that number.
fn wait_for_stable_envs(sup: &Supervisor) -> usize {
    let mut last = usize::MAX;
    let mut since = Instant::now();
    wait_until(Duration::from_secs(20), || {
        let n = sup.processes_in_cgroups().len();
        if n != last {
            last = n;
            since = Instant::now();
        }
        since.elapsed() >= Duration::from_millis(500)
    });
    last
}

/// Add the processes `pids` to `fp` with their start times.
fn add_procs(fp: &mut Footprint, pids: &[i32]) {
    for &p in pids {
        if let Some(s) = start_time(p) {
            fp.procs.insert(p, s);
        }
    }
}

/// An Invoke sent on its own connection from a thread: the response, or
/// `None` if the supervisor closed the connection without one.
fn invoke_in_background(sup: &Supervisor, name: &str, payload: Value) -> JoinHandle<Option<Value>> {
    let socket = sup.socket.clone();
    let line =
        json!({"id": 1, "op": "Invoke", "params": {"FunctionName": name, "Payload": payload}});
    std::thread::spawn(move || {
        let mut stream = UnixStream::connect(&socket).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(90)))
            .ok()?;
        stream.write_all(format!("{line}\n").as_bytes()).ok()?;
        let mut response = String::new();
        BufReader::new(stream).read_line(&mut response).ok()?;
        serde_json::from_str(&response).ok()
    })
}

fn function_uid(result: &Value) -> u32 {
    result["uid"].as_u64().unwrap_or(0) as u32
}

// ---- the ending paths ----------------------------------------------------------

#[test]
fn keep_alive_reclaim_leaves_nothing() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start_with(&["--keep-alive", "1", "--prewarm", "0"]);
    let mut c = Checks::new("keep-alive reclaim");
    sup.create_python("brief", &[("app.py", APP)], "app.handler", json!({}));
    let base = Baseline::take(&sup);
    // Two environments (one with a detached grandchild), so more than one
    // is reclaimed by the same housekeeping pass: the second is made while
    // the first is busy.
    let spawned = sup.invoke_ok("brief", json!({"mode": "spawn"}));
    let busy = invoke_in_background(&sup, "brief", json!({"mode": "sleep", "seconds": 0.5}));
    std::thread::sleep(Duration::from_millis(200));
    let other = sup.invoke_ok("brief", json!({}));
    let slept = busy.join().unwrap_or_default().unwrap_or_default();
    let uid = function_uid(&spawned);
    let fp = Footprint::take(&sup, &[uid]);
    check_footprint(&mut c, &sup, "two environments", &fp, 3);
    c.check(
        slept["result"]["Payload"]["token"] == spawned["token"]
            && other["token"] != spawned["token"],
        format_args!("two environments served: {slept} / {other}"),
    );
    // The mark is a path in the environment's own /tmp; the same path on
    // the host must not exist.
    let host_mark = PathBuf::from(spawned["mark"].as_str().unwrap_or("/tmp/none"));

    // Keep-alive 1 s and housekeeping every 1 s: gone within about 2 s.
    let reclaimed = wait_until(Duration::from_secs(5), || sup.env_cgroup_dirs().is_empty());
    c.check(reclaimed, "the idle environments are reclaimed within 5 s");
    let left = leftovers_within(SETTLE, &sup, &base, &fp, &["brief"]);
    c.check(
        left.is_empty(),
        format_args!("left after the keep-alive reclaim: {left:#?}"),
    );
    c.check(
        !host_mark.exists(),
        format_args!(
            "the function's /tmp file never reached the host: {}",
            host_mark.display()
        ),
    );
    let again = sup.invoke_ok("brief", json!({}));
    c.check(
        again["token"] != spawned["token"] && again["token"] != other["token"],
        "the next invoke is a cold start",
    );
    c.eq(
        "the new environment's /tmp holds only its own file",
        again["tmp"].as_array().map(Vec::len),
        Some(1),
    );
    c.finish();
}

/// An update ends the idle environment at once and the busy one after its
/// invoke; nothing of either, nor the old code revision, is left.
fn update_leaves_nothing(
    what: &str,
    update: impl FnOnce(&Supervisor) -> Result<Value, (String, String)>,
) {
    let sup = Supervisor::start();
    let mut c = Checks::new(what);
    sup.create_python(
        "upd",
        &[("app.py", &app(1))],
        "app.handler",
        json!({"Timeout": 30}),
    );
    let base = Baseline::take(&sup);
    // An idle environment with a detached grandchild, and a busy one.
    let warm = sup.invoke_ok("upd", json!({"mode": "spawn"}));
    let busy = invoke_in_background(&sup, "upd", json!({"mode": "sleep", "seconds": 1.5}));
    std::thread::sleep(Duration::from_millis(200));
    let idle = sup.invoke_ok("upd", json!({}));
    let fp = Footprint::take(&sup, &[function_uid(&warm)]);
    check_footprint(&mut c, &sup, "idle and busy environments", &fp, 3);

    let r = update(&sup);
    c.check(r.is_ok(), format_args!("{what}: {r:?}"));
    let during = busy.join().unwrap_or_default().unwrap_or_default();
    c.eq(
        "the busy invoke finishes on the old code",
        during["result"]["Payload"]["v"].as_i64(),
        Some(1),
    );
    let left = leftovers_within(SETTLE, &sup, &base, &fp, &["upd"]);
    c.check(
        left.is_empty(),
        format_args!("left of the old environments: {left:#?}"),
    );
    c.check(
        sup.env_cgroup_dirs().is_empty(),
        format_args!("no environment remains: {:?}", sup.env_cgroup_dirs()),
    );
    let next = sup.invoke_ok("upd", json!({}));
    c.check(
        next["token"] != idle["token"] && next["token"] != warm["token"],
        "a new environment serves the next invoke",
    );
    c.finish();
}

#[test]
fn update_function_code_leaves_nothing_of_the_old_environments() {
    if !require_root() {
        return;
    }
    update_leaves_nothing("UpdateFunctionCode", |sup| {
        let dir = sup.write_code("upd-v2", &[("app.py", &app(2))]);
        sup.request(
            "UpdateFunctionCode",
            json!({"FunctionName": "upd", "Path": dir.to_str().unwrap()}),
        )
    });
}

#[test]
fn update_function_configuration_leaves_nothing_of_the_old_environments() {
    if !require_root() {
        return;
    }
    update_leaves_nothing("UpdateFunctionConfiguration", |sup| {
        sup.request(
            "UpdateFunctionConfiguration",
            json!({"FunctionName": "upd", "MemorySize": 256,
                   "Environment": {"Variables": {"COLOR": "blue"}}}),
        )
    });
}

#[test]
fn delete_function_leaves_nothing_when_it_answers() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("DeleteFunction");
    sup.create_python(
        "doomed",
        &[("app.py", APP)],
        "app.handler",
        json!({"Timeout": 60}),
    );
    sup.create_python("survivor", &[("app.py", APP)], "app.handler", json!({}));
    let survivor = sup.invoke_ok("survivor", json!({}));
    let base = Baseline::take(&sup);
    let survivor_fp = Footprint::take(&sup, &[]);

    let warm = sup.invoke_ok("doomed", json!({"mode": "spawn"}));
    let busy = invoke_in_background(&sup, "doomed", json!({"mode": "sleep", "seconds": 30}));
    std::thread::sleep(Duration::from_millis(200));
    sup.invoke_ok("doomed", json!({}));
    // The doomed function's part: what is not the survivor's.
    let fp = Footprint::take(&sup, &[function_uid(&warm)]).minus(&survivor_fp);
    check_footprint(&mut c, &sup, "the doomed function's environments", &fp, 3);

    let started = Instant::now();
    let r = sup.request("DeleteFunction", json!({"FunctionName": "doomed"}));
    let took = started.elapsed();
    c.check(r.is_ok(), format_args!("DeleteFunction: {r:?}"));
    c.check(
        took < Duration::from_secs(3),
        format_args!("DeleteFunction answers within 3 s: {took:?}"),
    );
    // DeleteFunction answers once the environments have ended: no grace.
    let left = leftovers(&sup, &base, &fp, &["survivor"]);
    c.check(
        left.is_empty(),
        format_args!("left when DeleteFunction answered: {left:#?}"),
    );
    let during = busy.join().unwrap_or_default().unwrap_or_default();
    c.eq(
        "the busy invoke is answered ResourceNotFoundException",
        during["error"]["type"].as_str(),
        Some("ResourceNotFoundException"),
    );
    c.eq(
        "the other function's environment is untouched",
        sup.invoke_ok("survivor", json!({}))["token"].clone(),
        survivor["token"].clone(),
    );
    c.finish();
}

#[test]
fn a_dead_zygote_ends_only_itself_and_what_it_made_ends_later_completely() {
    if !require_root() {
        return;
    }
    // What server.rs intends when the zygote dies (zygote_exited,
    // env_failed's lost_with_zygote, Zygote::take_queue): a new zygote is
    // started at once and spawn requests the dead one never got go to it;
    // environments and ready blanks are not its children (they were
    // reparented to the supervisor) and keep working; only a blank still
    // being made is lost, and the invoke waiting for it is retried, not
    // failed.
    let mut sup = Supervisor::start_with(&["--prewarm", "2"]);
    let mut c = Checks::new("zygote death");
    for f in ["z1", "z3"] {
        sup.create_python(f, &[("app.py", APP)], "app.handler", json!({"Timeout": 30}));
    }
    c.check(
        wait_for_settled_envs(&sup, 2),
        "the pool has its two blanks",
    );
    let base = Baseline::take(&sup);
    let sup_pid = sup.pid();
    let warm = sup.invoke_ok("z1", json!({}));
    c.check(
        wait_for_settled_envs(&sup, 3),
        "one environment and two blanks",
    );
    let mut fp = Footprint::take(&sup, &[function_uid(&warm)]);
    check_footprint(&mut c, &sup, "an environment and two blanks", &fp, 3);
    let before: BTreeSet<i32> = sup.processes_in_cgroups();
    let new_zygote = |dead: &[i32]| {
        let mut found = None;
        wait_until(ZYGOTE_RESTART, || {
            found = common::zygote_pids(sup_pid)
                .into_iter()
                .find(|z| !dead.contains(z));
            found.is_some()
        });
        found
    };

    // The zygote dies; the next one is killed too before it is ready (it
    // preloads for 100 ms or more), while four cold starts wait: two take
    // the ready blanks the first zygote made, two wait for blanks whose
    // spawn requests sit unread in the second zygote's channel and are
    // lost with it.
    let Some(first) = new_zygote(&[]) else {
        c.fail("no zygote child of the supervisor found");
        return c.finish();
    };
    add_procs(&mut fp, &[first]);
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    let Some(second) = new_zygote(&[first]) else {
        c.fail("no zygote is started after the first died");
        return c.finish();
    };
    add_procs(&mut fp, &[second]);
    let invokes: Vec<_> = (0..4)
        .map(|_| invoke_in_background(&sup, "z3", json!({"mode": "sleep", "seconds": 0.5})))
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    kill(Pid::from_raw(second), Signal::SIGKILL).unwrap();
    if sup
        .stderr()
        .contains(&format!("python zygote {second} ready"))
    {
        eprintln!("note: zygote {second} was ready before it was killed");
    }
    c.check(
        new_zygote(&[first, second]).is_some(),
        "a third zygote is started",
    );
    let mut z3 = Vec::new();
    for (i, h) in invokes.into_iter().enumerate() {
        let r = h.join().unwrap_or_default().unwrap_or_default();
        c.check(
            r["result"]["Payload"]["token"].is_string(),
            format_args!("cold start {i} while its zygotes died is answered: {r}"),
        );
        z3.push(r["result"]["Payload"].clone());
    }
    for z in [first, second] {
        c.check(
            wait_until(Duration::from_secs(2), || common::read_process(z).is_none()),
            format_args!(
                "the dead zygote is reaped, not left a zombie: {}",
                common::describe_pid(z)
            ),
        );
    }
    let survivors: Vec<i32> = before
        .iter()
        .copied()
        .filter(|&p| common::alive(p))
        .collect();
    c.eq(
        "the environment and the ready blanks outlive their zygote",
        &survivors,
        &before.iter().copied().collect::<Vec<_>>(),
    );
    c.eq(
        "the warm environment keeps serving",
        sup.invoke_ok("z1", json!({}))["token"].clone(),
        warm["token"].clone(),
    );
    let z3_uid = z3.iter().map(function_uid).max().unwrap_or(0);
    let z3_pids = sup.processes_of_uid(z3_uid);
    c.check(
        z3_pids.iter().filter(|p| before.contains(p)).count() == 2,
        format_args!(
            "the dead zygote's two ready blanks took cold starts: {z3_pids:?} ∩ {before:?}"
        ),
    );
    let settled = wait_for_stable_envs(&sup);
    eprintln!("after the zygote deaths: {settled} processes in environments");
    fp.add(Footprint::take(&sup, &[function_uid(&warm), z3_uid]));
    let zygotes = common::zygote_pids(sup_pid);

    // Delete everything: what every zygote made ends completely, and the
    // supervisor holds no more than it did before with its pool.
    for f in ["z1", "z3"] {
        let r = sup.request("DeleteFunction", json!({"FunctionName": f}));
        c.check(r.is_ok(), format_args!("DeleteFunction {f}: {r:?}"));
    }
    c.check(
        wait_for_settled_envs(&sup, 2),
        "only the pool's two blanks remain",
    );
    let pool = Footprint::take(&sup, &[]);
    let functions_fp = fp.minus(&pool);
    let left = leftovers_within(SETTLE, &sup, &base, &functions_fp, &[]);
    c.check(
        left.is_empty(),
        format_args!("left after deleting every function: {left:#?}"),
    );
    c.check(
        sup.stderr()
            .contains(&format!("python zygote {first} died")),
        "the supervisor logs the zygote's death",
    );

    // And at shutdown, the pool and the current zygote go too.
    fp.add(pool);
    add_procs(&mut fp, &zygotes);
    let status = sup.stop();
    c.check(
        status.is_some_and(|s| s.success()),
        format_args!("SIGTERM stops it: {status:?}"),
    );
    let left = leftovers(&sup, &base, &fp, &[]);
    c.check(
        left.is_empty(),
        format_args!("left after the shutdown: {left:#?}"),
    );
    c.finish();
}

/// What a supervisor ends with: a baseline taken before any environment,
/// the footprint of four environments and the zygote, and the invokes.
struct Scene {
    base: Baseline,
    fp: Footprint,
    /// A long sleep, still running.
    busy: JoinHandle<Option<Value>>,
    /// The answers of the environment with a detached grandchild, and of the
    /// idle one.
    warm: Value,
    idle: Value,
}

/// Two blanks, an idle environment with a detached grandchild, a busy one in
/// a 60 s sleep, and another idle one; every environment wrote a file into
/// its /tmp.
fn busy_idle_and_blanks(sup: &Supervisor, c: &mut Checks, function: &str) -> Scene {
    sup.create_python(
        function,
        &[("app.py", APP)],
        "app.handler",
        json!({"Timeout": 90}),
    );
    c.check(wait_for_settled_envs(sup, 2), "the pool has its two blanks");
    let base = Baseline::take(sup);
    let warm = sup.invoke_ok(function, json!({"mode": "spawn"}));
    let busy = invoke_in_background(sup, function, json!({"mode": "sleep", "seconds": 60}));
    std::thread::sleep(Duration::from_millis(200));
    let idle = sup.invoke_ok(function, json!({}));
    c.check(
        wait_for_settled_envs(sup, 5),
        "busy (with a grandchild), idle and two blank environments",
    );
    let mut fp = Footprint::take(sup, &[function_uid(&warm)]);
    check_footprint(c, sup, "busy, idle and blank environments", &fp, 5);
    let zygotes = common::zygote_pids(sup.pid());
    c.check(!zygotes.is_empty(), "the zygote runs");
    add_procs(&mut fp, &zygotes);
    Scene {
        base,
        fp,
        busy,
        warm,
        idle,
    }
}

#[test]
fn sigterm_shutdown_leaves_nothing() {
    if !require_root() {
        return;
    }
    let mut sup = Supervisor::start_with(&["--prewarm", "2"]);
    let mut c = Checks::new("SIGTERM");
    let Scene { base, fp, busy, .. } = busy_idle_and_blanks(&sup, &mut c, "keeper");

    let started = Instant::now();
    let status = sup.stop();
    let took = started.elapsed();
    c.check(
        status.is_some_and(|s| s.success()),
        format_args!("the supervisor exits 0 on SIGTERM: {status:?}"),
    );
    c.check(
        took < Duration::from_secs(5),
        format_args!("it does not wait for the busy invoke: took {took:?}"),
    );
    // The supervisor has exited: everything must be gone already.
    let left = leftovers(&sup, &base, &fp, &["keeper"]);
    c.check(
        left.is_empty(),
        format_args!("left after SIGTERM: {left:#?}"),
    );
    c.check(
        sup.env_cgroup_dirs().is_empty(),
        format_args!("no environment cgroup: {:?}", sup.env_cgroup_dirs()),
    );
    c.check(!sup.socket.exists(), "the socket is removed");
    let during = busy.join().unwrap_or_default();
    c.check(
        during
            .as_ref()
            .is_some_and(|r| r["error"]["type"] == "ServiceException"),
        format_args!("the busy invoke is answered with an error: {during:?}"),
    );

    // A start after a clean stop finds nothing to clean.
    sup.restart();
    c.check(
        !sup.stderr().contains("left by a previous run"),
        "the next start finds nothing of the previous run",
    );
    c.finish();
}

#[test]
fn after_kill_9_the_next_start_removes_everything_before_serving() {
    if !require_root() {
        return;
    }
    let mut sup = Supervisor::start_with(&["--prewarm", "2"]);
    let mut c = Checks::new("kill -9 and restart");
    let Scene {
        base,
        fp,
        busy,
        warm,
        idle,
    } = busy_idle_and_blanks(&sup, &mut c, "phoenix");
    let marks: Vec<String> = [&warm, &idle]
        .iter()
        .filter_map(|r| r["mark"].as_str().map(String::from))
        .collect();

    sup.kill9();
    // Without a supervisor, the busy environment sleeps on: it is the
    // restart that must end it.
    let still: Vec<i32> = fp
        .procs
        .keys()
        .copied()
        .filter(|&p| common::alive(p))
        .collect();
    eprintln!("alive right after kill -9: {still:?}");
    sup.restart();
    // restart() returns once the socket answers: the old run must be gone
    // by then, with no grace.
    let left = env_leftovers(&sup, &base, &fp, &["phoenix"]);
    c.check(
        left.is_empty(),
        format_args!("left of the killed run when the next one serves: {left:#?}"),
    );
    // The new run holds what the old one did with its pool, once that is
    // made.
    let fds = wait_until(SETTLE, || fd_leftovers(&sup, &base).is_empty());
    c.check(
        fds,
        format_args!(
            "the new run's descriptors: {:#?}",
            fd_leftovers(&sup, &base)
        ),
    );
    let run2 = sup.stderr();
    let run2 = run2.split("--- serve run 2 ---").nth(1).unwrap_or("");
    c.check(
        run2.contains("left by a previous run"),
        format_args!("the restart reports what it removed: {run2}"),
    );
    let during = busy.join().unwrap_or_default();
    c.check(
        during.is_none(),
        format_args!("the busy invoke's connection closed without an answer: {during:?}"),
    );
    for mark in &marks {
        let host = Path::new(mark);
        c.check(
            !host.exists(),
            format_args!("the function's /tmp file is not on the host: {mark}"),
        );
    }
    let again = sup.invoke_ok("phoenix", json!({}));
    c.check(
        again["token"] != warm["token"] && again["token"] != idle["token"],
        "a new environment serves after the restart",
    );
    let tmp: Vec<&str> = again["tmp"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    c.check(
        tmp.len() == 1 && marks.iter().all(|m| !m.ends_with(tmp[0])),
        format_args!("its /tmp holds nothing of the old run: {tmp:?}"),
    );
    c.finish();
}

/// The supervisor's resident memory, in KiB.
fn rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// cgroup v1's count of memory cgroups, dying ones (removed, still
/// charged with page cache) included: /proc/cgroups.
fn memory_cgroups() -> Option<u64> {
    fs::read_to_string("/proc/cgroups")
        .ok()?
        .lines()
        .find(|l| l.starts_with("memory\t"))?
        .split('\t')
        .nth(2)?
        .parse()
        .ok()
}

#[test]
fn churning_environments_does_not_grow_the_supervisor() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start_with(&["--keep-alive", "1", "--prewarm", "0"]);
    let mut c = Checks::new("churn");
    sup.create_python(
        "churn",
        &[("app.py", APP)],
        "app.handler",
        json!({"Timeout": 10}),
    );
    const WIDE: usize = 5;
    const WANT: usize = 32;
    let mut tokens = BTreeSet::new();
    let mut fp = Footprint::default();
    let mut base = None;
    let mut rss_after_warmup = 0;
    let memcg_before = memory_cgroups();
    let started = Instant::now();
    let mut round = 0;
    while tokens.len() < WANT + WIDE && round < 20 {
        round += 1;
        let invokes: Vec<_> = (0..WIDE)
            .map(|_| invoke_in_background(&sup, "churn", json!({"mode": "sleep", "seconds": 0.3})))
            .collect();
        let mut uid = 0;
        for h in invokes {
            let r = h.join().unwrap_or_default().unwrap_or_default();
            let p = &r["result"]["Payload"];
            if let Some(t) = p["token"].as_str() {
                tokens.insert(t.to_string());
                uid = function_uid(p);
            }
        }
        let this_round = Footprint::take(&sup, &[uid]);
        let reclaimed = wait_until(Duration::from_secs(5), || {
            this_round.cgroups.iter().all(|d| !d.exists())
        });
        c.check(
            reclaimed,
            format_args!(
                "round {round}: reclaimed within 5 s: {:?}",
                this_round
                    .cgroups
                    .iter()
                    .filter(|d| d.exists())
                    .collect::<Vec<_>>()
            ),
        );
        fp.add(this_round);
        if round == 1 {
            // After one round the supervisor has its log file open, its
            // maps sized and its allocator warm: the reference from here.
            base = Some(Baseline::take(&sup));
            rss_after_warmup = rss_kib(sup.pid());
            // The first round's environments are not the reference's.
            tokens.clear();
        }
    }
    let base = base.expect("one round ran");
    let took = started.elapsed();
    c.check(
        tokens.len() >= WANT,
        format_args!(
            "at least {WANT} environments came and went: {}",
            tokens.len()
        ),
    );
    let left = leftovers_within(SETTLE, &sup, &base, &fp, &["churn"]);
    c.check(
        left.is_empty(),
        format_args!("left after {} environments: {left:#?}", tokens.len()),
    );
    let fds_now = sup_fds(&sup);
    let rss = rss_kib(sup.pid());
    // Each environment costs the supervisor some KiB while it lives
    // (buffers, maps); 2 MiB over 30+ environments that are all gone would
    // be a leak of tens of KiB each.
    c.check(
        rss <= rss_after_warmup + 2048,
        format_args!("the supervisor's RSS stays bounded: {rss_after_warmup} → {rss} KiB"),
    );
    let memcg_after = memory_cgroups();
    eprintln!(
        "churn: {} environments in {round} rounds, {took:?}; supervisor RSS {rss_after_warmup} → {rss} KiB, fds {fds_now:?}; memory cgroups on the host (dying included) {memcg_before:?} → {memcg_after:?}",
        tokens.len()
    );
    c.finish();
}
