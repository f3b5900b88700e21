//! The Lambda REST API as botocore's service model describes it: the Invoke
//! API and the control plane calls lambdalet has, each turned into one
//! request on the supervisor's socket (docs/http.md).
//!
//! Only what an AWS client can send is offered: code and layer content come
//! inline (`ZipFile`), never as a path on this host (`Code.Path` is for root
//! clients of the socket, and this front connects to it as root), and
//! event-invoke destinations are functions, never host directories.

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::State;
use crate::protocol::{
    self, op, Environment, EphemeralStorage, FunctionCode, InvocationType, LogType,
};

/// The region and account in every ARN lambdalet gives out.
const ARN_PREFIX: &str = "arn:aws:lambda:us-east-1:000000000000";
const ACCOUNT_ID: &str = "000000000000";
/// ListFunctions' page size when MaxItems is not given (Lambda's is 50).
const DEFAULT_PAGE: usize = 50;

pub type HttpResponse = Response<Full<Bytes>>;

/// The query string, decoded (`+` is a space, as in forms).
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Route one API request. `body` is already read, within its limit.
pub async fn route(state: &State, parts: &Parts, body: Bytes) -> Result<HttpResponse, ApiError> {
    let path = parts.uri.path();
    let segments = path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| {
                    ApiError::bad_content(format!("the path {path} is not percent-encoded UTF-8"))
                })
        })
        .collect::<Result<Vec<String>, ApiError>>()?;
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let q = Query::parse(parts.uri.query());
    let m = &parts.method;
    match (m, seg.as_slice()) {
        (&Method::POST, ["2015-03-31", "functions", f, "invocations"]) => {
            invoke(state, parts, f, &q, body).await
        }
        (&Method::POST, ["2015-03-31", "functions"]) => create_function(state, &body).await,
        (&Method::GET, ["2015-03-31", "functions"]) => list_functions(state, &q).await,
        (&Method::GET, ["2015-03-31", "functions", f]) => get_function(state, f, &q).await,
        (&Method::GET, ["2015-03-31", "functions", f, "configuration"]) => {
            let name = function_target(f, q.get("Qualifier"))?;
            let config = call(state, op::GET_FUNCTION, &json!({"FunctionName": name})).await?;
            Ok(raw_json(StatusCode::OK, config.get()))
        }
        (&Method::DELETE, ["2015-03-31", "functions", f]) => {
            let name = function_target(f, q.get("Qualifier"))?;
            call(state, op::DELETE_FUNCTION, &json!({"FunctionName": name})).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::PUT, ["2015-03-31", "functions", f, "code"]) => {
            update_function_code(state, f, &body).await
        }
        (&Method::PUT, ["2015-03-31", "functions", f, "configuration"]) => {
            update_function_configuration(state, f, &body).await
        }
        (&Method::PUT, ["2017-10-31", "functions", f, "concurrency"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields, rename_all = "PascalCase")]
            struct Put {
                reserved_concurrent_executions: u32,
            }
            let name = function_target(f, None)?;
            let put: Put = parse_body(&body)?;
            let r = call(
                state,
                op::PUT_FUNCTION_CONCURRENCY,
                &json!({"FunctionName": name, "ReservedConcurrentExecutions": put.reserved_concurrent_executions}),
            )
            .await?;
            Ok(raw_json(StatusCode::OK, r.get()))
        }
        (&Method::GET, ["2019-09-30", "functions", f, "concurrency"]) => {
            let name = function_target(f, None)?;
            let r = call(
                state,
                op::GET_FUNCTION_CONCURRENCY,
                &json!({"FunctionName": name}),
            )
            .await?;
            Ok(raw_json(StatusCode::OK, r.get()))
        }
        (&Method::DELETE, ["2017-10-31", "functions", f, "concurrency"]) => {
            let name = function_target(f, None)?;
            call(
                state,
                op::DELETE_FUNCTION_CONCURRENCY,
                &json!({"FunctionName": name}),
            )
            .await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (_, ["2019-09-30", "functions", f, "provisioned-concurrency"]) => {
            provisioned(state, m, f, &q, &body).await
        }
        (_, ["2019-09-25", "functions", f, "event-invoke-config"]) => {
            event_invoke_config(state, m, f, &q, &body).await
        }
        (&Method::GET, ["2019-09-25", "functions", f, "event-invoke-config", "list"]) => {
            list_event_invoke_configs(state, f).await
        }
        (&Method::GET, ["2016-08-19", "account-settings"]) => {
            let r = call(state, op::GET_ACCOUNT_SETTINGS, &json!({})).await?;
            Ok(raw_json(StatusCode::OK, r.get()))
        }
        (&Method::POST, ["2018-10-31", "layers", layer, "versions"]) => {
            publish_layer_version(state, layer, &body).await
        }
        (&Method::GET, ["2018-10-31", "layers"]) => {
            let mut params = json!({});
            if let Some(r) = q.get("CompatibleRuntime") {
                params["CompatibleRuntime"] = json!(r);
            }
            let r = call(state, op::LIST_LAYERS, &params).await?;
            Ok(raw_json(StatusCode::OK, r.get()))
        }
        (&Method::GET, ["2018-10-31", "layers", layer, "versions"]) => {
            let mut params = json!({"LayerName": layer});
            if let Some(r) = q.get("CompatibleRuntime") {
                params["CompatibleRuntime"] = json!(r);
            }
            let r = call(state, op::LIST_LAYER_VERSIONS, &params).await?;
            Ok(raw_json(StatusCode::OK, r.get()))
        }
        (&Method::GET, ["2018-10-31", "layers", layer, "versions", v]) => {
            let params = json!({"LayerName": layer, "VersionNumber": version_number(v)?});
            let r = call(state, op::GET_LAYER_VERSION, &params).await?;
            Ok(raw_json(StatusCode::OK, r.get()))
        }
        (&Method::DELETE, ["2018-10-31", "layers", layer, "versions", v]) => {
            let params = json!({"LayerName": layer, "VersionNumber": version_number(v)?});
            call(state, op::DELETE_LAYER_VERSION, &params).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::unknown_operation(m, path)),
    }
}

