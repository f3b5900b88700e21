//! The command line. `lambdalet serve` runs the supervisor; every other
//! subcommand is a client of its socket and mirrors `aws lambda`
//! (`create-function`, `invoke`, …), printing the answer as pretty JSON.
//!
//! Exit status (see [`exit`]):
//! - 0: success (an invoke whose function raised is a success too, as with
//!   `aws lambda invoke`: the output says `"FunctionError": "Unhandled"`);
//! - 1: the request could not be completed: the socket cannot be reached, the
//!   connection broke, the answer was unreadable, the output file cannot be
//!   written, or `serve` failed;
//! - 2: usage: bad arguments, found by clap or by lambdalet before anything was
//!   sent (an invalid `--payload`, a missing `--code` path);
//! - 255: the supervisor answered with an error; stderr has
//!   `<ErrorKind>: <message>`.

mod client;
mod json;

use std::collections::BTreeMap;
use std::error::Error;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::value::{to_raw_value, RawValue};

pub use client::Client;

use crate::protocol::{
    self, op, DestinationConfig, Environment, EphemeralStorage, EventQueue, FunctionCode,
    InvocationType, InvokeAccepted, InvokeResult, LogLines, LogType, OnDestination, WireError,
};
use crate::supervisor::{
    self, ServeOptions, DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_KEEP_ALIVE, DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
};

/// The environment variable that names the socket when `--socket` is not given.
pub const SOCKET_ENV: &str = "LAMBDALET_SOCKET";

/// `--socket-mode`'s default as clap shows it; equal to
/// [`supervisor::DEFAULT_SOCKET_MODE`] (a unit test checks it).
const DEFAULT_SOCKET_MODE_OCTAL: &str = "0600";

/// Exit statuses of the `lambdalet` binary.
pub mod exit {
    pub const SUCCESS: i32 = 0;
    /// The request could not be completed (connection, I/O, unreadable answer).
    pub const FAILURE: i32 = 1;
    /// Bad arguments (clap uses 2 for its own usage errors too).
    pub const USAGE: i32 = 2;
    /// The supervisor answered with an error response.
    pub const SERVICE_ERROR: i32 = 255;
}

