//! A function's asynchronous invocation configuration
//! (PutFunctionEventInvokeConfig): how often a failed event is retried, how
//! old it may grow, and where its invocation records go.
//!
//! Validated here, from the wire shape, before anything is stored; the
//! supervisor adds the checks that need its state (a destination function
//! exists, only root names a host directory).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config;
use crate::protocol::{
    DestinationConfig, FunctionEventInvokeConfig, OnDestination, PutFunctionEventInvokeConfig,
};

/// Lambda's defaults and bounds.
pub const DEFAULT_MAX_RETRY_ATTEMPTS: u32 = 2;
pub const MAX_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_MAX_EVENT_AGE_S: u32 = 21_600;
pub const MIN_EVENT_AGE_S: u32 = 60;
pub const MAX_EVENT_AGE_S: u32 = 21_600;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInvokeConfig {
    pub max_retry_attempts: u32,
    pub max_event_age_s: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Destination>,
    /// When it was last set (Unix milliseconds), for LastModified.
    pub modified_unix_ms: u64,
}

impl Default for EventInvokeConfig {
    /// What a function without a configuration gets.
    fn default() -> Self {
        EventInvokeConfig {
            max_retry_attempts: DEFAULT_MAX_RETRY_ATTEMPTS,
            max_event_age_s: DEFAULT_MAX_EVENT_AGE_S,
            on_success: None,
            on_failure: None,
            modified_unix_ms: 0,
        }
    }
}

/// Where an invocation record goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Destination {
    /// Another function, invoked asynchronously with the record as its event.
    Function(String),
    /// A directory on the supervisor's host: one JSON file per record.
    Directory(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventConfigError {
    #[error("MaximumRetryAttempts must be between 0 and {MAX_RETRY_ATTEMPTS} (got {0})")]
    RetryAttempts(u32),
    #[error(
        "MaximumEventAgeInSeconds must be between {MIN_EVENT_AGE_S} and {MAX_EVENT_AGE_S} (got {0})"
    )]
    EventAge(u32),
    #[error("Qualifier {0:?} is not supported: lambdalet has only $LATEST")]
    Qualifier(String),
    #[error(
        "destination {0:?} is neither a function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME), a function name, nor an absolute directory path"
    )]
    Destination(String),
}

impl EventInvokeConfig {
    /// PutFunctionEventInvokeConfig (`base` None: absent fields take their
    /// defaults) or UpdateFunctionEventInvokeConfig (`base` the current
    /// configuration: absent fields keep their value).
    pub fn from_request(
        req: &PutFunctionEventInvokeConfig,
        base: Option<&EventInvokeConfig>,
        now_unix_ms: u64,
    ) -> Result<EventInvokeConfig, EventConfigError> {
        if let Some(q) = req.qualifier.as_deref() {
            if q != config::LATEST_VERSION {
                return Err(EventConfigError::Qualifier(q.to_owned()));
            }
        }
        let mut next = base.cloned().unwrap_or_default();
        if let Some(n) = req.maximum_retry_attempts {
            if n > MAX_RETRY_ATTEMPTS {
                return Err(EventConfigError::RetryAttempts(n));
            }
            next.max_retry_attempts = n;
        }
        if let Some(s) = req.maximum_event_age_in_seconds {
            if !(MIN_EVENT_AGE_S..=MAX_EVENT_AGE_S).contains(&s) {
                return Err(EventConfigError::EventAge(s));
            }
            next.max_event_age_s = s;
        }
        if let Some(d) = &req.destination_config {
            // Lambda's Update replaces each destination that is given; an
            // empty Destination string removes it.
            if let Some(on) = &d.on_success {
                next.on_success = Destination::parse_optional(&on.destination)?;
            }
            if let Some(on) = &d.on_failure {
                next.on_failure = Destination::parse_optional(&on.destination)?;
            }
        }
        next.modified_unix_ms = now_unix_ms;
        Ok(next)
    }

    /// As Lambda's API shows it.
    pub fn to_wire(&self, function_arn: &str) -> FunctionEventInvokeConfig {
        let on = |d: &Option<Destination>| {
            d.as_ref().map(|d| OnDestination {
                destination: d.to_wire(),
            })
        };
        FunctionEventInvokeConfig {
            last_modified: self.modified_unix_ms as f64 / 1000.0,
            function_arn: format!("{function_arn}:{}", config::LATEST_VERSION),
            maximum_retry_attempts: self.max_retry_attempts,
            maximum_event_age_in_seconds: self.max_event_age_s,
            destination_config: DestinationConfig {
                on_success: on(&self.on_success),
                on_failure: on(&self.on_failure),
            },
        }
    }

    /// Both destinations, for the checks that need the supervisor's state.
    pub fn destinations(&self) -> impl Iterator<Item = &Destination> {
        self.on_success.iter().chain(self.on_failure.iter())
    }
}

