//! Installing a function's code package into the state dir, safely.
//!
//! The supervisor runs as root and the package comes from a client, so nothing in
//! it is trusted: names, declared sizes, modes and link targets are all checked
//! here, before anything is visible at the destination.
//!
//! * A zip (bytes, or a file on the host) is extracted entry by entry. Entries
//!   whose path is absolute or climbs out with `..` (zip slip), device, fifo and
//!   socket entries, setuid/setgid/sticky bits and symlinks that point outside the
//!   tree are refused, naming the entry. Sizes are counted on the bytes actually
//!   written, never on the sizes the archive declares, so a zip bomb stops at the
//!   limit.
//! * A directory is walked without following symlinks (lstat); in-tree symlinks
//!   are kept as symlinks, the same refusals apply.
//! * Output: directories 0755, files 0644, or 0755 if the source had any exec bit;
//!   owned by the supervisor (root), so the sandbox's non-root uid can read them
//!   and not change them. Source ownership is never carried over.
//! * Everything is written to a staging directory next to the destination and
//!   renamed into place only on success (rename(2) is atomic within a
//!   filesystem): on failure nothing half-written remains.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Lambda's limit for a zip uploaded directly: 50 MB.
pub const MAX_ZIPPED_BYTES: u64 = 52_428_800;
/// Lambda's limit for the unzipped code (function and layers): 250 MB.
pub const MAX_UNZIPPED_BYTES: u64 = 262_144_000;
/// Files, directories and symlinks in one package. Lambda has no documented
/// figure; this bounds the metadata work one request can cause.
pub const MAX_ENTRIES: u64 = 20_000;
/// A symlink target longer than PATH_MAX - 1 cannot be created (symlink(2)).
pub const MAX_SYMLINK_TARGET_BYTES: u64 = 4095;
/// Symlinks followed while checking where one leads; the kernel's own bound
/// (MAXSYMLINKS, path_resolution(7)).
const MAX_SYMLINK_HOPS: usize = 40;
/// Prefix of staging directories; a leftover one (the supervisor was killed
/// mid-install) can be removed by whoever opens the state dir.
pub const STAGING_PREFIX: &str = ".staging-";

const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
const EXEC_FILE_MODE: u32 = 0o755;
/// setuid, setgid, sticky.
const SPECIAL_BITS: u32 = 0o7000;
const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// Size limits for one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub zipped_bytes: u64,
    pub unzipped_bytes: u64,
    pub entries: u64,
}

impl Limits {
    /// Lambda's limits (see the constants).
    pub const LAMBDA: Limits = Limits {
        zipped_bytes: MAX_ZIPPED_BYTES,
        unzipped_bytes: MAX_UNZIPPED_BYTES,
        entries: MAX_ENTRIES,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::LAMBDA
    }
}

/// Where a package comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Zip archive bytes (a decoded `Code.ZipFile`).
    Zip(Vec<u8>),
    /// A zip archive on the host.
    ZipFile(PathBuf),
    /// A directory on the host.
    Directory(PathBuf),
    /// A package [`install`]ed already, off the supervisor's loop, into a
    /// directory on the destination's filesystem: installing it is a rename.
    Staged { dir: PathBuf, installed: Installed },
}

impl Source {
    /// A `Code.Path`: an absolute path to a directory or to a regular file,
    /// which must then be a zip archive. The path itself may be a symlink (it
    /// was chosen by the client); symlinks below a directory are not followed.
    pub fn from_path(path: &Path) -> Result<Source, PackageError> {
        if !path.is_absolute() {
            return Err(PackageError::SourceNotAbsolute {
                path: path.to_owned(),
            });
        }
        let meta = fs::metadata(path).map_err(|source| PackageError::ReadSource {
            path: path.to_owned(),
            source,
        })?;
        if meta.is_dir() {
            Ok(Source::Directory(path.to_owned()))
        } else if meta.is_file() {
            Ok(Source::ZipFile(path.to_owned()))
        } else {
            Err(PackageError::SourceKind {
                path: path.to_owned(),
            })
        }
    }