#[derive(Debug, Parser)]
#[command(
    name = "lambdalet",
    version,
    about = "The AWS Lambda execution model on one Linux host",
    after_help = "Exit status: 0 success, 1 request failed (socket, I/O), 2 usage error, \
                  255 the supervisor answered with an error."
)]
pub struct Cli {
    /// The supervisor's Unix socket (for `serve`: where to listen) [env:
    /// LAMBDALET_SOCKET] [default: /run/lambdalet/lambdalet.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `--socket`, else `$LAMBDALET_SOCKET`, else [`DEFAULT_SOCKET`]. (By hand:
    /// clap's `env` feature is not enabled in this crate.)
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .or_else(|| std::env::var_os(SOCKET_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the supervisor (as root): listen on the socket and run functions.
    Serve(ServeArgs),
    /// Deploy a new function.
    CreateFunction(CreateFunctionArgs),
    /// Replace a function's code.
    UpdateFunctionCode(UpdateFunctionCodeArgs),
    /// Change a function's settings; the options not given stay as they are.
    UpdateFunctionConfiguration(UpdateFunctionConfigurationArgs),
    /// Show a function's configuration.
    GetFunction(FunctionNameArg),
    /// List every function.
    ListFunctions,
    /// Delete a function, its code and its logs.
    DeleteFunction(FunctionNameArg),
    /// Invoke a function: synchronously by default, or queue an event.
    ///
    /// RequestResponse (the default) runs it now and prints the response
    /// metadata; Event stores the event durably and prints its 202 at once
    /// (it runs later, with retries); DryRun only checks the request (204).
    Invoke(InvokeArgs),
    /// Print a function's newest log lines.
    Logs(LogsArgs),
    /// Reserve concurrency for a function: at most N concurrent executions,
    /// and N kept from every other function (0 throttles every invoke).
    PutFunctionConcurrency(PutConcurrencyArgs),
    /// Show a function's reserved concurrency.
    GetFunctionConcurrency(FunctionNameArg),
    /// Remove a function's reserved concurrency.
    DeleteFunctionConcurrency(FunctionNameArg),
    /// Keep N environments of a function initialised ahead of time.
    PutProvisionedConcurrencyConfig(PutProvisionedArgs),
    /// Show a function's provisioned concurrency: requested, allocated and
    /// available environments, and the status.
    GetProvisionedConcurrencyConfig(FunctionNameArg),
    /// Remove a function's provisioned concurrency.
    DeleteProvisionedConcurrencyConfig(FunctionNameArg),
    /// Show the account's concurrency limit and unreserved concurrency.
    GetAccountSettings,
    /// Set a function's asynchronous invocation configuration: retries,
    /// maximum event age and destinations (what is not given takes its
    /// default).
    PutFunctionEventInvokeConfig(EventInvokeConfigArgs),
    /// Change a function's asynchronous invocation configuration; what is
    /// not given stays as it is.
    UpdateFunctionEventInvokeConfig(EventInvokeConfigArgs),
    /// Show a function's asynchronous invocation configuration.
    GetFunctionEventInvokeConfig(FunctionNameArg),
    /// Remove a function's asynchronous invocation configuration (it gets
    /// the defaults again: 2 retries, 6 hours, no destinations).
    DeleteFunctionEventInvokeConfig(FunctionNameArg),
    /// Show a function's asynchronous queue: events waiting, running and
    /// waiting to be retried, and the age of the oldest.
    Queue(QueueArgs),
    /// Print per-function metrics (invocations, errors, throttles, cold
    /// starts, concurrency, duration and memory percentiles) in the
    /// Prometheus text format.
    Metrics(MetricsArgs),
    /// Publish a new version of a layer (numbered from 1) from a .zip or a
    /// directory; functions name it with --layers and see it under /opt.
    PublishLayerVersion(PublishLayerVersionArgs),
    /// List every layer with its latest version.
    ListLayers(ListLayersArgs),
    /// List a layer's versions, newest first.
    ListLayerVersions(ListLayerVersionsArgs),
    /// Show one version of a layer.
    GetLayerVersion(LayerVersionArgs),
    /// Delete a version of a layer; functions that use it keep it.
    DeleteLayerVersion(LayerVersionArgs),
}

#[derive(Debug, Args)]
pub struct PublishLayerVersionArgs {
    /// The layer's name: letters, digits, '-' and '_', at most 140.
    pub name: String,
    #[command(flatten)]
    pub content: LayerContent,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Runtimes the layer is meant for (informational, as on Lambda).
    #[arg(long, num_args = 1.., value_name = "RUNTIME")]
    pub compatible_runtimes: Vec<String>,
}

/// A layer's content: exactly one of `--zip` and `--content`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct LayerContent {
    /// A .zip file sent inline, base64-encoded (a `fileb://` prefix is accepted).
    #[arg(long, visible_alias = "zip-file", value_name = "FILE")]
    pub zip: Option<PathBuf>,
    /// A directory or a .zip file on this host; the supervisor reads it (sent
    /// as an absolute path, root clients only).
    #[arg(long, value_name = "DIR|ZIP")]
    pub content: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListLayersArgs {
    /// Only layers with a version for this runtime (their latest such version).
    #[arg(long, value_name = "RUNTIME")]
    pub compatible_runtime: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListLayerVersionsArgs {
    /// The layer's name (or its ARN).
    pub name: String,
    /// Only the versions for this runtime.
    #[arg(long, value_name = "RUNTIME")]
    pub compatible_runtime: Option<String>,
}

#[derive(Debug, Args)]
pub struct LayerVersionArgs {
    /// The layer's name (or its ARN).
    pub name: String,
    /// The version number.
    pub version: u64,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Print the GetMetrics answer as JSON instead.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// The function's name.
    pub name: String,
    /// Print the GetEventQueue answer as JSON instead.
    #[arg(long)]
    pub json: bool,
}

/// put- and update-function-event-invoke-config.
#[derive(Debug, Args)]
pub struct EventInvokeConfigArgs {
    /// The function's name.
    pub name: String,
    /// Retries after a function error or timeout, 0–2 (default 2).
    #[arg(long, value_name = "N")]
    pub maximum_retry_attempts: Option<u32>,
    /// An event older than this is not run any more (its record goes to
    /// --on-failure), 60–21600 (default 21600).
    #[arg(long, value_name = "SECONDS")]
    pub maximum_event_age_in_seconds: Option<u32>,
    /// Where the record of a successful event goes: a function's name or
    /// ARN, or an absolute directory on the supervisor's host that gets one
    /// JSON file per record (root clients only). "" removes it.
    #[arg(long, value_name = "DEST")]
    pub on_success: Option<String>,
    /// Where the record of an event that ran out of retries or grew too old
    /// goes; as --on-success.
    #[arg(long, value_name = "DEST")]
    pub on_failure: Option<String>,
}

#[derive(Debug, Args)]
pub struct PutConcurrencyArgs {
    /// The function's name.
    pub name: String,
    #[arg(long, value_name = "N")]
    pub reserved_concurrent_executions: u32,
}

#[derive(Debug, Args)]
pub struct PutProvisionedArgs {
    /// The function's name.
    pub name: String,
    /// How many environments to keep initialised.
    #[arg(long, value_name = "N", alias = "provisioned-concurrent-executions")]
    pub count: u32,
    /// Only `$LATEST` (lambdalet has no published versions or aliases).
    #[arg(long, value_name = "QUALIFIER")]
    pub qualifier: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where functions, their code and their logs are kept.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The cgroup below which environments' cgroups are created (default: the
    /// supervisor's own cgroup).
    #[arg(long, value_name = "PATH")]
    pub cgroup_parent: Option<PathBuf>,
    /// The Python interpreter for the python3 runtime (default: the host's
    /// python3, resolved once past any shim).
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// The node binary for the nodejs runtime (default: `node` on PATH; none
    /// found means no nodejs runtime).
    #[arg(long, value_name = "PATH")]
    pub node: Option<PathBuf>,
    /// How long an idle environment is kept warm.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_KEEP_ALIVE.as_secs())]
    pub keep_alive: u64,
    /// The socket's permission bits, in octal.
    #[arg(long, value_name = "OCTAL", default_value = DEFAULT_SOCKET_MODE_OCTAL, value_parser = parse_octal_mode)]
    pub socket_mode: u32,
    /// The group that owns the socket (give it mode 0660 to let that group in).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Blank environments kept ready, so a cold start only specialises one.
    #[arg(long, value_name = "N", default_value_t = crate::supervisor::DEFAULT_PREWARM)]
    pub prewarm: usize,
    /// Node.js blanks (a node process already started in each) kept ready
    /// while at least one nodejs function exists.
    #[arg(long, value_name = "N", default_value_t = crate::supervisor::DEFAULT_PREWARM_NODE)]
    pub prewarm_node: usize,
    /// The account's concurrency limit: invocations in flight at once, all
    /// functions together (Lambda's default is 1000). Reserved concurrency
    /// comes out of it and must leave at least 100 unreserved.
    #[arg(long, value_name = "N", default_value_t = crate::supervisor::DEFAULT_MAX_CONCURRENCY,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrency: u32,
    /// Multiplies the asynchronous queue's clock (retry delays, throttle
    /// backoff, maximum event age): above 0 and at most 1, which is Lambda's
    /// timing; tests use 0.01.
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = parse_time_scale)]
    pub async_time_scale: f64,
    /// How long an Event invoke's idempotency key is remembered: the same key
    /// within it is answered with the first event's request id, not queued
    /// again.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_IDEMPOTENCY_WINDOW.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_window: u64,
    /// Also answer the AWS Lambda HTTP API (Invoke, the control plane,
    /// function URLs under /url/) on this address (docs/http.md). Loopback
    /// only, unless --http-credentials is given.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<std::net::SocketAddr>,
    /// A file (mode 0600) of `ACCESS_KEY_ID SECRET_ACCESS_KEY` lines: every
    /// HTTP request must then carry a valid AWS Signature Version 4 for one
    /// of them.
    #[arg(long, value_name = "FILE", requires = "http")]
    pub http_credentials: Option<PathBuf>,
}

/// Where new code comes from: exactly one of `--code` and `--zip-file`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CodeSource {
    /// A directory or a .zip file on this host; the supervisor reads it (sent as
    /// an absolute path).
    #[arg(long, value_name = "DIR|ZIP")]
    pub code: Option<PathBuf>,
    /// A .zip file sent inline, base64-encoded (a `fileb://` prefix is accepted).
    #[arg(long, value_name = "FILE")]
    pub zip_file: Option<PathBuf>,
    /// A container image: an OCI image layout directory on this host,
    /// optionally `:TAG` (PackageType Image; no --runtime or --handler).
    #[arg(long, value_name = "DIR[:TAG]")]
    pub image: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CreateFunctionArgs {
    /// The function's name: letters, digits, '-' and '_', at most 64.
    pub name: String,
    /// The runtime: python3, nodejs or provided (none with --image).
    #[arg(long, required_unless_present = "image")]
    pub runtime: Option<String>,
    #[command(flatten)]
    pub code: CodeSource,
    /// The handler, `module.function` (none with --image).
    #[arg(
        long,
        value_name = "MODULE.FUNCTION",
        required_unless_present = "image"
    )]
    pub handler: Option<String>,
    /// With --image: overrides of the image's settings, as Lambda's
    /// ImageConfig JSON: {"EntryPoint":[…],"Command":[…],"WorkingDirectory":"…"}.
    #[arg(long, value_name = "JSON", requires = "image")]
    pub image_config: Option<String>,
    /// Memory in MB, 128–10240 (default 128).
    #[arg(long, visible_alias = "memory-size", value_name = "MB")]
    pub memory: Option<u32>,
    /// Timeout in seconds, 1–900 (default 3).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u32>,
    /// An environment variable; repeat for more.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,
    /// The size of /tmp in MB, 512–10240 (default 512).
    #[arg(long, value_name = "MB")]
    pub ephemeral_storage: Option<u32>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Layer version ARNs (up to 5), merged under /opt in this order.
    #[arg(long, num_args = 1.., value_name = "ARN")]
    pub layers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateFunctionCodeArgs {
    /// The function's name.
    pub name: String,
    #[command(flatten)]
    pub code: CodeSource,
}

