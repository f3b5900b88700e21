//! The wire protocol: one JSON object per line in each direction on the
//! supervisor's Unix socket (docs/protocol.md shows every message).
//!
//! Request:  `{"id": <any JSON>, "op": "Invoke", "params": {...}}`
//! Success:  `{"id": <same>, "result": {...}}`
//! Failure:  `{"id": <same>, "error": {"type": "ResourceNotFoundException", "message": "..."}}`
//!
//! Operation names and parameter shapes mirror the AWS Lambda API (PascalCase),
//! so a client that knows Lambda knows this protocol.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The largest request line the supervisor accepts: a 50 MB zip as base64 plus
/// framing. Invoke payloads have their own, smaller limit.
pub const MAX_LINE_BYTES: usize = 72 * 1024 * 1024;
/// Synchronous invoke request and response payloads: Lambda's own figure, 6,291,556 bytes.
pub const MAX_SYNC_PAYLOAD_BYTES: usize = 6_291_556;
/// Asynchronous (`Event`) invoke payloads: Lambda's current limit, 1 MB.
pub const MAX_ASYNC_PAYLOAD_BYTES: usize = 1_048_576;
/// The longest idempotency key an `Event` invoke may carry.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// The closed set of error kinds on the wire, named like Lambda's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    ResourceNotFoundException,
    ResourceConflictException,
    InvalidParameterValueException,
    InvalidRequestContentException,
    RequestTooLargeException,
    TooManyRequestsException,
    ProvisionedConcurrencyConfigNotFoundException,
    ServiceException,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ResourceNotFoundException => "ResourceNotFoundException",
            ErrorKind::ResourceConflictException => "ResourceConflictException",
            ErrorKind::InvalidParameterValueException => "InvalidParameterValueException",
            ErrorKind::InvalidRequestContentException => "InvalidRequestContentException",
            ErrorKind::RequestTooLargeException => "RequestTooLargeException",
            ErrorKind::TooManyRequestsException => "TooManyRequestsException",
            ErrorKind::ProvisionedConcurrencyConfigNotFoundException => {
                "ProvisionedConcurrencyConfigNotFoundException"
            }
            ErrorKind::ServiceException => "ServiceException",
        }
    }
}

/// An error as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct WireError {
    #[serde(rename = "type")]
    pub kind: ErrorKind,
    pub message: String,
    /// Lambda's reason code for throttles (e.g. ConcurrentInvocationLimitExceeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl WireError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
            reason: None,
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceNotFoundException, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParameterValueException, message)
    }
    pub fn service(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ServiceException, message)
    }
}

/// The envelope of a request line. `params` stays raw until the op is known,
/// so a large invoke payload is parsed once, into a `RawValue`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLine<'a> {
    #[serde(default)]
    pub id: serde_json::Value,
    pub op: String,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
}

/// A request the client sends (serialised form of `RequestLine`).
#[derive(Debug, Serialize)]
pub struct OutgoingRequest<'a, P: Serialize> {
    pub id: serde_json::Value,
    pub op: &'a str,
    pub params: P,
}

