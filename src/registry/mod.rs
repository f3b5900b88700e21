//! The registry: functions and their code, persisted in the state dir.
//!
//! Layout under `<state_dir>/functions/<name>/`:
//!
//! * `function.json`: the function's record ([`Record`]), written atomically
//!   (temp file, fsync, rename, fsync of the directory). Mode 0600: the
//!   environment variables in it may be secrets.
//! * `code/<revision>/`: one directory per code revision (1, 2, …), installed by
//!   [`package::install`] and bind-mounted read-only at /var/task. A new
//!   revision leaves the old one in place, since running environments may still
//!   have it mounted; [`Registry::prune_code`] removes what nothing uses.
//! * `opt/<revision>/`: for a function with layers, its layers merged in
//!   order (hard links, see `merge.rs`), bind-mounted read-only at /opt. A
//!   change of layers makes a new revision (the code carried over as links),
//!   so the code and the /opt an environment mounted are pruned together.
//! * `deleted.json`: after DeleteFunction, `function.json` renamed. It keeps the
//!   deleted function's uid reserved while its code directories remain (its
//!   environments may still be running under that uid), and is removed with
//!   the last of them. Creating a function of the same name again takes the
//!   uid back and continues the revision numbers.
//!
//! Layers live under `<state_dir>/layers/` (`layers.rs`).
//!
//! The registry is a plain data structure: the supervisor owns it, calls it
//! from its event loop and decides when code is no longer in use.

pub mod event_invoke;
pub mod image;
pub mod layers;
pub mod merge;
pub mod package;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeInclusive;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::{self, ConfigError, FunctionSpec};
use crate::protocol::{
    CreateFunction, EphemeralStorage, ErrorKind, FunctionCode, FunctionConfiguration,
    FunctionLayer, LayerList, LayerVersion, LayerVersionList, PublishLayerVersion,
    UpdateFunctionCode, UpdateFunctionConfiguration, WireError,
};
use event_invoke::EventInvokeConfig;
use layers::LayerStore;
use package::{Limits, PackageError, Source};

/// Uids (and gids: gid = uid) handed to functions, one per function. Above the
/// range distributions give to login users (1000–9999 by default in
/// login.defs) and below 60000, where nobody-like and system ranges start.
pub const UID_RANGE: RangeInclusive<u32> = 11000..=59999;

const FUNCTIONS_DIR: &str = "functions";
/// Packages being unpacked off the supervisor's loop ([`StageJob`]).
const STAGING_DIR: &str = "staging";
const RECORD_FILE: &str = "function.json";
const TOMBSTONE_FILE: &str = "deleted.json";
const CODE_DIR: &str = "code";
const OPT_DIR: &str = "opt";
/// Prefix of function.json's temp file while it is written.
const RECORD_TEMP_PREFIX: &str = ".function.json.";
/// The version of the record format; a record of another version is refused
/// rather than guessed at.
const RECORD_FORMAT: u32 = 1;
const STATE_DIR_MODE: u32 = 0o755;
const RECORD_MODE: u32 = 0o600;

/// A deployed function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub spec: FunctionSpec,
    /// The revision of the code in `code_dir` (and of `opt_dir`): bumped by
    /// UpdateFunctionCode, and by an UpdateFunctionConfiguration that changes
    /// the layers.
    pub code_revision: u64,
    /// Absolute path of the installed code (`…/code/<code_revision>`).
    pub code_dir: PathBuf,
    /// The uid the function's code runs as; its gid is the same number.
    pub uid: u32,
    pub code_size: u64,
    pub code_sha256: String,
    /// Lambda's format: `2026-11-27T19:07:42.000+0000`.
    pub last_modified: String,
    /// A new UUID on every change of code or configuration.
    pub revision_id: String,
    /// Reserved and provisioned concurrency: not part of the revision (Lambda
    /// changes neither RevisionId nor LastModified for them).
    pub concurrency: Concurrency,
    /// PutFunctionEventInvokeConfig; None: Lambda's defaults.
    pub event_invoke: Option<EventInvokeConfig>,
    /// Its layers, in order (later ones override earlier ones under /opt).
    pub layers: Vec<AttachedLayer>,
    /// The merged layers of `code_revision` (`…/opt/<code_revision>`), bound
    /// at /opt; None without layers (/opt is then an empty directory).
    pub opt_dir: Option<PathBuf>,
    /// A container image's run settings (its revision's `image.json`; the
    /// revision's `rootfs` is its root); None for a Zip package.
    pub image: Option<image::ImageRun>,
}

/// A layer version a function uses, as it was when the function took it: a
/// version deleted later stays with the function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachedLayer {
    pub arn: String,
    pub code_size: u64,
    pub unzipped_size: u64,
}

/// A function's concurrency settings (PutFunctionConcurrency,
/// PutProvisionedConcurrencyConfig). The supervisor validates them against
/// the account's limit before they are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// At most this many concurrent executions, and this many kept out of
    /// every other function's reach; 0 throttles every invoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u32>,
    /// Environments initialised ahead of time and kept warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<ProvisionedConfig>,
}

/// A provisioned-concurrency configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionedConfig {
    pub count: u32,
    /// When it was last set (Unix seconds), for LastModified.
    pub modified_unix: u64,
}

impl Function {
    /// The gid the function's code runs as (equal to the uid).
    pub fn gid(&self) -> u32 {
        self.uid
    }

    pub fn arn(&self) -> String {
        self.spec.arn()
    }

