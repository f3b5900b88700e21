//! Root integration tests: invocations, failures, warm reuse, logs, updates,
//! deletion and supervisor restarts, driven through the real `lambdalet serve`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{decode_log_result, mounts_mentioning, require_root, wait_gone, Checks, Supervisor};
use serde_json::{json, Value};

/// A handler with one behaviour per `mode`, and an init token that tells one
/// environment from the next.
const APP: &str = r#"
import os, sys, time, uuid

TOKEN = uuid.uuid4().hex
with open("/tmp/inits", "a") as f:
    f.write("init\n")
N = 0

def handler(event, context):
    global N
    N += 1
    mode = event.get("mode")
    print("hello from invoke", N, event.get("tag"))
    sys.stdout.flush()
    if mode == "raise":
        raise ValueError("boom")
    if mode == "set":
        return {1, 2}
    if mode == "exit":
        os._exit(3)
    if mode == "sleep":
        time.sleep(event["seconds"])
    if mode == "flood":
        for i in range(2000):
            print("flood line %04d %s" % (i, "x" * 60))
    if mode == "spawn":
        # A detached grandchild that would outlive a careless cleanup.
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(300)
                os._exit(0)
            os._exit(0)
        os.waitpid(pid, 0)
    with open("/tmp/inits") as f:
        inits = len(f.read().splitlines())
    return {"token": TOKEN, "n": N, "inits": inits, "uid": os.getuid(), "v": 1,
            "color": os.environ.get("COLOR")}
"#;

fn app(version: u32) -> String {
    APP.replace("\"v\": 1", &format!("\"v\": {version}"))
}

fn is_error(r: &Value) -> bool {
    r.get("FunctionError").is_some()
}

#[test]
fn a_timeout_kills_the_environment_and_the_next_invoke_works() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("timeout");
    sup.create_python(
        "slowpoke",
        &[("app.py", APP)],
        "app.handler",
        json!({"Timeout": 1}),
    );
    let before = sup.invoke_ok("slowpoke", json!({}))["token"].clone();

    let probe = common::LatencyProbe::start(&sup.socket);
    let started = Instant::now();
    let r = sup.invoke("slowpoke", json!({"mode": "sleep", "seconds": 5}));
    let took = started.elapsed();
    let stall = probe.stop();
    c.check(
        stall < Duration::from_millis(500),
        format_args!(
            "the supervisor answers others meanwhile: slowest ListFunctions took {stall:?}"
        ),
    );
    c.eq(
        "FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    let msg = r["Payload"]["errorMessage"].as_str().unwrap_or("");
    c.check(
        msg.contains("Task timed out after 1.00 seconds"),
        format_args!("errorMessage says the task timed out: {msg:?}"),
    );
    c.check(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        format_args!("the timeout answers after about 1 s: took {took:?}"),
    );
    let next = sup.invoke("slowpoke", json!({}));
    c.check(
        !is_error(&next),
        format_args!("the next invoke works: {next}"),
    );
    c.check(
        next["Payload"]["token"] != before,
        "the timed-out environment was killed (the next invoke runs init again)",
    );
    let logs = sup.logs("slowpoke").join("\n");
    c.check(
        logs.contains("Task timed out after 1.00 seconds"),
        format_args!("the log says the task timed out: {logs}"),
    );
    c.finish();
}

#[test]
fn an_exit_mid_invoke_is_an_exit_error_and_the_next_invoke_works() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("exit mid-invoke");
    sup.create_python("quitter", &[("app.py", APP)], "app.handler", json!({}));
    let before = sup.invoke_ok("quitter", json!({}))["token"].clone();
    let probe = common::LatencyProbe::start(&sup.socket);
    let started = Instant::now();
    let r = sup.invoke("quitter", json!({"mode": "exit"}));
    let took = started.elapsed();
    let stall = probe.stop();
    c.check(
        took < Duration::from_secs(1),
        format_args!("an exit is answered within 1 s: took {took:?}"),
    );
    c.check(
        stall < Duration::from_millis(500),
        format_args!(
            "the supervisor answers others meanwhile: slowest ListFunctions took {stall:?}"
        ),
    );
    c.eq(
        "FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "errorType",
        r["Payload"]["errorType"].as_str(),
        Some("Runtime.ExitError"),
    );
    let msg = r["Payload"]["errorMessage"].as_str().unwrap_or("");
    c.check(
        msg.contains("exit status 3"),
        format_args!("errorMessage has the exit status: {msg:?}"),
    );
    let next = sup.invoke("quitter", json!({}));
    c.check(
        !is_error(&next),
        format_args!("the next invoke works: {next}"),
    );
    c.check(
        next["Payload"]["token"] != before,
        "a new environment serves the next invoke",
    );
    c.finish();
}

