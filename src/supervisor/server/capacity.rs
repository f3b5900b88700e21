//! Reserved and provisioned concurrency: the operations that set them, and
//! keeping a function's provisioned environments allocated.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use super::{ok_json, parse, EndReason, Supervisor};
use crate::metrics::{AccountGauges, FunctionGauges};
use crate::protocol::{
    self, AccountLimit, AccountSettings, AccountUsage, ErrorKind, FunctionConcurrency,
    ProvisionedConcurrencyConfig, WireError,
};
use crate::registry::{Concurrency, ProvisionedConfig};
use crate::supervisor::env::EnvState;

impl Supervisor {
    /// The account's reserved total follows the registry.
    pub(super) fn update_reserved_total(&mut self) {
        let total = self
            .registry
            .list()
            .filter_map(|f| f.concurrency.reserved)
            .sum();
        self.account.set_reserved_total(total);
    }

    /// The function's current concurrency settings (NotFound if none).
    fn concurrency_of(&self, function_name: &str) -> Result<(String, Concurrency), WireError> {
        let f = self
            .registry
            .get(function_name)
            .ok_or_else(|| super::not_found(function_name))?;
        Ok((f.spec.name.clone(), f.concurrency))
    }

    pub(super) fn op_put_concurrency(&mut self, params: &str) -> Result<String, WireError> {
        let req: protocol::PutFunctionConcurrency = parse(params)?;
        let (name, mut concurrency) = self.concurrency_of(&req.function_name)?;
        let others: u32 = self
            .registry
            .list()
            .filter(|f| f.spec.name != name)
            .filter_map(|f| f.concurrency.reserved)
            .sum();
        let requested = req.reserved_concurrent_executions;
        self.account
            .check_reserved(requested, others, concurrency.provisioned.map(|p| p.count))?;
        concurrency.reserved = Some(requested);
        self.registry.set_concurrency(&name, concurrency)?;
        self.update_reserved_total();
        info!("{name}: reserved concurrency {requested}");
        self.limits_changed();
        Ok(ok_json(&FunctionConcurrency {
            reserved_concurrent_executions: Some(requested),
        }))
    }

    pub(super) fn op_get_concurrency(&mut self, params: &str) -> Result<String, WireError> {
        let req: protocol::FunctionName = parse(params)?;
        let (_, concurrency) = self.concurrency_of(&req.function_name)?;
        Ok(ok_json(&FunctionConcurrency {
            reserved_concurrent_executions: concurrency.reserved,
        }))
    }

    pub(super) fn op_delete_concurrency(&mut self, params: &str) -> Result<String, WireError> {
        let req: protocol::FunctionName = parse(params)?;
        let (name, mut concurrency) = self.concurrency_of(&req.function_name)?;
        if concurrency.reserved.take().is_some() {
            self.registry.set_concurrency(&name, concurrency)?;
            self.update_reserved_total();
            info!("{name}: reserved concurrency removed");
            self.limits_changed();
        }
        Ok(ok_json(&serde_json::json!({})))
    }

    pub(super) fn op_put_provisioned(&mut self, params: &str) -> Result<String, WireError> {
        let req: protocol::PutProvisionedConcurrencyConfig = parse(params)?;
        check_qualifier(req.qualifier.as_deref())?;
        let (name, mut concurrency) = self.concurrency_of(&req.function_name)?;
        let others: u32 = self
            .registry
            .list()
            .filter(|f| f.spec.name != name && f.concurrency.reserved.is_none())
            .filter_map(|f| f.concurrency.provisioned.map(|p| p.count))
            .sum();
        let requested = req.provisioned_concurrent_executions;
        self.account
            .check_provisioned(requested, concurrency.reserved, others)?;
        concurrency.provisioned = Some(ProvisionedConfig {
            count: requested,
            modified_unix: unix_now(),
        });
        self.registry.set_concurrency(&name, concurrency)?;
        if let Some(pool) = self.pools.get_mut(&name) {
            // A new request starts afresh.
            pool.provision_failure = None;
            pool.provision_retry_at = None;
        }
        info!("{name}: provisioned concurrency {requested}");
        self.provision(&name);
        self.provisioned_status(&name).map(|s| ok_json(&s))
    }

    pub(super) fn op_get_provisioned(&mut self, params: &str) -> Result<String, WireError> {
        let req: protocol::FunctionQualifier = parse(params)?;
        check_qualifier(req.qualifier.as_deref())?;
        let (name, _) = self.concurrency_of(&req.function_name)?;
        self.provisioned_status(&name).map(|s| ok_json(&s))
    }

