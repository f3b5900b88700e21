//! Lambda layers: published, numbered versions of shared content that
//! functions merge under /opt.
//!
//! Layout under `<state_dir>/layers/<name>/`:
//!
//! * `layer.json`: the layer's record ([`LayerRecord`]): its live versions
//!   and the last version number ever given, so a number is never reused,
//!   even after its version was deleted (as on Lambda). Written atomically.
//! * `<version>/`: the version's content, installed by [`package::install`]
//!   (the same safe extraction as function code).
//!
//! Deleting a version removes its record entry and its directory at once.
//! Functions that use it are not affected: their /opt is a merged tree of
//! hard links to the same files (`merge.rs`), so the content lives on for
//! them, as on Lambda, where "a deleted version stays usable by functions
//! that already reference it"; no new function can name it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::package::{self, Limits, Source};
use super::{create_dir, lambda_timestamp, remove_tree, write_json, RegistryError};
use crate::config;
use crate::protocol::{
    LayerList, LayerSummary, LayerVersion, LayerVersionContent, LayerVersionList,
    LayerVersionsListItem, PublishLayerVersion,
};

const LAYERS_DIR: &str = "layers";
const RECORD_FILE: &str = "layer.json";
const RECORD_TEMP_PREFIX: &str = ".layer.json.";
const RECORD_FORMAT: u32 = 1;

/// layer.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerRecord {
    format: u32,
    /// The highest version number ever published (deleted ones included).
    last_version: u64,
    versions: BTreeMap<u64, VersionRecord>,
}

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    pub description: String,
    pub created_date: String,
    pub code_sha256: String,
    /// The archive's size (Lambda's CodeSize).
    pub code_size: u64,
    /// The bytes of its files: what counts toward the 250 MB unzipped limit.
    pub unzipped_size: u64,
    pub compatible_runtimes: Vec<String>,
}

impl VersionRecord {
    /// Whether a CompatibleRuntime filter lets this version through.
    fn matches(&self, runtime: Option<&str>) -> bool {
        runtime.is_none_or(|r| self.compatible_runtimes.iter().any(|c| c == r))
    }
}

/// A version a function may use: where its content is and what it measures.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub arn: String,
    pub dir: PathBuf,
    pub record: VersionRecord,
}

/// Every layer of one state dir.
#[derive(Debug)]
pub struct LayerStore {
    /// `<state_dir>/layers`, absolute.
    dir: PathBuf,
    layers: BTreeMap<String, LayerRecord>,
}

