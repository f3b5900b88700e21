//! Function logs, for the supervisor's event loop: cheap, synchronous, bounded.
//!
//! - [`LineSplitter`] turns the bytes an environment writes on its log pipe into
//!   lines, holding at most one partial line of bounded length.
//! - [`TailBuffer`] keeps the last 4 KB of one invoke's log for `LogType: Tail`
//!   (Lambda's `X-Amz-Log-Result`).
//! - [`LogStore`] appends lines to `<dir>/<function>.log` and keeps one rotated
//!   generation, `<function>.log.1`, so a function that floods its output uses at
//!   most `max_bytes_per_function` of disk, whatever it writes.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// The disk a function's logs may use: the current file and the rotated one together.
pub const DEFAULT_MAX_BYTES_PER_FUNCTION: u64 = 8 * 1024 * 1024;
/// The smallest `max_bytes_per_function` [`LogStore::open`] accepts.
pub const MIN_MAX_BYTES_PER_FUNCTION: u64 = 64;
/// Lambda's `LogResult`: the last 4 KB of the invoke's log.
pub const TAIL_BYTES: usize = 4096;
/// Log files kept open at once; past it the least recently written is closed
/// (it is reopened on its next append), so thousands of functions cost no more
/// than this many descriptors.
const MAX_OPEN_FILES: usize = 128;
/// How much of a file [`LogStore::tail`] reads per step, from the end backwards.
const TAIL_CHUNK: u64 = 64 * 1024;

/// Per-function log files below one directory.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    max_bytes: u64,
    open: HashMap<String, OpenLog>,
    /// A clock for picking the least recently written file to close.
    tick: u64,
}

#[derive(Debug)]
struct OpenLog {
    file: File,
    /// The current file's length (it is opened O_APPEND and only we write it).
    len: u64,
    last_used: u64,
}

