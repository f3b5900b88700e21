//! Tests of package installation: every refused shape, built in the test.

use std::io::{Cursor, Write as _};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::*;

/// What a test zip entry is.
enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
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
            E::Dir(name) => w
                .add_directory(*name, SimpleFileOptions::default())
                .unwrap(),
            E::Link(name, target) => w
                .add_symlink(*name, *target, SimpleFileOptions::default())
                .unwrap(),
        }
    }
    w.finish().unwrap().into_inner()
}

/// Sets the full unix mode (type and special bits, which the zip writer masks
/// off) of entry `name` in the central directory: the external attributes at
/// offset 38 of its central file header (APPNOTE 4.3.12).
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

struct Fixture {
    _tmp: tempfile::TempDir,
    parent: PathBuf,
    dest: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("code");
    fs::create_dir(&parent).unwrap();
    let dest = parent.join("1");
    Fixture {
        _tmp: tmp,
        parent,
        dest,
    }
}

impl Fixture {
    fn install_zip(&self, zip: Vec<u8>) -> Result<Installed, PackageError> {
        install(&Source::Zip(zip), &self.dest, &Limits::LAMBDA)
    }

    /// After a refusal: no destination, no staging dir, nothing else.
    fn assert_nothing_left(&self) {
        assert!(!self.dest.exists());
        let left: Vec<_> = fs::read_dir(&self.parent).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    fn refused(&self, zip: Vec<u8>) -> PackageError {
        let err = self.install_zip(zip).expect_err("must be refused");
        assert!(err.is_refusal(), "{err:?} must be the package's fault");
        self.assert_nothing_left();
        err
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn zip_installs_with_normalised_modes() {
    let f = fixture();
    let zip = zip_of(&[
        E::File("app.py", b"def handler(e, c): return 1\n", 0o600),
        E::File("bin/tool", b"#!/bin/sh\n", 0o700),
        E::Dir("empty/"),
        E::File("pkg/sub/mod.py", b"x = 1\n", 0o664),
    ]);
    let installed = f.install_zip(zip.clone()).unwrap();
    assert_eq!(installed.code_size, zip.len() as u64);
    assert_eq!(
        installed.code_sha256,
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&zip))
    );
    assert_eq!(
        fs::read(f.dest.join("app.py")).unwrap(),
        b"def handler(e, c): return 1\n"
    );
    assert_eq!(fs::read(f.dest.join("pkg/sub/mod.py")).unwrap(), b"x = 1\n");
    assert_eq!(mode_of(&f.dest), 0o755);
    assert_eq!(mode_of(&f.dest.join("app.py")), 0o644);
    assert_eq!(mode_of(&f.dest.join("bin/tool")), 0o755);
    assert_eq!(mode_of(&f.dest.join("bin")), 0o755);
    assert_eq!(mode_of(&f.dest.join("empty")), 0o755);
    assert_eq!(mode_of(&f.dest.join("pkg/sub")), 0o755);
    // Owned by whoever installs (root in production), never the archive's idea.
    let euid = nix::unistd::geteuid().as_raw();
    assert_eq!(fs::metadata(f.dest.join("app.py")).unwrap().uid(), euid);
    // Only the destination remains: the staging dir was renamed.
    assert_eq!(fs::read_dir(&f.parent).unwrap().count(), 1);
}

#[test]
fn zip_slip_is_refused() {
    for name in ["../evil", "a/../../evil", "/abs", "/etc/cron.d/x"] {
        let f = fixture();
        let err = f.refused(zip_of(&[
            E::File("ok.py", b"ok", 0o644),
            E::File(name, b"pwned", 0o644),
        ]));
        assert!(
            matches!(&err, PackageError::EntryPath { entry } if entry == name),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
        assert!(!f.parent.parent().unwrap().join("evil").exists());
    }
}

#[test]
fn dotdot_inside_the_tree_is_normalised() {
    let f = fixture();
    f.install_zip(zip_of(&[E::File("a/../b.py", b"b", 0o644)]))
        .unwrap();
    assert_eq!(fs::read(f.dest.join("b.py")).unwrap(), b"b");
}

#[test]
fn symlinks_out_of_the_tree_are_refused() {
    for (name, target) in [
        ("link", "/etc/passwd"),
        ("link", ".."),
        ("link", "../code"),
        ("dir/link", "../../etc"),
        ("dir/link", "./../.."),
    ] {
        let f = fixture();
        let err = f.refused(zip_of(&[E::Dir("dir/"), E::Link(name, target)]));
        assert!(
            matches!(&err, PackageError::SymlinkTarget { entry, .. } if entry == name),
            "{name} -> {target}: {err}"
        );
    }
}

#[test]
fn symlink_escaping_through_another_symlink_is_refused() {
    // Lexically each stays inside: d/s -> .. is the root, x -> d/s/.. is d.
    // Physically x resolves d/s to the root, then .. above it.
    let f = fixture();
    let err = f.refused(zip_of(&[
        E::Dir("d/"),
        E::Link("d/s", ".."),
        E::Link("x", "d/s/.."),
    ]));
    assert!(
        matches!(&err, PackageError::SymlinkTarget { entry, .. } if entry == "x"),
        "{err}"
    );
}

#[test]
fn symlink_loop_is_refused() {
    let f = fixture();
    let err = f.refused(zip_of(&[E::Link("a", "b"), E::Link("b", "a")]));
    assert!(err.to_string().contains("too many levels"), "{err}");
}

#[test]
fn in_tree_symlinks_are_kept() {
    let f = fixture();
    f.install_zip(zip_of(&[
        E::File("lib/real.py", b"real", 0o644),
        E::Link("alias.py", "lib/real.py"),
        E::Link("lib/up", "../alias.py"),
        E::Link("dangling", "not/there"),
        E::Link("here", "."),
    ]))
    .unwrap();
    let alias = f.dest.join("alias.py");
    assert!(fs::symlink_metadata(&alias)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&alias).unwrap(), Path::new("lib/real.py"));
    assert_eq!(fs::read(f.dest.join("lib/up")).unwrap(), b"real");
    assert!(fs::symlink_metadata(f.dest.join("dangling")).is_ok());
}

#[test]
fn writing_through_a_symlink_is_refused() {
    // "a" is a link to "sub", then "a/x" would land in sub/x (or, with a link
    // out of the tree, anywhere): files are written first, so "a" is a real
    // directory by the time the link comes, and the link is a conflict.
    let f = fixture();
    let err = f.refused(zip_of(&[
        E::Dir("sub/"),
        E::Link("a", "sub"),
        E::File("a/x", b"x", 0o644),
    ]));
    assert!(
        matches!(&err, PackageError::EntryConflict { entry, .. } if entry == "a"),
        "{err}"
    );
    // A link below another link is refused too.
    let f = fixture();
    let err = f.refused(zip_of(&[
        E::Dir("sub/"),
        E::Link("a", "sub"),
        E::Link("a/y", "../sub"),
    ]));
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn special_bits_are_refused() {
    for mode in [
        libc::S_IFREG | 0o4755,
        libc::S_IFREG | 0o2755,
        libc::S_IFREG | 0o1644,
    ] {
        let f = fixture();
        let mut zip = zip_of(&[E::File("ok", b"ok", 0o644), E::File("tool", b"x", 0o755)]);
        patch_mode(&mut zip, "tool", mode);
        let err = f.refused(zip);
        assert!(
            matches!(&err, PackageError::EntryModeBits { entry, .. } if entry == "tool"),
            "{mode:o}: {err}"
        );
    }
    let f = fixture();
    let mut zip = zip_of(&[E::Dir("d/")]);
    patch_mode(&mut zip, "d/", libc::S_IFDIR | 0o2755);
    assert!(matches!(f.refused(zip), PackageError::EntryModeBits { .. }));
}

#[test]
fn device_fifo_socket_entries_are_refused() {
    for (mode, kind) in [
        (libc::S_IFIFO | 0o644, "fifo"),
        (libc::S_IFCHR | 0o644, "character device"),
        (libc::S_IFBLK | 0o644, "block device"),
        (libc::S_IFSOCK | 0o644, "socket"),
    ] {
        let f = fixture();
        let mut zip = zip_of(&[E::File("dev", b"", 0o644)]);
        patch_mode(&mut zip, "dev", mode);
        let err = f.refused(zip);
        assert!(
            matches!(&err, PackageError::EntryKind { entry, kind: k } if entry == "dev" && *k == kind),
            "{err}"
        );
    }
}

#[test]
fn duplicate_entries_are_refused() {
    // The zip reader keeps one entry per exact name, but two names may still
    // denote one path.
    let zip = zip_of(&[E::File("a.py", b"1", 0o644), E::File("./a.py", b"2", 0o644)]);
    let f = fixture();
    let err = f.refused(zip);
    assert!(
        err.to_string().to_lowercase().contains("duplicate"),
        "{err}"
    );
    let f = fixture();
    let err = f.refused(zip_of(&[
        E::File("a", b"1", 0o644),
        E::File("a/b", b"2", 0o644),
    ]));
    assert!(err.to_string().contains("not a directory"), "{err}");
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

/// A raw deflate stream of `len` zeros: one fixed-Huffman block holding a
/// literal 0 and then back-references of length 258 at distance 1 (RFC 1951
/// 3.2.6: literal 0 = 8-bit 0x30, length 258 = code 285 = 8-bit 0xc5, distance
/// 1 = 5-bit 0, end of block = 7-bit 0). 13 bits per 258 bytes: a ~160:1
/// bomb, built in a moment.
fn deflated_zeros(len: u64) -> Vec<u8> {
    let mut bits = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // BTYPE = 01, fixed Huffman
    bits.code(0x30, 8);
    let mut left = len - 1;
    while left >= 258 {
        bits.code(0xc5, 8);
        bits.code(0, 5);
        left -= 258;
    }
    for _ in 0..left {
        bits.code(0x30, 8);
    }
    bits.code(0, 7);
    bits.put(0, 7); // flush the last byte
    bits.out
}

/// A one-entry zip around raw deflate `data` that declares `declared` bytes
/// unzipped (APPNOTE 4.3.7, 4.3.12, 4.3.16). The CRC is left 0: a reader that
/// stops at the limit never gets to check it.
fn zip_with_deflate(name: &str, data: &[u8], declared: u32) -> Vec<u8> {
    let mut z = Vec::new();
    let le16 = |z: &mut Vec<u8>, v: u16| z.extend_from_slice(&v.to_le_bytes());
    let le32 = |z: &mut Vec<u8>, v: u32| z.extend_from_slice(&v.to_le_bytes());
    le32(&mut z, 0x0403_4b50);
    le16(&mut z, 20); // version needed
    le16(&mut z, 0); // flags
    le16(&mut z, 8); // deflate
    le16(&mut z, 0); // time
    le16(&mut z, 0x21); // date: 1980-01-01
    le32(&mut z, 0); // crc
    le32(&mut z, data.len() as u32);
    le32(&mut z, declared);
    le16(&mut z, name.len() as u16);
    le16(&mut z, 0);
    z.extend_from_slice(name.as_bytes());
    z.extend_from_slice(data);
    let cd_start = z.len() as u32;
    le32(&mut z, 0x0201_4b50);
    le16(&mut z, (3 << 8) | 20); // made by: Unix
    le16(&mut z, 20);
    le16(&mut z, 0);
    le16(&mut z, 8);
    le16(&mut z, 0);
    le16(&mut z, 0x21);
    le32(&mut z, 0);
    le32(&mut z, data.len() as u32);
    le32(&mut z, declared);
    le16(&mut z, name.len() as u16);
    le16(&mut z, 0); // extra
    le16(&mut z, 0); // comment
    le16(&mut z, 0); // disk
    le16(&mut z, 0); // internal attributes
    le32(&mut z, (libc::S_IFREG | 0o644) << 16);
    le32(&mut z, 0); // local header offset
    z.extend_from_slice(name.as_bytes());
    let cd_size = z.len() as u32 - cd_start;
    le32(&mut z, 0x0605_4b50);
    le16(&mut z, 0);
    le16(&mut z, 0);
    le16(&mut z, 1);
    le16(&mut z, 1);
    le32(&mut z, cd_size);
    le32(&mut z, cd_start);
    le16(&mut z, 0);
    z
}

#[test]
fn hand_built_deflate_inflates_to_what_it_says() {
    // The bomb below is only a good test if its stream is right: check a
    // small one end to end, CRC aside.
    let zip = zip_with_deflate("z", &deflated_zeros(1000), 1000);
    let mut archive = zip::ZipArchive::new(Cursor::new(zip)).unwrap();
    let mut out = Vec::new();
    let _ = archive.by_index(0).unwrap().read_to_end(&mut out);
    assert_eq!(out, vec![0u8; 1000]);
}

#[test]
fn zip_bomb_stops_at_the_limit() {
    // 300 MiB of zeros in ~2 MB, declaring 1 KB unzipped: the declared size
    // is never consulted, the copy stops when the bytes written would pass
    // 250 MB.
    let zip = zip_with_deflate("zeros.bin", &deflated_zeros(300 << 20), 1024);
    assert!(zip.len() < 2_500_000, "{}", zip.len());
    let f = fixture();
    let started = Instant::now();
    let err = f.refused(zip);
    assert!(
        matches!(&err, PackageError::UnzippedTooLarge { entry, limit }
            if entry == "zeros.bin" && *limit == MAX_UNZIPPED_BYTES),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "the unzipped code exceeds 262144000 bytes (reached while writing \"zeros.bin\")"
    );
    // Seconds in a debug build, a fraction of one in release.
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn unzipped_limit_counts_across_entries() {
    let limits = Limits {
        unzipped_bytes: 100,
        ..Limits::LAMBDA
    };
    let f = fixture();
    let ok = zip_of(&[E::File("a", &[1; 50], 0o644), E::File("b", &[2; 50], 0o644)]);
    install(&Source::Zip(ok), &f.dest, &limits).unwrap();
    let f = fixture();
    let over = zip_of(&[E::File("a", &[1; 50], 0o644), E::File("b", &[2; 51], 0o644)]);
    let err = install(&Source::Zip(over), &f.dest, &limits).unwrap_err();
    assert!(
        matches!(&err, PackageError::UnzippedTooLarge { entry, .. } if entry == "b"),
        "{err}"
    );
    f.assert_nothing_left();
}

#[test]
fn entry_count_is_limited() {
    let limits = Limits {
        entries: 3,
        ..Limits::LAMBDA
    };
    let f = fixture();
    let zip = zip_of(&[
        E::File("a", b"", 0o644),
        E::File("b", b"", 0o644),
        E::File("c", b"", 0o644),
    ]);
    install(&Source::Zip(zip), &f.dest, &limits).unwrap();
    let f = fixture();
    let zip = zip_of(&[
        E::File("a", b"", 0o644),
        E::File("b", b"", 0o644),
        E::File("c", b"", 0o644),
        E::File("d", b"", 0o644),
    ]);
    let err = install(&Source::Zip(zip), &f.dest, &limits).unwrap_err();
    assert!(
        matches!(err, PackageError::TooManyEntries { limit: 3 }),
        "{err}"
    );
    f.assert_nothing_left();
}

#[test]
fn zipped_limit() {
    let zip = zip_of(&[E::File("a", &[7; 1000], 0o644)]);
    let exact = Limits {
        zipped_bytes: zip.len() as u64,
        ..Limits::LAMBDA
    };
    let under = Limits {
        zipped_bytes: zip.len() as u64 - 1,
        ..Limits::LAMBDA
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(&zip);
    assert_eq!(
        Source::from_base64(&encoded, &exact).unwrap(),
        Source::Zip(zip.clone())
    );
    assert!(matches!(
        Source::from_base64(&encoded, &under),
        Err(PackageError::ZippedTooLarge { .. })
    ));
    // A huge string is refused before it is decoded.
    let huge = "A".repeat(70_000_000);
    assert!(matches!(
        Source::from_base64(&huge, &Limits::LAMBDA),
        Err(PackageError::ZippedTooLarge { .. })
    ));
    assert!(matches!(
        Source::from_base64("not base64!", &Limits::LAMBDA),
        Err(PackageError::DecodeBase64 { .. })
    ));

    // The same limit for a zip file on the host.
    let f = fixture();
    let file = f.parent.parent().unwrap().join("code.zip");
    fs::write(&file, &zip).unwrap();
    let err = install(&Source::ZipFile(file.clone()), &f.dest, &under).unwrap_err();
    assert!(matches!(err, PackageError::ZippedTooLarge { .. }), "{err}");
    f.assert_nothing_left();
    let installed = install(&Source::ZipFile(file), &f.dest, &exact).unwrap();
    assert_eq!(installed.code_size, zip.len() as u64);
    assert_eq!(fs::read(f.dest.join("a")).unwrap(), vec![7; 1000]);
}

#[test]
fn not_a_zip_is_refused() {
    let f = fixture();
    let err = f.refused(b"this is not a zip archive".to_vec());
    assert!(matches!(err, PackageError::OpenZip { .. }), "{err}");
    // A truncated archive: the central directory is gone.
    let mut zip = zip_of(&[E::File("a", &[1; 100], 0o644)]);
    zip.truncate(zip.len() / 2);
    let err = f.refused(zip);
    assert!(matches!(err, PackageError::OpenZip { .. }), "{err}");
}

#[test]
fn corrupt_entry_data_is_refused() {
    // Flip a byte of the compressed data: the CRC (or inflate) fails.
    let mut zip = zip_of(&[E::File("a.txt", &b"hello world ".repeat(100), 0o644)]);
    let data_start = 30 + "a.txt".len();
    zip[data_start + 5] ^= 0xff;
    let f = fixture();
    let err = f.refused(zip);
    assert!(
        matches!(&err, PackageError::ReadEntry { entry, .. } if entry == "a.txt"),
        "{err}"
    );
}

#[test]
fn destination_must_not_exist() {
    let f = fixture();
    fs::create_dir(&f.dest).unwrap();
    let err = f
        .install_zip(zip_of(&[E::File("a", b"", 0o644)]))
        .unwrap_err();
    assert!(matches!(err, PackageError::DestinationExists { .. }));
    assert!(!err.is_refusal());
}

// ---- directories ----

const APP_PY: &[u8] = b"def handler(e, c):\n    return 1\n";
/// The bytes of the files of `tree()`.
const TREE_BYTES: u64 = APP_PY.len() as u64 + 6 + 10;

fn tree() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    let p = src.path();
    fs::write(p.join("app.py"), APP_PY).unwrap();
    fs::create_dir_all(p.join("pkg/sub")).unwrap();
    fs::write(p.join("pkg/sub/mod.py"), b"x = 1\n").unwrap();
    fs::write(p.join("run.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(p.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(p.join("app.py"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("pkg/sub/mod.py", p.join("alias.py")).unwrap();
    src
}

fn install_dir(src: &Path, f: &Fixture) -> Result<Installed, PackageError> {
    install(&Source::Directory(src.to_owned()), &f.dest, &Limits::LAMBDA)
}

#[test]
fn directory_is_copied_with_normalised_modes() {
    let src = tree();
    let f = fixture();
    let installed = install_dir(src.path(), &f).unwrap();
    assert_eq!(fs::read(f.dest.join("pkg/sub/mod.py")).unwrap(), b"x = 1\n");
    assert_eq!(mode_of(&f.dest.join("app.py")), 0o644);
    assert_eq!(mode_of(&f.dest.join("run.sh")), 0o755);
    assert_eq!(mode_of(&f.dest.join("pkg")), 0o755);
    let alias = f.dest.join("alias.py");
    assert!(fs::symlink_metadata(&alias)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&alias).unwrap(), b"x = 1\n");
    // CodeSize: the bytes of the files (links and directories count nothing).
    assert_eq!(installed.code_size, TREE_BYTES);
}

#[test]
fn directory_hash_is_deterministic_and_covers_content_mode_and_names() {
    let src = tree();
    let hash = |src: &Path| {
        let f = fixture();
        install_dir(src, &f).unwrap().code_sha256
    };
    let first = hash(src.path());
    assert_eq!(first, hash(src.path()));
    assert_eq!(first.len(), 44, "base64 of 32 bytes");

    // Same tree built in another order, with other read bits: same hash.
    let other = tempfile::tempdir().unwrap();
    let p = other.path();
    std::os::unix::fs::symlink("pkg/sub/mod.py", p.join("alias.py")).unwrap();
    fs::write(p.join("run.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(p.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(p.join("pkg/sub")).unwrap();
    fs::write(p.join("pkg/sub/mod.py"), b"x = 1\n").unwrap();
    fs::write(p.join("app.py"), b"def handler(e, c):\n    return 1\n").unwrap();
    assert_eq!(hash(p), first);

    fs::write(src.path().join("pkg/sub/mod.py"), b"x = 2\n").unwrap();
    let changed = hash(src.path());
    assert_ne!(changed, first);
    fs::set_permissions(src.path().join("app.py"), fs::Permissions::from_mode(0o755)).unwrap();
    let exec = hash(src.path());
    assert_ne!(exec, changed);
    fs::rename(src.path().join("app.py"), src.path().join("app2.py")).unwrap();
    assert_ne!(hash(src.path()), exec);
}

#[test]
fn manifest_line_format() {
    let line = manifest_line(&ManifestEntry {
        kind: 'f',
        mode: 0o644,
        size: 3,
        sha256: Sha256::digest(b"abc").into(),
        path: PathBuf::from("dir/a b.py"),
    });
    assert_eq!(
        line,
        b"f 0644 3 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad dir/a b.py\0"
    );
}

#[test]
fn directory_with_a_fifo_is_refused() {
    let src = tree();
    nix::unistd::mkfifo(
        &src.path().join("pkg/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let f = fixture();
    let err = install_dir(src.path(), &f).unwrap_err();
    assert!(
        matches!(&err, PackageError::EntryKind { entry, kind: "fifo" } if entry == "pkg/pipe"),
        "{err}"
    );
    f.assert_nothing_left();
}

#[test]
fn directory_with_a_socket_is_refused() {
    let src = tree();
    let _listener = std::os::unix::net::UnixListener::bind(src.path().join("sock")).unwrap();
    let f = fixture();
    let err = install_dir(src.path(), &f).unwrap_err();
    assert!(
        matches!(err, PackageError::EntryKind { kind: "socket", .. }),
        "{err}"
    );
    f.assert_nothing_left();
}

#[test]
fn directory_with_setuid_or_setgid_is_refused() {
    for mode in [0o4755, 0o2755] {
        let src = tree();
        fs::set_permissions(src.path().join("run.sh"), fs::Permissions::from_mode(mode)).unwrap();
        let f = fixture();
        let err = install_dir(src.path(), &f).unwrap_err();
        assert!(
            matches!(&err, PackageError::EntryModeBits { entry, .. } if entry == "run.sh"),
            "{mode:o}: {err}"
        );
        f.assert_nothing_left();
    }
}

#[test]
fn directory_symlinks_out_are_refused_and_not_followed() {
    for target in ["/etc/passwd", "../../outside", "sub/../../../outside"] {
        let src = tree();
        std::os::unix::fs::symlink(target, src.path().join("pkg/escape")).unwrap();
        let f = fixture();
        let err = install_dir(src.path(), &f).unwrap_err();
        assert!(
            matches!(&err, PackageError::SymlinkTarget { entry, .. } if entry == "pkg/escape"),
            "{target}: {err}"
        );
        f.assert_nothing_left();
    }
    // A link to a directory outside is not walked into either: it is refused
    // as a link, and nothing of what it points to is read.
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"s").unwrap();
    let src = tree();
    std::os::unix::fs::symlink(outside.path(), src.path().join("out")).unwrap();
    let f = fixture();
    assert!(matches!(
        install_dir(src.path(), &f),
        Err(PackageError::SymlinkTarget { .. })
    ));
}

#[test]
fn directory_size_limit() {
    let src = tree();
    let total = TREE_BYTES;
    let f = fixture();
    let exact = Limits {
        unzipped_bytes: total,
        ..Limits::LAMBDA
    };
    install(&Source::Directory(src.path().to_owned()), &f.dest, &exact).unwrap();
    let f = fixture();
    let under = Limits {
        unzipped_bytes: total - 1,
        ..Limits::LAMBDA
    };
    let err = install(&Source::Directory(src.path().to_owned()), &f.dest, &under).unwrap_err();
    assert!(
        matches!(err, PackageError::UnzippedTooLarge { .. }),
        "{err}"
    );
    f.assert_nothing_left();
}

#[test]
fn source_from_path() {
    let src = tree();
    assert_eq!(
        Source::from_path(src.path()).unwrap(),
        Source::Directory(src.path().to_owned())
    );
    let zip = src.path().join("code.zip");
    fs::write(&zip, b"PK").unwrap();
    assert_eq!(
        Source::from_path(&zip).unwrap(),
        Source::ZipFile(zip.clone())
    );
    assert!(matches!(
        Source::from_path(Path::new("relative/code.zip")),
        Err(PackageError::SourceNotAbsolute { .. })
    ));
    let err = Source::from_path(&src.path().join("missing")).unwrap_err();
    assert!(matches!(err, PackageError::ReadSource { .. }));
    assert!(err.is_refusal());
    assert!(matches!(
        Source::from_path(Path::new("/dev/null")),
        Err(PackageError::SourceKind { .. })
    ));
}
