//! Density: the memory of idle warm Python environments. DENSITY_N (1000)
//! invokes of one function (examples/whoami) each hold their environment
//! until the same wall-clock time, DENSITY_HOLD_S after the first was sent
//! (the host's clock, which environments share), so the supervisor must make
//! one environment per invoke. They are sent in waves of DENSITY_WAVE (100),
//! the next when every invoke sent so far runs (GetMetrics: the function's
//! busy environments): the supervisor starts an environment for every
//! waiting invoke at once, and a blank that waits for the zygote longer than
//! the init timeout (10 s) fails its invoke, which 1000 at once do on a
//! 2-CPU host. The bench checks that every invoke succeeded, that DENSITY_N
//! distinct environments answered, and that they were all in flight at once
//! (the last one started before the hold ended). Once all have answered (an
//! environment is idle again before its answer leaves the supervisor) and a
//! short pause, it measures every process in the environments' cgroups:
//!
//! - USS (Private_Clean + Private_Dirty) and PSS from /proc/PID/smaps_rollup,
//!   summed per environment: USS is what one more environment costs in user
//!   pages, PSS adds its share of the pages it shares (with the zygote and
//!   the other environments);
//! - the environment's memory cgroup charge (v1 `memory.usage_in_bytes`,
//!   v2 `memory.current`), which also holds the kernel memory charged to it
//!   (page tables, its root tmpfs, sockets);
//! - the supervisor's own RSS growth, and the host's MemAvailable before the
//!   invokes and after: the all-in cost, kernel objects of the namespaces
//!   included (on a shared host, other processes move it too).
//!
//! In the same run: one idle bare `python3 -I -S` blocked reading its stdin
//! (its USS and PSS: what a process of the same interpreter needs at the
//! least), and the zygote's own memory.
//!
//! The supervisor runs with `--prewarm 0`, so that every cgroup below the
//! bench's parent is one of the function's environments; and with
//! `--max-concurrency` (at least DENSITY_N) only if `lambdalet serve --help`
//! lists it (the default account concurrency is 1000). The function has the
//! default 128 MB: a cgroup limit, not memory set aside. At the end the
//! supervisor gets SIGTERM and removes its environments; the bench says how
//! long that took and fails if any process is left in its cgroups.
//!
//! `cargo bench --bench density` (root). Knobs: DENSITY_N (1000),
//! DENSITY_HOLD_S (0.06 s × N, at least 15), DENSITY_WAVE (100),
//! DENSITY_CONNECTIONS (4 per wave), DENSITY_SETTLE_S (2), LAMBDALET_BIN.

mod common;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{mib, Error, ProcMem};
use serde_json::{json, Value};

const BENCH: &str = "density";
const FUNCTION: &str = "whoami";
/// Issue 3's targets: ≤ 3 MiB per idle environment, 1000 in ≤ 4 GiB.
const TARGET_KIB_EACH: u64 = 3 * 1024;
const TARGET_KIB_1000: u64 = 4 * 1024 * 1024;

/// One environment's processes, measured.
struct Env {
    processes: usize,
    mem: ProcMem,
    /// The memory cgroup's charge, KiB.
    charge: Option<u64>,
}

/// Median, p90, max and total of a KiB measure over all environments.
fn stats(mut v: Vec<u64>) -> [u64; 4] {
    v.sort_unstable();
    if v.is_empty() {
        return [0; 4];
    }
    let pct = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    [
        pct(50.0),
        pct(90.0),
        *v.last().unwrap_or(&0),
        v.iter().sum(),
    ]
}

