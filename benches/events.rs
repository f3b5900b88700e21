//! Asynchronous invocations: how fast the supervisor accepts `Event` invokes
//! durably (each one fsynced to `events.redb` before its 202), and how fast a
//! backlog of events drains through a trivial function; each beside a
//! baseline measured in the same run.
//!
//! Every round (EVENTS_ROUNDS, 5) takes, in this order:
//!
//! 1. **Synchronous invokes/s** of `echo` (examples/echo, 1769 MB: a vCPU per
//!    environment), the handler the events go to: C connections
//!    (EVENTS_CLIENTS: 1, 8 and 32), one invoke in flight each, for
//!    EVENTS_SYNC_SECONDS (1 s). Environments are warm: a warm-up before the
//!    first round starts as many as the most connections.
//! 2. **The disk's fsync rate**, the accepts' baseline: what one fsync per
//!    accept would give. `write(100 B)` + `fdatasync` in a loop on a file in
//!    the state dir's filesystem for EVENTS_FSYNC_SECONDS (0.5 s), appending
//!    (the file grows, as a log does), then overwriting the same 100 bytes
//!    (no size change, as in a preallocated file). Taken right before the
//!    accepts in every round: this host's disk changes speed by the minute.
//! 3. **Durable accepts/s**: one connection with one Event invoke in flight
//!    (EVENTS_SEQUENTIAL, 500: a lone commit each), then for each C,
//!    EVENTS_ACCEPTS (20,000) Event invokes of a 100-byte payload over C
//!    connections, each keeping EVENTS_WINDOW (16) in flight (pipelined).
//!    Each configuration gets a function of its own (the same code) with
//!    reserved concurrency 0 (PutFunctionConcurrency), so that nothing is
//!    delivered while the accepts are timed: its events back off and stay
//!    queued. The function is deleted afterwards, which drops its events.
//!    Latency is per request, from its line written to its answer read (so
//!    it includes waiting behind the connection's other requests). The
//!    supervisor's CPU per accept is split between its loop (the main
//!    thread) and the store's writer thread (`event-store`), from
//!    /proc/PID/task/TID/stat.
//! 4. **Drain**: `echo` gets reserved concurrency 0, EVENTS_DRAIN (5,000)
//!    events are accepted (8 connections × EVENTS_WINDOW), then
//!    DeleteFunctionConcurrency lifts the throttle and GetEventQueue is polled
//!    every 25 ms until its Depth is 0. Events/s from the lift to an empty
//!    queue, and of the bulk: from the first poll that saw the queue move
//!    (before it, the queue waited after the lift) to the first at which
//!    only backed-off events were left (the few that were dispatched, and
//!    throttled, while the function was throttled: they wait out a backoff
//!    of 1 s or more whatever the lift). Its baseline is the round's best
//!    synchronous rate (1.).
//!
//! The supervisor runs with its defaults (`--prewarm 4`, `--async-time-scale
//! 1`: Lambda's backoff of 1 s doubling for throttled events). The clients
//! run on the same CPUs as the supervisor. Results are medians over the
//! rounds, ratios taken within each round; every answer is checked (202 for
//! an accept, a 200 without FunctionError for a synchronous invoke) and any
//! other answer makes the bench exit non-zero after printing the results.
//! Nothing is written but the supervisor's temporary state dir, removed at
//! the end with the bench's cgroups.
//!
//! `cargo bench --bench events` (root). Knobs: EVENTS_ROUNDS (5),
//! EVENTS_CLIENTS (1,8,32), EVENTS_WINDOW (16), EVENTS_ACCEPTS (20000),
//! EVENTS_SEQUENTIAL (500), EVENTS_DRAIN (5000), EVENTS_SYNC_SECONDS (1),
//! EVENTS_FSYNC_SECONDS (0.5), LAMBDALET_BIN.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{Client, Error, Samples};
use serde_json::json;

const BENCH: &str = "events";
/// The function of the synchronous baseline and of the drain.
const FUNCTION: &str = "echo";
const MEMORY_MB: u32 = 1769;
/// A throttled function whose accepts mark when the store has caught up.
const BARRIER: &str = "barrier";
/// Connections of the drain's accepts.
const DRAIN_CLIENTS: usize = 8;
/// An answer later than this fails the bench (a hang is a bug).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the drain may take before the bench gives up on it.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// GetEventQueue is polled this often during the drain: the resolution of
/// its timing (2–3 % of a 1 s drain), few enough calls not to load the loop.
const POLL: Duration = Duration::from_millis(25);

