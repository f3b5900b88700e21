//! Node.js cold start: a new nodejs environment to the first result of a
//! hello handler (CommonJS), seen by a client of the socket; beside a plain
//! `node` start running the same handler (and bubblewrap + node when
//! bubblewrap is installed), measured in the same run, sample by sample in
//! turn so that the machine's noise falls on every method alike.
//!
//! Each lambdalet sample retires the warm environment
//! (UpdateFunctionConfiguration with a new Description), pauses, then times
//! the Invoke from the first byte written to the last byte read. lambdalet
//! is measured taking a node blank from the `--prewarm-node` pool (node
//! already started, its runtime loaded) at 1769 MB (one vCPU, what a peer
//! process gets) and at 128 MB, and on a second supervisor with
//! `--prewarm-node 0`, where the blank and its node start on the invoke's
//! path (a burst larger than the pool).
//!
//! `cargo bench --bench nodestart` (root). Knobs: NODESTART_SAMPLES (100),
//! NODESTART_SETTLE_MS (pause after the retire, 300: a node blank takes
//! a few hundred ms of CPU to start, and a cold start should not compete
//! with the refill of the blank it took), LAMBDALET_BIN.

mod common;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ms, ratio, Error, Samples};
use serde_json::json;

const BENCH: &str = "nodestart";

const HANDLER: &str = "exports.handler = async (event, context) => \
    ({ message: 'Hello, world!', requestId: context.awsRequestId });\n";

/// The peers' driver: what a runtime does for a cold start, without the
/// runtime: require the handler from the code dir (argv[2]), call it, print
/// the JSON result.
const PEER_SCRIPT: &str = "const path = require('path');\n\
    const app = require(path.join(process.argv[2], 'index.js'));\n\
    const context = { awsRequestId: '00000000-0000-0000-0000-000000000000', \
    getRemainingTimeInMillis: () => 3000 };\n\
    Promise.resolve(app.handler({}, context)).then((r) => \
    process.stdout.write(JSON.stringify(r) + '\\n'));\n";

fn find_node() -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("node"))
        .find(|p| p.is_file())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .ok_or_else(|| format!("{BENCH}: no node on PATH").into())
}

/// bubblewrap running node on the handler: a fresh sandbox per start, as a
/// process-per-invoke server would make one.
fn bwrap_node_argv(bwrap: &OsString, node: &Path, code: &Path, script: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        bwrap.clone(),
        "--unshare-all".into(),
        "--die-with-parent".into(),
    ];
    let mut ro = |src: &Path, dst: &Path| {
        a.extend(["--ro-bind".into(), src.into(), dst.into()]);
    };
    ro(Path::new("/usr"), Path::new("/usr"));
    ro(code, Path::new("/var/task"));
    ro(script, Path::new("/peer.js"));
    for dir in ["/lib", "/lib64", "/bin", "/sbin"] {
        let p = Path::new(dir);
        match std::fs::read_link(p) {
            Ok(target) => a.extend(["--symlink".into(), target.into(), p.into()]),
            Err(_) if p.is_dir() => a.extend(["--ro-bind".into(), p.into(), p.into()]),
            Err(_) => {}
        }
    }
    for x in ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--"] {
        a.push(x.into());
    }
    a.extend([node.into(), "/peer.js".into(), "/var/task".into()]);
    a
}

struct Peer {
    name: String,
    argv: Vec<OsString>,
    samples: Vec<Duration>,
}

