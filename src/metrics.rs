//! Per-function metrics of the supervisor, and their Prometheus text.
//!
//! The supervisor owns one [`Metrics`] and feeds it from its event loop: one
//! [`Metrics::invoked`] per finished invoke, one [`Metrics::throttled`] per refused
//! one, and one call per step of an asynchronous event's life
//! ([`Metrics::event_received`] and the methods beside it). The loop is
//! single-threaded, so this is plain data: no atomics, no locks.
//!
//! On `GetMetrics` the supervisor answers with a [`Snapshot`] (JSON, PascalCase
//! like the rest of the protocol). `lambdalet metrics` deserialises it and prints
//! [`render_prometheus`] of it: the supervisor never formats text and the CLI never
//! sees a histogram, and both read the same figures.
//!
//! What lives here and what does not: counters and distributions are history, and
//! only this module keeps them. Gauges (concurrency, environments by state, the
//! event queue) are the supervisor's current state, so they are passed in to
//! [`Metrics::snapshot`] rather than mirrored here, where a missed update would
//! make them drift.
//!
//! Growing it needs no reshaping:
//! - a gauge the supervisor knows (as the queue's depth and the age of its oldest
//!   event) is a field of [`FunctionGauges`] (or [`AccountGauges`]) and one family
//!   in [`render_prometheus`];
//! - an event to count (as a dropped or dead-lettered event) is a field of
//!   [`FunctionCounters`], a method of [`Metrics`] beside [`Metrics::throttled`],
//!   and one family;
//! - a distribution is a `Distribution` in the per-function state and a
//!   [`Summary`] field of [`FunctionSnapshot`].
//!
//! Every JSON struct reads missing fields as their default, so a CLI and a
//! supervisor one such field apart still understand each other.
//!
//! Percentiles are over every invoke since the supervisor started (or the function
//! was created), not over a sliding window: `lambdalet metrics` is read by a person
//! comparing runs on one host, and a window would need a ring of histograms per
//! function. A scraper that wants rates takes them from the counters, as usual.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{MEMORY_MB, TIMEOUT_S};

/// Significant figures the histograms keep: values are exact to within 1%, which
/// is finer than the run-to-run noise of a cold start, and the counts stay small
/// (sizes at [`Metrics`]).
const SIGNIFICANT_FIGURES: u8 = 2;

/// The longest duration a histogram records, in microseconds: Lambda's longest
/// timeout (900 s, `config::TIMEOUT_S`) plus a minute for the kill to land. Larger
/// values are clamped in the histogram (the exact sum and maximum still see them),
/// so an odd value cannot grow a histogram past this range.
const DURATION_CEILING_US: u64 = (*TIMEOUT_S.end() as u64 + 60) * 1_000_000;

/// The largest memory figure a histogram records, in MB: the largest MemorySize
/// (`config::MEMORY_MB`); an environment's cgroup cannot use more than its own.
const MEMORY_CEILING_MB: u64 = *MEMORY_MB.end() as u64;

/// Lambda's throttle reason codes (the `reason` of a TooManyRequestsException),
/// shown at 0 for every function so a dashboard has the series before the first
/// throttle. Another reason passed to [`Metrics::throttled`] is counted too.
pub const THROTTLE_REASONS: &[&str] = &[
    "ConcurrentInvocationLimitExceeded",
    "ReservedFunctionConcurrentInvocationLimitExceeded",
];

/// What the supervisor measured of one finished invoke.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// The REPORT line's Duration.
    pub duration: Duration,
    /// The REPORT line's Max Memory Used, in Lambda's MB (MiB, rounded up).
    pub max_memory_used_mb: u64,
    pub error: Option<ErrorClass>,
    /// The REPORT line's Init Duration: `Some` on a cold start.
    pub init_duration: Option<Duration>,
}

/// Why an invoke failed. Lambda's Errors metric counts all three; the class
/// tells a bug in the handler from a limit from a broken environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The handler raised, or returned an error.
    Function,
    /// The invoke outlived the function's Timeout.
    Timeout,
    /// The environment failed: out of memory, the runtime exited, init failed.
    Runtime,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 3] = [
        ErrorClass::Function,
        ErrorClass::Timeout,
        ErrorClass::Runtime,
    ];

    /// The `class` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Function => "function",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Runtime => "runtime",
        }
    }
}

/// A function's gauges, as the supervisor knows them when it takes a snapshot.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct FunctionGauges {
    /// Invokes running now.
    pub concurrent_executions: u64,
    pub environments_idle: u64,
    pub environments_busy: u64,
    /// Forked, still running their init.
    pub environments_starting: u64,
    /// Provisioned environments initialised and ready.
    pub provisioned_ready: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioned_concurrency: Option<u32>,
    /// Asynchronous events stored and not finished: ready, in flight or waiting
    /// for a retry. An event is finished once it succeeded, went to its OnFailure
    /// destination or was dropped.
    pub queue_depth: u64,
    /// Queued events due now, waiting for concurrency.
    pub queue_ready: u64,
    /// Queued events being invoked now.
    pub queue_in_flight: u64,
    /// Queued events that failed and wait for their retry's delay.
    pub queue_retrying: u64,
    /// Age of the oldest unfinished event, in seconds since it was received
    /// (Lambda's AsyncEventAge, as of now rather than at its invoke); 0 with
    /// none.
    pub queue_oldest_age_seconds: f64,
}

/// The account's gauges: one host is one account.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AccountGauges {
    /// The concurrent executions limit.
    pub concurrency_limit: u64,
    /// The limit less every function's reserved concurrency.
    pub unreserved_concurrency: u64,
    /// Invokes running now, all functions.
    pub concurrent_executions: u64,
    /// Environments in the blank pool, not yet bound to a function.
    pub blank_environments: u64,
    /// Of those, node blanks (a node already started in each).
    pub node_blank_environments: u64,
    /// Every environment on the host, blank ones included.
    pub environments: u64,
}

/// Errors, in total and by [`ErrorClass`].
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ErrorCounts {
    pub total: u64,
    pub function: u64,
    pub timeout: u64,
    pub runtime: u64,
}

impl ErrorCounts {
    pub fn get(&self, class: ErrorClass) -> u64 {
        match class {
            ErrorClass::Function => self.function,
            ErrorClass::Timeout => self.timeout,
            ErrorClass::Runtime => self.runtime,
        }
    }

    fn add(&mut self, class: ErrorClass) {
        self.total += 1;
        match class {
            ErrorClass::Function => self.function += 1,
            ErrorClass::Timeout => self.timeout += 1,
            ErrorClass::Runtime => self.runtime += 1,
        }
    }
}