/// The payload: 100 bytes of JSON, the request's number in it.
fn payload(n: u64) -> String {
    let p = format!(r#"{{"n":"{n:010}","pad":"{}"}}"#, "x".repeat(73));
    debug_assert_eq!(p.len(), 100);
    p
}

fn invoke_line(function: &str, id: u64, event: bool) -> Vec<u8> {
    let kind = if event {
        r#","InvocationType":"Event""#
    } else {
        ""
    };
    format!(
        "{{\"id\":{id},\"op\":\"Invoke\",\"params\":{{\"FunctionName\":\"{function}\"{kind},\"Payload\":{}}}}}\n",
        payload(id)
    )
    .into_bytes()
}

/// The id of an answer line (`{"id":N,…`), read without a JSON parse: the
/// client shares the supervisor's two CPUs.
fn answer_id(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"id\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether an answer is what the kind of invoke should get; else the kind of
/// error it is, for the report.
fn check(line: &[u8], event: bool) -> Result<(), String> {
    if event {
        if contains(line, br#""StatusCode":202"#) {
            return Ok(());
        }
    } else if contains(line, br#""StatusCode":200"#) && !contains(line, b"FunctionError") {
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
    Err(match v.get("error") {
        Some(e) => e["type"].as_str().unwrap_or("error").to_string(),
        None if contains(line, b"FunctionError") => "FunctionError".into(),
        None => format!("unexpected answer: {}", String::from_utf8_lossy(line)),
    })
}

/// What a run of invokes over several connections gave.
#[derive(Default)]
struct Run {
    ok: u64,
    /// Successful requests per second, first request written → last answer read.
    rate: f64,
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

/// `clients` connections, each keeping `window` invokes of `function` in
/// flight until it has sent `per_client` or `duration` has passed, then
/// reading what is still in flight. Each request is timed from its line
/// written to its answer read.
fn drive(
    socket: &Path,
    function: &str,
    event: bool,
    clients: usize,
    window: usize,
    per_client: u64,
    duration: Option<Duration>,
) -> Result<Run, Error> {
    let barrier = Barrier::new(clients + 1);
    type Conn = Result<(u64, Vec<Duration>, BTreeMap<String, u64>, Instant), String>;
    let (results, begin) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || -> Conn {
                    let stream = UnixStream::connect(socket).map_err(|e| e.to_string());
                    let stream = stream.and_then(|st| {
                        st.set_read_timeout(Some(READ_TIMEOUT))
                            .map_err(|e| e.to_string())?;
                        Ok(st)
                    });
                    barrier.wait();
                    let mut writer = stream?;
                    let mut reader = BufReader::with_capacity(
                        1 << 16,
                        writer.try_clone().map_err(|e| e.to_string())?,
                    );
                    let begin = Instant::now();
                    let capacity = per_client.min(1 << 16) as usize;
                    let mut sent_at: Vec<Instant> = Vec::with_capacity(capacity);
                    let mut lat = Vec::with_capacity(capacity);
                    let mut errors = BTreeMap::new();
                    let mut ok = 0u64;
                    let mut line = Vec::with_capacity(512);
                    let more = |sent: u64| {
                        sent < per_client && duration.is_none_or(|d| begin.elapsed() < d)
                    };
                    while sent_at.len() < window && more(sent_at.len() as u64) {
                        let id = sent_at.len() as u64;
                        sent_at.push(Instant::now());
                        writer
                            .write_all(&invoke_line(function, id, event))
                            .map_err(|e| e.to_string())?;
                    }
                    let mut answered = 0usize;
                    while answered < sent_at.len() {
                        line.clear();
                        match reader.read_until(b'\n', &mut line) {
                            Ok(0) => return Err("the supervisor closed the connection".into()),
                            Ok(_) => {}
                            Err(e) => {
                                return Err(format!(
                                    "after {answered} of {} answers: {e}",
                                    sent_at.len()
                                ))
                            }
                        }
                        let at = Instant::now();
                        answered += 1;
                        let id = answer_id(&line)
                            .filter(|&id| (id as usize) < sent_at.len())
                            .ok_or_else(|| {
                                format!("an answer without a known id: {}", line.escape_ascii())
                            })?;
                        match check(&line, event) {
                            Ok(()) => {
                                ok += 1;
                                lat.push(at - sent_at[id as usize]);
                            }
                            Err(kind) => *errors.entry(kind).or_default() += 1,
                        }
                        if more(sent_at.len() as u64) {
                            let id = sent_at.len() as u64;
                            sent_at.push(Instant::now());
                            writer
                                .write_all(&invoke_line(function, id, event))
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    Ok((ok, lat, errors, Instant::now()))
                })
            })
            .collect();
        barrier.wait();
        let begin = Instant::now();
        let results: Vec<Conn> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("client thread panicked".into()))
            })
            .collect();
        (results, begin)
    });
    let mut run = Run::default();
    let mut end = begin;
    for r in results {
        let (ok, lat, errors, done) = r?;
        run.ok += ok;
        run.latencies.extend(lat);
        for (k, v) in errors {
            *run.errors.entry(k).or_default() += v;
        }
        end = end.max(done);
    }
    run.rate = run.ok as f64 / (end - begin).as_secs_f64().max(1e-9);
    Ok(run)
}

