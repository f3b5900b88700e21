//! Root integration tests: the Node.js runtime through the real
//! `lambdalet serve`. Handlers written for Lambda's Node.js runtimes,
//! unmodified: CommonJS and ES modules, async and callback style, thrown
//! errors, timeouts, layers' node_modules, and the pre-started node pool.

mod common;

use std::time::{Duration, Instant};

use common::{require_root, zip_b64, Checks, Supervisor};
use serde_json::{json, Value};

/// Reports what a handler sees: the event, its context, its identity and
/// confinement, and logs a line at each console level.
const CJS_APP: &str = r#"
const fs = require('fs');
const os = require('os');

function status(field) {
  const line = fs.readFileSync('/proc/self/status', 'utf8').split('\n').find(l => l.startsWith(field + ':'));
  return line ? line.split(':')[1].trim() : null;
}

exports.handler = async (event, context) => {
  console.log('hello from', context.functionName, { n: 1 });
  console.info('an info line');
  console.warn('a warning');
  console.error('an error line');
  const remaining = context.getRemainingTimeInMillis();
  let mount = 'allowed';
  try { fs.writeFileSync('/var/task/new.txt', 'x'); } catch (e) { mount = e.code; }
  return {
    event,
    context: {
      awsRequestId: context.awsRequestId,
      functionName: context.functionName,
      functionVersion: context.functionVersion,
      invokedFunctionArn: context.invokedFunctionArn,
      memoryLimitInMB: context.memoryLimitInMB,
      logGroupName: context.logGroupName,
      logStreamName: context.logStreamName,
      callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
      remaining,
    },
    env: {
      AWS_EXECUTION_ENV: process.env.AWS_EXECUTION_ENV,
      AWS_LAMBDA_FUNCTION_NAME: process.env.AWS_LAMBDA_FUNCTION_NAME,
      NODE_PATH: process.env.NODE_PATH,
      STAGE: process.env.STAGE,
      TZ: process.env.TZ,
      LAMBDALET_WORKER_FD: process.env.LAMBDALET_WORKER_FD,
    },
    uid: process.getuid(),
    gid: process.getgid(),
    cwd: process.cwd(),
    capEff: status('CapEff'),
    capPrm: status('CapPrm'),
    noNewPrivs: status('NoNewPrivs'),
    seccomp: status('Seccomp'),
    writeTask: mount,
    uptime: process.uptime(),
    node: process.version,
    hostname: os.hostname(),
  };
};
"#;

fn create(sup: &Supervisor, name: &str, files: &[(&str, &str)], handler: &str, extra: Value) {
    let code = sup.write_code(name, files);
    let mut params = json!({
        "FunctionName": name,
        "Runtime": "nodejs20.x",
        "Handler": handler,
        "Code": {"Path": code.to_str().unwrap()},
    });
    common::merge(&mut params, extra);
    if let Err(e) = sup.request("CreateFunction", params) {
        panic!("CreateFunction {name}: {e:?}\n{}", sup.stderr());
    }
}

