//! Load: LOAD_FUNCTIONS (10) functions × LOAD_CLIENTS (50) concurrent
//! clients each, for LOAD_SECONDS (60). Every client has a connection of its
//! own and invokes its function in a loop, one invoke in flight: a small
//! payload (`{"n": <the client's counter>, "work": LOAD_WORK}`), for which
//! the handler (examples/whoami) sums LOAD_WORK squares and answers with the
//! sum, the counter and its environment's token. Every answer is checked
//! (the counter and the sum back, no FunctionError).
//!
//! Reported: invokes completed per second, latency percentiles of the
//! successful invokes (over the whole run, whose start includes the cold
//! starts of every client's first environment, and after the first
//! LOAD_WARMUP_S), the environments that served (distinct tokens), the
//! supervisor's CPU per invoke, and errors by type. A throttle
//! (TooManyRequestsException) is counted on its own: it is the supervisor
//! doing what it should past the concurrency limit. Any other error (an
//! error response, a function error, a wrong answer, a broken or silent
//! connection) makes the bench exit non-zero once it has printed the
//! results.
//!
//! The supervisor runs with its defaults (`--prewarm 4`); the functions have
//! the default 128 MB (a CPU quota of 128/1769 of a vCPU each).
//!
//! `cargo bench --bench load` (root; `make bench-load`). Knobs:
//! LOAD_FUNCTIONS (10), LOAD_CLIENTS (50, per function), LOAD_SECONDS (60),
//! LOAD_WARMUP_S (5), LOAD_WORK (200), LAMBDALET_BIN.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{ms, Client, Error, Samples};
use serde_json::Value;

const BENCH: &str = "load";
const THROTTLE: &str = "TooManyRequestsException";
/// An answer later than this is an error (`no answer within 30 s`), and the
/// client reconnects.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What one client saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// Latencies of the successful invokes sent before / after the warm-up.
    warmup: Vec<Duration>,
    steady: Vec<Duration>,
    throttles: u64,
    errors: BTreeMap<String, u64>,
    envs: HashSet<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.warmup.extend(o.warmup);
        self.steady.extend(o.steady);
        self.throttles += o.throttles;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.envs.extend(o.envs);
    }
}

/// What the handler answers for `work`: the sum of the squares below it.
fn expected_sum(work: u64) -> u64 {
    (0..work).map(|i| i * i).sum()
}

/// Classifies one answer line of the request with counter `n`: Ok(token)
/// for a success, Err(kind) otherwise.
fn classify(line: &[u8], n: u64, sum: u64) -> Result<String, String> {
    let v: Value = serde_json::from_slice(line).map_err(|_| "answer is not JSON".to_string())?;
    if let Some(e) = v.get("error") {
        return Err(e["type"]
            .as_str()
            .unwrap_or("error without a type")
            .to_string());
    }
    let r = &v["result"];
    if r.get("FunctionError").is_some() {
        let kind = r["Payload"]["errorType"].as_str().unwrap_or("?");
        return Err(format!("FunctionError {kind}"));
    }
    if v["id"] != n || r["Payload"]["n"] != n || r["Payload"]["work"] != sum {
        return Err("wrong answer (id, n or sum)".into());
    }
    r["Payload"]["env"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "wrong answer (no env)".into())
}