/// `write(100 B)` + `fdatasync` per iteration for `run`, appending or
/// overwriting in place: how many per second.
fn fsync_rate(path: &Path, append: bool, run: Duration) -> Result<f64, Error> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let buf = [b'x'; 100];
    let begin = Instant::now();
    let mut n = 0u64;
    let mut offset = 0u64;
    while begin.elapsed() < run {
        file.write_all_at(&buf, offset)?;
        if append {
            offset += buf.len() as u64;
        }
        file.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / begin.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(rate)
}

/// CPU time (user + system) of the supervisor's main thread (its loop) and
/// of its event store's writer thread, from /proc/PID/task/TID/stat.
fn thread_cpu(pid: u32) -> (Duration, Duration) {
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (mut main, mut writer) = (Duration::ZERO, Duration::ZERO);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (main, writer);
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime: fields 14 and 15, at 11 and 12 after the name.
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
            .sum();
        let cpu = Duration::from_secs_f64(ticks as f64 / hz);
        if t.file_name().to_str() == Some(&pid.to_string()) {
            main = cpu;
        } else if comm.trim() == "event-store" {
            writer = cpu;
        }
    }
    (main, writer)
}

/// One accept measurement and what it cost.
struct Accepts {
    run: Run,
    /// Supervisor CPU per accept: its loop, its writer thread.
    loop_cpu: Duration,
    writer_cpu: Duration,
    /// The host's CPUs busy, as a fraction, over the run, and the host's
    /// busy CPU time per accept (the clients' included).
    host_busy: f64,
    host_cpu: Duration,
}

fn measure_accepts(
    sup: &common::Supervisor,
    c: &mut Client,
    function: &str,
    clients: usize,
    window: usize,
    total: u64,
) -> Result<Accepts, Error> {
    let (main0, writer0) = thread_cpu(sup.pid());
    let (busy0, all0) = common::host_cpu();
    let run = drive(
        &sup.socket,
        function,
        true,
        clients,
        window,
        total / clients as u64,
        None,
    )?;
    let (busy1, all1) = common::host_cpu();
    let (main1, writer1) = thread_cpu(sup.pid());
    let n = run.ok.max(1) as u32;
    let depth = c.call("GetEventQueue", json!({"FunctionName": function}))?["Depth"]
        .as_u64()
        .unwrap_or(0);
    if depth < run.ok {
        return Err(format!(
            "{function}: {} events accepted but the queue holds {depth}",
            run.ok
        )
        .into());
    }
    Ok(Accepts {
        host_cpu: (busy1 - busy0) / n,
        loop_cpu: (main1 - main0) / n,
        writer_cpu: (writer1 - writer0) / n,
        host_busy: (busy1 - busy0).as_secs_f64() / (all1 - all0).as_secs_f64().max(1e-9),
        run,
    })
}

