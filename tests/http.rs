//! The HTTP front (`serve --http`) driven by real clients nobody here wrote:
//! boto3 and the AWS CLI (installed from PyPI into a virtual environment
//! that the tests create and cache under the target dir), and Python's
//! urllib for function URLs. The Python side of each test is a script in
//! tests/http/ that prints one JSON object of what it saw; the checks are
//! here.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{require_root, Checks, Supervisor, BIN};
use serde_json::{json, Value};

/// How long one client script may run (pip's first install is not in it).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `pip install boto3 awscli` may take on a slow registry.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

// ---- the clients ----------------------------------------------------------

/// A virtual environment with boto3 and the AWS CLI, made once per target
/// dir and shared by the tests (a file lock keeps parallel tests from
/// building it twice). None when it cannot be made outside CI.
fn clients() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(root).expect("create the target tmp dir");
    let venv = root.join("http-clients-venv");
    let ready = venv.join(".lambdalet-ready");
    let lock = fs::File::create(root.join("http-clients-venv.lock")).expect("create the lock");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the venv");
    if ready.exists() {
        return Some(venv);
    }
    let _ = fs::remove_dir_all(&venv);
    let steps: [Vec<String>; 2] = [
        vec![
            "python3".into(),
            "-m".into(),
            "venv".into(),
            venv.to_str().unwrap().into(),
        ],
        vec![
            venv.join("bin/python").to_str().unwrap().into(),
            "-m".into(),
            "pip".into(),
            "install".into(),
            "--quiet".into(),
            "--disable-pip-version-check".into(),
            "boto3".into(),
            "awscli".into(),
        ],
    ];
    for step in &steps {
        let out = run_bounded(Command::new(&step[0]).args(&step[1..]), INSTALL_TIMEOUT);
        if !out.status.success() {
            let why = format!(
                "{} failed: {}",
                step.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(std::env::var_os("CI").is_none(), "in CI: {why}");
            eprintln!("skipping: {why}");
            return None;
        }
    }
    fs::write(&ready, b"").expect("mark the venv ready");
    Some(venv)
}