#[derive(Debug, Args)]
pub struct UpdateFunctionConfigurationArgs {
    /// The function's name.
    pub name: String,
    #[arg(long)]
    pub runtime: Option<String>,
    #[arg(long, value_name = "MODULE.FUNCTION")]
    pub handler: Option<String>,
    #[arg(long, visible_alias = "memory-size", value_name = "MB")]
    pub memory: Option<u32>,
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u32>,
    /// An environment variable; repeat for more. Replaces the whole environment,
    /// as `aws lambda update-function-configuration --environment` does.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,
    /// Remove every environment variable.
    #[arg(long, conflicts_with = "env")]
    pub clear_env: bool,
    #[arg(long, value_name = "MB")]
    pub ephemeral_storage: Option<u32>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Layer version ARNs (up to 5), merged under /opt in this order;
    /// replaces the function's whole list.
    #[arg(long, num_args = 1.., value_name = "ARN")]
    pub layers: Vec<String>,
    /// Remove every layer.
    #[arg(long, conflicts_with = "layers")]
    pub clear_layers: bool,
    /// An image function's ImageConfig as JSON, replacing the current one
    /// (`{}` clears it).
    #[arg(long, value_name = "JSON")]
    pub image_config: Option<String>,
}

#[derive(Debug, Args)]
pub struct FunctionNameArg {
    /// The function's name.
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogTypeArg {
    #[value(name = "None")]
    None,
    #[value(name = "Tail")]
    Tail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InvocationTypeArg {
    /// Run now and print the result.
    #[value(name = "RequestResponse")]
    RequestResponse,
    /// Store the event durably and return 202 at once; it runs later, with
    /// retries.
    #[value(name = "Event")]
    Event,
    /// Check the request without running it (204).
    #[value(name = "DryRun")]
    DryRun,
}

impl From<InvocationTypeArg> for InvocationType {
    fn from(arg: InvocationTypeArg) -> InvocationType {
        match arg {
            InvocationTypeArg::RequestResponse => InvocationType::RequestResponse,
            InvocationTypeArg::Event => InvocationType::Event,
            InvocationTypeArg::DryRun => InvocationType::DryRun,
        }
    }
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The function's name.
    pub name: String,
    /// RequestResponse runs now; Event queues and answers 202; DryRun only
    /// checks (204).
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        default_value = "RequestResponse"
    )]
    pub invocation_type: InvocationTypeArg,
    /// Event only: a key of 1–256 bytes; the same key for the same function
    /// within the supervisor's --idempotency-window is not queued again.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// The event: JSON text, `@FILE` to read it from a file, `@-` from stdin
    /// (default `{}`).
    #[arg(long, value_name = "JSON|@FILE")]
    pub payload: Option<String>,
    /// `Tail` returns the last 4 KB of the invoke's log, base64, as LogResult.
    #[arg(long, value_enum, ignore_case = true, default_value = "None")]
    pub log_type: LogTypeArg,
    /// Base64 of a JSON object, handed to the function as context.client_context.
    #[arg(long, value_name = "BASE64")]
    pub client_context: Option<String>,
    /// Print the decoded log tail on stderr (implies --log-type Tail).
    #[arg(long)]
    pub show_log: bool,
    /// Write the function's response here instead of including it in the
    /// output (Event and DryRun have none: the file is left empty, as with aws).
    pub outfile: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The function's name.
    pub name: String,
    /// At most this many of the newest lines (the supervisor's default is 1000).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// Everything that can go wrong in a CLI run, each with its exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot connect to the supervisor at {}: {source}. Is `lambdalet serve` running \
         with that socket (set it with --socket or LAMBDALET_SOCKET), and may this user \
         open it (it is root-only by default)?",
        socket.display()
    )]
    Connect { socket: PathBuf, source: io::Error },
    #[error("lost the connection to the supervisor at {}: {source}", socket.display())]
    Connection { socket: PathBuf, source: io::Error },
    #[error(
        "the supervisor at {} closed the connection without answering (did it stop?)",
        socket.display()
    )]
    ClosedEarly { socket: PathBuf },
    #[error("unexpected answer from the supervisor: {0}")]
    Protocol(String),
    #[error("{}", render_wire_error(.0))]
    Service(WireError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write {}: {source}", path.display())]
    WriteOutput { path: PathBuf, source: io::Error },
    #[error("serve: {0}")]
    Serve(Box<dyn Error>),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Service(_) => exit::SERVICE_ERROR,
            CliError::Usage(_) => exit::USAGE,
            _ => exit::FAILURE,
        }
    }
}