    pub(super) fn op_delete_provisioned(&mut self, params: &str) -> Result<String, WireError> {
        let req: protocol::FunctionQualifier = parse(params)?;
        check_qualifier(req.qualifier.as_deref())?;
        let (name, mut concurrency) = self.concurrency_of(&req.function_name)?;
        if concurrency.provisioned.take().is_none() {
            return Err(config_not_found(&name));
        }
        self.registry.set_concurrency(&name, concurrency)?;
        info!("{name}: provisioned concurrency removed");
        self.provision(&name);
        Ok(ok_json(&serde_json::json!({})))
    }

    pub(super) fn op_account_settings(&mut self, params: &str) -> Result<String, WireError> {
        let _: protocol::NoParams = parse(params)?;
        Ok(ok_json(&AccountSettings {
            account_limit: AccountLimit {
                concurrent_executions: self.account.max(),
                unreserved_concurrent_executions: self.account.unreserved_limit(),
            },
            account_usage: AccountUsage {
                function_count: self.registry.list().count() as u32,
            },
        }))
    }

    /// GetMetrics: the counters, with the gauges as they are now.
    pub(super) fn op_metrics(&mut self, params: &str) -> Result<String, WireError> {
        let _: protocol::NoParams = parse(params)?;
        let now = super::events::now_ms();
        let mut gauges: BTreeMap<String, FunctionGauges> = self
            .registry
            .list()
            .map(|f| {
                let g = FunctionGauges {
                    concurrent_executions: self
                        .pools
                        .get(&f.spec.name)
                        .map_or(0, |p| u64::from(p.in_flight.get())),
                    reserved_concurrency: f.concurrency.reserved,
                    provisioned_concurrency: f.concurrency.provisioned.map(|p| p.count),
                    ..FunctionGauges::default()
                };
                let q = self.events.queue.stats(&f.spec.name, now);
                let g = FunctionGauges {
                    queue_depth: q.depth(),
                    queue_ready: q.ready,
                    queue_in_flight: q.in_flight,
                    queue_retrying: q.retrying,
                    queue_oldest_age_seconds: q.oldest_age.as_secs_f64(),
                    ..g
                };
                (f.spec.name.clone(), g)
            })
            .collect();
        for e in self.envs.values() {
            let Some(g) = gauges.get_mut(&e.function) else {
                continue; // a blank
            };
            match e.state {
                EnvState::Idle { .. } => g.environments_idle += 1,
                EnvState::Busy(_) => g.environments_busy += 1,
                EnvState::Starting | EnvState::Blank { .. } => g.environments_starting += 1,
            }
            if e.provisioned && matches!(e.state, EnvState::Idle { .. } | EnvState::Busy(_)) {
                g.provisioned_ready += 1;
            }
        }
        let account = AccountGauges {
            concurrency_limit: u64::from(self.account.max()),
            unreserved_concurrency: u64::from(self.account.unreserved_limit()),
            concurrent_executions: u64::from(self.account.in_flight()),
            blank_environments: (self.blanks.len() + self.node_blanks.len()) as u64,
            node_blank_environments: self.node_blanks.len() as u64,
            environments: self.envs.len() as u64,
        };
        Ok(ok_json(&self.metrics.snapshot(&gauges, account)))
    }

    /// The provisioned environments of `function`'s current revision, made
    /// or on their way: (allocated, available = initialised).
    fn provisioned_counts(&self, function: &str) -> (u32, u32) {
        let revision = self.registry.get(function).map(|f| f.revision_id.as_str());
        let mut allocated = 0;
        let mut available = 0;
        for e in self.envs.values().filter(|e| e.provisioned && !e.retire) {
            let current = e.function == function && Some(e.revision_id.as_str()) == revision;
            let coming = e.function.is_empty() && e.reserved_for.as_deref() == Some(function);
            if current || coming {
                allocated += 1;
                if matches!(e.state, EnvState::Idle { .. } | EnvState::Busy(_)) {
                    available += 1;
                }
            }
        }
        (allocated, available)
    }

