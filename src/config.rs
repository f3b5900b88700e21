//! Function settings: Lambda's limits and defaults as named constants, and the
//! validated [`FunctionSpec`] that everything downstream (registry, sandbox plan,
//! scheduler) takes as input.
//!
//! Validation happens once, here, before anything touches the disk or the kernel:
//! a `FunctionSpec` is only built by [`FunctionSpec::from_create`],
//! [`FunctionSpec::updated`] or [`FunctionSpec::validated`], so code holding one
//! may rely on every field being in range.
//!
//! The ranges are Lambda's own (CreateFunction API reference,
//! https://docs.aws.amazon.com/lambda/latest/api/API_CreateFunction.html).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::protocol::{CreateFunction, UpdateFunctionConfiguration, WireError};

pub mod image;
pub use image::ImageSpec;

/// The region every ARN names: one host is one "region".
pub const REGION: &str = "us-east-1";
/// The account every ARN names (Lambda's documentation placeholder account).
pub const ACCOUNT_ID: &str = "000000000000";
/// The only version this host serves (no PublishVersion yet).
pub const LATEST_VERSION: &str = "$LATEST";

/// MemorySize in MB, 1 MB steps.
pub const MEMORY_MB: RangeInclusive<u32> = 128..=10240;
pub const DEFAULT_MEMORY_MB: u32 = 128;
/// Timeout in seconds.
pub const TIMEOUT_S: RangeInclusive<u32> = 1..=900;
pub const DEFAULT_TIMEOUT_S: u32 = 3;
/// EphemeralStorage.Size (/tmp) in MB.
pub const EPHEMERAL_MB: RangeInclusive<u32> = 512..=10240;
pub const DEFAULT_EPHEMERAL_MB: u32 = 512;
/// Total size of the environment variables. Lambda documents "4 KB" for the
/// serialised map without saying how it counts; we count the sum of
/// `key.len() + value.len()` in bytes (UTF-8), which is what a user can predict.
pub const ENVIRONMENT_MAX_BYTES: usize = 4096;
/// Description: 0–256 characters.
pub const DESCRIPTION_MAX_CHARS: usize = 256;
/// FunctionName: `[A-Za-z0-9_-]{1,64}`.
pub const FUNCTION_NAME_MAX_CHARS: usize = 64;
/// Handler: Lambda's pattern is `[^\s]+`, at most 128 characters.
pub const HANDLER_MAX_CHARS: usize = 128;

/// Layers a function may name (Lambda's limit).
pub const MAX_LAYERS: usize = 5;
/// LayerName: `[A-Za-z0-9_-]{1,140}` (Lambda's pattern and length).
pub const LAYER_NAME_MAX_CHARS: usize = 140;
/// CompatibleRuntimes: at most 15 entries (Lambda's limit).
pub const MAX_COMPATIBLE_RUNTIMES: usize = 15;

/// 1769 MB of memory buys one full vCPU (Lambda's published ratio).
pub const MB_PER_VCPU: u64 = 1769;
/// No function gets more than 6 vCPUs (at 10240 MB it gets 5.79).
pub const MAX_CPU_MILLIS: u64 = 6000;

/// Environment variables the runtime sets itself; Lambda refuses them in a
/// function's configuration ("Defined runtime environment variables",
/// https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html).
///
/// `TZ` is listed there as reserved too, but Lambda's API accepts it and the
/// runtime honours it (a common way to set a function's time zone), so it is
/// allowed here as well.
pub const RESERVED_ENVIRONMENT_KEYS: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_DEFAULT_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_REGION",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "LAMBDA_RUNTIME_DIR",
    "LAMBDA_TASK_ROOT",
];