/// `<ErrorKind>: <message>`, with Lambda's reason code when there is one.
fn render_wire_error(e: &WireError) -> String {
    match &e.reason {
        Some(reason) => format!("{}: {} (Reason: {reason})", e.kind.as_str(), e.message),
        None => format!("{}: {}", e.kind.as_str(), e.message),
    }
}

/// A request to send: an op and its parameters, already serialised.
#[derive(Debug)]
pub struct Request {
    pub op: &'static str,
    pub params: Box<RawValue>,
}

impl Request {
    fn new(op: &'static str, params: &impl Serialize) -> Request {
        Request {
            op,
            params: to_raw_value(params).expect("parameters always serialise"),
        }
    }
}

/// How to show a successful answer.
#[derive(Debug, PartialEq)]
enum Output {
    /// The result, pretty-printed.
    Json,
    /// Nothing (delete-function, as with aws).
    Quiet,
    /// Invoke metadata; the payload goes to `outfile` when there is one.
    Invoke {
        outfile: Option<PathBuf>,
        show_log: bool,
    },
    /// An Event (202) or DryRun (204) answer; `outfile` is written empty.
    Accepted { outfile: Option<PathBuf> },
    /// A function's asynchronous queue, one `key: value` per line.
    Queue,
    /// Log lines as text.
    Lines,
    /// A metrics snapshot in the Prometheus text format.
    Prometheus,
}

/// What a command line asks for.
#[derive(Debug)]
enum Action {
    Serve(ServeOptions, Option<crate::http::HttpOptions>),
    Call {
        socket: PathBuf,
        request: Request,
        output: Output,
    },
}

/// The entry point of the `lambdalet` binary; returns the exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version come here too, with status 0.
            let _ = e.print();
            return e.exit_code();
        }
    };
    run(cli, &mut io::stdout().lock(), &mut io::stderr().lock())
}

/// Run a parsed command line, writing to the given streams.
pub fn run(cli: Cli, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    match execute(cli, stdout, stderr) {
        Ok(()) => exit::SUCCESS,
        Err(e) => {
            let _ = writeln!(stderr, "lambdalet: {e}");
            e.exit_code()
        }
    }
}