impl Destination {
    /// A function ARN (`arn:aws:lambda:REGION:ACCOUNT:function:NAME`, with
    /// an optional `:$LATEST`), a function name, or an absolute directory.
    pub fn parse(s: &str) -> Result<Destination, EventConfigError> {
        let bad = || EventConfigError::Destination(s.to_owned());
        if s.starts_with('/') {
            let path = Path::new(s);
            // A sink path is used as given: no `..` to walk out of it.
            if path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(bad());
            }
            return Ok(Destination::Directory(path.to_path_buf()));
        }
        // This host's function ARN (optionally of $LATEST) or a name.
        let unqualified = match s.strip_suffix(":$LATEST") {
            Some(arn) if s.starts_with("arn:") => arn,
            _ => s,
        };
        let name = config::function_name(unqualified).map_err(|_| bad())?;
        Ok(Destination::Function(name.to_owned()))
    }

    fn parse_optional(s: &str) -> Result<Option<Destination>, EventConfigError> {
        if s.is_empty() {
            Ok(None)
        } else {
            Destination::parse(s).map(Some)
        }
    }

    /// A function's full ARN, or the directory's path.
    pub fn to_wire(&self) -> String {
        match self {
            Destination::Function(name) => config::function_arn(name),
            Destination::Directory(p) => p.display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(f: impl FnOnce(&mut PutFunctionEventInvokeConfig)) -> PutFunctionEventInvokeConfig {
        let mut req = PutFunctionEventInvokeConfig {
            function_name: "f".into(),
            ..Default::default()
        };
        f(&mut req);
        req
    }

    #[test]
    fn defaults_are_lambdas() {
        let c = EventInvokeConfig::from_request(&put(|_| {}), None, 5_000).unwrap();
        assert_eq!(c.max_retry_attempts, 2);
        assert_eq!(c.max_event_age_s, 21_600);
        assert_eq!(c.modified_unix_ms, 5_000);
        assert!(c.on_success.is_none() && c.on_failure.is_none());
    }

    #[test]
    fn bounds_are_checked() {
        let e =
            EventInvokeConfig::from_request(&put(|r| r.maximum_retry_attempts = Some(3)), None, 0);
        assert_eq!(e, Err(EventConfigError::RetryAttempts(3)));
        for age in [59, 21_601] {
            let e = EventInvokeConfig::from_request(
                &put(|r| r.maximum_event_age_in_seconds = Some(age)),
                None,
                0,
            );
            assert_eq!(e, Err(EventConfigError::EventAge(age)));
        }
        let e = EventInvokeConfig::from_request(&put(|r| r.qualifier = Some("1".into())), None, 0);
        assert!(matches!(e, Err(EventConfigError::Qualifier(_))));
    }

    #[test]
    fn update_keeps_what_is_not_given() {
        let base = EventInvokeConfig::from_request(
            &put(|r| {
                r.maximum_retry_attempts = Some(0);
                r.destination_config = Some(DestinationConfig {
                    on_failure: Some(OnDestination {
                        destination: "/var/sink".into(),
                    }),
                    on_success: None,
                });
            }),
            None,
            1,
        )
        .unwrap();
        let next = EventInvokeConfig::from_request(
            &put(|r| r.maximum_event_age_in_seconds = Some(60)),
            Some(&base),
            2,
        )
        .unwrap();
        assert_eq!(next.max_retry_attempts, 0);
        assert_eq!(next.max_event_age_s, 60);
        assert_eq!(
            next.on_failure,
            Some(Destination::Directory("/var/sink".into()))
        );
    }

    #[test]
    fn destinations_parse() {
        let arn = |rest: &str| format!("{}{rest}", config::function_arn(""));
        assert_eq!(
            Destination::parse(&arn("sink")),
            Ok(Destination::Function("sink".into()))
        );
        assert_eq!(
            Destination::parse(&arn("sink:$LATEST")),
            Ok(Destination::Function("sink".into()))
        );
        assert_eq!(
            Destination::parse("sink"),
            Ok(Destination::Function("sink".into()))
        );
        assert_eq!(
            Destination::parse("/var/lib/failures"),
            Ok(Destination::Directory("/var/lib/failures".into()))
        );
        assert!(Destination::parse(&arn("f:7")).is_err());
        for bad in [
            "arn:aws:sqs:us-east-1:123456789012:queue",
            "/var/../etc",
            "not a name",
            "",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wire_shape_is_lambdas() {
        let c = EventInvokeConfig {
            on_success: Some(Destination::Function("next".into())),
            modified_unix_ms: 1_500,
            ..Default::default()
        };
        let w = serde_json::to_value(c.to_wire("arn:aws:lambda:us-east-1:000000000000:function:f"))
            .unwrap();
        assert_eq!(w["LastModified"], 1.5);
        assert_eq!(w["MaximumRetryAttempts"], 2);
        assert_eq!(
            w["FunctionArn"],
            "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST"
        );
        assert!(w["DestinationConfig"]["OnSuccess"]["Destination"]
            .as_str()
            .unwrap()
            .ends_with(":function:next"));
        assert!(w["DestinationConfig"].get("OnFailure").is_none());
    }
}
