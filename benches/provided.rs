//! Cold start of custom runtimes (`provided`): a new environment from the
//! Invoke written by the client to the first result read back, for a
//! `bootstrap` that is (a) a Rust function on AWS's `lambda_runtime` crate
//! (examples/rust-hello, built with the host's cargo) and (b) a static C
//! program speaking the Runtime API by hand (examples/c-hello, built with
//! `cc -static`: what the Runtime API costs without a client library).
//!
//! Beside each, measured in the same run and sample by sample in turn (the
//! machine's noise falls on every method alike), the same binary started
//! plainly on the host, no sandbox:
//!
//! - **per invoke**: fork + exec of the bootstrap with the Runtime API's
//!   environment, against a minimal Runtime API served by this bench on
//!   127.0.0.1, until its first `/next` is answered with the event and its
//!   `/response` read back: what a server that starts a process per invoke
//!   would pay. The bootstrap is then killed (it is asking for its next
//!   event).
//! - **exec to exit**: the binary with `MODE=init_fail`, which makes it exit
//!   1 at the start of `main`: the process start alone (for the Rust one:
//!   the loader, the Rust and tokio runtimes' start and teardown).
//!
//! lambdalet samples are taken as in `coldstart`: UpdateFunctionConfiguration
//! (a new Description) retires the warm environment, a short pause, then the
//! timed Invoke; the REPORT line gives Init Duration (for `provided`: from
//! the start of B's Runtime API server to the bootstrap's first `/next`) and
//! Duration. Rows: the Rust bootstrap at 1769 MB (one vCPU, what a host
//! process gets) and 128 MB from the default blank pool, at 1769 MB from
//! scratch (`--prewarm 0`), the C bootstrap at 1769 MB from the pool, and
//! for reference the same handler on the python3 runtime (examples/hello).
//! Each row's ratios are to the host starts of its own bootstrap.
//!
//! `cargo bench --bench provided` (root). Knobs: PROVIDED_SAMPLES (200),
//! PROVIDED_SETTLE_MS (30), LAMBDALET_BIN. The first run builds
//! examples/rust-hello (about 2.5 minutes cold); later runs reuse the build.

mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ms, ratio, Error, Samples};

const BENCH: &str = "provided";
/// What both bootstraps answer to `{}`.
const HELLO: &str = "Hello, world!";
/// The longest a host start may take before the bench gives up on it.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

// ---- the bootstraps ----------------------------------------------------------

/// One bootstrap binary and the code dir that deploys it.
struct Bootstrap {
    /// "Rust (lambda_runtime)" or "C (static)".
    name: &'static str,
    bin: PathBuf,
    code: PathBuf,
}

/// `dir/bootstrap`, a copy of `bin`: a code dir of its own.
fn code_dir(bin: &Path, dir: &Path) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(bin, dir.join("bootstrap"))?;
    Ok(dir.to_path_buf())
}

/// examples/c-hello/bootstrap.c with `cc -O2 -static`; None (and why) if the
/// host has no C compiler or no static libc.
fn build_c(out_dir: &Path) -> Option<PathBuf> {
    let src = common::example("c-hello").join("bootstrap.c");
    let bin = out_dir.join("bootstrap");
    if std::fs::create_dir_all(out_dir).is_err() {
        return None;
    }
    let out = Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(&bin)
        .arg(&src)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(bin),
        Ok(o) => {
            eprintln!(
                "{BENCH}: cc -static failed, the C bootstrap is skipped: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("{BENCH}: no C compiler ({e}), the C bootstrap is skipped");
            None
        }
    }
}

// ---- the host peers: a minimal Runtime API ----------------------------------

/// One HTTP/1.1 request as a bootstrap sends it.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// A connection's bytes so far, split into requests as they complete.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads what is there; the complete requests in the buffer. None at
    /// EOF: the peer closed the connection.
    fn read(&mut self) -> Result<Option<Vec<Request>>, Error> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            if self.buf.len() < end + 4 + len {
                break;
            }
            let body = self.buf[end + 4..end + 4 + len].to_vec();
            self.buf.drain(..end + 4 + len);
            let mut first = head.lines().next().unwrap_or("").split(' ');
            out.push(Request {
                method: first.next().unwrap_or("").to_string(),
                path: first.next().unwrap_or("").to_string(),
                body,
            });
        }
        Ok(Some(out))
    }
}

/// The Runtime API of the host peers, on an ephemeral port of 127.0.0.1.
struct RuntimeApi {
    listener: TcpListener,
    port: u16,
}

/// One host start served to its first result.
struct PeerSample {
    to_next: Duration,
    to_result: Duration,
}

