//! Command line → request line, without a server; and whole runs against a
//! tiny in-test server that answers canned lines.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use serde_json::{json, Value};

use super::*;

/// Parse a command line (with a socket that nothing listens on).
fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let mut full = vec!["lambdalet", "--socket", "/nonexistent/lambdalet.sock"];
    full.extend_from_slice(args);
    Cli::try_parse_from(full)
}

/// The request a command line would send, as `{"op", "params"}`.
fn request(args: &[&str]) -> Value {
    match action(parse(args).unwrap()).unwrap() {
        Action::Call { request, .. } => json!({
            "op": request.op,
            "params": serde_json::from_str::<Value>(request.params.get()).unwrap(),
        }),
        Action::Serve(..) => panic!("not a client command"),
    }
}

fn usage_error(args: &[&str]) -> String {
    match action(parse(args).unwrap()) {
        Err(e @ CliError::Usage(_)) => e.to_string(),
        other => panic!("expected a usage error, got {other:?}"),
    }
}

fn clap_error(args: &[&str]) -> String {
    let err = parse(args).unwrap_err();
    assert_eq!(err.exit_code(), exit::USAGE);
    err.to_string()
}

#[test]
fn create_function_sends_an_absolute_code_path_and_every_setting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("code")).unwrap();
    // A relative path, resolved against the client's directory.
    let relative = dir.path().join("code/../code");
    let req = request(&[
        "create-function",
        "hello",
        "--runtime",
        "python3",
        "--code",
        relative.to_str().unwrap(),
        "--handler",
        "app.handler",
        "--memory",
        "256",
        "--timeout",
        "10",
        "--env",
        "STAGE=prod",
        "--env",
        "URL=https://x/?a=b",
        "--env",
        "EMPTY=",
        "--ephemeral-storage",
        "1024",
        "--description",
        "says hello",
    ]);
    let canonical = dir.path().join("code").canonicalize().unwrap();
    assert_eq!(
        req,
        json!({"op": "CreateFunction", "params": {
            "FunctionName": "hello",
            "Runtime": "python3",
            "Handler": "app.handler",
            "Code": {"Path": canonical.to_str().unwrap()},
            "MemorySize": 256,
            "Timeout": 10,
            "Environment": {"Variables": {"STAGE": "prod", "URL": "https://x/?a=b", "EMPTY": ""}},
            "EphemeralStorage": {"Size": 1024},
            "Description": "says hello",
        }})
    );
}

#[test]
fn create_function_sends_only_what_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().to_str().unwrap();
    let req = request(&[
        "create-function",
        "f",
        "--runtime",
        "python3",
        "--handler",
        "app.handler",
        "--code",
        code,
        "--memory-size",
        "512",
    ]);
    assert_eq!(
        req["params"],
        json!({
            "FunctionName": "f", "Runtime": "python3", "Handler": "app.handler",
            "Code": {"Path": dir.path().canonicalize().unwrap().to_str().unwrap()},
            "MemorySize": 512,
        })
    );
}

#[test]
fn zip_file_is_sent_inline_as_base64() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("f.zip");
    std::fs::write(&zip, b"PK\x03\x04not really a zip").unwrap();
    let expected = base64::engine::general_purpose::STANDARD.encode(b"PK\x03\x04not really a zip");
    let req = request(&[
        "create-function",
        "f",
        "--runtime",
        "python3",
        "--handler",
        "app.handler",
        "--zip-file",
        zip.to_str().unwrap(),
    ]);
    assert_eq!(req["params"]["Code"], json!({ "ZipFile": expected }));
    // aws's fileb:// prefix works too.
    let fileb = format!("fileb://{}", zip.display());
    let req = request(&["update-function-code", "f", "--zip-file", &fileb]);
    assert_eq!(
        req,
        json!({"op": "UpdateFunctionCode", "params": {"FunctionName": "f", "ZipFile": expected}})
    );
}

#[test]
fn code_source_is_exactly_one_of_code_and_zip_file() {
    let both = clap_error(&[
        "update-function-code",
        "f",
        "--code",
        "/",
        "--zip-file",
        "/x",
    ]);
    assert!(both.contains("cannot be used with"), "{both}");
    let neither = clap_error(&["update-function-code", "f"]);
    assert!(neither.contains("--code"), "{neither}");
    let missing = usage_error(&["update-function-code", "f", "--code", "/nonexistent/code"]);
    assert!(
        missing.starts_with("--code /nonexistent/code: No such file or directory"),
        "{missing}"
    );
}