/// Run a command with a deadline; kill it past the deadline.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Read both pipes on threads so a chatty child never blocks on them.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let s = child.wait().unwrap();
            eprintln!("{cmd:?} ran past {limit:?} and was killed");
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// The base URL of a supervisor started with `--http 127.0.0.1:0`, read from
/// the line serve prints.
fn http_base(sup: &Supervisor) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = sup
            .stderr()
            .lines()
            .find(|l| l.contains("HTTP API on http://"))
        {
            return line[line.find("http://").unwrap()..].trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "serve did not print its HTTP address; stderr:\n{}",
            sup.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(extra: &[&str]) -> (Supervisor, String) {
    let mut args = vec!["--prewarm", "0", "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let sup = Supervisor::start_with(&args);
    let base = http_base(&sup);
    (sup, base)
}

/// An environment for the AWS clients: dummy credentials, one attempt, and
/// none of the host's AWS configuration.
fn aws_env(cmd: &mut Command, dir: &Path) {
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_RETRY_MODE", "standard")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("PYTHONDONTWRITEBYTECODE", "1");
}

/// Run tests/http/<script> with the venv's python against `base`; its last
/// line of output is a JSON object.
fn run_script(venv: &Path, sup: &Supervisor, script: &str, base: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/http")
        .join(script);
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(&path).arg(base);
    aws_env(&mut cmd, sup.dir.path());
    let out = run_bounded(&mut cmd, SCRIPT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}\nsupervisor stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sup.stderr()
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stdout}"))
}

fn setup() -> Option<PathBuf> {
    if !require_root() {
        return None;
    }
    clients()
}

// ---- boto3: the Invoke API ------------------------------------------------

#[test]
fn boto3_invoke_api() {
    let Some(venv) = setup() else { return };
    let (sup, base) = start(&[]);
    let out = run_script(&venv, &sup, "boto3_invoke.py", &base);
    let mut c = Checks::new("boto3 invoke");
    c.eq("create status", &out["create"]["status"], &json!(201));
    c.eq(
        "create arn",
        &out["create"]["arn"],
        &json!("arn:aws:lambda:us-east-1:000000000000:function:echo"),
    );
    let sync = &out["sync"];
    c.eq("sync status", &sync["status"], &json!(200));
    c.eq("sync echo", &sync["payload"]["echo"], &json!({"n": 1}));
    c.eq(
        "client context",
        &sync["payload"]["custom"],
        &json!({"source": "boto3"}),
    );
    c.eq("no function error", &sync["function_error"], &Value::Null);
    c.eq("executed version", &sync["version"], &json!("$LATEST"));
    let log = sync["log"].as_str().unwrap_or_default();
    let rid = sync["payload"]["request_id"].as_str().unwrap_or("?");
    c.check(
        log.contains(&format!("START RequestId: {rid}")) && log.contains("REPORT RequestId"),
        format!("the tail log has START and REPORT of {rid}: {log:?}"),
    );
    c.check(
        log.contains("event-marker {\"n\": 1}"),
        format!("the tail log has the function's output: {log:?}"),
    );
    c.eq("request id header", &sync["request_id_header"], &json!(rid));
    c.eq(
        "invoke by ARN and qualifier",
        &out["arn"]["echo"],
        &json!([1, 2]),
    );
    c.eq("function error status", &out["fail"]["status"], &json!(200));
    c.eq(
        "function error header",
        &out["fail"]["function_error"],
        &json!("Unhandled"),
    );
    c.eq(
        "function error body",
        &out["fail"]["payload"]["errorType"],
        &json!("ValueError"),
    );
    c.eq("Event status", &out["event"]["status"], &json!(202));
    c.eq("DryRun status", &out["dryrun"], &json!(204));
    let expect_err = |c: &mut Checks, key: &str, class: &str, status: u64| {
        let e = &out[key];
        c.eq(
            format!("{key}: exception class"),
            &e["class"],
            &json!(class),
        );
        c.eq(format!("{key}: status"), &e["status"], &json!(status));
    };
    expect_err(&mut c, "missing", "ResourceNotFoundException", 404);
    c.check(
        out["missing"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Function not found"),
        format!("missing: message {}", out["missing"]["message"]),
    );
    expect_err(&mut c, "qualifier", "ResourceNotFoundException", 404);
    expect_err(&mut c, "not_json", "InvalidRequestContentException", 400);
    expect_err(&mut c, "too_large", "RequestTooLargeException", 413);
    expect_err(&mut c, "event_too_large", "RequestTooLargeException", 413);
    expect_err(&mut c, "throttled", "TooManyRequestsException", 429);
    c.eq(
        "throttle reason",
        &out["throttled"]["reason"],
        &json!("ReservedFunctionConcurrentInvocationLimitExceeded"),
    );
    // The Event ran, later, in the background.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ran = false;
    while Instant::now() < deadline && !ran {
        ran = sup.logs("echo").iter().any(|l| l.contains("yes-async"));
        std::thread::sleep(Duration::from_millis(200));
    }
    c.check(
        ran,
        "the Event invoke ran (its output is in the function's log)",
    );
    c.finish();
}

// ---- boto3: the control plane ---------------------------------------------

#[test]
fn boto3_control_plane() {
    let Some(venv) = setup() else { return };
    let (sup, base) = start(&[]);
    let out = run_script(&venv, &sup, "boto3_control.py", &base);
    let mut c = Checks::new("boto3 control plane");
    let create = &out["create"];
    c.eq("MemorySize", &create["MemorySize"], &json!(256));
    c.eq("Timeout", &create["Timeout"], &json!(5));
    c.eq(
        "Environment",
        &create["Environment"],
        &json!({"Variables": {"STAGE": "one"}}),
    );
    c.eq("Description", &create["Description"], &json!("d1"));
    c.eq("State", &create["State"], &json!("Active"));
    c.eq(
        "conflict",
        &out["conflict"]["class"],
        &json!("ResourceConflictException"),
    );
    c.eq("conflict status", &out["conflict"]["status"], &json!(409));
    c.eq(
        "bad memory",
        &out["bad_memory"]["class"],
        &json!("InvalidParameterValueException"),
    );
    c.eq(
        "S3 code refused",
        &out["s3"]["class"],
        &json!("InvalidParameterValueException"),
    );
    c.eq(
        "Code.Path over HTTP",
        &out["code_path"],
        &json!({"status": 400, "type": "InvalidParameterValueException"}),
    );
    c.eq("get", &out["get"]["name"], &json!("cp"));
    c.eq(
        "get configuration",
        &out["get_config"],
        &json!("app.handler"),
    );
    c.eq("list pages", &out["list_pages"], &json!([["cp"], ["cq"]]));
    c.eq(
        "update config memory",
        &out["update_config"]["MemorySize"],
        &json!(512),
    );
    c.eq(
        "stale revision",
        &out["stale_revision"]["code"],
        &json!("PreconditionFailedException"),
    );
    c.eq(
        "updated code and env",
        &out["after_update"],
        &json!(["v2", "two"]),
    );
    c.eq("reserved concurrency", &out["concurrency"], &json!(5));
    c.eq(
        "GetFunction shows it",
        &out["get_concurrency"],
        &json!({"ReservedConcurrentExecutions": 5}),
    );
    c.eq(
        "reserved concurrency deleted",
        &out["concurrency_deleted"],
        &Value::Null,
    );
    c.eq("layer version", &out["layer"]["version"], &json!(1));
    c.eq("list layers", &out["layers"], &json!(["greet"]));
    c.eq("list layer versions", &out["layer_versions"], &json!([1]));
    c.eq("get layer version", &out["layer_get"], &json!("g"));
    c.eq(
        "function with the layer",
        &out["layer_invoke"],
        &json!("from layer"),
    );
    c.eq(
        "deleted layer version",
        &out["layer_gone"]["class"],
        &json!("ResourceNotFoundException"),
    );
    c.eq("provisioned requested", &out["provisioned_put"], &json!(1));
    c.eq(
        "provisioned ready",
        &out["provisioned_status"],
        &json!("READY"),
    );
    c.eq("provisioned listed", &out["provisioned_list"], &json!(1));
    c.eq(
        "provisioned deleted",
        &out["provisioned_gone"]["class"],
        &json!("ProvisionedConcurrencyConfigNotFoundException"),
    );
    c.eq(
        "event invoke config",
        &out["event_config"],
        &json!({"retries": 1, "age": 3600, "on_failure": "arn:aws:lambda:us-east-1:000000000000:function:cq"}),
    );
    c.eq(
        "event invoke configs listed",
        &out["event_config_list"],
        &json!(1),
    );
    c.eq(
        "directory destination refused",
        &out["event_config_dir"]["class"],
        &json!("InvalidParameterValueException"),
    );
    c.eq(
        "event invoke config deleted",
        &out["event_config_gone"]["class"],
        &json!("ResourceNotFoundException"),
    );
    c.eq("none listed", &out["event_config_list_empty"], &json!(0));
    c.eq("account limit", &out["account"], &json!(1000));
    c.eq(
        "deleted",
        &out["deleted"]["class"],
        &json!("ResourceNotFoundException"),
    );
    c.finish();
}

// ---- the AWS CLI ------------------------------------------------------------

fn aws(venv: &Path, sup: &Supervisor, base: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(venv.join("bin/aws"));
    cmd.args([
        "--endpoint-url",
        base,
        "--cli-read-timeout",
        "60",
        "--cli-connect-timeout",
        "5",
        "--output",
        "json",
    ])
    .args(args)
    .current_dir(sup.dir.path());
    aws_env(&mut cmd, sup.dir.path());
    run_bounded(&mut cmd, SCRIPT_TIMEOUT)
}

#[test]
fn aws_cli_create_function_and_invoke() {
    let Some(venv) = setup() else { return };
    let (sup, base) = start(&[]);
    let zip = sup.dir.path().join("cli.zip");
    {
        let f = fs::File::create(&zip).unwrap();
        let mut z = zip::ZipWriter::new(f);
        z.start_file("app.py", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"def handler(event, context):\n    print('cli says hi')\n    return {'hello': event.get('who')}\n")
            .unwrap();
        z.finish().unwrap();
    }
    let mut c = Checks::new("aws cli");
    let zip_arg = format!("fileb://{}", zip.display());
    let out = aws(
        &venv,
        &sup,
        &base,
        &[
            "lambda",
            "create-function",
            "--function-name",
            "cli",
            "--runtime",
            "python3",
            "--handler",
            "app.handler",
            "--role",
            "arn:aws:iam::000000000000:role/lambdalet",
            "--zip-file",
            &zip_arg,
            "--memory-size",
            "256",
        ],
    );
    c.check(
        out.status.success(),
        format!("create-function: {}", String::from_utf8_lossy(&out.stderr)),
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    c.eq("created name", &created["FunctionName"], &json!("cli"));
    c.eq("created memory", &created["MemorySize"], &json!(256));

    let result = sup.dir.path().join("out.json");
    let out = aws(
        &venv,
        &sup,
        &base,
        &[
            "lambda",
            "invoke",
            "--function-name",
            "cli",
            "--payload",
            r#"{"who":"cli"}"#,
            "--log-type",
            "Tail",
            result.to_str().unwrap(),
        ],
    );
    c.check(
        out.status.success(),
        format!("invoke: {}", String::from_utf8_lossy(&out.stderr)),
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    c.eq("invoke StatusCode", &meta["StatusCode"], &json!(200));
    c.eq(
        "invoke ExecutedVersion",
        &meta["ExecutedVersion"],
        &json!("$LATEST"),
    );
    let tail = common::decode_log_result(&meta);
    c.check(
        tail.contains("cli says hi"),
        format!("the tail log: {tail:?}"),
    );
    let payload: Value =
        serde_json::from_slice(&fs::read(&result).unwrap_or_default()).unwrap_or_default();
    c.eq("invoke payload", &payload, &json!({"hello": "cli"}));

    let out = aws(
        &venv,
        &sup,
        &base,
        &[
            "lambda",
            "invoke",
            "--function-name",
            "missing",
            result.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    c.eq("missing: exit status", out.status.code(), Some(255));
    c.check(
        stderr.contains("ResourceNotFoundException"),
        format!("missing: stderr names the exception: {stderr}"),
    );
    let out = aws(&venv, &sup, &base, &["lambda", "list-functions"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    c.eq(
        "list-functions",
        &listed["Functions"][0]["FunctionName"],
        &json!("cli"),
    );
    let out = aws(
        &venv,
        &sup,
        &base,
        &["lambda", "delete-function", "--function-name", "cli"],
    );
    c.check(
        out.status.success(),
        format!("delete-function: {}", String::from_utf8_lossy(&out.stderr)),
    );
    c.finish();
}

// ---- function URLs ------------------------------------------------------------

#[test]
fn function_urls() {
    let Some(venv) = setup() else { return };
    let (sup, base) = start(&[]);
    let out = run_script(&venv, &sup, "function_urls.py", &base);
    let mut c = Checks::new("function URLs");
    let get = &out["get"];
    c.eq("GET status", &get["status"], &json!(201));
    c.eq("response header", &get["headers"]["x-echo"], &json!("yes"));
    c.eq(
        "response cookies",
        &get["set_cookie"],
        &json!(["session=abc; Path=/", "theme=dark"]),
    );
    let e = &get["event"];
    c.eq("version", &e["version"], &json!("2.0"));
    c.eq("routeKey", &e["routeKey"], &json!("$default"));
    c.eq("rawPath", &e["rawPath"], &json!("/items/7"));
    c.eq(
        "rawQueryString",
        &e["rawQueryString"],
        &json!("a=1&a=2&b=x%20y"),
    );
    c.eq(
        "queryStringParameters",
        &e["queryStringParameters"],
        &json!({"a": "1,2", "b": "x y"}),
    );
    c.eq("cookies", &e["cookies"], &json!(["c1=v1", "c2=v2"]));
    c.eq(
        "lower-cased header",
        &e["headers"]["x-custom"],
        &json!("Hi"),
    );
    c.check(
        e["headers"].get("cookie").is_none(),
        "the cookie header is in cookies, not headers",
    );
    c.eq(
        "http.method",
        &e["requestContext"]["http"]["method"],
        &json!("GET"),
    );
    c.eq(
        "http.path",
        &e["requestContext"]["http"]["path"],
        &json!("/items/7"),
    );
    c.eq(
        "http.sourceIp",
        &e["requestContext"]["http"]["sourceIp"],
        &json!("127.0.0.1"),
    );
    c.eq("no body", &e.get("body"), &None);
    c.eq("GET isBase64Encoded", &e["isBase64Encoded"], &json!(false));
    c.eq(
        "POST text body",
        &out["post"]["event"]["body"],
        &json!("{\"k\": \"v\"}"),
    );
    c.eq(
        "POST text isBase64Encoded",
        &out["post"]["event"]["isBase64Encoded"],
        &json!(false),
    );
    for m in ["PUT", "DELETE", "PATCH"] {
        c.eq(format!("{m} method"), &out["methods"][m], &json!(m));
    }
    c.eq("binary status", &out["binary"]["status"], &json!(200));
    c.eq("binary round trip", &out["binary"]["ok"], &json!(true));
    c.eq(
        "binary content type",
        &out["binary"]["headers"]["content-type"],
        &json!("application/octet-stream"),
    );
    c.eq("bare status", &out["bare"]["status"], &json!(200));
    c.eq(
        "bare content type",
        &out["bare"]["headers"]["content-type"],
        &json!("application/json"),
    );
    c.eq(
        "bare body",
        &out["bare"]["json"],
        &json!({"bare": true, "method": "GET"}),
    );
    c.eq("malformed → 502", &out["malformed"]["status"], &json!(502));
    c.eq("function error → 502", &out["fail"]["status"], &json!(502));
    c.eq("no such function", &out["missing"]["status"], &json!(404));
    c.eq("root path", &out["root"]["event"]["rawPath"], &json!("/"));
    c.finish();
}

/// A body over the limit is refused from its Content-Length, before it is
/// sent: the answer comes while the client has sent only the head.
#[test]
fn body_limit_applies_before_buffering() {
    if !require_root() {
        return;
    }
    let (_sup, base) = start(&[]);
    let addr = base.trim_start_matches("http://");
    let mut c = Checks::new("body limits");
    for (path, want) in [
        ("/url/f/x", "RequestTooLargeException"),
        (
            "/2015-03-31/functions/f/invocations",
            "RequestTooLargeException",
        ),
        ("/2015-03-31/functions", "RequestTooLargeException"),
    ] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000000000\r\n\r\n"
        )
        .unwrap();
        let mut head = [0u8; 512];
        let n = s.read(&mut head).unwrap_or(0);
        let head = String::from_utf8_lossy(&head[..n]);
        c.check(
            head.starts_with("HTTP/1.1 413") && head.contains(want),
            format!("{path}: a 1 GB body is refused at once: {head:?}"),
        );
    }
    // A chunked body (no length declared) over the limit: kept only up to
    // the limit, the rest drained, then refused.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /2015-03-31/functions/f/invocations HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..110 {
        // 110 × 64 KiB = 7,208,960 bytes of JSON whitespace.
        write!(s, "{:X}\r\n", chunk.len()).unwrap();
        s.write_all(&chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut head = [0u8; 1024];
    let n = s.read(&mut head).unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]);
    c.check(
        head.starts_with("HTTP/1.1 413")
            && head.contains("RequestTooLargeException")
            && head.contains("7208960 bytes"),
        format!("a 7 MB chunked invoke body is refused: {head:?}"),
    );
    c.finish();
}

// ---- SigV4 ------------------------------------------------------------------

#[test]
fn sigv4_auth() {
    let Some(venv) = setup() else { return };
    let creds_dir = tempfile::tempdir().unwrap();
    let creds = creds_dir.path().join("credentials");
    fs::write(
        &creds,
        "# test credentials\nAKIDLAMBDALET secret-for-tests\n",
    )
    .unwrap();
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
    let (sup, base) = start(&["--http-credentials", creds.to_str().unwrap()]);
    let out = run_script(&venv, &sup, "sigv4.py", &base);
    let mut c = Checks::new("sigv4");
    c.eq("signed create", &out["created"], &json!("authfn"));
    c.eq("signed invoke", &out["invoked"], &json!({"ok": true}));
    c.eq(
        "signed invoke by ARN",
        &out["invoked_arn"],
        &json!({"ok": true}),
    );
    c.eq("signed function URL", &out["signed_url"], &json!(200));
    c.eq(
        "wrong secret",
        &out["wrong_secret"]["code"],
        &json!("InvalidSignatureException"),
    );
    c.eq(
        "wrong secret status",
        &out["wrong_secret"]["status"],
        &json!(403),
    );
    c.eq(
        "unknown key",
        &out["unknown_key"]["code"],
        &json!("UnrecognizedClientException"),
    );
    c.eq("unsigned API call", &out["unsigned"], &json!(403));
    c.eq("unsigned function URL", &out["unsigned_url"], &json!(403));
    c.eq("tampered body", &out["tampered"], &json!(403));
    c.finish();
}

/// Listening beyond loopback needs credentials; the refusal comes before
/// the supervisor starts (no root needed).
#[test]
fn non_loopback_needs_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bounded(
        Command::new(BIN)
            .args(["serve", "--http", "0.0.0.0:0", "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("sock")),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--http-credentials"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("sock").exists(),
        "the supervisor did not start"
    );

    // A credentials file others can read is refused too.
    let creds = dir.path().join("creds");
    fs::write(&creds, "AKID secret\n").unwrap();
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_bounded(
        Command::new(BIN)
            .args(["serve", "--http", "0.0.0.0:0", "--http-credentials"])
            .arg(&creds)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("sock")),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
}
