//! Root integration tests: every row of the execution environment's contract
//! (DESIGN.md § The execution environment), observed from inside a function
//! running under the real `lambdalet serve`.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{require_root, Checks, Supervisor};
use serde_json::{json, Value};

const PROBE: &str = include_str!("fixtures/probe.py");
const MIB: u64 = 1024 * 1024;

const EPERM: i64 = 1;
const EAGAIN: i64 = 11;
const ENOSPC: i64 = 28;
const EROFS: i64 = 30;

#[test]
fn the_sandbox_has_its_own_identity_privileges_and_view() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("sandbox contract");

    sup.create_python(
        "probe-b",
        &[("probe.py", PROBE)],
        "probe.handler",
        json!({}),
    );
    sup.create_python(
        "probe-a",
        &[("probe.py", PROBE)],
        "probe.handler",
        json!({}),
    );
    let b = sup.invoke_ok("probe-b", json!({}));

    // A marker in the host's /tmp that no function may see.
    let marker = std::env::temp_dir().join(format!("lambdalet-host-marker-{}", std::process::id()));
    fs::write(&marker, "host").unwrap();
    let b_code_host = sup.code_revisions_dir("probe-b");
    assert!(
        b_code_host.is_dir(),
        "probe-b's code is not at {}",
        b_code_host.display()
    );
    let b_source = sup.dir.path().join("src");
    let hidden = vec![
        "/root".to_string(),
        "/home".to_string(),
        "/etc/shadow".to_string(),
        "/work".to_string(),
        "/var/lib/lambdalet".to_string(),
        "/sys/fs/cgroup".to_string(),
        sup.state_dir.display().to_string(),
        sup.state_dir.join("functions").display().to_string(),
        sup.socket.display().to_string(),
        sup.dir.path().display().to_string(),
        b_code_host.display().to_string(),
        b_code_host.join("1").join("probe.py").display().to_string(),
        b_source.display().to_string(),
        marker.display().to_string(),
        // The supervisor's host PID.
        format!("/proc/{}", sup.pid()),
    ];
    let create = vec![
        "/var/task/new-file".to_string(),
        "/new-file".to_string(),
        "/etc/new-file".to_string(),
        "/tmp/new-file".to_string(),
    ];
    let a = sup.invoke_ok("probe-a", json!({"hidden": hidden, "create": create}));
    let _ = fs::remove_file(&marker);

    // The user: non-root, distinct per function, no capabilities, no_new_privs,
    // a seccomp filter.
    let uid = a["uid"].as_i64().unwrap_or(-1);
    c.check(uid > 0, format_args!("uid is not root: got {uid}"));
    c.eq("euid", a["euid"].as_i64(), Some(uid));
    c.check(
        a["gid"].as_i64().is_some_and(|g| g > 0),
        format_args!("gid is not root: got {}", a["gid"]),
    );
    c.eq("supplementary groups", a["groups"].clone(), json!([]));
    c.check(
        b["uid"].as_i64().is_some_and(|u| u > 0 && u != uid),
        format_args!(
            "two functions run as different uids: probe-a {uid}, probe-b {}",
            b["uid"]
        ),
    );
    let st = &a["status"];
    let uid_line = format!("{uid}\t{uid}\t{uid}\t{uid}");
    c.eq(
        "/proc/self/status Uid (real, effective, saved, fs)",
        st["Uid"].as_str(),
        Some(uid_line.as_str()),
    );
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        c.eq(cap, st[cap].as_str(), Some("0000000000000000"));
    }
    c.eq("NoNewPrivs", st["NoNewPrivs"].as_str(), Some("1"));
    c.eq("Seccomp (2 = filter)", st["Seccomp"].as_str(), Some("2"));

    // Dangerous syscalls are refused.
    for (name, allowed) in [
        ("mount", &[EPERM][..]),
        ("unshare_user", &[EPERM][..]),
        ("unshare_mount", &[EPERM][..]),
        ("ptrace_traceme", &[EPERM][..]),
        ("keyctl", &[EPERM][..]),
        ("bpf", &[EPERM][..]),
    ] {
        let r = &a["syscalls"][name];
        let ok = r["ret"].as_i64() == Some(-1)
            && r["errno"].as_i64().is_some_and(|e| allowed.contains(&e));
        c.check(
            ok,
            format_args!("{name} is refused with errno in {allowed:?}: got {r}"),
        );
    }

    // Own hostname, loopback only, no way out.
    let host_name = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let name = a["hostname"].as_str().unwrap_or_default();
    c.check(
        !name.is_empty() && name != host_name.trim(),
        format_args!(
            "own hostname: got {name:?}, the host's is {:?}",
            host_name.trim()
        ),
    );
    c.eq(
        "network interfaces",
        a["network"]["interfaces"].clone(),
        json!(["lo"]),
    );
    c.eq(
        "loopback works",
        a["network"]["loopback"].as_str(),
        Some("ok"),
    );
    c.eq(
        "outbound connect (no route)",
        a["network"]["outbound"].as_str(),
        Some("ENETUNREACH"),
    );

    // Only its own processes: small PIDs, PID 1 is the runtime, the supervisor
    // is not there.
    let procs = a["processes"].as_array().cloned().unwrap_or_default();
    c.check(!procs.is_empty(), "/proc lists processes");
    let pids: Vec<i64> = procs.iter().filter_map(|p| p["pid"].as_i64()).collect();
    c.check(
        pids.iter().all(|&p| p < 100),
        format_args!("only the environment's own (small) PIDs in /proc: got {pids:?}"),
    );
    let pid1 = procs.iter().find(|p| p["pid"] == 1);
    c.check(
        pid1.is_some_and(|p| p["cmdline"].as_str().unwrap_or("").contains("python")),
        format_args!("PID 1 is the python runtime: got {pid1:?}"),
    );
    c.check(
        procs.iter().all(|p| {
            let comm = p["comm"].as_str().unwrap_or("");
            let cmd = p["cmdline"].as_str().unwrap_or("");
            comm != "lambdalet" && !cmd.contains("lambdalet serve")
        }),
        format_args!("the supervisor is not visible: {procs:?}"),
    );

    // Host files are invisible.
    for (path, seen) in a["hidden"].as_object().cloned().unwrap_or_default() {
        let seen = seen.as_str().unwrap_or("");
        let ok = seen == "absent" || seen.ends_with("entries=[]");
        c.check(ok, format_args!("host path {path} is invisible: {seen}"));
    }

    // Read-only root and /var/task; writable /tmp.
    c.eq(
        "create /var/task/new-file",
        a["create"]["/var/task/new-file"].as_i64(),
        Some(EROFS),
    );
    c.eq(
        "create /new-file",
        a["create"]["/new-file"].as_i64(),
        Some(EROFS),
    );
    c.eq(
        "create /etc/new-file",
        a["create"]["/etc/new-file"].as_i64(),
        Some(EROFS),
    );
    c.eq(
        "create /tmp/new-file",
        a["create"]["/tmp/new-file"].as_i64(),
        Some(0),
    );

    c.eq("RLIMIT_NOFILE", a["nofile"].clone(), json!([1024, 1024]));
    c.eq("working directory", a["cwd"].as_str(), Some("/var/task"));

    // A minimal /dev: no block devices, no memory or kernel log devices.
    let devs = a["devices"].as_object().cloned().unwrap_or_default();
    for (dev, kind) in &devs {
        c.check(
            kind != "block",
            format_args!("/dev/{dev} is a block device"),
        );
    }
    for dev in ["mem", "kmem", "port", "kmsg", "vda", "sda", "console"] {
        c.check(
            !devs.contains_key(dev),
            format_args!("/dev/{dev} is visible"),
        );
    }
    for dev in ["null", "zero", "urandom"] {
        c.check(
            devs.contains_key(dev),
            format_args!("/dev/{dev} is missing"),
        );
    }
    eprintln!("root entries seen by the function: {}", a["root_entries"]);
    eprintln!("/dev seen by the function: {}", a["devices"]);
    c.finish();
}

