//! Root integration tests: every refused package shape, through the real
//! `lambdalet serve` (src/registry/package.rs has the unit tests of each).
//! A zip (Code.ZipFile, a .zip on the host as Code.Path, a layer's
//! Content.ZipFile) and a directory (Code.Path) are refused with
//! InvalidParameterValueException and a message that names the entry and
//! the problem; nothing of them is left in the state dir; and the
//! supervisor keeps serving: a good function deploys and runs afterwards.
//!
//! The size limits are Lambda's (50 MB zipped, 250 MB unzipped including
//! layers), so these tests write up to 250 MB each to the state dir (in
//! /tmp) before the refusal removes it.

mod common;

use std::fs;
use std::io::{Cursor, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use base64::Engine as _;
use common::{require_root, Checks, LatencyProbe, Supervisor};
use serde_json::{json, Value};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Lambda's limits, as the errors name them.
const ZIPPED_LIMIT: u64 = 52_428_800;
const UNZIPPED_LIMIT: u64 = 262_144_000;

const APP: &str = "def handler(event, context):\n    return {'ok': event}\n";

// ---- zips -----------------------------------------------------------------

/// What a test zip entry is.
enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
}

fn zip_of(entries: &[E]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for entry in entries {
        match entry {
            E::File(name, content, mode) => {
                let opts = SimpleFileOptions::default()
                    .compression_method(CompressionMethod::Deflated)
                    .unix_permissions(*mode);
                w.start_file(*name, opts).unwrap();
                w.write_all(content).unwrap();
            }
            E::Link(name, target) => w
                .add_symlink(*name, *target, SimpleFileOptions::default())
                .unwrap(),
        }
    }
    w.finish().unwrap().into_inner()
}

/// Sets the full unix mode (type and special bits, which the zip writer
/// masks off) of entry `name` in the central directory: the external
/// attributes at offset 38 of its central file header (APPNOTE 4.3.12).
fn patch_mode(zip: &mut [u8], name: &str, mode: u32) {
    let sig = [0x50, 0x4b, 0x01, 0x02];
    let mut at = 0;
    while let Some(pos) = zip[at..].windows(4).position(|w| w == sig) {
        let h = at + pos;
        let name_len = u16::from_le_bytes([zip[h + 28], zip[h + 29]]) as usize;
        if &zip[h + 46..h + 46 + name_len] == name.as_bytes() {
            zip[h + 5] = 3; // version made by: Unix
            zip[h + 38..h + 42].copy_from_slice(&(mode << 16).to_le_bytes());
            return;
        }
        at = h + 4;
    }
    panic!("no entry {name}");
}

/// A zip of `app.py` and one entry `name` whose mode is `mode` (type bits
/// included).
fn zip_with_mode(name: &str, mode: u32) -> Vec<u8> {
    let mut zip = zip_of(&[
        E::File("app.py", APP.as_bytes(), 0o644),
        E::File(name, b"", 0o644),
    ]);
    patch_mode(&mut zip, name, mode);
    zip
}

/// LSB-first bit packing, as deflate stores everything but Huffman codes.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, count: u32) {
        self.acc |= value << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }
    /// Huffman codes go most significant bit first (RFC 1951 3.1.1).
    fn code(&mut self, code: u32, len: u32) {
        self.put(u64::from(code.reverse_bits() >> (32 - len)), len);
    }
}

/// A raw deflate stream of `len` zeros (`len` ≥ 1): one fixed-Huffman block
/// of a literal 0, then back-references of length 258 at distance 1 (RFC
/// 1951 3.2.6), 13 bits per 258 bytes: a ~160:1 bomb, built in a moment.
/// (The same stream as the unit tests' in src/registry/package/tests.rs.)
fn deflated_zeros(len: u64) -> Vec<u8> {
    let mut bits = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // BTYPE = 01, fixed Huffman
    bits.code(0x30, 8); // literal 0
    let mut left = len - 1;
    while left >= 258 {
        bits.code(0xc5, 8); // length 258
        bits.code(0, 5); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        bits.code(0x30, 8);
    }
    bits.code(0, 7); // end of block
    bits.put(0, 7); // flush the last byte
    bits.out
}