#[test]
fn handler_errors_have_lambdas_shapes() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("handler errors");
    sup.create_python("raiser", &[("app.py", APP)], "app.handler", json!({}));
    sup.create_python("no-module", &[("app.py", APP)], "nope.handler", json!({}));
    sup.create_python("no-function", &[("app.py", APP)], "app.nope", json!({}));
    // A handler without a function part is refused at deploy time (Lambda
    // would accept it and fail every invoke with Runtime.MalformedHandlerName).
    let code = sup.write_code("bad-handler", &[("app.py", APP)]);
    let bad = sup.request(
        "CreateFunction",
        json!({"FunctionName": "bad-handler", "Runtime": "python3", "Handler": "app",
               "Code": {"Path": code.to_str().unwrap()}}),
    );
    c.check(
        bad.as_ref().is_err_and(|(kind, msg)| {
            kind == "InvalidParameterValueException" && msg.contains("Handler")
        }),
        format_args!("Handler \"app\" is refused naming Handler: {bad:?}"),
    );

    // An unhandled exception: Lambda's body, and the environment lives on.
    let before = sup.invoke_ok("raiser", json!({}))["token"].clone();
    let r = sup.invoke("raiser", json!({"mode": "raise"}));
    let p = &r["Payload"];
    c.eq(
        "raise: FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "raise: errorType",
        p["errorType"].as_str(),
        Some("ValueError"),
    );
    c.eq(
        "raise: errorMessage",
        p["errorMessage"].as_str(),
        Some("boom"),
    );
    c.eq(
        "raise: requestId",
        p["requestId"].as_str(),
        r["RequestId"].as_str(),
    );
    let trace = p["stackTrace"].as_array().cloned().unwrap_or_default();
    c.check(
        !trace.is_empty() && trace.iter().all(Value::is_string),
        format_args!(
            "raise: stackTrace is a list of strings: {}",
            p["stackTrace"]
        ),
    );
    c.check(
        trace.iter().any(|l| {
            let l = l.as_str().unwrap_or("");
            l.contains("/var/task/app.py") && l.contains("raise ValueError(\"boom\")")
        }),
        format_args!("raise: the trace shows the raising line in /var/task/app.py: {trace:?}"),
    );
    let after = sup.invoke_ok("raiser", json!({}));
    c.eq(
        "raise: the same environment serves the next invoke",
        after["token"].clone(),
        before,
    );

    // Non-serialisable result.
    let r = sup.invoke("raiser", json!({"mode": "set"}));
    c.eq(
        "set: FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "set: errorType",
        r["Payload"]["errorType"].as_str(),
        Some("Runtime.MarshalError"),
    );
    let msg = r["Payload"]["errorMessage"].as_str().unwrap_or("");
    c.check(
        msg.contains("Unable to marshal response") && msg.contains("set"),
        format_args!("set: errorMessage: {msg:?}"),
    );

    // Init failures, twice each (the second is a new environment, not a hang).
    for (name, want_type, want_msg) in [
        (
            "no-module",
            "Runtime.ImportModuleError",
            "Unable to import module 'nope': No module named 'nope'",
        ),
        (
            "no-function",
            "Runtime.HandlerNotFound",
            "Handler 'nope' missing on module 'app'",
        ),
    ] {
        for attempt in 1..=2 {
            let started = Instant::now();
            let probe = common::LatencyProbe::start(&sup.socket);
            let r = sup.invoke(name, json!({}));
            let stall = probe.stop();
            c.check(
                stall < Duration::from_millis(500),
                format_args!("{name} #{attempt}: the supervisor answers others meanwhile: slowest ListFunctions took {stall:?}"),
            );
            c.eq(
                format!("{name} #{attempt}: FunctionError"),
                r["FunctionError"].as_str(),
                Some("Unhandled"),
            );
            c.eq(
                format!("{name} #{attempt}: errorType"),
                r["Payload"]["errorType"].as_str(),
                Some(want_type),
            );
            let msg = r["Payload"]["errorMessage"].as_str().unwrap_or("");
            c.check(
                msg.contains(want_msg),
                format_args!("{name} #{attempt}: errorMessage contains {want_msg:?}: got {msg:?}"),
            );
            c.check(
                started.elapsed() < Duration::from_secs(1),
                format_args!(
                    "{name} #{attempt}: an init failure is answered within 1 s: took {:?}",
                    started.elapsed()
                ),
            );
        }
    }
    c.finish();
}

const CONTEXT_APP: &str = r#"
import os, sys

def handler(event, context):
    cc = context.client_context
    return {
        "aws_request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": str(context.memory_limit_in_mb),
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "has_identity": hasattr(context, "identity"),
        "client_custom": getattr(cc, "custom", None),
        "client_env": getattr(cc, "env", None),
        "remaining_ms": context.get_remaining_time_in_millis(),
        "env": dict(os.environ),
        "sys_path0": sys.path[0],
        "event": event,
    }
"#;

