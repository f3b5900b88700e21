//! Cold start: a new environment from the zygote to the first result of the
//! `hello` handler (examples/hello), seen by a client of the socket; with the
//! same handler run by bubblewrap + python3 and by a bare python3, measured in
//! the same run, sample by sample in turn so that the machine's noise falls on
//! every method alike.
//!
//! Each lambdalet sample: UpdateFunctionConfiguration (a new Description)
//! retires the warm environment (the supervisor has killed it and removed its
//! cgroup by the time it answers), a short pause lets the kernel finish the
//! teardown, then the Invoke is timed from the first byte written to the last
//! byte of the answer read: supervisor dispatch + cgroups + zygote fork +
//! namespaces + sandbox + init (import of app.py) + invoke + reply. The REPORT
//! line of the invoke (GetLogs, not timed) gives the supervisor's own view:
//! Init Duration (zygote spawn request sent → environment ready) and Duration
//! (the invoke).
//!
//! lambdalet is measured three ways, the same code each time: at 128 MB (the
//! default; its CPU quota, 128/1769 of a vCPU, would bind during setup and
//! init if init did not get a full vCPU) and at 1769 MB, one full vCPU, which
//! is what a peer process (no CPU limit, one thread) gets: the ratios are
//! against this one. Both take a blank environment from the supervisor's
//! default `--prewarm` pool. The third, on a second supervisor started with
//! `--prewarm 0`, makes the environment from scratch on the invoke's path:
//! a cold start in a burst larger than the pool.
//!
//! `cargo bench --bench coldstart` (root). Knobs: COLDSTART_SAMPLES (200),
//! COLDSTART_SETTLE_MS (pause after the retire, 30), LAMBDALET_BIN.

mod common;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ms, ratio, Error, Samples};

const BENCH: &str = "coldstart";
const FUNCTION: &str = "hello";

/// The peers' driver: what the runtime does for a cold start, without the
/// runtime: import the handler's module from the code dir (argv[1]), call
/// handler({}, context), print the JSON result.
const PEER_SCRIPT: &str = r#"import sys, json
sys.path.insert(0, sys.argv[1])
import app
class Context:
    function_name = "hello"
    function_version = "$LATEST"
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    memory_limit_in_mb = "128"
    def get_remaining_time_in_millis(self):
        return 3000
print(json.dumps(app.handler({}, Context())))
"#;

struct Peer {
    name: String,
    argv: Vec<OsString>,
    samples: Vec<Duration>,
}

impl Peer {
    fn new(name: &str, argv: Vec<OsString>) -> Peer {
        Peer {
            name: name.to_string(),
            argv,
            samples: Vec::new(),
        }
    }