impl Peer {
    fn run_once(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        let out = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()?;
        let took = start.elapsed();
        if !out.status.success() || !out.stdout.starts_with(b"{\"message\":\"Hello, world!\"") {
            return Err(format!(
                "{}: {} {:?} {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(took)
    }
}

struct Variant {
    label: String,
    function: String,
    sup: usize,
    client: common::Client,
    total: Vec<Duration>,
    init: Vec<Duration>,
}

impl Variant {
    fn sample(&mut self, i: usize, settle: Duration) -> Result<(), Error> {
        let (took, init, _) =
            common::cold_invoke(&mut self.client, &self.function, i, settle, "Hello, world!")?;
        self.total.push(took);
        self.init.push(init);
        Ok(())
    }
}

fn main() -> Result<(), Error> {
    common::require_root(BENCH);
    let samples: usize = common::env_num("NODESTART_SAMPLES", 100);
    let settle = Duration::from_millis(common::env_num("NODESTART_SETTLE_MS", 300));
    let bin = common::lambdalet_bin()?;
    let node = find_node()?;
    let node_version =
        String::from_utf8_lossy(&Command::new(&node).arg("--version").output()?.stdout)
            .trim()
            .to_string();
    let dir = tempfile::Builder::new()
        .prefix("lambdalet-nodestart-")
        .tempdir()?;
    let code = dir.path().join("code");
    std::fs::create_dir_all(&code)?;
    std::fs::write(code.join("index.js"), HANDLER)?;
    let script = dir.path().join("peer.js");
    std::fs::write(&script, PEER_SCRIPT)?;
    let load_before = common::load_average();
    eprintln!(
        "{BENCH}: {samples} samples per method; {}; node {node_version} at {}; load average {load_before}",
        bin.display(),
        node.display()
    );

    let sups = [
        common::Supervisor::start(&bin, &[])?,
        common::Supervisor::start(&bin, &["--prewarm-node", "0"])?,
    ];
    let mut variants = Vec::new();
    for (sup, memory_mb, label) in [
        (0, 1769, "**lambdalet nodejs**, 1769 MB (1 vCPU)"),
        (0, 128, "**lambdalet nodejs**, 128 MB"),
        (
            1,
            1769,
            "lambdalet nodejs, 1769 MB, no node blank ready (`--prewarm-node 0`)",
        ),
    ] {
        let function = format!("hello-node-{memory_mb}");
        let mut client = sups[sup].client()?;
        client.call(
            "CreateFunction",
            json!({
                "FunctionName": function,
                "Runtime": "nodejs20.x",
                "Handler": "index.handler",
                "Code": {"Path": code},
                "MemorySize": memory_mb,
            }),
        )?;
        // The first invoke waits for the zygote and the pool.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.call("Invoke", json!({"FunctionName": function, "Payload": {}})) {
                Ok(r) if r.get("FunctionError").is_none() => break,
                Ok(r) => return Err(format!("{function}: {r}\n{}", sups[sup].log_text()).into()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("{function}: {e}\n{}", sups[sup].log_text()).into())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        variants.push(Variant {
            label: label.to_string(),
            function,
            sup,
            client,
            total: Vec::with_capacity(samples),
            init: Vec::with_capacity(samples),
        });
    }
    // Ratios are against lambdalet with a full vCPU, as the peers have.
    const REFERENCE: usize = 0;

    let mut peers = vec![Peer {
        name: format!("plain `node` start ({node_version})"),
        argv: vec![
            node.clone().into(),
            script.clone().into(),
            code.clone().into(),
        ],
        samples: Vec::new(),
    }];
    if let Some(bwrap) = common::find_bwrap(BENCH) {
        peers.push(Peer {
            name: "bubblewrap + node".into(),
            argv: bwrap_node_argv(&bwrap, &node, &code, &script),
            samples: Vec::new(),
        });
    }
    for p in &peers {
        p.run_once()?;
    }
    // The pools refill after the deploys' invokes.
    std::thread::sleep(Duration::from_secs(1));

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
        if (i + 1) % 25 == 0 {
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
    let mut out = String::new();
    let _ = writeln!(out, "### Node.js cold start ({})\n", common::machine());
    let _ = writeln!(
        out,
        "`cargo bench --bench nodestart` · {samples} samples per method, interleaved · \
         a CommonJS hello handler · node {node_version} · load average {load_before} before, \
         {load_after} after\n"
    );
    out.push_str(&common::table(&header, &rows));
    let _ = writeln!(
        out,
        "\nInit Duration (REPORT lines of the same invokes: a pooled node blank's \
         specialisation, or a new blank's spawn, to ready):\n"
    );
    let mut phases = Vec::new();
    for v in &variants {
        let s = Samples::new(v.init.clone());
        phases.push(vec![
            v.label.replace("**", ""),
            ms(s.pct(50.0)),
            ms(s.pct(90.0)),
            ms(s.pct(99.0)),
        ]);
    }
    out.push_str(&common::table(
        &["Init Duration, ms", "p50", "p90", "p99"],
        &phases,
    ));
    let s = Samples::new(variants[REFERENCE].total.clone());
    let _ = writeln!(
        out,
        "\nTarget (issue 5): cold start p50 ≤ 15 ms with a node blank ready: p50 {} ms, {}.",
        ms(s.pct(50.0)),
        if s.pct(50.0) <= Duration::from_millis(15) {
            "met"
        } else {
            "not met"
        }
    );
    println!("{out}");
    common::write_results(BENCH, &out);
    Ok(())
}