#[test]
fn the_context_and_environment_variables_are_lambdas() {
    if !require_root() {
        return;
    }
    use base64::Engine as _;
    let sup = Supervisor::start();
    let mut c = Checks::new("context and environment");
    sup.create_python(
        "ctx",
        &[("app.py", CONTEXT_APP)],
        "app.handler",
        json!({"MemorySize": 256, "Timeout": 5, "Environment": {"Variables": {"FOO": "bar", "EMPTY": ""}}}),
    );
    let client_context = base64::engine::general_purpose::STANDARD
        .encode(json!({"custom": {"k": "v"}, "env": {"e": "1"}}).to_string());
    let r = sup.client().invoke_with(
        "ctx",
        json!({"hello": [1, 2]}),
        json!({"ClientContext": client_context}),
    );
    c.check(!is_error(&r), format_args!("the invoke works: {r}"));
    let p = &r["Payload"];
    c.eq("event", p["event"].clone(), json!({"hello": [1, 2]}));
    c.eq(
        "aws_request_id = RequestId",
        p["aws_request_id"].as_str(),
        r["RequestId"].as_str(),
    );
    c.eq("function_name", p["function_name"].as_str(), Some("ctx"));
    c.eq(
        "function_version",
        p["function_version"].as_str(),
        Some("$LATEST"),
    );
    let arn = p["invoked_function_arn"].as_str().unwrap_or("");
    c.check(
        arn.starts_with("arn:aws:lambda:") && arn.ends_with(":function:ctx"),
        format_args!("invoked_function_arn: {arn:?}"),
    );
    c.eq(
        "memory_limit_in_mb",
        p["memory_limit_in_mb"].as_str(),
        Some("256"),
    );
    c.eq(
        "log_group_name",
        p["log_group_name"].as_str(),
        Some("/aws/lambda/ctx"),
    );
    c.check(
        p["log_stream_name"].as_str().is_some_and(|s| !s.is_empty()),
        format_args!("log_stream_name: {}", p["log_stream_name"]),
    );
    c.eq(
        "context.identity exists",
        p["has_identity"].as_bool(),
        Some(true),
    );
    c.eq(
        "client_context.custom",
        p["client_custom"].clone(),
        json!({"k": "v"}),
    );
    c.eq(
        "client_context.env",
        p["client_env"].clone(),
        json!({"e": "1"}),
    );
    let remaining = p["remaining_ms"].as_i64().unwrap_or(-1);
    c.check(
        remaining > 0 && remaining <= 5000,
        format_args!("get_remaining_time_in_millis() in (0, 5000]: {remaining}"),
    );
    c.eq("sys.path[0]", p["sys_path0"].as_str(), Some("/var/task"));

    let env = &p["env"];
    for (k, want) in [
        ("AWS_LAMBDA_FUNCTION_NAME", "ctx"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/ctx"),
        ("LAMBDA_TASK_ROOT", "/var/task"),
        ("_HANDLER", "app.handler"),
        ("FOO", "bar"),
        ("EMPTY", ""),
    ] {
        c.eq(format!("${k}"), env[k].as_str(), Some(want));
    }
    for k in [
        "AWS_REGION",
        "TZ",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_EXECUTION_ENV",
    ] {
        c.check(
            env[k].as_str().is_some_and(|v| !v.is_empty()),
            format_args!("${k} is set: {}", env[k]),
        );
    }
    // Nothing of the supervisor's own environment leaks in.
    let leaked: Vec<&String> = env
        .as_object()
        .map(|m| {
            m.keys()
                .filter(|k| {
                    k.starts_with("LAMBDALET") || k.starts_with("CARGO") || k.starts_with("RUST")
                })
                .collect()
        })
        .unwrap_or_default();
    c.check(
        leaked.is_empty(),
        format_args!("host variables leak into the function: {leaked:?}"),
    );
    c.finish();
}

/// The REPORT line of `request_id` in `lines`.
fn report_of<'a>(lines: &'a [String], request_id: &str) -> Option<&'a String> {
    lines
        .iter()
        .find(|l| l.contains("REPORT") && l.contains(&format!("RequestId: {request_id}")))
}