    /// A `Code.ZipFile`: standard base64 (with padding) of a zip archive. The
    /// encoded length is checked before decoding, so an oversized request costs
    /// no allocation.
    pub fn from_base64(encoded: &str, limits: &Limits) -> Result<Source, PackageError> {
        let max_encoded = limits.zipped_bytes.div_ceil(3) * 4;
        if encoded.len() as u64 > max_encoded {
            return Err(PackageError::ZippedTooLarge {
                bytes: encoded.len() as u64 / 4 * 3,
                limit: limits.zipped_bytes,
            });
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|source| PackageError::DecodeBase64 { source })?;
        check_zipped_size(bytes.len() as u64, limits)?;
        Ok(Source::Zip(bytes))
    }
}

/// What an installed package measures (Lambda's CodeSize and CodeSha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The zip's size in bytes; for a directory, the total bytes of its files.
    pub code_size: u64,
    /// Base64 of a SHA-256: of the zip bytes (as Lambda computes it), or for a
    /// directory of its manifest (see [`manifest_line`]).
    pub code_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("Code.Path {path:?} must be an absolute path")]
    SourceNotAbsolute { path: PathBuf },
    #[error("Code.Path {path:?} is neither a directory nor a .zip file")]
    SourceKind { path: PathBuf },
    #[error("cannot read {path:?}: {source}")]
    ReadSource { path: PathBuf, source: io::Error },
    #[error("Code.ZipFile is not valid base64: {source}")]
    DecodeBase64 { source: base64::DecodeError },
    #[error("the zip archive is {bytes} bytes or more: the limit is {limit} bytes zipped")]
    ZippedTooLarge { bytes: u64, limit: u64 },
    #[error("the code is not a readable zip archive: {source}")]
    OpenZip { source: zip::result::ZipError },
    #[error("entry {entry:?} cannot be read: {source}")]
    OpenEntry {
        entry: String,
        source: zip::result::ZipError,
    },
    #[error("the package has more than {limit} entries (files, directories and symlinks)")]
    TooManyEntries { limit: u64 },
    #[error("the unzipped code exceeds {limit} bytes (reached while writing {entry:?})")]
    UnzippedTooLarge { entry: String, limit: u64 },
    #[error("entry {entry:?}: its path is absolute or leads outside the package ('..'); refused")]
    EntryPath { entry: String },
    #[error(
        "entry {entry:?} is a {kind}: only regular files, directories and symlinks are allowed"
    )]
    EntryKind { entry: String, kind: &'static str },
    #[error(
        "entry {entry:?} has mode {mode:o}: setuid, setgid and sticky bits are refused \
         (code runs as an unprivileged user from a read-only mount)"
    )]
    EntryModeBits { entry: String, mode: u32 },
    #[error("entry {entry:?} is encrypted: encrypted zip entries are not supported")]
    EntryEncrypted { entry: String },
    #[error("entry {entry:?}: {reason}")]
    EntryConflict { entry: String, reason: String },
    #[error("symlink {entry:?} -> {target:?}: {reason}")]
    SymlinkTarget {
        entry: String,
        target: String,
        reason: String,
    },
    #[error("entry {entry:?} is corrupt or unreadable: {source}")]
    ReadEntry { entry: String, source: io::Error },
    #[error("cannot write {path:?}: {source}")]
    WriteEntry { path: PathBuf, source: io::Error },
    #[error("the destination {path:?} already exists")]
    DestinationExists { path: PathBuf },
    #[error("cannot create a staging directory in {path:?}: {source}")]
    CreateStaging { path: PathBuf, source: io::Error },
    #[error("cannot move {from:?} into place at {to:?}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot flush {path:?} to disk: {source}")]
    Sync { path: PathBuf, source: io::Error },
}

impl PackageError {
    /// Whether the package (or the request) is at fault, as opposed to the host
    /// (disk full, permissions in the state dir…).
    pub fn is_refusal(&self) -> bool {
        match self {
            PackageError::WriteEntry { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENAMETOOLONG | libc::ENOTDIR | libc::EEXIST | libc::ELOOP)
            ),
            PackageError::DestinationExists { .. }
            | PackageError::CreateStaging { .. }
            | PackageError::Rename { .. }
            | PackageError::Sync { .. } => false,
            _ => true,
        }
    }
}

