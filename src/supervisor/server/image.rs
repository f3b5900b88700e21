//! Container image functions in the scheduler (docs/architecture.md
//! § Container images). Their environments are blanks like any other, but
//! pivoted into the image's root rather than the generic one: so a pooled
//! blank never serves them, and each of their blanks is made on demand for
//! one code revision of one function.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::value::RawValue;

use super::{EndReason, Supervisor};
use crate::registry::image::{self, ImageRun, SANDBOX_PYTHON_DIR};
use crate::registry::Function;
use crate::sandbox::host::HostLayout;
use crate::sandbox::plan::image::{blank_plan, ImageBlankInputs, ImageSpecInputs};
use crate::sandbox::plan::{BlankPlan, SpecTemplate};
use crate::supervisor::env::BlankKind;

/// What an image blank's plan needs of the host, kept from start-up.
pub(super) struct ImageHost {
    pub new_root: PathBuf,
    pub host: HostLayout,
    pub cap_last_cap: u32,
}

/// A spawn request's `sandbox` and `runtime`, and for an image blank the
/// code revision whose root it is pivoted into.
pub(super) type BlankRequest = (BlankPlan, Box<RawValue>, Option<u64>);

/// Directories the default PATH of an image lists, when its Env has none
/// (Docker's default).
const DEFAULT_IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Supervisor {
    /// Whether `function` is a container image function.
    pub(super) fn is_image(&self, function: &str) -> bool {
        self.registry
            .get(function)
            .is_some_and(|f| f.spec.image.is_some())
    }

    /// A ready blank of `kind` for `function`, if one can serve it: never
    /// for an image function, whose root is its own.
    pub(super) fn take_pooled_blank(&mut self, function: &str, kind: BlankKind) -> Option<u64> {
        if self.is_image(function) {
            return None;
        }
        self.ready_blanks(kind).pop()
    }

    /// The spawn request's `sandbox` and `runtime` for a blank made for
    /// `reserved_for`: the image's root and interpreter prefix for an image
    /// function, else the generic blank's. Also the code revision whose
    /// root an image blank has (None: a generic blank).
    pub(super) fn blank_request(
        &self,
        reserved_for: Option<&str>,
        env_id: &str,
        cgroup_procs: Vec<PathBuf>,
    ) -> Result<BlankRequest, Box<dyn std::error::Error>> {
        let image_fn = reserved_for
            .and_then(|name| self.registry.get(name))
            .filter(|f| f.spec.image.is_some());
        let Some(f) = image_fn else {
            let plan = self.blank_template.for_env(env_id, cgroup_procs);
            return Ok((plan, self.blank_runtime.clone(), None));
        };
        let rootfs = f.code_dir.join(image::ROOTFS_DIR);
        let plan = blank_plan(
            &ImageBlankInputs {
                new_root: &self.image_host.new_root,
                rootfs: &rootfs,
                python: &self.python,
                cap_last_cap: self.image_host.cap_last_cap,
                host: &self.image_host.host,
            },
            env_id,
            cgroup_procs,
        )?;
        let runtime = serde_json::json!({
            "python_prefix_host": self.python.base_prefix,
            "python_prefix_sandbox": SANDBOX_PYTHON_DIR,
        });
        Ok((
            plan,
            RawValue::from_string(runtime.to_string())?,
            Some(f.code_revision),
        ))
    }

    /// A blank made for an image function said `blank`: it is specialised
    /// if its function still has the revision whose root it holds, else it
    /// ends (it can serve nothing else). Returns false for a generic blank,
    /// which the caller handles.
    pub(super) fn image_blank_ready(&mut self, id: u64) -> bool {
        let Some(env) = self.envs.get(&id) else {
            return true;
        };
        let Some(revision) = env.image_root else {
            return false;
        };
        let (function, provisioned) = (
            env.reserved_for.clone().unwrap_or_default(),
            env.provisioned,
        );
        let current = self
            .registry
            .get(&function)
            .is_some_and(|f| f.code_revision == revision);
        if current {
            if let Err(e) = self.specialize(id, &function, provisioned) {
                info!("env {id}: cannot specialise for {function}: {e}");
                self.env_failed(id, None);
            }
        } else {
            // Its invoke (if any) is served by another start.
            if let Some(pool) = self.pools.get_mut(&function) {
                if !provisioned {
                    pool.starting = pool.starting.saturating_sub(1);
                }
            }
            self.destroy_env(id, EndReason::Retired);
            self.schedule(&function);
        }
        true
    }

    /// The specialisation of an image function's revision.
    pub(super) fn image_spec_template(
        &self,
        f: &Function,
    ) -> Result<SpecTemplate, Box<dyn std::error::Error>> {
        Ok(SpecTemplate::for_image(&ImageSpecInputs {
            uid: f.uid,
            gid: f.gid(),
            tmp_mb: f.spec.ephemeral_mb,
            seccomp_bpf: &self.seccomp_bpf,
        })?)
    }
}

