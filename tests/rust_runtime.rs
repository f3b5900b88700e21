//! Root integration test: a Rust function built with AWS's own runtime client
//! (the `lambda_runtime` crate from crates.io, examples/rust-hello), deployed
//! as a `provided` function whose `bootstrap` is the binary cargo built on
//! this host (dynamically linked against glibc: the sandbox binds the host's
//! library dirs). No one here wrote the client: it serves invokes, reports a
//! handler's error and a panic, and fails its init, exactly as it does on
//! Lambda.
//!
//! The first run builds the function (about 2.5 minutes cold, 68 crates);
//! later runs reuse `<target>/tmp/rust-functions` (tests/common/rust_function.rs).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{require_root, rust_function, Checks, Supervisor};
use serde_json::{json, Value};

/// Deploy `bin` as the `bootstrap` of a provided.al2023 function.
fn create(sup: &Supervisor, name: &str, bin: &Path, env: Value) {
    let code = sup.write_code(name, &[]);
    let bootstrap = code.join("bootstrap");
    fs::copy(bin, &bootstrap).unwrap();
    fs::set_permissions(&bootstrap, fs::Permissions::from_mode(0o755)).unwrap();
    sup.request(
        "CreateFunction",
        json!({"FunctionName": name, "Runtime": "provided.al2023", "Handler": "bootstrap",
               "Code": {"Path": code.to_str().unwrap()}, "Environment": {"Variables": env}}),
    )
    .unwrap_or_else(|e| panic!("CreateFunction {name}: {e:?}\n{}", sup.stderr()));
}

#[test]
fn the_lambda_runtime_crate_serves_fails_and_fails_init_like_lambda() {
    if !require_root() {
        return;
    }
    let bin = match rust_function::build_or_skip("rust-hello") {
        Ok(Some(bin)) => bin,
        Ok(None) => return,
        Err(why) => panic!("building examples/rust-hello failed in CI: {why}"),
    };
    let sup = Supervisor::start();
    let mut c = Checks::new("lambda_runtime (Rust) as a custom runtime");
    create(&sup, "rusthello", &bin, json!({}));

    // A cold start, then the same environment warm.
    let r = sup.invoke("rusthello", json!({"name": "lambdalet"}));
    let logs = || sup.logs("rusthello").join("\n");
    c.check(
        r.get("FunctionError").is_none(),
        format!("no error: {r}\nlogs:\n{}", logs()),
    );
    let p = &r["Payload"];
    c.eq("message", p["message"].as_str(), Some("Hello, lambdalet!"));
    c.eq("event", &p["event"], &json!({"name": "lambdalet"}));
    c.eq(
        "the request id the client got",
        p["request_id"].as_str(),
        r["RequestId"].as_str(),
    );
    c.eq(
        "invoked function ARN",
        p["invoked_function_arn"].as_str(),
        Some("arn:aws:lambda:us-east-1:000000000000:function:rusthello"),
    );
    c.eq(
        "function name",
        p["function_name"].as_str(),
        Some("rusthello"),
    );
    c.eq(
        "function version",
        p["function_version"].as_str(),
        Some("$LATEST"),
    );
    c.eq("memory", p["memory_mb"].as_u64(), Some(128));
    c.eq(
        "log group",
        p["log_group"].as_str(),
        Some("/aws/lambda/rusthello"),
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    c.check(
        p["deadline_ms"]
            .as_u64()
            .is_some_and(|d| d > now_ms.saturating_sub(3_000) && d <= now_ms + 3_000),
        format!(
            "deadline {} within the 3 s timeout of now {now_ms}",
            p["deadline_ms"]
        ),
    );
    let warm = sup.invoke_ok("rusthello", json!({}));
    c.eq(
        "warm: message",
        warm["message"].as_str(),
        Some("Hello, world!"),
    );

    // The handler's Err: lambda_runtime posts /invocation/{id}/error with
    // its Diagnostic; Lambda shows it as an Unhandled function error.
    let r = sup.invoke("rusthello", json!({"fail": "error"}));
    c.eq(
        "error: FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "error: errorType",
        r["Payload"]["errorType"].as_str(),
        Some("HelloError"),
    );
    let rid = r["RequestId"].as_str().unwrap_or("?").to_string();
    c.eq(
        "error: errorMessage",
        r["Payload"]["errorMessage"].as_str(),
        Some(format!("asked to fail (request {rid})").as_str()),
    );

    // A panic in the handler: caught by lambda_runtime and reported as an
    // error of the invoke; the environment lives on.
    let r = sup.invoke("rusthello", json!({"fail": "panic"}));
    c.eq(
        "panic: FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "panic: errorMessage",
        r["Payload"]["errorMessage"].as_str(),
        Some("Lambda panicked: asked to panic"),
    );
    c.check(
        r["Payload"]["errorType"]
            .as_str()
            .is_some_and(|t| t.contains("Any")),
        format!(
            "panic: errorType names the panic payload's type: {}",
            r["Payload"]["errorType"]
        ),
    );
    let after = sup.invoke_ok("rusthello", json!({"name": "again"}));
    c.eq(
        "after the errors",
        after["message"].as_str(),
        Some("Hello, again!"),
    );
    let log_text = logs();
    c.check(
        log_text.contains("Init Duration"),
        "the cold start's REPORT has an Init Duration",
    );
    c.eq(
        "one environment served all of it (one cold start)",
        log_text.matches("Init Duration").count(),
        1,
    );

    // main fails before lambda_runtime::run: the crate reports nothing (its
    // /init/error is for SnapStart hooks only); the process prints the error
    // and exits 1 before its first /next, and Lambda answers
    // Runtime.ExitError.
    create(&sup, "rustinitfail", &bin, json!({"MODE": "init_fail"}));
    let r = sup.invoke("rustinitfail", json!({}));
    c.eq(
        "init fail: FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "init fail: errorType",
        r["Payload"]["errorType"].as_str(),
        Some("Runtime.ExitError"),
    );
    c.check(
        r["Payload"]["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("exit status 1") && m.contains("during init")),
        format!(
            "init fail: the exit status and the phase are named: {}",
            r["Payload"]["errorMessage"]
        ),
    );
    let init_logs = sup.logs("rustinitfail").join("\n");
    c.check(
        init_logs.contains("the function's setup failed before lambda_runtime::run"),
        format!("init fail: main's error is in the function's log:\n{init_logs}"),
    );
    // The working function is not disturbed.
    let still = sup.invoke_ok("rusthello", json!({}));
    c.eq(
        "the other function still serves",
        still["message"].as_str(),
        Some("Hello, world!"),
    );
    c.finish();
}
