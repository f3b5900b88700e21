//! Container images: an OCI image layout on the host, unpacked into the state
//! dir as a function's root filesystem (docs/architecture.md § Container
//! images).
//!
//! `ImageUri` names a directory holding an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/<alg>/<hex>`), optionally followed by `:TAG`
//! selecting the manifest whose `org.opencontainers.image.ref.name`
//! annotation is TAG (see [`ImageRef::parse`]). Reading follows the
//! image-spec: index → (nested indexes) → manifest → config and layers. Every
//! blob is checked against its descriptor: size and sha256 digest, counted on
//! the bytes read, never trusted.
//!
//! Layers are applied in order into a staging directory next to the
//! destination, entry by entry (no `tar::Archive::unpack`, which would follow
//! links the image planted):
//!
//! * paths are relative to the image's root; an absolute path or one with a
//!   `..` component is refused;
//! * an entry's parent directories are resolved inside the rootfs, through the
//!   symlinks of earlier entries and layers, with the rootfs as `/` (an
//!   absolute link target means the image's root, as it will in the sandbox);
//!   a relative link that climbs above the root is refused;
//! * `.wh.NAME` deletes NAME of the layers below; `.wh..wh..opq` empties its
//!   directory of what the layers below put there (image-spec layer.md);
//! * an entry replaces whatever lower layers left at its path (a directory
//!   over a directory merges);
//! * hard links must name a regular file already in the rootfs;
//! * device nodes and fifos are skipped (the sandbox's /dev is its own, and
//!   an unprivileged function could not make use of them);
//! * modes are normalised as for zip packages: directories 0755, files 0644
//!   or 0755 when any exec bit is set; setuid, setgid and sticky bits are
//!   dropped, ownership is root's (the function runs as its own uid, as on
//!   Lambda, which ignores the image's `User`);
//! * bytes written are counted as they are written: past [`MAX_IMAGE_BYTES`]
//!   the install stops, whatever sizes the archive declares.
//!
//! The result, `<dest>/rootfs` and `<dest>/image.json` (the image's
//! Entrypoint, Cmd, Env and WorkingDir), is renamed into place only when
//! complete.

use super::remove_tree;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use oci_spec::image::{
    Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::package::{self, STAGING_PREFIX};

/// Lambda's limit on a container image: 10 GB uncompressed, layers included.
pub const MAX_IMAGE_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// Files, directories, links and whiteouts in one image: bounds the metadata
/// work one request can cause (a distribution base image has ~10,000).
pub const MAX_IMAGE_ENTRIES: u64 = 1_000_000;
/// index.json, manifests and configs are small JSON documents.
const MAX_JSON_BYTES: u64 = 4 * 1024 * 1024;
/// Nested indexes followed at most.
const MAX_INDEX_DEPTH: usize = 4;
/// The kernel's own bound on symlinks followed (path_resolution(7)).
const MAX_SYMLINK_HOPS: usize = 40;
const MAX_SYMLINK_TARGET_BYTES: usize = 4095;
const COPY_BUFFER_BYTES: usize = 64 * 1024;
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
const EXEC_FILE_MODE: u32 = 0o755;

/// The image's root filesystem inside an installed revision.
pub const ROOTFS_DIR: &str = "rootfs";
/// The image's run settings inside an installed revision ([`ImageRun`]).
pub const RUN_FILE: &str = "image.json";
/// The annotation a tag selects a manifest by (image-spec annotations.md).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Where the sandbox binds the Python interpreter its runtime (B) runs on,
/// out of the image's way (an AWS base image has its own /var/lang).
pub const SANDBOX_PYTHON_DIR: &str = "/.lambdalet/python";
/// Directories the sandbox mounts on inside the image's root (the root is
/// bound read-only, so they must exist beforehand). Made at install time:
/// a non-directory an image put there is replaced.
pub const MOUNT_POINTS: &[&str] = &["proc", "dev", "tmp", ".lambdalet", ".lambdalet/python"];

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// What the image's config says about running it (image-spec config.md,
/// `config`), as stored next to its rootfs. `User` is recorded but not
/// used: the function runs as its own uid, as on Lambda.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRun {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` strings, in the image's order.
    pub env: Vec<String>,
    /// Empty: `/`.
    pub working_dir: String,
    pub user: String,
    /// The manifest's digest (`sha256:…`): the image's identity.
    pub manifest_digest: String,
}

