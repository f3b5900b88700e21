//! Burst: BURST_SIZE (200) concurrent cold invokes of one function
//! (examples/whoami, a trivial handler that answers with a token drawn once
//! per environment), pipelined over a few connections all at once: how many
//! environments the supervisor makes per second, and the latency of those
//! invokes. With the same number of concurrent plain starts of the same
//! handler in the same run: the real python3 running a tiny script that
//! imports it and calls it once, and bubblewrap around that python3;
//! processes per second from the first spawn to the last exit.
//!
//! Each lambdalet burst is taken two ways:
//!
//! - *answers*: the invokes return at once; rate = BURST_SIZE ÷ (first
//!   request written → last answer read). An environment that is ready early
//!   serves invokes still waiting, so fewer environments than invokes may
//!   serve the burst (the distinct tokens say how many);
//! - *held*: every invoke keeps its environment busy until BURST_HOLD_MS
//!   after the burst began, so each one needs an environment of its own:
//!   rate = BURST_SIZE ÷ (first request written → last handler started, by
//!   the handler's clock, the host's), the environments made per second.
//!
//! lambdalet runs on two supervisors: with the default pool of blank
//! environments (`--prewarm 4`: all but four of the burst's environments are
//! made from scratch on the invoke's path) and with a pool as large as the
//! burst (`--prewarm BURST_SIZE`: every cold start only specialises a blank).
//! Before each burst UpdateFunctionConfiguration retires the function's
//! environments (not timed), and the bench waits until only the pool's
//! blanks are left and the host is quiet again. Every answer is checked (a
//! result, no FunctionError, the request's own `n` back), and the REPORT
//! lines (GetLogs, after the burst) give each cold start's Init Duration:
//! from the spawn request for a blank made on demand, from the
//! specialisation for a pooled one. CPU per start is the host's busy CPU
//! time over the burst divided by its size (the supervisor's and the
//! zygote's shares from /proc/PID/stat; the zygote's includes its
//! short-lived children).
//!
//! Methods take turns round by round, so the machine's noise falls on each
//! alike. Memory: each environment has the default 128 MB, a cgroup limit,
//! not memory set aside, so BURST_SIZE × 128 MB may exceed the host's RAM.
//!
//! `cargo bench --bench burst` (root). Knobs: BURST_SIZE (200), BURST_ROUNDS
//! (3), BURST_CONNECTIONS (4), BURST_HOLD_MS (5000), BURST_BIG_PREWARM
//! (BURST_SIZE; 0 skips that supervisor), LAMBDALET_BIN.

mod common;

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{ms, Error, Samples};
use serde_json::{json, Value};

const BENCH: &str = "burst";
const FUNCTION: &str = "whoami";
const TARGET_PER_S: f64 = 300.0;

/// The peers' driver: import the handler's module from the code dir
/// (argv[1]), call it once, print its JSON result.
const PEER_SCRIPT: &str = r#"import sys, json
sys.path.insert(0, sys.argv[1])
import app
print(json.dumps(app.handler({"n": 0}, None)))
"#;

/// One round of one method.
#[derive(Default)]
struct Round {
    /// What the rate is taken over: first request written (or process
    /// spawned) → last answer read (or last process exited), or, when every
    /// invoke holds its environment, → the last handler started.
    span: Duration,
    /// Per invoke (or process), over the same ends as `span`.
    latencies: Vec<Duration>,
    /// Distinct environments (tokens) that answered.
    envs: usize,
    /// Environments alive once the burst settled (the pool's blanks and
    /// the environments started for invokes that others served included).
    alive_after: usize,
    /// Init Duration of the cold starts among the burst's invokes.
    init: Vec<Duration>,
    /// CPU time over the span: the host's (busy), the supervisor's, the
    /// zygote's (with its reaped children's).
    host_busy: Duration,
    supervisor_cpu: Duration,
    zygote_cpu: Duration,
}

impl Round {
    fn rate(&self, n: usize) -> f64 {
        n as f64 / self.span.as_secs_f64()
    }
}

/// A method's rounds and label.
struct Method {
    label: String,
    /// Where its span ends.
    ends: String,
    rounds: Vec<Round>,
}