fn execute(cli: Cli, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Result<(), CliError> {
    match action(cli)? {
        Action::Serve(options, http) => {
            if let Some(http) = http {
                let addr = crate::http::start(&http, options.socket.clone())
                    .map_err(|e| CliError::Serve(Box::new(e)))?;
                let _ = writeln!(stderr, "lambdalet: HTTP API on http://{addr}");
            }
            supervisor::serve(options).map_err(CliError::Serve)
        }
        Action::Call {
            socket,
            request,
            output,
        } => {
            let mut client = Client::connect(&socket)?;
            let result = client.call(request.op, &request.params)?;
            show(&result, &output, stdout, stderr)
        }
    }
}

/// Turn a command line into what it asks for, reading local files (`--payload
/// @FILE`, `--zip-file`) and checking what can be checked before sending.
fn action(cli: Cli) -> Result<Action, CliError> {
    let socket = cli.socket_path();
    let (request, output) = match cli.command {
        Command::Serve(args) => {
            let http = args.http.map(|addr| crate::http::HttpOptions {
                addr,
                credentials: args.http_credentials.clone(),
            });
            return Ok(Action::Serve(serve_options(args, socket), http));
        }
        Command::CreateFunction(args) => {
            let image_config = image_config_arg(args.image_config.as_deref())?;
            let params = protocol::CreateFunction {
                function_name: args.name,
                runtime: args.runtime.unwrap_or_default(),
                handler: args.handler.unwrap_or_default(),
                code: function_code(&args.code)?,
                package_type: args
                    .code
                    .image
                    .is_some()
                    .then(|| protocol::PACKAGE_IMAGE.to_owned()),
                image_config,
                memory_size: args.memory,
                timeout: args.timeout,
                environment: (!args.env.is_empty()).then(|| environment(args.env)),
                ephemeral_storage: args.ephemeral_storage.map(|size| EphemeralStorage { size }),
                description: args.description,
                layers: (!args.layers.is_empty()).then_some(args.layers),
            };
            (Request::new(op::CREATE_FUNCTION, &params), Output::Json)
        }
        Command::UpdateFunctionCode(args) => {
            let params = protocol::UpdateFunctionCode {
                function_name: args.name,
                code: function_code(&args.code)?,
            };
            (
                Request::new(op::UPDATE_FUNCTION_CODE, &params),
                Output::Json,
            )
        }
        Command::UpdateFunctionConfiguration(args) => {
            let environment = if args.clear_env {
                Some(Environment::default())
            } else {
                (!args.env.is_empty()).then(|| environment(args.env))
            };
            let params = protocol::UpdateFunctionConfiguration {
                function_name: args.name,
                runtime: args.runtime,
                handler: args.handler,
                memory_size: args.memory,
                timeout: args.timeout,
                environment,
                ephemeral_storage: args.ephemeral_storage.map(|size| EphemeralStorage { size }),
                description: args.description,
                layers: if args.clear_layers {
                    Some(Vec::new())
                } else {
                    (!args.layers.is_empty()).then_some(args.layers)
                },
                image_config: image_config_arg(args.image_config.as_deref())?,
            };
            (
                Request::new(op::UPDATE_FUNCTION_CONFIGURATION, &params),
                Output::Json,
            )
        }
        Command::GetFunction(args) => (
            Request::new(op::GET_FUNCTION, &function_name(args.name)),
            Output::Json,
        ),
        Command::ListFunctions => (
            Request::new(op::LIST_FUNCTIONS, &protocol::ListFunctions {}),
            Output::Json,
        ),
        Command::DeleteFunction(args) => (
            Request::new(op::DELETE_FUNCTION, &function_name(args.name)),
            Output::Quiet,
        ),
        Command::Invoke(args) => invoke(args)?,
        Command::PublishLayerVersion(args) => {
            let source = CodeSource {
                code: args.content.content,
                zip_file: args.content.zip,
                image: None,
            };
            let params = protocol::PublishLayerVersion {
                layer_name: args.name,
                description: args.description,
                content: function_code(&source)?,
                compatible_runtimes: (!args.compatible_runtimes.is_empty())
                    .then_some(args.compatible_runtimes),
            };
            (
                Request::new(op::PUBLISH_LAYER_VERSION, &params),
                Output::Json,
            )
        }
        Command::ListLayers(args) => (
            Request::new(
                op::LIST_LAYERS,
                &protocol::ListLayers {
                    compatible_runtime: args.compatible_runtime,
                },
            ),
            Output::Json,
        ),
        Command::ListLayerVersions(args) => (
            Request::new(
                op::LIST_LAYER_VERSIONS,
                &protocol::LayerName {
                    layer_name: args.name,
                    compatible_runtime: args.compatible_runtime,
                },
            ),
            Output::Json,
        ),
        Command::GetLayerVersion(args) => (
            Request::new(op::GET_LAYER_VERSION, &layer_version(args)),
            Output::Json,
        ),
        Command::DeleteLayerVersion(args) => (
            Request::new(op::DELETE_LAYER_VERSION, &layer_version(args)),
            Output::Quiet,
        ),
        Command::Logs(args) => {
            let params = protocol::GetLogs {
                function_name: args.name,
                limit: args.limit,
            };
            (Request::new(op::GET_LOGS, &params), Output::Lines)
        }
        Command::PutFunctionConcurrency(args) => {
            let params = protocol::PutFunctionConcurrency {
                function_name: args.name,
                reserved_concurrent_executions: args.reserved_concurrent_executions,
            };
            (
                Request::new(op::PUT_FUNCTION_CONCURRENCY, &params),
                Output::Json,
            )
        }
        Command::GetFunctionConcurrency(args) => (
            Request::new(op::GET_FUNCTION_CONCURRENCY, &function_name(args.name)),
            Output::Json,
        ),
        Command::DeleteFunctionConcurrency(args) => (
            Request::new(op::DELETE_FUNCTION_CONCURRENCY, &function_name(args.name)),
            Output::Quiet,
        ),
        Command::PutProvisionedConcurrencyConfig(args) => {
            let params = protocol::PutProvisionedConcurrencyConfig {
                function_name: args.name,
                qualifier: args.qualifier,
                provisioned_concurrent_executions: args.count,
            };
            (
                Request::new(op::PUT_PROVISIONED_CONCURRENCY_CONFIG, &params),
                Output::Json,
            )
        }
        Command::GetProvisionedConcurrencyConfig(args) => (
            Request::new(
                op::GET_PROVISIONED_CONCURRENCY_CONFIG,
                &function_qualifier(args.name),
            ),
            Output::Json,
        ),
        Command::DeleteProvisionedConcurrencyConfig(args) => (
            Request::new(
                op::DELETE_PROVISIONED_CONCURRENCY_CONFIG,
                &function_qualifier(args.name),
            ),
            Output::Quiet,
        ),
        Command::GetAccountSettings => (
            Request::new(op::GET_ACCOUNT_SETTINGS, &protocol::NoParams {}),
            Output::Json,
        ),
        Command::PutFunctionEventInvokeConfig(args) => (
            Request::new(
                op::PUT_FUNCTION_EVENT_INVOKE_CONFIG,
                &event_invoke_config(args),
            ),
            Output::Json,
        ),
        Command::UpdateFunctionEventInvokeConfig(args) => (
            Request::new(
                op::UPDATE_FUNCTION_EVENT_INVOKE_CONFIG,
                &event_invoke_config(args),
            ),
            Output::Json,
        ),
        Command::GetFunctionEventInvokeConfig(args) => (
            Request::new(
                op::GET_FUNCTION_EVENT_INVOKE_CONFIG,
                &function_qualifier(args.name),
            ),
            Output::Json,
        ),
        Command::DeleteFunctionEventInvokeConfig(args) => (
            Request::new(
                op::DELETE_FUNCTION_EVENT_INVOKE_CONFIG,
                &function_qualifier(args.name),
            ),
            Output::Quiet,
        ),
        Command::Queue(args) => (
            Request::new(op::GET_EVENT_QUEUE, &function_name(args.name)),
            if args.json {
                Output::Json
            } else {
                Output::Queue
            },
        ),
        Command::Metrics(args) => (
            Request::new(op::GET_METRICS, &protocol::NoParams {}),
            if args.json {
                Output::Json
            } else {
                Output::Prometheus
            },
        ),
    };
    Ok(Action::Call {
        socket,
        request,
        output,
    })
}

/// `invoke`: the checks that need no server come first, so a bad combination
/// is refused before anything is read or sent.
fn invoke(args: InvokeArgs) -> Result<(Request, Output), CliError> {
    let invocation_type = InvocationType::from(args.invocation_type);
    if let Some(key) = &args.idempotency_key {
        if invocation_type != InvocationType::Event {
            return Err(CliError::Usage(format!(
                "--idempotency-key needs --invocation-type Event: it keeps a repeated event \
                 from being queued twice, and a {invocation_type:?} invoke queues nothing"
            )));
        }
        if key.is_empty() || key.len() > protocol::MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(CliError::Usage(format!(
                "--idempotency-key must be 1 to {} bytes long (got {})",
                protocol::MAX_IDEMPOTENCY_KEY_BYTES,
                key.len()
            )));
        }
    }
    if args.show_log && invocation_type != InvocationType::RequestResponse {
        return Err(CliError::Usage(format!(
            "--show-log needs --invocation-type RequestResponse: {invocation_type:?} returns \
             no log (an event's log is in `lambdalet logs {}` once it has run)",
            args.name
        )));
    }
    let payload = match &args.payload {
        Some(text) => Some(read_payload(text, invocation_type)?),
        None => None,
    };
    let tail = args.show_log || args.log_type == LogTypeArg::Tail;
    let params = protocol::Invoke {
        function_name: args.name,
        invocation_type,
        log_type: if tail { LogType::Tail } else { LogType::None },
        client_context: args.client_context,
        payload,
        idempotency_key: args.idempotency_key,
    };
    let output = match invocation_type {
        InvocationType::RequestResponse => Output::Invoke {
            outfile: args.outfile,
            show_log: args.show_log,
        },
        InvocationType::Event | InvocationType::DryRun => Output::Accepted {
            outfile: args.outfile,
        },
    };
    Ok((Request::new(op::INVOKE, &params), output))
}