/// One client: invokes `function` in a loop, one in flight, until `end`.
fn client(
    socket: PathBuf,
    function: String,
    work: u64,
    start: Arc<Barrier>,
    warmup: Duration,
    run: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let connect = |tally: &mut Tally| -> Option<Client> {
        match Client::connect(&socket).and_then(|c| {
            c.set_read_timeout(Some(READ_TIMEOUT))?;
            Ok(c)
        }) {
            Ok(c) => Some(c),
            Err(e) => {
                *tally.errors.entry(format!("connect: {e}")).or_default() += 1;
                None
            }
        }
    };
    let mut conn = connect(&mut tally);
    let sum = expected_sum(work);
    start.wait();
    let begin = Instant::now();
    let mut n = 0u64;
    while begin.elapsed() < run {
        let Some(c) = conn.as_mut() else {
            std::thread::sleep(Duration::from_millis(100));
            conn = connect(&mut tally);
            continue;
        };
        n += 1;
        let line = format!(
            "{{\"id\":{n},\"op\":\"Invoke\",\"params\":{{\"FunctionName\":\"{function}\",\"Payload\":{{\"n\":{n},\"work\":{work}}}}}}}\n"
        );
        let t = Instant::now();
        let answer = c
            .send(line.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|()| c.read_line().map(<[u8]>::to_vec).map_err(|e| e.to_string()));
        let took = t.elapsed();
        match answer.map(|a| classify(&a, n, sum)) {
            Ok(Ok(env)) => {
                tally.ok += 1;
                tally.envs.insert(env);
                if t - begin < warmup {
                    tally.warmup.push(took);
                } else {
                    tally.steady.push(took);
                }
            }
            Ok(Err(kind)) if kind == THROTTLE => tally.throttles += 1,
            Ok(Err(kind)) => *tally.errors.entry(kind).or_default() += 1,
            Err(e) => {
                let kind = if e.contains("timed out") || e.contains("Resource temporarily") {
                    format!("no answer within {READ_TIMEOUT:?}")
                } else {
                    format!("connection: {e}")
                };
                *tally.errors.entry(kind).or_default() += 1;
                conn = connect(&mut tally);
            }
        }
    }
    tally
}