impl LogStore {
    /// Use `dir` (created, mode 0700, if missing: logs can hold secrets a
    /// function prints). Files found there from an earlier run are kept.
    pub fn open(dir: &Path, max_bytes_per_function: u64) -> io::Result<LogStore> {
        if max_bytes_per_function < MIN_MAX_BYTES_PER_FUNCTION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the log limit per function must be at least {MIN_MAX_BYTES_PER_FUNCTION} \
                     bytes, not {max_bytes_per_function}"
                ),
            ));
        }
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(LogStore {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes_per_function,
            open: HashMap::new(),
            tick: 0,
        })
    }

    /// Append each line and a '\n'. Lines should hold no '\n' ([`LineSplitter`]
    /// makes sure of that); a line longer than half the limit is cut to fit.
    ///
    /// The current file is rotated to `.log.1` (replacing the previous one)
    /// before it would grow past half the limit, so the two files together stay
    /// within `max_bytes_per_function`.
    pub fn append(&mut self, function: &str, lines: &[&str]) -> io::Result<()> {
        check_name(function)?;
        if lines.is_empty() {
            return Ok(());
        }
        let half = self.max_bytes / 2;
        let (current, rotated) = self.paths(function);
        let log = self.handle(function, &current)?;
        let result = append_lines(log, lines, half, &current, &rotated);
        if result.is_err() {
            // A failed write leaves the length unknown: reopen (and re-measure)
            // on the next append.
            self.open.remove(function);
        }
        result
    }

    /// The newest `limit` lines of the function's log, oldest first, read from
    /// the end of the current file and, if that is not enough, of the rotated
    /// one. A function that never logged has no lines.
    pub fn tail(&self, function: &str, limit: usize) -> io::Result<Vec<String>> {
        check_name(function)?;
        let mut newest_first = Vec::new();
        let (current, rotated) = self.paths(function);
        for path in [&current, &rotated] {
            if newest_first.len() >= limit {
                break;
            }
            read_lines_backwards(path, limit, &mut newest_first)?;
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    /// Forget a function's logs: close its file and delete both files.
    pub fn remove(&mut self, function: &str) -> io::Result<()> {
        check_name(function)?;
        self.open.remove(function);
        let (current, rotated) = self.paths(function);
        for path in [current, rotated] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The bytes a function's logs use on disk now.
    pub fn disk_usage(&self, function: &str) -> io::Result<u64> {
        check_name(function)?;
        let (current, rotated) = self.paths(function);
        let mut total = 0;
        for path in [current, rotated] {
            match fs::metadata(&path) {
                Ok(meta) => total += meta.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    fn paths(&self, function: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{function}.log")),
            self.dir.join(format!("{function}.log.1")),
        )
    }

    /// The open file of `function`, opening it (and closing the least recently
    /// written one if too many are open).
    fn handle(&mut self, function: &str, current: &Path) -> io::Result<&mut OpenLog> {
        self.tick += 1;
        let tick = self.tick;
        if !self.open.contains_key(function) {
            if self.open.len() >= MAX_OPEN_FILES {
                let oldest = self
                    .open
                    .iter()
                    .min_by_key(|(_, log)| log.last_used)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    self.open.remove(&oldest);
                }
            }
            let file = open_for_append(current)?;
            let len = file.metadata()?.len();
            self.open.insert(
                function.to_owned(),
                OpenLog {
                    file,
                    len,
                    last_used: tick,
                },
            );
        }
        let log = self.open.get_mut(function).expect("inserted above");
        log.last_used = tick;
        Ok(log)
    }
}

fn append_lines(
    log: &mut OpenLog,
    lines: &[&str],
    half: u64,
    current: &Path,
    rotated: &Path,
) -> io::Result<()> {
    let mut buf = Vec::new();
    for line in lines {
        // Keep every line, however long, within one file of half the limit.
        let line = clip(line, (half - 1) as usize);
        let need = line.len() as u64 + 1;
        if log.len + buf.len() as u64 + need > half {
            log.file.write_all(&buf)?;
            log.len += buf.len() as u64;
            buf.clear();
            if log.len > 0 {
                // rename(2) replaces the old generation atomically.
                fs::rename(current, rotated)?;
                log.file = open_for_append(current)?;
                log.len = 0;
            }
        }
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    log.file.write_all(&buf)?;
    log.len += buf.len() as u64;
    Ok(())
}

fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Push the lines of `path` onto `newest_first`, last line first, until it
/// holds `limit` lines or the file is exhausted. Reads the file from its end
/// in chunks, so a short tail of a big file costs one or two reads.
fn read_lines_backwards(
    path: &Path,
    limit: usize,
    newest_first: &mut Vec<String>,
) -> io::Result<()> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut pos = len;
    // The bytes after `pos` that do not yet make a whole line: the end of a line
    // whose start is further back.
    let mut pending: Vec<u8> = Vec::new();
    let mut at_end = true;
    while pos > 0 && newest_first.len() < limit {
        let n = TAIL_CHUNK.min(pos);
        pos -= n;
        let mut data = vec![0u8; n as usize];
        file.read_exact_at(&mut data, pos)?;
        data.extend_from_slice(&pending);
        if at_end {
            // The file's final '\n' ends the last line; it does not start a new one.
            if data.last() == Some(&b'\n') {
                data.pop();
            }
            at_end = false;
        }
        while newest_first.len() < limit {
            let Some(newline) = data.iter().rposition(|&b| b == b'\n') else {
                break;
            };
            newest_first.push(String::from_utf8_lossy(&data[newline + 1..]).into_owned());
            data.truncate(newline);
        }
        pending = data;
    }
    if pos == 0 && len > 0 && newest_first.len() < limit {
        // What is left is the file's first line.
        newest_first.push(String::from_utf8_lossy(&pending).into_owned());
    }
    Ok(())
}

/// Function names become file names: allow only what the registry allows
/// (`[A-Za-z0-9_-]{1,64}`), so no name can reach outside the directory.
fn check_name(function: &str) -> io::Result<()> {
    let valid = !function.is_empty()
        && function.len() <= 64
        && function
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{function}' is not a function name ([A-Za-z0-9_-]{{1,64}})"),
        ))
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The longest suffix of `s` of at most `max` bytes that starts on a char boundary.
fn clip_front(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Splits a byte stream (an environment's stdout and stderr) into lines.
///
/// A line ends at '\n' (a '\r' before it is dropped); bytes that are not UTF-8
/// become U+FFFD. A line longer than `max_line` bytes is emitted in pieces of
/// at most `max_line` bytes (cut on a char boundary when the bytes are UTF-8),
/// so the splitter never holds more than about `max_line` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    max_line: usize,
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> LineSplitter {
        LineSplitter {
            max_line: max_line.max(4),
            partial: Vec::new(),
        }
    }

    /// Add bytes; append each line they complete to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    self.add(&bytes[..newline], out);
                    self.emit_partial(out);
                    bytes = &bytes[newline + 1..];
                }
                None => {
                    self.add(bytes, out);
                    bytes = &[];
                }
            }
        }
    }

    /// Emit the unterminated rest as a line (at the end of an invoke, or when
    /// the pipe closes).
    pub fn flush(&mut self, out: &mut Vec<String>) {
        if !self.partial.is_empty() {
            self.emit_partial(out);
        }
    }

    /// Whether bytes of an unterminated line are held.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Add bytes that hold no '\n', emitting full pieces of an over-long line.
    fn add(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        loop {
            let room = self.max_line + 1 - self.partial.len().min(self.max_line + 1);
            let take = room.min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            // Wait with the cut while the line might be exactly `max_line` bytes
            // with a '\r' before its '\n'.
            let over = self.partial.len() > self.max_line
                && !(self.partial.len() == self.max_line + 1
                    && self.partial.last() == Some(&b'\r')
                    && bytes.is_empty());
            if !over {
                if bytes.is_empty() {
                    return;
                }
                continue;
            }
            let cut = utf8_cut(&self.partial, self.max_line);
            out.push(String::from_utf8_lossy(&self.partial[..cut]).into_owned());
            self.partial.drain(..cut);
        }
    }

    fn emit_partial(&mut self, out: &mut Vec<String>) {
        if self.partial.last() == Some(&b'\r') {
            self.partial.pop();
        }
        out.push(String::from_utf8_lossy(&self.partial).into_owned());
        self.partial.clear();
    }
}