/// What an installed image measures (Lambda's CodeSize and CodeSha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledImage {
    pub run: ImageRun,
    /// The layers' blob sizes added up (compressed, as stored).
    pub code_size: u64,
    /// The manifest digest's hex, as Lambda shows an image's CodeSha256.
    pub code_sha256: String,
}

/// Limits of one image install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub bytes: u64,
    pub entries: u64,
}

impl ImageLimits {
    pub const LAMBDA: ImageLimits = ImageLimits {
        bytes: MAX_IMAGE_BYTES,
        entries: MAX_IMAGE_ENTRIES,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("Code.ImageUri {uri:?}: {reason}")]
    Uri { uri: String, reason: String },
    #[error("Code.ImageUri: {path:?} is not an OCI image layout: {reason}")]
    NotALayout { path: PathBuf, reason: String },
    #[error("Code.ImageUri: {reason}")]
    Select { reason: String },
    #[error("blob {digest} ({what}): {reason}")]
    Blob {
        digest: String,
        what: String,
        reason: String,
    },
    #[error("blob {digest} ({what}) is not valid JSON of its kind: {reason}")]
    Json {
        digest: String,
        what: String,
        reason: String,
    },
    #[error("the image is for {os}/{arch}: this host runs linux/{host}")]
    Platform {
        os: String,
        arch: String,
        host: String,
    },
    #[error("layer {index} ({digest}): media type {media_type} is not supported: {hint}")]
    LayerType {
        index: usize,
        digest: String,
        media_type: String,
        hint: &'static str,
    },
    #[error("layer {index} ({digest}): entry {entry:?}: {reason}")]
    Entry {
        index: usize,
        digest: String,
        entry: String,
        reason: String,
    },
    #[error("layer {index} ({digest}) is not a readable tar archive: {source}")]
    Tar {
        index: usize,
        digest: String,
        source: io::Error,
    },
    #[error(
        "the unpacked image exceeds {limit} bytes (reached in layer {index}, entry {entry:?})"
    )]
    TooLarge {
        index: usize,
        entry: String,
        limit: u64,
    },
    #[error("the image has more than {limit} entries (files, directories, links, whiteouts)")]
    TooManyEntries { limit: u64 },
    #[error("cannot write {path:?}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path:?}: {source}")]
    ReadRun { path: PathBuf, source: io::Error },
    #[error("the destination {path:?} already exists")]
    DestinationExists { path: PathBuf },
    #[error("{0}")]
    Package(#[from] package::PackageError),
}

impl ImageError {
    /// Whether the image (or the request) is at fault, as opposed to the host.
    pub fn is_refusal(&self) -> bool {
        match self {
            ImageError::Write { .. }
            | ImageError::ReadRun { .. }
            | ImageError::DestinationExists { .. } => false,
            ImageError::Package(e) => e.is_refusal(),
            _ => true,
        }
    }
}

/// A parsed `ImageUri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The layout's directory (absolute).
    pub layout: PathBuf,
    /// Select the manifest annotated with this `ref.name`; None: the only one
    /// (or the one for this host's platform).
    pub tag: Option<String>,
}

impl ImageRef {
    /// `/abs/layout` or `/abs/layout:TAG`. The whole string is the layout
    /// when it names a directory with an `oci-layout` file; otherwise the
    /// text after the last `:` is the tag (as in skopeo's `oci:PATH:TAG`), so
    /// a layout directory whose name has a `:` is still reachable.
    pub fn parse(uri: &str) -> Result<ImageRef, ImageError> {
        let bad = |reason: &str| ImageError::Uri {
            uri: uri.to_owned(),
            reason: reason.to_owned(),
        };
        if !uri.starts_with('/') {
            return Err(bad(
                "it must be the absolute path of an OCI image layout directory, \
                 optionally followed by :TAG",
            ));
        }
        if uri.contains('\0') {
            return Err(bad("it contains a NUL byte"));
        }
        if Path::new(uri).join("oci-layout").is_file() {
            return Ok(ImageRef {
                layout: PathBuf::from(uri),
                tag: None,
            });
        }
        if let Some((path, tag)) = uri.rsplit_once(':') {
            if !tag.contains('/') {
                if !valid_tag(tag) {
                    return Err(bad(
                        "the tag after ':' must match [A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
                    ));
                }
                return Ok(ImageRef {
                    layout: PathBuf::from(path),
                    tag: Some(tag.to_owned()),
                });
            }
        }
        Ok(ImageRef {
            layout: PathBuf::from(uri),
            tag: None,
        })
    }
}