#[test]
fn warm_environments_are_reused_and_logged_like_lambda() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("warm reuse and logs");
    sup.create_python("warm", &[("app.py", APP)], "app.handler", json!({}));
    let mut client = sup.client();
    let r1 = client.invoke("warm", json!({"tag": "first"}));
    let r2 = client.invoke("warm", json!({"tag": "second"}));
    let (p1, p2) = (&r1["Payload"], &r2["Payload"]);
    c.check(p1["token"].is_string(), format_args!("first invoke: {r1}"));
    c.eq(
        "the second invoke sees the first's init token",
        &p2["token"],
        &p1["token"],
    );
    c.eq(
        "invocation counter",
        (p1["n"].as_i64(), p2["n"].as_i64()),
        (Some(1), Some(2)),
    );
    c.eq("init ran once", p2["inits"].as_i64(), Some(1));

    let rid1 = r1["RequestId"].as_str().unwrap_or("?").to_string();
    let rid2 = r2["RequestId"].as_str().unwrap_or("?").to_string();
    c.check(rid1 != rid2, "request ids differ");
    let lines = sup.logs("warm");
    let all = lines.join("\n");
    for rid in [&rid1, &rid2] {
        c.check(
            lines
                .iter()
                .any(|l| l.contains("START") && l.contains(&format!("RequestId: {rid}"))),
            format_args!("a START line for {rid}"),
        );
        c.check(
            lines
                .iter()
                .any(|l| l.contains("END") && l.contains(&format!("RequestId: {rid}"))),
            format_args!("an END line for {rid}"),
        );
    }
    c.check(
        all.contains("hello from invoke 1 first"),
        format_args!("the function's output is logged: {all}"),
    );
    c.check(
        all.contains("hello from invoke 2 second"),
        "the second invoke's output is logged",
    );
    match (report_of(&lines, &rid1), report_of(&lines, &rid2)) {
        (Some(first), Some(second)) => {
            c.check(
                first.contains("Init Duration: "),
                format_args!("the cold start's REPORT has Init Duration: {first:?}"),
            );
            c.check(
                !second.contains("Init Duration"),
                format_args!("the warm REPORT has no Init Duration: {second:?}"),
            );
            for field in [
                "\tDuration: ",
                "\tBilled Duration: ",
                "\tMemory Size: 128 MB",
                "\tMax Memory Used: ",
            ] {
                c.check(
                    first.contains(field),
                    format_args!("REPORT has {field:?}: {first:?}"),
                );
            }
            let used = first
                .split('\t')
                .find_map(|f| f.strip_prefix("Max Memory Used: "))
                .and_then(|f| f.strip_suffix(" MB"))
                .and_then(|n| n.parse::<u64>().ok());
            c.check(
                used.is_some_and(|u| (1..=128).contains(&u)),
                format_args!("Max Memory Used is measured (1–128 MB): {first:?}"),
            );
        }
        other => c.fail(format!("REPORT lines for both invokes: {other:?}\n{all}")),
    }

    // LogType Tail: base64 of the invoke's log tail.
    let r3 = client.invoke_with("warm", json!({"tag": "third"}), json!({"LogType": "Tail"}));
    let rid3 = r3["RequestId"].as_str().unwrap_or("?");
    let tail = decode_log_result(&r3);
    for want in [
        format!("START RequestId: {rid3}"),
        "hello from invoke 3 third".to_string(),
        format!("END RequestId: {rid3}"),
        format!("REPORT RequestId: {rid3}"),
    ] {
        c.check(
            tail.contains(&want),
            format_args!("the tail has {want:?}: {tail:?}"),
        );
    }
    let r4 = client.invoke("warm", json!({}));
    c.check(
        r4.get("LogResult").is_none(),
        format_args!("no LogResult without LogType Tail: {r4}"),
    );

    // A flood of output: the tail is the last 4 KB and still ends with REPORT.
    let r5 = client.invoke_with("warm", json!({"mode": "flood"}), json!({"LogType": "Tail"}));
    let rid5 = r5["RequestId"].as_str().unwrap_or("?");
    let tail = decode_log_result(&r5);
    c.check(
        tail.len() <= 4096,
        format_args!("the tail is at most 4 KB: {} bytes", tail.len()),
    );
    c.check(
        tail.contains(&format!("REPORT RequestId: {rid5}")) && tail.contains("flood line 1999"),
        format_args!("the tail is the end of the log: {tail:?}"),
    );
    c.check(
        !tail.contains(&format!("START RequestId: {rid5}")),
        "the tail of a long log drops its beginning",
    );
    c.finish();
}