/// One drain: from the lift of the throttle to an empty queue.
struct Drain {
    accepted: Run,
    /// Lift (DeleteFunctionConcurrency answered) → Depth 0.
    total: Duration,
    /// Lift → the first poll that saw the queue shorter.
    first_move: Duration,
    /// Events still queued at that poll.
    depth_at_first_move: u64,
    /// Lift → the first poll after the first move at which every event
    /// left was waiting out a backoff (none ready or in flight), and how
    /// many were left then: the events throttled while the function was.
    bulk_done: Duration,
    backed_off: u64,
    /// The most events in flight seen by a poll.
    peak_in_flight: u64,
    host_busy: f64,
    /// The host's busy CPU time per event.
    host_cpu: Duration,
    /// Supervisor CPU per event delivered: its loop, its writer thread.
    loop_cpu: Duration,
    writer_cpu: Duration,
    /// Environments the drain started (cold starts of the function), and
    /// those the function had before.
    cold_starts: u64,
    envs_before: u64,
}

/// `function`'s cold starts so far and its environments now (GetMetrics).
fn environments(c: &mut Client, function: &str) -> Result<(u64, u64), Error> {
    let m = c.call("GetMetrics", json!({}))?;
    let f = m["Functions"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["FunctionName"] == function))
        .ok_or_else(|| format!("GetMetrics: no {function}"))?;
    let g = &f["Gauges"];
    let now = [
        "EnvironmentsIdle",
        "EnvironmentsBusy",
        "EnvironmentsStarting",
    ]
    .iter()
    .filter_map(|k| g[*k].as_u64())
    .sum();
    Ok((f["Counters"]["ColdStarts"].as_u64().unwrap_or(0), now))
}

/// GetEventQueue of `function`.
struct QueueNow {
    depth: u64,
    ready: u64,
    in_flight: u64,
}

fn queue(c: &mut Client, function: &str) -> Result<QueueNow, Error> {
    let q = c.call("GetEventQueue", json!({"FunctionName": function}))?;
    let field = |k: &str| q[k].as_u64().unwrap_or(0);
    Ok(QueueNow {
        depth: field("Depth"),
        ready: field("Ready"),
        in_flight: field("InFlight"),
    })
}

