//! Root integration tests for scale-out and concurrency: many concurrent
//! invokes in their own environments, reserved concurrency, the account's
//! limit, and provisioned concurrency, driven through the real supervisor.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use common::{require_root, Checks, Client, Supervisor};
use serde_json::{json, Value};

/// Sleeps when asked; reports its environment's token, when its init ran,
/// how it was initialised, and when the invoke started and ended.
const APP: &str = r#"
import os, time, uuid

TOKEN = uuid.uuid4().hex
INIT_AT = time.time()
INIT_TYPE = os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE")
if os.environ.get("FAIL_INIT"):
    raise RuntimeError("init refuses")

def handler(event, context):
    start = time.time()
    time.sleep(event.get("seconds", 0))
    if event.get("raise"):
        raise ValueError("asked to fail")
    return {"token": TOKEN, "init_at": INIT_AT, "init_type": INIT_TYPE,
            "init_type_now": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
            "start": start, "end": time.time(), "uid": os.getuid(),
            "stream": context.log_stream_name}
"#;

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Send `n` invokes of `function` at once on one connection (the protocol
/// answers out of order, by id) and return the answers in request order.
fn invoke_many(sup: &Supervisor, function: &str, n: usize, payload: Value) -> Vec<Value> {
    invoke_each(sup, &vec![function; n], payload)
}

/// One invoke of each of `functions` at once, on one connection; the
/// answers in request order.
fn invoke_each(sup: &Supervisor, functions: &[&str], payload: Value) -> Vec<Value> {
    let mut client = Client::connect(&sup.socket);
    for (i, function) in functions.iter().enumerate() {
        client.send_with_id(
            json!(i),
            "Invoke",
            json!({"FunctionName": function, "Payload": payload}),
        );
    }
    let n = functions.len();
    let mut answers = vec![Value::Null; n];
    for _ in 0..n {
        let line = client.recv();
        let i = line["id"].as_u64().expect("an id") as usize;
        answers[i] = line;
    }
    answers
}

/// Environments of `sup`: the distinct cgroups right below its parent.
fn env_count(sup: &Supervisor) -> usize {
    let parents = sup.cgroup_parent_dirs();
    sup.env_cgroup_dirs()
        .iter()
        .filter(|d| d.parent().is_some_and(|p| parents.iter().any(|q| q == p)))
        .filter_map(|d| d.file_name())
        .collect::<BTreeSet<_>>()
        .len()
}

fn throttle_reason(answer: &Value) -> Option<&str> {
    (answer["error"]["type"] == "TooManyRequestsException")
        .then(|| answer["error"]["reason"].as_str().unwrap_or(""))
}

fn payload(answer: &Value) -> Option<&Value> {
    let result = answer.get("result")?;
    result
        .get("FunctionError")
        .is_none()
        .then(|| &result["Payload"])
}

#[test]
fn fifty_concurrent_invokes_run_side_by_side_in_their_own_environments() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("scale-out");
    sup.create_python(
        "wide",
        &[("app.py", APP)],
        "app.handler",
        json!({"Timeout": 60}),
    );
    let answers = invoke_many(&sup, "wide", 50, json!({"seconds": 6}));
    let ok: Vec<&Value> = answers.iter().filter_map(payload).collect();
    c.eq("invokes that succeeded", ok.len(), 50);
    if ok.len() < 50 {
        let bad: Vec<&Value> = answers.iter().filter(|a| payload(a).is_none()).collect();
        c.fail(format_args!("failed answers: {bad:?}\n{}", sup.stderr()));
    }
    let tokens: BTreeSet<&str> = ok.iter().filter_map(|p| p["token"].as_str()).collect();
    c.eq("distinct environments", tokens.len(), 50);
    let streams: BTreeSet<&str> = ok.iter().filter_map(|p| p["stream"].as_str()).collect();
    c.eq("a log stream per environment", streams.len(), 50);
    // Side by side: the last one started before the first one ended.
    let last_start = ok
        .iter()
        .filter_map(|p| p["start"].as_f64())
        .fold(f64::MIN, f64::max);
    let first_end = ok
        .iter()
        .filter_map(|p| p["end"].as_f64())
        .fold(f64::MAX, f64::min);
    c.check(
        last_start < first_end,
        format_args!(
            "all 50 ran at once: the last started {:.2} s before the first ended",
            first_end - last_start
        ),
    );
    c.eq("environment cgroups", env_count(&sup), 50);

    // Warm again: the next round reuses them, no new environment is made.
    let again = invoke_many(&sup, "wide", 20, json!({}));
    let reused: BTreeSet<&str> = again
        .iter()
        .filter_map(payload)
        .filter_map(|p| p["token"].as_str())
        .collect();
    c.check(
        !reused.is_empty() && reused.is_subset(&tokens),
        format_args!("a second round runs in the same environments: {reused:?}"),
    );
    c.eq(
        "environment cgroups after the second round",
        env_count(&sup),
        50,
    );
    c.finish();
}