#[test]
fn updates_retire_old_environments() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("updates");
    let created = sup.create_python(
        "upd",
        &[("app.py", &app(1))],
        "app.handler",
        json!({"Timeout": 10}),
    );
    let v1 = sup.invoke_ok("upd", json!({}));
    c.eq("v1 runs", v1["v"].as_i64(), Some(1));

    // New code: the idle environment goes, the next invoke runs the new code.
    let v2_dir = sup.write_code("upd-v2", &[("app.py", &app(2))]);
    let updated = sup
        .request(
            "UpdateFunctionCode",
            json!({"FunctionName": "upd", "Path": v2_dir.to_str().unwrap()}),
        )
        .unwrap_or_else(|e| panic!("UpdateFunctionCode: {e:?}"));
    c.check(
        updated["CodeSha256"] != created["CodeSha256"],
        format_args!(
            "CodeSha256 changes with the code: {} → {}",
            created["CodeSha256"], updated["CodeSha256"]
        ),
    );
    c.check(
        updated["RevisionId"] != created["RevisionId"],
        "RevisionId changes",
    );
    let v2 = sup.invoke_ok("upd", json!({}));
    c.eq("the new code runs", v2["v"].as_i64(), Some(2));
    c.check(
        v2["token"] != v1["token"],
        "a new environment runs the new code",
    );
    let envs = env_names(&sup);
    c.eq("one environment after the code update", envs.len(), 1);

    // New configuration: same.
    let conf = sup
        .request(
            "UpdateFunctionConfiguration",
            json!({"FunctionName": "upd", "MemorySize": 256, "Environment": {"Variables": {"COLOR": "blue"}}}),
        )
        .unwrap_or_else(|e| panic!("UpdateFunctionConfiguration: {e:?}"));
    c.eq(
        "MemorySize is updated",
        conf["MemorySize"].as_i64(),
        Some(256),
    );
    let v3 = sup.invoke_ok("upd", json!({}));
    c.eq(
        "the new configuration applies",
        v3["color"].as_str(),
        Some("blue"),
    );
    c.check(
        v3["token"] != v2["token"],
        "a new environment runs the new configuration",
    );
    c.eq(
        "one environment after the configuration update",
        env_names(&sup).len(),
        1,
    );
    let got = sup
        .request("GetFunction", json!({"FunctionName": "upd"}))
        .unwrap();
    c.eq(
        "GetFunction MemorySize",
        got["MemorySize"].as_i64(),
        Some(256),
    );
    c.eq(
        "GetFunction Timeout kept",
        got["Timeout"].as_i64(),
        Some(10),
    );

    // An update during an invoke: the running invoke finishes on the old code,
    // the next one runs the new.
    let socket = sup.socket.clone();
    let slow = std::thread::spawn(move || {
        common::Client::connect(&socket).invoke("upd", json!({"mode": "sleep", "seconds": 1}))
    });
    std::thread::sleep(Duration::from_millis(300));
    let v4_dir = sup.write_code("upd-v4", &[("app.py", &app(4))]);
    let r = sup.request(
        "UpdateFunctionCode",
        json!({"FunctionName": "upd", "Path": v4_dir.to_str().unwrap()}),
    );
    c.check(
        r.is_ok(),
        format_args!("UpdateFunctionCode during an invoke: {r:?}"),
    );
    let during = slow.join().unwrap();
    c.eq(
        "the running invoke finishes on the old code",
        during["Payload"]["v"].as_i64(),
        Some(2),
    );
    let v4 = sup.invoke_ok("upd", json!({}));
    c.eq(
        "the next invoke runs the new code",
        v4["v"].as_i64(),
        Some(4),
    );
    c.eq(
        "one environment after the busy update",
        env_names(&sup).len(),
        1,
    );
    c.finish();
}

/// Names of the environment cgroups below the supervisor's parent.
fn env_names(sup: &Supervisor) -> std::collections::BTreeSet<String> {
    let parents = sup.cgroup_parent_dirs();
    sup.env_cgroup_dirs()
        .iter()
        .filter(|d| d.parent().is_some_and(|p| parents.iter().any(|q| q == p)))
        .filter_map(|d| d.file_name()?.to_str().map(String::from))
        .collect()
}

/// Host-side leftovers of `sup`'s environments: live processes among `pids`,
/// environment cgroups, mounts mentioning the state dir.
fn leftovers(sup: &Supervisor, pids: &[i32], sup_pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for p in pids {
        if common::alive(*p) {
            out.push(format!("process {}", common::describe_pid(*p)));
        }
    }
    for d in sup.env_cgroup_dirs() {
        out.push(format!("cgroup {}", d.display()));
    }
    let state = sup.state_dir.display().to_string();
    let mut infos = vec![Path::new("/proc/self/mountinfo").to_path_buf()];
    let sup_info = Path::new("/proc")
        .join(sup_pid.to_string())
        .join("mountinfo");
    if sup_info.exists() {
        infos.push(sup_info);
    }
    for info in infos {
        for m in mounts_mentioning(&info, &state) {
            out.push(format!("mount in {}: {m}", info.display()));
        }
    }
    out
}