/// One request on the supervisor's socket; its error as an API error.
pub async fn call(
    state: &State,
    op: &str,
    params: &impl serde::Serialize,
) -> Result<Box<RawValue>, ApiError> {
    state
        .upstream
        .call(op, params)
        .await
        .map_err(ApiError::from)
}

// ---- function names -------------------------------------------------------

/// The function a `FunctionName` names, as Lambda takes it: `NAME`,
/// `NAME:QUALIFIER`, `ACCOUNT:function:NAME[:QUALIFIER]` or the full ARN.
/// lambdalet has no published versions or aliases: a qualifier other than
/// `$LATEST` names a function that does not exist.
pub fn function_target(raw: &str, qualifier: Option<&str>) -> Result<String, ApiError> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (account, name, derived) = match parts.as_slice() {
        [name] => (None, *name, None),
        [name, q] => (None, *name, Some(*q)),
        [acct, "function", name] => (Some(*acct), *name, None),
        [acct, "function", name, q] => (Some(*acct), *name, Some(*q)),
        ["arn", _, "lambda", _, acct, "function", name] => (Some(*acct), *name, None),
        ["arn", _, "lambda", _, acct, "function", name, q] => (Some(*acct), *name, Some(*q)),
        _ => {
            return Err(ApiError::invalid(format!(
                "FunctionName {raw:?} is not a function name, a partial ARN (ACCOUNT:function:NAME) or a function ARN ({ARN_PREFIX}:function:NAME)"
            )))
        }
    };
    if name.is_empty() {
        return Err(ApiError::invalid(format!(
            "FunctionName {raw:?} has no function name in it"
        )));
    }
    let qualifier = match (derived, qualifier) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid(format!(
                "The derived qualifier from the function name ({a}) does not match the specified qualifier ({b})"
            )))
        }
        (a, b) => a.or(b),
    };
    let foreign_account = account.is_some_and(|a| a != ACCOUNT_ID);
    match qualifier {
        _ if foreign_account => Err(ApiError::not_found(format!(
            "Function not found: {raw} (lambdalet's functions are in account {ACCOUNT_ID})"
        ))),
        Some(q) if q != "$LATEST" => Err(ApiError::not_found(format!(
            "Function not found: {ARN_PREFIX}:function:{name}:{q} (lambdalet has no published versions or aliases: leave the qualifier out or use $LATEST)"
        ))),
        _ => Ok(name.to_owned()),
    }
}

