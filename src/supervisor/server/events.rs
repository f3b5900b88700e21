//! Asynchronous (`Event`) invocations in the supervisor: accepting an event
//! (stored durably before the 202), dispatching queued events through the
//! normal admission and scheduling, retries, destinations, idempotency keys,
//! and the event-invoke-config and GetEventQueue operations.
//!
//! The store's writer thread does every fsync (queue/store.rs); the loop only
//! submits batches and acts on their commits, so a slow disk never stalls
//! synchronous invokes.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mio::Token;
use serde_json::value::RawValue;

use super::{not_found, now_rfc3339, ok_json, parse, Supervisor, Timer};
use crate::protocol::{self, InvokeAccepted, WireError};
use crate::registry::event_invoke::{Destination, EventInvokeConfig};
use crate::supervisor::invoke::{EventRef, Invocation, Outcome};
use crate::supervisor::queue::record::{self, Condition, RecordInputs, Response};
use crate::supervisor::queue::store::{Batch, EventMeta, KeyRecord, Op, StoredEvent};
use crate::supervisor::queue::Queue;

/// Events of one function waiting in its pool at once: enough to keep its
/// environments busy and to start new ones, few enough that a flood of
/// events never sits in front of other work.
const EVENT_LOOKAHEAD: usize = 2;
/// Deletes per batch when a function's queue is dropped.
const DROP_BATCH: usize = 1_000;

/// What to do once a batch is committed.
pub(super) enum AfterCommit {
    /// An accepted event: answer its caller (and the callers that sent the
    /// same idempotency key meanwhile), then queue it.
    Accepted {
        meta: EventMeta,
        reply: (Token, serde_json::Value),
        key: Option<(String, String)>,
    },
    /// A record sent on to a destination function: queue it there.
    Forwarded { meta: EventMeta, from: String },
    /// A batch of a deleted function's events removed: send the next one.
    Dropped,
    /// A record written to a sink, or a retry or delete: only failures
    /// matter.
    Finished { function: String },
}

/// An idempotency key: being stored (callers with the same key wait for
/// it), or stored until it expires.
pub(super) enum KeyState {
    Pending {
        waiters: Vec<(Token, serde_json::Value)>,
    },
    Done {
        request_id: String,
        expires_unix_ms: u64,
    },
}

/// How an attempt at an event ended.
pub(super) enum EventEnd {
    Success(Box<RawValue>),
    FunctionError(Box<RawValue>),
    /// Throttled or a supervisor-side error: not the function's fault.
    System(WireError),
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The pieces of the supervisor's state that belong to events.
pub(super) struct Events {
    pub store: crate::supervisor::queue::store::Store,
    pub queue: Queue,
    pub tickets: HashMap<u64, AfterCommit>,
    pub next_ticket: u64,
    pub keys: HashMap<(String, String), KeyState>,
    /// Something changed that may let more events run: dispatch at the end
    /// of this loop turn.
    pub dirty: bool,
    /// When the queue's timer is set to fire next (Unix ms).
    pub timer_at: Option<u64>,
    /// Events of deleted functions still to be removed from the store, and
    /// whether a batch of them is with the writer.
    pub drop_backlog: Vec<u64>,
    pub dropping: bool,
    /// Tombstones to clear once the backlog is removed.
    pub tombstones: Vec<(String, u64)>,
}

impl Events {
    fn submit(&mut self, ops: Vec<Op>, after: AfterCommit) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(ticket, after);
        self.store.submit(Batch { ticket, ops });
    }
}