/// A configuration value that Lambda would refuse. Every message names the
/// field as Lambda's API spells it and says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "FunctionName {value:?} is invalid: it must be 1–{max} characters of A–Z, a–z, 0–9, '-' and '_' \
         (or this host's ARN arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:NAME)",
        max = FUNCTION_NAME_MAX_CHARS
    )]
    FunctionName { value: String },
    #[error("Runtime {value:?} is not supported: it must be one of {allowed}", allowed = Runtime::allowed_list())]
    Runtime { value: String },
    #[error("Handler {value:?} is invalid: {reason}")]
    Handler { value: String, reason: &'static str },
    #[error(
        "MemorySize {value} is out of range: it must be {}–{} MB",
        MEMORY_MB.start(),
        MEMORY_MB.end()
    )]
    MemorySize { value: u32 },
    #[error(
        "Timeout {value} is out of range: it must be {}–{} seconds",
        TIMEOUT_S.start(),
        TIMEOUT_S.end()
    )]
    Timeout { value: u32 },
    #[error(
        "EphemeralStorage Size {value} is out of range: it must be {}–{} MB",
        EPHEMERAL_MB.start(),
        EPHEMERAL_MB.end()
    )]
    EphemeralStorage { value: u32 },
    #[error(
        "Environment variable name {key:?} is invalid: it must start with a letter and contain only \
         letters, digits and '_' ([a-zA-Z][a-zA-Z0-9_]*)"
    )]
    EnvironmentKey { key: String },
    #[error(
        "Lambda was unable to configure your environment variables because the environment variables \
         you have provided contains reserved keys that are currently not supported for modification. \
         Reserved keys used in this request: {}",
        keys.join(", ")
    )]
    EnvironmentReserved { keys: Vec<String> },
    #[error(
        "Environment variables are {bytes} bytes (sum of key and value lengths): the limit is {} bytes",
        ENVIRONMENT_MAX_BYTES
    )]
    EnvironmentSize { bytes: usize },
    #[error(
        "Description is {chars} characters long: it must be at most {} characters",
        DESCRIPTION_MAX_CHARS
    )]
    Description { chars: usize },
    #[error(
        "LayerName {value:?} is invalid: it must be 1–{max} characters of A–Z, a–z, 0–9, '-' and '_' \
         (or this host's ARN arn:aws:lambda:{REGION}:{ACCOUNT_ID}:layer:NAME)",
        max = LAYER_NAME_MAX_CHARS
    )]
    LayerName { value: String },
    #[error(
        "Layers: {value:?} is not a layer version ARN of this host: it must be \
         arn:aws:lambda:{REGION}:{ACCOUNT_ID}:layer:NAME:VERSION (VERSION a number from 1)"
    )]
    LayerVersionArn { value: String },
    #[error(
        "Layers names {count} layers: a function may use at most {} layers",
        MAX_LAYERS
    )]
    TooManyLayers { count: usize },
    #[error("Layers: two versions of the same layer {layer_arn} are not allowed")]
    DuplicateLayer { layer_arn: String },
    #[error(
        "CompatibleRuntimes is invalid: at most {} names of 1–64 characters without whitespace",
        MAX_COMPATIBLE_RUNTIMES
    )]
    CompatibleRuntimes,
    #[error("{reason}")]
    Image { reason: String },
}

impl From<ConfigError> for WireError {
    fn from(e: ConfigError) -> Self {
        WireError::invalid(e.to_string())
    }
}

/// The runtimes this host can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Runtime {
    /// The host's Python 3 interpreter, forked from a zygote.
    #[serde(rename = "python3")]
    Python3,
    /// A custom runtime: the function's executable `bootstrap`, served
    /// Lambda's Runtime API inside the environment.
    #[serde(rename = "provided")]
    Provided,
    /// The host's Node.js, pre-started in a pool of unspecialised sandboxed
    /// processes (node cannot fork safely).
    #[serde(rename = "nodejs")]
    Nodejs,
}

impl Runtime {
    pub const ALL: &'static [Runtime] = &[Runtime::Python3, Runtime::Provided, Runtime::Nodejs];