impl RuntimeApi {
    fn new() -> Result<RuntimeApi, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        Ok(RuntimeApi { listener, port })
    }

    /// The environment Lambda gives a bootstrap (what lambda_runtime reads).
    fn command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{}", self.port))
            .env("AWS_LAMBDA_FUNCTION_NAME", "hello")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/hello")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .env("LAMBDA_TASK_ROOT", bin.parent().unwrap_or(Path::new("/")))
            .env("_HANDLER", "hello")
            .current_dir(bin.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        common::die_with_bench(&mut cmd);
        cmd
    }

    /// Per invoke: spawn the bootstrap, answer its first `/next` with `{}`,
    /// read its `/response`; timed from before the spawn. The bootstrap is
    /// then killed (by its pid: our own child) and reaped.
    fn per_invoke(&self, bin: &Path, i: usize) -> Result<PeerSample, Error> {
        let request_id = format!("00000000-0000-0000-0000-{i:012}");
        self.drop_stale_connections()?;
        let start = Instant::now();
        let mut child = self.command(bin).spawn()?;
        let result = self.serve_first(&mut child, &request_id, start);
        let _ = child.kill();
        let _ = child.wait();
        result.map_err(|e| format!("{}: {e}", bin.display()).into())
    }

    /// Connections a killed bootstrap left in the listen backlog (a client
    /// that opened one for its next request just before it was killed):
    /// accepted and closed, so that the next sample starts clean.
    fn drop_stale_connections(&self) -> Result<(), Error> {
        self.listener.set_nonblocking(true)?;
        let drained = loop {
            match self.listener.accept() {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.listener.set_nonblocking(false)?;
        Ok(drained?)
    }

    fn serve_first(
        &self,
        child: &mut std::process::Child,
        request_id: &str,
        start: Instant,
    ) -> Result<PeerSample, Error> {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let deadline = start + PEER_TIMEOUT;
        let mut conns: Vec<Conn> = Vec::new();
        let mut to_next = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no result within {PEER_TIMEOUT:?}").into());
            }
            if let Some(status) = child.try_wait()? {
                return Err(format!("the bootstrap exited ({status}) before its result").into());
            }
            let (listener_ready, ready): (bool, Vec<usize>) = {
                let mut fds = vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
                fds.extend(
                    conns
                        .iter()
                        .map(|c| PollFd::new(c.stream.as_fd(), PollFlags::POLLIN)),
                );
                // Woken every 50 ms at most, to notice a bootstrap that died.
                let wait = left.min(Duration::from_millis(50));
                let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
                nix::poll::poll(&mut fds, timeout)?;
                let is_ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (
                    is_ready(&fds[0]),
                    (1..fds.len())
                        .filter(|&k| is_ready(&fds[k]))
                        .map(|k| k - 1)
                        .collect(),
                )
            };
            let mut closed = Vec::new();
            for k in ready {
                let Some(requests) = conns[k].read()? else {
                    closed.push(k);
                    continue;
                };
                for req in requests {
                    let now = start.elapsed();
                    let stream = &mut conns[k].stream;
                    if req.method == "GET" && req.path.ends_with("/invocation/next") {
                        if to_next.is_some() {
                            return Err("a second /next before a result".into());
                        }
                        to_next = Some(now);
                        let deadline_ms = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)?
                            .as_millis()
                            + 3_000;
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Lambda-Runtime-Aws-Request-Id: {request_id}\r\n\
                             Lambda-Runtime-Deadline-Ms: {deadline_ms}\r\n\
                             Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:hello\r\n\
                             Lambda-Runtime-Trace-Id: Root=1-00000000-000000000000000000000000\r\n\
                             Content-Length: 2\r\n\r\n{{}}"
                        );
                        stream.write_all(head.as_bytes())?;
                    } else if req.method == "POST"
                        && req
                            .path
                            .ends_with(&format!("/invocation/{request_id}/response"))
                    {
                        let Some(to_next) = to_next else {
                            return Err("a response before /next".into());
                        };
                        let v: serde_json::Value = serde_json::from_slice(&req.body)?;
                        if v["message"] != HELLO {
                            return Err(format!("unexpected result {v}").into());
                        }
                        let body = br#"{"status":"OK"}"#;
                        let head = format!(
                            "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n",
                            body.len()
                        );
                        stream.write_all(head.as_bytes())?;
                        stream.write_all(body)?;
                        return Ok(PeerSample {
                            to_next,
                            to_result: now,
                        });
                    } else {
                        return Err(format!(
                            "unexpected {} {}: {}",
                            req.method,
                            req.path,
                            String::from_utf8_lossy(&req.body)
                        )
                        .into());
                    }
                }
            }
            for k in closed.into_iter().rev() {
                conns.remove(k);
            }
            if listener_ready {
                let (stream, _) = self.listener.accept()?;
                stream.set_nodelay(true)?;
                conns.push(Conn {
                    stream,
                    buf: Vec::new(),
                });
            }
        }
    }

    /// Exec to exit: the bootstrap with MODE=init_fail exits 1 at once.
    fn exec_to_exit(&self, bin: &Path) -> Result<Duration, Error> {
        let start = Instant::now();
        let status = self.command(bin).env("MODE", "init_fail").status()?;
        let took = start.elapsed();
        if status.code() != Some(1) {
            return Err(format!("{} with MODE=init_fail: {status}", bin.display()).into());
        }
        Ok(took)
    }
}