/// put- and update-function-event-invoke-config send the same shape; a
/// DestinationConfig only when a destination was given, so that Update
/// keeps the destinations it is not told about.
fn event_invoke_config(args: EventInvokeConfigArgs) -> protocol::PutFunctionEventInvokeConfig {
    let destination_config = (args.on_success.is_some() || args.on_failure.is_some()).then(|| {
        let on = |d: Option<String>| d.map(|destination| OnDestination { destination });
        DestinationConfig {
            on_success: on(args.on_success),
            on_failure: on(args.on_failure),
        }
    });
    protocol::PutFunctionEventInvokeConfig {
        function_name: args.name,
        qualifier: None,
        maximum_retry_attempts: args.maximum_retry_attempts,
        maximum_event_age_in_seconds: args.maximum_event_age_in_seconds,
        destination_config,
    }
}

fn serve_options(args: ServeArgs, socket: PathBuf) -> ServeOptions {
    ServeOptions {
        state_dir: args.state_dir,
        socket,
        cgroup_parent: args.cgroup_parent,
        python: args.python,
        node: args.node,
        keep_alive: Duration::from_secs(args.keep_alive),
        socket_mode: args.socket_mode,
        socket_group: args.socket_group,
        prewarm: args.prewarm,
        prewarm_node: args.prewarm_node,
        max_concurrency: args.max_concurrency,
        async_time_scale: args.async_time_scale,
        idempotency_window: Duration::from_secs(args.idempotency_window),
    }
}