/// A function's counters since the supervisor started or the function was created.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct FunctionCounters {
    /// Invokes that ran, successful or not. As Lambda's Invocations metric, a
    /// throttled invoke is not one.
    pub invocations: u64,
    pub errors: ErrorCounts,
    /// Throttles by Lambda's reason code; every [`THROTTLE_REASONS`] entry is
    /// present in a snapshot.
    pub throttles: BTreeMap<String, u64>,
    /// Invokes that initialised a new environment first.
    pub cold_starts: u64,
    /// Event invokes accepted, that is durably stored (Lambda's
    /// AsyncEventsReceived).
    pub async_events_received: u64,
    /// Events that failed for good (retries exhausted, or too old) and reached no
    /// destination (see [`Metrics::event_dropped`]). Lambda's AsyncEventsDropped
    /// also counts those whose record went to an OnFailure destination: it is
    /// this plus `async_events_dead_lettered`.
    pub async_events_dropped: u64,
    /// Events that failed for good and whose failure record was sent to their
    /// OnFailure destination.
    pub async_events_dead_lettered: u64,
    /// Records that could not be delivered to their destination, OnSuccess or
    /// OnFailure (Lambda's DestinationDeliveryFailures).
    pub destination_delivery_failures: u64,
}

/// A distribution as percentiles. Its unit is in the name of the field that holds
/// it (`DurationMs`, `MaxMemoryUsedMb`). Percentiles are the histogram's, within
/// 1% and never outside the recorded range; `sum` and `max` are exact. With no
/// observation every field is 0, and the Prometheus text shows the quantiles as
/// NaN, as Prometheus' own client libraries do.
#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Summary {
    pub count: u64,
    pub sum: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// The quantiles as the Prometheus text labels them; the maximum is quantile 1.
    fn quantiles(&self) -> [(&'static str, f64); 4] {
        [
            ("0.5", self.p50),
            ("0.9", self.p90),
            ("0.99", self.p99),
            ("1", self.max),
        ]
    }
}

/// One function in a [`Snapshot`].
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct FunctionSnapshot {
    pub function_name: String,
    pub counters: FunctionCounters,
    /// Every invoke's duration, in milliseconds.
    pub duration_ms: Summary,
    /// Cold starts' init duration, in milliseconds.
    pub init_duration_ms: Summary,
    /// Every invoke's peak memory, in Lambda's MB (MiB).
    pub max_memory_used_mb: Summary,
    pub gauges: FunctionGauges,
}

/// The result of `GetMetrics`: everything `lambdalet metrics` prints.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Snapshot {
    pub uptime_seconds: f64,
    pub account: AccountGauges,
    /// Sorted by name.
    pub functions: Vec<FunctionSnapshot>,
}

/// One distribution: an HDR histogram for the percentiles, and the exact sum,
/// minimum and maximum, which a histogram only knows to its precision.
#[derive(Debug, Clone)]
struct Distribution {
    histogram: Histogram<u64>,
    /// Values above it are recorded as it (see [`DURATION_CEILING_US`]).
    ceiling: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Distribution {
    fn new(ceiling: u64) -> Distribution {
        // Auto-resizing from the smallest range: the counts grow only as far as
        // the largest value recorded, so a 5 ms function never pays for 900 s.
        let histogram = Histogram::new(SIGNIFICANT_FIGURES)
            .expect("2 significant figures is within hdrhistogram's 0..=5");
        Distribution {
            histogram,
            ceiling,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    fn record(&mut self, value: u64) {
        self.sum = self.sum.saturating_add(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        let clamped = value.min(self.ceiling);
        // `record` fails only if growing the counts would overflow usize, which
        // the ceiling rules out; clamp into the current range rather than lose it.
        if self.histogram.record(clamped).is_err() {
            self.histogram.saturating_record(clamped);
        }
    }

    /// The percentiles, each value divided by `divisor` to reach the unit of the
    /// snapshot. Division, not multiplication by a reciprocal, keeps 50175 µs as
    /// exactly 50.175 ms (the nearest double), not 50.175000000000004.
    fn summary(&self, divisor: f64) -> Summary {
        if self.histogram.is_empty() {
            return Summary::default();
        }
        // hdrhistogram answers the highest value equivalent to the quantile's
        // bucket, an upper bound that can fall outside what was recorded (one
        // 12,500 µs invoke would have a p50 of 12,543 µs): every quantile lies
        // between the exact minimum and maximum, so clamp it there.
        let at = |q: f64| {
            let v = self.histogram.value_at_quantile(q);
            v.clamp(self.min, self.max) as f64 / divisor
        };
        Summary {
            count: self.histogram.len(),
            sum: self.sum as f64 / divisor,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: self.max as f64 / divisor,
        }
    }

    /// Bytes on the heap: the histogram's counts.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.histogram.distinct_values() * std::mem::size_of::<u64>()
    }
}

/// What [`Metrics`] keeps of one function.
#[derive(Debug, Clone)]
struct FunctionMetrics {
    counters: FunctionCounters,
    duration_us: Distribution,
    init_duration_us: Distribution,
    max_memory_used_mb: Distribution,
}

impl FunctionMetrics {
    fn new() -> FunctionMetrics {
        FunctionMetrics {
            counters: FunctionCounters::default(),
            duration_us: Distribution::new(DURATION_CEILING_US),
            init_duration_us: Distribution::new(DURATION_CEILING_US),
            max_memory_used_mb: Distribution::new(MEMORY_CEILING_MB),
        }
    }

    /// Bytes this function costs: the struct, its histograms' counts, and the
    /// throttle map's keys (a rough figure for the map's nodes).
    #[cfg(test)]
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<FunctionMetrics>()
            + self.duration_us.heap_bytes()
            + self.init_duration_us.heap_bytes()
            + self.max_memory_used_mb.heap_bytes()
            + self
                .counters
                .throttles
                .keys()
                .map(|k| k.capacity() + std::mem::size_of::<(String, u64)>())
                .sum::<usize>()
    }
}

/// The supervisor's metrics: counters and distributions per function.
///
/// Memory per function, measured by the `memory_per_function_is_small` test:
/// 6,632 bytes when first seen (each of its three histograms holds 256 counts of
/// 8 bytes); 34,280 bytes for a function whose invokes and cold starts take up to
/// a second and use up to 1 GB; at most 57,832 bytes, at the 900 s timeout and
/// 10 GB. The histograms grow with the largest value recorded, never with the
/// number of invokes, and a function costs nothing until its first event.
#[derive(Debug, Clone)]
pub struct Metrics {
    started: Instant,
    functions: BTreeMap<String, FunctionMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            started: Instant::now(),
            functions: BTreeMap::new(),
        }
    }

    /// One finished invoke of `function`.
    pub fn invoked(&mut self, function: &str, o: &Observation) {
        let f = self.function(function);
        f.counters.invocations += 1;
        if let Some(class) = o.error {
            f.counters.errors.add(class);
        }
        f.duration_us.record(micros(o.duration));
        f.max_memory_used_mb.record(o.max_memory_used_mb);
        if let Some(init) = o.init_duration {
            f.counters.cold_starts += 1;
            f.init_duration_us.record(micros(init));
        }
    }