#[test]
fn delete_leaves_no_process_cgroup_or_mount() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("delete");
    sup.create_python("doomed", &[("app.py", APP)], "app.handler", json!({}));
    sup.create_python("survivor", &[("app.py", APP)], "app.handler", json!({}));
    let uid = sup.invoke_ok("doomed", json!({"mode": "spawn"}))["uid"]
        .as_u64()
        .unwrap_or(0) as u32;
    let survivor = sup.invoke_ok("survivor", json!({}))["token"].clone();
    let pids = sup.processes_of_uid(uid);
    c.check(
        pids.len() >= 2,
        format_args!(
            "the environment's PID 1 and its detached grandchild run as uid {uid}: {pids:?}"
        ),
    );
    let dirs_before = sup.env_cgroup_dirs();
    c.check(!dirs_before.is_empty(), "the environments have cgroups");

    let started = Instant::now();
    let r = sup.request("DeleteFunction", json!({"FunctionName": "doomed"}));
    c.check(r.is_ok(), format_args!("DeleteFunction: {r:?}"));
    c.check(
        started.elapsed() < Duration::from_secs(3),
        format_args!("delete took {:?}", started.elapsed()),
    );

    // Right after the answer: nothing of the function is left.
    let alive_now: Vec<String> = pids
        .iter()
        .filter(|&&p| common::alive(p))
        .map(|&p| common::describe_pid(p))
        .collect();
    c.check(
        alive_now.is_empty(),
        format_args!(
            "processes of the deleted function after DeleteFunction answered: {alive_now:?}"
        ),
    );
    let by_uid = sup.processes_of_uid(uid);
    c.check(
        by_uid.is_empty(),
        format_args!("processes of uid {uid} under the supervisor: {by_uid:?}"),
    );
    let names = env_names(&sup);
    c.eq(
        "environment cgroups left (only the survivor's)",
        names.len(),
        1,
    );
    let state = sup.state_dir.display().to_string();
    let mounts = mounts_mentioning(Path::new("/proc/self/mountinfo"), &state);
    c.check(
        mounts.is_empty(),
        format_args!("host mounts mention the state dir: {mounts:?}"),
    );
    let sup_mounts = mounts_mentioning(
        &Path::new("/proc")
            .join(sup.pid().to_string())
            .join("mountinfo"),
        &state,
    );
    c.check(
        sup_mounts.is_empty(),
        format_args!("the supervisor's mounts mention the state dir: {sup_mounts:?}"),
    );
    let code = sup.code_revisions_dir("doomed");
    c.check(
        !code.exists(),
        format_args!("the code is removed: {} exists", code.display()),
    );

    let (kind, _) = sup
        .request("GetFunction", json!({"FunctionName": "doomed"}))
        .unwrap_err();
    c.eq(
        "GetFunction after delete",
        kind.as_str(),
        "ResourceNotFoundException",
    );
    let (kind, _) = sup
        .request("Invoke", json!({"FunctionName": "doomed"}))
        .unwrap_err();
    c.eq(
        "Invoke after delete",
        kind.as_str(),
        "ResourceNotFoundException",
    );
    let again = sup.invoke_ok("survivor", json!({}));
    c.eq(
        "the other function's environment is untouched",
        again["token"].clone(),
        survivor,
    );

    // A function of the same name starts from scratch.
    sup.create_python("doomed", &[("app.py", &app(7))], "app.handler", json!({}));
    let reborn = sup.invoke_ok("doomed", json!({}));
    c.eq(
        "a new function of the same name runs its own code",
        reborn["v"].as_i64(),
        Some(7),
    );
    c.finish();
}

#[test]
fn sigterm_stops_cleanly_and_functions_persist() {
    if !require_root() {
        return;
    }
    let mut sup = Supervisor::start();
    let mut c = Checks::new("SIGTERM");
    sup.create_python(
        "keeper",
        &[("app.py", APP)],
        "app.handler",
        json!({"MemorySize": 192}),
    );
    let first = sup.invoke_ok("keeper", json!({"mode": "spawn"}));
    let uid = first["uid"].as_u64().unwrap_or(0) as u32;
    let pids = sup.processes_of_uid(uid);
    c.check(
        pids.len() >= 2,
        format_args!("processes of the environment: {pids:?}"),
    );
    let sup_pid = sup.pid();
    let started = Instant::now();
    let status = sup.stop();
    c.check(
        status.is_some_and(|s| s.success()),
        format_args!(
            "the supervisor exits 0 on SIGTERM: {status:?} after {:?}",
            started.elapsed()
        ),
    );
    let left = leftovers(&sup, &pids, sup_pid);
    c.check(
        left.is_empty(),
        format_args!("left behind after SIGTERM: {left:#?}"),
    );
    c.check(!sup.socket.exists(), "the socket is removed");

    sup.restart();
    let got = sup.request("GetFunction", json!({"FunctionName": "keeper"}));
    c.check(
        got.as_ref().is_ok_and(|g| g["MemorySize"] == 192),
        format_args!("the function persists: {got:?}"),
    );
    let again = sup.invoke("keeper", json!({}));
    c.check(
        !is_error(&again),
        format_args!("it can be invoked after the restart: {again}"),
    );
    c.eq(
        "it keeps its uid",
        again["Payload"]["uid"].as_u64(),
        Some(u64::from(uid)),
    );
    c.finish();
}