/// A response line, as a client reads it.
#[derive(Debug, Deserialize, Serialize)]
pub struct ResponseLine {
    #[serde(default)]
    pub id: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

/// Operations. Each variant's parameters are the struct of the same name.
pub mod op {
    pub const CREATE_FUNCTION: &str = "CreateFunction";
    pub const UPDATE_FUNCTION_CODE: &str = "UpdateFunctionCode";
    pub const UPDATE_FUNCTION_CONFIGURATION: &str = "UpdateFunctionConfiguration";
    pub const GET_FUNCTION: &str = "GetFunction";
    pub const LIST_FUNCTIONS: &str = "ListFunctions";
    pub const DELETE_FUNCTION: &str = "DeleteFunction";
    pub const INVOKE: &str = "Invoke";
    pub const GET_LOGS: &str = "GetLogs";
    pub const PUT_FUNCTION_CONCURRENCY: &str = "PutFunctionConcurrency";
    pub const GET_FUNCTION_CONCURRENCY: &str = "GetFunctionConcurrency";
    pub const DELETE_FUNCTION_CONCURRENCY: &str = "DeleteFunctionConcurrency";
    pub const PUT_PROVISIONED_CONCURRENCY_CONFIG: &str = "PutProvisionedConcurrencyConfig";
    pub const GET_PROVISIONED_CONCURRENCY_CONFIG: &str = "GetProvisionedConcurrencyConfig";
    pub const DELETE_PROVISIONED_CONCURRENCY_CONFIG: &str = "DeleteProvisionedConcurrencyConfig";
    pub const GET_ACCOUNT_SETTINGS: &str = "GetAccountSettings";
    pub const GET_METRICS: &str = "GetMetrics";
    pub const PUT_FUNCTION_EVENT_INVOKE_CONFIG: &str = "PutFunctionEventInvokeConfig";
    pub const UPDATE_FUNCTION_EVENT_INVOKE_CONFIG: &str = "UpdateFunctionEventInvokeConfig";
    pub const GET_FUNCTION_EVENT_INVOKE_CONFIG: &str = "GetFunctionEventInvokeConfig";
    pub const DELETE_FUNCTION_EVENT_INVOKE_CONFIG: &str = "DeleteFunctionEventInvokeConfig";
    pub const GET_EVENT_QUEUE: &str = "GetEventQueue";
    pub const PUBLISH_LAYER_VERSION: &str = "PublishLayerVersion";
    pub const LIST_LAYERS: &str = "ListLayers";
    pub const LIST_LAYER_VERSIONS: &str = "ListLayerVersions";
    pub const GET_LAYER_VERSION: &str = "GetLayerVersion";
    pub const DELETE_LAYER_VERSION: &str = "DeleteLayerVersion";
    pub const ALL: &[&str] = &[
        CREATE_FUNCTION,
        UPDATE_FUNCTION_CODE,
        UPDATE_FUNCTION_CONFIGURATION,
        GET_FUNCTION,
        LIST_FUNCTIONS,
        DELETE_FUNCTION,
        INVOKE,
        GET_LOGS,
        PUT_FUNCTION_CONCURRENCY,
        GET_FUNCTION_CONCURRENCY,
        DELETE_FUNCTION_CONCURRENCY,
        PUT_PROVISIONED_CONCURRENCY_CONFIG,
        GET_PROVISIONED_CONCURRENCY_CONFIG,
        DELETE_PROVISIONED_CONCURRENCY_CONFIG,
        GET_ACCOUNT_SETTINGS,
        GET_METRICS,
        PUT_FUNCTION_EVENT_INVOKE_CONFIG,
        UPDATE_FUNCTION_EVENT_INVOKE_CONFIG,
        GET_FUNCTION_EVENT_INVOKE_CONFIG,
        DELETE_FUNCTION_EVENT_INVOKE_CONFIG,
        GET_EVENT_QUEUE,
        PUBLISH_LAYER_VERSION,
        LIST_LAYERS,
        LIST_LAYER_VERSIONS,
        GET_LAYER_VERSION,
        DELETE_LAYER_VERSION,
    ];
}

/// Where a function's code comes from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionCode {
    /// A .zip archive, base64-encoded (as in Lambda's API).
    #[serde(rename = "ZipFile", default, skip_serializing_if = "Option::is_none")]
    pub zip_file: Option<String>,
    /// An absolute path on the supervisor's host: a directory or a .zip file.
    #[serde(rename = "Path", default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A container image (PackageType Image): the absolute path of an OCI
    /// image layout on the supervisor's host, optionally `:TAG`
    /// (registry/image.rs, ImageRef::parse).
    #[serde(rename = "ImageUri", default, skip_serializing_if = "Option::is_none")]
    pub image_uri: Option<String>,
}

/// `PackageType` of a function: a .zip package or directory, or a container image.
pub const PACKAGE_ZIP: &str = "Zip";
pub const PACKAGE_IMAGE: &str = "Image";

/// Lambda's ImageConfig: overrides of the image's own settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ImageConfig {
    /// Replaces the image's Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's WorkingDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
}

