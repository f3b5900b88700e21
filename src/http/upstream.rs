//! The HTTP front's connections to the supervisor's socket: a small pool of
//! pipelined connections (docs/protocol.md § Pipelining). Every HTTP request
//! becomes one request line on one of them; responses are matched to their
//! waiting callers by `id`, so a slow invoke never holds up a quick call sent
//! after it on the same connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{OutgoingRequest, ResponseLine, WireError};

/// Connections kept to the supervisor. Each is pipelined; a few spread the
/// work of reading and writing lines over the runtime's threads.
const POOL_SIZE: usize = 4;

type Answer = Result<Box<RawValue>, WireError>;

/// Requests in flight on one connection, by id. `open` turns false when the
/// connection breaks: its waiters are answered and no new one registers.
struct Pending {
    open: bool,
    waiters: HashMap<u64, oneshot::Sender<Answer>>,
}

struct Conn {
    lines: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Mutex<Pending>>,
}

/// The pool. Connections are made on first use and again after one breaks
/// (a restarted supervisor is picked up without restarting the front).
pub struct Upstream {
    socket: PathBuf,
    slots: Vec<tokio::sync::Mutex<Option<Conn>>>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
}

impl Upstream {
    pub fn new(socket: PathBuf) -> Upstream {
        Upstream {
            socket,
            slots: (0..POOL_SIZE)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// Send one request and wait for its answer: the `result` (JSON `null`
    /// when there is none) or the supervisor's error. A connection that cannot
    /// be made or breaks is a `ServiceException`: the request may be retried.
    pub async fn call(&self, op: &str, params: &impl Serialize) -> Answer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = serde_json::to_vec(&OutgoingRequest {
            id: id.into(),
            op,
            params,
        })
        .map_err(|e| WireError::service(format!("cannot encode the {op} request: {e}")))?;
        line.push(b'\n');

        let (tx, rx) = oneshot::channel();
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        {
            let mut conn = self.slots[slot].lock().await;
            let usable = conn
                .as_ref()
                .is_some_and(|c| c.pending.lock().expect("pending lock").open);
            if !usable {
                *conn = Some(self.connect().await?);
            }
            let c = conn.as_ref().expect("connected above");
            c.pending
                .lock()
                .expect("pending lock")
                .waiters
                .insert(id, tx);
            if c.lines.send(line).is_err() {
                c.pending.lock().expect("pending lock").waiters.remove(&id);
                return Err(lost(&self.socket));
            }
        }
        rx.await.map_err(|_| lost(&self.socket))?
    }

    async fn connect(&self) -> Result<Conn, WireError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            WireError::service(format!(
                "the HTTP front cannot reach the supervisor's socket {}: {e} (is `lambdalet serve` still starting or stopping?)",
                self.socket.display()
            ))
        })?;
        let (read, mut write) = stream.into_split();
        let pending = Arc::new(Mutex::new(Pending {
            open: true,
            waiters: HashMap::new(),
        }));
        let (lines, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();

        // The writer: lines in the order they were queued.
        tokio::spawn(async move {
            while let Some(line) = queue.recv().await {
                if write.write_all(&line).await.is_err() {
                    break;
                }
            }
        });

        // The reader: each response to whoever waits for its id.
        let socket = self.socket.clone();
        let readers_pending = pending.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(read);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf).await {
                    Ok(n) if n > 0 && buf.last() == Some(&b'\n') => {}
                    _ => break,
                }
                let Ok(response) = serde_json::from_slice::<ResponseLine>(&buf) else {
                    eprintln!(
                        "lambdalet http: an answer from the supervisor is not a response line: {}",
                        String::from_utf8_lossy(&buf[..buf.len().min(200)]).trim_end()
                    );
                    continue;
                };
                let Some(id) = response.id.as_u64() else {
                    // Only lines the supervisor could not read have no id; this
                    // front sends compact, valid JSON, so it is a bug if seen.
                    eprintln!(
                        "lambdalet http: the supervisor answered a line it could not read: {:?}",
                        response.error
                    );
                    continue;
                };
                let waiter = readers_pending
                    .lock()
                    .expect("pending lock")
                    .waiters
                    .remove(&id);
                if let Some(waiter) = waiter {
                    let answer = match (response.error, response.result) {
                        (Some(e), _) => Err(e),
                        (None, Some(r)) => Ok(r),
                        (None, None) => {
                            Ok(RawValue::from_string("null".to_owned()).expect("null is JSON"))
                        }
                    };
                    let _ = waiter.send(answer);
                }
            }
            let mut p = readers_pending.lock().expect("pending lock");
            p.open = false;
            for (_, waiter) in p.waiters.drain() {
                let _ = waiter.send(Err(lost(&socket)));
            }
        });
        Ok(Conn { lines, pending })
    }
}

fn lost(socket: &std::path::Path) -> WireError {
    WireError::service(format!(
        "the connection to the supervisor's socket {} broke before it answered (is it stopping?); send the request again",
        socket.display()
    ))
}