#[test]
fn env_pairs_split_at_the_first_equals_sign() {
    assert_eq!(parse_env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
    let no_equals = clap_error(&["update-function-configuration", "f", "--env", "NOVALUE"]);
    assert!(
        no_equals.contains("expected KEY=VALUE (there is no '=')"),
        "{no_equals}"
    );
    let no_name = clap_error(&["update-function-configuration", "f", "--env", "=v"]);
    assert!(no_name.contains("name before '=' is empty"), "{no_name}");
}

#[test]
fn update_function_configuration_replaces_or_clears_the_environment() {
    assert_eq!(
        request(&[
            "update-function-configuration",
            "f",
            "--env",
            "A=1",
            "--env",
            "A=2"
        ]),
        json!({"op": "UpdateFunctionConfiguration", "params": {
            "FunctionName": "f", "Environment": {"Variables": {"A": "2"}}
        }})
    );
    assert_eq!(
        request(&["update-function-configuration", "f", "--clear-env"])["params"],
        json!({"FunctionName": "f", "Environment": {"Variables": {}}})
    );
    assert_eq!(
        request(&["update-function-configuration", "f"])["params"],
        json!({"FunctionName": "f"})
    );
    assert_eq!(
        request(&[
            "update-function-configuration",
            "f",
            "--runtime",
            "python3",
            "--handler",
            "m.h",
            "--memory",
            "1769",
            "--timeout",
            "900",
            "--ephemeral-storage",
            "10240",
            "--description",
            "",
        ])["params"],
        json!({"FunctionName": "f", "Runtime": "python3", "Handler": "m.h", "MemorySize": 1769,
               "Timeout": 900, "EphemeralStorage": {"Size": 10240}, "Description": ""})
    );
    let both = clap_error(&[
        "update-function-configuration",
        "f",
        "--env",
        "A=1",
        "--clear-env",
    ]);
    assert!(both.contains("cannot be used with"), "{both}");
}

#[test]
fn name_only_commands() {
    assert_eq!(
        request(&["get-function", "f"]),
        json!({"op": "GetFunction", "params": {"FunctionName": "f"}})
    );
    assert_eq!(
        request(&["delete-function", "f"]),
        json!({"op": "DeleteFunction", "params": {"FunctionName": "f"}})
    );
    assert_eq!(
        request(&["list-functions"]),
        json!({"op": "ListFunctions", "params": {}})
    );
    assert_eq!(
        request(&["logs", "f", "--limit", "20"]),
        json!({"op": "GetLogs", "params": {"FunctionName": "f", "Limit": 20}})
    );
    assert_eq!(
        request(&["logs", "f"]),
        json!({"op": "GetLogs", "params": {"FunctionName": "f"}})
    );
}

#[test]
fn invoke_validates_the_payload_and_sets_the_log_type() {
    assert_eq!(
        request(&["invoke", "f"]),
        json!({"op": "Invoke", "params": {
            "FunctionName": "f", "InvocationType": "RequestResponse", "LogType": "None"
        }})
    );
    assert_eq!(
        request(&[
            "invoke",
            "f",
            "--payload",
            " {\"n\": 1.50, \"s\": \"é\"} ",
            "--log-type",
            "tail",
            "--client-context",
            "eyJjdXN0b20iOnt9fQ==",
        ])["params"],
        json!({"FunctionName": "f", "InvocationType": "RequestResponse", "LogType": "Tail",
               "ClientContext": "eyJjdXN0b20iOnt9fQ==", "Payload": {"n": 1.50, "s": "é"}})
    );
    // The payload goes out as written (no float respelling, key order kept).
    let Action::Call { request: req, .. } =
        action(parse(&["invoke", "f", "--payload", "{\"b\":1.50,\"a\":[]}"]).unwrap()).unwrap()
    else {
        panic!()
    };
    assert!(
        req.params
            .get()
            .ends_with(r#""Payload":{"b":1.50,"a":[]}}"#),
        "{}",
        req.params
    );

    assert_eq!(
        request(&["invoke", "f", "--show-log"])["params"]["LogType"],
        "Tail"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("event.json");
    std::fs::write(&file, "[1, 2, 3]\n").unwrap();
    let at_file = format!("@{}", file.display());
    assert_eq!(
        request(&["invoke", "f", "--payload", &at_file])["params"]["Payload"],
        json!([1, 2, 3])
    );

    let invalid = usage_error(&["invoke", "f", "--payload", "{not json"]);
    assert!(
        invalid.starts_with("--payload is not valid JSON: "),
        "{invalid}"
    );
    let missing = usage_error(&["invoke", "f", "--payload", "@/nonexistent/event.json"]);
    assert!(
        missing.starts_with("--payload @/nonexistent/event.json: "),
        "{missing}"
    );
    let big = format!("\"{}\"", "x".repeat(protocol::MAX_SYNC_PAYLOAD_BYTES));
    let too_large = usage_error(&["invoke", "f", "--payload", &big]);
    assert!(
        too_large.contains("RequestTooLargeException"),
        "{too_large}"
    );

    let bad_log_type = clap_error(&["invoke", "f", "--log-type", "Full"]);
    assert!(
        bad_log_type.contains("possible values: None, Tail"),
        "{bad_log_type}"
    );
}

#[test]
fn serve_options_defaults_and_overrides() {
    let Action::Serve(opts, _) = action(parse(&["serve"]).unwrap()).unwrap() else {
        panic!()
    };
    assert_eq!(opts.state_dir, Path::new(DEFAULT_STATE_DIR));
    assert_eq!(opts.socket, Path::new("/nonexistent/lambdalet.sock"));
    assert_eq!(opts.keep_alive, DEFAULT_KEEP_ALIVE);
    assert_eq!(opts.socket_mode, supervisor::DEFAULT_SOCKET_MODE);
    assert_eq!(
        (opts.cgroup_parent, opts.python, opts.socket_group),
        (None, None, None)
    );

    let cli = Cli::try_parse_from([
        "lambdalet",
        "serve",
        "--state-dir",
        "/srv/l",
        "--socket",
        "/run/l.sock",
        "--cgroup-parent",
        "/sys/fs/cgroup/lambdalet",
        "--python",
        "/usr/bin/python3.11",
        "--keep-alive",
        "30",
        "--socket-mode",
        "0660",
        "--socket-group",
        "lambda",
    ])
    .unwrap();
    let Action::Serve(opts, _) = action(cli).unwrap() else {
        panic!()
    };
    assert_eq!(opts.state_dir, Path::new("/srv/l"));
    assert_eq!(opts.socket, Path::new("/run/l.sock"));
    assert_eq!(
        opts.cgroup_parent.as_deref(),
        Some(Path::new("/sys/fs/cgroup/lambdalet"))
    );
    assert_eq!(
        opts.python.as_deref(),
        Some(Path::new("/usr/bin/python3.11"))
    );
    assert_eq!(opts.keep_alive, Duration::from_secs(30));
    assert_eq!(opts.socket_mode, 0o660);
    assert_eq!(opts.socket_group.as_deref(), Some("lambda"));

    assert_eq!(parse_octal_mode("0o640"), Ok(0o640));
    let bad = clap_error(&["serve", "--socket-mode", "0999"]);
    assert!(bad.contains("not an octal file mode"), "{bad}");
}

#[test]
fn socket_comes_from_the_flag_then_the_environment_then_the_default() {
    // --socket is global: it may follow the subcommand too.
    let cli = Cli::try_parse_from(["lambdalet", "logs", "f", "--socket", "/tmp/x.sock"]).unwrap();
    assert_eq!(cli.socket_path(), Path::new("/tmp/x.sock"));
    // Only when LAMBDALET_SOCKET is not set in the test's environment.
    if std::env::var_os("LAMBDALET_SOCKET").is_none() {
        let cli = Cli::try_parse_from(["lambdalet", "list-functions"]).unwrap();
        assert_eq!(cli.socket_path(), Path::new(DEFAULT_SOCKET));
    }
}

/// How the test server answers one request line ("" sends nothing).
type Answer = Box<dyn FnOnce(&Value) -> String + Send>;

/// A server that accepts one connection and answers each request line with
/// what `answer` makes of it; returns the request lines it read.
fn server(answers: Vec<Answer>) -> (tempfile::TempDir, PathBuf, JoinHandle<Vec<String>>) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut seen = Vec::new();
        for answer in answers {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            let request: Value = serde_json::from_str(&line).unwrap();
            let reply = answer(&request);
            seen.push(line);
            if !reply.is_empty() {
                writer.write_all(reply.as_bytes()).unwrap();
                writer.write_all(b"\n").unwrap();
            }
        }
        seen
    });
    (dir, socket, handle)
}