/// The OCI tag grammar (distribution-spec): `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The image's architecture name for this host (image-spec: GOARCH values).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Reads the run settings of an installed image revision.
pub fn load_run(code_dir: &Path) -> Result<ImageRun, ImageError> {
    let path = code_dir.join(RUN_FILE);
    let text = fs::read_to_string(&path).map_err(|source| ImageError::ReadRun {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ImageError::ReadRun {
        path,
        source: io::Error::other(e),
    })
}

/// Installs the image `uri` at `dest` (which must not exist; its parent
/// must): `dest/rootfs` and `dest/image.json`.
pub fn install(uri: &str, dest: &Path, limits: &ImageLimits) -> Result<InstalledImage, ImageError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(ImageError::DestinationExists {
            path: dest.to_owned(),
        });
    }
    let image = ImageRef::parse(uri)?;
    let layout = Layout::open(&image.layout)?;
    let (manifest_desc, manifest) = layout.select(image.tag.as_deref())?;
    let config: ImageConfiguration = layout.json(manifest.config(), "config")?;
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    if os != "linux" || arch != host_arch() {
        return Err(ImageError::Platform {
            os,
            arch,
            host: host_arch().to_owned(),
        });
    }

    let parent = dest.parent().unwrap_or(Path::new("/"));
    // A sibling of the destination, so that the final rename is atomic;
    // named like the package installer's staging dirs, so that a leftover
    // is removed when the registry opens.
    let staging = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(parent)
        .map_err(|source| ImageError::Write {
            path: parent.to_owned(),
            source,
        })?;
    let root = staging.path().join(ROOTFS_DIR);
    make_dir(&root)?;
    let mut unpacker = Unpacker {
        root: &root,
        limits: *limits,
        written: 0,
        entries: 0,
    };
    let mut code_size = 0u64;
    for (index, layer) in manifest.layers().iter().enumerate() {
        code_size = code_size.saturating_add(layer.size());
        layout.apply_layer(index, layer, &mut unpacker)?;
    }
    for point in MOUNT_POINTS {
        unpacker.mount_point(Path::new(point))?;
    }

    let c = config.config().clone().unwrap_or_default();
    // A WorkingDir the layers lack is made, as container runtimes do (runc
    // creates the process's cwd); one that cannot be (a file is in the way)
    // fails at init with Runtime.InvalidWorkingDir.
    if let Some(dir) = c.working_dir().as_deref().filter(|d| d.starts_with('/')) {
        let _ = unpacker.resolve_dir(
            Path::new(dir.trim_start_matches('/')),
            &mut HashSet::new(),
            true,
        );
    }
    let run = ImageRun {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
        user: c.user().clone().unwrap_or_default(),
        manifest_digest: manifest_desc.digest().to_string(),
    };
    let run_path = staging.path().join(RUN_FILE);
    let json = serde_json::to_vec_pretty(&run).expect("ImageRun serialises");
    fs::write(&run_path, json).map_err(|source| ImageError::Write {
        path: run_path,
        source,
    })?;
    set_mode(staging.path(), DIR_MODE)?;
    package::sync_fs(staging.path())?;
    fs::rename(staging.path(), dest).map_err(|source| ImageError::Write {
        path: dest.to_owned(),
        source,
    })?;
    let _ = staging.keep();
    package::sync_dir(parent).map_err(|source| ImageError::Write {
        path: parent.to_owned(),
        source,
    })?;
    Ok(InstalledImage {
        code_size,
        code_sha256: manifest_desc.digest().digest().to_owned(),
        run,
    })
}

