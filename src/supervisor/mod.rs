//! The supervisor: `lambdalet serve`. One mio event loop owns the registry,
//! the zygotes, every environment and every invocation; it never runs user
//! code (DESIGN.md § Processes).

mod concurrency;
mod env;
mod invoke;
pub mod logs;
pub mod pidfd;
mod queue;
mod server;
pub mod zygote;

use std::path::PathBuf;
use std::time::Duration;

/// Defaults, in one place.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lambdalet";
pub const DEFAULT_SOCKET: &str = "/run/lambdalet/lambdalet.sock";
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(600);
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// Blanks kept ready: enough for a few concurrent cold starts, few enough
/// that an idle host holds only some MB for them.
pub const DEFAULT_PREWARM: usize = 4;
/// `serve --prewarm-node`: node blanks hold a started node each (about 40 MB),
/// so fewer are kept, and only while a nodejs function exists.
pub const DEFAULT_PREWARM_NODE: usize = 2;
/// How long an Event invoke's idempotency key is remembered.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(3600);
pub use concurrency::{DEFAULT_MAX_CONCURRENCY, UNRESERVED_MIN};

/// `lambdalet serve` options.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub cgroup_parent: Option<PathBuf>,
    pub python: Option<PathBuf>,
    pub node: Option<PathBuf>,
    pub keep_alive: Duration,
    pub socket_mode: u32,
    pub socket_group: Option<String>,
    /// Blank environments kept ready for cold starts.
    pub prewarm: usize,
    /// Node.js blanks kept ready while a nodejs function exists.
    pub prewarm_node: usize,
    /// The account's concurrency limit: invocations in flight at once.
    pub max_concurrency: u32,
    /// Multiplies the asynchronous queue's clock: retry delays (Lambda's
    /// 1 and 2 minutes), throttle backoff and the maximum event age. 1 is
    /// Lambda's timing; tests use 0.01 to run in seconds.
    pub async_time_scale: f64,
    /// A second Event invoke with the same idempotency key within this
    /// window is not queued again.
    pub idempotency_window: Duration,
}

/// Run the supervisor until SIGTERM or SIGINT.
pub fn serve(opts: ServeOptions) -> Result<(), Box<dyn std::error::Error>> {
    server::Supervisor::new(opts)?.run()
}
