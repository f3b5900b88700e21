//! Root integration tests: custom runtimes (`provided`) through the real
//! `lambdalet serve`. The function's `bootstrap` is a program of its own that
//! speaks Lambda's Runtime API over HTTP on AWS_LAMBDA_RUNTIME_API; here it
//! is a Python script run by the interpreter the sandbox mounts at
//! /var/lang (the sandbox root has no shell), using only `http.client`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use common::{require_root, Checks, Supervisor};
use serde_json::{json, Value};

/// A Runtime API client: echoes events with what it saw, and misbehaves on
/// request (`action` in the event, `MODE` in the environment).
const BOOTSTRAP: &str = r#"#!/var/lang/bin/python3 -IS
import http.client, json, os, sys

host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port))

def call(method, path, body=None, headers={}):
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), r.read()

API = "/2018-06-01/runtime/"
print("bootstrap starting, handler", os.environ.get("_HANDLER"), flush=True)
mode = os.environ.get("MODE", "")
if mode == "init_error":
    status, _, body = call("POST", API + "init/error",
        json.dumps({"errorMessage": "no config", "errorType": "Custom.InitFailed", "stackTrace": ["at init"]}),
        {"Lambda-Runtime-Function-Error-Type": "Custom.InitFailed"})
    print("init/error answered", status, flush=True)
    sys.exit(1)
if mode == "init_exit":
    print("giving up before /next", flush=True)
    sys.exit(3)

while True:
    status, headers, body = call("GET", API + "invocation/next")
    event = json.loads(body)
    rid = headers["Lambda-Runtime-Aws-Request-Id"]
    action = event.get("action") if isinstance(event, dict) else None
    print("got event", rid, file=sys.stderr, flush=True)
    if action == "error":
        status, _, body = call("POST", API + f"invocation/{rid}/error",
            json.dumps({"errorMessage": "it broke", "errorType": "MyError", "stackTrace": ["at handler"]}),
            {"Lambda-Runtime-Function-Error-Type": "Unhandled"})
        print("error answered", status, body.decode(), flush=True)
        continue
    if action == "exit":
        print("exiting mid-invoke", flush=True)
        os._exit(7)
    if action == "text":
        call("POST", API + f"invocation/{rid}/response", b"plain text, not JSON")
        continue
    if action == "empty":
        call("POST", API + f"invocation/{rid}/response", b"")
        continue
    if action == "big":
        status, _, body = call("POST", API + f"invocation/{rid}/response", b"[" + b"1," * 3_500_000 + b"1]")
        print("big answered", status, body.decode(), flush=True)
        continue
    probes = {
        "unknown_id": call("POST", API + "invocation/not-a-request/response", b"{}")[0],
        "unknown_path": call("GET", "/2018-06-01/runtime/nothing")[0],
        "init_error_late": call("POST", API + "init/error", b"{}")[0],
    }
    out = {
        "event": event,
        "headers": {k: v for k, v in headers.items() if k.lower().startswith("lambda-runtime-")},
        "env": {k: v for k, v in os.environ.items()},
        "uid": os.getuid(),
        "probes": probes,
        "argv0": sys.argv[0],
    }
    status, _, body = call("POST", API + f"invocation/{rid}/response", json.dumps(out))
    print("response answered", status, flush=True)
"#;