#[test]
fn reserved_concurrency_caps_a_function_and_is_kept_from_others() {
    if !require_root() {
        return;
    }
    let mut sup = Supervisor::start();
    let mut c = Checks::new("reserved concurrency");
    sup.create_python(
        "capped",
        &[("app.py", APP)],
        "app.handler",
        json!({"Timeout": 30}),
    );

    let put = sup.request(
        "PutFunctionConcurrency",
        json!({"FunctionName": "capped", "ReservedConcurrentExecutions": 2}),
    );
    c.eq(
        "PutFunctionConcurrency",
        put.ok(),
        Some(json!({"ReservedConcurrentExecutions": 2})),
    );
    let answers = invoke_many(&sup, "capped", 3, json!({"seconds": 2}));
    let reasons: Vec<Option<&str>> = answers.iter().map(throttle_reason).collect();
    c.eq(
        "the third concurrent invoke is throttled",
        reasons,
        vec![
            None,
            None,
            Some("ReservedFunctionConcurrentInvocationLimitExceeded"),
        ],
    );
    c.eq(
        "the first two ran",
        answers.iter().filter_map(payload).count(),
        2,
    );
    c.check(
        answers[2]["error"]["message"] == "Rate Exceeded.",
        format_args!("Lambda's message: {}", answers[2]),
    );
    // Once they finished, there is room again.
    c.check(
        sup.client()
            .request("Invoke", json!({"FunctionName": "capped"}))
            .is_ok(),
        "an invoke after the others finished runs",
    );

    // The unreserved pool shrinks by the reservation; 100 must stay.
    let settings = sup
        .request("GetAccountSettings", json!({}))
        .unwrap_or_default();
    c.eq(
        "unreserved concurrency",
        settings["AccountLimit"]["UnreservedConcurrentExecutions"].clone(),
        json!(998),
    );
    let greedy = sup.request(
        "PutFunctionConcurrency",
        json!({"FunctionName": "capped", "ReservedConcurrentExecutions": 901}),
    );
    c.check(
        matches!(&greedy, Err((kind, msg)) if kind == "InvalidParameterValueException" && msg.contains("[100]")),
        format_args!("a reservation leaving less than 100 unreserved is refused: {greedy:?}"),
    );

    // Reserved 0 throttles everything, and persists across a restart.
    sup.request(
        "PutFunctionConcurrency",
        json!({"FunctionName": "capped", "ReservedConcurrentExecutions": 0}),
    )
    .expect("reserve 0");
    sup.stop();
    sup.restart();
    let got = sup.request("GetFunctionConcurrency", json!({"FunctionName": "capped"}));
    c.eq(
        "GetFunctionConcurrency after a restart",
        got.ok(),
        Some(json!({"ReservedConcurrentExecutions": 0})),
    );
    let throttled = sup
        .client()
        .request("Invoke", json!({"FunctionName": "capped"}));
    c.check(
        matches!(&throttled, Err((kind, _)) if kind == "TooManyRequestsException"),
        format_args!("reserved 0 throttles every invoke: {throttled:?}"),
    );
    sup.request(
        "DeleteFunctionConcurrency",
        json!({"FunctionName": "capped"}),
    )
    .expect("delete the reservation");
    c.eq(
        "GetFunctionConcurrency after the delete",
        sup.request("GetFunctionConcurrency", json!({"FunctionName": "capped"}))
            .ok(),
        Some(json!({})),
    );
    c.check(
        sup.client()
            .request("Invoke", json!({"FunctionName": "capped"}))
            .is_ok(),
        "without the reservation it runs again",
    );
    c.finish();
}