/// FunctionConfiguration's ImageConfigResponse.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfigResponse {
    pub image_config: ImageConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    #[serde(rename = "Variables", default)]
    pub variables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EphemeralStorage {
    #[serde(rename = "Size")]
    pub size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CreateFunction {
    pub function_name: String,
    /// Required for a Zip package; none for an image.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub handler: String,
    pub code: FunctionCode,
    /// `Zip` (the default) or `Image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_type: Option<String>,
    /// An image's overrides of its Entrypoint, Cmd and WorkingDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<ImageConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<EphemeralStorage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Up to 5 layer version ARNs, merged under /opt in this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct UpdateFunctionCode {
    pub function_name: String,
    #[serde(flatten)]
    pub code: FunctionCode,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct UpdateFunctionConfiguration {
    pub function_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<EphemeralStorage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Replaces the whole list of layers (`[]` removes them all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
    /// An image function's ImageConfig, replaced whole (`{}` clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<ImageConfig>,
}

/// Parameters of GetFunction and DeleteFunction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct FunctionName {
    pub function_name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct NoParams {}

/// ListFunctions, GetAccountSettings and GetMetrics take no parameters.
pub type ListFunctions = NoParams;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvocationType {
    /// Run now and answer with the result.
    #[default]
    RequestResponse,
    /// Queue durably, answer 202 at once, run later with retries.
    Event,
    /// Check the request (function, payload, permissions) without running it.
    DryRun,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogType {
    #[default]
    None,
    Tail,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Invoke {
    pub function_name: String,
    #[serde(default)]
    pub invocation_type: InvocationType,
    #[serde(default)]
    pub log_type: LogType,
    /// Base64 of a JSON object, as in Lambda's X-Amz-Client-Context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_context: Option<String>,
    /// The event: any JSON value (default `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// `Event` only: a caller's key (1-256 bytes). A second event with the
    /// same key for the same function within the supervisor's idempotency
    /// window is not queued again; it is answered with the first one's
    /// request id and `Duplicate: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The answer to an `Event` invoke (202: the event is stored durably) or a
/// `DryRun` (204: the request is valid; nothing ran).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct InvokeAccepted {
    pub status_code: u16,
    /// The event's request id (absent for DryRun).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// True when the idempotency key matched an event accepted before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// The result of a synchronous invoke, shaped like Lambda's Invoke response.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvokeResult {
    pub status_code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_result: Option<String>,
    pub executed_version: String,
    pub request_id: String,
    pub payload: Box<RawValue>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct GetLogs {
    pub function_name: String,
    /// Return at most this many of the newest lines (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LogLines {
    pub lines: Vec<String>,
}

/// A function as GetFunction / ListFunctions / Create* / Update* return it,
/// in the shape of Lambda's FunctionConfiguration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionConfiguration {
    pub function_name: String,
    pub function_arn: String,
    /// Absent for an image, as on Lambda.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub handler: String,
    /// `Zip` or `Image`.
    #[serde(default)]
    pub package_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config_response: Option<ImageConfigResponse>,
    pub memory_size: u32,
    pub timeout: u32,
    pub environment: Environment,
    pub ephemeral_storage: EphemeralStorage,
    pub description: String,
    pub code_size: u64,
    pub code_sha256: String,
    pub last_modified: String,
    pub version: String,
    pub revision_id: String,
    pub state: String,
    /// The function's layers, in order; absent when it has none (as on Lambda).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<FunctionLayer>,
}

/// A layer of a function, as FunctionConfiguration lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionLayer {
    /// The layer version's ARN.
    pub arn: String,
    /// The size of the layer's archive in bytes.
    pub code_size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionList {
    pub functions: Vec<FunctionConfiguration>,
}

/// PutFunctionConcurrency.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct PutFunctionConcurrency {
    pub function_name: String,
    pub reserved_concurrent_executions: u32,
}

/// The result of PutFunctionConcurrency and GetFunctionConcurrency (absent
/// when the function has no reserved concurrency).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionConcurrency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_concurrent_executions: Option<u32>,
}

/// PutProvisionedConcurrencyConfig. Lambda requires a published version or
/// an alias as Qualifier; lambdalet has only `$LATEST`, which is the default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct PutProvisionedConcurrencyConfig {
    pub function_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualifier: Option<String>,
    pub provisioned_concurrent_executions: u32,
}

/// GetProvisionedConcurrencyConfig and DeleteProvisionedConcurrencyConfig.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct FunctionQualifier {
    pub function_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualifier: Option<String>,
}

/// Lambda's provisioned-concurrency status: allocated environments exist
/// (some may still be initialising), available ones have run their init.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ProvisionedConcurrencyConfig {
    pub requested_provisioned_concurrent_executions: u32,
    pub allocated_provisioned_concurrent_executions: u32,
    pub available_provisioned_concurrent_executions: u32,
    /// IN_PROGRESS, READY or FAILED.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub last_modified: String,
}