    /// One invoke refused with TooManyRequestsException; `reason` is Lambda's
    /// reason code (see [`THROTTLE_REASONS`]).
    pub fn throttled(&mut self, function: &str, reason: &str) {
        let throttles = &mut self.function(function).counters.throttles;
        match throttles.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                throttles.insert(reason.to_owned(), 1);
            }
        }
    }

    /// An Event invoke of `function` was accepted: stored durably, so the caller
    /// got its 202 (Lambda's AsyncEventsReceived).
    pub fn event_received(&mut self, function: &str) {
        self.function(function).counters.async_events_received += 1;
    }

    /// An event of `function` failed for good (its retries exhausted, or older
    /// than its maximum event age) and is discarded without reaching a
    /// destination: it has no OnFailure destination, or the one it names cannot
    /// be sent a record, such as a function that does not exist (count that with
    /// [`Metrics::destination_failed`] too).
    ///
    /// Events discarded because their function was deleted are not worth
    /// counting: [`Metrics::forget`] erases the function's series with them, and
    /// a count made after it would bring the series of the deleted function back.
    pub fn event_dropped(&mut self, function: &str) {
        self.function(function).counters.async_events_dropped += 1;
    }

    /// An event of `function` failed for good and its failure record was sent to
    /// its OnFailure destination. A delivery that then fails is also counted by
    /// [`Metrics::destination_failed`].
    pub fn event_dead_lettered(&mut self, function: &str) {
        self.function(function).counters.async_events_dead_lettered += 1;
    }

    /// A record of an event of `function`, for its OnSuccess or its OnFailure
    /// destination, could not be delivered (Lambda's DestinationDeliveryFailures).
    pub fn destination_failed(&mut self, function: &str) {
        self.function(function)
            .counters
            .destination_delivery_failures += 1;
    }

    /// The function was deleted: forget its series. A function created again
    /// under the same name starts from zero, which Prometheus reads as a counter
    /// reset.
    pub fn forget(&mut self, function: &str) {
        self.functions.remove(function);
    }

    /// The snapshot, with the gauges the supervisor knows (passed in, not stored
    /// here). Pass gauges for every registered function: a function is listed if
    /// it has gauges or history, so one not invoked yet shows its counters at 0.
    pub fn snapshot(
        &self,
        gauges: &BTreeMap<String, FunctionGauges>,
        account: AccountGauges,
    ) -> Snapshot {
        let names: BTreeSet<&str> = self
            .functions
            .keys()
            .chain(gauges.keys())
            .map(String::as_str)
            .collect();
        let functions = names
            .into_iter()
            .map(|name| self.function_snapshot(name, gauges.get(name)))
            .collect();
        Snapshot {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            account,
            functions,
        }
    }

    fn function_snapshot(&self, name: &str, gauges: Option<&FunctionGauges>) -> FunctionSnapshot {
        let mut snapshot = match self.functions.get(name) {
            Some(f) => FunctionSnapshot {
                function_name: name.to_owned(),
                counters: f.counters.clone(),
                duration_ms: f.duration_us.summary(1e3),
                init_duration_ms: f.init_duration_us.summary(1e3),
                max_memory_used_mb: f.max_memory_used_mb.summary(1.0),
                gauges: FunctionGauges::default(),
            },
            None => FunctionSnapshot {
                function_name: name.to_owned(),
                ..FunctionSnapshot::default()
            },
        };
        for reason in THROTTLE_REASONS {
            if !snapshot.counters.throttles.contains_key(*reason) {
                snapshot.counters.throttles.insert((*reason).to_owned(), 0);
            }
        }
        snapshot.gauges = gauges.cloned().unwrap_or_default();
        snapshot
    }

    /// The function's state, created on its first event.
    fn function(&mut self, name: &str) -> &mut FunctionMetrics {
        // Look up by &str first: `entry` would allocate the name on every invoke.
        if !self.functions.contains_key(name) {
            self.functions
                .insert(name.to_owned(), FunctionMetrics::new());
        }
        self.functions.get_mut(name).expect("inserted above")
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The Prometheus text exposition format, version 0.0.4
/// (<https://prometheus.io/docs/instrumenting/exposition_formats/>), of a snapshot.
///
/// Names follow Prometheus' conventions
/// (<https://prometheus.io/docs/practices/naming/>): the `lambdalet_` prefix, base
/// units in the name (seconds, bytes; the JSON's milliseconds and MB are
/// converted), `_total` on counters and only on counters: the host's environment
/// count is the gauge `lambdalet_account_environments`, since
/// `lambdalet_environments_total` would read as a counter, and as a sample of the
/// `lambdalet_environments` family at that. Distributions are summaries whose
/// quantile 1 is the maximum. A family with no sample is left out, as Prometheus'
/// client libraries do, so every sample line follows its family's HELP and TYPE.
pub fn render_prometheus(s: &Snapshot) -> String {
    use Kind::{Counter, Gauge};
    let fs = &s.functions;
    let mut t = Text::default();

    t.family(
        "lambdalet_invocations_total",
        Counter,
        "Invokes that ran, successful or not; throttled invokes are not counted.",
        per_function(fs, |f| Some(Value::Int(f.counters.invocations))),
    );
    t.family(
        "lambdalet_errors_total",
        Counter,
        "Invokes that failed, by class: function (the handler raised or returned an error), \
         timeout, runtime (out of memory, the runtime exited, init failed).",
        per_function_by(fs, "class", |f| {
            ErrorClass::ALL.map(|class| (class.as_str(), f.counters.errors.get(class)))
        }),
    );
    t.family(
        "lambdalet_throttles_total",
        Counter,
        "Invokes refused with TooManyRequestsException, by Lambda's reason code.",
        fs.iter().flat_map(|f| {
            f.counters.throttles.iter().map(move |(reason, n)| Sample {
                suffix: "",
                labels: vec![
                    ("function", f.function_name.as_str()),
                    ("reason", reason.as_str()),
                ],
                value: Value::Int(*n),
            })
        }),
    );
    t.family(
        "lambdalet_cold_starts_total",
        Counter,
        "Invokes that initialised a new execution environment first.",
        per_function(fs, |f| Some(Value::Int(f.counters.cold_starts))),
    );
    t.family(
        "lambdalet_async_events_received_total",
        Counter,
        "Event invokes accepted and stored in the function's queue.",
        per_function(fs, |f| Some(Value::Int(f.counters.async_events_received))),
    );
    t.family(
        "lambdalet_async_events_dropped_total",
        Counter,
        "Events that failed for good (retries exhausted or too old) and reached no destination; \
         Lambda's AsyncEventsDropped is this plus lambdalet_async_events_dead_lettered_total.",
        per_function(fs, |f| Some(Value::Int(f.counters.async_events_dropped))),
    );
    t.family(
        "lambdalet_async_events_dead_lettered_total",
        Counter,
        "Events that failed for good and whose record was sent to their OnFailure destination.",
        per_function(fs, |f| {
            Some(Value::Int(f.counters.async_events_dead_lettered))
        }),
    );
    t.family(
        "lambdalet_async_destination_delivery_failures_total",
        Counter,
        "Event records that could not be delivered to their OnSuccess or OnFailure destination.",
        per_function(fs, |f| {
            Some(Value::Int(f.counters.destination_delivery_failures))
        }),
    );
    t.family(
        "lambdalet_concurrent_executions",
        Gauge,
        "The function's invokes running now.",
        per_function(fs, |f| Some(Value::Int(f.gauges.concurrent_executions))),
    );
    t.family(
        "lambdalet_environments",
        Gauge,
        "The function's execution environments, by state.",
        per_function_by(fs, "state", |f| {
            let g = &f.gauges;
            [
                ("idle", g.environments_idle),
                ("busy", g.environments_busy),
                ("starting", g.environments_starting),
            ]
        }),
    );
    t.family(
        "lambdalet_provisioned_concurrency_ready",
        Gauge,
        "Provisioned execution environments initialised and ready for an invoke.",
        per_function(fs, |f| Some(Value::Int(f.gauges.provisioned_ready))),
    );
    t.family(
        "lambdalet_provisioned_concurrency",
        Gauge,
        "Provisioned concurrency configured, for functions that have it.",
        per_function(fs, |f| {
            f.gauges
                .provisioned_concurrency
                .map(|n| Value::Int(n.into()))
        }),
    );
    t.family(
        "lambdalet_reserved_concurrency",
        Gauge,
        "Reserved concurrency, for functions that have it.",
        per_function(fs, |f| {
            f.gauges.reserved_concurrency.map(|n| Value::Int(n.into()))
        }),
    );
    t.family(
        "lambdalet_async_queue_depth",
        Gauge,
        "Events in the function's queue not finished yet: ready, in flight or retrying.",
        per_function(fs, |f| Some(Value::Int(f.gauges.queue_depth))),
    );
    t.family(
        "lambdalet_async_queue_events",
        Gauge,
        "Events in the function's queue, by state: ready (due, waiting for concurrency), \
         in_flight (being invoked), retrying (waiting for a retry's delay).",
        per_function_by(fs, "state", |f| {
            let g = &f.gauges;
            [
                ("ready", g.queue_ready),
                ("in_flight", g.queue_in_flight),
                ("retrying", g.queue_retrying),
            ]
        }),
    );
    t.family(
        "lambdalet_async_queue_oldest_age_seconds",
        Gauge,
        "Seconds since the oldest unfinished event in the function's queue was received; \
         0 with none.",
        per_function(fs, |f| {
            Some(Value::Float(f.gauges.queue_oldest_age_seconds))
        }),
    );
    t.family(
        "lambdalet_duration_seconds",
        Kind::Summary,
        "Invoke duration as the REPORT line's Duration, in seconds; quantile 1 is the maximum.",
        fs.iter()
            .flat_map(|f| summary_samples(&f.function_name, &f.duration_ms, ms_to_seconds)),
    );
    t.family(
        "lambdalet_init_duration_seconds",
        Kind::Summary,
        "Cold starts' Init Duration, in seconds; quantile 1 is the maximum.",
        fs.iter()
            .flat_map(|f| summary_samples(&f.function_name, &f.init_duration_ms, ms_to_seconds)),
    );
    t.family(
        "lambdalet_max_memory_used_bytes",
        Kind::Summary,
        "Invokes' Max Memory Used, in bytes (the REPORT line's whole MB, which are MiB); \
         quantile 1 is the maximum.",
        fs.iter()
            .flat_map(|f| summary_samples(&f.function_name, &f.max_memory_used_mb, mib_to_bytes)),
    );

    let a = &s.account;
    for (name, help, value) in [
        (
            "lambdalet_account_concurrency_limit",
            "The account's concurrent executions limit.",
            a.concurrency_limit,
        ),
        (
            "lambdalet_account_unreserved_concurrency",
            "The limit less every function's reserved concurrency.",
            a.unreserved_concurrency,
        ),
        (
            "lambdalet_account_concurrent_executions",
            "Invokes running now, all functions.",
            a.concurrent_executions,
        ),
        (
            "lambdalet_blank_environments",
            "Execution environments in the blank pool, not yet bound to a function.",
            a.blank_environments,
        ),
        (
            "lambdalet_node_blank_environments",
            "Of the blank pool, node blanks: a node process already started in each.",
            a.node_blank_environments,
        ),
        (
            "lambdalet_account_environments",
            "Every execution environment on the host, blank ones included.",
            a.environments,
        ),
    ] {
        t.family(name, Gauge, help, [Sample::unlabelled(Value::Int(value))]);
    }
    t.family(
        "lambdalet_uptime_seconds",
        Gauge,
        "Seconds since the supervisor started.",
        [Sample::unlabelled(Value::Float(s.uptime_seconds))],
    );
    t.out
}

/// Milliseconds to seconds through whole nanoseconds, so 50.175 ms prints as
/// 0.050175 rather than 0.050175000000000004 (the JSON's milliseconds come from
/// whole microseconds, so no precision is lost).
fn ms_to_seconds(ms: f64) -> f64 {
    (ms * 1e6).round() / 1e9
}

/// Lambda's MB are MiB (the REPORT line divides bytes by 1024 * 1024).
fn mib_to_bytes(mib: f64) -> f64 {
    mib * 1024.0 * 1024.0
}

/// The Prometheus metric types this text uses.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

/// A sample's value: counts print as integers, exactly, whatever their size.
#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

/// One sample line of a family: `<family><suffix>{labels} value`.
struct Sample<'a> {
    /// `_sum` or `_count` for a summary's totals, else empty.
    suffix: &'static str,
    labels: Vec<(&'static str, &'a str)>,
    value: Value,
}