#[test]
fn the_account_limit_throttles_unreserved_functions() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start_with(&["--prewarm", "0", "--max-concurrency", "3"]);
    let mut c = Checks::new("account limit");
    sup.create_python(
        "one",
        &[("app.py", APP)],
        "app.handler",
        json!({"Timeout": 30}),
    );
    sup.create_python(
        "two",
        &[("app.py", APP)],
        "app.handler",
        json!({"Timeout": 30}),
    );
    let answers = invoke_each(&sup, &["one", "one", "two", "two"], json!({"seconds": 2}));
    c.eq(
        "the fourth is throttled account-wide",
        answers.iter().map(throttle_reason).collect::<Vec<_>>(),
        vec![None, None, None, Some("ConcurrentInvocationLimitExceeded")],
    );
    c.eq("three ran", answers.iter().filter_map(payload).count(), 3);
    // Idle environments do not count: a third function still gets one
    // (the least recently used idle environment makes room).
    sup.create_python("three", &[("app.py", APP)], "app.handler", json!({}));
    let third = sup
        .client()
        .request("Invoke", json!({"FunctionName": "three"}));
    c.check(
        third
            .as_ref()
            .is_ok_and(|r| r.get("FunctionError").is_none()),
        format_args!("a new function runs with three idle environments around: {third:?}"),
    );
    c.eq("environments stay within the limit", env_count(&sup), 3);
    let reserve = sup.request(
        "PutFunctionConcurrency",
        json!({"FunctionName": "one", "ReservedConcurrentExecutions": 1}),
    );
    c.check(
        reserve.is_err(),
        format_args!("an account of 3 cannot reserve (100 must stay unreserved): {reserve:?}"),
    );
    c.finish();
}