    /// The function as Lambda's API shows it.
    pub fn configuration(&self) -> FunctionConfiguration {
        FunctionConfiguration {
            function_name: self.spec.name.clone(),
            function_arn: self.arn(),
            runtime: match self.spec.image {
                Some(_) => String::new(),
                None => self.spec.runtime.as_str().to_owned(),
            },
            handler: self.spec.handler.clone(),
            package_type: match self.spec.image {
                Some(_) => crate::protocol::PACKAGE_IMAGE,
                None => crate::protocol::PACKAGE_ZIP,
            }
            .to_owned(),
            image_config_response: self.spec.image.as_ref().map(|i| {
                crate::protocol::ImageConfigResponse {
                    image_config: i.config.clone(),
                }
            }),
            memory_size: self.spec.memory_mb,
            timeout: self.spec.timeout_s,
            environment: crate::protocol::Environment {
                variables: self.spec.environment.clone(),
            },
            ephemeral_storage: EphemeralStorage {
                size: self.spec.ephemeral_mb,
            },
            description: self.spec.description.clone(),
            code_size: self.code_size,
            code_sha256: self.code_sha256.clone(),
            last_modified: self.last_modified.clone(),
            version: config::LATEST_VERSION.to_owned(),
            revision_id: self.revision_id.clone(),
            state: "Active".to_owned(),
            layers: self
                .layers
                .iter()
                .map(|l| FunctionLayer {
                    arn: l.arn.clone(),
                    code_size: l.code_size,
                })
                .collect(),
        }
    }

    fn record(&self) -> Record {
        Record {
            format: RECORD_FORMAT,
            spec: self.spec.clone(),
            code_revision: self.code_revision,
            uid: self.uid,
            code_size: self.code_size,
            code_sha256: self.code_sha256.clone(),
            last_modified: self.last_modified.clone(),
            revision_id: self.revision_id.clone(),
            concurrency: self.concurrency,
            event_invoke: self.event_invoke.clone(),
            layers: self.layers.clone(),
        }
    }
}

/// function.json. The code directory is not stored: it follows from the state
/// dir, the name and the revision, so the state dir can be moved.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: u32,
    spec: FunctionSpec,
    code_revision: u64,
    uid: u32,
    code_size: u64,
    code_sha256: String,
    last_modified: String,
    revision_id: String,
    /// Absent in records written before concurrency settings existed.
    #[serde(default)]
    concurrency: Concurrency,
    /// Absent in records written before asynchronous invocation existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_invoke: Option<EventInvokeConfig>,
    /// Absent in records written before layers existed, and when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    layers: Vec<AttachedLayer>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Function not found: {arn}", arn = config::function_arn(name))]
    NotFound { name: String },
    #[error("Function already exist: {name}")]
    AlreadyExists { name: String },
    #[error("{0}")]
    CodeSource(String),
    #[error("{source}")]
    Package { source: PackageError },
    #[error(
        "no free uid left for a new function: all of {}–{} are taken",
        UID_RANGE.start(),
        UID_RANGE.end()
    )]
    AllocateUid,
    #[error("cannot create {path:?}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot read the state dir {path:?}: {source}")]
    ReadStateDir { path: PathBuf, source: io::Error },
    #[error("cannot read {path:?}: {source}")]
    ReadRecord { path: PathBuf, source: io::Error },
    #[error("{path:?} is not a valid function record: {reason}")]
    ParseRecord { path: PathBuf, reason: String },
    #[error("cannot write {path:?}: {source}")]
    WriteRecord { path: PathBuf, source: io::Error },
    #[error("cannot mark {path:?} deleted: {source}")]
    DeleteRecord { path: PathBuf, source: io::Error },
    #[error("Layers: layer version {arn} does not exist (publish it with PublishLayerVersion, or list them with ListLayerVersions)")]
    UnknownLayer { arn: String },
    #[error("Layer version not found: {arn}")]
    LayerVersionNotFound { arn: String },
    #[error(
        "Unzipped size must be smaller than {limit} bytes: the code is {code} bytes and its layers {layers} bytes unzipped"
    )]
    UnzippedTooLarge { code: u64, layers: u64, limit: u64 },
    #[error("cannot build {path:?}: {source}")]
    Merge { path: PathBuf, source: io::Error },
    #[error("{source}")]
    Image { source: image::ImageError },
}

impl From<PackageError> for RegistryError {
    fn from(source: PackageError) -> Self {
        RegistryError::Package { source }
    }
}

/// The one place registry errors become wire errors.
impl From<RegistryError> for WireError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::NotFound { .. } | RegistryError::LayerVersionNotFound { .. } => {
                WireError::not_found(message)
            }
            RegistryError::AlreadyExists { .. } => {
                WireError::new(ErrorKind::ResourceConflictException, message)
            }
            RegistryError::Config(_)
            | RegistryError::CodeSource(_)
            | RegistryError::UnknownLayer { .. }
            | RegistryError::UnzippedTooLarge { .. } => WireError::invalid(message),
            RegistryError::Package { source } if source.is_refusal() => WireError::invalid(message),
            RegistryError::Image { source } if source.is_refusal() => WireError::invalid(message),
            RegistryError::Image { .. } => WireError::service(message),
            RegistryError::Package { .. }
            | RegistryError::AllocateUid
            | RegistryError::CreateDir { .. }
            | RegistryError::ReadStateDir { .. }
            | RegistryError::ReadRecord { .. }
            | RegistryError::ParseRecord { .. }
            | RegistryError::WriteRecord { .. }
            | RegistryError::DeleteRecord { .. }
            | RegistryError::Merge { .. } => WireError::service(message),
        }
    }
}

/// A package or image unpacked by a [`StageJob`], off the supervisor's loop,
/// waiting in the state dir's `staging` directory to become a revision (a
/// rename) in the operation it was staged for.
#[derive(Debug)]
pub enum Staged {
    Code {
        dir: PathBuf,
        installed: package::Installed,
    },
    Image {
        dir: PathBuf,
        installed: image::InstalledImage,
    },
}