// ---- Invoke ---------------------------------------------------------------

/// The fields of the supervisor's Invoke answer, whichever type it was.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvokeAnswer {
    pub status_code: u16,
    #[serde(default)]
    pub function_error: Option<String>,
    #[serde(default)]
    pub log_result: Option<String>,
    #[serde(default)]
    pub executed_version: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
}

fn header<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>, ApiError> {
    match parts.headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::invalid(format!("the {name} header is not ASCII text"))),
    }
}

async fn invoke(
    state: &State,
    parts: &Parts,
    f: &str,
    q: &Query,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let name = function_target(f, q.get("Qualifier"))?;
    let invocation_type = match header(parts, "x-amz-invocation-type")? {
        None | Some("RequestResponse") => InvocationType::RequestResponse,
        Some("Event") => InvocationType::Event,
        Some("DryRun") => InvocationType::DryRun,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "X-Amz-Invocation-Type {other:?} is not one of RequestResponse, Event, DryRun"
            )))
        }
    };
    let log_type = match header(parts, "x-amz-log-type")? {
        None | Some("None") => LogType::None,
        Some("Tail") => LogType::Tail,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "X-Amz-Log-Type {other:?} is not one of None, Tail"
            )))
        }
    };
    let client_context = header(parts, "x-amz-client-context")?.map(str::to_owned);
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        RawValue::from_string("{}".to_owned()).expect("{} is JSON")
    } else {
        serde_json::from_slice::<Box<RawValue>>(&body).map_err(|e| {
            ApiError::bad_content(format!(
                "Could not parse request body into json: {e}; the payload must be a JSON value"
            ))
        })?
    };
    let params = protocol::Invoke {
        function_name: name,
        invocation_type,
        log_type,
        client_context,
        payload: Some(payload),
        idempotency_key: None,
    };
    let result = call(state, op::INVOKE, &params).await?;
    let answer: InvokeAnswer = serde_json::from_str(result.get()).map_err(|e| {
        ApiError::from(protocol::WireError::service(format!(
            "the supervisor's Invoke answer could not be read: {e}"
        )))
    })?;
    let mut resp = Response::builder().status(answer.status_code);
    if let Some(id) = &answer.request_id {
        resp = resp.header("x-amzn-RequestId", id.as_str());
    }
    if invocation_type != InvocationType::RequestResponse {
        return Ok(resp
            .body(Full::new(Bytes::new()))
            .expect("a valid response"));
    }
    if let Some(v) = &answer.executed_version {
        resp = resp.header("X-Amz-Executed-Version", v.as_str());
    }
    if let Some(e) = &answer.function_error {
        resp = resp.header("X-Amz-Function-Error", e.as_str());
    }
    if let Some(l) = &answer.log_result {
        resp = resp.header("X-Amz-Log-Result", l.as_str());
    }
    let payload = answer
        .payload
        .map(|p| p.get().to_owned())
        .unwrap_or_default();
    Ok(resp
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(payload)))
        .expect("a valid response"))
}

// ---- functions --------------------------------------------------------------