/// Installs `source` at `dest`, which must not exist; its parent must.
pub fn install(source: &Source, dest: &Path, limits: &Limits) -> Result<Installed, PackageError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(PackageError::DestinationExists {
            path: dest.to_owned(),
        });
    }
    let parent = dest.parent().unwrap_or(Path::new("/"));
    if let Source::Staged { dir, installed } = source {
        fs::rename(dir, dest).map_err(|source| PackageError::Rename {
            from: dir.clone(),
            to: dest.to_owned(),
            source,
        })?;
        sync_dir(parent).map_err(|source| PackageError::Sync {
            path: parent.to_owned(),
            source,
        })?;
        return Ok(installed.clone());
    }
    // The staging dir is a sibling of the destination so that the final rename
    // stays within one filesystem and is atomic. TempDir removes it on any early
    // return.
    let staging_dir = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(parent)
        .map_err(|source| PackageError::CreateStaging {
            path: parent.to_owned(),
            source,
        })?;
    let hash_content = matches!(source, Source::Directory(_));
    let mut staging = Staging::new(staging_dir.path(), *limits, hash_content);

    let installed = match source {
        Source::Zip(bytes) => {
            check_zipped_size(bytes.len() as u64, limits)?;
            extract_zip(bytes, &mut staging)?;
            staging.finish()?;
            zip_measure(bytes)
        }
        Source::ZipFile(path) => {
            let bytes = read_zip_file(path, limits)?;
            extract_zip(&bytes, &mut staging)?;
            staging.finish()?;
            zip_measure(&bytes)
        }
        Source::Staged { .. } => unreachable!("installed above"),
        Source::Directory(path) => {
            copy_dir(path, &mut staging)?;
            let mut manifest = staging.finish()?;
            let code_size = manifest
                .iter()
                .filter(|m| m.kind == 'f')
                .map(|m| m.size)
                .sum();
            manifest.sort_by(|a, b| a.path.as_os_str().cmp(b.path.as_os_str()));
            let mut hasher = Sha256::new();
            for entry in &manifest {
                hasher.update(manifest_line(entry));
            }
            Installed {
                code_size,
                code_sha256: base64::engine::general_purpose::STANDARD.encode(hasher.finalize()),
            }
        }
    };

    set_mode(staging_dir.path(), DIR_MODE)?;
    // Flush the whole tree with one syncfs(2) rather than an fsync per file
    // (a package may hold 20,000 files): the registry records the revision in
    // function.json right after this, and that record must not outlive the
    // files on a crash.
    sync_fs(staging_dir.path())?;
    fs::rename(staging_dir.path(), dest).map_err(|source| PackageError::Rename {
        from: staging_dir.path().to_owned(),
        to: dest.to_owned(),
        source,
    })?;
    // Renamed: nothing is left at the staging path for TempDir to remove.
    let _ = staging_dir.keep();
    sync_dir(parent).map_err(|source| PackageError::Sync {
        path: parent.to_owned(),
        source,
    })?;
    Ok(installed)
}

/// The bytes of the regular files below `root`, not following symlinks: an
/// installed package's unzipped size (what Lambda's 250 MB limit counts).
pub fn tree_size(root: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// One line of a directory package's manifest, the input of its CodeSha256.
///
/// `<kind> <mode> <size> <sha256> <path>\0` where kind is `d`, `f` or `l`; mode
/// is the installed mode in 4 octal digits; size and sha256 (lowercase hex) are
/// of the file's content or the link's target (0 and the hash of nothing for a
/// directory); path is relative to the code root, '/'-separated, raw bytes.
/// Lines are concatenated in byte order of path. Only the path contains free
/// bytes and it comes last and cannot contain NUL, so the encoding is
/// unambiguous; ownership and times are not part of it, so the same tree
/// deployed twice hashes the same.
pub fn manifest_line(entry: &ManifestEntry) -> Vec<u8> {
    let mut line = format!(
        "{} {:04o} {} {} ",
        entry.kind,
        entry.mode,
        entry.size,
        hex(&entry.sha256)
    )
    .into_bytes();
    line.extend_from_slice(entry.path.as_os_str().as_bytes());
    line.push(0);
    line
}

/// One installed entry, as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub kind: char,
    pub mode: u32,
    pub size: u64,
    pub sha256: [u8; 32],
    pub path: PathBuf,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_zipped_size(bytes: u64, limits: &Limits) -> Result<(), PackageError> {
    if bytes > limits.zipped_bytes {
        return Err(PackageError::ZippedTooLarge {
            bytes,
            limit: limits.zipped_bytes,
        });
    }
    Ok(())
}

fn zip_measure(bytes: &[u8]) -> Installed {
    Installed {
        code_size: bytes.len() as u64,
        code_sha256: base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes)),
    }
}