const TMP_HANDLER: &str = r#"
import os

def handler(event, context):
    op = event["op"]
    path = "/tmp/persist.txt"
    if op == "write":
        with open(path, "w") as f:
            f.write(event["token"])
        return {"pid": os.getpid()}
    if op == "read":
        try:
            with open(path) as f:
                return {"found": f.read()}
        except FileNotFoundError:
            return {"found": None}
    if op == "fill":
        chunk = b"\x5a" * (4 * 1024 * 1024)
        total = 0
        err = None
        fd = os.open("/tmp/fill", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            while total < event["max_bytes"]:
                try:
                    n = os.write(fd, chunk)
                except OSError as e:
                    err = e.errno
                    break
                total += n
        finally:
            os.close(fd)
            os.unlink("/tmp/fill")
        return {"total": total, "errno": err}
    raise ValueError(op)
"#;

#[test]
fn tmp_is_private_and_persists_across_invokes() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("/tmp persistence");
    sup.create_python(
        "tmp-a",
        &[("app.py", TMP_HANDLER)],
        "app.handler",
        json!({}),
    );
    sup.create_python(
        "tmp-b",
        &[("app.py", TMP_HANDLER)],
        "app.handler",
        json!({}),
    );
    let token = format!("token-{}", std::process::id());
    sup.invoke_ok("tmp-a", json!({"op": "write", "token": token}));
    let again = sup.invoke_ok("tmp-a", json!({"op": "read"}));
    c.eq(
        "the second invoke of the warm environment reads its /tmp",
        again["found"].as_str(),
        Some(token.as_str()),
    );
    let other = sup.invoke_ok("tmp-b", json!({"op": "read"}));
    c.eq(
        "another function's /tmp is private",
        other["found"].clone(),
        Value::Null,
    );
    c.finish();
}