    fn provisioned_status(
        &self,
        function: &str,
    ) -> Result<ProvisionedConcurrencyConfig, WireError> {
        let config = self
            .registry
            .get(function)
            .and_then(|f| f.concurrency.provisioned)
            .ok_or_else(|| config_not_found(function))?;
        let (allocated, available) = self.provisioned_counts(function);
        let failure = self
            .pools
            .get(function)
            .and_then(|p| p.provision_failure.clone());
        let (status, status_reason) = if available >= config.count {
            ("READY", None)
        } else if failure.is_some() {
            ("FAILED", failure)
        } else {
            ("IN_PROGRESS", None)
        };
        Ok(ProvisionedConcurrencyConfig {
            requested_provisioned_concurrent_executions: config.count,
            allocated_provisioned_concurrent_executions: allocated,
            available_provisioned_concurrent_executions: available,
            status: status.to_string(),
            status_reason,
            last_modified: crate::registry::lambda_timestamp(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(config.modified_unix),
            ),
        })
    }

    /// Every function's provisioned environments (at start and at each
    /// housekeeping: one that ended is replaced).
    pub(super) fn provision_all(&mut self) {
        let names: Vec<String> = self
            .registry
            .list()
            .filter(|f| f.concurrency.provisioned.is_some())
            .map(|f| f.spec.name.clone())
            .chain(
                // Functions whose config was just removed may still have some.
                self.envs
                    .values()
                    .filter(|e| e.provisioned && !e.function.is_empty())
                    .map(|e| e.function.clone()),
            )
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for name in names {
            self.provision(&name);
        }
    }

    /// Bring `function`'s provisioned environments to its configured count:
    /// make the missing ones (from the blank pool when it has some), end idle
    /// ones past the count, and let busy ones past it finish as on-demand.
    pub(super) fn provision(&mut self, function: &str) {
        if self.shutting_down {
            return;
        }
        let want = self
            .registry
            .get(function)
            .and_then(|f| f.concurrency.provisioned)
            .map_or(0, |p| p.count);
        let (allocated, _) = self.provisioned_counts(function);
        if allocated > want {
            self.unprovision(function, allocated - want);
            return;
        }
        let pool = self.pools.entry(function.to_string()).or_default();
        if pool.provision_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        pool.provision_retry_at = None;
        for _ in allocated..want {
            // Within the start slots; the rest follow as starts finish
            // (schedule_waiting) or at the next housekeeping.
            if self.starting_count() >= self.max_starting() {
                break;
            }
            let started = self.start_env(function, true);
            if let Err(e) = started {
                info!("{function}: cannot make a provisioned environment: {e}");
                let pool = self.pools.entry(function.to_string()).or_default();
                pool.provision_failure = Some(format!("cannot make an environment: {e}"));
                pool.provision_retry_at = Some(Instant::now() + super::PROVISION_BACKOFF);
                break;
            }
        }
        if self.blanks.is_empty() || self.node_blanks.is_empty() {
            self.refill_blanks();
        }
    }

    /// Take `excess` environments out of `function`'s provisioned ones:
    /// starting and idle ones end, busy ones become on-demand.
    fn unprovision(&mut self, function: &str, mut excess: u32) {
        // Least useful first: still starting, then idle, then busy.
        let mut ids: Vec<(u8, u64)> = self
            .envs
            .values()
            .filter(|e| {
                e.provisioned
                    && (e.function == function || e.reserved_for.as_deref() == Some(function))
            })
            .map(|e| {
                let rank = match e.state {
                    EnvState::Blank { .. } | EnvState::Starting => 0,
                    EnvState::Idle { .. } => 1,
                    EnvState::Busy(_) => 2,
                };
                (rank, e.id)
            })
            .collect();
        ids.sort();
        for (rank, id) in ids {
            if excess == 0 {
                break;
            }
            excess -= 1;
            if rank == 2 {
                if let Some(env) = self.envs.get_mut(&id) {
                    env.provisioned = false;
                }
            } else {
                self.destroy_env(id, EndReason::Retired);
            }
        }
    }
}

/// Lambda takes a version or alias; lambdalet has `$LATEST` only.
fn check_qualifier(qualifier: Option<&str>) -> Result<(), WireError> {
    match qualifier {
        None | Some("$LATEST") => Ok(()),
        Some(q) => Err(WireError::invalid(format!(
            "Qualifier {q:?}: lambdalet has no published versions or aliases; leave Qualifier \
             out or give $LATEST"
        ))),
    }
}

fn config_not_found(function: &str) -> WireError {
    WireError::new(
        ErrorKind::ProvisionedConcurrencyConfigNotFoundException,
        format!(
            "No Provisioned Concurrency Config found for this function: {} (set one with \
             PutProvisionedConcurrencyConfig)",
            crate::config::function_arn(function)
        ),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