/// The provisioned-concurrency status, polled until `ready` or `wait` passed.
fn wait_status(sup: &Supervisor, function: &str, want: &str, wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let status = sup
            .request(
                "GetProvisionedConcurrencyConfig",
                json!({"FunctionName": function}),
            )
            .unwrap_or_else(|e| json!({"error": format!("{e:?}")}));
        if status["Status"] == want || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn provisioned_environments_are_initialised_before_the_first_invoke() {
    if !require_root() {
        return;
    }
    let mut sup = Supervisor::start_with(&["--prewarm", "0", "--keep-alive", "1"]);
    let mut c = Checks::new("provisioned concurrency");
    sup.create_python(
        "warm",
        &[("app.py", APP)],
        "app.handler",
        json!({"Timeout": 30}),
    );
    let missing = sup.request(
        "GetProvisionedConcurrencyConfig",
        json!({"FunctionName": "warm"}),
    );
    c.check(
        matches!(&missing, Err((kind, _)) if kind == "ProvisionedConcurrencyConfigNotFoundException"),
        format_args!("no config yet: {missing:?}"),
    );
    let put = sup
        .request(
            "PutProvisionedConcurrencyConfig",
            json!({"FunctionName": "warm", "ProvisionedConcurrentExecutions": 2}),
        )
        .unwrap_or_default();
    c.eq(
        "requested",
        put["RequestedProvisionedConcurrentExecutions"].clone(),
        json!(2),
    );
    let status = wait_status(&sup, "warm", "READY", Duration::from_secs(20));
    c.eq("status", status["Status"].clone(), json!("READY"));
    c.eq(
        "available",
        status["AvailableProvisionedConcurrentExecutions"].clone(),
        json!(2),
    );
    c.eq(
        "allocated",
        status["AllocatedProvisionedConcurrentExecutions"].clone(),
        json!(2),
    );
    c.eq("environments before any invoke", env_count(&sup), 2);
    std::thread::sleep(Duration::from_millis(1500));
    // Three at once: two on the provisioned environments, one spills over.
    let asked_at = now_unix();
    let answers = invoke_many(&sup, "warm", 3, json!({"seconds": 1}));
    let ok: Vec<&Value> = answers.iter().filter_map(payload).collect();
    c.eq("invokes that succeeded", ok.len(), 3);
    let mut types: Vec<&str> = ok.iter().filter_map(|p| p["init_type"].as_str()).collect();
    types.sort();
    c.eq(
        "initialisation types",
        types,
        vec![
            "on-demand",
            "provisioned-concurrency",
            "provisioned-concurrency",
        ],
    );
    c.check(
        ok.iter()
            .filter(|p| p["init_type"] == "provisioned-concurrency")
            .all(|p| p["init_at"].as_f64().unwrap_or(f64::MAX) < asked_at - 1.0),
        "the provisioned environments ran their init before the invokes were sent",
    );
    let logs = sup.logs("warm");
    let reports: Vec<&String> = logs.iter().filter(|l| l.starts_with("REPORT")).collect();
    c.eq("REPORT lines", reports.len(), 3);
    c.eq(
        "REPORT lines with an Init Duration (the on-demand cold start only)",
        reports
            .iter()
            .filter(|l| l.contains("Init Duration"))
            .count(),
        1,
    );

    // Past the keep-alive the on-demand one goes; the provisioned stay.
    std::thread::sleep(Duration::from_millis(3000));
    c.eq("environments after the keep-alive", env_count(&sup), 2);
    let warm = invoke_many(&sup, "warm", 2, json!({}));
    c.check(
        warm.iter()
            .filter_map(payload)
            .all(|p| p["init_type"] == "provisioned-concurrency"),
        format_args!("provisioned environments serve first: {warm:?}"),
    );

    // The config persists: a restarted supervisor provisions again.
    sup.stop();
    sup.restart();
    let status = wait_status(&sup, "warm", "READY", Duration::from_secs(20));
    c.eq(
        "available after a restart",
        status["AvailableProvisionedConcurrentExecutions"].clone(),
        json!(2),
    );

    // Lowering the count ends one; deleting the config ends the rest.
    sup.request(
        "PutProvisionedConcurrencyConfig",
        json!({"FunctionName": "warm", "ProvisionedConcurrentExecutions": 1}),
    )
    .expect("lower the count");
    let status = wait_status(&sup, "warm", "READY", Duration::from_secs(5));
    c.eq(
        "allocated after lowering",
        status["AllocatedProvisionedConcurrentExecutions"].clone(),
        json!(1),
    );
    sup.request(
        "DeleteProvisionedConcurrencyConfig",
        json!({"FunctionName": "warm"}),
    )
    .expect("delete the config");
    let deadline = Instant::now() + Duration::from_secs(5);
    while env_count(&sup) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    c.eq(
        "environments after the config is deleted",
        env_count(&sup),
        0,
    );
    c.finish();
}

#[test]
fn a_provisioned_init_failure_is_reported_and_limits_are_checked() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("provisioned failure");
    sup.create_python(
        "broken",
        &[("app.py", APP)],
        "app.handler",
        json!({"Environment": {"Variables": {"FAIL_INIT": "1"}}}),
    );
    sup.request(
        "PutProvisionedConcurrencyConfig",
        json!({"FunctionName": "broken", "ProvisionedConcurrentExecutions": 1}),
    )
    .expect("put");
    let status = wait_status(&sup, "broken", "FAILED", Duration::from_secs(20));
    c.eq("status", status["Status"].clone(), json!("FAILED"));
    c.check(
        status["StatusReason"].as_str().is_some_and(|r| {
            r.contains("FUNCTION_ERROR_INIT_FAILURE") && r.contains("init refuses")
        }),
        format_args!("the reason names the init error: {status}"),
    );

    sup.create_python("small", &[("app.py", APP)], "app.handler", json!({}));
    sup.request(
        "PutFunctionConcurrency",
        json!({"FunctionName": "small", "ReservedConcurrentExecutions": 2}),
    )
    .expect("reserve");
    let over = sup.request(
        "PutProvisionedConcurrencyConfig",
        json!({"FunctionName": "small", "ProvisionedConcurrentExecutions": 3}),
    );
    c.check(
        matches!(&over, Err((kind, _)) if kind == "InvalidParameterValueException"),
        format_args!("more provisioned than reserved is refused: {over:?}"),
    );
    let qualified = sup.request(
        "PutProvisionedConcurrencyConfig",
        json!({"FunctionName": "small", "Qualifier": "prod", "ProvisionedConcurrentExecutions": 1}),
    );
    c.check(
        matches!(&qualified, Err((kind, msg)) if kind == "InvalidParameterValueException" && msg.contains("$LATEST")),
        format_args!("an alias qualifier is refused with a hint: {qualified:?}"),
    );
    c.finish();
}