/// A bare python3 -I -S reading its program from a pipe that stays open:
/// idle in read(2) with nothing but the interpreter's start-up done.
fn bare_python(py: &common::Python) -> Result<ProcMem, Error> {
    let mut cmd = Command::new(&py.executable);
    cmd.args(["-I", "-S"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    common::die_with_bench(&mut cmd);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    // Blocked in read(2) (state S) five polls in a row: start-up is over.
    let mut sleeping = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleeping < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        sleeping = if state == Some("S") { sleeping + 1 } else { 0 };
    }
    let mem = ProcMem::of(pid).ok_or("cannot read the bare python3's smaps_rollup");
    let _ = child.kill();
    let _ = child.wait();
    Ok(mem?)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn main() -> Result<(), Error> {
    common::require_root(BENCH);
    let n: usize = common::env_num("DENSITY_N", 1000);
    let hold: f64 = common::env_num("DENSITY_HOLD_S", (n as f64 * 0.06).max(15.0));
    let connections: usize = common::env_num("DENSITY_CONNECTIONS", 4);
    let wave: usize = common::env_num("DENSITY_WAVE", 100).max(1);
    let settle = Duration::from_secs_f64(common::env_num("DENSITY_SETTLE_S", 2.0));
    let bin = common::lambdalet_bin()?;
    let py = common::real_python()?;
    let load_before = common::load_average();
    eprintln!(
        "{BENCH}: {n} idle environments, each held {hold:.0} s at most; {}; python {}; load average {load_before}",
        bin.display(),
        py.version
    );

    let max_concurrency = n.max(1000).to_string();
    let mut args = vec!["--prewarm", "0"];
    if common::serve_has_flag(&bin, "--max-concurrency") {
        args.extend(["--max-concurrency", &max_concurrency]);
    } else if n > 1000 {
        return Err(format!(
            "DENSITY_N={n} is above the account concurrency (1000) and this `lambdalet serve` \
             has no --max-concurrency"
        )
        .into());
    }
    let flags = args.join(" ");
    let sup = common::Supervisor::start(&bin, &args)?;
    // The function's timeout is above the hold, whatever the hold.
    let timeout = (hold.ceil() as u32 + 120).min(900);
    sup.deploy_with_timeout(FUNCTION, &common::example(FUNCTION), 128, timeout)?;
    std::thread::sleep(Duration::from_millis(500));
    let avail_before = common::meminfo_kib("MemAvailable").ok_or("no MemAvailable")?;
    let sup_before = ProcMem::of(sup.pid()).ok_or("cannot read the supervisor's memory")?;

    // ---- N environments, all busy at once, then idle --------------------------
    // Sent in waves of DENSITY_WAVE, the next once every invoke sent so far
    // runs (GetMetrics: the function's busy environments): the supervisor
    // starts an environment for every waiting invoke at once, and one that
    // waits for the zygote longer than the init timeout (10 s) fails. A
    // supervisor without GetMetrics gets a wave every DENSITY_WAVE ÷ 25 s.
    let mut metrics = sup.client()?;
    let busy = |c: &mut common::Client| -> Option<usize> {
        let m = c.call("GetMetrics", json!({})).ok()?;
        m["Functions"]
            .as_array()?
            .iter()
            .find(|f| f["FunctionName"] == FUNCTION)?["Gauges"]["EnvironmentsBusy"]
            .as_u64()
            .map(|b| b as usize)
    };
    let until = unix_now() + hold;
    let t = Instant::now();
    let mut waves = Vec::new();
    let mut sent = 0;
    while sent < n {
        let k = wave.min(n - sent);
        let payloads: Vec<Value> = (sent..sent + k)
            .map(|i| json!({"n": i, "until": until}))
            .collect();
        let socket = sup.socket.clone();
        let timeout = Duration::from_secs_f64(hold + 300.0);
        let conns = connections.min(k);
        let batch = std::thread::spawn(move || {
            common::invoke_batch(&socket, FUNCTION, &payloads, conns, timeout)
                .map_err(|e| e.to_string())
        });
        waves.push((sent, batch));
        sent += k;
        loop {
            let running = busy(&mut metrics);
            if running.is_none_or(|r| r >= sent) {
                if running.is_none() {
                    std::thread::sleep(Duration::from_secs_f64(k as f64 / 25.0));
                }
                break;
            }
            if unix_now() > until {
                return Err(format!(
                    "only {} of {sent} invokes were running when the hold ended ({hold:.0} s \
                     after the first was sent): raise DENSITY_HOLD_S\n{}",
                    running.unwrap_or(0),
                    sup.log_tail(30)
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let ramp = t.elapsed();
    eprintln!(
        "{BENCH}: {n} invokes started in {:.1} s",
        ramp.as_secs_f64()
    );
    let mut failures = Vec::new();
    let mut tokens = HashSet::new();
    let mut last_start = 0.0f64;
    for (offset, batch) in waves {
        let answers = batch
            .join()
            .map_err(|_| "a wave's thread panicked")?
            .map_err(|e| format!("{e}\n{}", sup.log_tail(30)))?;
        for (j, a) in answers.iter().enumerate() {
            let r = &a.response["result"];
            let i = offset + j;
            if r["StatusCode"] == 200 && r.get("FunctionError").is_none() && r["Payload"]["n"] == i
            {
                tokens.insert(r["Payload"]["env"].as_str().unwrap_or_default().to_string());
                last_start = last_start.max(r["Payload"]["started"].as_f64().unwrap_or(f64::MAX));
            } else {
                failures.push(a.response.to_string());
            }
        }
    }
    let took = t.elapsed();
    if !failures.is_empty() {
        return Err(format!(
            "{} of {n} invokes failed; the first: {}\n{}",
            failures.len(),
            failures[0],
            sup.log_tail(30)
        )
        .into());
    }
    let all_at_once = last_start < until;
    eprintln!(
        "{BENCH}: {n} answers in {:.1} s from {} environments; the last started {:.1} s {} the hold ended",
        took.as_secs_f64(),
        tokens.len(),
        (until - last_start).abs(),
        if all_at_once { "before" } else { "after" }
    );
    std::thread::sleep(settle);

    // ---- measure ----------------------------------------------------------------
    let mut envs = Vec::new();
    for dir in sup.env_cgroups() {
        let pids = common::cgroup_pids(&dir);
        let mem = pids
            .iter()
            .filter_map(|&p| ProcMem::of(p))
            .fold(ProcMem::default(), ProcMem::add);
        let charge = common::cgroup_value(&dir, "memory.usage_in_bytes")
            .or_else(|| common::cgroup_value(&dir, "memory.current"))
            .map(|b| b / 1024);
        envs.push(Env {
            processes: pids.len(),
            mem,
            charge,
        });
    }
    let avail_after = common::meminfo_kib("MemAvailable").ok_or("no MemAvailable")?;
    let sup_after = ProcMem::of(sup.pid()).ok_or("cannot read the supervisor's memory")?;
    let zygote = sup
        .zygote_pid()
        .and_then(ProcMem::of)
        .ok_or("cannot read the zygote's memory")?;
    let bare = bare_python(&py)?;
    let load_after = common::load_average();
    let unusual = sup.unusual_log_lines();
    let cgroup_parent = sup.cgroup_parent.clone();
    let stopping = Instant::now();
    drop(sup);
    let shutdown = stopping.elapsed();
    let leftovers = common::processes_in_cgroups_named(&cgroup_parent);

    // ---- report -----------------------------------------------------------------
    let count = envs.len();
    let uss = stats(envs.iter().map(|e| e.mem.uss).collect());
    let pss = stats(envs.iter().map(|e| e.mem.pss).collect());
    let rss = stats(envs.iter().map(|e| e.mem.rss).collect());
    let charge = stats(envs.iter().filter_map(|e| e.charge).collect());
    let procs_min = envs.iter().map(|e| e.processes).min().unwrap_or(0);
    let procs_max = envs.iter().map(|e| e.processes).max().unwrap_or(0);
    let row = |name: &str, s: [u64; 4]| {
        vec![name.to_string(), mib(s[0]), mib(s[1]), mib(s[2]), mib(s[3])]
    };
    let host_drop = avail_before.saturating_sub(avail_after);
    let sup_growth = sup_after.rss.saturating_sub(sup_before.rss);
    let per_env = |kib: u64| kib as f64 / count.max(1) as f64;

    let mut out = String::new();
    let _ = writeln!(out, "### Density ({})\n", common::machine());
    let _ = writeln!(
        out,
        "`cargo bench --bench density` · {n} concurrent invokes of examples/whoami (128 MB), \
         each held until {hold:.0} s after the first was sent, in waves of {wave} (the next once \
         all before it had started), {connections} connections per wave · `lambdalet serve \
         {flags}` · python {} · load average {load_before} before, {load_after} after\n",
        py.version
    );
    let _ = writeln!(
        out,
        "{n} invokes started in {:.1} s ({:.0} environments/s) and answered in {:.1} s, all \
         successful, by {} distinct environments; all in flight at once: {} (the last one started {:.1} s {} the hold ended). Measured {settle:?} \
         after the last answer: {count} environments' cgroups, {}–{} process(es) each.\n",
        ramp.as_secs_f64(),
        n as f64 / ramp.as_secs_f64(),
        took.as_secs_f64(),
        tokens.len(),
        if all_at_once { "yes" } else { "**no**" },
        (until - last_start).abs(),
        if all_at_once { "before" } else { "after" },
        procs_min,
        procs_max,
    );
    out.push_str(&common::table(
        &[
            "per idle environment, MiB",
            "median",
            "p90",
            "max",
            &format!("total ({count})"),
        ],
        &[
            row("**USS** (Private_Clean + Private_Dirty)", uss),
            row("**PSS**", pss),
            row("RSS", rss),
            row("memory cgroup charge (user and kernel memory)", charge),
        ],
    ));
    let _ = writeln!(out);
    out.push_str(&common::table(
        &["around them", "USS, MiB", "PSS, MiB", "RSS, MiB"],
        &[
            vec![
                "a bare `python3 -I -S`, idle, blocked reading stdin (same run)".into(),
                mib(bare.uss),
                mib(bare.pss),
                mib(bare.rss),
            ],
            vec![
                "the zygote".into(),
                mib(zygote.uss),
                mib(zygote.pss),
                mib(zygote.rss),
            ],
            vec![
                "the supervisor, before the invokes".into(),
                mib(sup_before.uss),
                mib(sup_before.pss),
                mib(sup_before.rss),
            ],
            vec![
                format!("the supervisor, with {count} idle environments"),
                mib(sup_after.uss),
                mib(sup_after.pss),
                mib(sup_after.rss),
            ],
        ],
    ));
    let _ = writeln!(
        out,
        "\n- The supervisor's RSS grew by {} MiB: {:.1} KiB per environment.",
        mib(sup_growth),
        per_env(sup_growth)
    );
    let _ = writeln!(
        out,
        "- The host's MemAvailable dropped by {} MiB: {} MiB per environment, all in (kernel \
         objects and the supervisor included; other processes on the host move it too).",
        mib(host_drop),
        mib(per_env(host_drop) as u64)
    );
    let _ = writeln!(
        out,
        "- Stopping the supervisor (SIGTERM) with {count} environments took {:.1} s; processes \
         left in its cgroups afterwards: {}.",
        shutdown.as_secs_f64(),
        if leftovers.is_empty() {
            "none".to_string()
        } else {
            format!("**{leftovers:?}**")
        }
    );
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    let all_in_1000 = per_env(host_drop) * 1000.0;
    let pss_1000 = per_env(pss[3] + sup_growth) * 1000.0 + zygote.pss as f64;
    let _ = writeln!(
        out,
        "\nTargets (issue 3): ≤ 3 MiB per idle environment: median USS {} MiB ({}), median PSS \
         {} MiB ({}). 1000 environments in ≤ 4 GiB: {:.2} GiB from the host's MemAvailable \
         ({}), {:.2} GiB as PSS of the environments, the zygote and the supervisor's growth ({}).",
        mib(uss[0]),
        verdict(uss[0] <= TARGET_KIB_EACH),
        mib(pss[0]),
        verdict(pss[0] <= TARGET_KIB_EACH),
        all_in_1000 / (1024.0 * 1024.0),
        verdict(all_in_1000 <= TARGET_KIB_1000 as f64),
        pss_1000 / (1024.0 * 1024.0),
        verdict(pss_1000 <= TARGET_KIB_1000 as f64),
    );
    if count != 1000 {
        let _ = writeln!(
            out,
            "(Measured with {count} environments; the 1000 figures scale the per-environment \
             numbers.)"
        );
    }
    let _ = writeln!(out);
    out.push_str(&common::log_summary("The supervisor's log", &unusual));
    println!("{out}");
    common::write_results(BENCH, &out);
    if tokens.len() != n || count != n || !all_at_once {
        return Err(format!(
            "expected {n} environments all in flight at once: {} answered, {count} cgroups, all \
             at once: {all_at_once} (raise DENSITY_HOLD_S if the last started after the hold)",
            tokens.len()
        )
        .into());
    }
    if !leftovers.is_empty() {
        return Err(format!("processes left in the bench's cgroups: {leftovers:?}").into());
    }
    Ok(())
}