/// `Code` of CreateFunction and the body of UpdateFunctionCode: only
/// `ZipFile` is taken; the other sources are named so the refusal says why.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct CodeRequest {
    zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    s3_bucket: Option<String>,
    #[serde(rename = "S3Key")]
    s3_key: Option<String>,
    #[serde(rename = "S3ObjectVersion")]
    s3_object_version: Option<String>,
    image_uri: Option<String>,
    #[serde(rename = "SourceKMSKeyArn")]
    source_kms_key_arn: Option<String>,
}

impl CodeRequest {
    fn zip(self, what: &str) -> Result<FunctionCode, ApiError> {
        if self.s3_bucket.is_some() || self.s3_key.is_some() || self.s3_object_version.is_some() {
            return Err(ApiError::invalid(format!(
                "{what}: lambdalet has no S3: send the package inline as ZipFile (aws lambda … --zip-file fileb://function.zip)"
            )));
        }
        if self.image_uri.is_some() {
            return Err(ApiError::invalid(format!(
                "{what}: ImageUri names an image layout on the supervisor's host, which only root clients of its socket may do: over HTTP send a .zip package as ZipFile"
            )));
        }
        if self.source_kms_key_arn.is_some() {
            return Err(ApiError::invalid(format!(
                "{what}: SourceKMSKeyArn is not supported (lambdalet has no KMS)"
            )));
        }
        match self.zip_file {
            Some(z) => Ok(FunctionCode {
                zip_file: Some(z),
                // Never a host path from an HTTP caller (a directory, a zip
                // or an image layout on this host): see the module doc.
                path: None,
                image_uri: None,
            }),
            None => Err(ApiError::invalid(format!(
                "{what}: ZipFile is required (a .zip package, base64)"
            ))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct CreateFunctionRequest {
    function_name: String,
    runtime: Option<String>,
    handler: Option<String>,
    #[serde(default)]
    code: CodeRequest,
    memory_size: Option<u32>,
    timeout: Option<u32>,
    environment: Option<Environment>,
    ephemeral_storage: Option<EphemeralStorage>,
    description: Option<String>,
    layers: Option<Vec<String>>,
    package_type: Option<String>,
    architectures: Option<Vec<String>>,
    // Accepted and ignored (docs/http.md): an IAM role, tags, tracing and
    // publishing a version have no meaning on one host without IAM or versions.
    #[allow(dead_code)]
    role: Option<String>,
    #[allow(dead_code)]
    tags: Option<Value>,
    #[allow(dead_code)]
    tracing_config: Option<Value>,
    #[allow(dead_code)]
    publish: Option<bool>,
}

fn check_package(
    package_type: Option<&str>,
    architectures: Option<&[String]>,
) -> Result<(), ApiError> {
    if let Some(p) = package_type.filter(|p| *p != "Zip") {
        return Err(ApiError::invalid(format!(
            "PackageType {p:?} is not offered over HTTP: an image function's ImageUri is a path on the supervisor's host, for root clients of its socket (lambdalet create-function --image); over HTTP send a Zip package"
        )));
    }
    let host = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    };
    if let Some(a) = architectures
        .unwrap_or_default()
        .iter()
        .find(|a| *a != host)
    {
        return Err(ApiError::invalid(format!(
            "Architectures {a:?}: functions run on this host, which is {host}"
        )));
    }
    Ok(())
}

async fn create_function(state: &State, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let req: CreateFunctionRequest = parse_body(body)?;
    check_package(req.package_type.as_deref(), req.architectures.as_deref())?;
    let params = protocol::CreateFunction {
        function_name: function_target(&req.function_name, None)?,
        runtime: req.runtime.ok_or_else(|| {
            ApiError::invalid("Runtime is required (python3, nodejs or provided)")
        })?,
        handler: req
            .handler
            .ok_or_else(|| ApiError::invalid("Handler is required (e.g. app.handler)"))?,
        code: req.code.zip("Code")?,
        memory_size: req.memory_size,
        timeout: req.timeout,
        environment: req.environment,
        ephemeral_storage: req.ephemeral_storage,
        description: req.description,
        layers: req.layers,
        package_type: None,
        image_config: None,
    };
    let r = call(state, op::CREATE_FUNCTION, &params).await?;
    Ok(raw_json(StatusCode::CREATED, r.get()))
}

async fn get_function(state: &State, f: &str, q: &Query) -> Result<HttpResponse, ApiError> {
    let name = function_target(f, q.get("Qualifier"))?;
    let config = call(state, op::GET_FUNCTION, &json!({"FunctionName": name})).await?;
    let concurrency = call(
        state,
        op::GET_FUNCTION_CONCURRENCY,
        &json!({"FunctionName": name}),
    )
    .await?;
    // Lambda's GetFunction: the configuration, where the code is (nowhere to
    // download it from here), and the reserved concurrency when there is one.
    let has_reservation = concurrency.get().contains("ReservedConcurrentExecutions");
    let body = if has_reservation {
        format!(
            r#"{{"Configuration":{},"Concurrency":{}}}"#,
            config.get(),
            concurrency.get()
        )
    } else {
        format!(r#"{{"Configuration":{}}}"#, config.get())
    };
    Ok(raw_json(StatusCode::OK, &body))
}

async fn list_functions(state: &State, q: &Query) -> Result<HttpResponse, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Listed {
        functions: Vec<Box<RawValue>>,
    }
    let max = match q.get("MaxItems") {
        None => DEFAULT_PAGE,
        Some(m) => m
            .parse::<usize>()
            .ok()
            .filter(|m| (1..=10_000).contains(m))
            .ok_or_else(|| ApiError::invalid(format!("MaxItems {m:?} must be 1–10000")))?,
    };
    let start = match q.get("Marker") {
        None => 0,
        Some(m) => m.parse::<usize>().map_err(|_| {
            ApiError::invalid(format!(
                "Marker {m:?} is not a marker this API gave (pass NextMarker back as it came)"
            ))
        })?,
    };
    let r = call(state, op::LIST_FUNCTIONS, &json!({})).await?;
    let listed: Listed = serde_json::from_str(r.get()).map_err(|e| {
        ApiError::from(protocol::WireError::service(format!(
            "the supervisor's ListFunctions answer could not be read: {e}"
        )))
    })?;
    let total = listed.functions.len();
    let page: Vec<&str> = listed
        .functions
        .iter()
        .skip(start)
        .take(max)
        .map(|f| f.get())
        .collect();
    let end = start.saturating_add(max);
    let next = if end < total {
        format!(r#","NextMarker":"{end}""#)
    } else {
        String::new()
    };
    Ok(raw_json(
        StatusCode::OK,
        &format!(r#"{{"Functions":[{}]{next}}}"#, page.join(",")),
    ))
}

/// Lambda's optimistic lock: an update that names a RevisionId applies only
/// to that revision.
async fn check_revision(state: &State, name: &str, revision: Option<&str>) -> Result<(), ApiError> {
    let Some(want) = revision else { return Ok(()) };
    let config = call(state, op::GET_FUNCTION, &json!({"FunctionName": name})).await?;
    let config: Value = serde_json::from_str(config.get()).unwrap_or_default();
    let have = config["RevisionId"].as_str().unwrap_or_default();
    if have != want {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailedException",
            format!(
                "The Revision Id provided does not match the latest Revision Id ({have}): call GetFunction again and retry with the revision it gives"
            ),
        ));
    }
    Ok(())
}

async fn update_function_code(
    state: &State,
    f: &str,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "PascalCase")]
    struct Req {
        zip_file: Option<String>,
        #[serde(rename = "S3Bucket")]
        s3_bucket: Option<String>,
        #[serde(rename = "S3Key")]
        s3_key: Option<String>,
        #[serde(rename = "S3ObjectVersion")]
        s3_object_version: Option<String>,
        image_uri: Option<String>,
        #[serde(rename = "SourceKMSKeyArn")]
        source_kms_key_arn: Option<String>,
        revision_id: Option<String>,
        architectures: Option<Vec<String>>,
        dry_run: Option<bool>,
        #[allow(dead_code)]
        publish: Option<bool>,
    }
    let req: Req = parse_body(body)?;
    let name = function_target(f, None)?;
    check_package(None, req.architectures.as_deref())?;
    let code = CodeRequest {
        zip_file: req.zip_file,
        s3_bucket: req.s3_bucket,
        s3_key: req.s3_key,
        s3_object_version: req.s3_object_version,
        image_uri: req.image_uri,
        source_kms_key_arn: req.source_kms_key_arn,
    }
    .zip("UpdateFunctionCode")?;
    if req.dry_run == Some(true) {
        return Err(ApiError::invalid(
            "DryRun is not supported by UpdateFunctionCode here: leave it out",
        ));
    }
    check_revision(state, &name, req.revision_id.as_deref()).await?;
    let params = protocol::UpdateFunctionCode {
        function_name: name,
        code,
    };
    let r = call(state, op::UPDATE_FUNCTION_CODE, &params).await?;
    Ok(raw_json(StatusCode::OK, r.get()))
}

async fn update_function_configuration(
    state: &State,
    f: &str,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "PascalCase")]
    struct Req {
        runtime: Option<String>,
        handler: Option<String>,
        memory_size: Option<u32>,
        timeout: Option<u32>,
        environment: Option<Environment>,
        ephemeral_storage: Option<EphemeralStorage>,
        description: Option<String>,
        layers: Option<Vec<String>>,
        image_config: Option<protocol::ImageConfig>,
        revision_id: Option<String>,
        #[allow(dead_code)]
        role: Option<String>,
        #[allow(dead_code)]
        tracing_config: Option<Value>,
    }
    let req: Req = parse_body(body)?;
    let name = function_target(f, None)?;
    check_revision(state, &name, req.revision_id.as_deref()).await?;
    let params = protocol::UpdateFunctionConfiguration {
        function_name: name,
        runtime: req.runtime,
        handler: req.handler,
        memory_size: req.memory_size,
        timeout: req.timeout,
        environment: req.environment,
        ephemeral_storage: req.ephemeral_storage,
        description: req.description,
        layers: req.layers,
        image_config: req.image_config,
    };
    let r = call(state, op::UPDATE_FUNCTION_CONFIGURATION, &params).await?;
    Ok(raw_json(StatusCode::OK, r.get()))
}