/// The slow half of CreateFunction, UpdateFunctionCode and
/// PublishLayerVersion, which needs nothing of the registry: decode, check
/// and unpack the package (or the image) into the staging directory. It is
/// `Send`: the supervisor runs it on a thread of its own.
#[derive(Debug)]
pub struct StageJob {
    code: FunctionCode,
    field: &'static str,
    limits: Limits,
    dest: PathBuf,
}

impl StageJob {
    /// Where the package goes (also where its leftovers are).
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    pub fn run(self) -> Result<Staged, RegistryError> {
        if let Some(uri) = self.code.image_uri.as_deref() {
            if self.code.zip_file.is_some() || self.code.path.is_some() {
                return Err(RegistryError::CodeSource(format!(
                    "send {}.ImageUri alone: an image takes no ZipFile or Path",
                    self.field
                )));
            }
            let installed = image::install(uri, &self.dest, &image::ImageLimits::LAMBDA)
                .map_err(|source| RegistryError::Image { source })?;
            return Ok(Staged::Image {
                dir: self.dest,
                installed,
            });
        }
        let source = code_source(&self.code, self.field, &self.limits)?;
        let installed = package::install(&source, &self.dest, &self.limits)?;
        Ok(Staged::Code {
            dir: self.dest,
            installed,
        })
    }
}

/// The functions of one state dir.
#[derive(Debug)]
pub struct Registry {
    /// `<state_dir>/functions`, absolute.
    functions_dir: PathBuf,
    /// `<state_dir>/staging`: packages unpacked off the loop ([`StageJob`]).
    staging_dir: PathBuf,
    functions: BTreeMap<String, Function>,
    layers: LayerStore,
    limits: Limits,
}

impl Registry {
    /// Loads every function under `<state_dir>/functions`, creating the
    /// directories if needed. Leftovers of an interrupted operation (staging
    /// directories, temp records, code of a function whose creation did not
    /// finish) are removed; a record that cannot be read is an error naming
    /// the file, not a function silently dropped.
    pub fn open(state_dir: &Path) -> Result<Registry, RegistryError> {
        create_dir(state_dir)?;
        let state_dir = state_dir
            .canonicalize()
            .map_err(|source| RegistryError::ReadStateDir {
                path: state_dir.to_owned(),
                source,
            })?;
        let functions_dir = state_dir.join(FUNCTIONS_DIR);
        create_dir(&functions_dir)?;
        // What a stopped supervisor was unpacking is of no operation now.
        let staging_dir = state_dir.join(STAGING_DIR);
        remove_tree(&staging_dir).map_err(|source| RegistryError::CreateDir {
            path: staging_dir.clone(),
            source,
        })?;
        create_dir(&staging_dir)?;
        let mut registry = Registry {
            functions_dir,
            staging_dir,
            functions: BTreeMap::new(),
            layers: LayerStore::open(&state_dir)?,
            limits: Limits::LAMBDA,
        };
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |source| RegistryError::ReadStateDir { path, source }
        };
        let mut uids = BTreeMap::new();
        for entry in
            fs::read_dir(&registry.functions_dir).map_err(read_err(&registry.functions_dir))?
        {
            let entry = entry.map_err(read_err(&registry.functions_dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if config::function_name(&name).ok() != Some(name.as_str()) {
                continue; // not ours
            }
            let dir = entry.path();
            registry.clean_leftovers(&dir)?;
            let record_path = dir.join(RECORD_FILE);
            if !record_path.exists() {
                if !dir.join(TOMBSTONE_FILE).exists() {
                    // Code installed by a create that never wrote its record.
                    remove_tree(&dir).map_err(read_err(&dir))?;
                }
                continue;
            }
            let function = registry.load(&name, &record_path)?;
            if let Some(other) = uids.insert(function.uid, name.clone()) {
                return Err(RegistryError::ParseRecord {
                    path: record_path,
                    reason: format!("uid {} is also the uid of function {other}", function.uid),
                });
            }
            // A re-create finished writing its record but not removing the
            // tombstone.
            let _ = fs::remove_file(dir.join(TOMBSTONE_FILE));
            registry.functions.insert(name, function);
        }
        Ok(registry)
    }

    /// `<state_dir>/functions` (canonical): every code revision is below it.
    pub fn functions_dir(&self) -> &Path {
        &self.functions_dir
    }

    /// The function called `name` (or of that ARN).
    pub fn get(&self, name: &str) -> Option<&Function> {
        self.functions.get(config::function_name(name).ok()?)
    }

    /// Every function, in order of name.
    pub fn list(&self) -> impl Iterator<Item = &Function> + '_ {
        self.functions.values()
    }

    /// The slow half of an operation on `code` (`field`: `Code` or
    /// `Content`), to run anywhere; its result goes to the `*_staged` form of
    /// the operation.
    pub fn stage_job(&self, code: FunctionCode, field: &'static str) -> StageJob {
        StageJob {
            code,
            field,
            limits: self.limits,
            dest: self
                .staging_dir
                .join(uuid::Uuid::new_v4().simple().to_string()),
        }
    }

    /// What CreateFunction checks before its package is unpacked: the
    /// settings, the name is free, the layers exist.
    pub fn precheck_create(&self, req: &CreateFunction) -> Result<(), RegistryError> {
        let spec = FunctionSpec::from_create(req)?;
        if self.functions.contains_key(&spec.name) {
            return Err(RegistryError::AlreadyExists { name: spec.name });
        }
        self.resolve_layers(req.layers.as_deref().unwrap_or(&[]))?;
        Ok(())
    }