fn measure_drain(
    sup: &common::Supervisor,
    c: &mut Client,
    n: u64,
    window: usize,
) -> Result<Drain, Error> {
    c.call(
        "PutFunctionConcurrency",
        json!({"FunctionName": FUNCTION, "ReservedConcurrentExecutions": 0}),
    )?;
    let accepted = drive(
        &sup.socket,
        FUNCTION,
        true,
        DRAIN_CLIENTS,
        window,
        n / DRAIN_CLIENTS as u64,
        None,
    )?;
    let depth0 = queue(c, FUNCTION)?.depth;
    let (cold0, envs_before) = environments(c, FUNCTION)?;
    let (main0, writer0) = thread_cpu(sup.pid());
    let (busy0, all0) = common::host_cpu();
    c.call(
        "DeleteFunctionConcurrency",
        json!({"FunctionName": FUNCTION}),
    )?;
    let lifted = Instant::now();
    let mut first: Option<(Duration, u64)> = None;
    let mut bulk: Option<(Duration, u64)> = None;
    let mut peak_in_flight = 0;
    loop {
        let q = queue(c, FUNCTION)?;
        let (depth, at) = (q.depth, lifted.elapsed());
        peak_in_flight = peak_in_flight.max(q.in_flight);
        if first.is_none() && depth < depth0 {
            first = Some((at, depth));
        }
        if first.is_some() && bulk.is_none() && q.ready + q.in_flight == 0 {
            bulk = Some((at, depth));
        }
        if depth == 0 {
            let (busy1, all1) = common::host_cpu();
            let (main1, writer1) = thread_cpu(sup.pid());
            let (first_move, depth_at_first_move) = first.unwrap_or((at, 0));
            let (bulk_done, backed_off) = bulk.unwrap_or((at, 0));
            let n = depth0.max(1) as u32;
            return Ok(Drain {
                host_cpu: (busy1 - busy0) / n,
                loop_cpu: (main1 - main0) / n,
                writer_cpu: (writer1 - writer0) / n,
                cold_starts: environments(c, FUNCTION)?.0 - cold0,
                envs_before,
                accepted,
                total: at,
                first_move,
                depth_at_first_move,
                bulk_done,
                backed_off,
                peak_in_flight,
                host_busy: (busy1 - busy0).as_secs_f64() / (all1 - all0).as_secs_f64().max(1e-9),
            });
        }
        if at > DRAIN_LIMIT {
            return Err(format!(
                "the queue of {FUNCTION} did not drain within {DRAIN_LIMIT:?} of the lift: \
                 {depth} of {depth0} events left\n{}",
                sup.log_tail(20)
            )
            .into());
        }
        std::thread::sleep(POLL);
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

fn range(v: &[f64], digits: usize) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{lo:.digits$}–{hi:.digits$}")
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The numbers of one accept configuration over the rounds.
#[derive(Default)]
struct Series {
    rate: Vec<f64>,
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    loop_us: Vec<f64>,
    writer_us: Vec<f64>,
    busy: Vec<f64>,
    host_us: Vec<f64>,
    /// Accepts/s ÷ that round's fsyncs/s.
    per_fsync: Vec<f64>,
    /// Accepts/s ÷ that round's synchronous invokes/s with as many connections.
    per_sync: Vec<f64>,
}

impl Series {
    fn push(&mut self, a: &Accepts, fsyncs: f64, sync: Option<f64>) {
        let s = Samples::new(a.run.latencies.clone());
        self.per_fsync.push(a.run.rate / fsyncs.max(1e-9));
        if let Some(sync) = sync {
            self.per_sync.push(a.run.rate / sync.max(1e-9));
        }
        self.rate.push(a.run.rate);
        self.p50_ms.push(s.pct(50.0).as_secs_f64() * 1e3);
        self.p99_ms.push(s.pct(99.0).as_secs_f64() * 1e3);
        self.loop_us.push(a.loop_cpu.as_secs_f64() * 1e6);
        self.writer_us.push(a.writer_cpu.as_secs_f64() * 1e6);
        self.busy.push(a.host_busy * 100.0);
        self.host_us.push(a.host_cpu.as_secs_f64() * 1e6);
    }
}

fn connections(n: usize) -> String {
    format!("{n} connection{}", if n == 1 { "" } else { "s" })
}

/// Markdown for a median with its range, e.g. `12.3× (10.1–14.0)`.
fn times(v: &[f64], digits: usize) -> String {
    if v.is_empty() {
        return "–".into();
    }
    format!("{:.digits$}× ({}×)", median(v.to_vec()), range(v, digits))
}

fn main() -> Result<(), Error> {
    common::require_root(BENCH);
    let rounds: usize = common::env_num("EVENTS_ROUNDS", 5usize).max(1);
    let clients: Vec<usize> = std::env::var("EVENTS_CLIENTS")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .filter(|&c| c > 0)
        .collect();
    let window: usize = common::env_num("EVENTS_WINDOW", 16usize).max(1);
    let accepts: u64 = common::env_num("EVENTS_ACCEPTS", 20_000);
    let sequential: u64 = common::env_num("EVENTS_SEQUENTIAL", 500);
    let drain_n: u64 = common::env_num("EVENTS_DRAIN", 5_000u64).max(DRAIN_CLIENTS as u64);
    let sync_run = Duration::from_secs_f64(common::env_num("EVENTS_SYNC_SECONDS", 1.0));
    let fsync_run = Duration::from_secs_f64(common::env_num("EVENTS_FSYNC_SECONDS", 0.5));
    let bin = common::lambdalet_bin()?;
    let load_before = common::load_average();
    let started = Instant::now();
    eprintln!(
        "{BENCH}: {rounds} rounds; clients {clients:?} × {window} in flight, {accepts} accepts \
         each; drain of {drain_n}; {}; load average {load_before}",
        bin.display()
    );

    let sup = common::Supervisor::start(&bin, &[])?;
    let mut c = sup.client()?;
    c.set_read_timeout(Some(READ_TIMEOUT))?;
    sup.deploy(FUNCTION, &common::example(FUNCTION), MEMORY_MB)?;
    // Warm-up: as many warm environments as the most connections.
    let most = clients.iter().copied().max().unwrap_or(1);
    let warm = drive(&sup.socket, FUNCTION, false, most, 1, 20, None)?;
    if !warm.errors.is_empty() {
        return Err(format!("warm-up: {:?}\n{}", warm.errors, sup.log_tail(20)).into());
    }
    // Throttled: its events stay queued (a few per round).
    c.call(
        "CreateFunction",
        json!({
            "FunctionName": BARRIER, "Runtime": "python3", "Handler": "app.handler",
            "Code": {"Path": common::example(FUNCTION)},
        }),
    )?;
    c.call(
        "PutFunctionConcurrency",
        json!({"FunctionName": BARRIER, "ReservedConcurrentExecutions": 0}),
    )?;
    // In the state dir's filesystem: the bench's temporary dir holds both.
    let probe = sup
        .socket
        .parent()
        .ok_or("the socket has no parent dir")?
        .join("fsync-probe");

    let mut fsync_append = Vec::new();
    let mut fsync_inplace = Vec::new();
    let mut sync: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut best_sync: Vec<f64> = Vec::new();
    let mut seq = Series::default();
    let mut piped: BTreeMap<usize, Series> = BTreeMap::new();
    let mut drains: Vec<Drain> = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut delete_ms: Vec<f64> = Vec::new();
    let mut after_delete_ms: Vec<f64> = Vec::new();
    let mut add_errors = |run: &Run, what: &str| {
        for (k, v) in &run.errors {
            *errors.entry(format!("{what}: {k}")).or_default() += v;
        }
    };

    for round in 0..rounds {
        let mut best = 0.0f64;
        for &n in &clients {
            let run = drive(&sup.socket, FUNCTION, false, n, 1, u64::MAX, Some(sync_run))?;
            add_errors(&run, &format!("sync, {n} connections"));
            sync.entry(n).or_default().push(run.rate);
            best = best.max(run.rate);
        }
        best_sync.push(best);
        // Right before the accepts: this disk's speed changes by the minute.
        fsync_append.push(fsync_rate(&probe, true, fsync_run)?);
        fsync_inplace.push(fsync_rate(&probe, false, fsync_run)?);
        let fsyncs = fsync_append[round].max(fsync_inplace[round]);
        // One function per configuration, throttled: accepts only.
        let configs: Vec<(usize, usize, u64)> = std::iter::once((1, 1, sequential))
            .filter(|_| sequential > 0)
            .chain(clients.iter().map(|&n| (n, window, accepts)))
            .collect();
        for (n, w, total) in configs {
            let name = format!("accept-{round}-{n}x{w}");
            c.call(
                "CreateFunction",
                json!({
                    "FunctionName": name, "Runtime": "python3", "Handler": "app.handler",
                    "Code": {"Path": common::example(FUNCTION)}, "MemorySize": MEMORY_MB,
                }),
            )?;
            c.call(
                "PutFunctionConcurrency",
                json!({"FunctionName": name, "ReservedConcurrentExecutions": 0}),
            )?;
            let a = measure_accepts(&sup, &mut c, &name, n, w, total)?;
            add_errors(&a.run, &format!("accept, {n} × {w}"));
            if w == 1 && n == 1 {
                seq.push(&a, fsyncs, None);
            } else {
                let same = sync.get(&n).and_then(|v| v.last().copied());
                piped.entry(n).or_default().push(&a, fsyncs, same);
            }
            let t = Instant::now();
            c.call("DeleteFunction", json!({"FunctionName": name}))?;
            let deleted = t.elapsed();
            // The store drops the deleted function's events in one
            // transaction, after the answer: an accept sent now waits for
            // it, so it is timed, and the next measurement starts after it.
            let t = Instant::now();
            c.call(
                "Invoke",
                json!({"FunctionName": BARRIER, "InvocationType": "Event", "Payload": {}}),
            )?;
            if total == accepts {
                delete_ms.push(deleted.as_secs_f64() * 1e3);
                after_delete_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let d = measure_drain(&sup, &mut c, drain_n, window)?;
        add_errors(&d.accepted, "drain's accepts");
        eprintln!(
            "{BENCH}: round {} of {rounds}: fsync {:.0}/s (append) {:.0}/s (in place); \
             accepts {}/s (1 × 1) {}; drain {:.0}/s (first move after {:.0} ms); {:.0} s so far",
            round + 1,
            fsync_append[round],
            fsync_inplace[round],
            seq.rate.last().map_or("-".into(), |r| format!("{r:.0}")),
            piped
                .iter()
                .map(|(n, s)| format!("{:.0}/s ({n} × {window})", s.rate[round]))
                .collect::<Vec<_>>()
                .join(" "),
            d.accepted.ok as f64 / d.total.as_secs_f64(),
            d.first_move.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64()
        );
        drains.push(d);
    }
    let load_after = common::load_average();
    let alive = c.call("ListFunctions", json!({})).is_ok();
    if alive {
        for f in [BARRIER, FUNCTION] {
            let _ = c.call("DeleteFunction", json!({"FunctionName": f}));
        }
    }
    drop(c);
    // Throttles and dropped events are what the bench asks for.
    let unusual: Vec<String> = sup
        .unusual_log_lines()
        .into_iter()
        .filter(|l| {
            !l.contains(": reserved concurrency ")
                && !l.contains("queued event(s) of deleted function")
        })
        .collect();
    let cgroup_parent = sup.cgroup_parent.clone();
    drop(sup);
    let leftovers = common::processes_in_cgroups_named(&cgroup_parent);

    // ---- report -------------------------------------------------------------------
    let m = |v: &[f64]| median(v.to_vec());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Asynchronous invocations ({})\n",
        common::machine()
    );
    let _ = writeln!(
        out,
        "`cargo bench --bench events` · {rounds} rounds: medians (range) · payload 100 B · \
         handler examples/echo, {MEMORY_MB} MB · load average {load_before} before, \
         {load_after} after · {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    let accept_row = |name: String, s: &Series| {
        vec![
            name,
            thousands(m(&s.rate)),
            range(&s.rate, 0),
            format!("{:.2}", m(&s.p50_ms)),
            format!("{:.2}", m(&s.p99_ms)),
            times(&s.per_fsync, 1),
            times(&s.per_sync, 1),
            format!("{:.0} + {:.0}", m(&s.loop_us), m(&s.writer_us)),
            format!("{:.0} ({:.0} %)", m(&s.host_us), m(&s.busy)),
        ]
    };
    let mut rows = vec![accept_row("1 connection, 1 in flight".into(), &seq)];
    for (&n, s) in &piped {
        rows.push(accept_row(
            format!("{} × {window} in flight", connections(n)),
            s,
        ));
    }
    out.push_str(&common::table(
        &[
            "durable Event accepts (202 after fsync)",
            "accepts/s",
            "range",
            "latency p50, ms",
            "p99",
            "÷ fsyncs/s",
            "÷ sync invokes/s, as many connections",
            "supervisor CPU per accept, µs: loop + writer",
            "host CPU per accept, µs (busy)",
        ],
        &rows,
    ));
    let _ = writeln!(out);
    let mut rows = vec![
        vec![
            "the disk: write 100 B + fdatasync, appending".into(),
            thousands(m(&fsync_append)),
            range(&fsync_append, 0),
        ],
        vec![
            "the disk: write 100 B + fdatasync, in place".into(),
            thousands(m(&fsync_inplace)),
            range(&fsync_inplace, 0),
        ],
    ];
    for (n, v) in &sync {
        rows.push(vec![
            format!(
                "synchronous invokes of echo, {} × 1 in flight",
                connections(*n)
            ),
            thousands(m(v)),
            range(v, 0),
        ]);
    }
    out.push_str(&common::table(&["baselines", "per s", "range"], &rows));
    let _ = writeln!(
        out,
        "\n`÷ fsyncs/s` divides each round's accepts/s by the faster of that round's two fsync \
         loops (the group-commit gain); `÷ sync invokes/s` by that round's synchronous rate with \
         as many connections.\n\nDeleteFunction of a function with its {accepts} queued events \
         is answered in {:.0} ms (median; max {:.0}), but a lone accept of another function sent \
         right after it waits {:.0} ms ({}) for its 202: the deleted events are removed 1,000 \
         per batch, one batch with the writer at a time, so the accept is committed between \
         two of them (the bench starts each measurement after that accept).\n",
        m(&delete_ms),
        delete_ms.iter().copied().fold(0.0, f64::max),
        m(&after_delete_ms),
        range(&after_delete_ms, 0),
    );

    let per = |f: &dyn Fn(&Drain) -> f64| -> Vec<f64> { drains.iter().map(f).collect() };
    let accept_rates = per(&|d| d.accepted.rate);
    let drain_total = per(&|d| d.accepted.ok as f64 / d.total.as_secs_f64());
    let drain_bulk = per(&|d| {
        (d.depth_at_first_move - d.backed_off) as f64
            / (d.bulk_done - d.first_move).as_secs_f64().max(1e-9)
    });
    let bulk_ms = per(&|d| d.bulk_done.as_secs_f64() * 1e3);
    let backed_off = per(&|d| d.backed_off as f64);
    let vs_sync = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .zip(&best_sync)
            .map(|(d, s)| d / s.max(1e-9))
            .collect()
    };
    let first_ms = per(&|d| d.first_move.as_secs_f64() * 1e3);
    let total_ms = per(&|d| d.total.as_secs_f64() * 1e3);
    let colds = per(&|d| d.cold_starts as f64);
    let envs_before = per(&|d| d.envs_before as f64);
    let peaks = per(&|d| d.peak_in_flight as f64);
    let rows = vec![
        vec![
            format!(
                "{drain_n} events accepted first ({DRAIN_CLIENTS} connections × {window} in \
                 flight, throttled)"
            ),
            thousands(m(&accept_rates)),
            range(&accept_rates, 0),
            "".into(),
        ],
        vec![
            "**drain**: throttle lifted → queue empty".into(),
            thousands(m(&drain_total)),
            range(&drain_total, 0),
            times(&vs_sync(&drain_total), 2),
        ],
        vec![
            "drain of the events not backed off: the queue's first move → only backed-off \
             events left"
                .into(),
            thousands(m(&drain_bulk)),
            range(&drain_bulk, 0),
            times(&vs_sync(&drain_bulk), 2),
        ],
        vec![
            "baseline: synchronous invokes, the round's best connection count".into(),
            thousands(m(&best_sync)),
            range(&best_sync, 0),
            "1×".into(),
        ],
    ];
    out.push_str(&common::table(
        &[
            "end to end, examples/echo",
            "events or invokes/s",
            "range",
            "÷ sync",
        ],
        &rows,
    ));
    let _ = writeln!(
        out,
        "\nDrain of {drain_n} events: {:.0} ms from the lift to an empty queue ({}), of which \
         {:.0} ms ({}) before the queue first moved; after {:.0} ms ({}) only the {:.0} ({}) \
         events throttled while the function was were left, waiting out their backoff. The \
         host's CPUs {:.0} % busy, {:.0} µs of \
         CPU per event; the supervisor's CPU per event {:.0} µs in its loop + {:.0} µs in its writer thread; at \
         most {:.0} events in flight at a poll ({}); environments started by the drain (cold \
         starts) {:.0} ({}), though the function had {:.0} ({}) already, idle.\n",
        m(&total_ms),
        range(&total_ms, 0),
        m(&first_ms),
        range(&first_ms, 0),
        m(&bulk_ms),
        range(&bulk_ms, 0),
        m(&backed_off),
        range(&backed_off, 0),
        m(&per(&|d| d.host_busy * 100.0)),
        m(&per(&|d| d.host_cpu.as_secs_f64() * 1e6)),
        m(&per(&|d| d.loop_cpu.as_secs_f64() * 1e6)),
        m(&per(&|d| d.writer_cpu.as_secs_f64() * 1e6)),
        m(&peaks),
        range(&peaks, 0),
        m(&colds),
        range(&colds, 0),
        m(&envs_before),
        range(&envs_before, 0),
    );
    let unexpected: u64 = errors.values().sum();
    if errors.is_empty() {
        let _ = writeln!(out, "Errors: none.\n");
    } else {
        let _ = writeln!(out, "**Errors: {unexpected}**:\n");
        let rows: Vec<Vec<String>> = errors
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        out.push_str(&common::table(&["error", "count"], &rows));
        let _ = writeln!(out);
    }
    if !alive {
        let _ = writeln!(out, "**The supervisor did not answer after the run.**\n");
    }
    out.push_str(&common::log_summary("The supervisor's log", &unusual));
    if !leftovers.is_empty() {
        let _ = writeln!(
            out,
            "\n**Processes left in the bench's cgroups after the supervisor stopped: {leftovers:?}**"
        );
    }
    println!("{out}");
    if unexpected > 0 || !alive || !leftovers.is_empty() {
        eprintln!("{BENCH}: FAILED: {unexpected} unexpected answer(s), see above");
        std::process::exit(1);
    }
    Ok(())
}
