//! Warm invokes: the round trip of one client doing sequential invokes of the
//! `echo` function (examples/echo) over the socket, and throughput with two
//! environments; with a baseline measured in the same run: the same client
//! talking the same JSON line framing straight to a plain Python echo worker
//! over a Unix socket, no supervisor in between. The difference is what the
//! supervisor's hop (and the runtime's bookkeeping) costs.
//!
//! Round trip: after a warm-up, samples are taken in alternating blocks of
//! lambdalet and the baseline, so that the machine's noise falls on both
//! alike. Each sample: one Invoke line written, its answer read, timed.
//!
//! Throughput: invokes completed per second over WARM_SECONDS, with exactly
//! two invokes in flight (two environments serve them: a third is never
//! started because an environment is idle again before its answer leaves the
//! supervisor), pipelined on one connection or one each on two connections.
//! A deeper pipeline (8 in flight, so 8 environments) is shown for reference.
//!
//! `cargo bench --bench warm` (root). Knobs: WARM_SAMPLES (20000),
//! WARM_SECONDS (5), LAMBDALET_BIN.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{us, Client, Error, Samples};

const BENCH: &str = "warm";
const FUNCTION: &str = "echo";
const FUNCTION_128: &str = "echo-128";
const PAYLOAD: &str = r#"{"hello":"world","n":42}"#;
const BLOCK: usize = 1000;

/// The baseline: a Python process serving the echo handler on a Unix
/// socket, one JSON request per line in, one JSON answer per line out,
/// shaped like the supervisor's (id, result, StatusCode, Payload). It reads
/// as the runtime does (one recv per line, the C scanner of json).
const BASELINE_WORKER: &str = r#"import json, os, socket, sys
sys.path.insert(0, sys.argv[2])
from app import handler
scan = json.decoder.JSONDecoder().scan_once
dumps = json.JSONEncoder(separators=(",", ":")).encode
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(8)
while True:
    conn, _ = srv.accept()
    recv, sendall = conn.recv, conn.sendall
    rest = b""
    while True:
        chunk = recv(65536)
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            msg, _ = scan(line.decode(), 0)
            result = handler(msg["params"]["Payload"], None)
            sendall(b'{"id":' + dumps(msg["id"]).encode() + b',"result":{"StatusCode":200,"ExecutedVersion":"$LATEST","Payload":' + dumps(result).encode() + b"}}\n")
    conn.close()
"#;

fn invoke_line(function: &str, id: u64) -> Vec<u8> {
    format!("{{\"id\":{id},\"op\":\"Invoke\",\"params\":{{\"FunctionName\":\"{function}\",\"Payload\":{PAYLOAD}}}}}\n").into_bytes()
}