#[test]
fn commonjs_handlers_get_lambdas_context_and_run_confined() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    create(
        &sup,
        "cjs",
        &[("index.js", CJS_APP)],
        "index.handler",
        json!({"Environment": {"Variables": {"STAGE": "test"}}, "MemorySize": 256, "Timeout": 7}),
    );
    let mut c = Checks::new("nodejs: a CommonJS async handler");
    // Node blanks are made once a nodejs function exists: wait for one, so
    // that this cold start takes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = sup.request("GetMetrics", json!({})).expect("GetMetrics");
        if m["Account"]["NodeBlankEnvironments"].as_u64() >= Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no node blank within 30 s: {m}\n{}",
            sup.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    let r = sup.invoke("cjs", json!({"hello": "node"}));
    let cold = t.elapsed();
    let p = &r["Payload"];
    c.check(
        r.get("FunctionError").is_none(),
        format!("no function error: {r}"),
    );
    c.eq("event", &p["event"], &json!({"hello": "node"}));
    let ctx = &p["context"];
    c.eq("awsRequestId", &ctx["awsRequestId"], &r["RequestId"]);
    c.eq("functionName", ctx["functionName"].as_str(), Some("cjs"));
    c.eq(
        "functionVersion",
        ctx["functionVersion"].as_str(),
        Some("$LATEST"),
    );
    c.check(
        ctx["invokedFunctionArn"]
            .as_str()
            .is_some_and(|a| a.ends_with(":function:cjs")),
        format!("invokedFunctionArn {}", ctx["invokedFunctionArn"]),
    );
    c.eq(
        "memoryLimitInMB",
        ctx["memoryLimitInMB"].as_str(),
        Some("256"),
    );
    c.eq(
        "logGroupName",
        ctx["logGroupName"].as_str(),
        Some("/aws/lambda/cjs"),
    );
    c.check(
        ctx["logStreamName"]
            .as_str()
            .is_some_and(|s| s.contains("[$LATEST]")),
        "logStreamName",
    );
    c.eq(
        "callbackWaitsForEmptyEventLoop",
        ctx["callbackWaitsForEmptyEventLoop"].as_bool(),
        Some(true),
    );
    let remaining = ctx["remaining"].as_i64().unwrap_or(-1);
    c.check(
        remaining > 5_000 && remaining <= 7_000,
        format!("getRemainingTimeInMillis {remaining} within the 7 s timeout"),
    );
    let env = &p["env"];
    c.eq(
        "AWS_EXECUTION_ENV",
        env["AWS_EXECUTION_ENV"].as_str(),
        Some("AWS_Lambda_nodejs20.x"),
    );
    c.eq("STAGE", env["STAGE"].as_str(), Some("test"));
    c.eq("TZ", env["TZ"].as_str(), Some(":UTC"));
    c.check(
        env["NODE_PATH"]
            .as_str()
            .is_some_and(|p| p.contains("/opt/nodejs/node_modules")),
        "NODE_PATH names the layers' node_modules",
    );
    c.check(
        env.get("LAMBDALET_WORKER_FD").is_none_or(Value::is_null),
        "the runtime's own variables are gone",
    );
    // Confinement: the function's uid, no capabilities, no_new_privs,
    // seccomp, a read-only /var/task.
    c.check(
        p["uid"].as_u64().is_some_and(|u| u >= 1000),
        format!("uid {}", p["uid"]),
    );
    c.eq("cwd", p["cwd"].as_str(), Some("/var/task"));
    c.eq("CapEff", p["capEff"].as_str(), Some("0000000000000000"));
    c.eq("CapPrm", p["capPrm"].as_str(), Some("0000000000000000"));
    c.eq("NoNewPrivs", p["noNewPrivs"].as_str(), Some("1"));
    c.eq("Seccomp (filter)", p["seccomp"].as_str(), Some("2"));
    c.eq("writing /var/task", p["writeTask"].as_str(), Some("EROFS"));
    c.check(
        p["hostname"]
            .as_str()
            .is_some_and(|h| h.starts_with("lambdalet-")),
        "its own UTS namespace",
    );
    // The node was started before the invoke was sent: a pre-started blank.
    let uptime = p["uptime"].as_f64().unwrap_or(0.0);
    c.check(
        uptime > cold.as_secs_f64(),
        format!(
            "node had run {uptime:.3} s, longer than the cold invoke's {:.3} s (pre-started)",
            cold.as_secs_f64()
        ),
    );

    // Warm: the same process, a new request id.
    let again = sup.invoke("cjs", json!([1, 2]));
    c.eq("warm event", &again["Payload"]["event"], &json!([1, 2]));
    c.check(
        again["Payload"]["context"]["awsRequestId"] != ctx["awsRequestId"],
        "a new request id",
    );

    // console lines as Lambda prints them: time, request id, level, message.
    let rid = r["RequestId"].as_str().unwrap_or_default();
    let logs = sup.logs("cjs");
    for (level, text) in [
        ("INFO", "hello from cjs { n: 1 }"),
        ("INFO", "an info line"),
        ("WARN", "a warning"),
        ("ERROR", "an error line"),
    ] {
        let found = logs.iter().any(|l| {
            let f: Vec<&str> = l.splitn(4, '\t').collect();
            f.len() == 4
                && f[0].ends_with('Z')
                && f[0].len() == 24
                && f[1] == rid
                && f[2] == level
                && f[3] == text
        });
        c.check(found, format!("a {level} line {text:?} in {logs:#?}"));
    }
    c.check(
        logs.iter()
            .any(|l| l.starts_with("REPORT RequestId") && l.contains("Init Duration")),
        "the cold start's REPORT has an Init Duration",
    );
    c.finish();
}

#[test]
fn es_modules_load_with_import_and_top_level_await() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("nodejs: ES modules");
    create(
        &sup,
        "mjs",
        &[(
            "app.mjs",
            "import { hostname } from 'node:os';\n\
             const started = await Promise.resolve('awaited at load');\n\
             export const handler = async (event) => ({ kind: 'mjs', started, got: event.x });\n",
        )],
        "app.handler",
        json!({}),
    );
    c.eq(
        ".mjs",
        sup.invoke_ok("mjs", json!({"x": 1})),
        json!({"kind": "mjs", "started": "awaited at load", "got": 1}),
    );
    create(
        &sup,
        "typemodule",
        &[
            ("package.json", r#"{"type": "module"}"#),
            ("lib/greet.js", "export const greet = (n) => `hi ${n}`;\n"),
            (
                "src/index.js",
                "import { greet } from '../lib/greet.js';\n\
                 export async function handler(event, context) { return greet(event.name); }\n",
            ),
        ],
        "src/index.handler",
        json!({}),
    );
    c.eq(
        ".js with \"type\": \"module\", in a subdirectory",
        sup.invoke_ok("typemodule", json!({"name": "esm"})),
        json!("hi esm"),
    );
    c.finish();
}