/// Where to cut `bytes` at or before `max`: before a UTF-8 sequence that `max`
/// would split (at most 3 bytes back), else at `max`.
fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    let is_continuation = |b: u8| b & 0b1100_0000 == 0b1000_0000;
    let mut cut = max;
    while cut > 0 && max - cut < 3 && is_continuation(bytes[cut]) {
        cut -= 1;
    }
    if cut == 0 || is_continuation(bytes[cut]) {
        // Not UTF-8 there: any cut is as good as another.
        max
    } else {
        cut
    }
}

/// The last [`TAIL_BYTES`] of one invoke's log (START … REPORT), for Lambda's
/// `LogResult` when the caller asked for `LogType: Tail`.
#[derive(Debug, Default)]
pub struct TailBuffer {
    text: String,
}

impl TailBuffer {
    pub fn new() -> TailBuffer {
        TailBuffer::default()
    }

    /// Add a line (a '\n' is added after it).
    pub fn push_line(&mut self, line: &str) {
        if line.len() >= TAIL_BYTES {
            self.text.clear();
            self.text.push_str(clip_front(line, TAIL_BYTES - 1));
        } else {
            self.text.push_str(line);
        }
        self.text.push('\n');
        // Compact only past twice the size, so a flood of short lines moves
        // each byte a bounded number of times.
        if self.text.len() > 2 * TAIL_BYTES {
            let keep = clip_front(&self.text, TAIL_BYTES).len();
            self.text.drain(..self.text.len() - keep);
        }
    }

    /// The kept text: at most [`TAIL_BYTES`] bytes, starting on a char boundary.
    pub fn as_str(&self) -> &str {
        clip_front(&self.text, TAIL_BYTES)
    }