impl Sample<'_> {
    fn unlabelled(value: Value) -> Sample<'static> {
        Sample {
            suffix: "",
            labels: Vec::new(),
            value,
        }
    }
}

/// One sample per function with a `function` label; `None` leaves a function out.
fn per_function<'a>(
    fs: &'a [FunctionSnapshot],
    value: impl Fn(&FunctionSnapshot) -> Option<Value> + 'a,
) -> impl Iterator<Item = Sample<'a>> + 'a {
    fs.iter().filter_map(move |f| {
        value(f).map(|value| Sample {
            suffix: "",
            labels: vec![("function", f.function_name.as_str())],
            value,
        })
    })
}

/// Per function, one sample for each of a fixed set of values of a second label
/// (`state`, `class`), every one shown, at 0 too, so a dashboard has the series
/// before the first event.
fn per_function_by<'a, const N: usize>(
    fs: &'a [FunctionSnapshot],
    label: &'static str,
    values: impl Fn(&FunctionSnapshot) -> [(&'static str, u64); N] + 'a,
) -> impl Iterator<Item = Sample<'a>> + 'a {
    fs.iter().flat_map(move |f| {
        values(f)
            .into_iter()
            .map(move |(value_of_label, n)| Sample {
                suffix: "",
                labels: vec![
                    ("function", f.function_name.as_str()),
                    (label, value_of_label),
                ],
                value: Value::Int(n),
            })
    })
}

/// A function's summary: its quantiles, `_sum` and `_count`, in base units.
fn summary_samples<'a>(
    function: &'a str,
    s: &Summary,
    to_base_unit: fn(f64) -> f64,
) -> Vec<Sample<'a>> {
    let mut samples: Vec<Sample<'a>> = s
        .quantiles()
        .into_iter()
        .map(|(quantile, v)| Sample {
            suffix: "",
            labels: vec![("function", function), ("quantile", quantile)],
            value: Value::Float(if s.count == 0 {
                f64::NAN
            } else {
                to_base_unit(v)
            }),
        })
        .collect();
    samples.push(Sample {
        suffix: "_sum",
        labels: vec![("function", function)],
        value: Value::Float(to_base_unit(s.sum)),
    });
    samples.push(Sample {
        suffix: "_count",
        labels: vec![("function", function)],
        value: Value::Int(s.count),
    });
    samples
}

