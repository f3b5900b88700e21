//! Root integration tests of the wire protocol (DESIGN.md § Protocol) against
//! the real `lambdalet serve`: pipelining, malformed input, the error kinds,
//! the size limits and refused packages.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{require_root, split_response, zip_b64, Checks, Supervisor};
use serde_json::{json, Value};

/// The largest synchronous payload (Lambda's figure).
const MAX_PAYLOAD: usize = 6_291_556;

const ECHO: &str = r#"
import time

def handler(event, context):
    if isinstance(event, dict) and event.get("sleep"):
        time.sleep(event["sleep"])
    if isinstance(event, dict) and event.get("big"):
        return "y" * event["big"]
    if isinstance(event, str):
        return {"len": len(event)}
    return {"event": event}
"#;

#[test]
fn pipelined_requests_are_answered_out_of_order_with_their_ids() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("pipelining");
    sup.create_python(
        "echo",
        &[("app.py", ECHO)],
        "app.handler",
        json!({"Timeout": 10}),
    );
    sup.invoke_ok("echo", json!({})); // warm

    let mut client = sup.client();
    let slow_id = json!({"slow": [1, "a"]});
    let fast_id = json!("fast-2");
    // Both lines in one write: the slow invoke first, then a fast GetFunction.
    let mut bytes = serde_json::to_vec(&json!({"id": slow_id, "op": "Invoke", "params": {"FunctionName": "echo", "Payload": {"sleep": 1}}})).unwrap();
    bytes.push(b'\n');
    bytes.extend(
        serde_json::to_vec(
            &json!({"id": fast_id, "op": "GetFunction", "params": {"FunctionName": "echo"}}),
        )
        .unwrap(),
    );
    bytes.push(b'\n');
    let started = Instant::now();
    client.send_raw(&bytes);
    let first = client.recv();
    let first_at = started.elapsed();
    let second = client.recv();
    c.eq(
        "the fast answer comes first, with its id",
        &first["id"],
        &fast_id,
    );
    c.check(
        first_at < Duration::from_millis(800),
        format_args!("the fast answer does not wait for the slow invoke: {first_at:?}"),
    );
    c.eq(
        "GetFunction result",
        first["result"]["FunctionName"].as_str(),
        Some("echo"),
    );
    c.eq(
        "the slow answer echoes its (structured) id",
        &second["id"],
        &slow_id,
    );
    c.check(
        second["result"]["Payload"]["event"]["sleep"] == 1,
        format_args!("the slow invoke's result: {second}"),
    );

    // Many requests in flight on one connection: each answered once.
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..20 {
        let id = json!(format!("n{i}"));
        let op = if i % 2 == 0 {
            "Invoke"
        } else {
            "ListFunctions"
        };
        let params = if op == "Invoke" {
            json!({"FunctionName": "echo", "Payload": {"i": i}})
        } else {
            json!({})
        };
        client.send_with_id(id, op, params);
        ids.insert(format!("n{i}"));
    }
    for _ in 0..20 {
        let r = client.recv();
        let id = r["id"].as_str().unwrap_or("").to_string();
        c.check(
            ids.remove(&id),
            format_args!("an unexpected or repeated id: {r}"),
        );
        c.check(
            r.get("error").is_none(),
            format_args!("request {id} failed: {r}"),
        );
    }
    c.finish();
}

#[test]
fn a_malformed_line_gets_an_error_and_the_connection_stays_usable() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("malformed lines");
    let mut client = sup.client();
    let cases: &[(&str, &[u8], &str)] = &[
        ("not JSON", b"this is not json\n", "InvalidRequestContentException"),
        ("a JSON array", b"[1, 2, 3]\n", "InvalidRequestContentException"),
        ("no op", b"{\"id\": 7}\n", "InvalidRequestContentException"),
        ("an unknown op", b"{\"id\": 8, \"op\": \"Explode\"}\n", "InvalidRequestContentException"),
        ("truncated JSON", b"{\"id\": 9, \"op\": \"ListFun\n", "InvalidRequestContentException"),
        ("not UTF-8", b"{\"id\": 10, \"op\": \"\xff\xfe\"}\n", "InvalidRequestContentException"),
        (
            "unknown parameter",
            b"{\"id\": 11, \"op\": \"GetFunction\", \"params\": {\"FunctionName\": \"x\", \"Bogus\": 1}}\n",
            "InvalidParameterValueException",
        ),
        ("params of the wrong type", b"{\"id\": 12, \"op\": \"GetFunction\", \"params\": [1]}\n", "InvalidParameterValueException"),
    ];
    for (what, line, want) in cases {
        client.send_raw(line);
        let r = client.recv();
        c.eq(
            format!("{what}: error type"),
            r["error"]["type"].as_str(),
            Some(*want),
        );
        c.check(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            format_args!("{what}: a message: {r}"),
        );
        // The id is echoed whenever the line had one.
        if let Ok(v) = serde_json::from_slice::<Value>(line) {
            if let Some(id) = v.get("id") {
                c.eq(format!("{what}: id echoed"), &r["id"], id);
            }
        }
        let ok = client.request("ListFunctions", json!({}));
        c.check(
            ok.is_ok(),
            format_args!("after {what}: the connection still works: {ok:?}"),
        );
    }
    // Blank lines are ignored, not answered.
    client.send_raw(b"\n\n");
    let ok = client.request("ListFunctions", json!({}));
    c.check(ok.is_ok(), format_args!("after blank lines: {ok:?}"));
    c.finish();
}