#[test]
fn metrics_count_invocations_errors_throttles_and_cold_starts() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("metrics");
    sup.create_python(
        "counted",
        &[("app.py", APP)],
        "app.handler",
        json!({"Timeout": 30}),
    );
    sup.create_python("untouched", &[("app.py", APP)], "app.handler", json!({}));
    sup.invoke_ok("counted", json!({}));
    sup.invoke_ok("counted", json!({}));
    let failed = sup.invoke("counted", json!({"raise": true}));
    c.check(
        failed.get("FunctionError").is_some(),
        "the third invoke fails",
    );
    sup.request(
        "PutFunctionConcurrency",
        json!({"FunctionName": "counted", "ReservedConcurrentExecutions": 1}),
    )
    .expect("reserve");
    let pair = invoke_many(&sup, "counted", 2, json!({"seconds": 1}));
    c.eq(
        "one of two concurrent invokes is throttled",
        pair.iter().filter(|a| throttle_reason(a).is_some()).count(),
        1,
    );

    let m = sup.request("GetMetrics", json!({})).unwrap_or_default();
    let f = m["Functions"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["FunctionName"] == "counted"))
        .cloned()
        .unwrap_or_default();
    c.eq(
        "invocations",
        f["Counters"]["Invocations"].clone(),
        json!(4),
    );
    c.eq(
        "errors",
        f["Counters"]["Errors"]["Function"].clone(),
        json!(1),
    );
    c.eq("cold starts", f["Counters"]["ColdStarts"].clone(), json!(1));
    c.eq(
        "throttles",
        f["Counters"]["Throttles"]["ReservedFunctionConcurrentInvocationLimitExceeded"].clone(),
        json!(1),
    );
    c.check(
        f["DurationMs"]["Max"].as_f64().unwrap_or(0.0) >= 1000.0,
        format_args!("the slowest invoke slept a second: {}", f["DurationMs"]),
    );
    c.check(
        f["MaxMemoryUsedMb"]["P50"].as_f64().unwrap_or(0.0) > 1.0,
        format_args!("memory used is measured: {}", f["MaxMemoryUsedMb"]),
    );
    c.eq(
        "idle environments",
        f["Gauges"]["EnvironmentsIdle"].clone(),
        json!(1),
    );
    c.eq(
        "reserved concurrency gauge",
        f["Gauges"]["ReservedConcurrency"].clone(),
        json!(1),
    );

    let run = common::cli(&sup.socket, &["metrics"]);
    c.eq("lambdalet metrics exit status", run.code, Some(0));
    for line in [
        "# TYPE lambdalet_invocations_total counter",
        "lambdalet_invocations_total{function=\"counted\"} 4",
        "lambdalet_invocations_total{function=\"untouched\"} 0",
        "lambdalet_cold_starts_total{function=\"counted\"} 1",
        "lambdalet_throttles_total{function=\"counted\",reason=\"ReservedFunctionConcurrentInvocationLimitExceeded\"} 1",
        "lambdalet_duration_seconds_count{function=\"counted\"} 4",
        "lambdalet_account_concurrency_limit 1000",
    ] {
        c.check(
            run.stdout.lines().any(|l| l == line),
            format_args!("the Prometheus text has {line:?}"),
        );
    }
    c.finish();
}