    /// The `LogResult`: the kept text, base64.
    pub fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, &mut out);
        }
        splitter.flush(&mut out);
        out
    }

    #[test]
    fn store_rotation_bounds_disk_under_a_flood() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 * 1024;
        let mut store = LogStore::open(dir.path(), max).unwrap();
        let mut batch = Vec::new();
        for i in 0..100_000u32 {
            batch.push(format!(
                "line {i:06} of a function that prints far too much"
            ));
            if batch.len() == 100 {
                let lines: Vec<&str> = batch.iter().map(String::as_str).collect();
                store.append("flood", &lines).unwrap();
                batch.clear();
                assert!(store.disk_usage("flood").unwrap() <= max);
            }
        }
        let usage = store.disk_usage("flood").unwrap();
        assert!(usage <= max && usage > max / 2 - 100, "{usage}");
        let tail = store.tail("flood", 3).unwrap();
        assert_eq!(
            tail,
            [99_997, 99_998, 99_999]
                .map(|i| format!("line {i:06} of a function that prints far too much"))
        );
    }

    #[test]
    fn store_tail_is_in_order_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), 200).unwrap();
        for i in 0..60 {
            store.append("f", &[&format!("{i:03}")]).unwrap();
        }
        // 4 bytes a line, at most 100 bytes a file: 25 lines each. Line 25
        // rotated 0..=24 away, line 50 replaced them with 25..=49 in .1; the
        // current file holds 50..=59.
        let all = store.tail("f", 1000).unwrap();
        let expected: Vec<String> = (25..60).map(|i| format!("{i:03}")).collect();
        assert_eq!(all, expected);
        assert_eq!(
            store.tail("f", 12).unwrap(),
            expected[expected.len() - 12..]
        );
        assert_eq!(store.tail("f", 2).unwrap(), ["058", "059"]);
        assert!(store.tail("f", 0).unwrap().is_empty());
    }

    #[test]
    fn store_tail_reads_many_chunks_and_empty_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), 4 * 1024 * 1024).unwrap();
        let long = "x".repeat(100_000); // longer than one read chunk
        store.append("g", &["first", "", &long, "last"]).unwrap();
        assert_eq!(store.tail("g", 10).unwrap(), ["first", "", &long, "last"]);
        assert_eq!(store.tail("g", 2).unwrap(), [long.as_str(), "last"]);
    }

    #[test]
    fn store_survives_reopen_and_remove_deletes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path(), 100).unwrap();
            for i in 0..30 {
                store.append("h", &[&format!("{i:02}")]).unwrap();
            }
        }
        let mut store = LogStore::open(dir.path(), 100).unwrap();
        store.append("h", &["30"]).unwrap();
        assert_eq!(store.tail("h", 2).unwrap(), ["29", "30"]);
        assert!(dir.path().join("h.log.1").exists());
        store.remove("h").unwrap();
        assert!(!dir.path().join("h.log").exists());
        assert!(!dir.path().join("h.log.1").exists());
        assert!(store.tail("h", 10).unwrap().is_empty());
        store.remove("h").unwrap();
        // Appending again after removal starts a fresh file.
        store.append("h", &["again"]).unwrap();
        assert_eq!(store.tail("h", 10).unwrap(), ["again"]);
    }

    #[test]
    fn store_clips_a_line_longer_than_half_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), 100).unwrap();
        let long = "é".repeat(100);
        store.append("c", &["before", &long]).unwrap();
        assert!(store.disk_usage("c").unwrap() <= 100);
        let tail = store.tail("c", 10).unwrap();
        assert_eq!(tail[0], "before");
        assert_eq!(tail[1], "é".repeat(24)); // 48 bytes + '\n' within 50
    }

    #[test]
    fn store_rejects_names_that_are_not_function_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), 1024).unwrap();
        for bad in ["", "../etc/passwd", "a/b", ".hidden", &"x".repeat(65)] {
            let err = store.append(bad, &["x"]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        assert!(LogStore::open(dir.path(), 10).is_err());
    }

    #[test]
    fn store_closes_least_recently_used_files_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), 1024).unwrap();
        for i in 0..MAX_OPEN_FILES + 10 {
            store.append(&format!("f{i}"), &["hello"]).unwrap();
        }
        assert_eq!(store.open.len(), MAX_OPEN_FILES);
        assert!(!store.open.contains_key("f0"));
        store.append("f0", &["again"]).unwrap();
        assert_eq!(store.tail("f0", 10).unwrap(), ["hello", "again"]);
    }

    #[test]
    fn splitter_joins_partial_chunks_and_strips_cr() {
        assert_eq!(
            split_all(100, &[b"ab", b"c\nd", b"e\r\n\r\nf\r", b"\ng"]),
            ["abc", "de", "", "f", "g"]
        );
        // A lone '\r' inside a line stays.
        assert_eq!(split_all(100, &[b"a\rb\n"]), ["a\rb"]);
        // Nothing pending: flush adds nothing.
        assert!(split_all(100, &[b"x\n"]) == ["x"]);
    }

    #[test]
    fn splitter_cuts_long_lines_into_bounded_pieces() {
        assert_eq!(
            split_all(4, &[b"abcdefghij\nk\n"]),
            ["abcd", "efgh", "ij", "k"]
        );
        // Exactly max_line bytes, with or without '\r': one line, no empty piece.
        assert_eq!(split_all(4, &[b"abcd\n"]), ["abcd"]);
        assert_eq!(split_all(4, &[b"abcd\r", b"\n"]), ["abcd"]);
        // Byte by byte gives the same lines as all at once.
        let input = b"0123456789\r\nshort\n\nlonger line here";
        let whole = split_all(5, &[input]);
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(split_all(5, &bytewise), whole);
        // Memory stays bounded however long the line.
        let mut splitter = LineSplitter::new(16);
        let mut out = Vec::new();
        for _ in 0..1000 {
            splitter.push(&[b'y'; 1000], &mut out);
            assert!(splitter.partial.len() <= 17);
        }
        assert!(out.iter().all(|l| l.len() == 16));
    }

    #[test]
    fn splitter_cuts_on_char_boundaries_and_replaces_invalid_bytes() {
        // With max_line 4 (the floor), "aaa" + "é" would be cut inside 'é'.
        assert_eq!(split_all(4, &["aaaéb\n".as_bytes()]), ["aaa", "éb"]);
        assert_eq!(split_all(4, &["a😀b\n".as_bytes()]), ["a", "😀", "b"]);
        assert_eq!(split_all(100, &[b"a\xffb\n"]), ["a\u{fffd}b"]);
        // A multi-byte char split across reads is reassembled.
        let bytes = "€\n".as_bytes();
        assert_eq!(split_all(100, &[&bytes[..1], &bytes[1..]]), ["€"]);
    }

    #[test]
    fn tail_buffer_keeps_the_last_4k_on_char_boundaries() {
        let mut tail = TailBuffer::new();
        tail.push_line("START RequestId: 1");
        assert_eq!(tail.as_str(), "START RequestId: 1\n");
        for i in 0..10_000 {
            tail.push_line(&format!("€ line {i}"));
        }
        tail.push_line("REPORT RequestId: 1");
        let text = tail.as_str();
        assert!(text.len() <= TAIL_BYTES && text.len() > TAIL_BYTES - 4);
        assert!(text.ends_with("€ line 9999\nREPORT RequestId: 1\n"));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(tail.base64())
            .unwrap();
        assert_eq!(decoded, text.as_bytes());
    }

    #[test]
    fn tail_buffer_takes_the_end_of_a_huge_line() {
        let mut tail = TailBuffer::new();
        tail.push_line("before");
        let huge = format!("{}END", "é".repeat(10_000));
        tail.push_line(&huge);
        let text = tail.as_str();
        assert!(text.len() <= TAIL_BYTES);
        assert!(text.ends_with("éEND\n"));
        assert!(!text.contains("before"));
    }
}
