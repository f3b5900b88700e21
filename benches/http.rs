//! The HTTP front's cost: warm invokes of the `echo` function
//! (examples/echo, 1769 MB) through `serve --http` (the Lambda Invoke API,
//! `POST /2015-03-31/functions/echo/invocations`) beside the same invokes
//! over the supervisor's Unix socket, in the same run, on the same
//! supervisor and the same environments.
//!
//! Round trip: one client, sequential invokes, samples taken in alternating
//! blocks of socket and HTTP so that the machine's noise falls on both.
//! Throughput: `c` clients, each with one invoke in flight on its own
//! keep-alive connection, for HTTP_SECONDS after a second of warm-up; and,
//! when Debian's `wrk` is there (installed with apt-get if missing), wrk's
//! own numbers for the HTTP side.
//!
//! `cargo bench --bench http` (root). Knobs: HTTP_SAMPLES (4000),
//! HTTP_SECONDS (5), LAMBDALET_BIN.

mod common;

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{us, Client, Error, Samples};

const BENCH: &str = "http";
const FUNCTION: &str = "echo";
const PAYLOAD: &str = r#"{"hello":"world","n":42}"#;
const BLOCK: usize = 500;

fn main() {
    common::require_root(BENCH);
    if let Err(e) = run() {
        eprintln!("{BENCH}: {e}");
        std::process::exit(1);
    }
}

fn invoke_line(id: u64) -> Vec<u8> {
    format!("{{\"id\":{id},\"op\":\"Invoke\",\"params\":{{\"FunctionName\":\"{FUNCTION}\",\"Payload\":{PAYLOAD}}}}}\n").into_bytes()
}

fn check_text(text: &str) -> Result<(), Error> {
    if text.contains(r#""hello":"world""#) && !text.contains("FunctionError") {
        Ok(())
    } else {
        Err(format!("unexpected answer: {text}").into())
    }
}

/// One invoke over the socket.
fn socket_invoke(c: &mut Client, id: u64) -> Result<(), Error> {
    c.send(&invoke_line(id))?;
    check_text(std::str::from_utf8(c.read_line()?)?)
}

/// One invoke over HTTP, on the agent's kept-alive connection.
fn http_invoke(agent: &ureq::Agent, url: &str) -> Result<(), Error> {
    let resp = agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(PAYLOAD)?;
    if resp.header("X-Amz-Function-Error").is_some() {
        return Err("the echo failed".into());
    }
    check_text(&resp.into_string()?)
}

/// The `serve --http 127.0.0.1:0` address, from the line serve prints.
fn http_base(sup: &common::Supervisor) -> Result<String, Error> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = sup
            .log_text()
            .lines()
            .find(|l| l.contains("HTTP API on http://"))
        {
            return Ok(line[line.find("http://").unwrap()..].trim().to_owned());
        }
        if Instant::now() > deadline {
            return Err("serve did not print its HTTP address".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Invokes per second and their latencies, `clients` threads each with one
/// invoke in flight, over `run` after `warmup`.
fn throughput(
    clients: usize,
    warmup: Duration,
    run: Duration,
    one: impl Fn() -> Result<Box<dyn FnMut(u64) -> Result<(), Error> + Send>, Error>,
) -> Result<(f64, Samples), Error> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..clients {
        let mut invoke = one()?;
        handles.push(std::thread::spawn(
            move || -> Result<(u64, Vec<Duration>), String> {
                let mut id = 1u64;
                while start.elapsed() < warmup {
                    invoke(id).map_err(|e| e.to_string())?;
                    id += 1;
                }
                let mut lat = Vec::new();
                while start.elapsed() < warmup + run {
                    let t = Instant::now();
                    invoke(id).map_err(|e| e.to_string())?;
                    lat.push(t.elapsed());
                    id += 1;
                }
                Ok((lat.len() as u64, lat))
            },
        ));
    }
    let mut done = 0;
    let mut all = Vec::new();
    for h in handles {
        let (n, lat) = h.join().map_err(|_| "a client thread panicked")??;
        done += n;
        all.extend(lat);
    }
    Ok((done as f64 / run.as_secs_f64(), Samples::new(all)))
}

/// wrk's requests/s and p50/p99 for `connections` connections, if wrk is
/// there or Debian's package installs.
fn wrk(url: &str, connections: usize, seconds: u64) -> Option<(String, String, String)> {
    let have = |_: ()| Command::new("wrk").arg("--version").output().is_ok();
    if !have(()) {
        eprintln!("{BENCH}: wrk is missing; apt-get install -y wrk");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "wrk"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        if !ok || !have(()) {
            eprintln!("{BENCH}: no wrk: its rows are left out");
            return None;
        }
    }
    let dir = tempfile::tempdir().ok()?;
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{PAYLOAD}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )
    .ok()?;
    let out = Command::new("wrk")
        .arg(format!("-t{}", connections.min(2)))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    if text.contains("Non-2xx") {
        eprintln!("{BENCH}: wrk saw errors");
        return None;
    }
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    Some((field("Requests/sec:")?, field("50%")?, field("99%")?))
}