/// An OCI image layout directory.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn open(dir: &Path) -> Result<Layout, ImageError> {
        let not = |reason: String| ImageError::NotALayout {
            path: dir.to_owned(),
            reason,
        };
        if !dir.is_dir() {
            return Err(not("it is not a directory".into()));
        }
        let marker = fs::read(dir.join("oci-layout")).map_err(|e| {
            not(format!(
                "no readable oci-layout file ({e}); export the image with e.g. \
                 `skopeo copy docker-daemon:IMAGE oci:DIR:TAG`"
            ))
        })?;
        let version = serde_json::from_slice::<serde_json::Value>(&marker)
            .ok()
            .and_then(|v| v.get("imageLayoutVersion")?.as_str().map(str::to_owned));
        match version.as_deref() {
            Some(v) if v.starts_with("1.") => {}
            Some(v) => return Err(not(format!("imageLayoutVersion {v:?} is not 1.x"))),
            None => {
                return Err(not(
                    "oci-layout is not {\"imageLayoutVersion\": \"1.0.0\"}".into()
                ))
            }
        }
        if !dir.join("index.json").is_file() {
            return Err(not("it has no index.json".into()));
        }
        Ok(Layout {
            dir: dir.to_owned(),
        })
    }

    /// The manifest to run: from index.json, through nested indexes,
    /// selected by tag, else the only one, else the one for this host's
    /// platform.
    fn select(&self, tag: Option<&str>) -> Result<(Descriptor, ImageManifest), ImageError> {
        let path = self.dir.join("index.json");
        let bytes =
            read_bounded(&path, MAX_JSON_BYTES).map_err(|reason| ImageError::NotALayout {
                path: self.dir.clone(),
                reason: format!("index.json: {reason}"),
            })?;
        let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| ImageError::NotALayout {
            path: self.dir.clone(),
            reason: format!("index.json is not an OCI image index: {e}"),
        })?;
        let mut top: Vec<Descriptor> = index.manifests().clone();
        if let Some(tag) = tag {
            top.retain(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME_ANNOTATION))
                    .is_some_and(|name| name == tag)
            });
            if top.is_empty() {
                let tags: Vec<String> = index
                    .manifests()
                    .iter()
                    .filter_map(|d| d.annotations().as_ref()?.get(REF_NAME_ANNOTATION).cloned())
                    .collect();
                return Err(ImageError::Select {
                    reason: format!(
                        "no manifest in index.json is tagged {tag:?} (annotation {REF_NAME_ANNOTATION}); its tags: [{}]",
                        tags.join(", ")
                    ),
                });
            }
        }
        let mut candidates = Vec::new();
        let mut queue: VecDeque<(Descriptor, usize)> = top.into_iter().map(|d| (d, 0)).collect();
        while let Some((desc, depth)) = queue.pop_front() {
            if is_index(desc.media_type()) {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(ImageError::Select {
                        reason: format!("indexes are nested more than {MAX_INDEX_DEPTH} deep"),
                    });
                }
                let nested: ImageIndex = self.json(&desc, "image index")?;
                queue.extend(nested.manifests().iter().cloned().map(|d| (d, depth + 1)));
            } else if is_manifest(desc.media_type()) {
                candidates.push(desc);
            }
            // Anything else (attestations, signatures, artifacts) is not an
            // image to run.
        }
        let chosen = match candidates.len() {
            0 => {
                return Err(ImageError::Select {
                    reason: "index.json lists no image manifest".into(),
                })
            }
            1 => candidates.pop().expect("one"),
            _ => {
                let mut here: Vec<Descriptor> = candidates
                    .iter()
                    .filter(|d| {
                        d.platform().as_ref().is_some_and(|p| {
                            p.os().to_string() == "linux"
                                && p.architecture().to_string() == host_arch()
                        })
                    })
                    .cloned()
                    .collect();
                if here.len() != 1 {
                    let listed: Vec<String> = candidates
                        .iter()
                        .map(|d| {
                            let platform =
                                d.platform().as_ref().map_or("no platform".into(), |p| {
                                    format!("{}/{}", p.os(), p.architecture())
                                });
                            format!("{} ({platform})", d.digest())
                        })
                        .collect();
                    return Err(ImageError::Select {
                        reason: format!(
                            "index.json lists {} manifests and {} of them are for linux/{}; \
                             name one with ImageUri PATH:TAG: [{}]",
                            candidates.len(),
                            here.len(),
                            host_arch(),
                            listed.join(", ")
                        ),
                    });
                }
                here.pop().expect("one")
            }
        };
        let manifest: ImageManifest = self.json(&chosen, "image manifest")?;
        Ok((chosen, manifest))
    }

    /// The file of `desc`'s blob: `blobs/sha256/<hex>`, a regular file.
    fn blob_path(&self, desc: &Descriptor, what: &str) -> Result<PathBuf, ImageError> {
        let digest = desc.digest();
        let bad = |reason: String| ImageError::Blob {
            digest: digest.to_string(),
            what: what.to_owned(),
            reason,
        };
        if *digest.algorithm() != DigestAlgorithm::Sha256 {
            return Err(bad(format!(
                "digest algorithm {} is not supported (only sha256)",
                digest.algorithm()
            )));
        }
        let hex = digest.digest();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("not a sha256 digest".into()));
        }
        let path = self.dir.join("blobs").join("sha256").join(hex);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(path),
            Ok(_) => Err(bad(format!("{path:?} is not a regular file"))),
            Err(e) => Err(bad(format!("missing from the layout ({path:?}: {e})"))),
        }
    }

    /// A JSON blob, its size and digest checked, parsed as `T`.
    fn json<T: serde::de::DeserializeOwned>(
        &self,
        desc: &Descriptor,
        what: &str,
    ) -> Result<T, ImageError> {
        let path = self.blob_path(desc, what)?;
        let bad = |reason: String| ImageError::Blob {
            digest: desc.digest().to_string(),
            what: what.to_owned(),
            reason,
        };
        if desc.size() > MAX_JSON_BYTES {
            return Err(bad(format!(
                "its descriptor says {} bytes: a {what} is at most {MAX_JSON_BYTES}",
                desc.size()
            )));
        }
        let bytes = read_bounded(&path, MAX_JSON_BYTES).map_err(bad)?;
        check_blob(desc, bytes.len() as u64, &Sha256::digest(&bytes)).map_err(bad)?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Json {
            digest: desc.digest().to_string(),
            what: what.to_owned(),
            reason: e.to_string(),
        })
    }

    fn apply_layer(
        &self,
        index: usize,
        desc: &Descriptor,
        unpacker: &mut Unpacker,
    ) -> Result<(), ImageError> {
        let digest = desc.digest().to_string();
        let media_type = desc.media_type().to_string();
        let gzip = match media_type.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => false,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => true,
            t if t.ends_with("+zstd") => return Err(ImageError::LayerType {
                index,
                digest,
                media_type,
                hint:
                    "zstd layers are not supported; rebuild or convert the image with gzip layers",
            }),
            _ => {
                return Err(ImageError::LayerType {
                    index,
                    digest,
                    media_type,
                    hint: "a layer must be a tar or tar+gzip",
                })
            }
        };
        let path = self.blob_path(desc, &format!("layer {index}"))?;
        let file = File::open(&path).map_err(|e| ImageError::Blob {
            digest: digest.clone(),
            what: format!("layer {index}"),
            reason: e.to_string(),
        })?;
        let mut hashing = HashingReader {
            inner: file,
            hasher: Sha256::new(),
            read: 0,
            limit: desc.size(),
        };
        let tar_err = |source: io::Error| ImageError::Tar {
            index,
            digest: digest.clone(),
            source,
        };
        let mut seen = HashSet::new();
        let applied = if gzip {
            let mut decoder = GzDecoder::new(&mut hashing);
            // Nothing past the tar's end is decompressed: a gzip stream may
            // go on for terabytes. Its compressed bytes are hashed below.
            unpacker.layer(index, &digest, &mut decoder, &mut seen)
        } else {
            unpacker.layer(index, &digest, &mut hashing, &mut seen)
        };
        // The whole blob is hashed, whatever the tar reader left unread. A
        // corrupt blob is reported as such, not as the tar error it caused.
        let drained = io::copy(&mut hashing, &mut io::sink());
        let hash = hashing.hasher.finalize();
        let checked = check_blob(desc, hashing.read, &hash).map_err(|reason| ImageError::Blob {
            digest: digest.clone(),
            what: format!("layer {index}"),
            reason,
        });
        match (checked, applied) {
            (Err(e), _) if drained.is_ok() => Err(e),
            (_, Err(e)) => Err(e),
            (checked, Ok(())) => {
                drained.map_err(tar_err)?;
                checked
            }
        }
    }
}