    /// Lambda's names for the OS-only runtimes, taken as `provided`: the
    /// environment's userland is this host's either way.
    const PROVIDED_ALIASES: &'static [&'static str] = &["provided.al2", "provided.al2023"];

    /// Lambda's Node.js runtime names, taken as `nodejs`: the host's one
    /// node runs them all (`lambdalet serve` says which version it found).
    const NODEJS_ALIASES: &'static [&'static str] =
        &["nodejs18.x", "nodejs20.x", "nodejs22.x", "nodejs24.x"];

    /// The name on the wire (`Runtime` in CreateFunction).
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python3 => "python3",
            Runtime::Provided => "provided",
            Runtime::Nodejs => "nodejs",
        }
    }

    /// Only the exact wire names (and `provided`'s aliases) are accepted:
    /// "python3.12" would promise a version the host may not have.
    pub fn parse(value: &str) -> Result<Runtime, ConfigError> {
        if Runtime::PROVIDED_ALIASES.contains(&value) {
            return Ok(Runtime::Provided);
        }
        if Runtime::NODEJS_ALIASES.contains(&value) {
            return Ok(Runtime::Nodejs);
        }
        Runtime::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == value)
            .ok_or_else(|| ConfigError::Runtime {
                value: value.to_owned(),
            })
    }

    fn allowed_list() -> String {
        Runtime::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(Runtime::PROVIDED_ALIASES.iter().copied())
            .chain(Runtime::NODEJS_ALIASES.iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A function's validated settings.
///
/// The fields are public for reading; build one only through the constructors
/// below so that the invariants hold (the registry re-validates what it loads
/// from disk with [`FunctionSpec::validated`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    pub runtime: Runtime,
    pub handler: String,
    pub memory_mb: u32,
    pub timeout_s: u32,
    pub environment: BTreeMap<String, String>,
    pub ephemeral_mb: u32,
    pub description: String,
    /// A container image function (PackageType Image): its runtime is
    /// served as `provided`, with no handler. Absent for a Zip package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
}

impl FunctionSpec {
    /// The settings of a new function, with Lambda's defaults for what the
    /// request leaves out.
    pub fn from_create(req: &CreateFunction) -> Result<FunctionSpec, ConfigError> {
        let name = function_name(&req.function_name)?.to_owned();
        let image = ImageSpec::from_create(req)?;
        FunctionSpec {
            name,
            runtime: match image {
                Some(_) => Runtime::Provided,
                None => Runtime::parse(&req.runtime)?,
            },
            handler: req.handler.clone(),
            memory_mb: req.memory_size.unwrap_or(DEFAULT_MEMORY_MB),
            timeout_s: req.timeout.unwrap_or(DEFAULT_TIMEOUT_S),
            environment: req
                .environment
                .as_ref()
                .map(|e| e.variables.clone())
                .unwrap_or_default(),
            ephemeral_mb: req
                .ephemeral_storage
                .map_or(DEFAULT_EPHEMERAL_MB, |e| e.size),
            description: req.description.clone().unwrap_or_default(),
            image,
        }
        .validated()
    }

    /// These settings with the fields the request sets replaced (Lambda's
    /// UpdateFunctionConfiguration: an `Environment` replaces the whole map).
    /// The request's FunctionName selects the function; it is not checked here.
    pub fn updated(&self, req: &UpdateFunctionConfiguration) -> Result<FunctionSpec, ConfigError> {
        let mut next = self.clone();
        ImageSpec::update(&mut next.image, req)?;
        if let Some(runtime) = &req.runtime {
            next.runtime = Runtime::parse(runtime)?;
        }
        if let Some(handler) = &req.handler {
            next.handler = handler.clone();
        }
        if let Some(memory) = req.memory_size {
            next.memory_mb = memory;
        }
        if let Some(timeout) = req.timeout {
            next.timeout_s = timeout;
        }
        if let Some(env) = &req.environment {
            next.environment = env.variables.clone();
        }
        if let Some(storage) = req.ephemeral_storage {
            next.ephemeral_mb = storage.size;
        }
        if let Some(description) = &req.description {
            next.description = description.clone();
        }
        next.validated()
    }

    /// Checks every field; returns the spec unchanged if all are valid.
    pub fn validated(self) -> Result<FunctionSpec, ConfigError> {
        check_name(&self.name)?;
        match &self.image {
            // An image has no handler: its Entrypoint and Cmd run.
            Some(image) => image.check()?,
            None => check_handler(self.runtime, &self.handler)?,
        }
        if !MEMORY_MB.contains(&self.memory_mb) {
            return Err(ConfigError::MemorySize {
                value: self.memory_mb,
            });
        }
        if !TIMEOUT_S.contains(&self.timeout_s) {
            return Err(ConfigError::Timeout {
                value: self.timeout_s,
            });
        }
        if !EPHEMERAL_MB.contains(&self.ephemeral_mb) {
            return Err(ConfigError::EphemeralStorage {
                value: self.ephemeral_mb,
            });
        }
        check_environment(&self.environment)?;
        let chars = self.description.chars().count();
        if chars > DESCRIPTION_MAX_CHARS {
            return Err(ConfigError::Description { chars });
        }
        Ok(self)
    }

    /// The CPU share in thousandths of a vCPU: proportional to memory
    /// (1769 MB = 1 vCPU), capped at 6 vCPUs and at the host's CPU count.
    pub fn cpu_millis(&self, host_cpus: u32) -> u32 {
        let proportional = u64::from(self.memory_mb) * 1000 / MB_PER_VCPU;
        let cap = MAX_CPU_MILLIS.min(u64::from(host_cpus.max(1)) * 1000);
        // Both operands are at most 6000, so this cannot truncate.
        proportional.min(cap) as u32
    }

    /// `arn:aws:lambda:us-east-1:000000000000:function:NAME`.
    pub fn arn(&self) -> String {
        function_arn(&self.name)
    }
}

/// The ARN of the function called `name` on this host.
pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}")
}