    /// What UpdateFunctionCode checks before its package is unpacked: the
    /// function exists.
    pub fn precheck_update_code(&self, req: &UpdateFunctionCode) -> Result<(), RegistryError> {
        self.existing(&req.function_name).map(drop)
    }

    /// CreateFunction.
    pub fn create(&mut self, req: &CreateFunction) -> Result<&Function, RegistryError> {
        self.create_staged(req, None)
    }

    /// CreateFunction, with its package or image unpacked already
    /// ([`StageJob`]); `None`: unpacked here.
    pub fn create_staged(
        &mut self,
        req: &CreateFunction,
        staged: Option<Staged>,
    ) -> Result<&Function, RegistryError> {
        let spec = FunctionSpec::from_create(req)?;
        let name = spec.name.clone();
        if self.functions.contains_key(&name) {
            return Err(RegistryError::AlreadyExists { name });
        }
        let layers = self.resolve_layers(req.layers.as_deref().unwrap_or(&[]))?;
        // An image is read by create_in, from spec.image.
        let (source, staged_image) = match (&spec.image, staged) {
            (Some(_), Some(Staged::Image { dir, installed })) => (None, Some((dir, installed))),
            (Some(_), None) => (None, None),
            (None, Some(Staged::Code { dir, installed })) => {
                (Some(Source::Staged { dir, installed }), None)
            }
            (None, None) => (Some(self.code_source(&req.code, "Code")?), None),
            (_, Some(_)) => {
                return Err(RegistryError::CodeSource(
                    "Code: an image for a function of PackageType Zip, or a package for one of PackageType Image".into(),
                ))
            }
        };
        let dir = self.functions_dir.join(&name);
        let tombstone = read_tombstone(&dir.join(TOMBSTONE_FILE));
        let uid = match tombstone {
            Some(uid) => uid,
            None => self.allocate_uid()?,
        };
        let fresh = !dir.exists();
        let result = self.create_in(&dir, spec, uid, source.as_ref(), staged_image, &layers);
        if result.is_err() && fresh {
            // Nothing of a function that never existed stays behind.
            let _ = remove_tree(&dir);
        }
        let function = result?;
        let _ = fs::remove_file(dir.join(TOMBSTONE_FILE));
        self.functions.insert(name.clone(), function);
        Ok(&self.functions[&name])
    }

    fn create_in(
        &self,
        dir: &Path,
        spec: FunctionSpec,
        uid: u32,
        source: Option<&Source>,
        staged_image: Option<(PathBuf, image::InstalledImage)>,
        layers: &[layers::Resolved],
    ) -> Result<Function, RegistryError> {
        create_dir(dir)?;
        let (Some(source), None) = (source, &spec.image) else {
            let uri = spec
                .image
                .as_ref()
                .map(|i| i.uri.clone())
                .unwrap_or_default();
            let config = spec
                .image
                .as_ref()
                .map(|i| i.config.clone())
                .unwrap_or_default();
            let (code_revision, code_dir, installed) =
                self.install_image(dir, &uri, &config, staged_image)?;
            let function = Function {
                spec,
                code_revision,
                code_dir,
                uid,
                code_size: installed.code_size,
                code_sha256: installed.code_sha256,
                last_modified: lambda_timestamp(SystemTime::now()),
                revision_id: uuid::Uuid::new_v4().to_string(),
                concurrency: Concurrency::default(),
                event_invoke: None,
                layers: Vec::new(),
                opt_dir: None,
                image: Some(installed.run),
            };
            write_record(&dir.join(RECORD_FILE), &function.record()).inspect_err(|_| {
                let _ = remove_tree(&function.code_dir);
            })?;
            return Ok(function);
        };
        let (code_revision, code_dir, installed) = self.install_code(dir, source)?;
        let opt_dir = match self.with_layers(dir, code_revision, &code_dir, layers) {
            Ok(opt_dir) => opt_dir,
            Err(e) => {
                let _ = remove_tree(&code_dir);
                return Err(e);
            }
        };
        let function = Function {
            spec,
            code_revision,
            code_dir,
            uid,
            code_size: installed.code_size,
            code_sha256: installed.code_sha256,
            last_modified: lambda_timestamp(SystemTime::now()),
            revision_id: uuid::Uuid::new_v4().to_string(),
            concurrency: Concurrency::default(),
            event_invoke: None,
            layers: layers.iter().map(attached).collect(),
            opt_dir,
            image: None,
        };
        write_record(&dir.join(RECORD_FILE), &function.record())?;
        Ok(function)
    }

    /// UpdateFunctionCode: installs a new code revision; the previous one stays
    /// until [`Registry::prune_code`] removes it.
    pub fn update_code(&mut self, req: &UpdateFunctionCode) -> Result<&Function, RegistryError> {
        self.update_code_staged(req, None)
    }