#[test]
fn callback_handlers_wait_for_the_event_loop_unless_told_not_to() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("nodejs: callback style");
    create(
        &sup,
        "cb",
        &[(
            "index.js",
            "let late = 0;\n\
             exports.handler = function (event, context, callback) {\n\
               if (event.noWait) context.callbackWaitsForEmptyEventLoop = false;\n\
               if (event.fail) return callback(new Error('callback failed'));\n\
               setTimeout(() => { late += 1; console.log('timer fired'); }, 400);\n\
               callback(null, { late, at: Date.now() });\n\
             };\n",
        )],
        "index.handler",
        json!({}),
    );
    // Waiting for the empty event loop: the answer comes after the timer.
    let t = Instant::now();
    let first = sup.invoke_ok("cb", json!({}));
    let waited = t.elapsed();
    c.eq(
        "the result passed to the callback",
        &first["late"],
        &json!(0),
    );
    c.check(
        waited >= Duration::from_millis(400),
        format!("the answer waited for the pending timer ({waited:?})"),
    );
    // Not waiting: the answer comes at once; the timer still runs later,
    // in the next invoke's time, as on Lambda.
    let t = Instant::now();
    let second = sup.invoke_ok("cb", json!({"noWait": true}));
    let quick = t.elapsed();
    c.eq("the first timer had fired", &second["late"], &json!(1));
    c.check(
        quick < Duration::from_millis(350),
        format!("callbackWaitsForEmptyEventLoop=false answers at once ({quick:?})"),
    );
    let r = sup.invoke("cb", json!({"fail": true}));
    c.eq(
        "callback(err)",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "callback(err) errorMessage",
        r["Payload"]["errorMessage"].as_str(),
        Some("callback failed"),
    );
    c.finish();
}

#[test]
fn errors_are_reported_as_lambdas_node_runtime_does() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("nodejs: errors");
    create(
        &sup,
        "errs",
        &[(
            "index.js",
            "class MyError extends Error { constructor(m) { super(m); this.name = 'MyError'; } }\n\
             exports.handler = async (event) => {\n\
               if (event.kind === 'throw') throw new MyError('it broke');\n\
               if (event.kind === 'string') throw 'just a string';\n\
               if (event.kind === 'reject') return Promise.reject(new TypeError('rejected'));\n\
               if (event.kind === 'circular') { const o = {}; o.o = o; return o; }\n\
               return 'fine';\n\
             };\n",
        )],
        "index.handler",
        json!({}),
    );
    let r = sup.invoke("errs", json!({"kind": "throw"}));
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
    let trace = r["Payload"]["trace"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    c.check(
        trace.first().and_then(Value::as_str) == Some("MyError: it broke")
            && trace
                .iter()
                .any(|l| l.as_str().is_some_and(|l| l.contains("/var/task/index.js"))),
        format!("trace is the stack, naming the handler's file: {trace:?}"),
    );
    let r = sup.invoke("errs", json!({"kind": "string"}));
    c.eq(
        "a thrown string's errorType",
        r["Payload"]["errorType"].as_str(),
        Some("string"),
    );
    c.eq(
        "a thrown string's errorMessage",
        r["Payload"]["errorMessage"].as_str(),
        Some("just a string"),
    );
    let r = sup.invoke("errs", json!({"kind": "reject"}));
    c.eq(
        "a rejection's errorType",
        r["Payload"]["errorType"].as_str(),
        Some("TypeError"),
    );
    let r = sup.invoke("errs", json!({"kind": "circular"}));
    c.eq(
        "an unserialisable result",
        r["Payload"]["errorType"].as_str(),
        Some("Runtime.MarshalError"),
    );
    c.eq(
        "still serving",
        sup.invoke_ok("errs", json!({})),
        json!("fine"),
    );

    // Init errors: the module is missing, the handler is not exported, the
    // code does not parse.
    for (name, files, handler, want) in [
        (
            "nomodule",
            vec![("index.js", "exports.handler = async () => 1;")],
            "missing.handler",
            "Runtime.ImportModuleError",
        ),
        (
            "nohandler",
            vec![("index.js", "exports.other = async () => 1;")],
            "index.handler",
            "Runtime.HandlerNotFound",
        ),
        (
            "syntax",
            vec![("index.js", "exports.handler = async () => {{;")],
            "index.handler",
            "Runtime.UserCodeSyntaxError",
        ),
    ] {
        create(&sup, name, &files, handler, json!({}));
        let r = sup.invoke(name, json!({}));
        c.eq(
            format!("{name}: FunctionError"),
            r["FunctionError"].as_str(),
            Some("Unhandled"),
        );
        c.eq(
            format!("{name}: errorType"),
            r["Payload"]["errorType"].as_str(),
            Some(want),
        );
    }
    c.finish();
}