/// The function name a FunctionName parameter denotes: a plain name, or this
/// host's ARN of it (Lambda accepts either wherever a FunctionName goes).
pub fn function_name(value: &str) -> Result<&str, ConfigError> {
    let prefix = format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:");
    let name = value.strip_prefix(prefix.as_str()).unwrap_or(value);
    check_name(name).map_err(|_| ConfigError::FunctionName {
        value: value.to_owned(),
    })?;
    Ok(name)
}

/// `arn:aws:lambda:us-east-1:000000000000:layer:NAME`.
pub fn layer_arn(name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:layer:{name}")
}

/// `arn:aws:lambda:us-east-1:000000000000:layer:NAME:VERSION`.
pub fn layer_version_arn(name: &str, version: u64) -> String {
    format!("{}:{version}", layer_arn(name))
}

/// The layer name a LayerName parameter denotes: a plain name, or this host's
/// layer ARN (without a version), as Lambda accepts either.
pub fn layer_name(value: &str) -> Result<&str, ConfigError> {
    let prefix = layer_arn("");
    let name = value.strip_prefix(prefix.as_str()).unwrap_or(value);
    let ok = !name.is_empty()
        && name.len() <= LAYER_NAME_MAX_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(ConfigError::LayerName {
            value: value.to_owned(),
        })
    }
}

/// A layer version ARN of this host, as (name, version).
pub fn parse_layer_version_arn(value: &str) -> Result<(String, u64), ConfigError> {
    let bad = || ConfigError::LayerVersionArn {
        value: value.to_owned(),
    };
    let rest = value.strip_prefix(layer_arn("").as_str()).ok_or_else(bad)?;
    let (name, version) = rest.rsplit_once(':').ok_or_else(bad)?;
    let name = layer_name(name).map_err(|_| bad())?;
    // Digits only: "+1" or " 1" would parse but are not what Lambda writes.
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match version.parse::<u64>() {
        Ok(v) if v >= 1 => Ok((name.to_owned(), v)),
        _ => Err(bad()),
    }
}

/// A function's `Layers`: at most [`MAX_LAYERS`] version ARNs of this host,
/// at most one version of each layer, in the order given (later layers
/// override earlier ones under /opt).
pub fn layer_list(arns: &[String]) -> Result<Vec<(String, u64)>, ConfigError> {
    if arns.len() > MAX_LAYERS {
        return Err(ConfigError::TooManyLayers { count: arns.len() });
    }
    let mut out: Vec<(String, u64)> = Vec::with_capacity(arns.len());
    for arn in arns {
        let (name, version) = parse_layer_version_arn(arn)?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(ConfigError::DuplicateLayer {
                layer_arn: layer_arn(&name),
            });
        }
        out.push((name, version));
    }
    Ok(out)
}

/// A layer version's Description and CompatibleRuntimes.
pub fn check_layer_metadata(description: &str, runtimes: &[String]) -> Result<(), ConfigError> {
    let chars = description.chars().count();
    if chars > DESCRIPTION_MAX_CHARS {
        return Err(ConfigError::Description { chars });
    }
    let ok = runtimes.len() <= MAX_COMPATIBLE_RUNTIMES
        && runtimes
            .iter()
            .all(|r| (1..=64).contains(&r.len()) && !r.chars().any(char::is_whitespace));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::CompatibleRuntimes)
    }
}

fn check_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= FUNCTION_NAME_MAX_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::FunctionName {
            value: name.to_owned(),
        })
    }
}