fn is_index(t: &MediaType) -> bool {
    matches!(t, MediaType::ImageIndex)
        || t.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn is_manifest(t: &MediaType) -> bool {
    matches!(t, MediaType::ImageManifest)
        || t.to_string() == "application/vnd.docker.distribution.manifest.v2+json"
}

/// The bytes read match the descriptor: size first, then the sha256.
fn check_blob(desc: &Descriptor, size: u64, hash: &[u8]) -> Result<(), String> {
    if size != desc.size() {
        return Err(format!(
            "its descriptor says {} bytes, the blob has {size}{}",
            desc.size(),
            if size > desc.size() { " or more" } else { "" }
        ));
    }
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    if hex != desc.digest().digest() {
        return Err(format!(
            "its content's sha256 is {hex}: the blob is corrupt or not the one the descriptor names"
        ));
    }
    Ok(())
}

/// Reads at most `limit` bytes of a file; more is an error.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("larger than {limit} bytes"));
    }
    Ok(bytes)
}

/// Hashes and counts what is read through it, and reads at most one byte
/// past the descriptor's size (so an oversized blob is detected without
/// reading it all).
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = (self.limit + 1).saturating_sub(self.read);
        if room == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// The rootfs being built, with the running totals the limits apply to.
struct Unpacker<'a> {
    root: &'a Path,
    limits: ImageLimits,
    written: u64,
    entries: u64,
}