#[test]
fn tmp_full_gives_enospc_at_its_size() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("/tmp size limit");
    // Memory well above the /tmp size, so that this test is about the size
    // limit whatever backs /tmp.
    sup.create_python(
        "tmp-fill",
        &[("app.py", TMP_HANDLER)],
        "app.handler",
        json!({"MemorySize": 1024, "Timeout": 30, "EphemeralStorage": {"Size": 512}}),
    );
    let r = sup.invoke("tmp-fill", json!({"op": "fill", "max_bytes": 600 * MIB}));
    c.check(
        r.get("FunctionError").is_none(),
        format_args!("filling /tmp is not a crash: {r}"),
    );
    let p = &r["Payload"];
    c.eq("errno when /tmp is full", p["errno"].as_i64(), Some(ENOSPC));
    let total = p["total"].as_u64().unwrap_or(0);
    c.check(
        (480 * MIB..=512 * MIB).contains(&total),
        format_args!("/tmp holds about its 512 MB: wrote {} MiB", total / MIB),
    );
    // The environment survives a full /tmp (the file was removed again).
    let after = sup.invoke("tmp-fill", json!({"op": "read"}));
    c.check(
        after.get("FunctionError").is_none(),
        format_args!("the next invoke works: {after}"),
    );
    c.finish();
}

#[test]
fn tmp_counts_toward_the_memory_limit_and_the_environment_recovers() {
    if !require_root() {
        return;
    }
    // /tmp is a tmpfs charged to the environment's memory cgroup (README,
    // "Known differences"): unlike Lambda's disk-backed /tmp, a 128 MB
    // function that writes 300 MiB there is stopped by its memory limit. It
    // must be reported as such, and only that environment ends.
    let sup = Supervisor::start();
    sup.create_python(
        "tmp-mem",
        &[("app.py", TMP_HANDLER)],
        "app.handler",
        json!({"MemorySize": 128, "Timeout": 30, "EphemeralStorage": {"Size": 512}}),
    );
    let r = sup.invoke("tmp-mem", json!({"op": "fill", "max_bytes": 300 * MIB}));
    assert_eq!(
        r["Payload"]["errorType"], "Runtime.OutOfMemory",
        "300 MiB in /tmp of a 128 MB function: {r}"
    );
    let after = sup.invoke("tmp-mem", json!({"op": "read"}));
    assert!(
        after.get("FunctionError").is_none(),
        "the next invoke runs in a fresh environment: {after}"
    );
}