/// Lambda itself only checks `[^\s]+` (at most 128 characters) and lets the
/// runtime fail at init; we also check the shape the runtime will split, so a
/// typo is reported at deploy time rather than on the first invoke.
///
/// Python: `path/to/module.function` or `package.module.function`; the last dot
/// separates the function, the rest is the module (dots and '/' are the runtime's
/// business). The module path must stay under /var/task: no leading '/', no `..`.
///
/// `provided`: free text, passed to the bootstrap as `_HANDLER` (Lambda does
/// not interpret it either).
fn check_handler(runtime: Runtime, handler: &str) -> Result<(), ConfigError> {
    let err = |reason| ConfigError::Handler {
        value: handler.to_owned(),
        reason,
    };
    if handler.is_empty() {
        return Err(err("it must not be empty"));
    }
    if handler.chars().count() > HANDLER_MAX_CHARS {
        return Err(err("it must be at most 128 characters"));
    }
    if handler.chars().any(char::is_whitespace) {
        return Err(err("it must not contain whitespace"));
    }
    match runtime {
        Runtime::Python3 | Runtime::Nodejs => {
            let Some((module, function)) = handler.rsplit_once('.') else {
                return Err(err(
                    "it must be MODULE.FUNCTION, e.g. app.handler or dir/app.handler",
                ));
            };
            if module.is_empty() || function.is_empty() {
                return Err(err(
                    "it must be MODULE.FUNCTION with both parts non-empty, e.g. app.handler",
                ));
            }
            if module.starts_with('/') || module.split('/').any(|part| part == "..") {
                return Err(err(
                    "the module path must be relative to the code root (no leading '/', no '..')",
                ));
            }
            Ok(())
        }
        Runtime::Provided => Ok(()),
    }
}