fn make_executable(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Deploy a `provided` function whose code is BOOTSTRAP (as `bootstrap`).
fn create(sup: &Supervisor, name: &str, runtime: &str, env: Value) -> Value {
    create_with(sup, name, runtime, env, json!({}))
}

/// `create` with more CreateFunction fields (MemorySize, Timeout…).
fn create_with(sup: &Supervisor, name: &str, runtime: &str, env: Value, extra: Value) -> Value {
    let code = sup.write_code(name, &[("bootstrap", BOOTSTRAP)]);
    make_executable(&code.join("bootstrap"));
    let mut req = json!({
        "FunctionName": name,
        "Runtime": runtime,
        "Handler": "my.custom-handler",
        "Code": {"Path": code.to_str().unwrap()},
        "Environment": {"Variables": env},
    });
    for (k, v) in extra.as_object().expect("extra fields are an object") {
        req[k] = v.clone();
    }
    sup.request("CreateFunction", req)
        .unwrap_or_else(|e| panic!("CreateFunction {name}: {e:?}\n{}", sup.stderr()))
}

#[test]
fn a_bootstrap_serves_invokes_over_the_runtime_api() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let created = create(&sup, "echo", "provided.al2023", json!({"STAGE": "test"}));
    let mut c = Checks::new("provided: invokes over the Runtime API");
    c.eq("Runtime", created["Runtime"].as_str(), Some("provided"));

    let client_context =
        base64::engine::general_purpose::STANDARD.encode(r#"{"custom":{"who":"test"}}"#);
    let r = sup.client().invoke_with(
        "echo",
        json!({"hello": "world"}),
        json!({"ClientContext": client_context}),
    );
    c.check(
        r.get("FunctionError").is_none(),
        format!("no error: {r}\nlogs:\n{}", sup.logs("echo").join("\n")),
    );
    let p = &r["Payload"];
    c.eq("event", &p["event"], &json!({"hello": "world"}));
    let h = &p["headers"];
    c.eq(
        "request id header",
        h["Lambda-Runtime-Aws-Request-Id"].as_str(),
        r["RequestId"].as_str(),
    );
    let deadline: u64 = h["Lambda-Runtime-Deadline-Ms"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    c.check(
        deadline > now_ms && deadline <= now_ms + 3_000,
        format!("deadline {deadline} within 3 s of now {now_ms}"),
    );
    c.eq(
        "function arn header",
        h["Lambda-Runtime-Invoked-Function-Arn"].as_str(),
        Some("arn:aws:lambda:us-east-1:000000000000:function:echo"),
    );
    let cc: Value = serde_json::from_str(
        h["Lambda-Runtime-Client-Context"]
            .as_str()
            .unwrap_or("null"),
    )
    .unwrap_or(Value::Null);
    c.eq(
        "client context header",
        &cc["custom"]["who"],
        &json!("test"),
    );
    let env = &p["env"];
    for (k, want) in [
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
        ("_HANDLER", "my.custom-handler"),
        ("LAMBDA_TASK_ROOT", "/var/task"),
        ("AWS_LAMBDA_FUNCTION_NAME", "echo"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/echo"),
        ("AWS_REGION", "us-east-1"),
        ("STAGE", "test"),
    ] {
        c.eq(k, env[k].as_str(), Some(want));
    }
    c.check(
        env["AWS_LAMBDA_LOG_STREAM_NAME"]
            .as_str()
            .is_some_and(|s| s.contains("[$LATEST]")),
        format!("log stream name: {}", env["AWS_LAMBDA_LOG_STREAM_NAME"]),
    );
    c.check(
        env.get("AWS_EXECUTION_ENV").is_none(),
        "no AWS_EXECUTION_ENV, as on provided.al2023",
    );
    c.check(
        p["uid"].as_u64().is_some_and(|u| u != 0),
        format!("runs as a non-root uid: {}", p["uid"]),
    );
    c.eq("argv0", p["argv0"].as_str(), Some("/var/task/bootstrap"));
    c.eq(
        "probes (unknown request id, unknown path, init/error after init)",
        &p["probes"],
        &json!({"unknown_id": 400, "unknown_path": 404, "init_error_late": 403}),
    );

    // Warm: the same environment (the bootstrap's loop) serves the next one.
    let again = sup.invoke_ok("echo", json!([1, 2, 3]));
    c.eq("second event", &again["event"], &json!([1, 2, 3]));

    // The bootstrap's output is in the function's log, with START/END/REPORT.
    let logs = sup.logs("echo").join("\n");
    c.check(
        logs.contains("bootstrap starting, handler my.custom-handler"),
        "the bootstrap's stdout is logged",
    );
    c.check(
        logs.contains("got event"),
        "the bootstrap's stderr is logged",
    );
    c.check(logs.contains("REPORT RequestId"), "REPORT lines");
    c.check(
        logs.contains("Init Duration"),
        "the cold start has an Init Duration",
    );
    c.finish();
}

#[test]
fn a_bootstrap_reports_function_errors_and_oversized_responses() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    // A whole vCPU and room to spare: at 128 MB the environment gets 7% of a
    // CPU, and copying 5 MB through two Python processes then takes seconds
    // on a loaded host.
    create_with(
        &sup,
        "errs",
        "provided",
        json!({}),
        json!({"MemorySize": 1769, "Timeout": 30}),
    );
    let mut c = Checks::new("provided: /error and a response over 6 MB");

    let r = sup.invoke("errs", json!({"action": "error"}));
    c.eq(
        "FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "errorType",
        r["Payload"]["errorType"].as_str(),
        Some("MyError"),
    );
    c.eq(
        "errorMessage",
        r["Payload"]["errorMessage"].as_str(),
        Some("it broke"),
    );
    c.eq(
        "stackTrace",
        &r["Payload"]["stackTrace"],
        &json!(["at handler"]),
    );

    let r = sup.invoke("errs", json!({"action": "big"}));
    c.eq(
        "FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "errorType",
        r["Payload"]["errorType"].as_str(),
        Some("Function.ResponseSizeTooLarge"),
    );

    // The wire carries JSON: text is returned as a JSON string, nothing as null.
    c.eq(
        "a text response",
        sup.invoke_ok("errs", json!({"action": "text"})),
        json!("plain text, not JSON"),
    );
    c.eq(
        "an empty response",
        sup.invoke_ok("errs", json!({"action": "empty"})),
        Value::Null,
    );

    // A 5 MB event goes through /next whole, and back.
    let big = "x".repeat(5_000_000);
    let p = sup.invoke_ok("errs", json!({ "big": big }));
    c.check(
        p["event"]["big"].as_str() == Some(big.as_str()),
        "a 5 MB event and response",
    );

    // The environment lives on: the bootstrap got its 202 and 413 and asked
    // for more.
    let ok = sup.invoke_ok("errs", json!({"n": 1}));
    c.eq("after the errors", &ok["event"], &json!({"n": 1}));
    let logs = sup.logs("errs").join("\n");
    c.check(logs.contains("error answered 202"), "/error answered 202");
    c.check(
        logs.contains("big answered 413") && logs.contains("RequestEntityTooLarge"),
        "an oversized response answered 413",
    );
    c.finish();
}

#[test]
fn init_errors_and_exits_fail_like_lambda() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("provided: init errors, exits, a missing bootstrap");

    create(&sup, "initerr", "provided", json!({"MODE": "init_error"}));
    let r = sup.invoke("initerr", json!({}));
    c.eq(
        "init/error: FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "init/error: errorType",
        r["Payload"]["errorType"].as_str(),
        Some("Custom.InitFailed"),
    );
    c.eq(
        "init/error: errorMessage",
        r["Payload"]["errorMessage"].as_str(),
        Some("no config"),
    );
    // The bootstrap got its 202 and was then ended with the environment
    // (as on Lambda), maybe before it could log it; its output before is kept.
    c.check(
        sup.logs("initerr")
            .join("\n")
            .contains("bootstrap starting"),
        "the failed init's output is logged",
    );

    create(&sup, "initexit", "provided", json!({"MODE": "init_exit"}));
    let r = sup.invoke("initexit", json!({}));
    c.eq(
        "exit during init: errorType",
        r["Payload"]["errorType"].as_str(),
        Some("Runtime.ExitError"),
    );

    create(&sup, "crash", "provided", json!({}));
    sup.invoke_ok("crash", json!({}));
    let r = sup.invoke("crash", json!({"action": "exit"}));
    c.eq(
        "exit mid-invoke: FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "exit mid-invoke: errorType",
        r["Payload"]["errorType"].as_str(),
        Some("Runtime.ExitError"),
    );
    c.check(
        r["Payload"]["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains('7')),
        format!("the exit status is named: {}", r["Payload"]["errorMessage"]),
    );
    // A new environment serves the next invoke.
    let ok = sup.invoke_ok("crash", json!({"after": "crash"}));
    c.eq("after the crash", &ok["event"], &json!({"after": "crash"}));

    // No bootstrap at all: Lambda's InvalidEntrypoint.
    let code = sup.write_code("nobootstrap", &[("README", "nothing to run\n")]);
    sup.request(
        "CreateFunction",
        json!({"FunctionName": "nobootstrap", "Runtime": "provided", "Handler": "x",
               "Code": {"Path": code.to_str().unwrap()}}),
    )
    .unwrap();
    let r = sup.invoke("nobootstrap", json!({}));
    c.eq(
        "no bootstrap: errorType",
        r["Payload"]["errorType"].as_str(),
        Some("Runtime.InvalidEntrypoint"),
    );
    c.finish();
}

#[test]
fn a_bootstrap_from_a_layer_runs_when_the_code_has_none() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("provided: /opt/bootstrap from a layer");
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        use std::io::Write as _;
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        zip.start_file("bootstrap", opts).unwrap();
        zip.write_all(BOOTSTRAP.as_bytes()).unwrap();
        zip.finish().unwrap();
    }
    let layer = sup
        .request(
            "PublishLayerVersion",
            json!({"LayerName": "runtime", "Content": {"ZipFile":
                base64::engine::general_purpose::STANDARD.encode(buf.into_inner())}}),
        )
        .unwrap_or_else(|e| panic!("PublishLayerVersion: {e:?}"));
    let code = sup.write_code("fromlayer", &[("handler.txt", "whatever\n")]);
    sup.request(
        "CreateFunction",
        json!({"FunctionName": "fromlayer", "Runtime": "provided.al2", "Handler": "handler.txt",
               "Code": {"Path": code.to_str().unwrap()},
               "Layers": [layer["LayerVersionArn"]]}),
    )
    .unwrap_or_else(|e| panic!("CreateFunction: {e:?}"));
    let p = sup.invoke_ok("fromlayer", json!({"from": "layer"}));
    c.eq("event", &p["event"], &json!({"from": "layer"}));
    c.eq("argv0", p["argv0"].as_str(), Some("/opt/bootstrap"));
    c.eq(
        "_HANDLER",
        p["env"]["_HANDLER"].as_str(),
        Some("handler.txt"),
    );
    c.finish();
}