#[test]
fn error_kinds_name_the_problem() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("error kinds");
    let code = sup.write_code("ok", &[("app.py", ECHO)]);
    let code = code.to_str().unwrap();
    let base = |extra: Value| {
        let mut p = json!({"FunctionName": "f", "Runtime": "python3", "Handler": "app.handler", "Code": {"Path": code}});
        common::merge(&mut p, extra);
        p
    };

    // Unknown function, for every op that names one.
    for (op, params) in [
        ("GetFunction", json!({"FunctionName": "ghost"})),
        ("Invoke", json!({"FunctionName": "ghost", "Payload": {}})),
        ("DeleteFunction", json!({"FunctionName": "ghost"})),
        ("GetLogs", json!({"FunctionName": "ghost"})),
        (
            "UpdateFunctionConfiguration",
            json!({"FunctionName": "ghost", "Timeout": 5}),
        ),
        (
            "UpdateFunctionCode",
            json!({"FunctionName": "ghost", "Path": code}),
        ),
    ] {
        match sup.request(op, params) {
            Err((kind, msg)) => {
                c.eq(
                    format!("{op} ghost"),
                    kind.as_str(),
                    "ResourceNotFoundException",
                );
                c.check(
                    msg.contains("ghost"),
                    format_args!("{op} ghost: the message names it: {msg:?}"),
                );
            }
            Ok(v) => c.fail(format!("{op} of an unknown function succeeded: {v}")),
        }
    }

    // Out-of-range values name the field and its range.
    for (what, extra, field, range) in [
        (
            "MemorySize 64",
            json!({"MemorySize": 64}),
            "MemorySize",
            "128",
        ),
        (
            "MemorySize 10241",
            json!({"MemorySize": 10241}),
            "MemorySize",
            "10240",
        ),
        ("Timeout 0", json!({"Timeout": 0}), "Timeout", "900"),
        ("Timeout 901", json!({"Timeout": 901}), "Timeout", "900"),
        (
            "EphemeralStorage 511",
            json!({"EphemeralStorage": {"Size": 511}}),
            "EphemeralStorage",
            "512",
        ),
        (
            "EphemeralStorage 10241",
            json!({"EphemeralStorage": {"Size": 10241}}),
            "EphemeralStorage",
            "10240",
        ),
        (
            "FunctionName with a space",
            json!({"FunctionName": "bad name"}),
            "FunctionName",
            "",
        ),
        (
            "FunctionName of 65 characters",
            json!({"FunctionName": "a".repeat(65)}),
            "FunctionName",
            "64",
        ),
        (
            "environment over 4 KB",
            json!({"Environment": {"Variables": {"BIG": "v".repeat(5000)}}}),
            "Environment",
            "4",
        ),
        (
            "unknown runtime",
            json!({"Runtime": "cobol"}),
            "Runtime",
            "",
        ),
    ] {
        match sup.request("CreateFunction", base(extra)) {
            Err((kind, msg)) => {
                c.eq(
                    format!("{what}: kind"),
                    kind.as_str(),
                    "InvalidParameterValueException",
                );
                c.check(
                    msg.contains(field) && msg.contains(range),
                    format_args!("{what}: the message names {field} and {range:?}: {msg:?}"),
                );
            }
            Ok(v) => c.fail(format!("{what} was accepted: {v}")),
        }
    }
    let listed = sup.request("ListFunctions", json!({})).unwrap();
    c.eq(
        "nothing was created by the refused requests",
        listed["Functions"].clone(),
        json!([]),
    );

    // Create, then a duplicate.
    let created = sup.request("CreateFunction", base(json!({"MemorySize": 128})));
    match &created {
        Ok(f) => {
            c.eq("FunctionName", f["FunctionName"].as_str(), Some("f"));
            c.eq("MemorySize", f["MemorySize"].as_i64(), Some(128));
            c.eq("default Timeout", f["Timeout"].as_i64(), Some(3));
            c.eq(
                "default EphemeralStorage",
                f["EphemeralStorage"]["Size"].as_i64(),
                Some(512),
            );
            c.eq("Runtime", f["Runtime"].as_str(), Some("python3"));
            c.eq("Handler", f["Handler"].as_str(), Some("app.handler"));
            c.check(
                f["CodeSha256"].as_str().is_some_and(|s| !s.is_empty()),
                "CodeSha256",
            );
            c.check(
                f["FunctionArn"]
                    .as_str()
                    .is_some_and(|s| s.ends_with(":function:f")),
                "FunctionArn",
            );
        }
        Err(e) => c.fail(format!("a valid CreateFunction failed: {e:?}")),
    }
    let dup = sup.request("CreateFunction", base(json!({})));
    c.eq(
        "a duplicate CreateFunction",
        dup.err().map(|e| e.0),
        Some("ResourceConflictException".to_string()),
    );
    let bad_update = sup.request(
        "UpdateFunctionConfiguration",
        json!({"FunctionName": "f", "MemorySize": 64}),
    );
    c.eq(
        "UpdateFunctionConfiguration MemorySize 64",
        bad_update.err().map(|e| e.0),
        Some("InvalidParameterValueException".to_string()),
    );
    let got = sup
        .request("GetFunction", json!({"FunctionName": "f"}))
        .unwrap();
    c.eq(
        "a refused update changes nothing",
        got["MemorySize"].as_i64(),
        Some(128),
    );
    c.check(
        sup.request("DeleteFunction", json!({"FunctionName": "f"}))
            .is_ok(),
        "delete",
    );
    let again = sup.request("DeleteFunction", json!({"FunctionName": "f"}));
    c.eq(
        "a second delete",
        again.err().map(|e| e.0),
        Some("ResourceNotFoundException".to_string()),
    );
    c.finish();
}