#[test]
fn after_kill_9_a_restart_cleans_the_old_run_and_keeps_functions() {
    if !require_root() {
        return;
    }
    let mut sup = Supervisor::start();
    let mut c = Checks::new("kill -9 and restart");
    sup.create_python("phoenix", &[("app.py", APP)], "app.handler", json!({}));
    let first = sup.invoke_ok("phoenix", json!({"mode": "spawn"}));
    let uid = first["uid"].as_u64().unwrap_or(0) as u32;
    let sup_pid = sup.pid();
    let mut pids = sup.processes_of_uid(uid);
    c.check(
        pids.len() >= 2,
        format_args!("processes of the environment: {pids:?}"),
    );
    let zygotes = common::zygote_pids(sup_pid);
    c.check(
        !zygotes.is_empty(),
        "the zygote is a child of the supervisor",
    );
    pids.extend(&zygotes);

    sup.kill9();
    sup.restart();
    // The restarted supervisor listens only after removing the old run's
    // environments; allow the old zygote a moment to see its channel close.
    let left = wait_gone(&pids, Duration::from_secs(3));
    let described: Vec<String> = left.iter().map(|&p| common::describe_pid(p)).collect();
    c.check(
        left.is_empty(),
        format_args!("processes of the killed run still alive: {described:?}"),
    );
    let cgroups = sup.env_cgroup_dirs();
    c.check(
        cgroups.is_empty(),
        format_args!("environment cgroups of the killed run: {cgroups:?}"),
    );

    let got = sup.request("GetFunction", json!({"FunctionName": "phoenix"}));
    c.check(got.is_ok(), format_args!("the function persists: {got:?}"));
    let listed = sup.request("ListFunctions", json!({})).unwrap_or_default();
    c.check(
        listed["Functions"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["FunctionName"] == "phoenix")),
        format_args!("ListFunctions has it: {listed}"),
    );
    let again = sup.invoke("phoenix", json!({}));
    c.check(
        !is_error(&again),
        format_args!("it can be invoked after the restart: {again}"),
    );
    c.check(
        again["Payload"]["token"] != first["token"],
        "a new environment serves it",
    );
    c.finish();
}

#[test]
fn a_dead_zygote_is_restarted() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("zygote restart");
    sup.create_python("z1", &[("app.py", APP)], "app.handler", json!({}));
    sup.create_python("z2", &[("app.py", APP)], "app.handler", json!({}));
    let warm = sup.invoke_ok("z1", json!({}))["token"].clone();
    let sup_pid = sup.pid();
    // Environments' PID 1s are the supervisor's children too, forked from
    // the zygote: only the zygote shares the supervisor's PID namespace.
    let zygote = common::zygote_pids(sup_pid).first().copied();
    let Some(zygote) = zygote else {
        c.fail("no zygote child of the supervisor found");
        return c.finish();
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = wait_gone(&[zygote], Duration::from_secs(2));
    // A cold start needs the new zygote.
    let started = Instant::now();
    let cold = sup.invoke("z2", json!({}));
    c.check(
        !is_error(&cold),
        format_args!("a cold start after the zygote died works: {cold}"),
    );
    c.check(
        started.elapsed() < Duration::from_secs(5),
        format_args!("took {:?}", started.elapsed()),
    );
    let still = sup.invoke_ok("z1", json!({}))["token"].clone();
    c.eq("a warm environment survives its zygote", still, warm);
    c.check(
        sup.stderr().contains("zygote"),
        "the supervisor logs the zygote's death",
    );
    c.finish();
}

#[test]
fn idle_environments_are_reclaimed_after_the_keep_alive() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start_with(&["--keep-alive", "1", "--prewarm", "0"]);
    let mut c = Checks::new("keep-alive");
    sup.create_python("brief", &[("app.py", APP)], "app.handler", json!({}));
    let first = sup.invoke_ok("brief", json!({}));
    let uid = first["uid"].as_u64().unwrap_or(0) as u32;
    let pids = sup.processes_of_uid(uid);
    c.check(!pids.is_empty(), "the environment runs");
    let left = wait_gone(&pids, Duration::from_secs(5));
    c.check(
        left.is_empty(),
        format_args!("the idle environment is reclaimed within 5 s: {left:?}"),
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while !env_names(&sup).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    c.eq(
        "environment cgroups after the reclaim",
        env_names(&sup).len(),
        0,
    );
    let again = sup.invoke_ok("brief", json!({}));
    c.check(
        again["token"] != first["token"],
        "the next invoke is a cold start",
    );
    c.finish();
}

const FLOOD_APP: &str = r#"
import sys

def handler(event, context):
    line = "f" * 1023 + "\n"
    block = line * 1024  # 1 MiB of 1 KiB lines
    for _ in range(event["mib"]):
        sys.stdout.write(block)
    # And one line far longer than any log line may be.
    sys.stdout.write("L" * (4 * 1024 * 1024) + "\n")
    sys.stdout.flush()
    print("flood done")
    return {"ok": True}
"#;