fn function_name(name: String) -> protocol::FunctionName {
    protocol::FunctionName {
        function_name: name,
    }
}

fn function_qualifier(name: String) -> protocol::FunctionQualifier {
    protocol::FunctionQualifier {
        function_name: name,
        qualifier: None,
    }
}

fn environment(pairs: Vec<(String, String)>) -> Environment {
    // A repeated key keeps its last value, as a shell assignment would.
    Environment {
        variables: pairs.into_iter().collect::<BTreeMap<_, _>>(),
    }
}

/// `--code` becomes an absolute path (the supervisor resolves nothing relative
/// to the client's directory); `--zip-file` is read and sent inline.
fn layer_version(args: LayerVersionArgs) -> protocol::LayerVersionNumber {
    protocol::LayerVersionNumber {
        layer_name: args.name,
        version_number: args.version,
    }
}

fn function_code(source: &CodeSource) -> Result<FunctionCode, CliError> {
    if let Some(path) = &source.code {
        let absolute = path.canonicalize().map_err(|e| {
            CliError::Usage(format!(
                "--code {}: {e} (give a directory or a .zip file)",
                path.display()
            ))
        })?;
        let absolute = absolute.into_os_string().into_string().map_err(|p| {
            CliError::Usage(format!(
                "--code {}: the path is not valid UTF-8, which the protocol cannot carry",
                Path::new(&p).display()
            ))
        })?;
        return Ok(FunctionCode {
            zip_file: None,
            path: Some(absolute),
            image_uri: None,
        });
    }
    if let Some(image) = &source.image {
        return Ok(FunctionCode {
            zip_file: None,
            path: None,
            image_uri: Some(image_uri(image)?),
        });
    }
    let file = source
        .zip_file
        .as_ref()
        .expect("clap requires --code, --zip-file or --image");
    let file = match file.to_str().and_then(|s| s.strip_prefix("fileb://")) {
        Some(rest) => PathBuf::from(rest),
        None => file.clone(),
    };
    let bytes = std::fs::read(&file)
        .map_err(|e| CliError::Usage(format!("--zip-file {}: {e}", file.display())))?;
    Ok(FunctionCode {
        zip_file: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        path: None,
        image_uri: None,
    })
}

/// `--image-config JSON`: Lambda's ImageConfig.
fn image_config_arg(text: Option<&str>) -> Result<Option<protocol::ImageConfig>, CliError> {
    text.map(|text| {
        serde_json::from_str(text).map_err(|e| {
            CliError::Usage(format!(
                "--image-config: {e} (expected {{\"EntryPoint\":[…],\"Command\":[…],\"WorkingDirectory\":\"/…\"}})"
            ))
        })
    })
    .transpose()
}

/// `--image DIR[:TAG]` as an ImageUri: the directory made absolute (the
/// supervisor resolves nothing relative to the client), the tag kept.
fn image_uri(arg: &Path) -> Result<String, CliError> {
    let text = arg.to_str().ok_or_else(|| {
        CliError::Usage(
            "--image: the path is not valid UTF-8, which the protocol cannot carry".into(),
        )
    })?;
    let (dir, tag) = if arg.is_dir() {
        (text, None)
    } else {
        match text.rsplit_once(':') {
            Some((dir, tag)) if !tag.contains('/') => (dir, Some(tag)),
            _ => (text, None),
        }
    };
    let absolute = Path::new(dir).canonicalize().map_err(|e| {
        CliError::Usage(format!(
            "--image {text}: {e} (give an OCI image layout directory, optionally :TAG)"
        ))
    })?;
    let absolute = absolute.to_str().ok_or_else(|| {
        CliError::Usage(
            "--image: the path is not valid UTF-8, which the protocol cannot carry".into(),
        )
    })?;
    Ok(match tag {
        Some(tag) => format!("{absolute}:{tag}"),
        None => absolute.to_owned(),
    })
}