const MEMORY_HANDLER: &str = r#"
import os, uuid

TOKEN = uuid.uuid4().hex

def handler(event, context):
    if event.get("allocate_mb"):
        # b"x" * n writes every byte: the pages are really touched.
        blob = b"\x01" * (event["allocate_mb"] * 1024 * 1024)
        return {"allocated": len(blob)}
    return {"token": TOKEN}
"#;

#[test]
fn the_memory_limit_kills_only_that_environment() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("memory limit");
    sup.create_python(
        "mem-hog",
        &[("app.py", MEMORY_HANDLER)],
        "app.handler",
        json!({"MemorySize": 128, "Timeout": 30}),
    );
    sup.create_python(
        "mem-bystander",
        &[("app.py", MEMORY_HANDLER)],
        "app.handler",
        json!({"MemorySize": 128}),
    );
    let bystander = sup.invoke_ok("mem-bystander", json!({}))["token"].clone();

    let probe = common::LatencyProbe::start(&sup.socket);
    let started = Instant::now();
    let r = sup.invoke("mem-hog", json!({"allocate_mb": 512}));
    let took = started.elapsed();
    let stall = probe.stop();
    eprintln!("the 512 MiB allocation was answered in {took:?}; slowest ListFunctions meanwhile {stall:?}");
    c.check(
        stall < Duration::from_millis(500),
        format_args!("the supervisor answers others while an environment is OOM-killed: slowest ListFunctions took {stall:?}"),
    );
    c.eq(
        "FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "errorType",
        r["Payload"]["errorType"].as_str(),
        Some("Runtime.OutOfMemory"),
    );
    let msg = r["Payload"]["errorMessage"].as_str().unwrap_or("");
    c.check(
        msg.contains("memory") && msg.contains("128"),
        format_args!("the error says the 128 MB memory limit was exceeded: {msg:?}"),
    );
    c.check(
        took < Duration::from_secs(15),
        format_args!("the kill is prompt: took {took:?}"),
    );

    let next = sup.invoke("mem-hog", json!({}));
    c.check(
        next.get("FunctionError").is_none() && next["Payload"]["token"].is_string(),
        format_args!("the next invoke works: {next}"),
    );
    let still = sup.invoke_ok("mem-bystander", json!({}))["token"].clone();
    c.eq(
        "another function's environment lives on (same init token)",
        still,
        bystander,
    );
    let logs = sup.logs("mem-hog").join("\n");
    c.check(
        logs.contains("Runtime.OutOfMemory"),
        format_args!("the REPORT of the killed invoke names the error: {logs}"),
    );
    c.finish();
}

const FORK_HANDLER: &str = r#"
import os, time

def handler(event, context):
    if not event.get("bomb"):
        return {"ok": True, "pid": os.getpid()}
    made = 0
    err = None
    while made < 2000:
        try:
            pid = os.fork()
        except OSError as e:
            err = e.errno
            break
        if pid == 0:
            # A child holds its PID a while, then goes; the environment's end
            # kills it sooner.
            time.sleep(60)
            os._exit(0)
        made += 1
    return {"made": made, "errno": err}
"#;

