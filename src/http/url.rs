//! Function URLs: any request to `/url/{function}/{path…}` becomes an API
//! Gateway HTTP API payload (format 2.0) event, as Lambda's function URLs
//! send, and the function's result becomes the HTTP response.
//! https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::api::{call, function_target, HttpResponse, InvokeAnswer};
use super::clock;
use super::errors::ApiError;
use super::State;
use crate::protocol::{self, op};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Handle `/url/{rest}`: `rest` is what follows `/url/`, still encoded.
pub async fn handle(
    state: &State,
    parts: &Parts,
    rest: &str,
    body: Bytes,
    peer: SocketAddr,
    request_id: &str,
) -> Result<HttpResponse, ApiError> {
    let (function, raw_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let function = percent_encoding::percent_decode_str(function)
        .decode_utf8()
        .map_err(|_| ApiError::bad_content("the function name in the URL is not UTF-8"))?;
    let name = function_target(&function, None)?;
    let event = event(parts, &name, raw_path, &body, peer, request_id);
    let params = protocol::Invoke {
        function_name: name,
        invocation_type: protocol::InvocationType::RequestResponse,
        log_type: protocol::LogType::None,
        client_context: None,
        payload: Some(serde_json::value::to_raw_value(&event).expect("an event always serialises")),
        idempotency_key: None,
    };
    let result = call(state, op::INVOKE, &params).await?;
    let answer: InvokeAnswer = serde_json::from_str(result.get()).map_err(|e| {
        ApiError::from(protocol::WireError::service(format!(
            "the supervisor's Invoke answer could not be read: {e}"
        )))
    })?;
    if answer.function_error.is_some() {
        return Ok(bad_gateway("the function failed (its log says why)"));
    }
    let payload = answer
        .payload
        .map(|p| p.get().to_owned())
        .unwrap_or_else(|| "null".to_owned());
    Ok(match response(&payload) {
        Ok(r) => r,
        Err(why) => bad_gateway(&format!(
            "the function's result is not a valid response: {why}"
        )),
    })
}

/// Lambda's answer to a failed function or a malformed result.
fn bad_gateway(why: &str) -> HttpResponse {
    Response::builder()
        .status(StatusCode::BAD_GATEWAY)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"message": format!("Internal Server Error: {why}")}).to_string(),
        )))
        .expect("a valid response")
}

/// Content types whose bodies are passed as text; any other body (or one
/// that is not UTF-8) is base64 with `isBase64Encoded: true`.
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ct.starts_with("text/")
        || ct == "application/json"
        || ct.ends_with("+json")
        || ct == "application/xml"
        || ct.ends_with("+xml")
        || ct == "application/javascript"
        || ct == "application/x-www-form-urlencoded"
}