async fn provisioned(
    state: &State,
    m: &Method,
    f: &str,
    q: &Query,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    // The qualifier is checked by the supervisor: $LATEST or none.
    let name = function_target(f, None)?;
    let mut params = json!({"FunctionName": name});
    if let Some(qualifier) = q.get("Qualifier") {
        params["Qualifier"] = json!(qualifier);
    }
    match *m {
        Method::PUT => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields, rename_all = "PascalCase")]
            struct Put {
                provisioned_concurrent_executions: u32,
            }
            let put: Put = parse_body(body)?;
            params["ProvisionedConcurrentExecutions"] =
                json!(put.provisioned_concurrent_executions);
            let r = call(state, op::PUT_PROVISIONED_CONCURRENCY_CONFIG, &params).await?;
            Ok(raw_json(StatusCode::ACCEPTED, r.get()))
        }
        Method::GET if q.get("List") == Some("ALL") => {
            // ListProvisionedConcurrencyConfigs: at most the one of $LATEST.
            let r = state
                .upstream
                .call(op::GET_PROVISIONED_CONCURRENCY_CONFIG, &params)
                .await;
            let configs = match r {
                Ok(c) => {
                    let mut c: Value = serde_json::from_str(c.get()).unwrap_or_default();
                    c["FunctionArn"] = json!(format!("{ARN_PREFIX}:function:{name}:$LATEST"));
                    vec![c]
                }
                Err(e)
                    if e.kind
                        == protocol::ErrorKind::ProvisionedConcurrencyConfigNotFoundException =>
                {
                    vec![]
                }
                Err(e) => return Err(e.into()),
            };
            Ok(raw_json(
                StatusCode::OK,
                &json!({"ProvisionedConcurrencyConfigs": configs}).to_string(),
            ))
        }
        Method::GET => {
            let r = call(state, op::GET_PROVISIONED_CONCURRENCY_CONFIG, &params).await?;
            Ok(raw_json(StatusCode::OK, r.get()))
        }
        Method::DELETE => {
            call(state, op::DELETE_PROVISIONED_CONCURRENCY_CONFIG, &params).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::unknown_operation(
            m,
            &format!("/2019-09-30/functions/{f}/provisioned-concurrency"),
        )),
    }
}