#[test]
fn a_fork_bomb_is_held_by_the_pids_limit() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("pids limit");
    sup.create_python(
        "forker",
        &[("app.py", FORK_HANDLER)],
        "app.handler",
        json!({"MemorySize": 2048, "Timeout": 60}),
    );
    let probe = common::LatencyProbe::start(&sup.socket);
    let bomb_started = Instant::now();
    let r = sup.invoke("forker", json!({"bomb": true}));
    eprintln!("the fork bomb invoke took {:?}", bomb_started.elapsed());
    let stall = probe.stop();
    c.check(
        stall < Duration::from_millis(500),
        format_args!("the supervisor answers others during a fork bomb: slowest ListFunctions took {stall:?}"),
    );
    c.check(
        r.get("FunctionError").is_none(),
        format_args!("the bomb invoke returns: {r}"),
    );
    let made = r["Payload"]["made"].as_i64().unwrap_or(-1);
    c.check(
        (512..=1024).contains(&made),
        format_args!("the pids limit (1024) stops the forks: made {made}"),
    );
    c.eq(
        "fork's errno at the limit",
        r["Payload"]["errno"].as_i64(),
        Some(EAGAIN),
    );
    // The supervisor and the environment still answer.
    c.check(
        sup.request("ListFunctions", json!({})).is_ok(),
        "the supervisor answers",
    );
    let next = sup.invoke("forker", json!({}));
    c.check(
        next.get("FunctionError").is_none() && next["Payload"]["ok"] == true,
        format_args!("the next invoke works: {next}"),
    );
    // Deleting the function ends the environment and its ~1000 children.
    let before = sup.processes_in_cgroups();
    c.check(
        before.len() > 500,
        format_args!("the children are in the env's cgroup: {}", before.len()),
    );
    let probe = common::LatencyProbe::start(&sup.socket);
    let started = Instant::now();
    c.check(
        sup.request("DeleteFunction", json!({"FunctionName": "forker"}))
            .is_ok(),
        "DeleteFunction",
    );
    eprintln!(
        "while the bombed function was deleted, the slowest ListFunctions took {:?}",
        probe.stop()
    );
    let left = common::wait_gone(
        &before.into_iter().collect::<Vec<_>>(),
        Duration::from_secs(5),
    );
    c.check(
        left.is_empty(),
        format_args!("{} processes outlive the delete", left.len()),
    );
    eprintln!("delete of the bombed function took {:?}", started.elapsed());
    c.finish();
}

const SLEEPER: &str = r#"
def handler(event, context):
    return {"ok": True}
"#;

#[test]
fn cgroup_limits_follow_the_configuration() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("cgroup limits");
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    for (name, mb) in [("lim-128", 128u64), ("lim-1769", 1769), ("lim-3538", 3538)] {
        sup.create_python(
            name,
            &[("app.py", SLEEPER)],
            "app.handler",
            json!({"MemorySize": mb}),
        );
        let before: Vec<_> = sup.env_cgroup_dirs();
        sup.invoke_ok(name, json!({}));
        let after: Vec<_> = sup.env_cgroup_dirs();
        let new: Vec<_> = after.into_iter().filter(|d| !before.contains(d)).collect();
        c.check(
            !new.is_empty(),
            format_args!("{name}: an environment cgroup appears under the parent"),
        );
        let read = |file: &str| -> Option<String> {
            new.iter()
                .find_map(|d| fs::read_to_string(d.join(file)).ok())
                .map(|s| s.trim().to_string())
        };
        let want_quota = (100_000 * mb / 1769).min(100_000 * host_cpus.min(6));
        if let Some(limit) = read("memory.limit_in_bytes") {
            // cgroup v1
            c.eq(
                format!("{name}: memory.limit_in_bytes"),
                limit,
                (mb * MIB).to_string(),
            );
            if let Some(memsw) = read("memory.memsw.limit_in_bytes") {
                c.eq(
                    format!("{name}: memory.memsw.limit_in_bytes (no swap)"),
                    memsw,
                    (mb * MIB).to_string(),
                );
            }
            let period: u64 = read("cpu.cfs_period_us")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let quota: i64 = read("cpu.cfs_quota_us")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            c.eq(format!("{name}: cpu.cfs_period_us"), period, 100_000);
            c.check(
                (quota - want_quota as i64).abs() <= 1,
                format_args!("{name}: cpu.cfs_quota_us: got {quota}, want {want_quota}"),
            );
        } else if let Some(max) = read("memory.max") {
            c.eq(format!("{name}: memory.max"), max, (mb * MIB).to_string());
            if let Some(swap) = read("memory.swap.max") {
                c.eq(
                    format!("{name}: memory.swap.max (no swap)"),
                    swap,
                    "0".to_string(),
                );
            }
            c.eq(
                format!("{name}: cpu.max"),
                read("cpu.max"),
                Some(format!("{want_quota} 100000")),
            );
        } else {
            c.fail(format!("{name}: no memory limit file in {new:?}"));
        }
        c.eq(
            format!("{name}: pids.max"),
            read("pids.max"),
            Some("1024".into()),
        );
    }
    c.finish();
}