/// The text being built, one family at a time.
#[derive(Default)]
struct Text {
    out: String,
}

impl Text {
    fn family<'a>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = Sample<'a>>,
    ) {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return;
        }
        self.line(format_args!("# HELP {name} {}", escape_help(help)));
        self.line(format_args!("# TYPE {name} {}", kind.as_str()));
        for sample in samples {
            let mut series = format!("{name}{}", sample.suffix);
            if !sample.labels.is_empty() {
                series.push('{');
                for (i, (label, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        series.push(',');
                    }
                    series.push_str(&format!("{label}=\"{}\"", escape_label_value(value)));
                }
                series.push('}');
            }
            self.line(format_args!("{series} {}", format_value(sample.value)));
        }
    }

    fn line(&mut self, args: std::fmt::Arguments) {
        self.out
            .write_fmt(args)
            .expect("writing to a String never fails");
        self.out.push('\n');
    }
}

/// Label values escape backslash, double quote and line feed (exposition format 0.0.4).
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed only (exposition format 0.0.4).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go's float syntax, which Prometheus parses: `NaN`, `+Inf`, `-Inf`, and Rust's
/// shortest round-trip decimal otherwise.
fn format_value(v: Value) -> String {
    match v {
        Value::Int(n) => n.to_string(),
        Value::Float(x) if x.is_nan() => "NaN".to_owned(),
        Value::Float(x) if x == f64::INFINITY => "+Inf".to_owned(),
        Value::Float(x) if x == f64::NEG_INFINITY => "-Inf".to_owned(),
        Value::Float(x) => x.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use openmetrics_parser::prometheus::parse_prometheus;
    use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};

    use super::*;

    type Exposition = MetricsExposition<PrometheusType, PrometheusValue>;

    const RESERVED: &str = "ReservedFunctionConcurrentInvocationLimitExceeded";
    const ACCOUNT: &str = "ConcurrentInvocationLimitExceeded";

    fn ok(ms: u64) -> Observation {
        Observation {
            duration: Duration::from_millis(ms),
            max_memory_used_mb: 40,
            error: None,
            init_duration: None,
        }
    }

    fn snapshot(m: &Metrics) -> Snapshot {
        m.snapshot(&BTreeMap::new(), AccountGauges::default())
    }

    fn function<'a>(s: &'a Snapshot, name: &str) -> &'a FunctionSnapshot {
        s.functions
            .iter()
            .find(|f| f.function_name == name)
            .unwrap_or_else(|| panic!("{name} is not in the snapshot"))
    }

    /// Within the histogram's precision: 2 significant figures are within 1%.
    fn assert_near(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= expected * 0.01,
            "{actual} is not within 1% of {expected}"
        );
    }

    /// Parses with a strict parser of the text format (it rejects a malformed
    /// line, a family split in two, a sample whose name does not fit its family's
    /// type), then checks that every family has HELP and TYPE: the parser makes a
    /// family without them an untyped one with empty help.
    fn parse(text: &str) -> Exposition {
        let e = parse_prometheus(text).unwrap_or_else(|err| panic!("{err}\n{text}"));
        for (name, family) in &e.families {
            assert!(!family.help.is_empty(), "{name} has no HELP\n{text}");
            assert_ne!(
                family.family_type,
                PrometheusType::Unknown,
                "{name} has no TYPE"
            );
            assert!(name.starts_with("lambdalet_"), "{name}");
        }
        e
    }

    /// The one sample of `family` with exactly these labels.
    fn sample<'a>(e: &'a Exposition, family: &str, labels: &[(&str, &str)]) -> &'a PrometheusValue {
        let f = e
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"));
        let found: Vec<_> = f
            .iter_samples()
            .filter(|s| {
                let set = s.get_labelset().expect("labels fit the family");
                set.iter().count() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| set.get_label_value(k) == Some(v))
            })
            .map(|s| &s.value)
            .collect();
        assert_eq!(found.len(), 1, "{family}{labels:?}");
        found[0]
    }

    fn number(v: &PrometheusValue) -> f64 {
        match v {
            PrometheusValue::Counter(c) => c.value.as_f64(),
            PrometheusValue::Gauge(n) => n.as_f64(),
            other => panic!("not a counter or gauge: {other:?}"),
        }
    }

    /// A summary's (quantiles by label, sum, count).
    fn summary(v: &PrometheusValue) -> (BTreeMap<String, f64>, f64, u64) {
        let PrometheusValue::Summary(s) = v else {
            panic!("not a summary: {v:?}")
        };
        let quantiles = s
            .quantiles
            .iter()
            .map(|q| (q.quantile.to_string(), q.value.as_f64()))
            .collect();
        (
            quantiles,
            s.sum.expect("a summary has _sum").as_f64(),
            s.count.expect("a summary has _count"),
        )
    }

    #[test]
    fn counters_and_percentiles_after_known_observations() {
        let mut m = Metrics::new();
        for ms in 1..=100u64 {
            m.invoked(
                "f",
                &Observation {
                    duration: Duration::from_millis(ms),
                    max_memory_used_mb: ms + 100,
                    error: match ms % 10 {
                        0 => Some(ErrorClass::Function),
                        5 => Some(ErrorClass::Timeout),
                        _ if ms == 99 => Some(ErrorClass::Runtime),
                        _ => None,
                    },
                    // The first ten are cold starts of 10, 20, ... 100 ms.
                    init_duration: (ms <= 10).then(|| Duration::from_millis(ms * 10)),
                },
            );
        }
        let s = snapshot(&m);
        let f = function(&s, "f");
        let c = &f.counters;
        assert_eq!(c.invocations, 100);
        assert_eq!(c.cold_starts, 10);
        assert_eq!(
            c.errors,
            ErrorCounts {
                total: 21,
                function: 10,
                timeout: 10,
                runtime: 1
            }
        );

        let d = f.duration_ms;
        assert_eq!(d.count, 100);
        assert_eq!(d.sum, 5050.0, "the sum is exact");
        assert_eq!(d.max, 100.0, "the maximum is exact");
        assert_near(d.p50, 50.0);
        assert_near(d.p90, 90.0);
        assert_near(d.p99, 99.0);
        assert!(d.p50 <= d.p90 && d.p90 <= d.p99 && d.p99 <= d.max, "{d:?}");

        let i = f.init_duration_ms;
        assert_eq!((i.count, i.sum, i.max), (10, 550.0, 100.0));
        assert_near(i.p50, 50.0);

        // Memory figures up to 200 MB are below the histogram's first 256
        // values, which it keeps exactly.
        let mem = f.max_memory_used_mb;
        assert_eq!((mem.count, mem.sum, mem.max), (100, 15050.0, 200.0));
        assert_eq!((mem.p50, mem.p99), (150.0, 199.0));
    }

    #[test]
    fn sub_millisecond_durations_keep_their_microseconds() {
        let mut m = Metrics::new();
        m.invoked(
            "f",
            &Observation {
                duration: Duration::from_micros(250),
                ..ok(0)
            },
        );
        let d = function(&snapshot(&m), "f").duration_ms;
        assert_eq!((d.p50, d.max, d.sum), (0.25, 0.25, 0.25));
    }

    #[test]
    fn one_observation_is_every_quantile_exactly() {
        let mut m = Metrics::new();
        m.invoked(
            "f",
            &Observation {
                duration: Duration::from_micros(12_500),
                ..ok(0)
            },
        );
        // The histogram alone answers its bucket's highest value.
        let histogram = &m.functions["f"].duration_us.histogram;
        assert_eq!(histogram.value_at_quantile(0.5), 12_543);
        let d = function(&snapshot(&m), "f").duration_ms;
        assert_eq!((d.p50, d.p90, d.p99, d.max), (12.5, 12.5, 12.5, 12.5));
    }

    #[test]
    fn a_duration_past_the_ceiling_is_clamped_in_the_histogram_only() {
        let mut m = Metrics::new();
        m.invoked("f", &ok(10));
        m.invoked("f", &ok(2 * 3600 * 1000));
        let f = &m.functions["f"];
        assert_eq!(
            f.duration_us.histogram.max(),
            f.duration_us
                .histogram
                .highest_equivalent(DURATION_CEILING_US)
        );
        let d = function(&snapshot(&m), "f").duration_ms;
        assert_eq!(d.max, 7_200_000.0, "the exact maximum still sees it");
        assert_eq!(d.sum, 7_200_010.0);
        assert_near(d.p99, DURATION_CEILING_US as f64 / 1e3);
        assert_near(d.p50, 10.0);
    }

    #[test]
    fn throttles_count_by_reason_and_are_not_invocations() {
        let mut m = Metrics::new();
        m.invoked("f", &ok(1));
        m.throttled("f", RESERVED);
        m.throttled("f", RESERVED);
        m.throttled("f", ACCOUNT);
        m.throttled("g", ACCOUNT);
        m.throttled("g", "SomeFutureReason");
        let s = snapshot(&m);

        let f = &function(&s, "f").counters;
        assert_eq!(f.invocations, 1);
        assert_eq!(f.throttles[RESERVED], 2);
        assert_eq!(f.throttles[ACCOUNT], 1);

        let g = &function(&s, "g").counters;
        assert_eq!(g.invocations, 0);
        assert_eq!(g.errors.total, 0);
        assert_eq!(g.throttles[ACCOUNT], 1);
        assert_eq!(g.throttles[RESERVED], 0, "known reasons are shown at 0");
        assert_eq!(g.throttles["SomeFutureReason"], 1);
        assert_eq!(g.throttles.len(), 3);
        assert_eq!(function(&s, "g").duration_ms, Summary::default());
    }

    #[test]
    fn forget_drops_the_series_and_a_new_function_starts_from_zero() {
        let mut m = Metrics::new();
        m.invoked("f", &ok(5));
        m.throttled("f", ACCOUNT);
        m.invoked("g", &ok(5));
        m.forget("f");
        m.forget("never-seen");

        let s = snapshot(&m);
        let names: Vec<_> = s
            .functions
            .iter()
            .map(|f| f.function_name.as_str())
            .collect();
        assert_eq!(names, ["g"]);
        assert!(!render_prometheus(&s).contains("function=\"f\""));

        m.invoked("f", &ok(7));
        let f = function(&snapshot(&m), "f").clone();
        assert_eq!(f.counters.invocations, 1);
        assert_eq!(f.counters.throttles[ACCOUNT], 0);
        assert_eq!((f.duration_ms.count, f.duration_ms.max), (1, 7.0));
    }

    #[test]
    fn async_events_count_per_function_and_are_forgotten_with_it() {
        let mut m = Metrics::new();
        for _ in 0..3 {
            m.event_received("f");
        }
        m.event_dropped("f");
        m.event_dead_lettered("f");
        m.destination_failed("f");
        m.destination_failed("f");
        m.event_received("g");
        m.invoked("h", &ok(1));

        // `f` and `g` only ever got events: no invoke, no gauges passed in.
        let s = snapshot(&m);
        let names: Vec<_> = s
            .functions
            .iter()
            .map(|f| f.function_name.as_str())
            .collect();
        assert_eq!(names, ["f", "g", "h"]);
        assert_eq!(counts_of(&s, "f"), (3, 1, 1, 2));
        assert_eq!(counts_of(&s, "g"), (1, 0, 0, 0));
        assert_eq!(counts_of(&s, "h"), (0, 0, 0, 0));
        assert_eq!(function(&s, "f").counters.invocations, 0);
        assert_eq!(
            function(&s, "f").counters.throttles[ACCOUNT],
            0,
            "an event-only function shows every counter"
        );
        let e = parse(&render_prometheus(&s));
        let received = |name| {
            number(sample(
                &e,
                "lambdalet_async_events_received_total",
                &[("function", name)],
            ))
        };
        assert_eq!((received("f"), received("g")), (3.0, 1.0));
        assert_eq!(
            number(sample(
                &e,
                "lambdalet_invocations_total",
                &[("function", "g")]
            )),
            0.0
        );

        m.forget("f");
        let s = snapshot(&m);
        assert!(s.functions.iter().all(|f| f.function_name != "f"));
        assert!(!render_prometheus(&s).contains("function=\"f\""));
        m.event_received("f");
        assert_eq!(counts_of(&snapshot(&m), "f"), (1, 0, 0, 0));
    }

    /// A function's async counters: (received, dropped, dead-lettered, delivery
    /// failures).
    fn counts_of(s: &Snapshot, name: &str) -> (u64, u64, u64, u64) {
        let c = &function(s, name).counters;
        (
            c.async_events_received,
            c.async_events_dropped,
            c.async_events_dead_lettered,
            c.destination_delivery_failures,
        )
    }

    #[test]
    fn snapshot_lists_gauged_and_invoked_functions_sorted_with_their_gauges() {
        let mut m = Metrics::new();
        m.invoked("zeta", &ok(1));
        m.invoked("alpha", &ok(1));
        let gauges = BTreeMap::from([(
            "mid".to_owned(),
            FunctionGauges {
                concurrent_executions: 2,
                reserved_concurrency: Some(5),
                ..FunctionGauges::default()
            },
        )]);
        let account = AccountGauges {
            concurrency_limit: 1000,
            ..AccountGauges::default()
        };
        let s = m.snapshot(&gauges, account.clone());
        let names: Vec<_> = s
            .functions
            .iter()
            .map(|f| f.function_name.as_str())
            .collect();
        assert_eq!(names, ["alpha", "mid", "zeta"]);
        assert_eq!(function(&s, "mid").gauges, gauges["mid"]);
        assert_eq!(function(&s, "mid").counters.invocations, 0);
        assert_eq!(function(&s, "alpha").gauges, FunctionGauges::default());
        assert_eq!(s.account, account);
        assert!(s.uptime_seconds >= 0.0);
    }

    /// Two functions as `lambdalet metrics` shows them: `a` invoked, with a
    /// reservation, provisioned concurrency and queued events, `b` never invoked.
    fn two_functions() -> Snapshot {
        let mut m = Metrics::new();
        m.invoked(
            "a",
            &Observation {
                duration: Duration::from_micros(12_500),
                max_memory_used_mb: 41,
                error: None,
                init_duration: Some(Duration::from_micros(180_250)),
            },
        );
        m.invoked(
            "a",
            &Observation {
                duration: Duration::from_millis(3_000),
                max_memory_used_mb: 45,
                error: Some(ErrorClass::Timeout),
                init_duration: None,
            },
        );
        m.throttled("a", RESERVED);
        for _ in 0..5 {
            m.event_received("a");
        }
        m.event_dropped("a");
        m.event_dead_lettered("a");
        m.event_dead_lettered("a");
        m.destination_failed("a");
        let gauges = BTreeMap::from([
            (
                "a".to_owned(),
                FunctionGauges {
                    concurrent_executions: 1,
                    environments_idle: 1,
                    environments_busy: 1,
                    environments_starting: 0,
                    provisioned_ready: 1,
                    reserved_concurrency: Some(2),
                    provisioned_concurrency: Some(1),
                    queue_depth: 2,
                    queue_ready: 0,
                    queue_in_flight: 1,
                    queue_retrying: 1,
                    queue_oldest_age_seconds: 62.25,
                },
            ),
            ("b".to_owned(), FunctionGauges::default()),
        ]);
        let mut s = m.snapshot(
            &gauges,
            AccountGauges {
                concurrency_limit: 1000,
                unreserved_concurrency: 998,
                concurrent_executions: 1,
                blank_environments: 4,
                node_blank_environments: 1,
                environments: 6,
            },
        );
        s.uptime_seconds = 42.5;
        s
    }

    #[test]
    fn rendering_parses_and_carries_the_snapshot() {
        let text = render_prometheus(&two_functions());
        println!("{text}");
        let e = parse(&text);
        let v = |family: &str, labels: &[(&str, &str)]| number(sample(&e, family, labels));

        assert_eq!(v("lambdalet_invocations_total", &[("function", "a")]), 2.0);
        assert_eq!(v("lambdalet_cold_starts_total", &[("function", "a")]), 1.0);
        let errors = |f, class| {
            v(
                "lambdalet_errors_total",
                &[("function", f), ("class", class)],
            )
        };
        assert_eq!(errors("a", "timeout"), 1.0);
        assert_eq!(errors("a", "function"), 0.0);
        let throttles = |f, r| {
            v(
                "lambdalet_throttles_total",
                &[("function", f), ("reason", r)],
            )
        };
        assert_eq!(throttles("a", RESERVED), 1.0);
        assert_eq!(throttles("a", ACCOUNT), 0.0);

        assert_eq!(
            v("lambdalet_concurrent_executions", &[("function", "a")]),
            1.0
        );
        let env = |state| {
            v(
                "lambdalet_environments",
                &[("function", "a"), ("state", state)],
            )
        };
        assert_eq!((env("idle"), env("busy"), env("starting")), (1.0, 1.0, 0.0));
        assert_eq!(
            v(
                "lambdalet_provisioned_concurrency_ready",
                &[("function", "a")]
            ),
            1.0
        );
        assert_eq!(
            v("lambdalet_provisioned_concurrency", &[("function", "a")]),
            1.0
        );
        assert_eq!(
            v("lambdalet_reserved_concurrency", &[("function", "a")]),
            2.0
        );

        let a = [("function", "a")];
        for (family, n) in [
            ("lambdalet_async_events_received_total", 5.0),
            ("lambdalet_async_events_dropped_total", 1.0),
            ("lambdalet_async_events_dead_lettered_total", 2.0),
            ("lambdalet_async_destination_delivery_failures_total", 1.0),
            ("lambdalet_async_queue_depth", 2.0),
            ("lambdalet_async_queue_oldest_age_seconds", 62.25),
        ] {
            assert_eq!(v(family, &a), n, "{family}");
        }
        let queued = |state| {
            v(
                "lambdalet_async_queue_events",
                &[("function", "a"), ("state", state)],
            )
        };
        assert_eq!(
            (queued("ready"), queued("in_flight"), queued("retrying")),
            (0.0, 1.0, 1.0)
        );
        assert_eq!(
            e.families["lambdalet_async_queue_events"]
                .iter_samples()
                .count(),
            6,
            "three states for each of `a` and `b`"
        );

        for family in [
            "lambdalet_reserved_concurrency",
            "lambdalet_provisioned_concurrency",
        ] {
            assert_eq!(
                e.families[family].iter_samples().count(),
                1,
                "only `a` has one"
            );
        }

        // Durations in seconds, memory in bytes; quantile 1 is the exact maximum.
        let (q, sum, count) = summary(sample(
            &e,
            "lambdalet_duration_seconds",
            &[("function", "a")],
        ));
        assert_eq!((q["1"], sum, count), (3.0, 3.0125, 2));
        assert_near(q["0.5"], 0.0125);
        let (q, sum, count) = summary(sample(
            &e,
            "lambdalet_init_duration_seconds",
            &[("function", "a")],
        ));
        assert_eq!(
            (q["0.5"], q["1"], sum, count),
            (0.18025, 0.18025, 0.18025, 1)
        );
        let (q, sum, count) = summary(sample(
            &e,
            "lambdalet_max_memory_used_bytes",
            &[("function", "a")],
        ));
        let mib = 1024.0 * 1024.0;
        assert_eq!(
            (q["0.5"], q["1"], sum, count),
            (41.0 * mib, 45.0 * mib, 86.0 * mib, 2)
        );

        let account = |family| v(family, &[]);
        assert_eq!(account("lambdalet_account_concurrency_limit"), 1000.0);
        assert_eq!(account("lambdalet_account_unreserved_concurrency"), 998.0);
        assert_eq!(account("lambdalet_account_concurrent_executions"), 1.0);
        assert_eq!(account("lambdalet_blank_environments"), 4.0);
        assert_eq!(account("lambdalet_account_environments"), 6.0);
        assert_eq!(account("lambdalet_uptime_seconds"), 42.5);

        // Names by convention: only counters end in _total, units in the name.
        for (name, family) in &e.families {
            let counter = family.family_type == PrometheusType::Counter;
            assert_eq!(name.ends_with("_total"), counter, "{name}");
        }
    }

    #[test]
    fn a_function_never_invoked_shows_its_counters_at_zero() {
        let e = parse(&render_prometheus(&two_functions()));
        let b = [("function", "b")];
        for family in [
            "lambdalet_invocations_total",
            "lambdalet_cold_starts_total",
            "lambdalet_async_events_received_total",
            "lambdalet_async_events_dropped_total",
            "lambdalet_async_events_dead_lettered_total",
            "lambdalet_async_destination_delivery_failures_total",
            "lambdalet_async_queue_depth",
            "lambdalet_async_queue_oldest_age_seconds",
        ] {
            assert_eq!(number(sample(&e, family, &b)), 0.0, "{family}");
        }
        for state in ["ready", "in_flight", "retrying"] {
            let labels = [("function", "b"), ("state", state)];
            assert_eq!(
                number(sample(&e, "lambdalet_async_queue_events", &labels)),
                0.0
            );
        }
        for class in ErrorClass::ALL {
            let labels = [("function", "b"), ("class", class.as_str())];
            assert_eq!(number(sample(&e, "lambdalet_errors_total", &labels)), 0.0);
        }
        for reason in THROTTLE_REASONS {
            let labels = [("function", "b"), ("reason", *reason)];
            assert_eq!(
                number(sample(&e, "lambdalet_throttles_total", &labels)),
                0.0
            );
        }
        // No observation: quantiles are NaN, _sum and _count 0.
        let (q, sum, count) = summary(sample(&e, "lambdalet_duration_seconds", &b));
        assert!(q.values().all(|v| v.is_nan()), "{q:?}");
        assert_eq!((sum, count), (0.0, 0));
        assert!(e.families["lambdalet_reserved_concurrency"]
            .iter_samples()
            .all(|s| s.get_labelset().unwrap().get_label_value("function") != Some("b")));
    }

    #[test]
    fn no_functions_renders_the_account_only() {
        let s = Metrics::new().snapshot(&BTreeMap::new(), AccountGauges::default());
        let e = parse(&render_prometheus(&s));
        let mut names: Vec<_> = e.families.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "lambdalet_account_concurrency_limit",
                "lambdalet_account_concurrent_executions",
                "lambdalet_account_environments",
                "lambdalet_account_unreserved_concurrency",
                "lambdalet_blank_environments",
                "lambdalet_node_blank_environments",
                "lambdalet_uptime_seconds",
            ]
        );
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        // Function names are [A-Za-z0-9_-]; the renderer does not rely on it.
        let hostile = "a\"b\\c\nd} e=\"f\",g";
        let mut m = Metrics::new();
        m.invoked(hostile, &ok(3));
        m.throttled(hostile, "reason \"quoted\"\n");
        let text = render_prometheus(&snapshot(&m));
        assert!(
            text.contains(r#"lambdalet_invocations_total{function="a\"b\\c\nd} e=\"f\",g"} 1"#),
            "{text}"
        );
        assert_eq!(text.lines().count(), text.matches('\n').count());
        let e = parse(&text);
        assert_eq!(
            number(sample(
                &e,
                "lambdalet_invocations_total",
                &[("function", hostile)]
            )),
            1.0
        );
        let labels = [("function", hostile), ("reason", "reason \"quoted\"\n")];
        assert_eq!(
            number(sample(&e, "lambdalet_throttles_total", &labels)),
            1.0
        );
    }

    #[test]
    fn help_text_is_escaped() {
        assert_eq!(escape_help("a\\b\nc \"d\""), "a\\\\b\\nc \"d\"");
        assert_eq!(format_value(Value::Float(f64::INFINITY)), "+Inf");
        assert_eq!(format_value(Value::Float(f64::NEG_INFINITY)), "-Inf");
        assert_eq!(format_value(Value::Float(0.050175)), "0.050175");
        assert_eq!(format_value(Value::Int(u64::MAX)), "18446744073709551615");
    }

    #[test]
    fn seconds_print_without_float_noise() {
        let mut m = Metrics::new();
        m.invoked(
            "f",
            &Observation {
                duration: Duration::from_micros(50_175),
                ..ok(0)
            },
        );
        let s = snapshot(&m);
        assert_eq!(function(&s, "f").duration_ms.max, 50.175);
        let text = render_prometheus(&s);
        assert!(
            text.contains("lambdalet_duration_seconds{function=\"f\",quantile=\"1\"} 0.050175\n"),
            "{text}"
        );
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let s = two_functions();
        let json = serde_json::to_string(&s).unwrap();
        for key in [
            "\"UptimeSeconds\"",
            "\"Account\"",
            "\"ConcurrencyLimit\"",
            "\"FunctionName\":\"a\"",
            "\"DurationMs\"",
            "\"InitDurationMs\"",
            "\"MaxMemoryUsedMb\"",
            "\"P99\"",
            "\"ColdStarts\"",
            "\"ReservedConcurrency\":2",
            "\"AsyncEventsReceived\":5",
            "\"AsyncEventsDropped\":1",
            "\"AsyncEventsDeadLettered\":2",
            "\"DestinationDeliveryFailures\":1",
            "\"QueueDepth\":2",
            "\"QueueReady\":0",
            "\"QueueInFlight\":1",
            "\"QueueRetrying\":1",
            "\"QueueOldestAgeSeconds\":62.25",
        ] {
            assert!(json.contains(key), "{key} in {json}");
        }
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(render_prometheus(&back), render_prometheus(&s));
    }

    #[test]
    fn json_from_a_peer_without_newer_fields_still_reads() {
        // A CLI one field behind or ahead of its supervisor: missing fields are
        // their defaults.
        let s: Snapshot = serde_json::from_str(
            r#"{"Account":{"ConcurrencyLimit":10},"Functions":[{"FunctionName":"f","Gauges":{}}]}"#,
        )
        .unwrap();
        assert_eq!(s.account.concurrency_limit, 10);
        assert_eq!(s.functions[0].gauges, FunctionGauges::default());
        assert_eq!(s.functions[0].counters.invocations, 0);

        // The shape before the event queue: no async counters, no queue gauges.
        let s: Snapshot = serde_json::from_str(
            r#"{"Functions":[{"FunctionName":"f",
                "Counters":{"Invocations":3,"Throttles":{},"ColdStarts":1},
                "Gauges":{"ConcurrentExecutions":2,"EnvironmentsIdle":1}}]}"#,
        )
        .unwrap();
        let f = &s.functions[0];
        assert_eq!((f.counters.invocations, f.counters.cold_starts), (3, 1));
        assert_eq!(f.counters.async_events_received, 0);
        assert_eq!(f.counters.destination_delivery_failures, 0);
        assert_eq!(f.gauges.concurrent_executions, 2);
        assert_eq!(
            (f.gauges.queue_depth, f.gauges.queue_oldest_age_seconds),
            (0, 0.0)
        );
    }

    #[test]
    fn memory_per_function_is_small() {
        let fresh = FunctionMetrics::new().size_bytes();

        // Invokes and cold starts up to a second, up to 1 GB.
        let mut m = Metrics::new();
        for ms in [1, 10, 100, 1000] {
            m.invoked(
                "f",
                &Observation {
                    duration: Duration::from_millis(ms),
                    max_memory_used_mb: 1024,
                    error: None,
                    init_duration: Some(Duration::from_millis(ms)),
                },
            );
        }
        let typical = m.functions["f"].size_bytes();

        // The largest: the 900 s timeout, 10 GB, and a value past both ceilings.
        for factor in [1, 2] {
            m.invoked(
                "f",
                &Observation {
                    duration: Duration::from_secs(900 * factor),
                    max_memory_used_mb: 10_240 * factor,
                    error: None,
                    init_duration: Some(Duration::from_secs(900 * factor)),
                },
            );
        }
        let largest = m.functions["f"].size_bytes();

        println!("bytes per function: fresh {fresh}, typical {typical}, largest {largest}");
        // The figures in the doc comment of `Metrics` (the struct's own size
        // may vary a little with the toolchain).
        assert!((6_000..=7_000).contains(&fresh), "{fresh}");
        assert!((33_000..=35_000).contains(&typical), "{typical}");
        assert!((56_000..=59_000).contains(&largest), "{largest}");
    }
}
