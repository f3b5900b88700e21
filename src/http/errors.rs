//! Errors as AWS services send them over HTTP: a status code, the error type
//! in the `x-amzn-ErrorType` header, and a JSON body with `Type` (`User` for
//! the caller's fault, `Service` for ours) and `message`, plus `Reason` for
//! throttles. botocore and the other SDKs read the header and raise the
//! exception class of that name. The wire kinds map here, in one place.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::protocol::{ErrorKind, WireError};

/// An error answer of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// The AWS error type, e.g. `ResourceNotFoundException`.
    pub kind: &'static str,
    pub message: String,
    /// Lambda's reason code, for throttles.
    pub reason: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            reason: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        Self::from(WireError::invalid(message))
    }
    pub fn bad_content(message: impl Into<String>) -> ApiError {
        Self::from(WireError::new(
            ErrorKind::InvalidRequestContentException,
            message,
        ))
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::from(WireError::not_found(message))
    }
    pub fn too_large(message: impl Into<String>) -> ApiError {
        Self::from(WireError::new(ErrorKind::RequestTooLargeException, message))
    }
    /// A path and method that is no operation of this API.
    pub fn unknown_operation(method: &hyper::Method, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!(
                "{method} {path} is not an operation of lambdalet's HTTP API (docs/http.md lists them)"
            ),
        )
    }

    pub fn response(&self, request_id: &str) -> Response<Full<Bytes>> {
        let source = if self.status.is_server_error() {
            "Service"
        } else {
            "User"
        };
        let mut body = json!({"Type": source, "message": self.message});
        if let Some(reason) = &self.reason {
            body["Reason"] = json!(reason);
        }
        Response::builder()
            .status(self.status)
            .header("x-amzn-ErrorType", self.kind)
            .header("x-amzn-RequestId", request_id)
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid error response")
    }
}

/// The status code AWS Lambda answers each wire error kind with.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::ResourceNotFoundException => StatusCode::NOT_FOUND,
        ErrorKind::ResourceConflictException => StatusCode::CONFLICT,
        ErrorKind::InvalidParameterValueException => StatusCode::BAD_REQUEST,
        ErrorKind::InvalidRequestContentException => StatusCode::BAD_REQUEST,
        ErrorKind::RequestTooLargeException => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::TooManyRequestsException => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::ProvisionedConcurrencyConfigNotFoundException => StatusCode::NOT_FOUND,
        ErrorKind::ServiceException => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> ApiError {
        ApiError {
            status: status_of(e.kind),
            kind: e.kind.as_str(),
            message: e.message,
            reason: e.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn every_kind_has_lambdas_status() {
        let cases = [
            (ErrorKind::ResourceNotFoundException, 404),
            (ErrorKind::ResourceConflictException, 409),
            (ErrorKind::InvalidParameterValueException, 400),
            (ErrorKind::InvalidRequestContentException, 400),
            (ErrorKind::RequestTooLargeException, 413),
            (ErrorKind::TooManyRequestsException, 429),
            (
                ErrorKind::ProvisionedConcurrencyConfigNotFoundException,
                404,
            ),
            (ErrorKind::ServiceException, 500),
        ];
        for (kind, status) in cases {
            assert_eq!(status_of(kind).as_u16(), status, "{kind:?}");
        }
    }

    #[test]
    fn throttle_body_has_type_message_and_reason() {
        let mut wire = WireError::new(ErrorKind::TooManyRequestsException, "Rate Exceeded.");
        wire.reason = Some("ConcurrentInvocationLimitExceeded".into());
        let resp = ApiError::from(wire).response("rid");
        assert_eq!(resp.status(), 429);
        assert_eq!(
            resp.headers()["x-amzn-ErrorType"],
            "TooManyRequestsException"
        );
        let body = futures_body(resp);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"Type": "User", "message": "Rate Exceeded.", "Reason": "ConcurrentInvocationLimitExceeded"})
        );
        let resp = ApiError::from(WireError::service("down")).response("rid");
        let v: serde_json::Value = serde_json::from_slice(&futures_body(resp)).unwrap();
        assert_eq!(v["Type"], "Service");
    }

    fn futures_body(resp: Response<Full<Bytes>>) -> Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes()
    }
}