// ---- lambdalet ---------------------------------------------------------------

/// One lambdalet configuration of one bootstrap.
struct Variant {
    label: String,
    /// Index of its bootstrap in the bench's list; None for the Python
    /// function shown for reference.
    bootstrap: Option<usize>,
    function: String,
    sup: usize,
    client: common::Client,
    total: Vec<Duration>,
    init: Vec<Duration>,
    invoke: Vec<Duration>,
}

impl Variant {
    /// One cold start: retire the warm environment (not timed), let the
    /// kernel finish its teardown, time the Invoke, read its REPORT line.
    fn sample(&mut self, i: usize, settle: Duration) -> Result<(), Error> {
        let (took, init, invoke) =
            common::cold_invoke(&mut self.client, &self.function, i, settle, HELLO)?;
        self.total.push(took);
        self.init.push(init);
        self.invoke.push(invoke);
        Ok(())
    }
}

/// The host peers of one bootstrap.
struct Peers {
    per_invoke: Vec<Duration>,
    to_next: Vec<Duration>,
    exec_exit: Vec<Duration>,
}

fn main() -> Result<(), Error> {
    common::require_root(BENCH);
    let samples: usize = common::env_num("PROVIDED_SAMPLES", 200);
    let settle = Duration::from_millis(common::env_num("PROVIDED_SETTLE_MS", 30));
    let bin = common::lambdalet_bin()?;
    let load_before = common::load_average();

    let work = tempfile::Builder::new()
        .prefix("lambdalet-bench-provided-")
        .tempdir()?;
    let rust_bin = common::rust_function::build("rust-hello")
        .map_err(|e| format!("building examples/rust-hello: {e}"))?;
    let mut bootstraps = vec![Bootstrap {
        name: "Rust (lambda_runtime 1.5)",
        code: code_dir(&rust_bin, &work.path().join("rust"))?,
        bin: rust_bin,
    }];
    if let Some(c_bin) = build_c(&common::rust_function::cache_dir().join("c-hello")) {
        bootstraps.push(Bootstrap {
            name: "C (static, no client library)",
            code: code_dir(&c_bin, &work.path().join("c"))?,
            bin: c_bin,
        });
    }
    eprintln!(
        "{BENCH}: {samples} samples per method; {}; bootstraps {}; load average {load_before}",
        bin.display(),
        bootstraps
            .iter()
            .map(|b| format!("{} ({})", b.name, b.bin.display()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let sups = [
        common::Supervisor::start(&bin, &[])?,
        common::Supervisor::start(&bin, &["--prewarm", "0"])?,
    ];
    let mut variants = Vec::new();
    // (bootstrap, supervisor, memory, label).
    let mut plan = vec![
        (0, 0, 1769, "1769 MB (1 vCPU)"),
        (0, 0, 128, "128 MB"),
        (0, 1, 1769, "1769 MB, no blank ready (`--prewarm 0`)"),
    ];
    if bootstraps.len() > 1 {
        plan.push((1, 0, 1769, "1769 MB (1 vCPU)"));
    }
    for (k, (b, sup, memory_mb, what)) in plan.into_iter().enumerate() {
        let function = format!("hello-{k}");
        sups[sup].deploy_provided(&function, &bootstraps[b].code, memory_mb)?;
        variants.push(Variant {
            label: format!("**lambdalet**, {}, {what}", bootstraps[b].name),
            bootstrap: Some(b),
            function,
            sup,
            client: sups[sup].client()?,
            total: Vec::with_capacity(samples),
            init: Vec::with_capacity(samples),
            invoke: Vec::with_capacity(samples),
        });
    }
    // For reference, the same handler on the python3 runtime (examples/hello,
    // the coldstart bench's) in the same run: what `provided` adds.
    sups[0].deploy("hello-python", &common::example("hello"), 1769)?;
    variants.push(Variant {
        label: "lambdalet, python3 (examples/hello), 1769 MB, for reference".into(),
        bootstrap: None,
        function: "hello-python".into(),
        sup: 0,
        client: sups[0].client()?,
        total: Vec::with_capacity(samples),
        init: Vec::with_capacity(samples),
        invoke: Vec::with_capacity(samples),
    });

    let api = RuntimeApi::new()?;
    let mut peers: Vec<Peers> = bootstraps
        .iter()
        .map(|_| Peers {
            per_invoke: Vec::with_capacity(samples),
            to_next: Vec::with_capacity(samples),
            exec_exit: Vec::with_capacity(samples),
        })
        .collect();
    // One untimed run each: the page cache is warm for everyone, and a peer
    // that cannot run says why before anything is measured.
    for b in &bootstraps {
        api.per_invoke(&b.bin, 0)?;
        api.exec_to_exit(&b.bin)?;
    }

    let started = Instant::now();
    for i in 0..samples {
        for v in &mut variants {
            v.sample(i, settle)
                .map_err(|e| format!("{}: {e}\n{}", v.label, sups[v.sup].log_text()))?;
        }
        for (b, p) in bootstraps.iter().zip(&mut peers) {
            let s = api.per_invoke(&b.bin, i + 1)?;
            p.per_invoke.push(s.to_result);
            p.to_next.push(s.to_next);
            p.exec_exit.push(api.exec_to_exit(&b.bin)?);
        }
        if (i + 1) % 50 == 0 {
            eprintln!(
                "{BENCH}: {}/{samples} ({:.0} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let load_after = common::load_average();
    drop(sups);

    // Every row is compared with the host starts of its own bootstrap.
    let row = |name: &str, s: &Samples, b: Option<usize>| -> Vec<String> {
        let host = |pick: fn(&Peers) -> &Vec<Duration>| {
            b.map_or(Duration::ZERO, |b| {
                Samples::new(pick(&peers[b]).clone()).pct(50.0)
            })
        };
        let (per_invoke, exec_exit) = (host(|p| &p.per_invoke), host(|p| &p.exec_exit));
        vec![
            name.to_string(),
            s.len().to_string(),
            ms(s.min()),
            ms(s.pct(50.0)),
            ms(s.pct(90.0)),
            ms(s.pct(99.0)),
            ms(s.max()),
            ratio(s.pct(50.0), per_invoke),
            ratio(s.pct(50.0), exec_exit),
        ]
    };
    let mut rows = Vec::new();
    for v in &variants {
        rows.push(row(&v.label, &Samples::new(v.total.clone()), v.bootstrap));
    }
    for (k, (b, p)) in bootstraps.iter().zip(&peers).enumerate() {
        let k = Some(k);
        rows.push(row(
            &format!("{}: host, fork + exec → first result (per invoke)", b.name),
            &Samples::new(p.per_invoke.clone()),
            k,
        ));
        rows.push(row(
            &format!("{}: host, exec → exit", b.name),
            &Samples::new(p.exec_exit.clone()),
            k,
        ));
    }
    let header = [
        "cold start to first result, ms",
        "n",
        "min",
        "p50",
        "p90",
        "p99",
        "max",
        "p50 ÷ same bootstrap per invoke on the host",
        "p50 ÷ its exec → exit",
    ];

    let phase = |name: String, s: &Samples| -> Vec<String> {
        vec![
            name,
            ms(s.pct(50.0)),
            ms(s.pct(90.0)),
            ms(s.pct(99.0)),
            ms(s.max()),
        ]
    };
    let mut phases = Vec::new();
    for v in &variants {
        let name = v.label.replace("**", "").replace("lambdalet, ", "");
        phases.push(phase(
            format!("{name}: Init Duration (REPORT)"),
            &Samples::new(v.init.clone()),
        ));
        phases.push(phase(
            format!("{name}: Duration (REPORT: the invoke)"),
            &Samples::new(v.invoke.clone()),
        ));
    }
    for (b, p) in bootstraps.iter().zip(&peers) {
        phases.push(phase(
            format!("{}: host, fork + exec → first /next", b.name),
            &Samples::new(p.to_next.clone()),
        ));
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Custom runtime cold start ({})\n",
        common::machine()
    );
    let _ = writeln!(
        out,
        "`cargo bench --bench provided` · {samples} samples per method, interleaved · \
         load average {load_before} before, {load_after} after\n"
    );
    out.push_str(&common::table(&header, &rows));
    let _ = writeln!(
        out,
        "\nPhases (lambdalet: REPORT lines of the same invokes; Init Duration runs from \
         the start of B's Runtime API server to the bootstrap's first `/next`):\n"
    );
    out.push_str(&common::table(
        &["phase, ms", "p50", "p90", "p99", "max"],
        &phases,
    ));
    println!("{out}");
    common::write_results(BENCH, &out);
    Ok(())
}