    /// One start: spawn, read every byte of output, wait; timed end to end.
    fn run_once(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        let out = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()?;
        let took = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or("");
        let ok = out.status.success()
            && serde_json::from_str::<serde_json::Value>(last)
                .is_ok_and(|v| v["message"] == "Hello, world!");
        if !ok {
            return Err(format!(
                "{}: {} gave {:?}, stdout {:?}, stderr {:?}",
                self.name,
                self.argv
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(took)
    }
}

fn python_argv(py: &common::Python, code: &Path, python_flags: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![py.executable.clone().into()];
    a.extend(python_flags.iter().map(OsString::from));
    a.extend(["-c".into(), PEER_SCRIPT.into(), code.into()]);
    a
}

/// One lambdalet configuration: the same code deployed with a memory size.
struct Variant {
    label: String,
    function: String,
    /// Which of the bench's supervisors serves it.
    sup: usize,
    client: common::Client,
    total: Vec<Duration>,
    init: Vec<Duration>,
    invoke: Vec<Duration>,
}

impl Variant {
    /// The label without markup, for the phase table.
    fn short(&self) -> String {
        self.label.replace("**", "").replace("lambdalet, ", "")
    }

    /// One cold start: retire the warm environment (not timed), let the
    /// kernel finish its teardown, time the Invoke, read its REPORT line.
    fn sample(&mut self, i: usize, settle: Duration) -> Result<(), Error> {
        let (took, init, invoke) =
            common::cold_invoke(&mut self.client, &self.function, i, settle, "Hello, world!")?;
        self.total.push(took);
        self.init.push(init);
        self.invoke.push(invoke);
        Ok(())
    }
}

fn main() -> Result<(), Error> {
    common::require_root(BENCH);
    let samples: usize = common::env_num("COLDSTART_SAMPLES", 200);
    let settle = Duration::from_millis(common::env_num("COLDSTART_SETTLE_MS", 30));
    let bin = common::lambdalet_bin()?;
    let py = common::real_python()?;
    let code = common::example(FUNCTION);
    let load_before = common::load_average();
    eprintln!(
        "{BENCH}: {samples} samples per method; {} ; python {} at {}; load average {load_before}",
        bin.display(),
        py.version,
        py.executable.display()
    );

    // Cold starts take a blank environment made ahead of time (the default
    // `--prewarm` pool) and specialise it; a second supervisor without a
    // pool shows a cold start that has to make its environment from scratch
    // (a burst larger than the pool).
    let sups = [
        common::Supervisor::start(&bin, &[])?,
        common::Supervisor::start(&bin, &["--prewarm", "0"])?,
    ];
    // The default memory size, whose CPU quota (128/1769 of a vCPU) would bind
    // during init, and 1769 MB, one full vCPU: what a peer process gets.
    let mut variants = Vec::new();
    for (sup, memory_mb, label) in [
        (0, 128, "**lambdalet**, 128 MB"),
        (0, 1769, "**lambdalet**, 1769 MB (1 vCPU)"),
        (
            1,
            1769,
            "lambdalet, 1769 MB, no blank environment ready (`--prewarm 0`)",
        ),
    ] {
        let function = format!("{FUNCTION}-{memory_mb}");
        sups[sup].deploy(&function, &code, memory_mb)?;
        variants.push(Variant {
            label: label.to_string(),
            function,
            sup,
            client: sups[sup].client()?,
            total: Vec::with_capacity(samples),
            init: Vec::with_capacity(samples),
            invoke: Vec::with_capacity(samples),
        });
    }
    // Ratios are against lambdalet with a full vCPU, as the peers have.
    const REFERENCE: usize = 1;

    let mut peers = Vec::new();
    if let Some(bwrap) = common::find_bwrap(BENCH) {
        peers.push(Peer::new(
            "bubblewrap + python3 -I",
            common::bwrap_python_argv(&bwrap, &py, &code, &["-I"], PEER_SCRIPT),
        ));
        peers.push(Peer::new(
            "bubblewrap + python3 -I -S",
            common::bwrap_python_argv(&bwrap, &py, &code, &["-I", "-S"], PEER_SCRIPT),
        ));
    }
    peers.push(Peer::new("python3 -I", python_argv(&py, &code, &["-I"])));
    peers.push(Peer::new(
        "python3 -I -S",
        python_argv(&py, &code, &["-I", "-S"]),
    ));
    // One untimed run each: the page cache is warm for everyone, and a peer
    // that cannot run says why before anything is measured.
    for p in &peers {
        p.run_once()?;
    }

    let started = Instant::now();
    for i in 0..samples {
        for v in &mut variants {
            v.sample(i, settle)
                .map_err(|e| format!("{}: {e}\n{}", v.label, sups[v.sup].log_text()))?;
        }
        for p in &mut peers {
            let d = p.run_once()?;
            p.samples.push(d);
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

    let reference = Samples::new(variants[REFERENCE].total.clone());
    let row = |name: &str, s: &Samples| -> Vec<String> {
        vec![
            name.to_string(),
            s.len().to_string(),
            ms(s.min()),
            ms(s.pct(50.0)),
            ms(s.pct(90.0)),
            ms(s.pct(99.0)),
            ms(s.max()),
            ratio(s.pct(50.0), reference.pct(50.0)),
            ratio(s.pct(99.0), reference.pct(99.0)),
        ]
    };
    let mut rows = Vec::new();
    for v in &variants {
        rows.push(row(&v.label, &Samples::new(v.total.clone())));
    }
    for p in &peers {
        rows.push(row(&p.name, &Samples::new(p.samples.clone())));
    }
    let header = [
        "cold start to first result, ms",
        "n",
        "min",
        "p50",
        "p90",
        "p99",
        "max",
        "p50 ÷ lambdalet 1769 MB",
        "p99 ÷ lambdalet 1769 MB",
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
    let mut out = String::new();
    let _ = writeln!(out, "### Cold start ({})\n", common::machine());
    let _ = writeln!(
        out,
        "`cargo bench --bench coldstart` · {samples} samples per method, interleaved · handler examples/hello · \
         python {} · load average {load_before} before, {load_after} after\n",
        py.version
    );
    out.push_str(&common::table(&header, &rows));
    let _ = writeln!(
        out,
        "\nlambdalet, the supervisor's view (REPORT lines of the same invokes; Init Duration runs \
         from the environment's start, a pooled blank's specialisation or a new blank's spawn, to \
         ready):\n"
    );
    let mut phases = Vec::new();
    for v in &variants {
        let name = v.short();
        phases.push(phase(
            format!("{name}: client-observed Invoke"),
            &Samples::new(v.total.clone()),
        ));
        phases.push(phase(
            format!("{name}: Init Duration (REPORT)"),
            &Samples::new(v.init.clone()),
        ));
        phases.push(phase(
            format!("{name}: Duration (REPORT: the invoke)"),
            &Samples::new(v.invoke.clone()),
        ));
    }
    out.push_str(&common::table(
        &["lambdalet phase, ms", "p50", "p90", "p99", "max"],
        &phases,
    ));
    let _ = writeln!(out, "\nTarget (issue 2): p50 ≤ 5 ms, p99 ≤ 15 ms.");
    for v in &variants {
        let s = Samples::new(v.total.clone());
        let verdict = |d: Duration, limit: u64| {
            if d <= Duration::from_millis(limit) {
                "met"
            } else {
                "not met"
            }
        };
        let _ = writeln!(
            out,
            "- {}: p50 {} ms ({}), p99 {} ms ({}).",
            v.short(),
            ms(s.pct(50.0)),
            verdict(s.pct(50.0), 5),
            ms(s.pct(99.0)),
            verdict(s.pct(99.0), 15),
        );
    }
    println!("{out}");
    common::write_results(BENCH, &out);
    Ok(())
}