#[test]
fn payload_limits_are_enforced_at_6_mb() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("payload limits");
    sup.create_python(
        "echo",
        &[("app.py", ECHO)],
        "app.handler",
        json!({"MemorySize": 512, "Timeout": 30}),
    );
    let mut client = sup.client();

    // Exactly at the limit: a JSON string of MAX_PAYLOAD bytes with its quotes.
    let at_limit = "a".repeat(MAX_PAYLOAD - 2);
    let r = client.request(
        "Invoke",
        json!({"FunctionName": "echo", "Payload": at_limit}),
    );
    c.check(
        r.as_ref()
            .is_ok_and(|r| r["Payload"]["len"] == MAX_PAYLOAD - 2),
        format_args!(
            "a payload of exactly {MAX_PAYLOAD} bytes is accepted: {}",
            short(&r)
        ),
    );
    let over = "a".repeat(MAX_PAYLOAD - 1);
    let r = client.request("Invoke", json!({"FunctionName": "echo", "Payload": over}));
    c.eq(
        "a payload of one byte more",
        r.as_ref().err().map(|e| e.0.as_str()),
        Some("RequestTooLargeException"),
    );
    let way_over = "a".repeat(8 * 1024 * 1024);
    let r = client.request(
        "Invoke",
        json!({"FunctionName": "echo", "Payload": way_over}),
    );
    c.eq(
        "an 8 MiB payload",
        r.as_ref().err().map(|e| e.0.as_str()),
        Some("RequestTooLargeException"),
    );
    let ok = client.request("ListFunctions", json!({}));
    c.check(
        ok.is_ok(),
        format_args!("the connection stays usable: {ok:?}"),
    );

    // A response over the limit is an error, never a truncated result.
    let r = client.request(
        "Invoke",
        json!({"FunctionName": "echo", "Payload": {"big": 7 * 1024 * 1024}}),
    );
    match r {
        Ok(r) => {
            c.eq(
                "a 7 MiB response: FunctionError",
                r["FunctionError"].as_str(),
                Some("Unhandled"),
            );
            c.eq(
                "a 7 MiB response: errorType",
                r["Payload"]["errorType"].as_str(),
                Some("Function.ResponseSizeTooLarge"),
            );
        }
        Err(e) => c.fail(format!(
            "a 7 MiB response: a wire error instead of a function error: {e:?}"
        )),
    }
    let next = client.invoke("echo", json!({"x": 1}));
    c.eq(
        "the next invoke works",
        next["Payload"]["event"].clone(),
        json!({"x": 1}),
    );
    c.finish();
}

fn short(r: &Result<Value, (String, String)>) -> String {
    let s = format!("{r:?}");
    s.chars().take(300).collect()
}