    /// UpdateFunctionCode, with its package or image unpacked already
    /// ([`StageJob`]); `None`: unpacked here.
    pub fn update_code_staged(
        &mut self,
        req: &UpdateFunctionCode,
        staged: Option<Staged>,
    ) -> Result<&Function, RegistryError> {
        let name = self.existing(&req.function_name)?;
        let image = self.functions[&name].spec.image.is_some();
        let source = match (image, staged) {
            (true, Some(Staged::Image { dir, installed })) => {
                return self.update_image(name, &req.code, Some((dir, installed)))
            }
            (true, None) => return self.update_image(name, &req.code, None),
            (false, Some(Staged::Code { dir, installed })) => Source::Staged { dir, installed },
            (false, None) => self.code_source(&req.code, "Code")?,
            (true, Some(Staged::Code { .. })) => {
                return Err(RegistryError::CodeSource(
                    "this function's PackageType is Image: send ImageUri (the absolute path of an OCI image layout, optionally :TAG)".into(),
                ))
            }
            (false, Some(Staged::Image { .. })) => {
                return Err(RegistryError::CodeSource(
                    "Code.ImageUri is for functions of PackageType Image (created with \"PackageType\":\"Image\"); this one takes ZipFile or Path".into(),
                ))
            }
        };
        let dir = self.functions_dir.join(&name);
        let (code_revision, code_dir, installed) = self.install_code(&dir, &source)?;
        let mut next = self.functions[&name].clone();
        // The layers stay: the new revision's /opt is the current one's,
        // linked (its layer versions may have been deleted since).
        let sources: Vec<&Path> = next.opt_dir.iter().map(PathBuf::as_path).collect();
        let layers_size = next.layers.iter().map(|l| l.unzipped_size).sum();
        let opt_dir = self
            .build_opt(&dir, code_revision, &code_dir, layers_size, &sources)
            .inspect_err(|_| {
                let _ = remove_tree(&code_dir);
            })?;
        next.code_revision = code_revision;
        next.code_dir = code_dir.clone();
        next.opt_dir = opt_dir;
        next.code_size = installed.code_size;
        next.code_sha256 = installed.code_sha256;
        next.last_modified = lambda_timestamp(SystemTime::now());
        next.revision_id = uuid::Uuid::new_v4().to_string();
        if let Err(e) = write_record(&dir.join(RECORD_FILE), &next.record()) {
            let _ = remove_tree(&code_dir);
            if let Some(opt) = &next.opt_dir {
                let _ = remove_tree(opt);
            }
            return Err(e);
        }
        self.functions.insert(name.clone(), next);
        Ok(&self.functions[&name])
    }

    /// UpdateFunctionConfiguration: a new revision id, the same code
    /// revision, unless `Layers` changes the function's layers: then a new
    /// revision carries the code over (hard links) with the new /opt, so
    /// environments that mounted the old ones keep them until they end.
    pub fn update_configuration(
        &mut self,
        req: &UpdateFunctionConfiguration,
    ) -> Result<&Function, RegistryError> {
        let name = self.existing(&req.function_name)?;
        let current = &self.functions[&name];
        let mut next = current.clone();
        next.spec = current.spec.updated(req)?;
        if let (Some(image), Some(run)) = (&next.spec.image, &next.image) {
            image::check_runnable(run, &image.config)
                .map_err(|source| RegistryError::Image { source })?;
        }
        next.last_modified = lambda_timestamp(SystemTime::now());
        next.revision_id = uuid::Uuid::new_v4().to_string();
        let unchanged = req.layers.as_ref().is_none_or(|arns| {
            arns.iter()
                .map(String::as_str)
                .eq(current.layers.iter().map(|l| l.arn.as_str()))
        });
        if unchanged {
            return self.store(name, next);
        }
        let layers = self.resolve_layers(req.layers.as_deref().unwrap_or(&[]))?;
        let dir = self.functions_dir.join(&name);
        let revision = self.next_revision(&dir)?;
        let code_dir = dir.join(CODE_DIR).join(revision.to_string());
        merge::merge_trees(&[&current.code_dir], &code_dir).map_err(|source| {
            RegistryError::Merge {
                path: code_dir.clone(),
                source,
            }
        })?;
        let opt_dir = self
            .with_layers(&dir, revision, &code_dir, &layers)
            .inspect_err(|_| {
                let _ = remove_tree(&code_dir);
            })?;
        next.code_revision = revision;
        next.code_dir = code_dir.clone();
        next.opt_dir = opt_dir.clone();
        next.layers = layers.iter().map(attached).collect();
        self.store(name, next).inspect_err(|_| {
            let _ = remove_tree(&code_dir);
            if let Some(opt) = &opt_dir {
                let _ = remove_tree(opt);
            }
        })
    }

    /// PublishLayerVersion.
    pub fn publish_layer_version(
        &mut self,
        req: &PublishLayerVersion,
    ) -> Result<LayerVersion, RegistryError> {
        self.publish_layer_version_staged(req, None)
    }

    /// PublishLayerVersion, with its package unpacked already ([`StageJob`]).
    pub fn publish_layer_version_staged(
        &mut self,
        req: &PublishLayerVersion,
        staged: Option<Staged>,
    ) -> Result<LayerVersion, RegistryError> {
        let source = match staged {
            Some(Staged::Code { dir, installed }) => Source::Staged { dir, installed },
            Some(Staged::Image { .. }) => {
                return Err(RegistryError::CodeSource(
                    "a layer's Content is a ZipFile or Path, not an ImageUri".into(),
                ))
            }
            None => self.code_source(&req.content, "Content")?,
        };
        self.layers.publish(req, &source, &self.limits)
    }

    /// ListLayers, optionally of the layers compatible with `runtime`.
    pub fn list_layers(&self, runtime: Option<&str>) -> LayerList {
        self.layers.list(runtime)
    }

    /// ListLayerVersions, optionally of the versions compatible with `runtime`.
    pub fn list_layer_versions(
        &self,
        name: &str,
        runtime: Option<&str>,
    ) -> Result<LayerVersionList, RegistryError> {
        self.layers.versions(name, runtime)
    }

    /// GetLayerVersion.
    pub fn get_layer_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<LayerVersion, RegistryError> {
        self.layers.get(name, version)
    }

    /// DeleteLayerVersion: functions that use the version keep it.
    pub fn delete_layer_version(&mut self, name: &str, version: u64) -> Result<(), RegistryError> {
        self.layers.delete(name, version)
    }