/// GetAccountSettings (the parts lambdalet has).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AccountSettings {
    pub account_limit: AccountLimit,
    pub account_usage: AccountUsage,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AccountLimit {
    pub concurrent_executions: u32,
    pub unreserved_concurrent_executions: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AccountUsage {
    pub function_count: u32,
}

/// A destination of asynchronous invocation records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct OnDestination {
    /// A function's ARN (or name), or an absolute path to a directory on the
    /// supervisor's host that receives one JSON file per record (root
    /// clients only).
    pub destination: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct DestinationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<OnDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnDestination>,
}

/// PutFunctionEventInvokeConfig (replaces the whole configuration; absent
/// fields take their defaults) and UpdateFunctionEventInvokeConfig (changes
/// only the fields given).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct PutFunctionEventInvokeConfig {
    pub function_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualifier: Option<String>,
    /// 0-2 (default 2): retries after a function error or timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_retry_attempts: Option<u32>,
    /// 60-21600 (default 21600): older events are not run any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_event_age_in_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_config: Option<DestinationConfig>,
}

/// A function's asynchronous invocation configuration, as Lambda shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionEventInvokeConfig {
    /// Unix seconds, as Lambda's API has it.
    pub last_modified: f64,
    pub function_arn: String,
    pub maximum_retry_attempts: u32,
    pub maximum_event_age_in_seconds: u32,
    pub destination_config: DestinationConfig,
}

/// GetEventQueue: a function's asynchronous queue now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct EventQueue {
    pub function_name: String,
    /// Accepted events not finished yet: ready + in flight + retrying.
    pub depth: u64,
    /// Waiting for a concurrency slot or an environment.
    pub ready: u64,
    /// Running in an environment now.
    pub in_flight: u64,
    /// Waiting out a retry delay (after a function error, a throttle or a
    /// supervisor-side error).
    pub retrying: u64,
    /// Age of the oldest unfinished event, in seconds (0 when empty).
    pub oldest_age_seconds: f64,
}

/// PublishLayerVersion. `Content` is a `FunctionCode`: exactly one of
/// `ZipFile` and `Path` (root clients only, as for CreateFunction).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct PublishLayerVersion {
    pub layer_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub content: FunctionCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatible_runtimes: Option<Vec<String>>,
}

/// ListLayerVersions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct LayerName {
    pub layer_name: String,
    /// Only the versions that list this runtime in CompatibleRuntimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatible_runtime: Option<String>,
}

/// ListLayers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ListLayers {
    /// Only layers with a version that lists this runtime; their
    /// LatestMatchingVersion is the latest such version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatible_runtime: Option<String>,
}

/// GetLayerVersion and DeleteLayerVersion.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct LayerVersionNumber {
    pub layer_name: String,
    pub version_number: u64,
}

/// A layer version's content, as Lambda describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct LayerVersionContent {
    pub code_sha256: String,
    pub code_size: u64,
}

/// A layer version: the answer of PublishLayerVersion and GetLayerVersion, an
/// item of ListLayerVersions (Lambda's GetLayerVersion shape).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct LayerVersion {
    pub layer_arn: String,
    pub layer_version_arn: String,
    pub version: u64,
    pub description: String,
    pub created_date: String,
    pub content: LayerVersionContent,
    pub compatible_runtimes: Vec<String>,
}

/// A layer version as ListLayerVersions and ListLayers show it (Lambda's
/// LayerVersionsListItem: no content).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct LayerVersionsListItem {
    pub layer_version_arn: String,
    pub version: u64,
    pub description: String,
    pub created_date: String,
    pub compatible_runtimes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct LayerVersionList {
    /// Newest first, as on Lambda.
    pub layer_versions: Vec<LayerVersionsListItem>,
}

/// An item of ListLayers: a layer and its latest version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct LayerSummary {
    pub layer_name: String,
    pub layer_arn: String,
    pub latest_matching_version: LayerVersionsListItem,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct LayerList {
    pub layers: Vec<LayerSummary>,
}

/// Serialise a success line (without the trailing newline).
pub fn success_line(id: &serde_json::Value, result: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct Ok<'a, R: Serialize> {
        id: &'a serde_json::Value,
        result: &'a R,
    }
    serde_json::to_string(&Ok { id, result }).expect("a response always serialises")
}

/// Serialise an error line (without the trailing newline).
pub fn error_line(id: &serde_json::Value, error: &WireError) -> String {
    #[derive(Serialize)]
    struct Err<'a> {
        id: &'a serde_json::Value,
        error: &'a WireError,
    }
    serde_json::to_string(&Err { id, error }).expect("an error always serialises")
}