impl Method {
    fn median_rate(&self, n: usize) -> f64 {
        median(self.rounds.iter().map(|r| r.rate(n)).collect())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// A lambdalet supervisor under test, with the function deployed.
struct Lambdalet {
    sup: common::Supervisor,
    prewarm: usize,
    client: common::Client,
    /// The most cgroups of ended environments seen left in place (empty).
    empty_cgroups: usize,
}

impl Lambdalet {
    fn start(bin: &Path, prewarm: usize, code: &Path, hold: Duration) -> Result<Lambdalet, Error> {
        let sup = common::Supervisor::start(bin, &["--prewarm", &prewarm.to_string()])?;
        // The default memory size; a timeout well above the hold.
        let timeout = (hold.as_secs() as u32 + 30).min(900);
        sup.deploy_with_timeout(FUNCTION, code, 128, timeout)?;
        let client = sup.client()?;
        Ok(Lambdalet {
            sup,
            prewarm,
            client,
            empty_cgroups: 0,
        })
    }

    /// Waits until the environments' cgroups have stopped coming and going
    /// and each one with processes holds exactly one (the intermediate
    /// parent of a new blank gone) for half a second in a row; returns how
    /// many hold one. Cgroups that stay empty are those of ended
    /// environments the supervisor has not removed: their number is kept in
    /// `empty_cgroups` (the most seen).
    fn wait_stable(&mut self) -> Result<usize, Error> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut stable, mut last) = (0, (usize::MAX, usize::MAX));
        while stable < 5 {
            let envs = self.sup.env_cgroups();
            let procs: Vec<usize> = envs.iter().map(|d| common::cgroup_pids(d).len()).collect();
            let now = (
                procs.iter().filter(|&&p| p > 0).count(),
                procs.iter().filter(|&&p| p == 0).count(),
            );
            let settled = now == last && procs.iter().all(|&p| p <= 1);
            stable = if settled { stable + 1 } else { 0 };
            last = now;
            if Instant::now() > deadline {
                let pids: Vec<u32> = envs.iter().flat_map(|d| common::cgroup_pids(d)).collect();
                return Err(format!(
                    "the environments did not settle within 120 s ({} cgroups with processes, \
                     {} empty); their processes:\n{}the supervisor's log, last lines:\n{}",
                    last.0,
                    last.1,
                    common::describe_processes(&pids),
                    self.sup.log_tail(30)
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.empty_cgroups = self.empty_cgroups.max(last.1);
        Ok(last.0)
    }

    /// Retires the function's environments and waits until only the pool's
    /// blanks are left, then until the host is quiet. Environments that were
    /// still starting for the previous burst are specialised with the new
    /// configuration when they are ready: a second retirement takes them.
    fn retire_and_settle(&mut self, round: usize) -> Result<(), Error> {
        for attempt in 0..5 {
            self.client.call(
                "UpdateFunctionConfiguration",
                json!({"FunctionName": FUNCTION, "Description": format!("burst {round}.{attempt}")}),
            )?;
            if self.wait_stable()? == self.prewarm {
                break;
            }
        }
        let left = self.wait_stable()?;
        if left != self.prewarm {
            return Err(format!(
                "{left} environments are left after retiring the function's, not the pool's {}",
                self.prewarm
            )
            .into());
        }
        if !common::wait_quiet(0.15, Duration::from_secs(10)) {
            eprintln!("{BENCH}: the host did not get quiet within 10 s; measuring anyway");
        }
        Ok(())
    }

    /// One burst: every invoke at once, every answer checked. With `hold`,
    /// every invoke keeps its environment busy until `hold` after the burst
    /// began, so that no environment serves two of them: the burst then
    /// measures environments made, up to the last handler's start.
    fn burst(
        &mut self,
        n: usize,
        connections: usize,
        hold: Option<Duration>,
    ) -> Result<Round, Error> {
        let unix0 = unix_now();
        let until = hold.map(|h| unix0 + h.as_secs_f64());
        let payloads: Vec<Value> = (0..n)
            .map(|i| match until {
                Some(u) => json!({"n": i, "until": u}),
                None => json!({"n": i}),
            })
            .collect();
        let zygote = self.sup.zygote_pid().ok_or("the zygote is not running")?;
        let sampler = CpuSampler::start(self.sup.pid(), zygote);
        let t0 = Instant::now();
        let answers = common::invoke_batch(
            &self.sup.socket,
            FUNCTION,
            &payloads,
            connections,
            Duration::from_secs(120) + hold.unwrap_or_default(),
        )
        .map_err(|e| format!("{e}\n{}", self.sup.log_tail(30)))?;
        let samples = sampler.stop();
        let first = answers.iter().map(|a| a.sent).min().ok_or("no answers")?;
        let last = answers
            .iter()
            .map(|a| a.received)
            .max()
            .ok_or("no answers")?;

        let mut failures = Vec::new();
        let mut tokens = HashSet::new();
        let mut request_ids = Vec::new();
        // When each handler started, from the first request written (the
        // handler's clock is the host's: unix0 was read at t0).
        let mut starts = Vec::new();
        let first_unix = unix0 + (first - t0).as_secs_f64();
        for (i, a) in answers.iter().enumerate() {
            let r = &a.response["result"];
            let ok = r["StatusCode"] == 200
                && r.get("FunctionError").is_none()
                && r["Payload"]["n"] == i
                && r["Payload"]["env"].is_string();
            if ok {
                tokens.insert(r["Payload"]["env"].as_str().unwrap_or_default().to_string());
                request_ids.push(r["RequestId"].as_str().unwrap_or_default().to_string());
                let started = r["Payload"]["started"].as_f64().unwrap_or(f64::MAX);
                starts.push(Duration::from_secs_f64((started - first_unix).max(0.0)));
            } else {
                failures.push(a.response.to_string());
            }
        }
        if !failures.is_empty() {
            return Err(format!(
                "{} of {n} invokes of the burst failed; the first: {}\n{}",
                failures.len(),
                failures[0],
                self.sup.log_tail(30)
            )
            .into());
        }
        if let Some(u) = until {
            if tokens.len() < n {
                let last_start = starts.iter().max().copied().unwrap_or_default();
                return Err(format!(
                    "only {} environments served {n} held invokes: the last handler started \
                     {:.2} s after the burst began, after the hold ended ({:.2} s); raise \
                     BURST_HOLD_MS",
                    tokens.len(),
                    last_start.as_secs_f64(),
                    u - first_unix
                )
                .into());
            }
        }
        let inits = common::init_durations(&mut self.client, FUNCTION, 8 * n + 100)?;
        let alive_after = self.wait_stable()?;
        let (span, latencies) = match hold {
            Some(_) => (starts.iter().max().copied().unwrap_or_default(), starts),
            None => (
                last - first,
                answers.iter().map(common::Answer::latency).collect(),
            ),
        };
        let [host_busy, supervisor_cpu, zygote_cpu] = CpuSampler::over(&samples, first + span);
        Ok(Round {
            span,
            latencies,
            envs: tokens.len(),
            alive_after,
            init: request_ids
                .iter()
                .filter_map(|id| inits.get(id).copied())
                .collect(),
            host_busy,
            supervisor_cpu,
            zygote_cpu,
        })
    }
}

/// CPU times read every 10 ms by a thread of its own while a burst runs, so
/// that they can be taken over the burst's span whatever ends it (the last
/// answer, or the last handler started while the held invokes still wait).
struct CpuSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, [Duration; 3])>>,
}

impl CpuSampler {
    fn start(supervisor: u32, zygote: u32) -> CpuSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let cpu = |pid| {
                common::cpu_time(pid)
                    .map(|(own, children)| own + children)
                    .unwrap_or_default()
            };
            let mut samples = Vec::new();
            loop {
                let done = flag.load(std::sync::atomic::Ordering::Relaxed);
                samples.push((
                    Instant::now(),
                    [common::host_cpu().0, cpu(supervisor), cpu(zygote)],
                ));
                if done {
                    return samples;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        CpuSampler { stop, thread }
    }

    fn stop(self) -> Vec<(Instant, [Duration; 3])> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }

    /// The CPU times from the first sample to the first one at or after
    /// `end`.
    fn over(samples: &[(Instant, [Duration; 3])], end: Instant) -> [Duration; 3] {
        let (Some(first), Some(last)) = (
            samples.first(),
            samples.iter().find(|(t, _)| *t >= end).or(samples.last()),
        ) else {
            return [Duration::ZERO; 3];
        };
        [0, 1, 2].map(|i| last.1[i].saturating_sub(first.1[i]))
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// `n` concurrent starts of `argv`: all spawned at once, each waited for by
/// a thread of its own so that its exit is timed when it happens.
fn peer_burst(argv: &[OsString], n: usize) -> Result<Round, Error> {
    type Exit = (Instant, Instant, std::io::Result<std::process::Output>);
    let busy0 = common::host_cpu().0;
    let first = Instant::now();
    let mut waiters: Vec<std::thread::JoinHandle<Exit>> = Vec::with_capacity(n);
    for _ in 0..n {
        let spawned = Instant::now();
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        waiters.push(std::thread::spawn(move || {
            let out = child.wait_with_output();
            (spawned, Instant::now(), out)
        }));
    }
    let mut round = Round::default();
    let mut last = first;
    let mut tokens = HashSet::new();
    for w in waiters {
        let (spawned, exited, out) = w.join().map_err(|_| "waiter thread panicked")?;
        let out = out?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let token = serde_json::from_str::<Value>(stdout.lines().last().unwrap_or(""))
            .ok()
            .and_then(|v| v["env"].as_str().map(str::to_string));
        match token {
            Some(t) if out.status.success() => {
                tokens.insert(t);
            }
            _ => {
                return Err(format!(
                    "{:?} gave {}, stdout {stdout:?}, stderr {:?}",
                    argv[0],
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
                .into())
            }
        }
        last = last.max(exited);
        round.latencies.push(exited - spawned);
    }
    round.span = last - first;
    round.envs = tokens.len();
    round.host_busy = common::host_cpu().0.saturating_sub(busy0);
    Ok(round)
}

fn main() -> Result<(), Error> {
    common::require_root(BENCH);
    let n: usize = common::env_num("BURST_SIZE", 200);
    let rounds: usize = common::env_num("BURST_ROUNDS", 3);
    let connections: usize = common::env_num("BURST_CONNECTIONS", 4);
    let big_prewarm: usize = common::env_num("BURST_BIG_PREWARM", n);
    let hold = Duration::from_millis(common::env_num("BURST_HOLD_MS", 5000));
    let bin = common::lambdalet_bin()?;
    let py = common::real_python()?;
    let code = common::example(FUNCTION);
    let load_before = common::load_average();
    eprintln!(
        "{BENCH}: {rounds} rounds of {n} concurrent starts per method, {connections} connections; \
         {}; python {} at {}; load average {load_before}",
        bin.display(),
        py.version,
        py.executable.display()
    );

    // Each supervisor is measured two ways: invokes that answer at once (an
    // environment that is ready early may serve several of them), and
    // invokes that hold their environment (one environment each).
    let mut sups = vec![(
        Lambdalet::start(&bin, 4, &code, hold)?,
        "default pool (`--prewarm 4`)".to_string(),
    )];
    if big_prewarm > 0 {
        sups.push((
            Lambdalet::start(&bin, big_prewarm, &code, hold)?,
            format!("a pool of {big_prewarm} (`--prewarm {big_prewarm}`)"),
        ));
    }
    let mut methods = Vec::new();
    for (i, (_, pool)) in sups.iter().enumerate() {
        let bold = |s: &str| {
            if i == 0 {
                format!("**{s}**")
            } else {
                s.to_string()
            }
        };
        methods.push(Method {
            label: format!("{}, {pool}: answers", bold("lambdalet")),
            ends: "last answer".into(),
            rounds: Vec::new(),
        });
        methods.push(Method {
            label: format!(
                "{}, {pool}: each invoke holds its environment",
                bold("lambdalet")
            ),
            ends: "last handler started".into(),
            rounds: Vec::new(),
        });
    }
    let mut peers: Vec<(String, Vec<OsString>)> = Vec::new();
    let mut python = vec![py.executable.clone().into_os_string()];
    python.extend(["-I", "-S", "-c", PEER_SCRIPT].map(OsString::from));
    python.push(code.clone().into_os_string());
    peers.push(("python3 -I -S".into(), python));
    if let Some(bwrap) = common::find_bwrap(BENCH) {
        peers.push((
            "bubblewrap + python3 -I -S".into(),
            common::bwrap_python_argv(&bwrap, &py, &code, &["-I", "-S"], PEER_SCRIPT),
        ));
    }
    let first_peer = methods.len();
    for (label, argv) in &peers {
        // One untimed run: a peer that cannot run says why at once.
        peer_burst(argv, 1)?;
        methods.push(Method {
            label: label.clone(),
            ends: "last exit".into(),
            rounds: Vec::new(),
        });
    }

    let started = Instant::now();
    for round in 0..rounds {
        for (s, (l, _)) in sups.iter_mut().enumerate() {
            for (k, h) in [None, Some(hold)].into_iter().enumerate() {
                l.retire_and_settle(round * 2 + k)?;
                let r = l.burst(n, connections, h)?;
                let m = &mut methods[s * 2 + k];
                eprintln!(
                    "{BENCH}: round {}: {}: {:.0}/s, {} environments, {} cold starts",
                    round + 1,
                    m.label,
                    r.rate(n),
                    r.envs,
                    r.init.len()
                );
                m.rounds.push(r);
            }
        }
        for (p, (label, argv)) in peers.iter().enumerate() {
            common::wait_quiet(0.15, Duration::from_secs(10));
            let r = peer_burst(argv, n)?;
            eprintln!("{BENCH}: round {}: {label}: {:.0}/s", round + 1, r.rate(n));
            methods[first_peer + p].rounds.push(r);
        }
        eprintln!(
            "{BENCH}: {}/{rounds} rounds ({:.0} s)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }
    let load_after = common::load_average();
    let mut unusual = Vec::new();
    for (l, _) in &sups {
        unusual.extend(l.sup.unusual_log_lines());
    }
    let leaked: Vec<String> = sups
        .iter()
        .filter(|(l, _)| l.empty_cgroups > 0)
        .map(|(l, pool)| format!("{pool}: {}", l.empty_cgroups))
        .collect();
    let cgroup_parents: Vec<String> = sups
        .iter()
        .map(|(l, _)| l.sup.cgroup_parent.clone())
        .collect();
    drop(sups);
    let leftovers: Vec<u32> = cgroup_parents
        .iter()
        .flat_map(|p| common::processes_in_cgroups_named(p))
        .collect();

    // ---- report -----------------------------------------------------------------
    let reference = methods[first_peer].median_rate(n);
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let mut rows = Vec::new();
    for m in &methods {
        let rates: Vec<f64> = m.rounds.iter().map(|r| r.rate(n)).collect();
        let lat = Samples::new(m.rounds.iter().flat_map(|r| r.latencies.clone()).collect());
        let span = median(m.rounds.iter().map(|r| r.span.as_secs_f64()).collect());
        let envs: Vec<String> = m.rounds.iter().map(|r| r.envs.to_string()).collect();
        let alive: Vec<String> = m
            .rounds
            .iter()
            .map(|r| {
                if r.alive_after > 0 {
                    r.alive_after.to_string()
                } else {
                    "–".into()
                }
            })
            .collect();
        let cpu = median(
            m.rounds
                .iter()
                .map(|r| r.host_busy.as_secs_f64() * 1e3 / n as f64)
                .collect(),
        );
        rows.push(vec![
            m.label.clone(),
            m.ends.clone(),
            format!("{:.0}", m.median_rate(n)),
            format!(
                "{:.0}–{:.0}",
                rates.iter().copied().fold(f64::INFINITY, f64::min),
                rates.iter().copied().fold(0.0, f64::max)
            ),
            format!("{:.0}", span * 1e3),
            ms(lat.pct(50.0)),
            ms(lat.pct(99.0)),
            ms(lat.max()),
            envs.join(", "),
            alive.join(", "),
            format!("{cpu:.1}"),
            format!("{:.1}×", m.median_rate(n) / reference),
        ]);
    }
    let mut out = String::new();
    let _ = writeln!(out, "### Burst ({})\n", common::machine());
    let _ = writeln!(
        out,
        "`cargo bench --bench burst` · {n} concurrent cold invokes of examples/whoami (128 MB), \
         pipelined on {connections} connections · {rounds} rounds per method, taking turns · \
         held invokes last until {hold:?} after the burst began · python {} · load average \
         {load_before} before, {load_after} after\n",
        py.version
    );
    out.push_str(&common::table(
        &[
            &format!("burst of {n} concurrent starts"),
            "timed from the first request (spawn) to the",
            "per s (median)",
            "min–max",
            "span, ms",
            "latency p50, ms",
            "p99",
            "max",
            "environments (processes) that answered, per round",
            "environments alive after, per round",
            "host CPU per start, ms",
            "÷ python3 -I -S",
        ],
        &rows,
    ));
    let _ = writeln!(
        out,
        "\nPer s: {n} ÷ span. Latency: each invoke from its request written to its answer read \
         (or its handler started, when held), each peer process from its spawn to its exit; over \
         all rounds ({} per method). Environments that answered: distinct tokens among the \
         answers; alive after: the environments' cgroups once the burst settled (the pool's \
         blanks and those started for invokes that another environment served included). Host \
         CPU per start: the host's busy CPU time over the span ÷ {n} (the pool's refill, the \
         bench client and anything else on the host included).\n",
        n * rounds
    );

    let mut phases = Vec::new();
    for m in &methods[..first_peer] {
        let init = Samples::new(m.rounds.iter().flat_map(|r| r.init.clone()).collect());
        let per = |f: fn(&Round) -> Duration| {
            median(
                m.rounds
                    .iter()
                    .map(|r| f(r).as_secs_f64() * 1e3 / n as f64)
                    .collect(),
            )
        };
        let util = median(
            m.rounds
                .iter()
                .map(|r| r.host_busy.as_secs_f64() / (r.span.as_secs_f64() * cpus as f64) * 100.0)
                .collect(),
        );
        phases.push(vec![
            m.label.replace("**", ""),
            format!("{} of {}", init.len(), n * m.rounds.len()),
            ms(init.pct(50.0)),
            ms(init.pct(90.0)),
            ms(init.pct(99.0)),
            ms(init.max()),
            format!("{:.2}", per(|r| r.supervisor_cpu)),
            format!("{:.2}", per(|r| r.zygote_cpu)),
            format!("{util:.0} %"),
        ]);
    }
    out.push_str(&common::table(
        &[
            "lambdalet: where the burst goes",
            "cold starts (REPORT with Init Duration)",
            "Init Duration p50, ms",
            "p90",
            "p99",
            "max",
            "supervisor CPU per start, ms",
            "zygote CPU per start, ms",
            "host CPU busy over the span",
        ],
        &phases,
    ));
    let _ = writeln!(
        out,
        "\nInit Duration counts from the spawn request for a blank made on demand (its wait for \
         the zygote included), from the specialisation for a pooled blank. The zygote's CPU \
         includes its children's (the intermediate processes it forks and reaps).\n"
    );
    let _ = writeln!(
        out,
        "Target (issue 3): ≥ {TARGET_PER_S:.0} environments made per second in a burst of {n} \
         (the held rows: one environment per invoke)."
    );
    for m in methods[..first_peer].iter().skip(1).step_by(2) {
        let r = m.median_rate(n);
        let _ = writeln!(
            out,
            "- {}: {r:.0}/s ({}).",
            m.label.replace("**", ""),
            if r >= TARGET_PER_S { "met" } else { "not met" }
        );
    }
    if !leaked.is_empty() {
        let _ = writeln!(
            out,
            "\n**Ended environments whose cgroup the supervisor never removed** (empty, its log \
             says `still dying`), the most seen at once: {}.",
            leaked.join(", ")
        );
    }
    let _ = writeln!(out);
    out.push_str(&common::log_summary("The supervisors' logs", &unusual));
    if !leftovers.is_empty() {
        let _ = writeln!(
            out,
            "\n**Processes left in the bench's cgroups after the supervisors stopped: {leftovers:?}**"
        );
    }
    println!("{out}");
    common::write_results(BENCH, &out);
    if !leftovers.is_empty() {
        return Err("processes were left behind (see above)".into());
    }
    Ok(())
}
