//! The HTTP front: `lambdalet serve --http ADDR:PORT` answers the AWS Lambda
//! Invoke API, the control plane calls lambdalet has, and function URLs over
//! HTTP/1.1, so that boto3, the AWS CLI and every SDK work with only their
//! endpoint URL changed (docs/http.md).
//!
//! It is one more client of the supervisor's socket: it runs in the serve
//! process on a tokio runtime of its own threads, and every request becomes
//! request lines on a small pool of pipelined connections ([`upstream`]).
//! The supervisor's mio loop stays the only owner of functions and
//! environments.
//!
//! Order of checks per request: the route's body limit (from Content-Length
//! before anything is buffered, then while reading), the signature (when
//! credentials are configured), then the operation.

mod api;
mod clock;
mod errors;
mod sigv4;
mod upstream;
mod url;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::sys::signal::{SigSet, SigmaskHow};

pub use errors::{status_of, ApiError};
pub use sigv4::{Credentials, CredentialsError};

use crate::protocol::{MAX_LINE_BYTES, MAX_SYNC_PAYLOAD_BYTES};

/// The largest control-plane request body: a request line's limit less room
/// for the envelope (a 50 MB zip as base64 fits).
pub const MAX_CONTROL_BODY_BYTES: usize = MAX_LINE_BYTES - 64 * 1024;
/// An over-limit body announced by Content-Length is read and discarded up to
/// this many bytes, so the client gets its 413 rather than a reset
/// connection; past it the connection is closed.
const MAX_DRAIN_BYTES: u64 = 128 * 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Request bodies held in memory at once, all connections together: a
/// request waits for its share before its body is read, so many large
/// uploads at once queue instead of exhausting memory. At least the largest
/// single body.
const MAX_BUFFERED_BODY_BYTES: u64 = 256 * 1024 * 1024;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A client must send its whole body within this time (70 MB at under
/// 1 MB/s is refused), so a slow one cannot hold the body budget.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// A client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The runtime's worker threads: the host has few cores, and the work per
/// request is parsing and copying.
const WORKER_THREADS: usize = 2;

/// `serve --http` and `--http-credentials`.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub addr: SocketAddr,
    /// `ACCESS_KEY_ID SECRET_ACCESS_KEY` lines; with them every request must
    /// be signed (SigV4). Required to listen on a non-loopback address.
    pub credentials: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("--http {addr} is not a loopback address: anyone who can reach it could deploy and run code, so give --http-credentials FILE (every request must then be signed with AWS Signature Version 4), or listen on 127.0.0.1")]
    NeedsCredentials { addr: SocketAddr },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("cannot listen on {addr} for --http: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the HTTP front's threads: {0}")]
    Runtime(std::io::Error),
}

/// What every request handler shares.
pub struct State {
    upstream: upstream::Upstream,
    credentials: Option<Credentials>,
    /// KiB of request bodies that may be held at once.
    body_budget: tokio::sync::Semaphore,
}

/// Bind `opts.addr` and serve it on threads of their own, as a client of the
/// supervisor's socket at `socket` (connected on first use, so this may run
/// before the supervisor listens). Returns the address bound (port 0 picks
/// one). Errors are found here, before the supervisor starts.
pub fn start(opts: &HttpOptions, socket: PathBuf) -> Result<SocketAddr, HttpError> {
    let credentials = opts
        .credentials
        .as_deref()
        .map(Credentials::load)
        .transpose()?;
    if credentials.is_none() && !opts.addr.ip().is_loopback() {
        return Err(HttpError::NeedsCredentials { addr: opts.addr });
    }
    let listener = std::net::TcpListener::bind(opts.addr).map_err(|source| HttpError::Bind {
        addr: opts.addr,
        source,
    })?;
    let bind_err = |source| HttpError::Bind {
        addr: opts.addr,
        source,
    };
    listener.set_nonblocking(true).map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let state = Arc::new(State {
        upstream: upstream::Upstream::new(socket),
        credentials,
        body_budget: tokio::sync::Semaphore::new((MAX_BUFFERED_BODY_BYTES / 1024) as usize),
    });

    // The supervisor takes SIGTERM and SIGINT through a signalfd, blocking them
    // in its own thread only; a thread that left them unblocked would get them
    // and die of the default action, taking the supervisor down uncleanly
    // (signal(7): a process-directed signal goes to any thread not blocking
    // it). So every thread of this front blocks every signal: threads inherit
    // the mask of the thread that creates them.
    let all = SigSet::all();
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut old))
        .map_err(|e| HttpError::Runtime(e.into()))?;
    let spawned = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("lambdalet-http")
        .enable_all()
        .build()
        .and_then(|rt| {
            std::thread::Builder::new()
                .name("lambdalet-http".into())
                .spawn(move || rt.block_on(accept_loop(listener, state)))
        });
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)
        .map_err(|e| HttpError::Runtime(e.into()))?;
    spawned.map_err(HttpError::Runtime)?;
    Ok(local)
}