fn check_environment(env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for key in env.keys() {
        let mut bytes = key.bytes();
        let ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(ConfigError::EnvironmentKey { key: key.clone() });
        }
    }
    let reserved: Vec<String> = env
        .keys()
        .filter(|k| RESERVED_ENVIRONMENT_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    if !reserved.is_empty() {
        return Err(ConfigError::EnvironmentReserved { keys: reserved });
    }
    let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > ENVIRONMENT_MAX_BYTES {
        return Err(ConfigError::EnvironmentSize { bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Environment, EphemeralStorage, ErrorKind, FunctionCode};

    fn create(name: &str) -> CreateFunction {
        CreateFunction {
            package_type: None,
            image_config: None,
            function_name: name.to_owned(),
            runtime: "python3".to_owned(),
            handler: "app.handler".to_owned(),
            code: FunctionCode {
                image_uri: None,
                zip_file: None,
                path: Some("/nonexistent".to_owned()),
            },
            memory_size: None,
            timeout: None,
            environment: None,
            ephemeral_storage: None,
            description: None,
            layers: None,
        }
    }

    fn base() -> FunctionSpec {
        FunctionSpec::from_create(&create("f")).unwrap()
    }

    fn update() -> UpdateFunctionConfiguration {
        UpdateFunctionConfiguration {
            function_name: "f".to_owned(),
            ..Default::default()
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Environment {
        Environment {
            variables: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn defaults_are_lambdas() {
        let spec = base();
        assert_eq!(spec.name, "f");
        assert_eq!(spec.runtime, Runtime::Python3);
        assert_eq!(spec.memory_mb, 128);
        assert_eq!(spec.timeout_s, 3);
        assert_eq!(spec.ephemeral_mb, 512);
        assert!(spec.environment.is_empty());
        assert_eq!(spec.description, "");
    }

    #[test]
    fn memory_edges() {
        for ok in [128, 129, 1769, 10240] {
            let mut req = create("f");
            req.memory_size = Some(ok);
            assert_eq!(FunctionSpec::from_create(&req).unwrap().memory_mb, ok);
        }
        for bad in [0, 64, 127, 10241, u32::MAX] {
            let mut req = create("f");
            req.memory_size = Some(bad);
            assert_eq!(
                FunctionSpec::from_create(&req),
                Err(ConfigError::MemorySize { value: bad })
            );
        }
        let mut req = create("f");
        req.memory_size = Some(64);
        assert_eq!(
            FunctionSpec::from_create(&req).unwrap_err().to_string(),
            "MemorySize 64 is out of range: it must be 128–10240 MB"
        );
    }

    #[test]
    fn timeout_edges() {
        for ok in [1, 3, 900] {
            let mut req = create("f");
            req.timeout = Some(ok);
            assert_eq!(FunctionSpec::from_create(&req).unwrap().timeout_s, ok);
        }
        for bad in [0, 901] {
            let mut req = create("f");
            req.timeout = Some(bad);
            let err = FunctionSpec::from_create(&req).unwrap_err();
            assert_eq!(err, ConfigError::Timeout { value: bad });
            assert!(err.to_string().contains("1–900 seconds"), "{err}");
        }
    }

    #[test]
    fn ephemeral_edges() {
        for ok in [512, 10240] {
            let mut req = create("f");
            req.ephemeral_storage = Some(EphemeralStorage { size: ok });
            assert_eq!(FunctionSpec::from_create(&req).unwrap().ephemeral_mb, ok);
        }
        for bad in [0, 511, 10241] {
            let mut req = create("f");
            req.ephemeral_storage = Some(EphemeralStorage { size: bad });
            let err = FunctionSpec::from_create(&req).unwrap_err();
            assert_eq!(err, ConfigError::EphemeralStorage { value: bad });
            assert!(err.to_string().contains("512–10240 MB"), "{err}");
        }
    }

    #[test]
    fn names() {
        let max = "a".repeat(64);
        for ok in ["a", "A-z_0", "hello-world", max.as_str()] {
            assert_eq!(FunctionSpec::from_create(&create(ok)).unwrap().name, ok);
        }
        let long = "a".repeat(65);
        for bad in ["", "a.b", "a b", "a/b", "é", "..", long.as_str()] {
            assert!(
                matches!(
                    FunctionSpec::from_create(&create(bad)),
                    Err(ConfigError::FunctionName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn arn_is_accepted_as_name() {
        let arn = "arn:aws:lambda:us-east-1:000000000000:function:hello";
        assert_eq!(
            FunctionSpec::from_create(&create(arn)).unwrap().name,
            "hello"
        );
        assert_eq!(function_name(arn).unwrap(), "hello");
        assert_eq!(function_arn("hello"), arn);
        // Another account's ARN is not ours.
        assert!(function_name("arn:aws:lambda:us-east-1:123456789012:function:hello").is_err());
        assert!(function_name("arn:aws:lambda:us-east-1:000000000000:function:").is_err());
    }

    #[test]
    fn runtimes() {
        for bad in ["python3.11", "python", "node", "nodejs16.x", "", "Python3"] {
            let mut req = create("f");
            req.runtime = bad.to_owned();
            let err = FunctionSpec::from_create(&req).unwrap_err();
            assert_eq!(err, ConfigError::Runtime { value: bad.into() });
            assert!(err.to_string().contains("one of python3"), "{err}");
        }
        assert_eq!(
            serde_json::to_string(&Runtime::Python3).unwrap(),
            "\"python3\""
        );
        for name in ["provided", "provided.al2", "provided.al2023"] {
            let mut req = create("f");
            req.runtime = name.to_owned();
            req.handler = "not.interpreted/by:lambdalet".into();
            let spec = FunctionSpec::from_create(&req).unwrap();
            assert_eq!(spec.runtime, Runtime::Provided);
            assert_eq!(spec.runtime.as_str(), "provided");
        }
        for name in [
            "nodejs",
            "nodejs18.x",
            "nodejs20.x",
            "nodejs22.x",
            "nodejs24.x",
        ] {
            let mut req = create("f");
            req.runtime = name.to_owned();
            req.handler = "index.handler".into();
            let spec = FunctionSpec::from_create(&req).unwrap();
            assert_eq!(spec.runtime, Runtime::Nodejs);
            assert_eq!(spec.runtime.as_str(), "nodejs");
        }
        // The handler is the bootstrap's business, but Lambda's own rule
        // (no whitespace) still holds.
        let mut req = create("f");
        req.runtime = "provided".into();
        req.handler = "not a handler".into();
        assert!(FunctionSpec::from_create(&req).is_err());
    }

    #[test]
    fn handlers() {
        let long_ok = format!("{}.h", "m".repeat(126));
        for ok in [
            "app.handler",
            "dir/app.handler",
            "pkg.module.function",
            "a/b/c.d",
            long_ok.as_str(),
        ] {
            let mut req = create("f");
            req.handler = ok.to_owned();
            assert_eq!(FunctionSpec::from_create(&req).unwrap().handler, ok);
        }
        let long_bad = format!("{}.h", "m".repeat(127));
        for bad in [
            "",
            "app",
            ".handler",
            "app.",
            "app .handler",
            "/abs/app.handler",
            "../app.handler",
            "a/../../b.h",
            long_bad.as_str(),
        ] {
            let mut req = create("f");
            req.handler = bad.to_owned();
            assert!(
                matches!(
                    FunctionSpec::from_create(&req),
                    Err(ConfigError::Handler { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn environment_keys() {
        for ok in [
            "A",
            "a1",
            "MY_VAR",
            "TZ",
            "PYTHONPATH",
            "AWS_LAMBDA_EXEC_WRAPPER",
        ] {
            let mut req = create("f");
            req.environment = Some(env(&[(ok, "v")]));
            assert!(FunctionSpec::from_create(&req).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "_X", "A-B", "A.B", "A B", "É"] {
            let mut req = create("f");
            req.environment = Some(env(&[(bad, "v")]));
            assert_eq!(
                FunctionSpec::from_create(&req),
                Err(ConfigError::EnvironmentKey { key: bad.into() }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn environment_reserved() {
        for key in RESERVED_ENVIRONMENT_KEYS {
            let mut req = create("f");
            req.environment = Some(env(&[(key, "x"), ("OK", "y")]));
            let err = FunctionSpec::from_create(&req).unwrap_err();
            // `_HANDLER` and `_X_AMZN_TRACE_ID` already fail the key syntax.
            match err {
                ConfigError::EnvironmentReserved { keys } => {
                    assert_eq!(keys, vec![key.to_string()])
                }
                ConfigError::EnvironmentKey { key: k } => {
                    assert!(k.starts_with('_'));
                    assert_eq!(&k, key);
                }
                other => panic!("{key}: {other}"),
            }
        }
        let mut req = create("f");
        req.environment = Some(env(&[("AWS_REGION", "x"), ("LAMBDA_TASK_ROOT", "y")]));
        let msg = FunctionSpec::from_create(&req).unwrap_err().to_string();
        assert!(msg.ends_with("AWS_REGION, LAMBDA_TASK_ROOT"), "{msg}");
    }

    #[test]
    fn environment_size_edges() {
        // "K" + 4095 bytes = 4096: allowed; one more byte: refused.
        let exact = "v".repeat(4095);
        let mut req = create("f");
        req.environment = Some(env(&[("K", exact.as_str())]));
        assert!(FunctionSpec::from_create(&req).is_ok());
        let over = "v".repeat(4096);
        req.environment = Some(env(&[("K", over.as_str())]));
        assert_eq!(
            FunctionSpec::from_create(&req),
            Err(ConfigError::EnvironmentSize { bytes: 4097 })
        );
        // Counted across variables, in bytes (é is 2 bytes).
        let half = "é".repeat(1024);
        req.environment = Some(env(&[("A", half.as_str()), ("B", half.as_str())]));
        assert_eq!(
            FunctionSpec::from_create(&req),
            Err(ConfigError::EnvironmentSize { bytes: 4098 })
        );
    }

    #[test]
    fn description_edges() {
        let mut req = create("f");
        req.description = Some("é".repeat(256));
        assert!(FunctionSpec::from_create(&req).is_ok());
        req.description = Some("d".repeat(257));
        assert_eq!(
            FunctionSpec::from_create(&req),
            Err(ConfigError::Description { chars: 257 })
        );
    }

    #[test]
    fn update_replaces_only_given_fields() {
        let mut req = create("f");
        req.environment = Some(env(&[("A", "1")]));
        req.memory_size = Some(256);
        let spec = FunctionSpec::from_create(&req).unwrap();

        let mut up = update();
        up.timeout = Some(900);
        let next = spec.updated(&up).unwrap();
        assert_eq!(next.timeout_s, 900);
        assert_eq!(next.memory_mb, 256);
        assert_eq!(next.environment, spec.environment);

        // An Environment replaces the whole map, as on Lambda.
        let mut up = update();
        up.environment = Some(env(&[("B", "2")]));
        up.handler = Some("pkg.mod.fn".into());
        up.description = Some("hi".into());
        up.ephemeral_storage = Some(EphemeralStorage { size: 1024 });
        let next = spec.updated(&up).unwrap();
        assert_eq!(next.environment, env(&[("B", "2")]).variables);
        assert_eq!(next.handler, "pkg.mod.fn");
        assert_eq!(next.description, "hi");
        assert_eq!(next.ephemeral_mb, 1024);
        assert_eq!(next.name, "f");
    }

    #[test]
    fn update_validates() {
        let spec = base();
        let mut up = update();
        up.memory_size = Some(10241);
        assert_eq!(
            spec.updated(&up),
            Err(ConfigError::MemorySize { value: 10241 })
        );
        let mut up = update();
        up.timeout = Some(0);
        assert_eq!(spec.updated(&up), Err(ConfigError::Timeout { value: 0 }));
        let mut up = update();
        up.runtime = Some("nodejs8.10".into());
        assert!(matches!(
            spec.updated(&up),
            Err(ConfigError::Runtime { .. })
        ));
        let mut up = update();
        up.handler = Some("nodot".into());
        assert!(matches!(
            spec.updated(&up),
            Err(ConfigError::Handler { .. })
        ));
        let mut up = update();
        up.environment = Some(env(&[("AWS_SESSION_TOKEN", "x")]));
        assert!(matches!(
            spec.updated(&up),
            Err(ConfigError::EnvironmentReserved { .. })
        ));
    }

    #[test]
    fn layer_arns() {
        let arn =
            |name: &str, v: &str| format!("arn:aws:lambda:us-east-1:000000000000:layer:{name}:{v}");
        assert_eq!(layer_version_arn("lib", 3), arn("lib", "3"));
        assert_eq!(
            parse_layer_version_arn(&arn("my-lib_2", "12")).unwrap(),
            ("my-lib_2".to_owned(), 12)
        );
        for bad in [
            arn("lib", "0"),
            arn("lib", ""),
            arn("lib", "+1"),
            arn("lib", "x"),
            arn("", "1"),
            arn("a.b", "1"),
            arn("lib", "99999999999999999999999"),
            "arn:aws:lambda:us-east-1:123456789012:layer:lib:1".to_owned(),
            "arn:aws:lambda:us-east-1:000000000000:function:lib:1".to_owned(),
            "lib:1".to_owned(),
        ] {
            assert_eq!(
                parse_layer_version_arn(&bad),
                Err(ConfigError::LayerVersionArn { value: bad.clone() }),
                "{bad}"
            );
        }
        assert_eq!(layer_name("lib").unwrap(), "lib");
        assert_eq!(layer_name(&layer_arn("lib")).unwrap(), "lib");
        let long = "l".repeat(141);
        for bad in ["", "a b", "a/b", long.as_str()] {
            assert!(layer_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn layer_lists() {
        let arns: Vec<String> = (1..=6)
            .map(|i| layer_version_arn(&format!("l{i}"), 1))
            .collect();
        assert_eq!(layer_list(&arns[..5]).unwrap().len(), 5);
        let err = layer_list(&arns).unwrap_err();
        assert_eq!(err, ConfigError::TooManyLayers { count: 6 });
        assert!(err.to_string().contains("at most 5 layers"), "{err}");
        let twice = [layer_version_arn("a", 1), layer_version_arn("a", 2)];
        assert_eq!(
            layer_list(&twice),
            Err(ConfigError::DuplicateLayer {
                layer_arn: layer_arn("a")
            })
        );
        // The order is kept: it is the order of precedence under /opt.
        let order = [layer_version_arn("b", 2), layer_version_arn("a", 1)];
        assert_eq!(
            layer_list(&order).unwrap(),
            vec![("b".to_owned(), 2), ("a".to_owned(), 1)]
        );
    }

    #[test]
    fn layer_metadata() {
        assert!(check_layer_metadata("d", &["python3".into(), "python3.12".into()]).is_ok());
        assert!(check_layer_metadata(&"d".repeat(257), &[]).is_err());
        assert!(check_layer_metadata("", &["a b".into()]).is_err());
        assert!(check_layer_metadata("", &vec!["x".to_owned(); 16]).is_err());
    }

    #[test]
    fn cpu_share() {
        let mut spec = base();
        assert_eq!(spec.cpu_millis(2), 72); // 128 MB
        spec.memory_mb = 1769;
        assert_eq!(spec.cpu_millis(2), 1000);
        spec.memory_mb = 3538;
        assert_eq!(spec.cpu_millis(2), 2000);
        spec.memory_mb = 10240;
        assert_eq!(spec.cpu_millis(2), 2000); // capped at the host's 2 CPUs
        assert_eq!(spec.cpu_millis(64), 5788); // 10240 * 1000 / 1769
        assert_eq!(spec.cpu_millis(0), 1000); // a host has at least one CPU
    }

    #[test]
    fn converts_to_invalid_parameter() {
        let wire: WireError = ConfigError::Timeout { value: 0 }.into();
        assert_eq!(wire.kind, ErrorKind::InvalidParameterValueException);
        assert_eq!(
            wire.message,
            "Timeout 0 is out of range: it must be 1–900 seconds"
        );
    }

    #[test]
    fn spec_round_trips_through_json_strictly() {
        let spec = base();
        let json = serde_json::to_string(&spec).unwrap();
        let back: FunctionSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["extra"] = 1.into();
        assert!(serde_json::from_value::<FunctionSpec>(value).is_err());
    }
}