impl Unpacker<'_> {
    /// Applies one layer's tar stream. `seen` collects the (resolved) paths
    /// this layer wrote, so that its own opaque whiteouts spare them.
    fn layer(
        &mut self,
        index: usize,
        digest: &str,
        reader: &mut dyn Read,
        seen: &mut HashSet<PathBuf>,
    ) -> Result<(), ImageError> {
        let tar_err = |source: io::Error| ImageError::Tar {
            index,
            digest: digest.to_owned(),
            source,
        };
        let mut archive = tar::Archive::new(reader);
        let mut opaque = Vec::new();
        for entry in archive.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw).into_owned();
            let fail = |reason: String| ImageError::Entry {
                index,
                digest: digest.to_owned(),
                entry: name.clone(),
                reason,
            };
            self.entries += 1;
            if self.entries > self.limits.entries {
                return Err(ImageError::TooManyEntries {
                    limit: self.limits.entries,
                });
            }
            let Some(rel) = entry_path(&raw).map_err(&fail)? else {
                continue; // the layer's root itself: "./"
            };
            let file_name = rel.file_name().expect("normal last component").to_owned();
            let parent_rel = rel.parent().unwrap_or(Path::new(""));
            let fname = file_name.to_string_lossy();
            if let Some(hidden) = fname.strip_prefix(WHITEOUT_PREFIX) {
                // A whiteout in a directory no layer made hides nothing.
                let Some(parent) = self.resolve_dir(parent_rel, seen, false).map_err(&fail)? else {
                    continue;
                };
                if fname == OPAQUE_WHITEOUT {
                    opaque.push(parent);
                    continue;
                }
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(fail("a whiteout must name an entry".into()));
                }
                let target = parent.join(hidden);
                if !seen.contains(&target) {
                    remove_tree(&self.root.join(&target)).map_err(|e| fail(e.to_string()))?;
                }
                continue;
            }
            let parent = self
                .resolve_dir(parent_rel, seen, true)
                .map_err(&fail)?
                .expect("created when missing");
            let rel = parent.join(&file_name);
            let path = self.root.join(&rel);
            let kind = entry.header().entry_type();
            let mode = entry.header().mode().unwrap_or(0o644);
            match kind {
                tar::EntryType::Directory => {
                    match fs::symlink_metadata(&path) {
                        Ok(m) if m.is_dir() => {}
                        Ok(_) => {
                            remove_tree(&path).map_err(|e| fail(e.to_string()))?;
                            make_dir(&path)?;
                        }
                        Err(_) => make_dir(&path)?,
                    }
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    remove_tree(&path).map_err(|e| fail(e.to_string()))?;
                    self.file(&path, &mut entry, mode, (index, digest), &name)?;
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| fail("a symlink without a target".into()))?
                        .into_owned();
                    check_symlink(&rel, &target).map_err(&fail)?;
                    remove_tree(&path).map_err(|e| fail(e.to_string()))?;
                    std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                        .map_err(|source| ImageError::Write { path, source })?;
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| fail("a hard link without a target".into()))?
                        .into_owned();
                    let target_rel = entry_path(&target)
                        .map_err(|r| fail(format!("hard link target: {r}")))?
                        .ok_or_else(|| fail("a hard link to the root".into()))?;
                    let target_parent = self
                        .resolve_dir(target_rel.parent().unwrap_or(Path::new("")), seen, false)
                        .map_err(|r| fail(format!("hard link target: {r}")))?
                        .ok_or_else(|| {
                            fail(format!(
                                "hard link to {:?}, whose directory is not in the image",
                                String::from_utf8_lossy(&target)
                            ))
                        })?;
                    let source = self
                        .root
                        .join(target_parent)
                        .join(target_rel.file_name().expect("normal last component"));
                    match fs::symlink_metadata(&source) {
                        Ok(m) if m.is_file() => {}
                        _ => {
                            return Err(fail(format!(
                                "hard link to {:?}, which is not a regular file of the image",
                                String::from_utf8_lossy(&target)
                            )))
                        }
                    }
                    if source != path {
                        remove_tree(&path).map_err(|e| fail(e.to_string()))?;
                        fs::hard_link(&source, &path)
                            .map_err(|source| ImageError::Write { path, source })?;
                    }
                }
                // Skipped, not refused: base images ship a few in /dev, which
                // the sandbox replaces with its own.
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => continue,
                // A pax global header (`git archive` writes one) carries
                // metadata for the whole archive, no file.
                tar::EntryType::XGlobalHeader => continue,
                other => {
                    return Err(fail(format!(
                        "entry type {other:?} is not supported (only files, directories, symlinks, hard links; device nodes and fifos are skipped)"
                    )))
                }
            }
            // With its directories: an opaque whiteout of an ancestor
            // spares the path to what this layer wrote.
            let mut at = Some(rel.as_path());
            while let Some(p) = at.filter(|p| !p.as_os_str().is_empty()) {
                if !seen.insert(p.to_owned()) {
                    break;
                }
                at = p.parent();
            }
        }
        for dir in opaque {
            self.clear_lower(&dir, seen)?;
        }
        Ok(())
    }

    /// An opaque whiteout: everything in `dir` that this layer did not write
    /// goes (recursing into the directories it did write).
    fn clear_lower(&self, dir: &Path, seen: &HashSet<PathBuf>) -> Result<(), ImageError> {
        let full = self.root.join(dir);
        let Ok(entries) = fs::read_dir(&full) else {
            return Ok(());
        };
        for entry in entries {
            let entry = entry.map_err(|source| ImageError::Write {
                path: full.clone(),
                source,
            })?;
            let rel = dir.join(entry.file_name());
            if !seen.contains(&rel) {
                remove_tree(&entry.path()).map_err(|source| ImageError::Write {
                    path: entry.path(),
                    source,
                })?;
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.clear_lower(&rel, seen)?;
            }
        }
        Ok(())
    }

    /// Resolves directory `rel` inside the rootfs the way the kernel would
    /// with the rootfs as `/`: through symlinks (absolute targets from the
    /// rootfs), creating missing directories (0755) if `create`, else
    /// answering None for a missing one. Returns the real path, relative to
    /// the rootfs. A relative link that climbs above the root, or a
    /// component that is a file, is an error.
    fn resolve_dir(
        &self,
        rel: &Path,
        seen: &mut HashSet<PathBuf>,
        create: bool,
    ) -> Result<Option<PathBuf>, String> {
        let mut at: Vec<OsString> = Vec::new();
        let mut pending: VecDeque<OsString> = rel.iter().map(OsStr::to_owned).collect();
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            match part.as_bytes() {
                b"." | b"" => continue,
                b".." => {
                    if at.pop().is_none() {
                        return Err(format!("{rel:?} leads above the image's root"));
                    }
                    continue;
                }
                _ => {}
            }
            at.push(part);
            let here_rel: PathBuf = at.iter().collect();
            let here = self.root.join(&here_rel);
            match fs::symlink_metadata(&here) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(format!("{rel:?}: too many levels of symbolic links"));
                    }
                    let target = fs::read_link(&here).map_err(|e| e.to_string())?;
                    at.pop();
                    if target.is_absolute() {
                        at.clear();
                    }
                    for part in target.iter().rev() {
                        if part != OsStr::new("/") {
                            pending.push_front(part.to_owned());
                        }
                    }
                }
                Ok(_) => {
                    return Err(format!(
                        "its parent {here_rel:?} is not a directory in the image"
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    make_dir(&here).map_err(|e| e.to_string())?;
                    seen.insert(here_rel);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(Some(at.iter().collect()))
    }

    fn file(
        &mut self,
        path: &Path,
        content: &mut dyn Read,
        mode: u32,
        (index, digest): (usize, &str),
        entry: &str,
    ) -> Result<(), ImageError> {
        let write_err = |source| ImageError::Write {
            path: path.to_owned(),
            source,
        };
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(write_err)?;
        let mut buf = vec![0u8; COPY_BUFFER_BYTES];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ImageError::Tar {
                        index,
                        digest: digest.to_owned(),
                        source,
                    })
                }
            };
            // Checked before writing: a tar bomb stops at the limit.
            if self.written + n as u64 > self.limits.bytes {
                return Err(ImageError::TooLarge {
                    index,
                    entry: entry.to_owned(),
                    limit: self.limits.bytes,
                });
            }
            self.written += n as u64;
            out.write_all(&buf[..n]).map_err(write_err)?;
        }
        let mode = if mode & 0o111 != 0 {
            EXEC_FILE_MODE
        } else {
            FILE_MODE
        };
        out.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(write_err)
    }

    /// A directory the sandbox mounts on: made if missing, and what an image
    /// put there instead of a directory is replaced.
    fn mount_point(&mut self, rel: &Path) -> Result<(), ImageError> {
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => {
                remove_tree(&path).map_err(|source| ImageError::Write {
                    path: path.clone(),
                    source,
                })?;
                make_dir(&path)
            }
            Err(_) => make_dir(&path),
        }
    }
}