/// Total size of the regular files below `dir`.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                total += dir_size(&e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// The supervisor's resident memory, in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_output_cannot_fill_the_disk_or_the_supervisors_memory() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("output flood");
    sup.create_python(
        "flood",
        &[("app.py", FLOOD_APP)],
        "app.handler",
        json!({"Timeout": 60}),
    );
    sup.create_python("quiet", &[("app.py", APP)], "app.handler", json!({}));
    sup.invoke_ok("quiet", json!({}));
    let rss_before = rss_kib(sup.pid());
    let probe = common::LatencyProbe::start(&sup.socket);
    let started = Instant::now();
    let r = sup.invoke("flood", json!({"mib": 64}));
    let took = started.elapsed();
    let stall = probe.stop();
    let rss_after = rss_kib(sup.pid());
    eprintln!(
        "64 MiB of output: answered in {took:?}, slowest ListFunctions {stall:?}, supervisor RSS {rss_before} → {rss_after} KiB"
    );
    c.check(
        !is_error(&r),
        format_args!("the flooding invoke completes: {r}"),
    );
    c.check(
        stall < Duration::from_millis(500),
        format_args!(
            "the supervisor answers others during the flood: slowest ListFunctions took {stall:?}"
        ),
    );
    c.check(
        rss_after < rss_before + 64 * 1024,
        format_args!("the supervisor's memory stays bounded: RSS {rss_before} → {rss_after} KiB"),
    );
    let logs = sup.state_dir.join("logs");
    let size = dir_size(&logs);
    c.check(
        size <= 24 * 1024 * 1024,
        format_args!(
            "the logs on disk stay bounded: {} has {size} bytes",
            logs.display()
        ),
    );
    let lines = sup.logs("flood");
    c.check(
        lines.iter().any(|l| l.contains("flood done")),
        "the end of the output is kept",
    );
    c.check(
        lines.iter().all(|l| l.len() <= 256 * 1024 + 1024),
        format_args!(
            "an over-long line is cut: longest kept line has {} bytes",
            lines.iter().map(String::len).max().unwrap_or(0)
        ),
    );
    let next = sup.invoke("quiet", json!({}));
    c.check(
        !is_error(&next),
        format_args!("other functions still work: {next}"),
    );
    c.finish();
}

#[test]
fn concurrent_invokes_get_their_own_environments() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("concurrency");
    sup.create_python(
        "pair",
        &[("app.py", APP)],
        "app.handler",
        json!({"Timeout": 10}),
    );
    sup.invoke_ok("pair", json!({}));
    let started = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let socket = sup.socket.clone();
            std::thread::spawn(move || {
                common::Client::connect(&socket)
                    .invoke("pair", json!({"mode": "sleep", "seconds": 1}))
            })
        })
        .collect();
    let results: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let took = started.elapsed();
    c.check(
        results.iter().all(|r| !is_error(r)),
        format_args!("both invokes work: {results:?}"),
    );
    c.check(
        results[0]["Payload"]["token"] != results[1]["Payload"]["token"],
        "two environments served them",
    );
    c.check(
        took < Duration::from_millis(1900),
        format_args!("they ran side by side: took {took:?}"),
    );
    c.finish();
}

#[test]
fn cold_starts_take_a_blank_made_ahead_of_time_and_the_pool_refills() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start_with(&["--prewarm", "2"]);
    let mut c = Checks::new("blank pool");
    // Two blanks: namespaced, pivoted, waiting for a function. (While one
    // is made, its short-lived parent is in its cgroup too: wait for n.)
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pids = sup.processes_in_cgroups();
            if pids.len() == n || Instant::now() > deadline {
                return pids;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Wait until both finished their set-up (they say "blank" then, and
    // the metrics count them as ready blanks), and only then take their
    // pids: while the second is made, its short-lived parent can be the
    // second process in the cgroups.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let m = sup.request("GetMetrics", json!({})).unwrap_or_default();
        if m["Account"]["BlankEnvironments"] == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let blanks = wait_for(2);
    c.eq("blank environments made at start", blanks.len(), 2);
    sup.create_python("pooled", &[("app.py", APP)], "app.handler", json!({}));
    let r = sup.invoke_ok("pooled", json!({}));
    let uid = r["uid"].as_u64().unwrap_or(0) as u32;
    let mine = sup.processes_of_uid(uid);
    c.check(
        !mine.is_empty() && mine.iter().all(|p| blanks.contains(p)),
        format_args!(
            "the function runs in one of the blanks made before it existed: {mine:?} ⊆ {blanks:?}"
        ),
    );
    // The pool is topped up again: the function's environment and 2 blanks.
    let after = wait_for(3);
    c.eq("environments after the refill", after.len(), 3);
    let logs = sup.logs("pooled");
    c.check(
        logs.iter().any(|l| l.contains("Init Duration")),
        format_args!("the cold start reports an Init Duration: {logs:?}"),
    );
    c.finish();
}