fn main() -> Result<(), Error> {
    common::require_root(BENCH);
    let functions: usize = common::env_num("LOAD_FUNCTIONS", 10);
    let clients: usize = common::env_num("LOAD_CLIENTS", 50);
    let seconds: f64 = common::env_num("LOAD_SECONDS", 60.0);
    let warmup = Duration::from_secs_f64(common::env_num("LOAD_WARMUP_S", 5.0));
    let work: u64 = common::env_num("LOAD_WORK", 200);
    let run = Duration::from_secs_f64(seconds);
    let bin = common::lambdalet_bin()?;
    let load_before = common::load_average();
    eprintln!(
        "{BENCH}: {functions} functions × {clients} clients for {seconds} s; {}; load average {load_before}",
        bin.display()
    );

    let sup = common::Supervisor::start(&bin, &[])?;
    let code = common::example("whoami");
    let names: Vec<String> = (0..functions).map(|i| format!("load-{i}")).collect();
    for name in &names {
        sup.deploy(name, &code, 128)?;
    }

    let barrier = Arc::new(Barrier::new(functions * clients + 1));
    let mut handles = Vec::with_capacity(functions * clients);
    for name in &names {
        for _ in 0..clients {
            let (socket, function, start) = (sup.socket.clone(), name.clone(), barrier.clone());
            handles.push(
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || client(socket, function, work, start, warmup, run))?,
            );
        }
    }
    let sup_cpu = || common::cpu_time(sup.pid()).map_or(Duration::ZERO, |(own, _)| own);
    let (busy0, total0) = common::host_cpu();
    let cpu0 = sup_cpu();
    barrier.wait();
    let begin = Instant::now();
    let mut per_function: Vec<Tally> = Vec::with_capacity(functions);
    for (i, h) in handles.into_iter().enumerate() {
        let t = h.join().map_err(|_| "client thread panicked")?;
        if i % clients == 0 {
            per_function.push(Tally::default());
        }
        per_function.last_mut().expect("pushed").merge(t);
    }
    let elapsed = begin.elapsed();
    let (busy1, total1) = common::host_cpu();
    let cpu1 = sup_cpu();
    let load_after = common::load_average();
    let alive = Client::connect(&sup.socket)
        .and_then(|mut c| c.call("ListFunctions", serde_json::json!({})))
        .is_ok();
    let unusual = sup.unusual_log_lines();
    let cgroup_parent = sup.cgroup_parent.clone();
    drop(sup);
    let leftovers = common::processes_in_cgroups_named(&cgroup_parent);

    // ---- report -----------------------------------------------------------------
    let envs_per_function: Vec<usize> = per_function.iter().map(|t| t.envs.len()).collect();
    let rates: Vec<f64> = per_function
        .iter()
        .map(|t| t.ok as f64 / elapsed.as_secs_f64())
        .collect();
    let mut all = Tally::default();
    for t in per_function {
        all.merge(t);
    }
    let unexpected: u64 = all.errors.values().sum();
    let steady_secs = (elapsed.saturating_sub(warmup)).as_secs_f64();
    let whole = Samples::new(all.warmup.iter().chain(&all.steady).copied().collect());
    let steady = Samples::new(all.steady.clone());
    let row = |name: &str, s: &Samples, secs: f64| {
        vec![
            name.to_string(),
            s.len().to_string(),
            format!("{:.0}", s.len() as f64 / secs),
            ms(s.pct(50.0)),
            ms(s.pct(90.0)),
            ms(s.pct(99.0)),
            ms(s.pct(99.9)),
            ms(s.max()),
        ]
    };

    let mut out = String::new();
    let _ = writeln!(out, "### Mixed load ({})\n", common::machine());
    let _ = writeln!(
        out,
        "`cargo bench --bench load` · {functions} functions (examples/whoami, 128 MB) × {clients} \
         clients each, one invoke in flight per client, for {:.1} s · payload `{{\"n\":…,\"work\":{work}}}` · \
         load average {load_before} before, {load_after} after\n",
        elapsed.as_secs_f64()
    );
    out.push_str(&common::table(
        &[
            "successful invokes",
            "n",
            "invokes/s",
            "p50, ms",
            "p90",
            "p99",
            "p99.9",
            "max",
        ],
        &[
            row(
                "whole run (the first cold starts included)",
                &whole,
                elapsed.as_secs_f64(),
            ),
            row(&format!("after the first {warmup:?}"), &steady, steady_secs),
        ],
    ));
    let (busy, total) = (busy1 - busy0, total1 - total0);
    let _ = writeln!(
        out,
        "\n- Per function: {:.0}–{:.0} invokes/s; environments that served: {} in all ({}–{} per \
         function).",
        rates.iter().copied().fold(f64::INFINITY, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
        all.envs.len(),
        envs_per_function.iter().min().unwrap_or(&0),
        envs_per_function.iter().max().unwrap_or(&0),
    );
    let _ = writeln!(
        out,
        "- CPU: the host {:.0} % busy; the supervisor {:.1} µs per invoke.",
        busy.as_secs_f64() / total.as_secs_f64().max(1e-9) * 100.0,
        (cpu1 - cpu0).as_secs_f64() * 1e6 / (all.ok.max(1)) as f64
    );
    let _ = writeln!(
        out,
        "- Throttles (TooManyRequestsException, expected past the concurrency limit only): {}.",
        all.throttles
    );
    if all.errors.is_empty() {
        let _ = writeln!(out, "- Other errors: none.");
    } else {
        let _ = writeln!(out, "- **Other errors: {unexpected}**:\n");
        let rows: Vec<Vec<String>> = all
            .errors
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        out.push_str(&common::table(&["error", "count"], &rows));
    }
    if !alive {
        let _ = writeln!(out, "- **The supervisor did not answer after the run.**");
    }
    let _ = writeln!(out);
    out.push_str(&common::log_summary("The supervisor's log", &unusual));
    if !leftovers.is_empty() {
        let _ = writeln!(
            out,
            "\n**Processes left in the bench's cgroups after the supervisor stopped: {leftovers:?}**"
        );
    }
    println!("{out}");
    common::write_results(BENCH, &out);
    if unexpected > 0 || !alive || !leftovers.is_empty() || all.ok == 0 {
        eprintln!(
            "{BENCH}: FAILED: {unexpected} unexpected error(s){}{}",
            if alive {
                ""
            } else {
                ", the supervisor stopped answering"
            },
            if leftovers.is_empty() {
                ""
            } else {
                ", processes left behind"
            }
        );
        std::process::exit(1);
    }
    Ok(())
}
