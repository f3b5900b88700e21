//! Root integration tests for asynchronous (Event) invocations: the durable
//! queue survives SIGKILL, retries, destinations, maximum age, idempotency
//! keys and the payload limit, driven through the real supervisor.
//!
//! The supervisors here run with `--async-time-scale 0.01`: Lambda's retry
//! delays of 1 and 2 minutes become 0.6 and 1.2 s, and the minimum maximum
//! age of 60 s becomes 0.6 s.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{require_root, Checks, Client, Supervisor};
use serde_json::{json, Value};

const SCALE: &str = "0.01";

/// Returns its event; fails when asked; sleeps when asked.
const APP: &str = r#"
import time

def handler(event, context):
    if isinstance(event, dict):
        time.sleep(event.get("sleep", 0))
        if event.get("fail"):
            raise ValueError("asked to fail: " + str(event.get("n")))
    return {"echo": event, "request_id": context.aws_request_id}
"#;

fn start() -> Supervisor {
    Supervisor::start_with(&["--prewarm", "0", "--async-time-scale", SCALE])
}

fn deploy(sup: &Supervisor, name: &str) {
    sup.create_python(name, &[("app.py", APP)], "app.handler", json!({}));
}

/// A fresh directory sink for invocation records.
fn sink(sup: &Supervisor, name: &str) -> PathBuf {
    let dir = sup.dir.path().join(format!("sink-{name}"));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deploy APP as `name` with a directory sink as its `on` (OnSuccess or
/// OnFailure) destination; returns the directory.
fn deploy_with_sink(sup: &Supervisor, name: &str, on: &str) -> PathBuf {
    deploy(sup, name);
    sink_for(sup, name, on)
}

/// A directory sink as the `on` destination of the deployed `name`.
fn sink_for(sup: &Supervisor, name: &str, on: &str) -> PathBuf {
    let dir = sink(sup, name);
    put_config(
        sup,
        name,
        json!({"DestinationConfig": {on: {"Destination": dir.to_str().unwrap()}}}),
    );
    dir
}

fn put_config(sup: &Supervisor, function: &str, extra: Value) {
    let mut params = json!({"FunctionName": function});
    common::merge(&mut params, extra);
    if let Err(e) = sup.request("PutFunctionEventInvokeConfig", params) {
        panic!("PutFunctionEventInvokeConfig {function}: {e:?}");
    }
}

/// Send one Event invoke per payload at once on one connection; the
/// answers in order.
fn send_events(sup: &Supervisor, function: &str, payloads: &[Value], extra: Value) -> Vec<Value> {
    let mut client = Client::connect(&sup.socket);
    for (i, p) in payloads.iter().enumerate() {
        let mut params = json!({"FunctionName": function, "InvocationType": "Event", "Payload": p});
        common::merge(&mut params, extra.clone());
        client.send_with_id(json!(i), "Invoke", params);
    }
    let mut answers = vec![Value::Null; payloads.len()];
    for _ in 0..payloads.len() {
        let line = client.recv();
        let i = line["id"].as_u64().expect("an id") as usize;
        answers[i] = line;
    }
    answers
}

fn accepted_id(answer: &Value) -> String {
    assert_eq!(answer["result"]["StatusCode"], 202, "{answer}");
    answer["result"]["RequestId"]
        .as_str()
        .expect("a RequestId")
        .to_string()
}

/// The records in a directory sink, by file name.
fn records(dir: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue; // being written
        }
        let text = fs::read_to_string(entry.path()).unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("record {name} is not JSON ({e}): {text}"));
        out.insert(name, v);
    }
    out
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("timed out after {timeout:?} waiting for {what}");
    false
}

fn queue(sup: &Supervisor, function: &str) -> Value {
    sup.request("GetEventQueue", json!({"FunctionName": function}))
        .unwrap_or_else(|e| panic!("GetEventQueue {function}: {e:?}"))
}

/// A record's requestContext: which event, why, after how many attempts.
fn check_context(c: &mut Checks, record: &Value, id: &str, condition: &str, invoke_count: u64) {
    let ctx = &record["requestContext"];
    c.eq("requestId", ctx["requestId"].clone(), json!(id));
    c.eq("condition", ctx["condition"].clone(), json!(condition));
    c.eq(
        "approximateInvokeCount",
        ctx["approximateInvokeCount"].clone(),
        json!(invoke_count),
    );
}