    /// A function's `Layers`: validated, and every version existing.
    fn resolve_layers(&self, arns: &[String]) -> Result<Vec<layers::Resolved>, RegistryError> {
        config::layer_list(arns)?
            .iter()
            .map(|(name, version)| self.layers.resolve(name, *version))
            .collect()
    }

    /// The /opt of revision `revision` of the function in `dir`, merged from
    /// `layers` in order; None without layers.
    fn with_layers(
        &self,
        dir: &Path,
        revision: u64,
        code_dir: &Path,
        layers: &[layers::Resolved],
    ) -> Result<Option<PathBuf>, RegistryError> {
        let sources: Vec<&Path> = layers.iter().map(|l| l.dir.as_path()).collect();
        let size = layers.iter().map(|l| l.record.unzipped_size).sum();
        self.build_opt(dir, revision, code_dir, size, &sources)
    }

    /// Checks Lambda's limit on the code and layers together (unzipped), then
    /// merges `sources` into `dir/opt/<revision>`. None when there are no
    /// sources: the function has no layers.
    fn build_opt(
        &self,
        dir: &Path,
        revision: u64,
        code_dir: &Path,
        layers_size: u64,
        sources: &[&Path],
    ) -> Result<Option<PathBuf>, RegistryError> {
        if sources.is_empty() {
            return Ok(None);
        }
        let code = package::tree_size(code_dir).map_err(|source| RegistryError::ReadStateDir {
            path: code_dir.to_owned(),
            source,
        })?;
        let limit = self.limits.unzipped_bytes;
        if code.saturating_add(layers_size) > limit {
            return Err(RegistryError::UnzippedTooLarge {
                code,
                layers: layers_size,
                limit,
            });
        }
        let opt = dir.join(OPT_DIR);
        create_dir(&opt)?;
        let dest = opt.join(revision.to_string());
        let merged = remove_tree(&dest).and_then(|()| merge::merge_trees(sources, &dest));
        merged.map_err(|source| RegistryError::Merge {
            path: dest.clone(),
            source,
        })?;
        Ok(Some(dest))
    }

    /// Stores new concurrency settings of an existing function (validated by
    /// the caller against the account's limits).
    pub fn set_concurrency(
        &mut self,
        function_name: &str,
        concurrency: Concurrency,
    ) -> Result<&Function, RegistryError> {
        let name = self.existing(function_name)?;
        let mut next = self.functions[&name].clone();
        next.concurrency = concurrency;
        self.store(name, next)
    }

    /// Stores (Some) or removes (None) the asynchronous invocation
    /// configuration of an existing function (validated by the caller).
    pub fn set_event_invoke(
        &mut self,
        function_name: &str,
        config: Option<EventInvokeConfig>,
    ) -> Result<&Function, RegistryError> {
        let name = self.existing(function_name)?;
        let mut next = self.functions[&name].clone();
        next.event_invoke = config;
        self.store(name, next)
    }

    /// Writes `next` as function `name`'s record, then makes it current.
    fn store(&mut self, name: String, next: Function) -> Result<&Function, RegistryError> {
        write_record(
            &self.functions_dir.join(&name).join(RECORD_FILE),
            &next.record(),
        )?;
        self.functions.insert(name.clone(), next);
        Ok(&self.functions[&name])
    }

    /// DeleteFunction: the function is gone at once (its record becomes a
    /// tombstone in one rename); its code directories stay until
    /// [`Registry::prune_code`] finds them unused.
    pub fn delete(&mut self, name: &str) -> Result<Function, RegistryError> {
        let name = self.existing(name)?;
        let dir = self.functions_dir.join(&name);
        let record = dir.join(RECORD_FILE);
        fs::rename(&record, dir.join(TOMBSTONE_FILE)).map_err(|source| {
            RegistryError::DeleteRecord {
                path: record.clone(),
                source,
            }
        })?;
        package::sync_dir(&dir).map_err(|source| RegistryError::DeleteRecord {
            path: record,
            source,
        })?;
        Ok(self
            .functions
            .remove(&name)
            .expect("existing() checked the name"))
    }