fn run() -> Result<(), Error> {
    let bin = common::lambdalet_bin()?;
    let samples: usize = common::env_num("HTTP_SAMPLES", 4000);
    let seconds: u64 = common::env_num("HTTP_SECONDS", 5);
    let load_before = common::load_average();
    let sup = common::Supervisor::start(&bin, &["--http", "127.0.0.1:0"])?;
    let base = http_base(&sup)?;
    let url = format!("{base}/2015-03-31/functions/{FUNCTION}/invocations");
    sup.deploy(FUNCTION, &common::example(FUNCTION), 1769)?;

    // Round trips, one client.
    let mut sock = sup.client()?;
    let agent = ureq::AgentBuilder::new().build();
    let mut id = 1u64 << 40;
    for _ in 0..500 {
        socket_invoke(&mut sock, id)?;
        http_invoke(&agent, &url)?;
        id += 1;
    }
    let (mut s_lat, mut h_lat) = (Vec::new(), Vec::new());
    while s_lat.len() < samples {
        for _ in 0..BLOCK {
            let t = Instant::now();
            socket_invoke(&mut sock, id)?;
            s_lat.push(t.elapsed());
            id += 1;
        }
        for _ in 0..BLOCK {
            let t = Instant::now();
            http_invoke(&agent, &url)?;
            h_lat.push(t.elapsed());
        }
    }
    let (s_rt, h_rt) = (Samples::new(s_lat), Samples::new(h_lat));

    // Throughput.
    let warmup = Duration::from_secs(1);
    let run = Duration::from_secs(seconds);
    let mut rows = Vec::new();
    for clients in [1usize, 2, 8] {
        let socket = sup.socket.clone();
        let (s_rate, s_l) = throughput(clients, warmup, run, || {
            let mut c = Client::connect(&socket)?;
            Ok(Box::new(move |id| socket_invoke(&mut c, id)))
        })?;
        let u = url.clone();
        let (h_rate, h_l) = throughput(clients, warmup, run, || {
            let agent = ureq::AgentBuilder::new().build();
            let u = u.clone();
            Ok(Box::new(move |_| http_invoke(&agent, &u)))
        })?;
        rows.push(vec![
            format!("{clients} client(s), Unix socket"),
            format!("{s_rate:.0}"),
            us(s_l.pct(50.0)),
            us(s_l.pct(99.0)),
        ]);
        rows.push(vec![
            format!("{clients} client(s), HTTP"),
            format!("{h_rate:.0}"),
            us(h_l.pct(50.0)),
            us(h_l.pct(99.0)),
        ]);
    }
    if let Some((rate, p50, p99)) = wrk(&url, 8, seconds) {
        rows.push(vec![
            "wrk -c8 -t2, HTTP (its own units)".into(),
            rate,
            p50,
            p99,
        ]);
    }
    let load_after = common::load_average();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Invokes over HTTP beside the socket ({})\n",
        common::machine()
    );
    let _ = writeln!(
        out,
        "One client, sequential warm invokes of `echo` (1769 MB), {} samples each, in alternating blocks of {BLOCK}:\n",
        s_rt.len()
    );
    out.push_str(&common::table(
        &["path", "p50 µs", "p90 µs", "p99 µs", "max µs"],
        &[
            vec![
                "Unix socket (a request line)".into(),
                us(s_rt.pct(50.0)),
                us(s_rt.pct(90.0)),
                us(s_rt.pct(99.0)),
                us(s_rt.max()),
            ],
            vec![
                "HTTP (Invoke API, keep-alive)".into(),
                us(h_rt.pct(50.0)),
                us(h_rt.pct(90.0)),
                us(h_rt.pct(99.0)),
                us(h_rt.max()),
            ],
        ],
    ));
    let _ = writeln!(
        out,
        "\nThroughput, each client with one invoke in flight on its own connection, {seconds} s after 1 s of warm-up:\n"
    );
    out.push_str(&common::table(
        &["clients, path", "invokes/s", "p50 µs", "p99 µs"],
        &rows,
    ));
    let _ = writeln!(
        out,
        "\nLoad average before: {load_before}; after: {load_after}."
    );
    println!("{out}");
    common::write_results(BENCH, &out);
    Ok(())
}