/// One entry of [`zip_of_deflate`].
struct Raw<'a> {
    name: &'a str,
    /// A raw deflate stream.
    data: &'a [u8],
    /// The unzipped size the headers declare.
    declared: u32,
    /// The CRC-32 the headers declare (a bomb's is never checked: the
    /// extraction stops at the limit before the end).
    crc: u32,
}

/// A zip of raw deflate entries, regular files 0644 (APPNOTE 4.3.7,
/// 4.3.12, 4.3.16).
fn zip_of_deflate(entries: &[Raw]) -> Vec<u8> {
    let mut z = Vec::new();
    let le16 = |z: &mut Vec<u8>, v: u16| z.extend_from_slice(&v.to_le_bytes());
    let le32 = |z: &mut Vec<u8>, v: u32| z.extend_from_slice(&v.to_le_bytes());
    let mut offsets = Vec::new();
    for Raw {
        name,
        data,
        declared,
        crc,
    } in entries
    {
        offsets.push(z.len() as u32);
        le32(&mut z, 0x0403_4b50);
        le16(&mut z, 20); // version needed
        le16(&mut z, 0); // flags
        le16(&mut z, 8); // deflate
        le16(&mut z, 0); // time
        le16(&mut z, 0x21); // date: 1980-01-01
        le32(&mut z, *crc);
        le32(&mut z, data.len() as u32);
        le32(&mut z, *declared);
        le16(&mut z, name.len() as u16);
        le16(&mut z, 0);
        z.extend_from_slice(name.as_bytes());
        z.extend_from_slice(data);
    }
    let cd_start = z.len() as u32;
    for (
        Raw {
            name,
            data,
            declared,
            crc,
        },
        offset,
    ) in entries.iter().zip(&offsets)
    {
        le32(&mut z, 0x0201_4b50);
        le16(&mut z, (3 << 8) | 20); // made by: Unix
        le16(&mut z, 20);
        le16(&mut z, 0);
        le16(&mut z, 8);
        le16(&mut z, 0);
        le16(&mut z, 0x21);
        le32(&mut z, *crc);
        le32(&mut z, data.len() as u32);
        le32(&mut z, *declared);
        le16(&mut z, name.len() as u16);
        le16(&mut z, 0); // extra
        le16(&mut z, 0); // comment
        le16(&mut z, 0); // disk
        le16(&mut z, 0); // internal attributes
        le32(&mut z, (libc::S_IFREG | 0o644) << 16);
        le32(&mut z, *offset);
        z.extend_from_slice(name.as_bytes());
    }
    let cd_size = z.len() as u32 - cd_start;
    le32(&mut z, 0x0605_4b50);
    le16(&mut z, 0);
    le16(&mut z, 0);
    le16(&mut z, entries.len() as u16);
    le16(&mut z, entries.len() as u16);
    le32(&mut z, cd_size);
    le32(&mut z, cd_start);
    le16(&mut z, 0);
    z
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---- checks -----------------------------------------------------------------

/// Checks that `r` is an InvalidParameterValueException whose message
/// contains every one of `fragments`; returns the message.
fn refused(
    c: &mut Checks,
    what: &str,
    r: Result<Value, (String, String)>,
    fragments: &[&str],
) -> String {
    match r {
        Err((kind, msg)) => {
            c.eq(
                format!("{what}: kind"),
                kind.as_str(),
                "InvalidParameterValueException",
            );
            for f in fragments {
                c.check(
                    msg.contains(f),
                    format!("{what}: the message names {f:?}: {msg}"),
                );
            }
            msg
        }
        Ok(v) => {
            c.fail(format!("{what} was accepted: {v}"));
            String::new()
        }
    }
}

/// CreateFunction of a python3 function with this `Code`.
fn create(sup: &Supervisor, name: &str, code: Value) -> Result<Value, (String, String)> {
    sup.request(
        "CreateFunction",
        json!({"FunctionName": name, "Runtime": "python3", "Handler": "app.handler", "Code": code}),
    )
}

/// After the refusals: no function but `expected` exists, the state dir
/// holds no staging leftovers, and a new function deploys and runs.
fn still_serves(c: &mut Checks, sup: &Supervisor, expected: &[&str]) {
    let listed = sup
        .request("ListFunctions", json!({}))
        .map(|v| {
            v["Functions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f["FunctionName"].as_str().map(String::from))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default();
    c.eq(
        "only the accepted functions exist",
        listed,
        expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    let leftovers = staging_leftovers(&sup.state_dir);
    c.check(
        leftovers.is_empty(),
        format!("no staging directory is left in the state dir: {leftovers:?}"),
    );
    let r = create(
        sup,
        "afterwards",
        json!({"ZipFile": b64(&zip_of(&[E::File("app.py", APP.as_bytes(), 0o644)]))}),
    );
    c.check(
        r.is_ok(),
        format!("a good function deploys afterwards: {r:?}"),
    );
    if r.is_ok() {
        let out = sup.invoke("afterwards", json!({"n": 1}));
        c.eq("and runs", &out["Payload"], &json!({"ok": {"n": 1}}));
    }
}

/// `.staging-*` directories anywhere below `dir`.
fn staging_leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with(".staging-") {
                out.push(p.display().to_string());
            } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

// ---- the tests ----------------------------------------------------------------

#[test]
fn zips_of_every_refused_shape_are_refused_by_name() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("refused zips");
    let app = E::File("app.py", APP.as_bytes(), 0o644);
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "zip slip ../evil",
            zip_of(&[app, E::File("../evil", b"pwned", 0o644)]),
            vec!["\"../evil\"", "leads outside the package"],
        ),
        (
            "zip slip a/../../evil",
            zip_of(&[
                E::File("app.py", APP.as_bytes(), 0o644),
                E::File("a/../../evil", b"pwned", 0o644),
            ]),
            vec!["\"a/../../evil\"", "leads outside the package"],
        ),
        (
            "an absolute path",
            zip_of(&[
                E::File("app.py", APP.as_bytes(), 0o644),
                E::File("/tmp/lambdalet-evil-abs", b"pwned", 0o644),
            ]),
            vec!["\"/tmp/lambdalet-evil-abs\"", "absolute"],
        ),
        (
            "a symlink entry to an absolute path",
            zip_of(&[
                E::File("app.py", APP.as_bytes(), 0o644),
                E::Link("passwd", "/etc/passwd"),
            ]),
            vec![
                "\"passwd\"",
                "\"/etc/passwd\"",
                "absolute targets are refused",
            ],
        ),
        (
            "a symlink entry out of the tree",
            zip_of(&[
                E::File("app.py", APP.as_bytes(), 0o644),
                E::Link("lib/up", "../.."),
            ]),
            vec!["\"lib/up\"", "\"../..\"", "leads outside the package"],
        ),
        (
            "a symlink entry out through another symlink",
            zip_of(&[
                E::File("app.py", APP.as_bytes(), 0o644),
                E::File("d/keep", b"", 0o644),
                E::Link("d/s", ".."),
                E::Link("x", "d/s/.."),
            ]),
            vec!["\"x\"", "\"d/s/..\"", "leads outside the package"],
        ),
        (
            "a fifo entry",
            zip_with_mode("pipe", libc::S_IFIFO | 0o644),
            vec!["\"pipe\"", "is a fifo"],
        ),
        (
            "a character device entry",
            zip_with_mode("null", libc::S_IFCHR | 0o666),
            vec!["\"null\"", "is a character device"],
        ),
        (
            "a block device entry",
            zip_with_mode("sda", libc::S_IFBLK | 0o660),
            vec!["\"sda\"", "is a block device"],
        ),
        (
            "a setuid file",
            zip_with_mode("tool", libc::S_IFREG | 0o4755),
            vec![
                "\"tool\"",
                "4755",
                "setuid, setgid and sticky bits are refused",
            ],
        ),
        (
            "a setgid file",
            zip_with_mode("tool", libc::S_IFREG | 0o2755),
            vec![
                "\"tool\"",
                "2755",
                "setuid, setgid and sticky bits are refused",
            ],
        ),
    ];
    for (what, zip, fragments) in &cases {
        let r = create(&sup, "bad", json!({"ZipFile": b64(zip)}));
        refused(&mut c, &format!("{what} (ZipFile)"), r, fragments);
        // The same zip from a file on the host, and as a layer.
        let file = sup.dir.path().join("bad.zip");
        fs::write(&file, zip).unwrap();
        let r = create(&sup, "bad", json!({"Path": file.to_str().unwrap()}));
        refused(&mut c, &format!("{what} (a .zip Path)"), r, fragments);
        let r = sup.request(
            "PublishLayerVersion",
            json!({"LayerName": "bad", "Content": {"ZipFile": b64(zip)}}),
        );
        refused(&mut c, &format!("{what} (a layer)"), r, fragments);
    }
    for outside in [
        sup.dir.path().join("evil"),
        sup.state_dir.join("functions/evil"),
        Path::new("/tmp/lambdalet-evil-abs").to_path_buf(),
    ] {
        c.check(
            !outside.exists(),
            format!("nothing was written at {}", outside.display()),
        );
    }
    let layers = sup.request("ListLayers", json!({})).unwrap();
    c.eq("no layer was published", &layers["Layers"], &json!([]));
    still_serves(&mut c, &sup, &[]);
    c.finish();
}

#[test]
fn directories_of_every_refused_shape_are_refused_by_name() {
    if !require_root() {
        return;
    }
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let sup = Supervisor::start();
    let mut c = Checks::new("refused directories");
    let dir = |name: &str| sup.write_code(name, &[("app.py", APP), ("lib/util.py", "X = 1\n")]);
    let try_dir = |c: &mut Checks, what: &str, d: &Path, fragments: &[&str]| -> String {
        let r = create(&sup, "bad", json!({"Path": d.to_str().unwrap()}));
        refused(c, what, r, fragments)
    };

    let d = dir("abs-link");
    std::os::unix::fs::symlink("/etc/passwd", d.join("passwd")).unwrap();
    try_dir(
        &mut c,
        "a symlink to an absolute path",
        &d,
        &[
            "\"passwd\"",
            "\"/etc/passwd\"",
            "absolute targets are refused",
        ],
    );

    let d = dir("up-link");
    std::os::unix::fs::symlink("../../..", d.join("lib/up")).unwrap();
    try_dir(
        &mut c,
        "a symlink out of the tree",
        &d,
        &["\"lib/up\"", "\"../../..\"", "leads outside the package"],
    );

    let d = dir("chain-link");
    std::os::unix::fs::symlink("..", d.join("lib/s")).unwrap();
    std::os::unix::fs::symlink("lib/s/..", d.join("x")).unwrap();
    try_dir(
        &mut c,
        "a symlink out through another symlink",
        &d,
        &["\"x\"", "\"lib/s/..\"", "leads outside the package"],
    );

    let d = dir("fifo");
    nix::unistd::mkfifo(&d.join("lib/pipe"), Mode::from_bits_truncate(0o644)).unwrap();
    try_dir(&mut c, "a fifo", &d, &["\"lib/pipe\"", "is a fifo"]);

    let d = dir("chardev");
    // /dev/null's numbers: root may make the node anywhere; it is never opened.
    mknod(
        &d.join("null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .unwrap();
    try_dir(
        &mut c,
        "a character device",
        &d,
        &["\"null\"", "is a character device"],
    );

    let d = dir("blockdev");
    mknod(
        &d.join("disk"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(7, 0),
    )
    .unwrap();
    try_dir(
        &mut c,
        "a block device",
        &d,
        &["\"disk\"", "is a block device"],
    );

    let d = dir("socket");
    let _listener = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    try_dir(&mut c, "a socket", &d, &["\"sock\"", "is a socket"]);

    let d = dir("setuid");
    fs::write(d.join("tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(d.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    try_dir(
        &mut c,
        "a setuid file",
        &d,
        &[
            "\"tool\"",
            "4755",
            "setuid, setgid and sticky bits are refused",
        ],
    );

    let d = dir("setgid-dir");
    fs::set_permissions(d.join("lib"), fs::Permissions::from_mode(0o2755)).unwrap();
    try_dir(
        &mut c,
        "a setgid directory",
        &d,
        &[
            "\"lib\"",
            "2755",
            "setuid, setgid and sticky bits are refused",
        ],
    );

    let d = dir("sticky-dir");
    fs::set_permissions(d.join("lib"), fs::Permissions::from_mode(0o1777)).unwrap();
    try_dir(
        &mut c,
        "a sticky directory",
        &d,
        &[
            "\"lib\"",
            "1777",
            "setuid, setgid and sticky bits are refused",
        ],
    );

    // A Code.Path that is itself neither a directory nor a regular file.
    let fifo = sup.dir.path().join("code.fifo");
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
    let r = create(&sup, "bad", json!({"Path": fifo.to_str().unwrap()}));
    refused(
        &mut c,
        "a fifo as Code.Path",
        r,
        &["neither a directory nor a .zip file"],
    );

    still_serves(&mut c, &sup, &[]);
    c.finish();
}

#[test]
fn size_limits_and_a_zip_bomb_stop_with_a_clear_error() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("size limits");
    sup.create_python("kept", &[("app.py", APP)], "app.handler", json!({}));

    // Over 50 MB zipped, inline (a 67 MB line of base64, under the
    // protocol's line limit) and from a file on the host. Random-looking
    // content, stored: a zip of that size.
    let mut noise = vec![0u8; (ZIPPED_LIMIT + 1024) as usize];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in noise.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file(
        "blob.bin",
        SimpleFileOptions::default().compression_method(CompressionMethod::Stored),
    )
    .unwrap();
    w.write_all(&noise).unwrap();
    let big = w.finish().unwrap().into_inner();
    drop(noise);
    assert!(big.len() as u64 > ZIPPED_LIMIT);
    let limit_named = format!("the limit is {ZIPPED_LIMIT} bytes zipped");
    let r = create(&sup, "big", json!({"ZipFile": b64(&big)}));
    refused(&mut c, "a zip over 50 MB (ZipFile)", r, &[&limit_named]);
    let file = sup.dir.path().join("big.zip");
    fs::write(&file, &big).unwrap();
    drop(big);
    let r = create(&sup, "big", json!({"Path": file.to_str().unwrap()}));
    refused(&mut c, "a zip over 50 MB (a .zip Path)", r, &[&limit_named]);
    fs::remove_file(&file).unwrap();

    // Over 250 MB unzipped, honestly declared: two entries of 132 MB.
    let unzipped_named = format!("the unzipped code exceeds {UNZIPPED_LIMIT} bytes");
    const HALF: u32 = 132_000_000;
    let half = deflated_zeros(HALF.into());
    let crc = crc32_of_zeros(HALF.into());
    let zip = zip_of_deflate(&[
        Raw {
            name: "a.bin",
            data: &half,
            declared: HALF,
            crc,
        },
        Raw {
            name: "b.bin",
            data: &half,
            declared: HALF,
            crc,
        },
    ]);
    let r = create(&sup, "wide", json!({"ZipFile": b64(&zip)}));
    refused(
        &mut c,
        "two entries of 132 MB",
        r,
        &[&unzipped_named, "\"b.bin\""],
    );

    // A zip bomb: 300 MiB of zeros in ~2 MB, declaring 1 KB unzipped. The
    // extraction counts the bytes it writes, not the declared ones, and
    // stops at the limit; meanwhile the supervisor is probed.
    let bomb = zip_of_deflate(&[Raw {
        name: "zeros.bin",
        data: &deflated_zeros(300 << 20),
        declared: 1024,
        crc: 0,
    }]);
    c.check(
        bomb.len() < 2_500_000,
        format!("the bomb is small: {} bytes", bomb.len()),
    );
    let probe = LatencyProbe::start(&sup.socket);
    let t = Instant::now();
    let r = create(&sup, "bomb", json!({"ZipFile": b64(&bomb)}));
    let took = t.elapsed();
    let stall = probe.stop();
    let msg = refused(&mut c, "a zip bomb", r, &[&unzipped_named, "\"zeros.bin\""]);
    eprintln!(
        "zip bomb: refused after {:.2} s ({msg}); the slowest ListFunctions meanwhile took {:.2} s",
        took.as_secs_f64(),
        stall.as_secs_f64()
    );
    // UpdateFunctionCode with the bomb: refused, and the function keeps its code.
    let r = sup.request(
        "UpdateFunctionCode",
        json!({"FunctionName": "kept", "ZipFile": b64(&bomb)}),
    );
    refused(
        &mut c,
        "a zip bomb as UpdateFunctionCode",
        r,
        &[&unzipped_named, "\"zeros.bin\""],
    );
    c.eq(
        "the function keeps its code",
        sup.invoke_ok("kept", json!({"k": 1})),
        json!({"ok": {"k": 1}}),
    );
    // A bomb as a layer.
    let r = sup.request(
        "PublishLayerVersion",
        json!({"LayerName": "bomb", "Content": {"ZipFile": b64(&bomb)}}),
    );
    refused(&mut c, "a zip bomb as a layer", r, &[&unzipped_named]);

    // A directory over 250 MB: one sparse file (it reads as zeros).
    let d = sup.write_code("hugedir", &[("app.py", APP)]);
    let f = fs::File::create(d.join("huge.bin")).unwrap();
    f.set_len(UNZIPPED_LIMIT + 1).unwrap();
    let r = create(&sup, "hugedir", json!({"Path": d.to_str().unwrap()}));
    refused(
        &mut c,
        "a directory over 250 MB",
        r,
        &[&unzipped_named, "\"huge.bin\""],
    );
    still_serves(&mut c, &sup, &["kept"]);
    c.finish();
}

#[test]
fn code_and_layers_together_must_fit_250_mb() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("250 MB including layers");
    // Two layers of 110 MB each (zips of zeros with their true size and
    // CRC: they install whole), each under the limit, together too.
    const LAYER: u32 = 110_000_000;
    let zeros = deflated_zeros(LAYER.into());
    let crc = crc32_of_zeros(LAYER.into());
    let mut arns = Vec::new();
    for name in ["zeros1", "zeros2"] {
        let zip = zip_of_deflate(&[Raw {
            name: &format!("{name}.bin"),
            data: &zeros,
            declared: LAYER,
            crc,
        }]);
        let v = sup
            .request(
                "PublishLayerVersion",
                json!({"LayerName": name, "Content": {"ZipFile": b64(&zip)}}),
            )
            .unwrap_or_else(|e| panic!("PublishLayerVersion {name}: {e:?}"));
        arns.push(v["LayerVersionArn"].as_str().unwrap().to_string());
    }
    // 60 MB of code on top (a sparse file in a directory): 280 MB in all.
    let d = sup.write_code("heavy", &[("app.py", APP)]);
    fs::File::create(d.join("data.bin"))
        .unwrap()
        .set_len(60_000_000)
        .unwrap();
    let r = sup.request(
        "CreateFunction",
        json!({"FunctionName": "heavy", "Runtime": "python3", "Handler": "app.handler",
               "Code": {"Path": d.to_str().unwrap()}, "Layers": arns}),
    );
    refused(
        &mut c,
        "60 MB of code and two layers of 110 MB",
        r,
        &[
            &format!("Unzipped size must be smaller than {UNZIPPED_LIMIT} bytes"),
            "layers 220000000 bytes",
        ],
    );
    // With one layer it fits (170 MB), and runs.
    let r = sup.request(
        "CreateFunction",
        json!({"FunctionName": "heavy", "Runtime": "python3", "Handler": "app.handler",
               "Code": {"Path": d.to_str().unwrap()}, "Layers": [arns[0]]}),
    );
    c.check(
        r.is_ok(),
        format!("60 MB of code and one layer deploy: {r:?}"),
    );
    // Adding the second layer later is refused the same way, and the
    // function keeps its configuration.
    let r = sup.request(
        "UpdateFunctionConfiguration",
        json!({"FunctionName": "heavy", "Layers": arns}),
    );
    refused(
        &mut c,
        "UpdateFunctionConfiguration to two layers",
        r,
        &[&format!(
            "Unzipped size must be smaller than {UNZIPPED_LIMIT} bytes"
        )],
    );
    let got = sup
        .request("GetFunction", json!({"FunctionName": "heavy"}))
        .unwrap();
    c.eq(
        "still one layer",
        got["Layers"].as_array().map(Vec::len),
        Some(1),
    );
    c.eq(
        "and it runs",
        sup.invoke_ok("heavy", json!({"h": 1})),
        json!({"ok": {"h": 1}}),
    );
    still_serves(&mut c, &sup, &["heavy"]);
    c.finish();
}

/// CRC-32 (IEEE, as zip uses) of `len` zero bytes.
fn crc32_of_zeros(len: u64) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = !0u32;
    for _ in 0..len {
        crc = table[(crc & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}