/// The version 2.0 event of one request.
fn event(
    parts: &Parts,
    function: &str,
    raw_path: &str,
    body: &[u8],
    peer: SocketAddr,
    request_id: &str,
) -> Value {
    // Headers lower-cased, repeated ones joined with ","; cookies apart.
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<String> = Vec::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == hyper::header::COOKIE {
            cookies.extend(
                value
                    .split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned),
            );
            continue;
        }
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let raw_query = parts.uri.query().unwrap_or("");
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(raw_query.as_bytes()) {
        query
            .entry(k.into_owned())
            .and_modify(|old| {
                old.push(',');
                old.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let host = headers.get("host").cloned().unwrap_or_default();
    let user_agent = headers.get("user-agent").cloned().unwrap_or_default();
    let protocol = format!("{:?}", parts.version);
    let mut e = Map::new();
    e.insert("version".into(), json!("2.0"));
    e.insert("routeKey".into(), json!("$default"));
    e.insert("rawPath".into(), json!(raw_path));
    e.insert("rawQueryString".into(), json!(raw_query));
    if !cookies.is_empty() {
        e.insert("cookies".into(), json!(cookies));
    }
    e.insert("headers".into(), json!(headers));
    if !query.is_empty() {
        e.insert("queryStringParameters".into(), json!(query));
    }
    e.insert(
        "requestContext".into(),
        json!({
            "accountId": "anonymous",
            "apiId": function,
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(""),
            "http": {
                "method": parts.method.as_str(),
                "path": raw_path,
                "protocol": protocol,
                "sourceIp": peer.ip().to_string(),
                "userAgent": user_agent,
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": clock::clf_time(now.as_secs()),
            "timeEpoch": now.as_millis() as u64,
        }),
    );
    let content_type = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !body.is_empty() {
        match std::str::from_utf8(body) {
            Ok(text) if is_text(content_type) => {
                e.insert("body".into(), json!(text));
                e.insert("isBase64Encoded".into(), json!(false));
            }
            _ => {
                e.insert("body".into(), json!(B64.encode(body)));
                e.insert("isBase64Encoded".into(), json!(true));
            }
        }
    } else {
        e.insert("isBase64Encoded".into(), json!(false));
    }
    Value::Object(e)
}

/// The HTTP response for a function's result (`payload`, JSON text). An
/// object with `statusCode` is a structured response; anything else (an
/// object without it, an array, a string, a number…) is sent as JSON with 200.
fn response(payload: &str) -> Result<HttpResponse, String> {
    let value: Value = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    let Some(obj) = value.as_object().filter(|o| o.contains_key("statusCode")) else {
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(payload.to_owned())))
            .expect("a valid response"));
    };
    let status = obj["statusCode"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .filter(|s| (100..=599).contains(&s.as_u16()))
        .ok_or("statusCode must be a whole number from 100 to 599")?;
    let mut resp = Response::builder().status(status);
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (name, v) in h {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(format!("headers.{name} must be a string")),
                };
                let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("headers: {name:?} is not a header name"))?;
                let v = hyper::header::HeaderValue::from_str(&v)
                    .map_err(|_| format!("headers.{name}: {v:?} is not a header value"))?;
                resp = resp.header(name, v);
            }
        }
        Some(_) => return Err("headers must be an object of strings".into()),
    }
    match obj.get("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cs)) => {
            for c in cs {
                let c = c.as_str().ok_or("cookies must be an array of strings")?;
                let v = hyper::header::HeaderValue::from_str(c)
                    .map_err(|_| format!("cookies: {c:?} is not a header value"))?;
                resp = resp.header(hyper::header::SET_COOKIE, v);
            }
        }
        Some(_) => return Err("cookies must be an array of strings".into()),
    }
    let base64 = match obj.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("isBase64Encoded must be true or false".into()),
    };
    let body = match obj.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if base64 => B64
            .decode(s)
            .map_err(|e| format!("body is not base64 ({e}) but isBase64Encoded is true"))?,
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(_) => return Err("body must be a string".into()),
    };
    resp.body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body(r: HttpResponse) -> Vec<u8> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(r.into_body().collect())
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[test]
    fn structured_and_bare_results() {
        let r = response(r#"{"statusCode":201,"headers":{"x-a":"1","x-n":2},"cookies":["a=1","b=2"],"body":"hi"}"#).unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers()["x-n"], "2");
        let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(body(r), b"hi");

        let r = response(r#"{"statusCode":200,"body":"AAEC/w==","isBase64Encoded":true}"#).unwrap();
        assert_eq!(body(r), [0, 1, 2, 255]);

        let r = response(r#"{"hello":"world"}"#).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(body(r), br#"{"hello":"world"}"#);
        assert_eq!(body(response("[1,2]").unwrap()), b"[1,2]");
    }

    #[test]
    fn malformed_results_are_refused() {
        for bad in [
            r#"{"statusCode":"200"}"#,
            r#"{"statusCode":99}"#,
            r#"{"statusCode":200,"headers":[]}"#,
            r#"{"statusCode":200,"headers":{"a":{"b":1}}}"#,
            r#"{"statusCode":200,"body":{"a":1}}"#,
            r#"{"statusCode":200,"body":"!!","isBase64Encoded":true}"#,
            r#"{"statusCode":200,"cookies":"a=1"}"#,
        ] {
            assert!(response(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_types() {
        assert!(is_text(None));
        assert!(is_text(Some("text/plain; charset=utf-8")));
        assert!(is_text(Some("application/json")));
        assert!(!is_text(Some("application/octet-stream")));
        assert!(!is_text(Some("image/png")));
    }
}