/// `pip install --target DIR awslambdaric` with the host's python3 (the
/// interpreter the sandbox mounts at /var/lang). False if it could not be
/// installed (no registry) and this is not CI, where that fails the test.
fn install_awslambdaric(dir: &Path) -> bool {
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-compile", "--target"])
        .arg(dir)
        .arg("awslambdaric")
        .output()
        .expect("python3 runs");
    if out.status.success() {
        return true;
    }
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        std::env::var_os("CI").is_none(),
        "pip install awslambdaric failed in CI: {why}"
    );
    eprintln!("skipping: pip install awslambdaric failed: {why}");
    false
}

/// The Python handler awslambdaric runs.
const RIC_APP: &str = r#"
def handler(event, context):
    if event.get("fail"):
        raise ValueError("bad input")
    return {"echo": event, "request_id": context.aws_request_id,
            "function_name": context.function_name,
            "remaining_ms": context.get_remaining_time_in_millis()}
"#;

/// AWS's own runtime client, started as Lambda's docs show (`python -m
/// awslambdaric $_HANDLER`), without a shell: the sandbox has none.
const RIC_BOOTSTRAP: &str = r#"#!/var/lang/bin/python3 -IS
import os, sys
sys.path[:0] = ["/var/task", "/var/task/ric"]
from awslambdaric.__main__ import main
main(["awslambdaric", os.environ["_HANDLER"]])
"#;