    /// Removes the code revisions of function `name` that are neither its
    /// current one nor in `in_use` (revisions still mounted by environments).
    /// For a deleted function every revision not in use goes, and with the
    /// last one its directory and its uid reservation. An unknown or invalid
    /// name has nothing to prune.
    pub fn prune_code(&self, name: &str, in_use: &BTreeSet<u64>) -> io::Result<()> {
        let Ok(name) = config::function_name(name) else {
            return Ok(());
        };
        let dir = self.functions_dir.join(name);
        let current = self.functions.get(name).map(|f| f.code_revision);
        let mut remaining = 0usize;
        // A revision's code and its merged layers go together.
        for sub in [CODE_DIR, OPT_DIR] {
            match fs::read_dir(dir.join(sub)) {
                Ok(entries) => {
                    for entry in entries {
                        let entry = entry?;
                        let revision = entry
                            .file_name()
                            .to_str()
                            .and_then(|s| s.parse::<u64>().ok());
                        match revision {
                            Some(rev) if Some(rev) != current && !in_use.contains(&rev) => {
                                remove_tree(&entry.path())?;
                            }
                            _ => remaining += 1,
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if current.is_none() && remaining == 0 && dir.join(TOMBSTONE_FILE).exists() {
            // The tombstone goes first: from here the uid is free again, and a
            // crash before the tree is gone leaves an orphan `open` removes.
            fs::remove_file(dir.join(TOMBSTONE_FILE))?;
            remove_tree(&dir)?;
        }
        Ok(())
    }

    /// Deleted functions whose code is still on disk. After a restart nobody
    /// tracks their environments any more: once the supervisor knows nothing
    /// of the previous run is left, `prune_code(name, &BTreeSet::new())` on
    /// each of these (and on each live function) reclaims the space and uids.
    pub fn deleted_with_code(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.functions_dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !self.functions.contains_key(&name) && entry.path().join(TOMBSTONE_FILE).exists() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The name of an existing function, or NotFound.
    fn existing(&self, function_name: &str) -> Result<String, RegistryError> {
        let name = config::function_name(function_name)?;
        if self.functions.contains_key(name) {
            Ok(name.to_owned())
        } else {
            Err(RegistryError::NotFound {
                name: name.to_owned(),
            })
        }
    }

    /// `Code` (or a layer's `Content`, named by `field`): exactly one of
    /// ZipFile or Path.
    fn code_source(&self, code: &FunctionCode, field: &str) -> Result<Source, RegistryError> {
        code_source(code, field, &self.limits)
    }
}

impl Registry {
    /// Unpacks the container image `uri` as the next revision under
    /// `dir/code` (`rootfs/` and `image.json`, registry/image.rs).
    /// `config` (the function's ImageConfig) must leave it something to run.
    fn install_image(
        &self,
        dir: &Path,
        uri: &str,
        config: &crate::protocol::ImageConfig,
        staged: Option<(PathBuf, image::InstalledImage)>,
    ) -> Result<(u64, PathBuf, image::InstalledImage), RegistryError> {
        let revision = self.next_revision(dir)?;
        let code_dir = dir.join(CODE_DIR).join(revision.to_string());
        let installed = match staged {
            Some((staged_dir, installed)) => {
                fs::rename(&staged_dir, &code_dir).map_err(|source| RegistryError::CreateDir {
                    path: code_dir.clone(),
                    source,
                })?;
                installed
            }
            None => image::install(uri, &code_dir, &image::ImageLimits::LAMBDA)
                .map_err(|source| RegistryError::Image { source })?,
        };
        if let Err(source) = image::check_runnable(&installed.run, config) {
            let _ = remove_tree(&code_dir);
            return Err(RegistryError::Image { source });
        }
        Ok((revision, code_dir, installed))
    }

    /// UpdateFunctionCode of an image function: `Code.ImageUri` only.
    fn update_image(
        &mut self,
        name: String,
        code: &FunctionCode,
        staged: Option<(PathBuf, image::InstalledImage)>,
    ) -> Result<&Function, RegistryError> {
        let Some(uri) = code.image_uri.as_deref() else {
            return Err(RegistryError::CodeSource(
                "this function's PackageType is Image: send ImageUri (the absolute path of an OCI image layout, optionally :TAG)".into(),
            ));
        };
        if code.zip_file.is_some() || code.path.is_some() {
            return Err(RegistryError::CodeSource(
                "send ImageUri alone: a function of PackageType Image takes no ZipFile or Path"
                    .into(),
            ));
        }
        let dir = self.functions_dir.join(&name);
        let mut next = self.functions[&name].clone();
        let config = next
            .spec
            .image
            .as_ref()
            .map(|i| i.config.clone())
            .unwrap_or_default();
        let (code_revision, code_dir, installed) =
            self.install_image(&dir, uri, &config, staged)?;
        if let Some(image) = next.spec.image.as_mut() {
            image.uri = uri.to_owned();
        }
        next.code_revision = code_revision;
        next.code_dir = code_dir.clone();
        next.code_size = installed.code_size;
        next.code_sha256 = installed.code_sha256;
        next.image = Some(installed.run);
        next.last_modified = lambda_timestamp(SystemTime::now());
        next.revision_id = uuid::Uuid::new_v4().to_string();
        self.store(name, next).inspect_err(|_| {
            let _ = remove_tree(&code_dir);
        })
    }

    /// Installs `source` as the next revision under `dir/code`. Revisions are
    /// numbered past every directory present, including leftovers of a deleted
    /// function of the same name, so a number is never reused while an
    /// environment may hold it.
    fn install_code(
        &self,
        dir: &Path,
        source: &Source,
    ) -> Result<(u64, PathBuf, package::Installed), RegistryError> {
        let revision = self.next_revision(dir)?;
        let code_dir = dir.join(CODE_DIR).join(revision.to_string());
        let installed = package::install(source, &code_dir, &self.limits)?;
        Ok((revision, code_dir, installed))
    }

    /// The next revision number of the function in `dir`: past every code
    /// and /opt directory present (creating `dir/code` if needed).
    fn next_revision(&self, dir: &Path) -> Result<u64, RegistryError> {
        let code = dir.join(CODE_DIR);
        create_dir(&code)?;
        let mut highest = 0;
        for sub in [code, dir.join(OPT_DIR)] {
            let entries = match fs::read_dir(&sub) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(RegistryError::ReadStateDir { path: sub, source }),
            };
            highest = entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
                .fold(highest, u64::max);
        }
        Ok(highest + 1)
    }

    /// The lowest uid in [`UID_RANGE`] that no function, live or deleted with
    /// code left, holds.
    fn allocate_uid(&self) -> Result<u32, RegistryError> {
        let mut taken: BTreeSet<u32> = self.functions.values().map(|f| f.uid).collect();
        let entries =
            fs::read_dir(&self.functions_dir).map_err(|source| RegistryError::ReadStateDir {
                path: self.functions_dir.clone(),
                source,
            })?;
        for entry in entries.flatten() {
            if let Some(uid) = read_tombstone(&entry.path().join(TOMBSTONE_FILE)) {
                taken.insert(uid);
            }
        }
        UID_RANGE
            .into_iter()
            .find(|uid| !taken.contains(uid))
            .ok_or(RegistryError::AllocateUid)
    }

    fn load(&self, name: &str, path: &Path) -> Result<Function, RegistryError> {
        let bad = |reason: String| RegistryError::ParseRecord {
            path: path.to_owned(),
            reason,
        };
        let text = fs::read_to_string(path).map_err(|source| RegistryError::ReadRecord {
            path: path.to_owned(),
            source,
        })?;
        let record: Record = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if record.format != RECORD_FORMAT {
            return Err(bad(format!(
                "format {} (this lambdalet reads format {RECORD_FORMAT})",
                record.format
            )));
        }
        // The limits may have changed since the record was written.
        let spec = record.spec.validated().map_err(|e| bad(e.to_string()))?;
        if spec.name != name {
            return Err(bad(format!("it names function {:?}", spec.name)));
        }
        if !UID_RANGE.contains(&record.uid) {
            return Err(bad(format!("uid {} is outside {UID_RANGE:?}", record.uid)));
        }
        let code_dir = self
            .functions_dir
            .join(name)
            .join(CODE_DIR)
            .join(record.code_revision.to_string());
        if !code_dir.is_dir() {
            return Err(bad(format!("its code directory {code_dir:?} is missing")));
        }
        let opt_dir = (!record.layers.is_empty()).then(|| {
            self.functions_dir
                .join(name)
                .join(OPT_DIR)
                .join(record.code_revision.to_string())
        });
        if let Some(opt) = opt_dir.as_ref().filter(|o| !o.is_dir()) {
            return Err(bad(format!("its merged layers {opt:?} are missing")));
        }
        let image = match spec.image {
            Some(_) => Some(image::load_run(&code_dir).map_err(|e| bad(e.to_string()))?),
            None => None,
        };
        Ok(Function {
            spec,
            code_revision: record.code_revision,
            code_dir,
            uid: record.uid,
            code_size: record.code_size,
            code_sha256: record.code_sha256,
            last_modified: record.last_modified,
            revision_id: record.revision_id,
            concurrency: record.concurrency,
            event_invoke: record.event_invoke,
            layers: record.layers,
            opt_dir,
            image,
        })
    }

    /// Removes what an interrupted write left in a function's directory.
    fn clean_leftovers(&self, dir: &Path) -> Result<(), RegistryError> {
        let remove = |path: &Path| {
            remove_tree(path).map_err(|source| RegistryError::ReadStateDir {
                path: path.to_owned(),
                source,
            })
        };
        for parent in [dir.to_owned(), dir.join(CODE_DIR), dir.join(OPT_DIR)] {
            let Ok(entries) = fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(package::STAGING_PREFIX) || name.starts_with(RECORD_TEMP_PREFIX)
                {
                    remove(&entry.path())?;
                }
            }
        }
        Ok(())
    }
}

/// How a function records a layer version it takes.
fn attached(layer: &layers::Resolved) -> AttachedLayer {
    AttachedLayer {
        arn: layer.arn.clone(),
        code_size: layer.record.code_size,
        unzipped_size: layer.record.unzipped_size,
    }
}

/// The uid a tombstone reserves, if there is a readable one.
fn read_tombstone(path: &Path) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    let record: Record = serde_json::from_str(&text).ok()?;
    Some(record.uid)
}

fn create_dir(path: &Path) -> Result<(), RegistryError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(path)
        .map_err(|source| RegistryError::CreateDir {
            path: path.to_owned(),
            source,
        })
}

/// Removes a file, a symlink or a directory tree. std's remove_dir_all does not
/// follow symlinks (CVE-2022-21658 was fixed in Rust 1.58.1), so a link in a
/// package cannot make it delete outside the tree.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes a record so that a crash leaves either the old or the new one:
/// temp file in the same directory, fsync, rename over, fsync the directory.
fn write_record(path: &Path, record: &Record) -> Result<(), RegistryError> {
    write_json(path, record, RECORD_TEMP_PREFIX)
}

/// [`write_record`] for any record; its temp file is named `temp_prefix…`.
fn write_json(
    path: &Path,
    record: &impl Serialize,
    temp_prefix: &str,
) -> Result<(), RegistryError> {
    let dir = path.parent().expect("a record path has a parent");
    let write_err = |source| RegistryError::WriteRecord {
        path: path.to_owned(),
        source,
    };
    let temp = dir.join(format!("{temp_prefix}{}", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(RECORD_MODE)
            .open(&temp)?;
        let mut json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        json.push(b'\n');
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        package::sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(write_err)
}

/// Lambda's LastModified format, UTC: `2026-11-27T19:07:42.000+0000`.
pub fn lambda_timestamp(time: SystemTime) -> String {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard
/// Hinnant's `civil_from_days` (http://howardhinnant.github.io/date_algorithms.html).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A request's `Code` (or a layer's `Content`) as a package source.
fn code_source(code: &FunctionCode, field: &str, limits: &Limits) -> Result<Source, RegistryError> {
    if code.image_uri.is_some() {
        return Err(RegistryError::CodeSource(format!(
            "{field}.ImageUri is for functions of PackageType Image (created with \"PackageType\":\"Image\"); \
             this one takes ZipFile or Path"
        )));
    }
    match (&code.zip_file, &code.path) {
        (Some(zip), None) => Ok(Source::from_base64(zip, limits)?),
        (None, Some(path)) => Ok(Source::from_path(Path::new(path))?),
        (Some(_), Some(_)) => Err(RegistryError::CodeSource(format!(
            "{field} has both ZipFile and Path: send exactly one (ZipFile: a base64 .zip; \
             Path: the absolute path of a directory or .zip file on the host)"
        ))),
        (None, None) => Err(RegistryError::CodeSource(format!(
            "{field} is missing: send ZipFile (a base64 .zip) or Path (the absolute path of \
             a directory or .zip file on the host)"
        ))),
    }
}

#[cfg(test)]
mod tests;
