//! Lambda's invocation record: what a destination receives about an
//! asynchronous invocation that succeeded, ran out of retries, or grew too
//! old (docs/protocol.md § Asynchronous invocation).

use serde::Serialize;
use serde_json::value::RawValue;

/// Why the record was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Condition {
    Success,
    RetriesExhausted,
    EventAgeExceeded,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Success => "Success",
            Condition::RetriesExhausted => "RetriesExhausted",
            Condition::EventAgeExceeded => "EventAgeExceeded",
        }
    }

    pub fn is_failure(self) -> bool {
        self != Condition::Success
    }
}

/// How the last attempt ended (absent when the event never ran).
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    /// `Unhandled` for a function error.
    pub function_error: Option<&'a str>,
    pub payload: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    version: &'static str,
    timestamp: &'a str,
    request_context: RequestContext<'a>,
    request_payload: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_context: Option<ResponseContext<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_payload: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    request_id: &'a str,
    function_arn: String,
    condition: Condition,
    approximate_invoke_count: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseContext<'a> {
    status_code: u16,
    executed_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_error: Option<&'a str>,
}

/// What a record says: the event, why it is sent, and how its last attempt
/// ended.
pub struct RecordInputs<'a> {
    pub timestamp: &'a str,
    pub request_id: &'a str,
    pub function_arn: &'a str,
    pub condition: Condition,
    pub invoke_count: u32,
    pub request_payload: &'a RawValue,
    pub response: Option<Response<'a>>,
}

/// The invocation record, as JSON.
pub fn invocation_record(r: &RecordInputs) -> Box<RawValue> {
    let record = Record {
        version: "1.0",
        timestamp: r.timestamp,
        request_context: RequestContext {
            request_id: r.request_id,
            // Lambda names the version that ran.
            function_arn: format!("{}:{}", r.function_arn, crate::config::LATEST_VERSION),
            condition: r.condition,
            approximate_invoke_count: r.invoke_count,
        },
        request_payload: r.request_payload,
        response_context: r.response.map(|resp| ResponseContext {
            status_code: 200,
            executed_version: crate::config::LATEST_VERSION,
            function_error: resp.function_error,
        }),
        response_payload: r.response.map(|resp| resp.payload),
    };
    serde_json::value::to_raw_value(&record).expect("a record always serialises")
}

/// The file a directory sink gets for a record: sortable by time, and named
/// after the event and the condition (an event delivered twice after a
/// crash leaves two records, told apart by their time).
pub fn sink_file_name(unix_ms: u64, request_id: &str, condition: Condition) -> String {
    format!("{unix_ms:013}-{request_id}-{}.json", condition.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn a_failure_record_has_lambdas_fields() {
        let req = raw(r#"{"order":7}"#);
        let resp = raw(r#"{"errorType":"ValueError","errorMessage":"no"}"#);
        let rec = invocation_record(&RecordInputs {
            timestamp: "2026-11-27T23:59:01.123Z",
            request_id: "r1",
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f",
            condition: Condition::RetriesExhausted,
            invoke_count: 3,
            request_payload: &req,
            response: Some(Response {
                function_error: Some("Unhandled"),
                payload: &resp,
            }),
        });
        let v: serde_json::Value = serde_json::from_str(rec.get()).unwrap();
        assert_eq!(v["version"], "1.0");
        assert_eq!(v["timestamp"], "2026-11-27T23:59:01.123Z");
        assert_eq!(v["requestContext"]["requestId"], "r1");
        assert_eq!(
            v["requestContext"]["functionArn"],
            "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST"
        );
        assert_eq!(v["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(v["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(v["requestPayload"]["order"], 7);
        assert_eq!(v["responseContext"]["statusCode"], 200);
        assert_eq!(v["responseContext"]["executedVersion"], "$LATEST");
        assert_eq!(v["responseContext"]["functionError"], "Unhandled");
        assert_eq!(v["responsePayload"]["errorType"], "ValueError");
    }

    #[test]
    fn an_expired_event_has_no_response() {
        let req = raw("1");
        let rec = invocation_record(&RecordInputs {
            timestamp: "t",
            request_id: "r",
            function_arn: "arn",
            condition: Condition::EventAgeExceeded,
            invoke_count: 0,
            request_payload: &req,
            response: None,
        });
        let v: serde_json::Value = serde_json::from_str(rec.get()).unwrap();
        assert!(v.get("responseContext").is_none() && v.get("responsePayload").is_none());
        assert_eq!(v["requestContext"]["condition"], "EventAgeExceeded");
    }

    #[test]
    fn sink_names_sort_by_time() {
        let a = sink_file_name(999, "r", Condition::Success);
        let b = sink_file_name(1_000, "r", Condition::Success);
        assert!(a < b, "{a} {b}");
        assert_eq!(b, "0000000001000-r-Success.json");
    }
}