impl LayerStore {
    /// Loads every layer under `<state_dir>/layers` (which must be canonical),
    /// removing what an interrupted publish or delete left: staging
    /// directories, temp records, content directories no record names.
    pub fn open(state_dir: &Path) -> Result<LayerStore, RegistryError> {
        let dir = state_dir.join(LAYERS_DIR);
        create_dir(&dir)?;
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |source| RegistryError::ReadStateDir { path, source }
        };
        let mut layers = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(read_err(&dir))? {
            let entry = entry.map_err(read_err(&dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if config::layer_name(&name).ok() != Some(name.as_str()) {
                continue; // not ours
            }
            let layer_dir = entry.path();
            let record_path = layer_dir.join(RECORD_FILE);
            if !record_path.exists() {
                // A first publish that never wrote its record.
                remove_tree(&layer_dir).map_err(read_err(&layer_dir))?;
                continue;
            }
            let text =
                fs::read_to_string(&record_path).map_err(|source| RegistryError::ReadRecord {
                    path: record_path.clone(),
                    source,
                })?;
            let bad = |reason: String| RegistryError::ParseRecord {
                path: record_path.clone(),
                reason,
            };
            let record: LayerRecord =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            if record.format != RECORD_FORMAT {
                return Err(bad(format!(
                    "format {} (this lambdalet reads format {RECORD_FORMAT})",
                    record.format
                )));
            }
            for entry in fs::read_dir(&layer_dir).map_err(read_err(&layer_dir))? {
                let entry = entry.map_err(read_err(&layer_dir))?;
                let file_name = entry.file_name();
                let file_name = file_name.to_string_lossy();
                let live = file_name
                    .parse::<u64>()
                    .is_ok_and(|v| record.versions.contains_key(&v));
                if file_name == RECORD_FILE || live {
                    continue;
                }
                remove_tree(&entry.path()).map_err(read_err(&entry.path()))?;
            }
            for version in record.versions.keys() {
                let content = layer_dir.join(version.to_string());
                if !content.is_dir() {
                    return Err(bad(format!(
                        "the content of version {version}, {content:?}, is missing"
                    )));
                }
            }
            layers.insert(name, record);
        }
        Ok(LayerStore { dir, layers })
    }

    /// PublishLayerVersion: installs `source` as the layer's next version.
    pub fn publish(
        &mut self,
        req: &PublishLayerVersion,
        source: &Source,
        limits: &Limits,
    ) -> Result<LayerVersion, RegistryError> {
        let name = config::layer_name(&req.layer_name)?.to_owned();
        let description = req.description.clone().unwrap_or_default();
        let runtimes = req.compatible_runtimes.clone().unwrap_or_default();
        config::check_layer_metadata(&description, &runtimes)?;
        let layer_dir = self.dir.join(&name);
        create_dir(&layer_dir)?;
        let mut record = self.layers.get(&name).cloned().unwrap_or(LayerRecord {
            format: RECORD_FORMAT,
            ..Default::default()
        });
        let version = record.last_version + 1;
        let content = layer_dir.join(version.to_string());
        // A leftover of a publish that crashed before its record (open()
        // removes those, but be sure).
        remove_tree(&content).map_err(|source| RegistryError::CreateDir {
            path: content.clone(),
            source,
        })?;
        let known = self.layers.contains_key(&name);
        let forget = |e: RegistryError| {
            // Nothing of a refused version stays, nor of a layer that never was.
            let _ = remove_tree(if known { &content } else { &layer_dir });
            e
        };
        let installed = package::install(source, &content, limits)
            .map_err(RegistryError::from)
            .map_err(forget)?;
        let unzipped_size = package::tree_size(&content)
            .map_err(|source| RegistryError::ReadStateDir {
                path: content.clone(),
                source,
            })
            .map_err(forget)?;
        record.last_version = version;
        record.versions.insert(
            version,
            VersionRecord {
                description,
                created_date: lambda_timestamp(SystemTime::now()),
                code_sha256: installed.code_sha256,
                code_size: installed.code_size,
                unzipped_size,
                compatible_runtimes: runtimes,
            },
        );
        write_json(&layer_dir.join(RECORD_FILE), &record, RECORD_TEMP_PREFIX).map_err(forget)?;
        let shown = version_of(&name, version, &record.versions[&version]);
        self.layers.insert(name, record);
        Ok(shown)
    }

    /// ListLayers: every layer with a live version (compatible with
    /// `runtime`, when given), by name, with its latest such version.
    pub fn list(&self, runtime: Option<&str>) -> LayerList {
        let layers = self
            .layers
            .iter()
            .filter_map(|(name, record)| {
                let (version, latest) = record
                    .versions
                    .iter()
                    .rev()
                    .find(|(_, r)| r.matches(runtime))?;
                Some(LayerSummary {
                    layer_name: name.clone(),
                    layer_arn: config::layer_arn(name),
                    latest_matching_version: list_item(name, *version, latest),
                })
            })
            .collect();
        LayerList { layers }
    }

    /// ListLayerVersions, newest first. An unknown layer has no versions (as
    /// on Lambda, which answers with an empty list).
    pub fn versions(
        &self,
        layer_name: &str,
        runtime: Option<&str>,
    ) -> Result<LayerVersionList, RegistryError> {
        let name = config::layer_name(layer_name)?;
        let layer_versions = self
            .layers
            .get(name)
            .map(|record| {
                record
                    .versions
                    .iter()
                    .rev()
                    .filter(|(_, r)| r.matches(runtime))
                    .map(|(v, r)| list_item(name, *v, r))
                    .collect()
            })
            .unwrap_or_default();
        Ok(LayerVersionList { layer_versions })
    }

    /// GetLayerVersion.
    pub fn get(&self, layer_name: &str, version: u64) -> Result<LayerVersion, RegistryError> {
        let name = config::layer_name(layer_name)?;
        let record = self.version(name, version)?;
        Ok(version_of(name, version, record))
    }

    /// DeleteLayerVersion. Deleting a version that does not exist (any more)
    /// succeeds, as on Lambda. Functions using it keep their merged copies.
    pub fn delete(&mut self, layer_name: &str, version: u64) -> Result<(), RegistryError> {
        let name = config::layer_name(layer_name)?.to_owned();
        let Some(current) = self.layers.get(&name) else {
            return Ok(());
        };
        if !current.versions.contains_key(&version) {
            return Ok(());
        }
        let mut next = current.clone();
        next.versions.remove(&version);
        let layer_dir = self.dir.join(&name);
        write_json(&layer_dir.join(RECORD_FILE), &next, RECORD_TEMP_PREFIX)?;
        self.layers.insert(name, next);
        // The record no longer names it: a failure here leaves an orphan
        // that open() removes.
        let _ = remove_tree(&layer_dir.join(version.to_string()));
        Ok(())
    }

    /// A function's `Layers` entry: an existing version, or
    /// [`RegistryError::UnknownLayer`] naming the ARN.
    pub fn resolve(&self, name: &str, version: u64) -> Result<Resolved, RegistryError> {
        let arn = config::layer_version_arn(name, version);
        let record = self
            .version(name, version)
            .map_err(|_| RegistryError::UnknownLayer { arn: arn.clone() })?;
        Ok(Resolved {
            arn,
            dir: self.dir.join(name).join(version.to_string()),
            record: record.clone(),
        })
    }

    fn version(&self, name: &str, version: u64) -> Result<&VersionRecord, RegistryError> {
        self.layers
            .get(name)
            .and_then(|r| r.versions.get(&version))
            .ok_or_else(|| RegistryError::LayerVersionNotFound {
                arn: config::layer_version_arn(name, version),
            })
    }
}

fn version_of(name: &str, version: u64, record: &VersionRecord) -> LayerVersion {
    LayerVersion {
        layer_arn: config::layer_arn(name),
        layer_version_arn: config::layer_version_arn(name, version),
        version,
        description: record.description.clone(),
        created_date: record.created_date.clone(),
        content: LayerVersionContent {
            code_sha256: record.code_sha256.clone(),
            code_size: record.code_size,
        },
        compatible_runtimes: record.compatible_runtimes.clone(),
    }
}

fn list_item(name: &str, version: u64, record: &VersionRecord) -> LayerVersionsListItem {
    LayerVersionsListItem {
        layer_version_arn: config::layer_version_arn(name, version),
        version,
        description: record.description.clone(),
        created_date: record.created_date.clone(),
        compatible_runtimes: record.compatible_runtimes.clone(),
    }
}

#[cfg(test)]
mod tests;