// ---- asynchronous invocation configuration ----------------------------------

/// Put (PUT), Update (POST), Get and Delete FunctionEventInvokeConfig.
/// Destinations are functions only: a directory destination is written by
/// the supervisor as root, so it is for root clients of the socket.
async fn event_invoke_config(
    state: &State,
    m: &Method,
    f: &str,
    q: &Query,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "PascalCase")]
    struct Req {
        maximum_retry_attempts: Option<u32>,
        maximum_event_age_in_seconds: Option<u32>,
        destination_config: Option<protocol::DestinationConfig>,
    }
    let name = function_target(f, None)?;
    let qualifier = q.get("Qualifier").map(str::to_owned);
    let op = match *m {
        Method::PUT => op::PUT_FUNCTION_EVENT_INVOKE_CONFIG,
        Method::POST => op::UPDATE_FUNCTION_EVENT_INVOKE_CONFIG,
        Method::GET | Method::DELETE => {
            let params = protocol::FunctionQualifier {
                function_name: name,
                qualifier,
            };
            return if *m == Method::GET {
                let r = call(state, op::GET_FUNCTION_EVENT_INVOKE_CONFIG, &params).await?;
                Ok(raw_json(StatusCode::OK, r.get()))
            } else {
                call(state, op::DELETE_FUNCTION_EVENT_INVOKE_CONFIG, &params).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            };
        }
        _ => {
            return Err(ApiError::unknown_operation(
                m,
                &format!("/2019-09-25/functions/{f}/event-invoke-config"),
            ))
        }
    };
    let req: Req = parse_body(body)?;
    if let Some(d) = &req.destination_config {
        for dest in [&d.on_success, &d.on_failure].into_iter().flatten() {
            if dest.destination.starts_with('/') {
                return Err(ApiError::invalid(format!(
                    "Destination {:?} is a directory on the supervisor's host, which only root clients of its socket may name (lambdalet put-function-event-invoke-config); over HTTP name a function by its ARN",
                    dest.destination
                )));
            }
        }
    }
    let params = protocol::PutFunctionEventInvokeConfig {
        function_name: name,
        qualifier,
        maximum_retry_attempts: req.maximum_retry_attempts,
        maximum_event_age_in_seconds: req.maximum_event_age_in_seconds,
        destination_config: req.destination_config,
    };
    let r = call(state, op, &params).await?;
    Ok(raw_json(StatusCode::OK, r.get()))
}