/// An image function's runtime section, from the `provided` one: its
/// interpreter prefix, the argv and cwd to start, and its environment with
/// the image's `Env` merged in.
pub(super) fn image_runtime(
    base: &RawValue,
    f: &Function,
) -> Result<Box<RawValue>, Box<dyn std::error::Error>> {
    let (Some(spec), Some(run)) = (&f.spec.image, &f.image) else {
        return Err(format!("function {} is not an image function", f.spec.name).into());
    };
    let mut v: serde_json::Value = serde_json::from_str(base.get())?;
    let (argv, cmd_len, cwd) = image::command(run, &spec.config);
    if argv.is_empty() {
        return Err(format!(
            "the image of {} has neither Entrypoint nor Cmd: give ImageConfig.EntryPoint or Command",
            f.spec.name
        )
        .into());
    }
    let env: BTreeMap<String, String> = serde_json::from_value(v["env"].take())?;
    // Lambda's _HANDLER for an image: the first word of its (effective) Cmd.
    let handler = argv[argv.len() - cmd_len..]
        .first()
        .or(argv.last())
        .cloned()
        .unwrap_or_default();
    let env = merge_env(env, run, &f.spec.environment, handler);
    // What Lambda shows as an image's handler: its Cmd (B checks it is set).
    v["handler"] = env["_HANDLER"].clone().into();
    v["env"] = serde_json::to_value(env)?;
    v["python_prefix_sandbox"] = SANDBOX_PYTHON_DIR.into();
    v["command"] = argv.into();
    v["cwd"] = cwd.into();
    Ok(RawValue::from_string(v.to_string())?)
}

/// The environment of an image function's process: Lambda's reserved
/// variables (AWS_*, LAMBDA_*, _HANDLER) win, then the function's
/// Environment, then the image's Env, then the `provided` defaults (PATH
/// and the like) the image did not set. `_HANDLER` is `handler`.
fn merge_env(
    mut env: BTreeMap<String, String>,
    run: &ImageRun,
    function_env: &BTreeMap<String, String>,
    handler: String,
) -> BTreeMap<String, String> {
    let reserved = |k: &str| k.starts_with("AWS_") || k.starts_with("LAMBDA_") || k == "_HANDLER";
    let image_env = image::env_pairs(&run.env);
    for (k, v) in image_env {
        if !reserved(&k) && !function_env.contains_key(&k) {
            env.insert(k, v);
        }
    }
    if !run.env.iter().any(|kv| kv.starts_with("PATH=")) && !function_env.contains_key("PATH") {
        env.insert("PATH".into(), DEFAULT_IMAGE_PATH.into());
    }
    if !run.env.iter().any(|kv| kv.starts_with("LD_LIBRARY_PATH="))
        && !function_env.contains_key("LD_LIBRARY_PATH")
    {
        env.remove("LD_LIBRARY_PATH");
    }
    env.insert("_HANDLER".into(), handler);
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ImageConfig;
    use crate::registry::image::command;

    fn run() -> ImageRun {
        ImageRun {
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["handler.x".into()],
            env: vec![
                "PATH=/app/bin".into(),
                "GREETING=hi".into(),
                "AWS_REGION=eu-west-1".into(),
            ],
            working_dir: "/app".into(),
            user: "1000".into(),
            manifest_digest: String::new(),
        }
    }

    #[test]
    fn image_config_overrides_entrypoint_cmd_and_workdir() {
        let r = run();
        assert_eq!(
            command(&r, &ImageConfig::default()),
            (
                vec!["/bin/app".into(), "handler.x".into()],
                1,
                "/app".into()
            )
        );
        let c = ImageConfig {
            command: Some(vec!["other".into()]),
            ..Default::default()
        };
        assert_eq!(command(&r, &c).0, ["/bin/app", "other"]);
        let c = ImageConfig {
            entry_point: Some(vec!["/bin/sh".into()]),
            working_directory: Some("/w".into()),
            ..Default::default()
        };
        assert_eq!(command(&r, &c), (vec!["/bin/sh".into()], 0, "/w".into()));
    }

    #[test]
    fn image_env_is_merged_under_the_functions_and_lambdas() {
        let base = BTreeMap::from([
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("LD_LIBRARY_PATH".to_string(), "/lib64".to_string()),
            ("GREETING".to_string(), "from function".to_string()),
        ]);
        let function_env = BTreeMap::from([("GREETING".to_string(), "from function".to_string())]);
        let env = merge_env(base, &run(), &function_env, "handler.x".into());
        assert_eq!(env["AWS_REGION"], "us-east-1");
        assert_eq!(env["PATH"], "/app/bin");
        assert_eq!(env["GREETING"], "from function");
        assert_eq!(env["_HANDLER"], "handler.x");
        assert!(!env.contains_key("LD_LIBRARY_PATH"));
    }
}
