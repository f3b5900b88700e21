//! `hello` as a Rust function: `lambda_runtime::run(service_fn(...))`, as
//! AWS's examples write it.
//!
//! - `{"name": "x"}` → `{"message": "Hello, x!", ...}` with what the runtime
//!   client saw (the request id, the ARN, the deadline, the function's
//!   configuration); `{}` → `Hello, world!`.
//! - `{"fail": "error"}` → the handler returns an error: lambda_runtime posts
//!   it to `/invocation/{id}/error` as `{"errorType":"HelloError",...}`.
//! - `{"fail": "panic"}` → the handler panics: lambda_runtime catches it and
//!   posts it as an error too.
//! - `MODE=init_fail` in the environment: `main` fails before `run`, as a
//!   function whose setup (configuration, clients) fails does. lambda_runtime
//!   has no init-error report for that (it posts `/init/error` only for
//!   SnapStart hooks): the process prints the error and exits with status 1.

use lambda_runtime::{service_fn, Diagnostic, Error, LambdaEvent};
use serde_json::{json, Value};

/// The handler's own error type, with the `errorType` it reports.
#[derive(Debug)]
struct HelloError(String);

impl From<HelloError> for Diagnostic {
    fn from(e: HelloError) -> Diagnostic {
        Diagnostic {
            error_type: "HelloError".into(),
            error_message: e.0,
        }
    }
}

async fn hello(event: LambdaEvent<Value>) -> Result<Value, HelloError> {
    let (payload, ctx) = event.into_parts();
    match payload.get("fail").and_then(Value::as_str) {
        Some("error") => {
            return Err(HelloError(format!(
                "asked to fail (request {})",
                ctx.request_id
            )))
        }
        Some("panic") => panic!("asked to panic"),
        _ => {}
    }
    let name = payload.get("name").and_then(Value::as_str).unwrap_or("world");
    Ok(json!({
        "message": format!("Hello, {name}!"),
        "event": payload,
        "request_id": ctx.request_id,
        "invoked_function_arn": ctx.invoked_function_arn,
        "deadline_ms": ctx.deadline,
        "function_name": ctx.env_config.function_name,
        "function_version": ctx.env_config.version,
        "memory_mb": ctx.env_config.memory,
        "log_group": ctx.env_config.log_group,
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::var("MODE").as_deref() == Ok("init_fail") {
        return Err("MODE=init_fail: the function's setup failed before lambda_runtime::run".into());
    }
    lambda_runtime::run(service_fn(hello)).await
}