/// ListFunctionEventInvokeConfigs: at most the one of `$LATEST`.
async fn list_event_invoke_configs(state: &State, f: &str) -> Result<HttpResponse, ApiError> {
    let name = function_target(f, None)?;
    // A function that does not exist is an error; one without a
    // configuration has an empty list.
    call(state, op::GET_FUNCTION, &json!({"FunctionName": name})).await?;
    let configs = match state
        .upstream
        .call(
            op::GET_FUNCTION_EVENT_INVOKE_CONFIG,
            &json!({"FunctionName": name}),
        )
        .await
    {
        Ok(c) => format!("[{}]", c.get()),
        Err(e) if e.kind == protocol::ErrorKind::ResourceNotFoundException => "[]".to_owned(),
        Err(e) => return Err(e.into()),
    };
    Ok(raw_json(
        StatusCode::OK,
        &format!(r#"{{"FunctionEventInvokeConfigs":{configs}}}"#),
    ))
}

// ---- layers -----------------------------------------------------------------

async fn publish_layer_version(
    state: &State,
    layer: &str,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "PascalCase")]
    struct Req {
        #[serde(default)]
        content: CodeRequest,
        description: Option<String>,
        compatible_runtimes: Option<Vec<String>>,
        compatible_architectures: Option<Vec<String>>,
        #[allow(dead_code)]
        license_info: Option<String>,
    }
    let req: Req = parse_body(body)?;
    check_package(None, req.compatible_architectures.as_deref())?;
    let content = req.content.zip("Content")?;
    let mut params = json!({"LayerName": layer, "Content": content});
    if let Some(d) = req.description {
        params["Description"] = json!(d);
    }
    if let Some(r) = req.compatible_runtimes {
        params["CompatibleRuntimes"] = json!(r);
    }
    let r = call(state, op::PUBLISH_LAYER_VERSION, &params).await?;
    Ok(raw_json(StatusCode::CREATED, r.get()))
}