fn answer(f: impl FnOnce(&Value) -> String + Send + 'static) -> Vec<Answer> {
    vec![Box::new(f)]
}

fn run_against(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let mut full = vec!["lambdalet", "--socket", socket.to_str().unwrap()];
    full.extend_from_slice(args);
    let cli = Cli::try_parse_from(full).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(cli, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

const CONFIGURATION: &str = r#"{"FunctionName":"hello","FunctionArn":"arn:aws:lambda:us-east-1:000000000000:function:hello","Runtime":"python3","Handler":"app.handler","MemorySize":128,"Timeout":3,"Environment":{"Variables":{}},"EphemeralStorage":{"Size":512},"Description":"","CodeSize":312,"CodeSha256":"n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=","LastModified":"2026-11-27T10:15:30.000+0000","Version":"$LATEST","RevisionId":"5f0e7c4e-5d1a-4b7c-9a52-1c1b1e0f3a11","State":"Active"}"#;

#[test]
fn success_prints_the_result_as_pretty_json_in_wire_order() {
    let (_dir, socket, server) = server(answer(|req| {
        assert_eq!(req["op"], "GetFunction");
        assert!(req["id"].is_u64());
        format!(r#"{{"id":{},"result":{CONFIGURATION}}}"#, req["id"])
    }));
    let (code, out, err) = run_against(&socket, &["get-function", "hello"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.starts_with("{\n  \"FunctionName\": \"hello\",\n  \"FunctionArn\""),
        "{out}"
    );
    let printed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        printed,
        serde_json::from_str::<Value>(CONFIGURATION).unwrap()
    );
    let lines = server.join().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&lines[0]).unwrap(),
        json!({"id": 1, "op": "GetFunction", "params": {"FunctionName": "hello"}})
    );
}

#[test]
fn error_response_goes_to_stderr_with_status_255() {
    let (_dir, socket, server) = server(answer(|req| {
        format!(
            r#"{{"id":{},"error":{{"type":"ResourceNotFoundException","message":"Function not found: hello. Create it with CreateFunction first."}}}}"#,
            req["id"]
        )
    }));
    let (code, out, err) = run_against(&socket, &["delete-function", "hello"]);
    assert_eq!(code, 255);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "lambdalet: ResourceNotFoundException: Function not found: hello. Create it with \
         CreateFunction first.\n"
    );
    server.join().unwrap();
}