/// A tar entry's name as a relative path of normal components; None for the
/// root itself. Absolute names and `..` are refused (a layer that escapes).
fn entry_path(raw: &[u8]) -> Result<Option<PathBuf>, String> {
    if raw.contains(&0) {
        return Err("its name contains a NUL byte".into());
    }
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(
                    "its path has a '..' component: a layer may not write outside the image's root"
                        .into(),
                )
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(
                    "its path is absolute: layer entries must be relative to the image's root"
                        .into(),
                )
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// A symlink's target: absolute targets name the image's root (the sandbox
/// resolves them there); relative ones must not climb above it.
fn check_symlink(rel: &Path, target: &[u8]) -> Result<(), String> {
    if target.is_empty() {
        return Err("a symlink with an empty target".into());
    }
    if target.len() > MAX_SYMLINK_TARGET_BYTES {
        return Err("a symlink target longer than PATH_MAX".into());
    }
    if target.contains(&0) {
        return Err("a symlink target with a NUL byte".into());
    }
    let target = Path::new(OsStr::from_bytes(target));
    if target.is_absolute() {
        return Ok(());
    }
    let mut depth = rel.parent().map_or(0, |p| p.components().count());
    for component in target.components() {
        match component {
            Component::ParentDir if depth == 0 => {
                return Err(format!(
                    "symlink to {target:?} leads above the image's root"
                ))
            }
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    Ok(())
}

fn make_dir(path: &Path) -> Result<(), ImageError> {
    fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(path)
        .map_err(|source| ImageError::Write {
            path: path.to_owned(),
            source,
        })?;
    set_mode(path, DIR_MODE)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        ImageError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// The argv (and how many of its words are the Cmd) and working directory: ImageConfig's overrides over the image's
/// own (as Lambda and Docker do: a new EntryPoint also drops the image's
/// Cmd unless Command is given).
pub fn command(
    run: &ImageRun,
    config: &crate::protocol::ImageConfig,
) -> (Vec<String>, usize, String) {
    let entrypoint = config
        .entry_point
        .clone()
        .unwrap_or_else(|| run.entrypoint.clone());
    let cmd = match (&config.command, &config.entry_point) {
        (Some(cmd), _) => cmd.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => run.cmd.clone(),
    };
    let cwd = config
        .working_directory
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| Some(run.working_dir.clone()).filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".to_owned());
    let cmd_len = cmd.len();
    (entrypoint.into_iter().chain(cmd).collect(), cmd_len, cwd)
}

/// Refuses an image that would run nothing: neither Entrypoint nor Cmd,
/// after `config`'s overrides.
pub fn check_runnable(
    run: &ImageRun,
    config: &crate::protocol::ImageConfig,
) -> Result<(), ImageError> {
    if command(run, config).0.is_empty() {
        return Err(ImageError::Select {
            reason: "the image has neither Entrypoint nor Cmd: give ImageConfig.EntryPoint or ImageConfig.Command".into(),
        });
    }
    Ok(())
}

/// The variables of an image's `Env` (`NAME=value`), in order; entries
/// without `=` are ignored, as Docker does.
pub fn env_pairs(env: &[String]) -> HashMap<String, String> {
    env.iter()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests;