#[test]
fn awslambdaric_runs_as_a_custom_runtime() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let code = sup.write_code("ric", &[("bootstrap", RIC_BOOTSTRAP), ("app.py", RIC_APP)]);
    make_executable(&code.join("bootstrap"));
    if !install_awslambdaric(&code.join("ric")) {
        return;
    }
    let mut c = Checks::new("provided: awslambdaric as the runtime client");
    for (name, handler) in [("ric", "app.handler"), ("ricbad", "missing.handler")] {
        sup.request(
            "CreateFunction",
            json!({"FunctionName": name, "Runtime": "provided.al2023", "Handler": handler,
                   "Code": {"Path": code.to_str().unwrap()}, "Timeout": 10}),
        )
        .unwrap_or_else(|e| panic!("CreateFunction {name}: {e:?}"));
    }

    let r = sup.invoke("ric", json!({"n": 1}));
    c.check(
        r.get("FunctionError").is_none(),
        format!("no error: {r}\nlogs:\n{}", sup.logs("ric").join("\n")),
    );
    let p = &r["Payload"];
    c.eq("echo", &p["echo"], &json!({"n": 1}));
    c.eq(
        "request id",
        p["request_id"].as_str(),
        r["RequestId"].as_str(),
    );
    c.eq("function name", p["function_name"].as_str(), Some("ric"));
    c.check(
        p["remaining_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 10_000),
        format!("remaining time {}", p["remaining_ms"]),
    );

    let r = sup.invoke("ric", json!({"fail": true}));
    c.eq(
        "FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "errorType",
        r["Payload"]["errorType"].as_str(),
        Some("ValueError"),
    );
    c.eq(
        "errorMessage",
        r["Payload"]["errorMessage"].as_str(),
        Some("bad input"),
    );

    let r = sup.invoke("ricbad", json!({}));
    c.eq(
        "init error: FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "init error: errorType",
        r["Payload"]["errorType"].as_str(),
        Some("Runtime.ImportModuleError"),
    );
    c.finish();
}