/// An answer is a success of the echo: it carries the payload back and no
/// FunctionError. A cheap check: this runs on every sample, after the timing.
fn check(line: &[u8]) -> Result<(), Error> {
    let text = std::str::from_utf8(line)?;
    if text.contains(r#""StatusCode":200"#)
        && !text.contains("FunctionError")
        && text.contains(r#""hello":"world""#)
    {
        Ok(())
    } else {
        Err(format!("unexpected answer: {text}").into())
    }
}

/// A baseline worker process, listening on its own socket.
struct Baseline {
    child: Child,
    socket: PathBuf,
}

impl Baseline {
    fn start(py: &common::Python, dir: &Path, n: usize) -> Result<Baseline, Error> {
        let socket = dir.join(format!("baseline-{n}.sock"));
        let mut cmd = Command::new(&py.executable);
        cmd.args(["-I", "-S", "-c", BASELINE_WORKER])
            .arg(&socket)
            .arg(common::example(FUNCTION))
            .stdin(Stdio::null());
        common::die_with_bench(&mut cmd);
        let child = cmd.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err("the baseline worker did not start".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Baseline { child, socket })
    }

    fn client(&self) -> Result<Client, Error> {
        Client::connect(&self.socket)
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` sequential round trips on `c`, ids from `next_id`; appends each
/// sample's duration.
fn round_trips(
    c: &mut Client,
    function: &str,
    n: usize,
    next_id: &mut u64,
    out: &mut Vec<Duration>,
) -> Result<(), Error> {
    for _ in 0..n {
        let line = invoke_line(function, *next_id);
        *next_id += 1;
        let t = Instant::now();
        c.send(&line)?;
        let answer = c.read_line()?;
        let took = t.elapsed();
        check(answer)?;
        out.push(took);
    }
    Ok(())
}

/// Invokes completed per second on one connection with `window` in flight,
/// over `run` after `warmup`.
fn pipelined(
    c: &mut Client,
    function: &str,
    window: usize,
    warmup: Duration,
    run: Duration,
) -> Result<f64, Error> {
    let mut id = 1u64 << 40;
    let mut in_flight = 0;
    for _ in 0..window {
        c.send(&invoke_line(function, id))?;
        id += 1;
        in_flight += 1;
    }
    let begin = Instant::now();
    let mut measuring_since: Option<(Instant, u64)> = None;
    let mut done = 0u64;
    let mut result = 0.0;
    while in_flight > 0 {
        check(c.read_line()?)?;
        in_flight -= 1;
        done += 1;
        let now = Instant::now();
        match measuring_since {
            None if now - begin >= warmup => measuring_since = Some((now, done)),
            Some((since, base)) if now - since >= run => {
                if result == 0.0 {
                    result = (done - base) as f64 / (now - since).as_secs_f64();
                }
                continue; // drain what is still in flight, send nothing more
            }
            _ => {}
        }
        c.send(&invoke_line(function, id))?;
        id += 1;
        in_flight += 1;
    }
    Ok(result)
}

/// Invokes completed per second by `clients` threads, each with one invoke in
/// flight on its own connection, over `run` after `warmup`.
fn parallel(
    clients: Vec<Client>,
    function: &'static str,
    warmup: Duration,
    run: Duration,
) -> Result<f64, Error> {
    let start = Instant::now();
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || -> Result<(u64, Duration), String> {
                let mut id = 1u64;
                let mut lat = Vec::new();
                while start.elapsed() < warmup {
                    round_trips(&mut c, function, 1, &mut id, &mut lat)
                        .map_err(|e| e.to_string())?;
                }
                let t = Instant::now();
                let mut n = 0u64;
                while t.elapsed() < run {
                    lat.clear();
                    round_trips(&mut c, function, 1, &mut id, &mut lat)
                        .map_err(|e| e.to_string())?;
                    n += 1;
                }
                Ok((n, t.elapsed()))
            })
        })
        .collect();
    let mut total = 0.0;
    for h in handles {
        let (n, took) = h.join().map_err(|_| "client thread panicked")??;
        total += n as f64 / took.as_secs_f64();
    }
    Ok(total)
}

/// Which environments (cgroups below the bench's parent) belong to which
/// function: each phase invokes one function only, so the cgroups that
/// appear during it are that function's.
#[derive(Default)]
struct Census {
    seen: std::collections::HashMap<String, &'static str>,
}

impl Census {
    fn alive(sup: &common::Supervisor) -> Vec<String> {
        for root in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"] {
            let dir = Path::new(root).join(&sup.cgroup_parent);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                return entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
            }
        }
        Vec::new()
    }

    /// Attributes new environments to `function`; returns how many of
    /// `function`'s environments are alive.
    fn after(&mut self, sup: &common::Supervisor, function: &'static str) -> usize {
        let alive = Census::alive(sup);
        for env in &alive {
            self.seen.entry(env.clone()).or_insert(function);
        }
        alive.iter().filter(|e| self.seen[*e] == function).count()
    }
}

fn main() -> Result<(), Error> {
    common::require_root(BENCH);
    let samples: usize = common::env_num("WARM_SAMPLES", 20_000);
    let seconds: f64 = common::env_num("WARM_SECONDS", 5.0);
    let run = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_secs(1);
    let bin = common::lambdalet_bin()?;
    let py = common::real_python()?;
    let load_before = common::load_average();
    eprintln!(
        "{BENCH}: {samples} round trips each, throughput over {seconds} s; {}; load average {load_before}",
        bin.display()
    );

    // No blank environments made ahead (`--prewarm 0`): they would sit idle
    // here, and the census below counts every environment's cgroup.
    let sup = common::Supervisor::start(&bin, &["--prewarm", "0"])?;
    // 1769 MB: one full vCPU per environment (Lambda's ratio), what two
    // environments on two cores need; and the default 128 MB, whose CPU
    // quota (7.2 ms per 100 ms) caps an environment at ~7 % of a core.
    let mut census = Census::default();
    sup.deploy(FUNCTION, &common::example(FUNCTION), 1769)?;
    census.after(&sup, FUNCTION);
    sup.deploy(FUNCTION_128, &common::example(FUNCTION), 128)?;
    census.after(&sup, FUNCTION_128);
    let dir = tempfile::Builder::new()
        .prefix("lambdalet-bench-baseline-")
        .tempdir()?;
    let base1 = Baseline::start(&py, dir.path(), 1)?;
    let base2 = Baseline::start(&py, dir.path(), 2)?;

    // ---- round trip -------------------------------------------------------
    let mut lc = sup.client()?;
    let mut bc = base1.client()?;
    let (mut lid, mut bid) = (1u64, 1u64);
    let mut scratch = Vec::new();
    round_trips(&mut lc, FUNCTION, 2000, &mut lid, &mut scratch)?;
    round_trips(&mut lc, FUNCTION_128, 500, &mut lid, &mut scratch)?;
    round_trips(&mut bc, FUNCTION, 2000, &mut bid, &mut scratch)?;
    let mut lat_l = Vec::with_capacity(samples);
    let mut lat_128 = Vec::with_capacity(samples / 4);
    let mut lat_b = Vec::with_capacity(samples);
    let started = Instant::now();
    while lat_l.len() < samples {
        let n = BLOCK.min(samples - lat_l.len());
        round_trips(&mut lc, FUNCTION, n, &mut lid, &mut lat_l)?;
        round_trips(&mut bc, FUNCTION, n, &mut bid, &mut lat_b)?;
        // A quarter as many at 128 MB: enough for its percentiles.
        round_trips(&mut lc, FUNCTION_128, n / 4, &mut lid, &mut lat_128)?;
    }
    eprintln!(
        "{BENCH}: round trips done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    drop(bc);

    // ---- throughput ------------------------------------------------------------
    let tput_base = parallel(
        vec![base1.client()?, base2.client()?],
        FUNCTION,
        warmup,
        run,
    )?;
    eprintln!("{BENCH}: baseline throughput {tput_base:.0}/s");
    let tput_two_conns = parallel(vec![sup.client()?, sup.client()?], FUNCTION, warmup, run)?;
    let envs_two_conns = census.after(&sup, FUNCTION);
    eprintln!("{BENCH}: two connections {tput_two_conns:.0}/s ({envs_two_conns} environments)");
    let tput_window2 = pipelined(&mut lc, FUNCTION, 2, warmup, run)?;
    let envs_window2 = census.after(&sup, FUNCTION);
    eprintln!(
        "{BENCH}: one connection, 2 in flight {tput_window2:.0}/s ({envs_window2} environments)"
    );
    let tput_128 = pipelined(&mut lc, FUNCTION_128, 2, warmup, run)?;
    let envs_128 = census.after(&sup, FUNCTION_128);
    eprintln!(
        "{BENCH}: 128 MB, one connection, 2 in flight {tput_128:.0}/s ({envs_128} environments)"
    );
    let tput_window8 = pipelined(&mut lc, FUNCTION, 8, warmup, run)?;
    let envs_window8 = census.after(&sup, FUNCTION);
    eprintln!(
        "{BENCH}: one connection, 8 in flight {tput_window8:.0}/s ({envs_window8} environments)"
    );
    let load_after = common::load_average();
    drop(lc);
    drop(sup);

    // ---- report -----------------------------------------------------------------
    let l = Samples::new(lat_l);
    let l128 = Samples::new(lat_128);
    let b = Samples::new(lat_b);
    let row = |name: &str, s: &Samples| {
        vec![
            name.to_string(),
            s.len().to_string(),
            us(s.min()),
            us(s.pct(50.0)),
            us(s.pct(90.0)),
            us(s.pct(99.0)),
            us(s.pct(99.9)),
            us(s.max()),
            us(s.mean()),
        ]
    };
    let mut out = String::new();
    let _ = writeln!(out, "### Warm invokes ({})\n", common::machine());
    let _ = writeln!(
        out,
        "`cargo bench --bench warm` · handler examples/echo · payload `{PAYLOAD}` · python {} · \
         load average {load_before} before, {load_after} after\n",
        py.version
    );
    out.push_str(&common::table(
        &[
            "sequential round trip, µs",
            "n",
            "min",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "mean",
        ],
        &[
            row(
                "**lambdalet**, 1769 MB (1 vCPU): client → supervisor → environment",
                &l,
            ),
            row("lambdalet, 128 MB (0.07 vCPU quota)", &l128),
            row("baseline: client → Python echo worker, no supervisor", &b),
        ],
    ));
    let _ = writeln!(
        out,
        "\nThe supervisor's hop (and the runtime's context and bookkeeping) costs {} µs at p50 \
         ({} the baseline).\n",
        us(l.pct(50.0).saturating_sub(b.pct(50.0))),
        common::ratio(l.pct(50.0), b.pct(50.0))
    );
    let tput = |name: &str, envs: String, v: f64| vec![name.to_string(), envs, format!("{v:.0}")];
    let header = format!("throughput over {seconds} s");
    out.push_str(&common::table(
        &[&header, "environments of the function", "invokes/s"],
        &[
            tput(
                "**lambdalet**, 1769 MB, one connection, 2 in flight (pipelined)",
                envs_window2.to_string(),
                tput_window2,
            ),
            tput(
                "**lambdalet**, 1769 MB, two connections, 1 in flight each",
                envs_two_conns.to_string(),
                tput_two_conns,
            ),
            tput(
                "lambdalet, 128 MB, one connection, 2 in flight",
                envs_128.to_string(),
                tput_128,
            ),
            tput(
                "lambdalet, 1769 MB, one connection, 8 in flight (for reference)",
                envs_window8.to_string(),
                tput_window8,
            ),
            tput(
                "baseline: two Python echo workers, one client each",
                "2 workers".into(),
                tput_base,
            ),
        ],
    ));
    let best2 = tput_window2.max(tput_two_conns);
    let _ =
        writeln!(
        out,
        "\nTargets (issue 2), at 1769 MB: round trip p50 ≤ 100 µs: {} µs ({}); ≥ 15,000 invokes/s \
         with two environments: {best2:.0}/s ({}).",
        us(l.pct(50.0)),
        if l.pct(50.0) <= Duration::from_micros(100) { "met" } else { "not met" },
        if best2 >= 15_000.0 { "met" } else { "not met" },
    );
    println!("{out}");
    common::write_results(BENCH, &out);
    Ok(())
}