#[test]
fn a_handler_that_runs_too_long_is_stopped_at_its_timeout() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("nodejs: timeout");
    create(
        &sup,
        "slow",
        &[(
            "index.js",
            "exports.handler = async (event) => {\n\
               if (event.hang) await new Promise(() => setInterval(() => {}, 1000));\n\
               return process.pid;\n\
             };\n",
        )],
        "index.handler",
        json!({"Timeout": 1}),
    );
    let t = Instant::now();
    let r = sup.invoke("slow", json!({"hang": true}));
    let took = t.elapsed();
    c.eq(
        "FunctionError",
        r["FunctionError"].as_str(),
        Some("Unhandled"),
    );
    c.eq(
        "errorType",
        r["Payload"]["errorType"].as_str(),
        Some("Sandbox.Timedout"),
    );
    c.check(
        r["Payload"]["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("Task timed out after 1.00 seconds")),
        format!("errorMessage {}", r["Payload"]["errorMessage"]),
    );
    c.check(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        format!("stopped at the timeout ({took:?})"),
    );
    c.check(
        sup.invoke("slow", json!({})).get("FunctionError").is_none(),
        "the next invoke runs in a new environment",
    );
    c.finish();
}

#[test]
fn a_library_in_a_layer_is_required_from_opt_nodejs_node_modules() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("nodejs: layers");
    let mut arns = Vec::new();
    for (layer, who) in [("base", "first"), ("override", "second")] {
        let published = sup
            .request(
                "PublishLayerVersion",
                json!({
                    "LayerName": layer,
                    "Content": {"ZipFile": zip_b64(&[
                        ("nodejs/node_modules/greeter/index.js",
                         &format!("exports.who = '{who}';")),
                        (&format!("nodejs/node_modules/only-{layer}/index.js"), "exports.ok = true;"),
                    ])},
                }),
            )
            .unwrap_or_else(|e| panic!("PublishLayerVersion {layer}: {e:?}"));
        arns.push(published["LayerVersionArn"].clone());
    }
    create(
        &sup,
        "uses-layers",
        &[(
            "index.js",
            "exports.handler = async () => ({\n\
               who: require('greeter').who,\n\
               base: require('only-base').ok,\n\
               override: require('only-override').ok,\n\
               resolved: require.resolve('greeter'),\n\
             });\n",
        )],
        "index.handler",
        json!({"Layers": arns}),
    );
    c.eq(
        "the later layer wins; both layers' modules resolve",
        sup.invoke_ok("uses-layers", json!({})),
        json!({
            "who": "second",
            "base": true,
            "override": true,
            "resolved": "/opt/nodejs/node_modules/greeter/index.js",
        }),
    );
    c.finish();
}

/// Processes named `node` in the supervisor's environment cgroups.
fn node_processes(sup: &Supervisor) -> Vec<i32> {
    sup.processes_in_cgroups()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "node")
        })
        .collect()
}

fn node_blanks(sup: &Supervisor) -> u64 {
    let m = sup.request("GetMetrics", json!({})).expect("GetMetrics");
    m["Account"]["NodeBlankEnvironments"].as_u64().unwrap_or(0)
}

#[test]
fn node_blanks_are_kept_only_while_a_nodejs_function_exists() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start_with(&["--prewarm-node", "2"]);
    let mut c = Checks::new("nodejs: the node blank pool");
    std::thread::sleep(Duration::from_millis(1500));
    c.eq(
        "no node blank before any nodejs function",
        node_blanks(&sup),
        0,
    );
    c.eq("no node process", node_processes(&sup), vec![]);

    create(
        &sup,
        "pooled",
        &[("index.js", "exports.handler = async () => 'ok';")],
        "index.handler",
        json!({}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while node_blanks(&sup) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    c.eq("--prewarm-node 2 node blanks", node_blanks(&sup), 2);
    c.eq("a started node in each", node_processes(&sup).len(), 2);
    c.eq(
        "a cold start",
        sup.invoke_ok("pooled", json!({})),
        json!("ok"),
    );

    sup.request("DeleteFunction", json!({"FunctionName": "pooled"}))
        .expect("DeleteFunction");
    let deadline = Instant::now() + Duration::from_secs(10);
    while (node_blanks(&sup) > 0 || !node_processes(&sup).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    c.eq(
        "the last nodejs function gone: no node blank",
        node_blanks(&sup),
        0,
    );
    c.eq("and no node process", node_processes(&sup), vec![]);
    c.finish();
}
