//! A blocking client of the supervisor's socket: one request line out, one
//! response line back (docs/protocol.md).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::value::RawValue;

use super::CliError;
use crate::protocol::{OutgoingRequest, ResponseLine};

pub struct Client {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Client, CliError> {
        let stream = UnixStream::connect(socket).map_err(|source| CliError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
        let writer = stream.try_clone().map_err(|source| CliError::Connection {
            socket: socket.to_path_buf(),
            source,
        })?;
        Ok(Client {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        })
    }

    /// Send one request and wait for its response. Returns the `result` (JSON
    /// `null` when the supervisor sent none) or the supervisor's error.
    pub fn call(&mut self, op: &str, params: &RawValue) -> Result<Box<RawValue>, CliError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&OutgoingRequest {
            id: id.into(),
            op,
            params,
        })
        .expect("a request always serialises");
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .and_then(|()| self.writer.flush())
            .map_err(|e| self.lost(e))?;

        // No length limit here: the supervisor bounds what it sends (a sync
        // payload is at most 6 MB), and this client holds one answer at a time.
        let mut response = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut response)
            .map_err(|e| self.lost(e))?;
        if n == 0 || response.last() != Some(&b'\n') {
            return Err(CliError::ClosedEarly {
                socket: self.socket.clone(),
            });
        }
        parse_response(&response, id)
    }

    fn lost(&self, source: io::Error) -> CliError {
        CliError::Connection {
            socket: self.socket.clone(),
            source,
        }
    }
}

/// Check a response line against the request id it answers.
pub fn parse_response(line: &[u8], id: u64) -> Result<Box<RawValue>, CliError> {
    let response: ResponseLine = serde_json::from_slice(line).map_err(|e| {
        CliError::Protocol(format!(
            "not a response line ({e}): {}",
            String::from_utf8_lossy(&line[..line.len().min(200)]).trim_end()
        ))
    })?;
    let ours = response.id == id;
    match (response.error, response.result) {
        // An error with a null id answers a line the supervisor could not read
        // far enough to find its id (too long, not JSON): it is ours all the same,
        // since this client has one request in flight.
        (Some(error), _) if ours || response.id.is_null() => Err(CliError::Service(error)),
        (None, result) if ours => Ok(result
            .unwrap_or_else(|| RawValue::from_string("null".to_owned()).expect("null is JSON"))),
        _ => Err(CliError::Protocol(format!(
            "the response has id {} but the request had id {id}",
            response.id
        ))),
    }
}
