//! Root integration test of the `lambdalet` CLI as a client of a real
//! supervisor: JSON on stdout, exit codes, and the error kind on stderr.

mod common;

use common::{cli, require_root, Checks, Supervisor};
use serde_json::json;

const APP: &str = r#"
import os

def handler(event, context):
    print("cli says", event.get("say"))
    return {"say": event.get("say"), "color": os.environ.get("COLOR"), "fn": context.function_name}
"#;

#[test]
fn the_cli_mirrors_aws_lambda() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("CLI");
    let s = sup.socket.as_path();
    let code = sup.write_code("cli", &[("app.py", APP)]);
    let code = code.to_str().unwrap();

    let r = cli(
        s,
        &[
            "create-function",
            "clifn",
            "--runtime",
            "python3",
            "--code",
            code,
            "--handler",
            "app.handler",
            "--memory",
            "256",
            "--timeout",
            "5",
            "--env",
            "COLOR=red",
            "--ephemeral-storage",
            "1024",
        ],
    );
    c.eq("create-function exit code", r.code, Some(0));
    if r.code == Some(0) {
        let v = r.json();
        c.eq(
            "create-function FunctionName",
            v["FunctionName"].as_str(),
            Some("clifn"),
        );
        c.eq(
            "create-function MemorySize",
            v["MemorySize"].as_i64(),
            Some(256),
        );
        c.eq("create-function Timeout", v["Timeout"].as_i64(), Some(5));
        c.eq(
            "create-function EphemeralStorage",
            v["EphemeralStorage"]["Size"].as_i64(),
            Some(1024),
        );
        c.eq(
            "create-function Environment",
            v["Environment"]["Variables"].clone(),
            json!({"COLOR": "red"}),
        );
    } else {
        c.fail(format!("create-function: {r:?}"));
    }

    let r = cli(s, &["invoke", "clifn", "--payload", r#"{"say": "hi"}"#]);
    c.eq("invoke exit code", r.code, Some(0));
    if r.code == Some(0) {
        let v = r.json();
        c.eq("invoke StatusCode", v["StatusCode"].as_i64(), Some(200));
        c.eq(
            "invoke Payload",
            v["Payload"].clone(),
            json!({"say": "hi", "color": "red", "fn": "clifn"}),
        );
        c.check(
            v["RequestId"].is_string(),
            format_args!("invoke RequestId: {v}"),
        );
        c.check(v.get("FunctionError").is_none(), "no FunctionError");
    } else {
        c.fail(format!("invoke: {r:?}"));
    }

    let r = cli(
        s,
        &[
            "invoke",
            "clifn",
            "--payload",
            r#"{"say": "tail"}"#,
            "--log-type",
            "Tail",
        ],
    );
    c.eq("invoke --log-type Tail exit code", r.code, Some(0));
    if r.code == Some(0) {
        let v = r.json();
        let tail = common::decode_log_result(&v);
        c.check(
            tail.contains("cli says tail"),
            format_args!("the tail has the output: {tail:?}"),
        );
        c.check(
            tail.contains("REPORT RequestId:"),
            format_args!("the tail has REPORT: {tail:?}"),
        );
    }

    let r = cli(
        s,
        &[
            "update-function-configuration",
            "clifn",
            "--memory",
            "512",
            "--env",
            "COLOR=blue",
        ],
    );
    c.eq("update-function-configuration exit code", r.code, Some(0));
    if r.code == Some(0) {
        c.eq(
            "updated MemorySize",
            r.json()["MemorySize"].as_i64(),
            Some(512),
        );
    }
    let r = cli(s, &["invoke", "clifn", "--payload", r#"{"say": "again"}"#]);
    if r.code == Some(0) {
        c.eq(
            "the new configuration applies",
            r.json()["Payload"]["color"].as_str(),
            Some("blue"),
        );
    } else {
        c.fail(format!("invoke after update: {r:?}"));
    }

    let r = cli(s, &["get-function", "clifn"]);
    c.eq("get-function exit code", r.code, Some(0));
    if r.code == Some(0) {
        c.eq(
            "get-function MemorySize",
            r.json()["MemorySize"].as_i64(),
            Some(512),
        );
    }

    let r = cli(s, &["list-functions"]);
    c.eq("list-functions exit code", r.code, Some(0));
    if r.code == Some(0) {
        let v = r.json();
        c.check(
            v["Functions"]
                .as_array()
                .is_some_and(|f| f.len() == 1 && f[0]["FunctionName"] == "clifn"),
            format_args!("list-functions: {v}"),
        );
    }

    let r = cli(s, &["logs", "clifn"]);
    c.eq("logs exit code", r.code, Some(0));
    c.check(
        r.stdout.contains("START RequestId:")
            && r.stdout.contains("cli says hi")
            && r.stdout.contains("REPORT RequestId:"),
        format_args!("logs prints the log lines: {:?}", r.stdout),
    );

    // Errors: a non-zero exit, the kind on stderr, nothing on stdout.
    for args in [
        &["get-function", "nosuchfn"][..],
        &["invoke", "nosuchfn"][..],
        &["delete-function", "nosuchfn"][..],
        &["logs", "nosuchfn"][..],
    ] {
        let r = cli(s, args);
        c.check(
            r.code.is_some_and(|code| code != 0),
            format_args!("{args:?}: non-zero exit: {r:?}"),
        );
        c.check(
            r.stderr.contains("ResourceNotFoundException"),
            format_args!("{args:?}: stderr names the kind: {:?}", r.stderr),
        );
        c.check(
            r.stdout.trim().is_empty(),
            format_args!("{args:?}: nothing on stdout: {:?}", r.stdout),
        );
    }
    let r = cli(
        s,
        &[
            "create-function",
            "bad",
            "--runtime",
            "python3",
            "--code",
            code,
            "--handler",
            "app.handler",
            "--memory",
            "64",
        ],
    );
    c.check(
        r.code.is_some_and(|code| code != 0),
        format_args!("--memory 64: non-zero exit: {r:?}"),
    );
    c.check(
        r.stderr.contains("InvalidParameterValueException") && r.stderr.contains("MemorySize"),
        format_args!("--memory 64: stderr: {:?}", r.stderr),
    );

    let r = cli(s, &["delete-function", "clifn"]);
    c.eq("delete-function exit code", r.code, Some(0));
    let r = cli(s, &["list-functions"]);
    if r.code == Some(0) {
        c.eq("no function left", r.json()["Functions"].clone(), json!([]));
    }

    // No supervisor on the socket: a clear non-zero exit.
    let r = cli(&sup.dir.path().join("nobody.sock"), &["list-functions"]);
    c.check(
        r.code.is_some_and(|code| code != 0),
        format_args!("no supervisor: non-zero exit: {r:?}"),
    );
    c.check(!r.stderr.is_empty(), "no supervisor: a message on stderr");
    c.finish();
}