async fn accept_loop(listener: std::net::TcpListener, state: Arc<State>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lambdalet http: cannot serve the listener: {e}");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: wait rather than spin.
                eprintln!("lambdalet http: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, peer, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

async fn handle(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = match run(state, peer, req, &request_id).await {
        Ok(r) => r,
        Err(e) => e.response(&request_id),
    };
    if !resp.headers().contains_key("x-amzn-RequestId") {
        resp.headers_mut().insert(
            "x-amzn-RequestId",
            request_id.parse().expect("a uuid is a header value"),
        );
    }
    resp
}

async fn run(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (parts, body) = req.into_parts();
    if state.credentials.is_some() {
        sigv4::precheck(&parts)?;
    }
    let path = parts.uri.path().to_owned();
    let url = path.strip_prefix("/url/");
    let limit = if url.is_some() || path.ends_with("/invocations") {
        MAX_SYNC_PAYLOAD_BYTES
    } else {
        MAX_CONTROL_BODY_BYTES
    };
    let (body, _budget) = read_body(state, &parts, body, limit, url.is_none()).await?;
    if let Some(creds) = &state.credentials {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        sigv4::verify(creds, &parts, &body, now)?;
    }
    match url {
        Some(rest) => url::handle(state, &parts, rest, body, peer, request_id).await,
        None => api::route(state, &parts, body).await,
    }
}

/// Read the body, refusing one over `limit` before buffering it: from
/// Content-Length at once, or as soon as a chunked body passes the limit;
/// either way the rest is drained, not kept, so the client can read its 413.
/// The permit returned holds the body's share of the budget: keep it as long
/// as the body.
async fn read_body<'a>(
    state: &'a State,
    parts: &Parts,
    body: Incoming,
    limit: usize,
    is_api: bool,
) -> Result<(Bytes, tokio::sync::SemaphorePermit<'a>), ApiError> {
    let too_large = |len: Option<u64>| {
        let has = len.map_or(String::new(), |n| {
            format!(" (the request body has {n} bytes)")
        });
        if is_api && limit == MAX_SYNC_PAYLOAD_BYTES {
            ApiError::too_large(format!(
                "Request must be smaller than {limit} bytes for the InvokeFunction operation{has}"
            ))
        } else {
            ApiError::too_large(format!(
                "Request must be smaller than {limit} bytes for this operation{has}"
            ))
        }
    };
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&n| n > limit as u64) {
        if len <= MAX_DRAIN_BYTES {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain(body)).await;
        }
        return Err(too_large(Some(len)));
    }
    // The share: the declared length, or the limit when it is not declared.
    let kib = declared.unwrap_or(limit as u64).div_ceil(1024).max(1) as u32;
    let permit = state
        .body_budget
        .acquire_many(kib)
        .await
        .expect("the budget is never closed");
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, collect(body, limit));
    let Ok(read) = read.await else {
        return Err(ApiError::new(
            hyper::StatusCode::REQUEST_TIMEOUT,
            "RequestTimeoutException",
            format!(
                "the request body did not arrive within {} s: send it faster, or a smaller one",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ));
    };
    match read {
        Ok(Collected::Whole(bytes)) => Ok((bytes, permit)),
        Ok(Collected::TooLarge(seen)) => Err(too_large((seen <= MAX_DRAIN_BYTES).then_some(seen))),
        Err(e) => Err(ApiError::bad_content(format!(
            "could not read the request body: {e}"
        ))),
    }
}

enum Collected {
    Whole(Bytes),
    /// Over the limit: only the first `limit` bytes were kept, the rest read
    /// and discarded; how many bytes were seen.
    TooLarge(u64),
}

/// Collect a body of at most `limit` bytes. A body (chunked: of no declared
/// length) that passes the limit is read on and discarded, up to
/// MAX_DRAIN_BYTES, so its client can still read the 413.
async fn collect(mut body: Incoming, limit: usize) -> Result<Collected, hyper::Error> {
    let mut kept = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        seen += data.len() as u64;
        if seen > MAX_DRAIN_BYTES {
            break;
        }
        if seen <= limit as u64 {
            kept.extend_from_slice(&data);
        }
    }
    Ok(if seen > limit as u64 {
        Collected::TooLarge(seen)
    } else {
        Collected::Whole(Bytes::from(kept))
    })
}

/// Read a body to its end, keeping nothing.
async fn drain(mut body: Incoming) {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return;
        }
    }
}