/// Reads at most the limit plus one byte, so a file that grows while being
/// read still cannot make us read more.
fn read_zip_file(path: &Path, limits: &Limits) -> Result<Vec<u8>, PackageError> {
    let read_err = |source| PackageError::ReadSource {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    check_zipped_size(len, limits)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limits.zipped_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    check_zipped_size(bytes.len() as u64, limits)?;
    Ok(bytes)
}

/// The kind of an entry, from the file-type bits of its mode (stat(2) S_IFMT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

fn classify(entry: &str, mode: u32) -> Result<Kind, PackageError> {
    let refuse = |kind| {
        Err(PackageError::EntryKind {
            entry: entry.to_owned(),
            kind,
        })
    };
    match mode & libc::S_IFMT {
        libc::S_IFREG => Ok(Kind::File),
        libc::S_IFDIR => Ok(Kind::Dir),
        libc::S_IFLNK => Ok(Kind::Symlink),
        libc::S_IFIFO => refuse("fifo"),
        libc::S_IFSOCK => refuse("socket"),
        libc::S_IFCHR => refuse("character device"),
        libc::S_IFBLK => refuse("block device"),
        _ => refuse("file of unknown type"),
    }
}

fn check_mode_bits(entry: &str, mode: u32) -> Result<(), PackageError> {
    if mode & SPECIAL_BITS != 0 {
        return Err(PackageError::EntryModeBits {
            entry: entry.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

fn file_mode(source_mode: u32) -> u32 {
    if source_mode & 0o111 != 0 {
        EXEC_FILE_MODE
    } else {
        FILE_MODE
    }
}

fn extract_zip(bytes: &[u8], staging: &mut Staging) -> Result<(), PackageError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|source| PackageError::OpenZip { source })?;
    // The central directory's count is checked up front; Staging counts again
    // on what is written.
    if archive.len() as u64 > staging.limits.entries {
        return Err(PackageError::TooManyEntries {
            limit: staging.limits.entries,
        });
    }
    for index in 0..archive.len() {
        let entry_name = |archive: &zip::ZipArchive<_>| {
            archive
                .name_for_index(index)
                .map_or_else(|| format!("#{index}"), str::to_owned)
        };
        // Opened once to turn a failure into an error naming the entry (the
        // open entry borrows the archive, so the name cannot be looked up
        // while it is held), then again to read it.
        if let Err(source) = archive.by_index(index).map(drop) {
            return Err(match source {
                zip::result::ZipError::UnsupportedArchive(msg)
                    if msg == zip::result::ZipError::PASSWORD_REQUIRED =>
                {
                    PackageError::EntryEncrypted {
                        entry: entry_name(&archive),
                    }
                }
                source => PackageError::OpenEntry {
                    entry: entry_name(&archive),
                    source,
                },
            });
        }
        let mut entry = archive
            .by_index(index)
            .map_err(|source| PackageError::OpenEntry {
                entry: format!("#{index}"),
                source,
            })?;
        let name = entry.name().to_owned();
        if entry.encrypted() {
            return Err(PackageError::EntryEncrypted { entry: name });
        }
        // enclosed_name() is None for absolute paths, NUL bytes and paths whose
        // `..` climb above the root; `a/../b` is allowed and normalised.
        let rel = entry
            .enclosed_name()
            .ok_or_else(|| PackageError::EntryPath {
                entry: name.clone(),
            })?;
        let rel = normalize(&rel).ok_or_else(|| PackageError::EntryPath {
            entry: name.clone(),
        })?;
        // No unix mode (e.g. made on another system): a name ending in '/' is
        // a directory, anything else a plain file.
        let mode = match entry.unix_mode() {
            Some(mode) if mode & libc::S_IFMT != 0 => mode,
            Some(mode) if entry.is_dir() => mode | libc::S_IFDIR,
            Some(mode) => mode | libc::S_IFREG,
            None if entry.is_dir() => libc::S_IFDIR | DIR_MODE,
            None => libc::S_IFREG | FILE_MODE,
        };
        let kind = classify(&name, mode)?;
        check_mode_bits(&name, mode)?;
        if rel.as_os_str().is_empty() {
            if kind == Kind::Dir {
                continue; // "./": the root itself
            }
            return Err(PackageError::EntryPath { entry: name });
        }
        match kind {
            Kind::Dir => staging.dir(&rel, &name)?,
            Kind::File => {
                staging.file(&rel, &name, file_mode(mode), &mut entry)?;
            }
            Kind::Symlink => {
                let mut target = Vec::new();
                (&mut entry)
                    .take(MAX_SYMLINK_TARGET_BYTES + 1)
                    .read_to_end(&mut target)
                    .map_err(|source| PackageError::ReadEntry {
                        entry: name.clone(),
                        source,
                    })?;
                staging.symlink(&rel, &name, OsString::from_vec(target))?;
            }
        }
    }
    Ok(())
}

/// Copies a directory tree without following symlinks below `root`.
fn copy_dir(root: &Path, staging: &mut Staging) -> Result<(), PackageError> {
    let read_err = |path: &Path, source| PackageError::ReadSource {
        path: path.to_owned(),
        source,
    };
    // Depth-first with an explicit stack: a deep tree cannot overflow ours.
    let mut pending = vec![PathBuf::new()];
    while let Some(rel_dir) = pending.pop() {
        let abs_dir = root.join(&rel_dir);
        let mut names = fs::read_dir(&abs_dir)
            .and_then(|it| {
                it.map(|e| e.map(|e| e.file_name()))
                    .collect::<io::Result<Vec<_>>>()
            })
            .map_err(|e| read_err(&abs_dir, e))?;
        names.sort();
        for name in names {
            let rel = rel_dir.join(&name);
            let abs = root.join(&rel);
            let entry = rel.to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&abs).map_err(|e| read_err(&abs, e))?;
            let kind = classify(&entry, meta.mode())?;
            check_mode_bits(&entry, meta.mode())?;
            match kind {
                Kind::Dir => {
                    staging.dir(&rel, &entry)?;
                    pending.push(rel);
                }
                Kind::Symlink => {
                    let target = fs::read_link(&abs).map_err(|e| read_err(&abs, e))?;
                    staging.symlink(&rel, &entry, target.into_os_string())?;
                }
                Kind::File => {
                    // O_NOFOLLOW: the file may have been replaced by a symlink
                    // since the lstat; O_NONBLOCK: or by a fifo, whose open
                    // would block. fstat then confirms it is the file we saw.
                    let mut file = OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                        .open(&abs)
                        .map_err(|e| read_err(&abs, e))?;
                    let now = file.metadata().map_err(|e| read_err(&abs, e))?;
                    if !now.is_file() || now.ino() != meta.ino() || now.dev() != meta.dev() {
                        return Err(PackageError::EntryConflict {
                            entry,
                            reason: "it changed while being copied; deploy again".into(),
                        });
                    }
                    staging.file(&rel, &entry, file_mode(meta.mode()), &mut file)?;
                }
            }
        }
    }
    Ok(())
}

/// A symlink whose creation waits until every file and directory is written.
struct PendingLink {
    rel: PathBuf,
    entry: String,
    target: OsString,
}

/// The staging tree being filled, with the running totals the limits apply to.
struct Staging<'a> {
    root: &'a Path,
    limits: Limits,
    entries: u64,
    written: u64,
    /// Symlinks are created last, so no file or directory is ever written
    /// through one (a link `a -> b` followed by an entry `a/x`).
    links: Vec<PendingLink>,
    /// Only a directory package is hashed by its manifest; a zip is hashed as
    /// bytes, and hashing 250 MB of content for nothing costs seconds.
    hash_content: bool,
    manifest: Vec<ManifestEntry>,
}

impl<'a> Staging<'a> {
    fn new(root: &'a Path, limits: Limits, hash_content: bool) -> Self {
        Staging {
            root,
            limits,
            entries: 0,
            written: 0,
            links: Vec::new(),
            hash_content,
            manifest: Vec::new(),
        }
    }

    fn count_entry(&mut self) -> Result<(), PackageError> {
        self.entries += 1;
        if self.entries > self.limits.entries {
            return Err(PackageError::TooManyEntries {
                limit: self.limits.entries,
            });
        }
        Ok(())
    }

    fn write_err(&self, rel: &Path) -> impl Fn(io::Error) -> PackageError + '_ {
        let path = self.root.join(rel);
        move |source| PackageError::WriteEntry {
            path: path.clone(),
            source,
        }
    }

    /// Creates the missing ancestors of `rel` as directories; every existing
    /// ancestor must be a real directory (lstat), never a symlink or a file.
    fn parents(&self, rel: &Path, entry: &str) -> Result<(), PackageError> {
        let mut path = self.root.to_path_buf();
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        for component in parent.components() {
            path.push(component);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(PackageError::EntryConflict {
                        entry: entry.to_owned(),
                        reason: format!(
                            "its parent {:?} is not a directory",
                            path.strip_prefix(self.root).unwrap_or(&path)
                        ),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    make_dir(&path)?;
                }
                Err(source) => return Err(PackageError::WriteEntry { path, source }),
            }
        }
        Ok(())
    }

    fn dir(&mut self, rel: &Path, entry: &str) -> Result<(), PackageError> {
        self.count_entry()?;
        self.parents(rel, entry)?;
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            // Zips may list a directory after entries inside it.
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => {
                return Err(PackageError::EntryConflict {
                    entry: entry.to_owned(),
                    reason: "another entry of the same name is not a directory".into(),
                })
            }
            Err(_) => make_dir(&path)?,
        }
        self.manifest.push(ManifestEntry {
            kind: 'd',
            mode: DIR_MODE,
            size: 0,
            sha256: Sha256::digest(b"").into(),
            path: rel.to_owned(),
        });
        Ok(())
    }

    fn file(
        &mut self,
        rel: &Path,
        entry: &str,
        mode: u32,
        content: &mut dyn Read,
    ) -> Result<(), PackageError> {
        self.count_entry()?;
        self.parents(rel, entry)?;
        let path = self.root.join(rel);
        // O_EXCL (create_new) never follows or replaces what is there: a
        // duplicate entry is an error, not an overwrite.
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    PackageError::EntryConflict {
                        entry: entry.to_owned(),
                        reason: "duplicate entry".into(),
                    }
                } else {
                    PackageError::WriteEntry {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; COPY_BUFFER_BYTES];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(PackageError::ReadEntry {
                        entry: entry.to_owned(),
                        source,
                    })
                }
            };
            // Checked before writing: the limit is never exceeded on disk,
            // whatever sizes the archive declares.
            if self.written + n as u64 > self.limits.unzipped_bytes {
                return Err(PackageError::UnzippedTooLarge {
                    entry: entry.to_owned(),
                    limit: self.limits.unzipped_bytes,
                });
            }
            self.written += n as u64;
            size += n as u64;
            if self.hash_content {
                hasher.update(&buf[..n]);
            }
            out.write_all(&buf[..n]).map_err(self.write_err(rel))?;
        }
        // The mode is set explicitly: the umask must not decide what the
        // sandbox user can read.
        out.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(self.write_err(rel))?;
        self.manifest.push(ManifestEntry {
            kind: 'f',
            mode,
            size,
            sha256: hasher.finalize().into(),
            path: rel.to_owned(),
        });
        Ok(())
    }

    /// Checks the target lexically now (absolute, or climbing above the root
    /// from the link's directory); creation and the check through other links
    /// come in `finish`.
    fn symlink(&mut self, rel: &Path, entry: &str, target: OsString) -> Result<(), PackageError> {
        self.count_entry()?;
        let refuse = |reason: &str| PackageError::SymlinkTarget {
            entry: entry.to_owned(),
            target: target.to_string_lossy().into_owned(),
            reason: reason.to_owned(),
        };
        let bytes = target.as_bytes();
        if bytes.is_empty() {
            return Err(refuse("the target is empty"));
        }
        if bytes.len() as u64 > MAX_SYMLINK_TARGET_BYTES {
            return Err(refuse("the target is longer than PATH_MAX"));
        }
        if bytes.contains(&0) {
            return Err(refuse("the target contains a NUL byte"));
        }
        let target_path = Path::new(&target);
        if target_path.is_absolute() {
            return Err(refuse(
                "absolute targets are refused: use a path relative to the link",
            ));
        }
        let mut depth = rel.parent().map_or(0, |p| p.components().count());
        for component in target_path.components() {
            match component {
                Component::ParentDir if depth == 0 => {
                    return Err(refuse("it leads outside the package"));
                }
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        self.links.push(PendingLink {
            rel: rel.to_owned(),
            entry: entry.to_owned(),
            target,
        });
        Ok(())
    }

    /// Creates the symlinks, then checks each one's target by resolving it
    /// inside the tree, through the other links: a lexical check alone misses
    /// `x -> d/s/..` where `d/s -> ..`, which physically leads above the root.
    fn finish(mut self) -> Result<Vec<ManifestEntry>, PackageError> {
        let links = std::mem::take(&mut self.links);
        for link in &links {
            self.parents(&link.rel, &link.entry)?;
            let path = self.root.join(&link.rel);
            std::os::unix::fs::symlink(&link.target, &path).map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    PackageError::EntryConflict {
                        entry: link.entry.clone(),
                        reason: "duplicate entry".into(),
                    }
                } else {
                    PackageError::WriteEntry { path, source }
                }
            })?;
        }
        for link in &links {
            if let Err(reason) = resolve_in_tree(self.root, &link.rel) {
                return Err(PackageError::SymlinkTarget {
                    entry: link.entry.clone(),
                    target: link.target.to_string_lossy().into_owned(),
                    reason,
                });
            }
            self.manifest.push(ManifestEntry {
                kind: 'l',
                mode: 0o777,
                size: link.target.len() as u64,
                sha256: Sha256::digest(link.target.as_bytes()).into(),
                path: link.rel.clone(),
            });
        }
        Ok(self.manifest)
    }
}