#[test]
fn throttle_reason_is_shown() {
    let (_dir, socket, _server) = server(answer(|req| {
        format!(
            r#"{{"id":{},"error":{{"type":"TooManyRequestsException","message":"Rate Exceeded.","reason":"ReservedFunctionConcurrentInvocationLimitExceeded"}}}}"#,
            req["id"]
        )
    }));
    let (code, _, err) = run_against(&socket, &["invoke", "f"]);
    assert_eq!(code, 255);
    assert_eq!(
        err,
        "lambdalet: TooManyRequestsException: Rate Exceeded. \
         (Reason: ReservedFunctionConcurrentInvocationLimitExceeded)\n"
    );
}

#[test]
fn an_error_for_an_unreadable_line_has_a_null_id_and_is_still_reported() {
    let (_dir, socket, _server) = server(answer(|_| {
        r#"{"id":null,"error":{"type":"InvalidRequestContentException","message":"the request line is not JSON"}}"#.to_owned()
    }));
    let (code, _, err) = run_against(&socket, &["list-functions"]);
    assert_eq!(code, 255);
    assert!(
        err.starts_with("lambdalet: InvalidRequestContentException: "),
        "{err}"
    );
}

#[test]
fn a_response_for_another_id_is_a_protocol_error() {
    let (_dir, socket, _server) = server(answer(|_| r#"{"id":999,"result":{}}"#.to_owned()));
    let (code, _, err) = run_against(&socket, &["list-functions"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the response has id 999 but the request had id 1"),
        "{err}"
    );
}

#[test]
fn a_closed_connection_and_a_missing_socket_say_what_to_check() {
    let (_dir, socket, _server) = server(answer(|_| String::new()));
    let (code, _, err) = run_against(&socket, &["list-functions"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("closed the connection without answering"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.sock");
    let (code, out, err) = run_against(&missing, &["list-functions"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with(&format!(
            "lambdalet: cannot connect to the supervisor at {}: ",
            missing.display()
        )),
        "{err}"
    );
    assert!(err.contains("Is `lambdalet serve` running"), "{err}");
}

#[test]
fn invoke_prints_metadata_with_the_payload_or_writes_it_to_outfile() {
    let log =
        "START RequestId: 0a1b Version: $LATEST\nhello from the handler\nEND RequestId: 0a1b\n";
    let log_b64 = base64::engine::general_purpose::STANDARD.encode(log);
    let result = format!(
        r#"{{"StatusCode":200,"FunctionError":"Unhandled","LogResult":"{log_b64}","ExecutedVersion":"$LATEST","RequestId":"0a1b","Payload":{{"errorMessage":"boom","errorType":"ValueError","requestId":"0a1b","stackTrace":[]}}}}"#
    );
    let reply = result.clone();
    let (_dir, socket, _server) = server(answer(move |req| {
        assert_eq!(req["params"]["LogType"], "Tail");
        format!(r#"{{"id":{},"result":{reply}}}"#, req["id"])
    }));
    let (code, out, err) = run_against(&socket, &["invoke", "f", "--show-log"]);
    // A function error is a successful invoke, as with aws.
    assert_eq!(code, 0);
    assert_eq!(err, log);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        serde_json::from_str::<Value>(&result).unwrap()
    );
    assert!(
        out.starts_with("{\n  \"StatusCode\": 200,\n  \"FunctionError\""),
        "{out}"
    );

    let out_dir = tempfile::tempdir().unwrap();
    let outfile = out_dir.path().join("response.json");
    let reply = result.clone();
    let (_dir, socket, _server) = server(answer(move |req| {
        format!(r#"{{"id":{},"result":{reply}}}"#, req["id"])
    }));
    let (code, out, err) = run_against(&socket, &["invoke", "f", outfile.to_str().unwrap()]);
    assert_eq!((code, err.as_str()), (0, ""));
    let metadata: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(metadata.get("Payload"), None);
    assert_eq!(metadata["RequestId"], "0a1b");
    assert_eq!(
        std::fs::read_to_string(&outfile).unwrap(),
        r#"{"errorMessage":"boom","errorType":"ValueError","requestId":"0a1b","stackTrace":[]}"#
    );
}

#[test]
fn logs_prints_lines_and_delete_prints_nothing() {
    let (_dir, socket, _server) = server(answer(|req| {
        format!(
            r#"{{"id":{},"result":{{"Lines":["START RequestId: 1 Version: $LATEST","hi","END RequestId: 1"]}}}}"#,
            req["id"]
        )
    }));
    let (code, out, _) = run_against(&socket, &["logs", "f"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "START RequestId: 1 Version: $LATEST\nhi\nEND RequestId: 1\n"
    );

    let (_dir, socket, _server) = server(answer(|req| {
        format!(r#"{{"id":{},"result":{{}}}}"#, req["id"])
    }));
    let (code, out, err) = run_against(&socket, &["delete-function", "f"]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
}

#[test]
fn one_client_pipes_several_calls_with_fresh_ids() {
    let echo = |req: &Value| format!(r#"{{"id":{},"result":{{"Functions":[]}}}}"#, req["id"]);
    let (_dir, socket, server) = server(vec![Box::new(echo), Box::new(echo)]);
    let mut client = Client::connect(&socket).unwrap();
    let params = to_raw_value(&protocol::ListFunctions {}).unwrap();
    for _ in 0..2 {
        let result = client.call(op::LIST_FUNCTIONS, &params).unwrap();
        assert_eq!(result.get(), r#"{"Functions":[]}"#);
    }
    let ids: Vec<Value> = server
        .join()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].clone())
        .collect();
    assert_eq!(ids, [json!(1), json!(2)]);
}

/// The output a command line would choose.
fn output(args: &[&str]) -> Output {
    match action(parse(args).unwrap()).unwrap() {
        Action::Call { output, .. } => output,
        Action::Serve(..) => panic!("not a client command"),
    }
}

/// What `show` prints for `result` (a JSON text) with `output`.
fn shown(result: &str, output: &Output) -> String {
    let raw = RawValue::from_string(result.to_owned()).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    show(&raw, output, &mut out, &mut err).unwrap();
    assert!(err.is_empty());
    String::from_utf8(out).unwrap()
}

#[test]
fn invoke_event_and_dry_run_send_their_type_and_the_key() {
    assert_eq!(
        request(&[
            "invoke",
            "orders",
            "--invocation-type",
            "Event",
            "--idempotency-key",
            "order-7",
            "--payload",
            "{\"order\": 7}",
        ]),
        json!({"op": "Invoke", "params": {
            "FunctionName": "orders", "InvocationType": "Event", "LogType": "None",
            "Payload": {"order": 7}, "IdempotencyKey": "order-7",
        }})
    );
    assert_eq!(
        request(&["invoke", "orders", "--invocation-type", "dryrun"])["params"],
        json!({"FunctionName": "orders", "InvocationType": "DryRun", "LogType": "None"})
    );
    assert_eq!(
        output(&["invoke", "f", "--invocation-type", "Event", "out.json"]),
        Output::Accepted {
            outfile: Some(PathBuf::from("out.json"))
        }
    );
    assert_eq!(
        output(&["invoke", "f", "--invocation-type", "DryRun"]),
        Output::Accepted { outfile: None }
    );
    // RequestResponse keeps its output.
    assert_eq!(
        output(&["invoke", "f", "out.json"]),
        Output::Invoke {
            outfile: Some(PathBuf::from("out.json")),
            show_log: false
        }
    );

    let bad_type = clap_error(&["invoke", "f", "--invocation-type", "Async"]);
    assert!(
        bad_type.contains("possible values: RequestResponse, Event, DryRun"),
        "{bad_type}"
    );
}

#[test]
fn an_idempotency_key_is_for_events_only_and_checked_before_sending() {
    for args in [
        &["invoke", "f", "--idempotency-key", "k"][..],
        &[
            "invoke",
            "f",
            "--invocation-type",
            "RequestResponse",
            "--idempotency-key",
            "k",
        ],
        &[
            "invoke",
            "f",
            "--invocation-type",
            "DryRun",
            "--idempotency-key",
            "k",
        ],
    ] {
        let refused = usage_error(args);
        assert!(
            refused.starts_with("--idempotency-key needs --invocation-type Event"),
            "{refused}"
        );
    }
    let long = "k".repeat(protocol::MAX_IDEMPOTENCY_KEY_BYTES + 1);
    for key in ["", long.as_str()] {
        let refused = usage_error(&[
            "invoke",
            "f",
            "--invocation-type",
            "Event",
            "--idempotency-key",
            key,
        ]);
        assert!(
            refused.starts_with("--idempotency-key must be 1 to 256 bytes long"),
            "{refused}"
        );
    }
    let show_log = usage_error(&["invoke", "f", "--invocation-type", "Event", "--show-log"]);
    assert!(
        show_log.starts_with("--show-log needs --invocation-type RequestResponse: Event"),
        "{show_log}"
    );
}

#[test]
fn an_event_payload_has_the_smaller_limit() {
    // Just over 1 MB: too large for an Event, fine for a synchronous invoke.
    let big = format!("\"{}\"", "x".repeat(protocol::MAX_ASYNC_PAYLOAD_BYTES));
    let refused = usage_error(&[
        "invoke",
        "f",
        "--invocation-type",
        "Event",
        "--payload",
        &big,
    ]);
    assert!(
        refused.contains("an asynchronous (Event) invoke accepts at most 1048576"),
        "{refused}"
    );
    assert!(refused.contains("RequestTooLargeException"), "{refused}");
    assert_eq!(
        request(&["invoke", "f", "--payload", &big])["params"]["Payload"]
            .as_str()
            .map(str::len),
        Some(protocol::MAX_ASYNC_PAYLOAD_BYTES)
    );
}

#[test]
fn an_accepted_invoke_prints_its_answer_and_leaves_the_outfile_empty() {
    let accepted = Output::Accepted { outfile: None };
    assert_eq!(
        shown(
            r#"{"StatusCode":202,"RequestId":"5b0c8a2e-1f3d-4c6b-9a7e-2d4f6b8c0e13"}"#,
            &accepted
        ),
        "{\n  \"StatusCode\": 202,\n  \"RequestId\": \"5b0c8a2e-1f3d-4c6b-9a7e-2d4f6b8c0e13\"\n}\n"
    );
    assert_eq!(
        shown(
            r#"{"StatusCode":202,"RequestId":"r1","Duplicate":true}"#,
            &accepted
        ),
        "{\n  \"StatusCode\": 202,\n  \"RequestId\": \"r1\",\n  \"Duplicate\": true\n}\n"
    );
    assert_eq!(
        shown(r#"{"StatusCode":204}"#, &accepted),
        "{\n  \"StatusCode\": 204\n}\n"
    );

    // As with aws: the outfile is created (or emptied), with nothing in it.
    let dir = tempfile::tempdir().unwrap();
    let outfile = dir.path().join("response.json");
    std::fs::write(&outfile, "an older response").unwrap();
    let printed = shown(
        r#"{"StatusCode":202,"RequestId":"r1"}"#,
        &Output::Accepted {
            outfile: Some(outfile.clone()),
        },
    );
    assert_eq!(
        printed,
        "{\n  \"StatusCode\": 202,\n  \"RequestId\": \"r1\"\n}\n"
    );
    assert_eq!(std::fs::read(&outfile).unwrap(), b"");

    // An answer of another shape is the supervisor's mistake, not a success.
    let raw = RawValue::from_string(r#"{"StatusCode":"202"}"#.to_owned()).unwrap();
    let err = show(&raw, &accepted, &mut Vec::new(), &mut Vec::new()).unwrap_err();
    assert!(matches!(err, CliError::Protocol(_)), "{err}");
}

#[test]
fn an_event_invoke_end_to_end() {
    let (_dir, socket, server) = server(answer(|req| {
        format!(
            r#"{{"id":{},"result":{{"StatusCode":202,"RequestId":"r1","Duplicate":true}}}}"#,
            req["id"]
        )
    }));
    let (code, out, err) = run_against(
        &socket,
        &[
            "invoke",
            "orders",
            "--invocation-type",
            "Event",
            "--idempotency-key",
            "order-7",
        ],
    );
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"StatusCode": 202, "RequestId": "r1", "Duplicate": true})
    );
    let lines = server.join().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&lines[0]).unwrap()["params"],
        json!({"FunctionName": "orders", "InvocationType": "Event", "LogType": "None",
               "IdempotencyKey": "order-7"})
    );
}

#[test]
fn event_invoke_config_commands() {
    assert_eq!(
        request(&[
            "put-function-event-invoke-config",
            "orders",
            "--maximum-retry-attempts",
            "0",
            "--maximum-event-age-in-seconds",
            "3600",
            "--on-success",
            "audit",
            "--on-failure",
            "/var/lib/lambdalet-failures",
        ]),
        json!({"op": "PutFunctionEventInvokeConfig", "params": {
            "FunctionName": "orders",
            "MaximumRetryAttempts": 0,
            "MaximumEventAgeInSeconds": 3600,
            "DestinationConfig": {
                "OnSuccess": {"Destination": "audit"},
                "OnFailure": {"Destination": "/var/lib/lambdalet-failures"},
            },
        }})
    );
    // Without a destination flag there is no DestinationConfig at all.
    assert_eq!(
        request(&["put-function-event-invoke-config", "orders"]),
        json!({"op": "PutFunctionEventInvokeConfig", "params": {"FunctionName": "orders"}})
    );
    // Update sends only what is given, so the rest is kept; "" removes.
    assert_eq!(
        request(&[
            "update-function-event-invoke-config",
            "orders",
            "--on-failure",
            "arn:aws:lambda:us-east-1:000000000000:function:dlq",
        ]),
        json!({"op": "UpdateFunctionEventInvokeConfig", "params": {
            "FunctionName": "orders",
            "DestinationConfig": {
                "OnFailure": {"Destination": "arn:aws:lambda:us-east-1:000000000000:function:dlq"},
            },
        }})
    );
    assert_eq!(
        request(&[
            "update-function-event-invoke-config",
            "orders",
            "--maximum-retry-attempts",
            "1",
            "--on-success",
            "",
        ])["params"],
        json!({"FunctionName": "orders", "MaximumRetryAttempts": 1,
               "DestinationConfig": {"OnSuccess": {"Destination": ""}}})
    );
    assert_eq!(
        request(&["get-function-event-invoke-config", "orders"]),
        json!({"op": "GetFunctionEventInvokeConfig", "params": {"FunctionName": "orders"}})
    );
    assert_eq!(
        request(&["delete-function-event-invoke-config", "orders"]),
        json!({"op": "DeleteFunctionEventInvokeConfig", "params": {"FunctionName": "orders"}})
    );
    assert_eq!(
        output(&["put-function-event-invoke-config", "orders"]),
        Output::Json
    );
    assert_eq!(
        output(&["delete-function-event-invoke-config", "orders"]),
        Output::Quiet
    );
    let negative = clap_error(&[
        "put-function-event-invoke-config",
        "orders",
        "--maximum-retry-attempts=-1",
    ]);
    assert!(negative.contains("--maximum-retry-attempts"), "{negative}");
}

#[test]
fn queue_asks_for_the_event_queue_and_prints_it_as_lines() {
    assert_eq!(
        request(&["queue", "orders"]),
        json!({"op": "GetEventQueue", "params": {"FunctionName": "orders"}})
    );
    assert_eq!(output(&["queue", "orders"]), Output::Queue);
    assert_eq!(output(&["queue", "orders", "--json"]), Output::Json);

    let queue = EventQueue {
        function_name: "orders".into(),
        depth: 12,
        ready: 3,
        in_flight: 8,
        retrying: 1,
        oldest_age_seconds: 4.2,
    };
    let expected = "function: orders\ndepth: 12\nready: 3\nin-flight: 8\nretrying: 1\n\
                    oldest-age: 4.20 s\n";
    assert_eq!(render_queue(&queue), expected);
    let wire = serde_json::to_string(&queue).unwrap();
    assert_eq!(shown(&wire, &Output::Queue), expected);
    assert_eq!(
        render_queue(&EventQueue {
            function_name: "idle".into(),
            ..Default::default()
        }),
        "function: idle\ndepth: 0\nready: 0\nin-flight: 0\nretrying: 0\noldest-age: 0.00 s\n"
    );
}

#[test]
fn serve_takes_the_async_time_scale_and_idempotency_window() {
    let Action::Serve(opts, _) = action(parse(&["serve"]).unwrap()).unwrap() else {
        panic!()
    };
    assert_eq!(opts.async_time_scale, 1.0);
    assert_eq!(
        opts.idempotency_window,
        supervisor::DEFAULT_IDEMPOTENCY_WINDOW
    );

    let Action::Serve(opts, _) = action(
        parse(&[
            "serve",
            "--async-time-scale",
            "0.01",
            "--idempotency-window",
            "60",
        ])
        .unwrap(),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(opts.async_time_scale, 0.01);
    assert_eq!(opts.idempotency_window, Duration::from_secs(60));

    for bad in ["0", "2", "-0.5", "NaN", "inf", "fast"] {
        let refused = clap_error(&["serve", &format!("--async-time-scale={bad}")]);
        assert!(
            refused.contains(&format!(
                "'{bad}' is not a time scale: give a number above 0 and at most 1"
            )),
            "{refused}"
        );
    }
    let zero = clap_error(&["serve", "--idempotency-window", "0"]);
    assert!(zero.contains("--idempotency-window"), "{zero}");
}

#[test]
fn layer_commands_map_to_their_ops() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("layer.zip");
    std::fs::write(&zip, b"PK\x05\x06").unwrap();
    let req = request(&[
        "publish-layer-version",
        "tools",
        "--zip",
        zip.to_str().unwrap(),
        "--description",
        "d",
        "--compatible-runtimes",
        "python3",
        "python3.12",
    ]);
    assert_eq!(
        req,
        json!({"op": "PublishLayerVersion", "params": {
            "LayerName": "tools",
            "Description": "d",
            "Content": {"ZipFile": "UEsFBg=="},
            "CompatibleRuntimes": ["python3", "python3.12"],
        }})
    );
    let req = request(&[
        "publish-layer-version",
        "tools",
        "--content",
        dir.path().to_str().unwrap(),
    ]);
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(
        req,
        json!({"op": "PublishLayerVersion", "params": {
            "LayerName": "tools",
            "Content": {"Path": canonical.to_str().unwrap()},
        }})
    );
    // Exactly one of --zip and --content.
    clap_error(&["publish-layer-version", "tools"]);
    clap_error(&[
        "publish-layer-version",
        "tools",
        "--zip",
        "a.zip",
        "--content",
        "/tmp",
    ]);
    assert_eq!(
        request(&["list-layers"]),
        json!({"op": "ListLayers", "params": {}})
    );
    assert_eq!(
        request(&["list-layer-versions", "tools"]),
        json!({"op": "ListLayerVersions", "params": {"LayerName": "tools"}})
    );
    assert_eq!(
        request(&["list-layers", "--compatible-runtime", "python3"]),
        json!({"op": "ListLayers", "params": {"CompatibleRuntime": "python3"}})
    );
    assert_eq!(
        request(&[
            "list-layer-versions",
            "tools",
            "--compatible-runtime",
            "python3"
        ]),
        json!({"op": "ListLayerVersions", "params": {"LayerName": "tools", "CompatibleRuntime": "python3"}})
    );
    assert_eq!(
        request(&["get-layer-version", "tools", "2"]),
        json!({"op": "GetLayerVersion", "params": {"LayerName": "tools", "VersionNumber": 2}})
    );
    assert_eq!(
        request(&["delete-layer-version", "tools", "2"]),
        json!({"op": "DeleteLayerVersion", "params": {"LayerName": "tools", "VersionNumber": 2}})
    );
    clap_error(&["get-layer-version", "tools", "two"]);
}

#[test]
fn functions_name_their_layers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        "arn:aws:lambda:us-east-1:000000000000:layer:a:1",
        "arn:aws:lambda:us-east-1:000000000000:layer:b:3",
    );
    let req = request(&[
        "create-function",
        "f",
        "--runtime",
        "python3",
        "--handler",
        "app.handler",
        "--code",
        dir.path().to_str().unwrap(),
        "--layers",
        b,
        a,
    ]);
    assert_eq!(req["params"]["Layers"], json!([b, a]));
    let req = request(&["update-function-configuration", "f", "--layers", a]);
    assert_eq!(req["params"]["Layers"], json!([a]));
    let req = request(&["update-function-configuration", "f", "--clear-layers"]);
    assert_eq!(req["params"]["Layers"], json!([]));
    // Not given: the layers stay as they are.
    let req = request(&["update-function-configuration", "f", "--memory", "256"]);
    assert!(req["params"].get("Layers").is_none());
    clap_error(&[
        "update-function-configuration",
        "f",
        "--layers",
        a,
        "--clear-layers",
    ]);
}