/// `--payload`: JSON text, `@FILE` or `@-`; must be valid JSON and fit the
/// invocation type's limit (an Event's is smaller).
fn read_payload(arg: &str, invocation_type: InvocationType) -> Result<Box<RawValue>, CliError> {
    let text = match arg.strip_prefix('@') {
        Some("-") => {
            let mut text = String::new();
            io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::Usage(format!("--payload @-: cannot read stdin: {e}")))?;
            text
        }
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| CliError::Usage(format!("--payload @{file}: {e}")))?,
        None => arg.to_owned(),
    };
    let text = text.trim();
    let (limit, kind) = match invocation_type {
        InvocationType::Event => (protocol::MAX_ASYNC_PAYLOAD_BYTES, "an asynchronous (Event)"),
        InvocationType::RequestResponse | InvocationType::DryRun => {
            (protocol::MAX_SYNC_PAYLOAD_BYTES, "a synchronous")
        }
    };
    if text.len() > limit {
        return Err(CliError::Usage(format!(
            "--payload is {} bytes; {kind} invoke accepts at most {limit} \
             (RequestTooLargeException)",
            text.len(),
        )));
    }
    serde_json::from_str::<Box<RawValue>>(text)
        .map_err(|e| CliError::Usage(format!("--payload is not valid JSON: {e}")))
}

/// The metadata `invoke` prints, in the order `aws lambda invoke` uses.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InvokeOutput<'a> {
    status_code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_result: Option<&'a str>,
    executed_version: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
}

fn show(
    result: &RawValue,
    output: &Output,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), CliError> {
    let stdout_error = |source| CliError::WriteOutput {
        path: PathBuf::from("stdout"),
        source,
    };
    match output {
        Output::Quiet => Ok(()),
        Output::Json => writeln!(stdout, "{}", json::pretty(result.get())).map_err(stdout_error),
        Output::Prometheus => {
            let snapshot: crate::metrics::Snapshot = parse_result(result)?;
            write!(stdout, "{}", crate::metrics::render_prometheus(&snapshot)).map_err(stdout_error)
        }
        Output::Lines => {
            let lines: LogLines = parse_result(result)?;
            for line in &lines.lines {
                writeln!(stdout, "{line}").map_err(stdout_error)?;
            }
            Ok(())
        }
        Output::Invoke { outfile, show_log } => {
            let result: InvokeResult = parse_result(result)?;
            if let Some(path) = outfile {
                std::fs::write(path, result.payload.get()).map_err(|source| {
                    CliError::WriteOutput {
                        path: path.clone(),
                        source,
                    }
                })?;
            }
            let metadata = InvokeOutput {
                status_code: result.status_code,
                function_error: result.function_error.as_deref(),
                log_result: result.log_result.as_deref(),
                executed_version: &result.executed_version,
                request_id: &result.request_id,
                payload: outfile.is_none().then_some(&*result.payload),
            };
            let text = serde_json::to_string(&metadata).expect("metadata always serialises");
            writeln!(stdout, "{}", json::pretty(&text)).map_err(stdout_error)?;
            if *show_log {
                if let Some(log) = &result.log_result {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(log)
                        .map_err(|e| CliError::Protocol(format!("LogResult is not base64: {e}")))?;
                    let _ = stderr.write_all(&bytes);
                }
            }
            Ok(())
        }
        Output::Accepted { outfile } => {
            let accepted: InvokeAccepted = parse_result(result)?;
            if let Some(path) = outfile {
                // An Event or DryRun answer has no payload; aws still
                // creates the file, empty.
                std::fs::write(path, b"").map_err(|source| CliError::WriteOutput {
                    path: path.clone(),
                    source,
                })?;
            }
            let text = serde_json::to_string(&accepted).expect("an answer always serialises");
            writeln!(stdout, "{}", json::pretty(&text)).map_err(stdout_error)
        }
        Output::Queue => {
            let queue: EventQueue = parse_result(result)?;
            write!(stdout, "{}", render_queue(&queue)).map_err(stdout_error)
        }
    }
}

/// `lambdalet queue NAME`: one `key: value` per line.
fn render_queue(q: &EventQueue) -> String {
    format!(
        "function: {}\ndepth: {}\nready: {}\nin-flight: {}\nretrying: {}\noldest-age: {:.2} s\n",
        q.function_name, q.depth, q.ready, q.in_flight, q.retrying, q.oldest_age_seconds
    )
}

fn parse_result<T: serde::de::DeserializeOwned>(result: &RawValue) -> Result<T, CliError> {
    serde_json::from_str(result.get()).map_err(|e| {
        CliError::Protocol(format!("the result does not have the expected shape: {e}"))
    })
}

/// `--env KEY=VALUE`: split at the first '='.
fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("'{s}': the variable name before '=' is empty")),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => Err(format!("'{s}': expected KEY=VALUE (there is no '=')")),
    }
}

/// `--async-time-scale`: a factor in (0, 1]. Above 1 would make Lambda's
/// timing slower, which nothing needs; 0 would retry at once, forever.
fn parse_time_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!(
            "'{s}' is not a time scale: give a number above 0 and at most 1 \
             (1 is Lambda's timing, 0.01 runs its one-minute retry delay in 0.6 s)"
        )),
    }
}

/// `--socket-mode 0660` (octal, an optional `0o` prefix).
fn parse_octal_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("'{s}' is not an octal file mode (e.g. 0600, 0660)")),
    }
}

#[cfg(test)]
mod tests;