#[test]
fn packages_that_escape_their_directory_are_refused() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("packages");
    let create = |name: &str, code: Value| {
        sup.request(
            "CreateFunction",
            json!({"FunctionName": name, "Runtime": "python3", "Handler": "app.handler", "Code": code}),
        )
    };

    // A good zip deploys and runs.
    let good = create(
        "zipped",
        json!({"ZipFile": zip_b64(&[("app.py", ECHO), ("lib/data.txt", "x")])}),
    );
    c.check(
        good.is_ok(),
        format_args!("a valid ZipFile deploys: {good:?}"),
    );
    if good.is_ok() {
        let r = sup.invoke("zipped", json!({"z": 1}));
        c.eq(
            "the zipped function runs",
            r["Payload"]["event"].clone(),
            json!({"z": 1}),
        );
    }

    let outside = sup.dir.path().join("evil");
    for (what, entries) in [
        (
            "a ../evil entry",
            vec![("app.py", ECHO), ("../evil", "pwned")],
        ),
        (
            "a nested a/../../evil entry",
            vec![("app.py", ECHO), ("a/../../evil", "pwned")],
        ),
        (
            "an absolute /tmp/evil entry",
            vec![("app.py", ECHO), ("/tmp/evil-lambdalet", "pwned")],
        ),
    ] {
        match create("slip", json!({"ZipFile": zip_b64(&entries)})) {
            Err((kind, msg)) => {
                c.eq(
                    format!("{what}: kind"),
                    kind.as_str(),
                    "InvalidParameterValueException",
                );
                c.check(!msg.is_empty(), "a message");
            }
            Ok(v) => c.fail(format!("{what} was accepted: {v}")),
        }
    }
    c.check(
        !std::path::Path::new("/tmp/evil-lambdalet").exists(),
        "nothing was written to /tmp/evil-lambdalet",
    );
    c.check(
        !sup.state_dir.join("functions").join("evil").exists(),
        "nothing was written beside the package",
    );
    c.check(
        !outside.exists(),
        "nothing was written outside the state dir",
    );

    // A directory with a symlink that points out of it.
    let dir = sup.write_code("symlinked", &[("app.py", ECHO)]);
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
    match create("symlinked", json!({"Path": dir.to_str().unwrap()})) {
        Err((kind, _)) => {
            c.eq(
                "a symlink to /etc/passwd: kind",
                kind.as_str(),
                "InvalidParameterValueException",
            );
        }
        Ok(v) => c.fail(format!(
            "a package with a symlink to /etc/passwd was accepted: {v}"
        )),
    }
    let dir = sup.write_code("symlinked-up", &[("app.py", ECHO)]);
    std::os::unix::fs::symlink("../..", dir.join("up")).unwrap();
    match create("symlinked-up", json!({"Path": dir.to_str().unwrap()})) {
        Err((kind, _)) => {
            c.eq(
                "a symlink to ../..: kind",
                kind.as_str(),
                "InvalidParameterValueException",
            );
        }
        Ok(v) => c.fail(format!(
            "a package with a symlink to ../.. was accepted: {v}"
        )),
    }
    for (what, code) in [
        ("a relative Path", json!({"Path": "relative/dir"})),
        (
            "a missing Path",
            json!({"Path": "/nonexistent/lambdalet/code"}),
        ),
        ("ZipFile that is not base64", json!({"ZipFile": "!!!"})),
        (
            "ZipFile that is not a zip",
            json!({"ZipFile": base64::engine::general_purpose::STANDARD.encode("plain text")}),
        ),
        (
            "both ZipFile and Path",
            json!({"ZipFile": zip_b64(&[("app.py", ECHO)]), "Path": "/tmp"}),
        ),
        ("neither ZipFile nor Path", json!({})),
    ] {
        match create("badcode", code) {
            Err((kind, _)) => {
                c.eq(
                    format!("{what}: kind"),
                    kind.as_str(),
                    "InvalidParameterValueException",
                );
            }
            Ok(v) => c.fail(format!("{what} was accepted: {v}")),
        }
    }
    let listed = sup
        .request("ListFunctions", json!({}))
        .map(|v| v["Functions"].as_array().map(Vec::len));
    c.eq("only the good function exists", listed, Ok(Some(1)));
    c.finish();
}

#[test]
fn the_socket_is_root_only_by_default() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let sup = Supervisor::start();
    let mode = std::fs::metadata(&sup.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    // The response to a request sent without an id still comes back.
    let mut client = sup.client();
    client.send_raw(b"{\"op\": \"ListFunctions\"}\n");
    let r = split_response(client.recv());
    assert!(r.is_ok(), "a request without id: {r:?}");
}
