//! Packages and images are unpacked off the loop: CreateFunction,
//! UpdateFunctionCode and PublishLayerVersion check what is cheap on the
//! loop, hand the package's decode, checks and unpacking (a 250 MB zip, a
//! 10 GB image) to a thread of their own ([`StageJob`]), and finish on the
//! loop when it is done: the registry renames the staged tree into place and
//! records it, and the client gets its answer. Invokes and every other
//! request are served meanwhile. At most [`MAX_STAGING`] unpack at once;
//! more wait their turn in order.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

use mio::{Token, Waker};
use serde_json::value::RawValue;

use super::{ok_json, parse, Supervisor};
use crate::protocol::{self, WireError};
use crate::registry::{RegistryError, StageJob, Staged};

/// Unpacks at once: each is CPU (inflate, hashing) and disk bound, and the
/// host has other work.
const MAX_STAGING: usize = 2;

/// The operation a package is unpacked for.
#[derive(Debug)]
pub(super) enum StagedOp {
    Create(protocol::CreateFunction),
    UpdateCode(protocol::UpdateFunctionCode),
    PublishLayer(protocol::PublishLayerVersion),
}

struct Waiting {
    t: Token,
    id: serde_json::Value,
    op: StagedOp,
    job: StageJob,
}

struct Done {
    t: Token,
    id: serde_json::Value,
    op: StagedOp,
    dest: PathBuf,
    result: Result<Staged, RegistryError>,
}

pub(super) struct Staging {
    waiting: VecDeque<Waiting>,
    running: usize,
    tx: mpsc::Sender<Done>,
    rx: mpsc::Receiver<Done>,
    waker: Arc<Waker>,
}

impl Staging {
    /// `waker` wakes the loop with the token whose events call
    /// [`Supervisor::staged`].
    pub(super) fn new(waker: Arc<Waker>) -> Staging {
        let (tx, rx) = mpsc::channel();
        Staging {
            waiting: VecDeque::new(),
            running: 0,
            tx,
            rx,
            waker,
        }
    }
}

impl Supervisor {
    /// CreateFunction, UpdateFunctionCode or PublishLayerVersion: the cheap
    /// checks now, the package's unpacking on a thread, the answer later.
    pub(super) fn op_staged(&mut self, t: Token, id: serde_json::Value, op: &str, params: &str) {
        let started = match op {
            protocol::op::CREATE_FUNCTION => self.stage_create(t, params),
            protocol::op::UPDATE_FUNCTION_CODE => self.stage_update_code(t, params),
            _ => self.stage_publish(t, params),
        };
        match started {
            Ok((op, job)) => {
                self.staging.waiting.push_back(Waiting { t, id, op, job });
                self.start_staging();
            }
            Err(e) => self.reply(t, &id, Err(e)),
        }
    }

    fn stage_create(&mut self, t: Token, params: &str) -> Result<(StagedOp, StageJob), WireError> {
        let mut req: protocol::CreateFunction = parse(params)?;
        self.check_runtime_available(Some(&req.runtime))?;
        self.check_code_path(t, &req.code, "Code")?;
        self.registry.precheck_create(&req)?;
        let job = self.registry.stage_job(take_code(&mut req.code), "Code");
        Ok((StagedOp::Create(req), job))
    }

    fn stage_update_code(
        &mut self,
        t: Token,
        params: &str,
    ) -> Result<(StagedOp, StageJob), WireError> {
        let mut req: protocol::UpdateFunctionCode = parse(params)?;
        self.check_code_path(t, &req.code, "Code")?;
        self.registry.precheck_update_code(&req)?;
        let job = self.registry.stage_job(take_code(&mut req.code), "Code");
        Ok((StagedOp::UpdateCode(req), job))
    }

    fn stage_publish(&mut self, t: Token, params: &str) -> Result<(StagedOp, StageJob), WireError> {
        let mut req: protocol::PublishLayerVersion = parse(params)?;
        self.check_code_path(t, &req.content, "Content")?;
        crate::config::layer_name(&req.layer_name)?;
        let job = self
            .registry
            .stage_job(take_code(&mut req.content), "Content");
        Ok((StagedOp::PublishLayer(req), job))
    }

    fn start_staging(&mut self) {
        while self.staging.running < MAX_STAGING {
            let Some(Waiting { t, id, op, job }) = self.staging.waiting.pop_front() else {
                return;
            };
            let (tx, waker) = (self.staging.tx.clone(), Arc::clone(&self.staging.waker));
            let dest = job.dest().to_path_buf();
            let (client, request) = (t, id.clone());
            let spawned = std::thread::Builder::new()
                .name("lambdalet-unpack".into())
                .spawn(move || {
                    let result = job.run();
                    // The loop outlives every job but at exit, when nobody
                    // waits for the answer.
                    let _ = tx.send(Done {
                        t,
                        id,
                        op,
                        dest,
                        result,
                    });
                    let _ = waker.wake();
                });
            match spawned {
                Ok(_) => self.staging.running += 1,
                Err(e) => {
                    let err = WireError::service(format!(
                        "cannot start a thread to unpack the package: {e}; retry later"
                    ));
                    self.reply(client, &request, Err(err));
                }
            }
        }
    }

    /// Unpacked packages (the staging waker fired): finish their operations.
    pub(super) fn staged(&mut self) {
        while let Ok(done) = self.staging.rx.try_recv() {
            self.staging.running -= 1;
            let Done {
                t,
                id,
                op,
                dest,
                result,
            } = done;
            let result = result
                .map_err(WireError::from)
                .and_then(|staged| self.finish_staged(op, staged));
            // Taken by the registry (renamed) on success; what is left is a
            // refused or unneeded tree.
            if dest.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dest) {
                    info!("cannot remove {}: {e}", dest.display());
                }
            }
            let result = result.map(|raw| {
                let raw = RawValue::from_string(raw).expect("serialised JSON");
                protocol::success_line(&id, &raw)
            });
            self.reply(t, &id, result);
        }
        self.start_staging();
    }

    fn finish_staged(&mut self, op: StagedOp, staged: Staged) -> Result<String, WireError> {
        match op {
            StagedOp::Create(req) => {
                let f = self.registry.create_staged(&req, Some(staged))?;
                info!("created function {}", f.spec.name);
                let answer = ok_json(&f.configuration());
                self.functions_changed();
                Ok(answer)
            }
            StagedOp::UpdateCode(req) => {
                let f = self.registry.update_code_staged(&req, Some(staged))?;
                let (name, conf) = (f.spec.name.clone(), f.configuration());
                self.retire_function_envs(&name);
                self.provision(&name);
                Ok(ok_json(&conf))
            }
            StagedOp::PublishLayer(req) => {
                let layer = self
                    .registry
                    .publish_layer_version_staged(&req, Some(staged))?;
                info!("published layer version {}", layer.layer_version_arn);
                Ok(ok_json(&layer))
            }
        }
    }
}

/// What the job unpacks: the zip's base64 moves to it (it may be 70 MB); the
/// request keeps the path or image reference, which the registry reads again.
fn take_code(code: &mut protocol::FunctionCode) -> protocol::FunctionCode {
    protocol::FunctionCode {
        zip_file: code.zip_file.take(),
        path: code.path.clone(),
        image_uri: code.image_uri.clone(),
    }
}