fn version_number(v: &str) -> Result<u64, ApiError> {
    v.parse()
        .map_err(|_| ApiError::invalid(format!("VersionNumber {v:?} must be a whole number")))
}

// ---- bodies ---------------------------------------------------------------

/// A JSON request body (empty means `{}`). Bad JSON is
/// InvalidRequestContentException; JSON of the wrong shape (an unknown or
/// mistyped field) InvalidParameterValueException, as the socket answers.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(format!("invalid request: {e}")),
        _ => ApiError::bad_content(format!("the request body is not JSON: {e}")),
    })
}

pub fn raw_json(status: StatusCode, body: &str) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid response")
}

pub fn empty(status: StatusCode) -> HttpResponse {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_arns_and_qualifiers() {
        assert_eq!(function_target("hello", None).unwrap(), "hello");
        assert_eq!(function_target("hello:$LATEST", None).unwrap(), "hello");
        assert_eq!(
            function_target("000000000000:function:hello", Some("$LATEST")).unwrap(),
            "hello"
        );
        assert_eq!(
            function_target("arn:aws:lambda:us-east-1:000000000000:function:hello", None).unwrap(),
            "hello"
        );
        let e = function_target("hello:prod", None).unwrap_err();
        assert_eq!(e.kind, "ResourceNotFoundException");
        assert!(e.message.contains("hello:prod"), "{}", e.message);
        let e = function_target("hello", Some("1")).unwrap_err();
        assert_eq!(e.status, 404);
        let e = function_target("hello:$LATEST", Some("prod")).unwrap_err();
        assert_eq!(e.kind, "InvalidParameterValueException");
        let e = function_target("123456789012:function:hello", None).unwrap_err();
        assert_eq!(e.kind, "ResourceNotFoundException");
        let e = function_target("a:b:c", None).unwrap_err();
        assert_eq!(e.kind, "InvalidParameterValueException");
    }

    #[test]
    fn code_is_zip_only() {
        let c: CodeRequest = parse_body(br#"{"ZipFile":"UEsFBg=="}"#).unwrap();
        let code = c.zip("Code").unwrap();
        assert!(code.path.is_none());
        // A host path is no field of the HTTP API at all.
        let e = parse_body::<CodeRequest>(br#"{"Path":"/etc"}"#)
            .err()
            .unwrap();
        assert_eq!(e.kind, "InvalidParameterValueException");
        let c: CodeRequest = parse_body(br#"{"S3Bucket":"b","S3Key":"k"}"#).unwrap();
        assert!(c.zip("Code").unwrap_err().message.contains("no S3"));
        let e = parse_body::<CodeRequest>(b"{nope").err().unwrap();
        assert_eq!(e.kind, "InvalidRequestContentException");
    }
}
