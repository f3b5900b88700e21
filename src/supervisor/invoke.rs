//! One invocation: who asked, what for, and how it is reported (Lambda's
//! START / END / REPORT lines and error bodies).

use std::time::{Duration, Instant};

use mio::Token;
use serde_json::value::RawValue;

use super::concurrency::Slot;
use super::logs::TailBuffer;
use crate::protocol::LogType;

/// Lifecycle of an invocation: Queued (waiting for an environment) → Running
/// (sent to one) → answered exactly once.
#[derive(Debug)]
pub struct Invocation {
    pub request_id: String,
    /// The connection and request id to answer; None if the client left.
    pub reply_to: Option<(Token, serde_json::Value)>,
    pub function: String,
    pub payload: Box<RawValue>,
    pub log_type: LogType,
    pub client_context: Option<serde_json::Value>,
    pub started: Option<Instant>,
    pub tail: Option<TailBuffer>,
    /// Its log lines (START, output) not yet written to the log store.
    pub log: Vec<String>,
    /// Bytes in `log`, so a chatty invoke is flushed without re-counting.
    pub log_bytes: usize,
    /// The deadline timer's id, to recognise a stale timer.
    pub timer: u64,
    /// Its place in the concurrency counts, given back when it is dropped.
    #[expect(dead_code, reason = "held for its Drop, which gives the slot back")]
    pub slot: Option<Slot>,
    /// Set when the invocation runs a queued event: its end goes to the
    /// queue, not to a caller.
    pub event: Option<EventRef>,
}

/// The queued event an invocation runs.
#[derive(Debug, Clone, Copy)]
pub struct EventRef {
    pub seq: u64,
    /// This attempt's number (Lambda's approximateInvokeCount).
    pub invoke_count: u32,
}

/// How an invocation ended.
#[derive(Debug)]
pub enum Outcome {
    /// The handler returned this JSON.
    Success(Box<RawValue>),
    /// A function error: Lambda answers 200 with X-Amz-Function-Error and the
    /// error body as payload. `error_type` goes into the REPORT line.
    FunctionError {
        body: Box<RawValue>,
        error_type: String,
        status: Option<&'static str>,
    },
}

/// Lambda's error body for errors the runtime itself could not report.
pub fn error_body(error_type: &str, message: &str) -> Box<RawValue> {
    let v = serde_json::json!({ "errorType": error_type, "errorMessage": message });
    RawValue::from_string(v.to_string()).expect("json! always serialises")
}

/// `Task timed out after 3.00 seconds`, Lambda's wording.
pub fn timeout_message(request_id: &str, timeout: Duration) -> String {
    format!(
        "RequestId: {request_id} Error: Task timed out after {:.2} seconds",
        timeout.as_secs_f64()
    )
}

pub fn start_line(request_id: &str) -> String {
    format!("START RequestId: {request_id} Version: $LATEST")
}

pub fn end_line(request_id: &str) -> String {
    format!("END RequestId: {request_id}")
}

/// Lambda's REPORT line: tab-separated, Billed Duration rounded up to 1 ms,
/// Init Duration on cold starts, Status and Error Type when it failed.
pub fn report_line(
    request_id: &str,
    duration: Duration,
    memory_mb: u32,
    max_memory_used_bytes: u64,
    init: Option<Duration>,
    status: Option<&str>,
    error_type: Option<&str>,
) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    let billed = (duration.as_nanos().div_ceil(1_000_000)).max(1);
    let used_mb = max_memory_used_bytes.div_ceil(1024 * 1024);
    let mut line = format!(
        "REPORT RequestId: {request_id}\tDuration: {ms:.2} ms\tBilled Duration: {billed} ms\tMemory Size: {memory_mb} MB\tMax Memory Used: {used_mb} MB\t"
    );
    if let Some(init) = init {
        line.push_str(&format!(
            "Init Duration: {:.2} ms\t",
            init.as_secs_f64() * 1000.0
        ));
    }
    if let Some(status) = status {
        line.push_str(&format!("Status: {status}\t"));
    }
    if let Some(error_type) = error_type {
        line.push_str(&format!("Error Type: {error_type}\t"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_has_lambdas_fields() {
        let line = report_line(
            "abc",
            Duration::from_micros(1_234),
            128,
            40 * 1024 * 1024 + 1,
            Some(Duration::from_micros(12_345)),
            None,
            None,
        );
        assert_eq!(
            line,
            "REPORT RequestId: abc\tDuration: 1.23 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 41 MB\tInit Duration: 12.35 ms\t"
        );
    }

    #[test]
    fn billed_duration_rounds_up_to_the_millisecond() {
        let line = report_line("a", Duration::from_millis(3), 128, 0, None, None, None);
        assert!(line.contains("Billed Duration: 3 ms"), "{line}");
        let line = report_line("a", Duration::from_micros(3_001), 128, 0, None, None, None);
        assert!(line.contains("Billed Duration: 4 ms"), "{line}");
    }

    #[test]
    fn timeout_message_matches_lambda() {
        assert!(timeout_message("r", Duration::from_secs(3))
            .ends_with("Task timed out after 3.00 seconds"));
    }
}
