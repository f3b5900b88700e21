//! lambdalet: the AWS Lambda execution model on one Linux host.
//!
//! The crate is laid out as the architecture (docs/architecture.md):
//! - [`protocol`]: the line-delimited JSON wire format and its closed set of errors;
//! - [`config`]: function settings, their limits and defaults, validated;
//! - [`registry`]: functions and their code, persisted in the state dir;
//! - [`sandbox`]: the execution environment's kernel objects (cgroups, seccomp) and
//!   the plan a zygote child applies;
//! - [`supervisor`]: the event loop, the zygote client, environments and invokes;
//! - [`cli`]: the command line, a client of the supervisor's socket;
//! - [`http`]: the Lambda HTTP API and function URLs, another client of it.

pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod sandbox;
pub mod supervisor;