/// Resolves the symlink at `rel` the way the kernel would, but with `root` as
/// the top: fails if any step climbs above it or meets an absolute target.
/// Missing components resolve lexically (a dangling link inside the tree is
/// harmless).
fn resolve_in_tree(root: &Path, rel: &Path) -> Result<(), String> {
    let mut at: Vec<OsString> = rel
        .parent()
        .map(|p| p.iter().map(OsStr::to_owned).collect())
        .unwrap_or_default();
    let first = fs::read_link(root.join(rel)).map_err(|e| e.to_string())?;
    let mut pending: VecDeque<OsString> = first.iter().map(OsStr::to_owned).collect();
    let mut hops = 1;
    while let Some(part) = pending.pop_front() {
        match part.as_bytes() {
            b"." => {}
            b".." => {
                if at.pop().is_none() {
                    return Err("it leads outside the package".into());
                }
            }
            b"/" => return Err("it leads to an absolute path".into()),
            _ => {
                at.push(part);
                let here: PathBuf = root.join(at.iter().collect::<PathBuf>());
                let Ok(meta) = fs::symlink_metadata(&here) else {
                    continue;
                };
                if meta.file_type().is_symlink() {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err("too many levels of symbolic links".into());
                    }
                    let next = fs::read_link(&here).map_err(|e| e.to_string())?;
                    if next.is_absolute() {
                        return Err(format!(
                            "it leads through {:?}, a link to an absolute path",
                            here.strip_prefix(root).unwrap_or(&here)
                        ));
                    }
                    at.pop();
                    for part in next.iter().rev() {
                        pending.push_front(part.to_owned());
                    }
                }
            }
        }
    }
    Ok(())
}

/// `a/./b` → `a/b`; `a/../b` → `b`; None if it climbs above the root or is
/// absolute. (enclosed_name already refuses those; this also removes the `..`
/// it lets through, so later checks see a plain downward path.)
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn make_dir(path: &Path) -> Result<(), PackageError> {
    fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(path)
        .map_err(|source| PackageError::WriteEntry {
            path: path.to_owned(),
            source,
        })?;
    // mkdir(2) applies the umask; the mode must not depend on it.
    set_mode(path, DIR_MODE)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), PackageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        PackageError::WriteEntry {
            path: path.to_owned(),
            source,
        }
    })
}

pub(crate) fn sync_fs(path: &Path) -> Result<(), PackageError> {
    let sync_err = |source| PackageError::Sync {
        path: path.to_owned(),
        source,
    };
    let dir = File::open(path).map_err(sync_err)?;
    nix::unistd::syncfs(dir.as_raw_fd()).map_err(|e| sync_err(e.into()))
}

/// fsync(2) of a directory makes a rename in it durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests;