/// START lines of `request_id` in the function's log.
fn attempts(sup: &Supervisor, function: &str, request_id: &str) -> usize {
    let start = format!("START RequestId: {request_id} ");
    sup.logs(function)
        .iter()
        .filter(|l| l.starts_with(&start))
        .count()
}

#[test]
fn a_thousand_events_survive_a_sigkill_mid_delivery() {
    if !require_root() {
        return;
    }
    let mut sup = start();
    let dir = deploy_with_sink(&sup, "drain", "OnSuccess");
    let payloads: Vec<Value> = (0..1000).map(|n| json!({"n": n, "sleep": 0.02})).collect();
    let answers = send_events(&sup, "drain", &payloads, json!({}));
    let ids: Vec<String> = answers.iter().map(accepted_id).collect();
    let mut c = Checks::new("1000 events, SIGKILL, restart");
    c.eq("accepted", ids.len(), 1000);
    // Kill it while it delivers.
    let delivering = wait_until("the first records", Duration::from_secs(60), || {
        records(&dir).len() >= 50
    });
    c.check(delivering, "delivery started");
    let before_kill = records(&dir).len();
    sup.kill9();
    c.check(
        before_kill < 1000,
        format!("the kill came mid-delivery ({before_kill} of 1000 delivered)"),
    );
    sup.restart();
    let all = wait_until("every event delivered", Duration::from_secs(120), || {
        let got: std::collections::BTreeSet<String> = records(&dir)
            .values()
            .filter_map(|r| r["requestContext"]["requestId"].as_str().map(str::to_owned))
            .collect();
        ids.iter().all(|id| got.contains(id))
    });
    c.check(all, "every accepted event was delivered after the restart");
    let recs = records(&dir);
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for r in recs.values() {
        *per_id
            .entry(
                r["requestContext"]["requestId"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
            .or_default() += 1;
        c.eq(
            "condition",
            r["requestContext"]["condition"].clone(),
            json!("Success"),
        );
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    eprintln!(
        "delivered {} records for {} events: {duplicates} duplicate(s); {before_kill} before the kill",
        recs.len(),
        per_id.len()
    );
    c.check(
        duplicates <= 50,
        format!("duplicates are rare ({duplicates} of 1000)"),
    );
    // Payloads arrived intact: each record's requestPayload has its n.
    let ns: std::collections::BTreeSet<u64> = recs
        .values()
        .filter_map(|r| r["requestPayload"]["n"].as_u64())
        .collect();
    c.eq("distinct payloads", ns.len(), 1000);
    let drained = wait_until("an empty queue", Duration::from_secs(10), || {
        queue(&sup, "drain")["Depth"] == 0
    });
    c.check(drained, "the queue is empty");
    c.finish();
}

#[test]
fn a_failing_function_gets_one_attempt_plus_its_retries_then_one_failure_record() {
    if !require_root() {
        return;
    }
    let sup = start();
    let dir = deploy_with_sink(&sup, "flaky", "OnFailure");
    let event = json!({"fail": true, "n": 7});
    let id = accepted_id(&send_events(&sup, "flaky", std::slice::from_ref(&event), json!({}))[0]);
    let mut c = Checks::new("retries then on-failure");
    // Default MaximumRetryAttempts 2: 3 attempts, 0.6 s and 1.2 s apart.
    let started = Instant::now();
    let got = wait_until("the failure record", Duration::from_secs(30), || {
        !records(&dir).is_empty()
    });
    c.check(got, "a failure record arrived");
    c.check(
        started.elapsed() >= Duration::from_millis(1_700),
        format!("the retries waited their delays ({:?})", started.elapsed()),
    );
    // Nothing more comes.
    std::thread::sleep(Duration::from_millis(1_500));
    c.eq("attempts", attempts(&sup, "flaky", &id), 3);
    let recs = records(&dir);
    c.eq("records", recs.len(), 1);
    let (name, r) = recs.iter().next().unwrap();
    c.check(
        name.ends_with(&format!("-{id}-RetriesExhausted.json")),
        name,
    );
    c.eq("version", r["version"].clone(), json!("1.0"));
    check_context(&mut c, r, &id, "RetriesExhausted", 3);
    c.check(
        r["requestContext"]["functionArn"]
            .as_str()
            .is_some_and(|a| a.ends_with(":function:flaky:$LATEST")),
        format!("functionArn {}", r["requestContext"]["functionArn"]),
    );
    c.eq("requestPayload", r["requestPayload"].clone(), event.clone());
    c.eq(
        "functionError",
        r["responseContext"]["functionError"].clone(),
        json!("Unhandled"),
    );
    c.eq(
        "statusCode",
        r["responseContext"]["statusCode"].clone(),
        json!(200),
    );
    c.eq(
        "errorType",
        r["responsePayload"]["errorType"].clone(),
        json!("ValueError"),
    );
    c.check(
        r["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "timestamp",
    );
    c.eq("depth", queue(&sup, "flaky")["Depth"].clone(), json!(0));
    // MaximumRetryAttempts 0: one attempt only.
    put_config(
        &sup,
        "flaky",
        json!({"MaximumRetryAttempts": 0,
               "DestinationConfig": {"OnFailure": {"Destination": dir.to_str().unwrap()}}}),
    );
    let id0 = accepted_id(&send_events(&sup, "flaky", &[event], json!({}))[0]);
    let got = wait_until("the second failure record", Duration::from_secs(30), || {
        records(&dir).len() == 2
    });
    c.check(got, "a record for the no-retry event");
    std::thread::sleep(Duration::from_millis(1_000));
    c.eq("attempts without retries", attempts(&sup, "flaky", &id0), 1);
    let metrics = sup.request("GetMetrics", json!({})).unwrap();
    let f = metrics["Functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["FunctionName"] == "flaky")
        .cloned()
        .unwrap_or_default();
    c.eq(
        "dead-lettered count",
        f["Counters"]["AsyncEventsDeadLettered"].clone(),
        json!(2),
    );
    c.eq(
        "received count",
        f["Counters"]["AsyncEventsReceived"].clone(),
        json!(2),
    );
    c.finish();
}

#[test]
fn an_event_past_its_maximum_age_goes_to_on_failure() {
    if !require_root() {
        return;
    }
    let sup = start();
    deploy(&sup, "stuck");
    let dir = sink(&sup, "stuck");
    // Reserved concurrency 0 throttles every attempt: the event waits,
    // backing off, until it is too old (60 s, 0.6 s here).
    sup.request(
        "PutFunctionConcurrency",
        json!({"FunctionName": "stuck", "ReservedConcurrentExecutions": 0}),
    )
    .unwrap();
    put_config(
        &sup,
        "stuck",
        json!({"MaximumEventAgeInSeconds": 60,
               "DestinationConfig": {"OnFailure": {"Destination": dir.to_str().unwrap()}}}),
    );
    let id = accepted_id(&send_events(&sup, "stuck", &[json!({"n": 1})], json!({}))[0]);
    let mut c = Checks::new("maximum event age");
    let q = queue(&sup, "stuck");
    c.eq("depth while it waits", q["Depth"].clone(), json!(1));
    // The CLI shows the same queue, and the CLI's event invoke queues too.
    let run = common::cli(
        &sup.socket,
        &["invoke", "stuck", "--invocation-type", "Event"],
    );
    c.eq("CLI event invoke", run.code, Some(0));
    c.eq(
        "CLI event answer",
        run.json()["StatusCode"].clone(),
        json!(202),
    );
    let run = common::cli(&sup.socket, &["queue", "stuck"]);
    c.eq("lambdalet queue exit status", run.code, Some(0));
    c.check(
        run.stdout.lines().any(|l| l == "depth: 2"),
        format!("lambdalet queue shows the depth: {}", run.stdout),
    );
    let got = wait_until("the expiry records", Duration::from_secs(15), || {
        records(&dir).len() >= 2
    });
    c.check(got, "the records arrived");
    let recs = records(&dir);
    c.eq("records", recs.len(), 2);
    let mine = recs
        .values()
        .find(|r| r["requestContext"]["requestId"] == json!(id));
    c.check(mine.is_some(), "a record of the first event");
    if let Some(r) = mine {
        check_context(&mut c, r, &id, "EventAgeExceeded", 0);
        c.check(
            r.get("responseContext").is_none(),
            "no response: it never ran",
        );
        c.eq(
            "requestPayload",
            r["requestPayload"].clone(),
            json!({"n": 1}),
        );
    }
    c.eq("it never ran", attempts(&sup, "stuck", &id), 0);
    c.eq(
        "depth after",
        queue(&sup, "stuck")["Depth"].clone(),
        json!(0),
    );
    let run = common::cli(&sup.socket, &["metrics"]);
    for line in [
        "lambdalet_async_events_received_total{function=\"stuck\"} 2",
        "lambdalet_async_events_dead_lettered_total{function=\"stuck\"} 2",
        "lambdalet_async_queue_depth{function=\"stuck\"} 0",
    ] {
        c.check(
            run.stdout.lines().any(|l| l == line),
            format_args!("the Prometheus text has {line:?}"),
        );
    }
    c.check(
        run.stdout.lines().any(|l| {
            l.starts_with("lambdalet_throttles_total{function=\"stuck\",reason=\"ReservedFunctionConcurrentInvocationLimitExceeded\"}")
        }),
        "the throttled attempts are counted",
    );
    c.finish();
}

#[test]
fn a_duplicate_idempotency_key_runs_once_even_across_a_restart() {
    if !require_root() {
        return;
    }
    let mut sup = start();
    let dir = deploy_with_sink(&sup, "once", "OnSuccess");
    let mut c = Checks::new("idempotency");
    // Two at once with the same key (the second arrives while the first is
    // being stored), and one with another key.
    let answers = send_events(
        &sup,
        "once",
        &[json!({"n": 1}), json!({"n": 1})],
        json!({"IdempotencyKey": "order-1"}),
    );
    let first = accepted_id(&answers[0]);
    c.eq("same request id", accepted_id(&answers[1]), first.clone());
    let dups: Vec<bool> = answers
        .iter()
        .map(|a| a["result"]["Duplicate"] == true)
        .collect();
    c.eq(
        "one of them is the duplicate",
        dups.iter().filter(|d| **d).count(),
        1,
    );
    let other = accepted_id(
        &send_events(
            &sup,
            "once",
            &[json!({"n": 2})],
            json!({"IdempotencyKey": "order-2"}),
        )[0],
    );
    c.check(other != first, "another key is another event");
    let got = wait_until("two records", Duration::from_secs(30), || {
        records(&dir).len() >= 2
    });
    c.check(got, "both events ran");
    // The key is stored: a client retrying after a restart is answered with
    // the same id and nothing runs again.
    sup.restart();
    let again = send_events(
        &sup,
        "once",
        &[json!({"n": 1})],
        json!({"IdempotencyKey": "order-1"}),
    );
    c.eq(
        "same id after a restart",
        accepted_id(&again[0]),
        first.clone(),
    );
    c.eq(
        "duplicate after a restart",
        again[0]["result"]["Duplicate"].clone(),
        json!(true),
    );
    std::thread::sleep(Duration::from_millis(1_000));
    c.eq("records", records(&dir).len(), 2);
    c.eq("runs of the first", attempts(&sup, "once", &first), 1);
    // A synchronous invoke has no key.
    let sync = sup.request(
        "Invoke",
        json!({"FunctionName": "once", "IdempotencyKey": "k"}),
    );
    c.check(
        matches!(&sync, Err((kind, _)) if kind == "InvalidParameterValueException"),
        format!("a key on a sync invoke is refused: {sync:?}"),
    );
    c.finish();
}

#[test]
fn an_oversize_event_is_refused_and_nothing_is_queued() {
    if !require_root() {
        return;
    }
    let sup = start();
    let dir = deploy_with_sink(&sup, "big", "OnSuccess");
    let mut c = Checks::new("payload limit");
    // A JSON string of 1 MB + 1 byte, quotes included.
    let too_big = Value::String("x".repeat(1_048_576 - 1));
    let answer = &send_events(&sup, "big", &[too_big], json!({}))[0];
    c.eq(
        "error type",
        answer["error"]["type"].clone(),
        json!("RequestTooLargeException"),
    );
    c.check(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1048576")),
        format!(
            "the message gives the limit: {}",
            answer["error"]["message"]
        ),
    );
    c.eq("depth", queue(&sup, "big")["Depth"].clone(), json!(0));
    // Exactly at the limit is accepted and runs.
    let just = Value::String("y".repeat(1_048_576 - 2));
    let id = accepted_id(&send_events(&sup, "big", &[just], json!({}))[0]);
    let got = wait_until("the record", Duration::from_secs(30), || {
        !records(&dir).is_empty()
    });
    c.check(got, "the event at the limit ran");
    c.eq("one record", records(&dir).len(), 1);
    c.eq("one run", attempts(&sup, "big", &id), 1);
    // DryRun checks and runs nothing.
    let dry = sup
        .request(
            "Invoke",
            json!({"FunctionName": "big", "InvocationType": "DryRun"}),
        )
        .unwrap();
    c.eq("DryRun status", dry["StatusCode"].clone(), json!(204));
    let missing = sup.request(
        "Invoke",
        json!({"FunctionName": "nope", "InvocationType": "Event"}),
    );
    c.check(
        matches!(&missing, Err((kind, _)) if kind == "ResourceNotFoundException"),
        format!("an event for a missing function is refused: {missing:?}"),
    );
    c.eq("still one record", records(&dir).len(), 1);
    c.finish();
}

#[test]
fn a_success_record_goes_to_a_destination_function() {
    if !require_root() {
        return;
    }
    let sup = start();
    deploy(&sup, "first");
    let dir = deploy_with_sink(&sup, "second", "OnSuccess");
    let arn = sup
        .request("GetFunction", json!({"FunctionName": "second"}))
        .unwrap()["FunctionArn"]
        .clone();
    put_config(
        &sup,
        "first",
        json!({"DestinationConfig": {"OnSuccess": {"Destination": arn}}}),
    );
    let id = accepted_id(&send_events(&sup, "first", &[json!({"n": 5})], json!({}))[0]);
    let mut c = Checks::new("function destination");
    let got = wait_until("the chained record", Duration::from_secs(30), || {
        !records(&dir).is_empty()
    });
    c.check(got, "second ran with first's record");
    if let Some(r) = records(&dir).values().next() {
        // second's record: its event was first's record.
        let inner = &r["requestPayload"];
        c.eq(
            "inner requestId",
            inner["requestContext"]["requestId"].clone(),
            json!(id),
        );
        c.eq(
            "inner condition",
            inner["requestContext"]["condition"].clone(),
            json!("Success"),
        );
        c.eq(
            "inner payload",
            inner["requestPayload"].clone(),
            json!({"n": 5}),
        );
        c.eq(
            "inner response",
            inner["responsePayload"]["echo"].clone(),
            json!({"n": 5}),
        );
        c.check(
            inner.get("responseContext").is_some(),
            "inner responseContext",
        );
    }
    // Bad configurations are refused with what to fix.
    let bad = [
        json!({"FunctionName": "first", "MaximumRetryAttempts": 3}),
        json!({"FunctionName": "first", "MaximumEventAgeInSeconds": 59}),
        json!({"FunctionName": "first", "DestinationConfig": {"OnFailure": {"Destination": "ghost"}}}),
        json!({"FunctionName": "first", "DestinationConfig": {"OnFailure": {"Destination": "/nonexistent/dir"}}}),
    ];
    for params in bad {
        let r = sup.request("PutFunctionEventInvokeConfig", params.clone());
        c.check(
            matches!(&r, Err((kind, _)) if kind == "InvalidParameterValueException"),
            format!("{params} is refused: {r:?}"),
        );
    }
    let got = sup
        .request(
            "GetFunctionEventInvokeConfig",
            json!({"FunctionName": "first"}),
        )
        .unwrap();
    c.eq(
        "MaximumRetryAttempts",
        got["MaximumRetryAttempts"].clone(),
        json!(2),
    );
    c.eq(
        "MaximumEventAgeInSeconds",
        got["MaximumEventAgeInSeconds"].clone(),
        json!(21600),
    );
    let updated = sup
        .request(
            "UpdateFunctionEventInvokeConfig",
            json!({"FunctionName": "first", "MaximumRetryAttempts": 1}),
        )
        .unwrap();
    c.eq(
        "update keeps the destination",
        updated["DestinationConfig"].clone(),
        got["DestinationConfig"].clone(),
    );
    c.eq(
        "update sets retries",
        updated["MaximumRetryAttempts"].clone(),
        json!(1),
    );
    sup.request(
        "DeleteFunctionEventInvokeConfig",
        json!({"FunctionName": "first"}),
    )
    .unwrap();
    let gone = sup.request(
        "GetFunctionEventInvokeConfig",
        json!({"FunctionName": "first"}),
    );
    c.check(
        matches!(&gone, Err((kind, _)) if kind == "ResourceNotFoundException"),
        format!("deleted: {gone:?}"),
    );
    c.finish();
}

#[test]
fn a_flood_for_one_function_does_not_starve_another() {
    if !require_root() {
        return;
    }
    // An account of 100: events get half, 25 per function while two have
    // events queued.
    let sup = Supervisor::start_with(&[
        "--prewarm",
        "0",
        "--async-time-scale",
        SCALE,
        "--max-concurrency",
        "100",
    ]);
    deploy(&sup, "flood");
    let dir = deploy_with_sink(&sup, "quiet", "OnSuccess");
    // 300 s of work at 25 at a time: at least 12 s to drain, far longer
    // than the quiet function's cold start even on a loaded host.
    let flood: Vec<Value> = (0..300).map(|n| json!({"n": n, "sleep": 1.0})).collect();
    for a in send_events(&sup, "flood", &flood, json!({})) {
        accepted_id(&a);
    }
    let quiet: Vec<Value> = (0..5).map(|n| json!({"n": n})).collect();
    for a in send_events(&sup, "quiet", &quiet, json!({})) {
        accepted_id(&a);
    }
    let mut c = Checks::new("fairness");
    let got = wait_until("quiet's records", Duration::from_secs(60), || {
        records(&dir).len() == 5
    });
    c.check(got, "the quiet function's events all ran");
    let q = queue(&sup, "flood");
    c.check(
        q["Depth"].as_u64().unwrap_or(0) > 0,
        format!("... while the flood was still queued: {q}"),
    );
    c.check(
        q["InFlight"].as_u64().unwrap_or(0) <= 25,
        format!("the flood keeps to its share: {q}"),
    );
    c.finish();
}

#[test]
fn retry_counts_survive_a_restart() {
    if !require_root() {
        return;
    }
    // A slower clock than the other tests: the 1-minute retry delay is 6 s,
    // time enough to kill the supervisor after the first attempt's failure
    // is stored and before the retry.
    let mut sup = Supervisor::start_with(&["--prewarm", "0", "--async-time-scale", "0.1"]);
    deploy(&sup, "twice");
    let dir = sink(&sup, "twice");
    put_config(
        &sup,
        "twice",
        json!({"MaximumRetryAttempts": 1,
               "DestinationConfig": {"OnFailure": {"Destination": dir.to_str().unwrap()}}}),
    );
    let id = accepted_id(&send_events(&sup, "twice", &[json!({"fail": true})], json!({}))[0]);
    let mut c = Checks::new("retries across a restart");
    let first = wait_until("the first attempt", Duration::from_secs(30), || {
        attempts(&sup, "twice", &id) == 1
    });
    c.check(first, "the first attempt ran");
    let retrying = wait_until("the retry to be stored", Duration::from_secs(5), || {
        queue(&sup, "twice")["Retrying"] == 1
    });
    c.check(retrying, "the event waits for its retry");
    // The retry is stored in the same loop turn it is decided; give the
    // writer its fsync.
    std::thread::sleep(Duration::from_millis(300));
    sup.kill9();
    sup.restart();
    let q = queue(&sup, "twice");
    c.eq(
        "still retrying after the restart",
        q["Retrying"].clone(),
        json!(1),
    );
    let got = wait_until("the failure record", Duration::from_secs(30), || {
        !records(&dir).is_empty()
    });
    c.check(got, "the record arrived");
    std::thread::sleep(Duration::from_millis(500));
    c.eq("attempts in all", attempts(&sup, "twice", &id), 2);
    let recs = records(&dir);
    c.eq("one record", recs.len(), 1);
    if let Some(r) = recs.values().next() {
        c.eq(
            "approximateInvokeCount",
            r["requestContext"]["approximateInvokeCount"].clone(),
            json!(2),
        );
    }
    c.finish();
}

#[test]
fn lifting_a_throttle_runs_the_waiting_event_at_once() {
    if !require_root() {
        return;
    }
    // Backoffs on a quarter of Lambda's clock: 0.25 s doubling, so after
    // 4 s of throttling the event's next try is 4 s away.
    let sup = Supervisor::start_with(&["--prewarm", "0", "--async-time-scale", "0.25"]);
    let dir = deploy_with_sink(&sup, "held", "OnSuccess");
    sup.request(
        "PutFunctionConcurrency",
        json!({"FunctionName": "held", "ReservedConcurrentExecutions": 0}),
    )
    .unwrap();
    // One event: every try is its own, so its backoff doubles each time.
    accepted_id(&send_events(&sup, "held", &[json!({"n": 1})], json!({}))[0]);
    std::thread::sleep(Duration::from_secs(4));
    let mut c = Checks::new("throttle lifted");
    c.eq("nothing ran while throttled", records(&dir).len(), 0);
    let q = queue(&sup, "held");
    c.eq("queued", q["Depth"].clone(), json!(1));
    c.eq("none in flight", q["InFlight"].clone(), json!(0));
    let lifted = Instant::now();
    sup.request("DeleteFunctionConcurrency", json!({"FunctionName": "held"}))
        .unwrap();
    let got = wait_until("the record", Duration::from_secs(20), || {
        records(&dir).len() == 1
    });
    c.check(got, "it ran");
    // A cold start and an invoke, not the rest of a grown backoff.
    c.check(
        lifted.elapsed() < Duration::from_millis(2_500),
        format!("it ran at once ({:?} after the lift)", lifted.elapsed()),
    );
    c.finish();
}

#[test]
fn deleting_a_function_drops_its_queued_events_for_good() {
    if !require_root() {
        return;
    }
    let mut sup = start();
    deploy(&sup, "doomed");
    sup.request(
        "PutFunctionConcurrency",
        json!({"FunctionName": "doomed", "ReservedConcurrentExecutions": 0}),
    )
    .unwrap();
    let events: Vec<Value> = (0..2_500).map(|n| json!({"n": n})).collect();
    for a in send_events(&sup, "doomed", &events, json!({})) {
        accepted_id(&a);
    }
    let mut c = Checks::new("dropped on delete");
    c.eq(
        "queued",
        queue(&sup, "doomed")["Depth"].clone(),
        json!(2_500),
    );
    sup.request("DeleteFunction", json!({"FunctionName": "doomed"}))
        .unwrap();
    // Another function's accept is not held behind the removal.
    deploy(&sup, "other");
    let started = Instant::now();
    accepted_id(&send_events(&sup, "other", &[json!({})], json!({}))[0]);
    c.check(
        started.elapsed() < Duration::from_secs(1),
        format!("an accept during the removal took {:?}", started.elapsed()),
    );
    // A new function of the same name starts with an empty queue, also
    // after a restart (nothing of the old one comes back from the store).
    deploy(&sup, "doomed");
    c.eq(
        "new queue",
        queue(&sup, "doomed")["Depth"].clone(),
        json!(0),
    );
    // Killed at once: the removal may not be finished, but the deletion's
    // tombstone is stored, so the new function does not inherit the old
    // one's events.
    sup.kill9();
    sup.restart();
    c.eq(
        "after a restart",
        queue(&sup, "doomed")["Depth"].clone(),
        json!(0),
    );
    std::thread::sleep(Duration::from_millis(500));
    c.check(
        !sup.logs("doomed").iter().any(|l| l.starts_with("START")),
        "no old event ran in the new function",
    );
    c.finish();
}