impl Supervisor {
    /// `Invoke` with InvocationType Event: checked, stored durably, and
    /// answered 202 once the store has committed it.
    pub(super) fn accept_event(
        &mut self,
        t: Token,
        id: serde_json::Value,
        function_name: &str,
        idempotency_key: Option<String>,
        payload: Box<RawValue>,
        client_context: Option<serde_json::Value>,
    ) {
        if payload.get().len() > protocol::MAX_ASYNC_PAYLOAD_BYTES {
            let err = WireError::new(
                protocol::ErrorKind::RequestTooLargeException,
                format!(
                    "Request must be smaller than {} bytes for the InvokeFunction operation with InvocationType Event (the payload has {} bytes)",
                    protocol::MAX_ASYNC_PAYLOAD_BYTES,
                    payload.get().len()
                ),
            );
            return self.reply(t, &id, Err(err));
        }
        let Some(f) = self.registry.get(function_name) else {
            return self.reply(t, &id, Err(not_found(function_name)));
        };
        let function = f.spec.name.clone();
        let now = now_ms();
        let key = match idempotency_key {
            Some(k) if k.is_empty() || k.len() > protocol::MAX_IDEMPOTENCY_KEY_BYTES => {
                let err = WireError::invalid(format!(
                    "IdempotencyKey must be 1 to {} bytes long (got {})",
                    protocol::MAX_IDEMPOTENCY_KEY_BYTES,
                    k.len()
                ));
                return self.reply(t, &id, Err(err));
            }
            Some(k) => Some((function.clone(), k)),
            None => None,
        };
        if let Some(k) = &key {
            match self.events.keys.get_mut(k) {
                Some(KeyState::Pending { waiters, .. }) => {
                    waiters.push((t, id));
                    return;
                }
                Some(KeyState::Done {
                    request_id,
                    expires_unix_ms,
                }) if *expires_unix_ms > now => {
                    let answer = InvokeAccepted {
                        status_code: 202,
                        request_id: Some(request_id.clone()),
                        duplicate: true,
                    };
                    return self.reply_ok(t, &id, &answer);
                }
                _ => {}
            }
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        let seq = self.events.queue.allocate_seq();
        let event = StoredEvent {
            function: function.clone(),
            request_id: request_id.clone(),
            payload,
            client_context,
            accepted_unix_ms: now,
            attempts: 0,
            not_before_unix_ms: 0,
            idempotency_key: key.as_ref().map(|(_, k)| k.clone()),
        };
        let meta = EventMeta {
            seq,
            function: function.clone(),
            request_id: request_id.clone(),
            accepted_unix_ms: now,
            attempts: 0,
            not_before_unix_ms: 0,
        };
        let mut ops = vec![Op::Put { seq, event }];
        if let Some((f, k)) = &key {
            let expires_unix_ms = now + self.opts.idempotency_window.as_millis() as u64;
            ops.push(Op::PutKey(KeyRecord {
                function: f.clone(),
                key: k.clone(),
                request_id: request_id.clone(),
                expires_unix_ms,
            }));
            self.events.keys.insert(
                (f.clone(), k.clone()),
                KeyState::Pending {
                    waiters: Vec::new(),
                },
            );
        }
        self.events.submit(
            ops,
            AfterCommit::Accepted {
                meta,
                reply: (t, id),
                key,
            },
        );
    }

    /// `Invoke` with InvocationType DryRun: everything an invoke checks,
    /// then 204 without running.
    pub(super) fn dry_run(&mut self, t: Token, id: serde_json::Value, function_name: &str) {
        if self.registry.get(function_name).is_none() {
            return self.reply(t, &id, Err(not_found(function_name)));
        }
        let answer = InvokeAccepted {
            status_code: 204,
            request_id: None,
            duplicate: false,
        };
        self.reply_ok(t, &id, &answer);
    }

    /// The store's writer committed batches: act on each.
    pub(super) fn store_committed(&mut self) {
        for done in self.events.store.committed() {
            let Some(after) = self.events.tickets.remove(&done.ticket) else {
                continue;
            };
            let function = match &after {
                AfterCommit::Accepted { meta, .. } => meta.function.clone(),
                AfterCommit::Forwarded { from, .. } => from.clone(),
                AfterCommit::Finished { function } => function.clone(),
                AfterCommit::Dropped => String::new(),
            };
            for (dir, e) in done.sink_failures {
                info!(
                    "cannot write an invocation record of {function} to {}: {e}",
                    dir.display()
                );
                self.metrics.destination_failed(&function);
            }
            match after {
                AfterCommit::Accepted { meta, reply, key } => {
                    self.event_accepted(meta, reply, key, done.result);
                }
                AfterCommit::Forwarded { meta, from } => match done.result {
                    Ok(()) => {
                        self.metrics.event_received(&meta.function);
                        self.events.queue.insert(meta, now_ms());
                        self.events.dirty = true;
                    }
                    Err(e) => {
                        info!(
                            "cannot forward a record of {from} to {}: {e}",
                            meta.function
                        );
                        self.metrics.destination_failed(&from);
                    }
                },
                AfterCommit::Dropped => {
                    if let Err(e) = done.result {
                        info!("cannot remove the events of a deleted function: {e}");
                    }
                    self.events.dropping = false;
                    self.pump_drops();
                }
                AfterCommit::Finished { function } => {
                    if let Err(e) = done.result {
                        // The event stays stored: it runs again after a
                        // restart (at least once, never lost).
                        info!("cannot record the end of an event of {function}: {e}");
                    }
                }
            }
        }
    }

    fn event_accepted(
        &mut self,
        meta: EventMeta,
        (t, id): (Token, serde_json::Value),
        key: Option<(String, String)>,
        result: Result<(), String>,
    ) {
        let waiters = match key.as_ref().and_then(|k| self.events.keys.remove(k)) {
            Some(KeyState::Pending { waiters, .. }) => waiters,
            _ => Vec::new(),
        };
        match result {
            Ok(()) => {
                if let Some(k) = key {
                    let expires_unix_ms =
                        meta.accepted_unix_ms + self.opts.idempotency_window.as_millis() as u64;
                    self.events.keys.insert(
                        k,
                        KeyState::Done {
                            request_id: meta.request_id.clone(),
                            expires_unix_ms,
                        },
                    );
                }
                self.metrics.event_received(&meta.function);
                let answer = |duplicate| InvokeAccepted {
                    status_code: 202,
                    request_id: Some(meta.request_id.clone()),
                    duplicate,
                };
                self.reply_ok(t, &id, &answer(false));
                for (t, id) in waiters {
                    self.reply_ok(t, &id, &answer(true));
                }
                self.events.queue.insert(meta, now_ms());
                self.events.dirty = true;
            }
            Err(e) => {
                let err = WireError::service(format!(
                    "the event could not be stored ({e}); it was not accepted: send it again"
                ));
                for (t, id) in std::iter::once((t, id)).chain(waiters) {
                    self.reply(t, &id, Err(err.clone()));
                }
            }
        }
    }

    /// Hand ready events to the scheduler, one per function per turn,
    /// within each function's share of the concurrency given to events.
    pub(super) fn dispatch_events(&mut self) {
        self.events.dirty = false;
        let now = now_ms();
        self.events.queue.promote_due(now);
        let mut candidates = self.events.queue.functions_with_ready();
        while !candidates.is_empty() {
            candidates.retain(|f| self.dispatch_one(f, now));
        }
        self.arm_event_timer();
    }

    /// The concurrency the events of one function without a reservation may
    /// use: half the unreserved pool, shared evenly among the functions with
    /// events, so that synchronous invokes and other functions' events keep
    /// room.
    fn event_share(&self) -> usize {
        let active = self.events.queue.active_functions().max(1) as u32;
        (self.account.unreserved_limit() / 2 / active).max(1) as usize
    }

    /// Dispatch one ready event of `function`; false when it can take no
    /// more this turn.
    fn dispatch_one(&mut self, function: &str, now: u64) -> bool {
        let Some(f) = self.registry.get(function) else {
            self.drop_function_events(function);
            return false;
        };
        let config = f.event_invoke.clone().unwrap_or_default();
        let reserved = f.concurrency.reserved;
        let waiting = self.pools.get(function).map_or(0, |p| p.pending.len());
        // A reservation is the function's own: its events may use all of it
        // (admission holds them to it); the others share the unreserved pool.
        let share = reserved.map_or_else(|| self.event_share(), |r| (r as usize).max(1));
        if waiting >= EVENT_LOOKAHEAD || self.events.queue.in_flight(function) >= share {
            return false;
        }
        let Some(meta) = self.events.queue.pop_ready(function) else {
            return false;
        };
        if self
            .events
            .queue
            .too_old(meta.accepted_unix_ms, config.max_event_age_s, now)
        {
            self.event_failed(&meta, &config, Condition::EventAgeExceeded, None);
            return true;
        }
        let pool = self.pools.entry(function.to_owned()).or_default();
        let slot = match self.account.admit(&pool.in_flight, reserved) {
            Ok(slot) => slot,
            Err(throttle) => {
                self.metrics.throttled(function, throttle.reason());
                self.events.queue.back_off(meta.seq, now);
                return false;
            }
        };
        let stored = match self.events.store.get(meta.seq) {
            Ok(Some(e)) => e,
            Ok(None) => {
                info!(
                    "event {} of {function} is not in the store",
                    meta.request_id
                );
                self.events.queue.remove(meta.seq);
                return true;
            }
            Err(e) => {
                info!("cannot read event {} of {function}: {e}", meta.request_id);
                self.events.queue.back_off(meta.seq, now);
                return false;
            }
        };
        let pool = self.pools.get_mut(function).expect("created above");
        pool.pending.push_back(Invocation {
            request_id: stored.request_id,
            reply_to: None,
            function: function.to_owned(),
            payload: stored.payload,
            log_type: protocol::LogType::None,
            client_context: stored.client_context,
            started: None,
            tail: None,
            log: Vec::new(),
            log_bytes: 0,
            timer: 0,
            slot: Some(slot),
            event: Some(EventRef {
                seq: meta.seq,
                invoke_count: meta.attempts + 1,
            }),
        });
        self.schedule(function);
        true
    }

    /// Set the queue's timer for the next retrying event, if it is sooner
    /// than the one set.
    fn arm_event_timer(&mut self) {
        let Some(due) = self.events.queue.next_due() else {
            return;
        };
        if self.events.timer_at.is_some_and(|at| at <= due) {
            return;
        }
        self.events.timer_at = Some(due);
        let wait = Duration::from_millis(due.saturating_sub(now_ms()));
        self.add_timer(wait, Timer::Events);
    }

    /// A function's reservation changed: throttled events try again now
    /// instead of waiting out backoffs that may have grown to minutes.
    pub(super) fn limits_changed(&mut self) {
        if self.events.queue.end_backoffs() > 0 {
            self.events.dirty = true;
        }
    }

    pub(super) fn event_timer(&mut self) {
        self.events.timer_at = None;
        self.dispatch_events();
    }

    /// An attempt at an event ended (from finish, answer_function_error or
    /// answer_error: the invocation has no caller to answer).
    pub(super) fn event_ended(&mut self, inv: Invocation, end: EventEnd) {
        let Some(ev) = inv.event else { return };
        let Some(meta) = self.events.queue.get(ev.seq).cloned() else {
            return; // dropped meanwhile (its function was deleted)
        };
        self.events.dirty = true;
        let Some(f) = self.registry.get(&meta.function) else {
            return self.drop_function_events(&meta.function);
        };
        let config = f.event_invoke.clone().unwrap_or_default();
        let now = now_ms();
        match end {
            EventEnd::Success(payload) => {
                let dest = config.on_success.clone();
                let rec = dest.as_ref().map(|_| {
                    self.record(
                        &meta,
                        &inv.payload,
                        Condition::Success,
                        ev.invoke_count,
                        Some(Response {
                            function_error: None,
                            payload: &payload,
                        }),
                    )
                });
                self.finish_event(&meta, dest.zip(rec), Condition::Success);
            }
            EventEnd::FunctionError(body) => {
                let attempts = meta.attempts + 1;
                if attempts <= config.max_retry_attempts {
                    let due = now + self.events.queue.retry_delay_ms(attempts);
                    self.events.queue.retry_at(meta.seq, attempts, due);
                    self.events.submit(
                        vec![Op::Retry {
                            seq: meta.seq,
                            attempts,
                            not_before_unix_ms: due,
                        }],
                        AfterCommit::Finished {
                            function: meta.function.clone(),
                        },
                    );
                } else {
                    let response = Response {
                        function_error: Some("Unhandled"),
                        payload: &body,
                    };
                    let rec = self.record(
                        &meta,
                        &inv.payload,
                        Condition::RetriesExhausted,
                        ev.invoke_count,
                        Some(response),
                    );
                    let dest = config.on_failure.clone();
                    self.finish_event(&meta, dest.map(|d| (d, rec)), Condition::RetriesExhausted);
                }
            }
            EventEnd::System(err) => {
                info!(
                    "event {} of {}: {err}; retried later",
                    meta.request_id, meta.function
                );
                self.events.queue.back_off(meta.seq, now);
            }
        }
    }

    /// A record about event `meta`.
    fn record(
        &self,
        meta: &EventMeta,
        request_payload: &RawValue,
        condition: Condition,
        invoke_count: u32,
        response: Option<Response>,
    ) -> Box<RawValue> {
        record::invocation_record(&RecordInputs {
            timestamp: &now_rfc3339(),
            request_id: &meta.request_id,
            function_arn: &super::function_arn(&meta.function),
            condition,
            invoke_count,
            request_payload,
            response,
        })
    }

    /// The event failed for good (`condition`): its record goes to the
    /// OnFailure destination, or it is dropped.
    fn event_failed(
        &mut self,
        meta: &EventMeta,
        config: &EventInvokeConfig,
        condition: Condition,
        response: Option<Response>,
    ) {
        let Some(dest) = config.on_failure.clone() else {
            return self.finish_event(meta, None, condition);
        };
        let payload = match self.events.store.get(meta.seq) {
            Ok(Some(e)) => e.payload,
            _ => RawValue::from_string("null".to_owned()).expect("valid JSON"),
        };
        let rec = self.record(meta, &payload, condition, meta.attempts, response);
        self.finish_event(meta, Some((dest, rec)), condition);
    }

    /// The event is done: its record (if any) goes to `dest` in the same
    /// batch that removes it from the store, so a crash leaves either both
    /// or neither.
    fn finish_event(
        &mut self,
        meta: &EventMeta,
        dest: Option<(Destination, Box<RawValue>)>,
        condition: Condition,
    ) {
        self.events.queue.remove(meta.seq);
        let mut ops = Vec::with_capacity(2);
        let mut after = AfterCommit::Finished {
            function: meta.function.clone(),
        };
        match dest {
            None if condition.is_failure() => self.metrics.event_dropped(&meta.function),
            None => {}
            Some((Destination::Directory(dir), rec)) => {
                ops.push(Op::WriteSink {
                    dir,
                    file_name: record::sink_file_name(now_ms(), &meta.request_id, condition),
                    bytes: rec.get().as_bytes().to_vec(),
                });
                if condition.is_failure() {
                    self.metrics.event_dead_lettered(&meta.function);
                }
            }
            Some((Destination::Function(target), rec)) => {
                if self.registry.get(&target).is_some() {
                    let seq = self.events.queue.allocate_seq();
                    let now = now_ms();
                    let request_id = uuid::Uuid::new_v4().to_string();
                    ops.push(Op::Put {
                        seq,
                        event: StoredEvent {
                            function: target.clone(),
                            request_id: request_id.clone(),
                            payload: rec,
                            client_context: None,
                            accepted_unix_ms: now,
                            attempts: 0,
                            not_before_unix_ms: 0,
                            idempotency_key: None,
                        },
                    });
                    after = AfterCommit::Forwarded {
                        meta: EventMeta {
                            seq,
                            function: target,
                            request_id,
                            accepted_unix_ms: now,
                            attempts: 0,
                            not_before_unix_ms: 0,
                        },
                        from: meta.function.clone(),
                    };
                    if condition.is_failure() {
                        self.metrics.event_dead_lettered(&meta.function);
                    }
                } else {
                    info!(
                        "the destination of {} does not exist: {target}",
                        meta.function
                    );
                    self.metrics.destination_failed(&meta.function);
                    if condition.is_failure() {
                        self.metrics.event_dropped(&meta.function);
                    }
                }
            }
        }
        ops.push(Op::Delete { seq: meta.seq });
        self.events.submit(ops, after);
    }

    /// Every event of a function that is gone is dropped.
    pub(super) fn drop_function_events(&mut self, function: &str) {
        let seqs = self.events.queue.remove_function(function);
        if seqs.is_empty() {
            return;
        }
        info!(
            "dropped {} queued event(s) of deleted function {function}",
            seqs.len()
        );
        // Deleted DROP_BATCH at a time, one batch in the writer's channel at
        // once, so that other functions' accepts are not queued behind a
        // transaction deleting 100,000 events. Events not deleted yet when
        // the supervisor stops are dropped again after the restart: their
        // function is gone.
        // The tombstone goes first, in its own batch: from its commit on, a
        // restart never runs these events, even if a function of the same
        // name exists by then.
        let up_to_seq = self.events.queue.last_seq();
        self.events.submit(
            vec![Op::Tombstone {
                function: function.to_owned(),
                up_to_seq,
            }],
            AfterCommit::Finished {
                function: function.to_owned(),
            },
        );
        self.events
            .tombstones
            .push((function.to_owned(), up_to_seq));
        self.events.drop_backlog.extend(seqs);
        self.pump_drops();
        self.events.keys.retain(|(f, _), _| f != function);
        self.events.submit(
            vec![Op::ForgetFunction {
                function: function.to_owned(),
            }],
            AfterCommit::Finished {
                function: function.to_owned(),
            },
        );
    }

    pub(super) fn pump_drops(&mut self) {
        if self.events.dropping {
            return;
        }
        if self.events.drop_backlog.is_empty() {
            let ops: Vec<Op> = self
                .events
                .tombstones
                .drain(..)
                .map(|(function, up_to_seq)| Op::ClearTombstone {
                    function,
                    up_to_seq,
                })
                .collect();
            if !ops.is_empty() {
                self.events.submit(
                    ops,
                    AfterCommit::Finished {
                        function: String::new(),
                    },
                );
            }
            return;
        }
        let from = self.events.drop_backlog.len().saturating_sub(DROP_BATCH);
        let ops = self
            .events
            .drop_backlog
            .drain(from..)
            .map(|seq| Op::Delete { seq })
            .collect();
        self.events.dropping = true;
        self.events.submit(ops, AfterCommit::Dropped);
    }

    /// At start: remove what deleted functions left in the store, and drop
    /// the events of functions deleted while the supervisor was down.
    pub(super) fn recover_events(&mut self) {
        let gone: Vec<String> = self
            .events
            .queue
            .functions()
            .filter(|f| self.registry.get(f).is_none())
            .map(str::to_owned)
            .collect();
        for f in gone {
            self.drop_function_events(&f);
        }
        self.pump_drops();
    }

    /// Events past their maximum age go to OnFailure; expired idempotency
    /// keys are forgotten. Called by housekeeping.
    pub(super) fn expire_events(&mut self) {
        let now = now_ms();
        let ages: HashMap<String, u32> = self
            .registry
            .list()
            .map(|f| {
                let age = f.event_invoke.as_ref().map_or(
                    crate::registry::event_invoke::DEFAULT_MAX_EVENT_AGE_S,
                    |c| c.max_event_age_s,
                );
                (f.spec.name.clone(), age)
            })
            .collect();
        for seq in self.events.queue.expired(now, |f| ages.get(f).copied()) {
            let Some(meta) = self.events.queue.get(seq).cloned() else {
                continue;
            };
            let config = self
                .registry
                .get(&meta.function)
                .and_then(|f| f.event_invoke.clone())
                .unwrap_or_default();
            self.event_failed(&meta, &config, Condition::EventAgeExceeded, None);
        }
        let before = self.events.keys.len();
        self.events.keys.retain(|_, k| match k {
            KeyState::Done {
                expires_unix_ms, ..
            } => *expires_unix_ms > now,
            KeyState::Pending { .. } => true,
        });
        if self.events.keys.len() < before {
            self.events.submit(
                vec![Op::PruneKeys { now_unix_ms: now }],
                AfterCommit::Finished {
                    function: String::new(),
                },
            );
        }
    }

    // ---- operations ---------------------------------------------------------

    pub(super) fn op_put_event_invoke_config(
        &mut self,
        t: Token,
        params: &str,
        update: bool,
    ) -> Result<String, WireError> {
        let req: protocol::PutFunctionEventInvokeConfig = parse(params)?;
        let f = self
            .registry
            .get(&req.function_name)
            .ok_or_else(|| not_found(&req.function_name))?;
        let base = if update {
            Some(f.event_invoke.clone().ok_or_else(|| {
                WireError::not_found(format!(
                    "The function {} doesn't have an EventInvokeConfig; create one with PutFunctionEventInvokeConfig",
                    f.arn()
                ))
            })?)
        } else {
            None
        };
        let name = f.spec.name.clone();
        let config = EventInvokeConfig::from_request(&req, base.as_ref(), now_ms())
            .map_err(|e| WireError::invalid(e.to_string()))?;
        let uid = self.conns.get(&t).map_or(u32::MAX, |c| c.peer_uid);
        for dest in config.destinations() {
            match dest {
                Destination::Function(target) => {
                    if self.registry.get(target).is_none() {
                        return Err(WireError::invalid(format!(
                            "the destination function {target} does not exist; create it first"
                        )));
                    }
                }
                Destination::Directory(dir) => {
                    if uid != 0 {
                        return Err(WireError::invalid(format!(
                            "a directory destination is written by the supervisor as root and is accepted from root clients only (this client is uid {uid}); use a function destination"
                        )));
                    }
                    if !dir.is_dir() {
                        return Err(WireError::invalid(format!(
                            "the destination directory {} does not exist; create it first",
                            dir.display()
                        )));
                    }
                }
            }
        }
        let f = self.registry.set_event_invoke(&name, Some(config))?;
        let wire = f.event_invoke.as_ref().expect("just set").to_wire(&f.arn());
        self.events.dirty = true;
        Ok(ok_json(&wire))
    }

    pub(super) fn op_get_event_invoke_config(&mut self, params: &str) -> Result<String, WireError> {
        let req: protocol::FunctionQualifier = parse(params)?;
        let f = self
            .registry
            .get(&req.function_name)
            .ok_or_else(|| not_found(&req.function_name))?;
        let config = f.event_invoke.as_ref().ok_or_else(|| {
            WireError::not_found(format!(
                "The function {} doesn't have an EventInvokeConfig",
                f.arn()
            ))
        })?;
        Ok(ok_json(&config.to_wire(&f.arn())))
    }

    pub(super) fn op_delete_event_invoke_config(
        &mut self,
        params: &str,
    ) -> Result<String, WireError> {
        let req: protocol::FunctionQualifier = parse(params)?;
        let f = self
            .registry
            .get(&req.function_name)
            .ok_or_else(|| not_found(&req.function_name))?;
        if f.event_invoke.is_none() {
            return Err(WireError::not_found(format!(
                "The function {} doesn't have an EventInvokeConfig",
                f.arn()
            )));
        }
        let name = f.spec.name.clone();
        self.registry.set_event_invoke(&name, None)?;
        Ok(ok_json(&protocol::NoParams {}))
    }

    pub(super) fn op_get_event_queue(&mut self, params: &str) -> Result<String, WireError> {
        let req: protocol::FunctionName = parse(params)?;
        let f = self
            .registry
            .get(&req.function_name)
            .ok_or_else(|| not_found(&req.function_name))?;
        let name = f.spec.name.clone();
        let s = self.events.queue.stats(&name, now_ms());
        Ok(ok_json(&protocol::EventQueue {
            function_name: name,
            depth: s.depth(),
            ready: s.ready,
            in_flight: s.in_flight,
            retrying: s.retrying,
            oldest_age_seconds: s.oldest_age.as_secs_f64(),
        }))
    }

    /// Route the end of an invocation that came from the queue.
    pub(super) fn event_outcome(&mut self, inv: Invocation, outcome: Outcome) {
        let end = match outcome {
            Outcome::Success(p) => EventEnd::Success(p),
            Outcome::FunctionError { body, .. } => EventEnd::FunctionError(body),
        };
        self.event_ended(inv, end);
    }
}
