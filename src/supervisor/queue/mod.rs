//! Asynchronous (`Event`) invocations: the durable store ([`store`]), the
//! invocation records sent to destinations ([`record`]), and the in-memory
//! state of every unfinished event ([`Queue`]).
//!
//! Lifecycle of an event (every transition is one method here; the store is
//! told about the ones that must survive a crash):
//!
//! ```text
//! accepted (stored, fsynced) ──▶ Ready ──pop_ready──▶ InFlight ──▶ finished (removed)
//!                                  ▲                     │
//!                                  └──── Retrying ◀──────┘ function error (delay, stored)
//!                                        (due)             throttle / supervisor error (backoff)
//! ```
//!
//! Times are Unix milliseconds, since they are stored and must mean the same
//! after a restart. The queue's clock runs `scale` times Lambda's (retry
//! delays, backoff, maximum age), so tests can run Lambda's minutes in
//! seconds.

pub mod record;
pub mod store;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use store::EventMeta;

/// Lambda's delays before the first and the second retry after a function
/// error or timeout.
pub const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(120)];
/// After a throttle or a supervisor-side error the event waits this long,
/// doubled on each further one, up to [`BACKOFF_MAX`] (Lambda: "up to 5
/// minutes between attempts").
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for a concurrency slot or an environment.
    Ready,
    /// Running (or handed to the scheduler).
    InFlight,
    /// Waiting out a retry delay or a backoff.
    Retrying,
}

#[derive(Debug)]
struct Entry {
    meta: EventMeta,
    state: State,
    /// The next backoff after a throttle or supervisor-side error.
    backoff: Duration,
    /// Retrying because of a backoff, not a retry delay: a change of the
    /// limits may end it early ([`Queue::end_backoffs`]).
    backing_off: bool,
}

#[derive(Debug, Default)]
struct FunctionQueue {
    ready: VecDeque<u64>,
    in_flight: usize,
    retrying: usize,
    /// (accepted, seq) of every unfinished event: the oldest is first.
    by_age: BTreeSet<(u64, u64)>,
}

/// A function's queue in numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub ready: u64,
    pub in_flight: u64,
    pub retrying: u64,
    pub oldest_age: Duration,
}

impl Stats {
    pub fn depth(&self) -> u64 {
        self.ready + self.in_flight + self.retrying
    }
}

/// Every unfinished event, by sequence number, and each function's FIFO of
/// ready ones.
#[derive(Debug)]
pub struct Queue {
    scale: f64,
    events: HashMap<u64, Entry>,
    functions: BTreeMap<String, FunctionQueue>,
    /// (due, seq) of the events waiting out a delay; stale pairs (the event
    /// finished or was delayed again) are skipped when they come up.
    delayed: BinaryHeap<Reverse<(u64, u64)>>,
    next_seq: u64,
    /// Which function the next dispatch round starts with.
    turn: usize,
}

impl Queue {
    /// `next_seq`: the first sequence number not used in the store.
    pub fn new(scale: f64, next_seq: u64) -> Queue {
        Queue {
            scale,
            events: HashMap::new(),
            functions: BTreeMap::new(),
            delayed: BinaryHeap::new(),
            next_seq,
            turn: 0,
        }
    }

    /// The sequence number of the next event (store order = FIFO order).
    pub fn allocate_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The last sequence number handed out (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// A stored event: ready, or retrying until its `not_before`.
    pub fn insert(&mut self, meta: EventMeta, now_ms: u64) {
        let seq = meta.seq;
        let q = self.functions.entry(meta.function.clone()).or_default();
        q.by_age.insert((meta.accepted_unix_ms, seq));
        let state = if meta.not_before_unix_ms > now_ms {
            q.retrying += 1;
            self.delayed.push(Reverse((meta.not_before_unix_ms, seq)));
            State::Retrying
        } else {
            q.ready.push_back(seq);
            State::Ready
        };
        self.events.insert(
            seq,
            Entry {
                meta,
                state,
                backoff: BACKOFF_FIRST,
                backing_off: false,
            },
        );
    }

    pub fn get(&self, seq: u64) -> Option<&EventMeta> {
        self.events.get(&seq).map(|e| &e.meta)
    }

    #[cfg(test)]
    pub fn state(&self, seq: u64) -> Option<State> {
        self.events.get(&seq).map(|e| e.state)
    }

    /// Retrying events whose time has come become ready (at the back of
    /// their function's queue).
    pub fn promote_due(&mut self, now_ms: u64) {
        while let Some(&Reverse((due, seq))) = self.delayed.peek() {
            if due > now_ms {
                break;
            }
            self.delayed.pop();
            let Some(e) = self.events.get_mut(&seq) else {
                continue;
            };
            if e.state != State::Retrying || e.meta.not_before_unix_ms != due {
                continue; // stale
            }
            make_ready(&mut self.functions, seq, e);
        }
    }

    /// When the next retrying event is due.
    pub fn next_due(&self) -> Option<u64> {
        self.delayed.peek().map(|Reverse((due, _))| *due)
    }

    /// Functions with ready events, starting with a different one each call
    /// so that no function is always served first.
    pub fn functions_with_ready(&mut self) -> Vec<String> {
        let mut names: Vec<String> = self
            .functions
            .iter()
            .filter(|(_, q)| !q.ready.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        if !names.is_empty() {
            self.turn = self.turn.wrapping_add(1);
            let n = names.len();
            names.rotate_left(self.turn % n);
        }
        names
    }

    /// Functions with unfinished events that are ready or in flight: the
    /// ones sharing the concurrency given to events.
    pub fn active_functions(&self) -> usize {
        self.functions
            .values()
            .filter(|q| !q.ready.is_empty() || q.in_flight > 0)
            .count()
    }

    pub fn in_flight(&self, function: &str) -> usize {
        self.functions.get(function).map_or(0, |q| q.in_flight)
    }

    /// The oldest ready event of `function`, now in flight.
    pub fn pop_ready(&mut self, function: &str) -> Option<EventMeta> {
        let q = self.functions.get_mut(function)?;
        let seq = q.ready.pop_front()?;
        q.in_flight += 1;
        let e = self.events.get_mut(&seq).expect("a ready event exists");
        e.state = State::InFlight;
        Some(e.meta.clone())
    }

    /// An in-flight event failed with a function error: it waits until
    /// `due` with `attempts` recorded.
    pub fn retry_at(&mut self, seq: u64, attempts: u32, due_ms: u64) {
        if let Some(e) = self.events.get_mut(&seq) {
            e.meta.attempts = attempts;
            e.backing_off = false;
            self.delay(seq, due_ms);
        }
    }

    /// The limits changed (a reservation was lifted or raised): every event
    /// backing off after a throttle is ready again at once, its backoff
    /// reset. Retry delays after function errors are kept. Returns how many.
    pub fn end_backoffs(&mut self) -> usize {
        let mut woken = 0;
        for (&seq, e) in self.events.iter_mut() {
            if e.state != State::Retrying || !e.backing_off {
                continue;
            }
            e.backoff = BACKOFF_FIRST;
            make_ready(&mut self.functions, seq, e);
            woken += 1;
        }
        // Their heap entries are stale now: promote_due skips them.
        woken
    }

    /// A ready or in-flight event was throttled or hit a supervisor-side
    /// error: it waits its backoff, which doubles. Returns when it is due.
    pub fn back_off(&mut self, seq: u64, now_ms: u64) -> Option<u64> {
        let scale = self.scale;
        let e = self.events.get_mut(&seq)?;
        let wait = scaled_ms(scale, e.backoff);
        e.backoff = (e.backoff * 2).min(BACKOFF_MAX);
        e.backing_off = true;
        let due = now_ms + wait;
        self.delay(seq, due);
        Some(due)
    }

    /// The retry delay after the `attempts`-th failed attempt (1-based).
    pub fn retry_delay_ms(&self, attempts: u32) -> u64 {
        let i = (attempts.max(1) as usize - 1).min(RETRY_DELAYS.len() - 1);
        self.scale_ms(RETRY_DELAYS[i])
    }

    /// Whether an event accepted at `accepted_ms` is past `max_age_s` (on
    /// this queue's clock).
    pub fn too_old(&self, accepted_ms: u64, max_age_s: u32, now_ms: u64) -> bool {
        now_ms.saturating_sub(accepted_ms) > self.scale_ms(Duration::from_secs(max_age_s.into()))
    }

    fn scale_ms(&self, d: Duration) -> u64 {
        scaled_ms(self.scale, d)
    }

    fn delay(&mut self, seq: u64, due_ms: u64) {
        let Some(e) = self.events.get_mut(&seq) else {
            return;
        };
        let q = self
            .functions
            .get_mut(&e.meta.function)
            .expect("an event's function has a queue");
        match e.state {
            State::Ready => q.ready.retain(|&s| s != seq),
            State::InFlight => q.in_flight -= 1,
            State::Retrying => q.retrying -= 1,
        }
        q.retrying += 1;
        e.state = State::Retrying;
        e.meta.not_before_unix_ms = due_ms;
        self.delayed.push(Reverse((due_ms, seq)));
    }

    /// The event is finished (delivered, sent to a destination or dropped).
    pub fn remove(&mut self, seq: u64) -> Option<EventMeta> {
        let e = self.events.remove(&seq)?;
        if let Some(q) = self.functions.get_mut(&e.meta.function) {
            match e.state {
                State::Ready => q.ready.retain(|&s| s != seq),
                State::InFlight => q.in_flight -= 1,
                State::Retrying => q.retrying -= 1,
            }
            q.by_age.remove(&(e.meta.accepted_unix_ms, seq));
            if q.by_age.is_empty() {
                self.functions.remove(&e.meta.function);
            }
        }
        Some(e.meta)
    }

    /// Every unfinished event of `function` (it was deleted), removed.
    pub fn remove_function(&mut self, function: &str) -> Vec<u64> {
        let Some(q) = self.functions.remove(function) else {
            return Vec::new();
        };
        let seqs: Vec<u64> = q.by_age.into_iter().map(|(_, seq)| seq).collect();
        for seq in &seqs {
            self.events.remove(seq);
        }
        seqs
    }

    /// Ready and retrying events older than their function's maximum age
    /// (`max_age_s` of a function; None: the function is gone, skip).
    pub fn expired(&self, now_ms: u64, max_age_s: impl Fn(&str) -> Option<u32>) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .events
            .iter()
            .filter(|(_, e)| e.state != State::InFlight)
            .filter(|(_, e)| {
                max_age_s(&e.meta.function)
                    .is_some_and(|age| self.too_old(e.meta.accepted_unix_ms, age, now_ms))
            })
            .map(|(&seq, _)| seq)
            .collect();
        out.sort_unstable();
        out
    }

    /// Functions that have unfinished events.
    pub fn functions(&self) -> impl Iterator<Item = &str> {
        self.functions.keys().map(String::as_str)
    }

    pub fn stats(&self, function: &str, now_ms: u64) -> Stats {
        let Some(q) = self.functions.get(function) else {
            return Stats::default();
        };
        let oldest = q.by_age.first().map_or(now_ms, |&(at, _)| at);
        Stats {
            ready: q.ready.len() as u64,
            in_flight: q.in_flight as u64,
            retrying: q.retrying as u64,
            oldest_age: Duration::from_millis(now_ms.saturating_sub(oldest)),
        }
    }

    /// Unfinished events in all.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.events.len()
    }
}

/// A retrying event `seq` becomes ready, at the back of its function's
/// queue.
fn make_ready(functions: &mut BTreeMap<String, FunctionQueue>, seq: u64, e: &mut Entry) {
    e.state = State::Ready;
    e.backing_off = false;
    let q = functions
        .get_mut(&e.meta.function)
        .expect("an event's function has a queue");
    q.retrying -= 1;
    q.ready.push_back(seq);
}

/// `d` times `scale`, in whole milliseconds (at least 1).
fn scaled_ms(scale: f64, d: Duration) -> u64 {
    (d.mul_f64(scale).as_millis() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: u64, function: &str, accepted: u64) -> EventMeta {
        EventMeta {
            seq,
            function: function.into(),
            request_id: format!("r{seq}"),
            accepted_unix_ms: accepted,
            attempts: 0,
            not_before_unix_ms: 0,
        }
    }

    #[test]
    fn events_run_in_order_and_finish() {
        let mut q = Queue::new(1.0, 1);
        for _ in 0..3 {
            let seq = q.allocate_seq();
            q.insert(meta(seq, "f", 10), 10);
        }
        assert_eq!(q.pop_ready("f").unwrap().seq, 1);
        assert_eq!(q.pop_ready("f").unwrap().seq, 2);
        let s = q.stats("f", 1_010);
        assert_eq!((s.ready, s.in_flight, s.retrying, s.depth()), (1, 2, 0, 3));
        assert_eq!(s.oldest_age, Duration::from_secs(1));
        q.remove(1);
        q.remove(2);
        q.remove(3);
        assert_eq!(q.len(), 0);
        assert_eq!(q.functions().count(), 0, "an empty function is forgotten");
    }

    #[test]
    fn a_retry_waits_its_scaled_delay() {
        let mut q = Queue::new(0.01, 1);
        q.insert(meta(1, "f", 0), 0);
        q.pop_ready("f").unwrap();
        assert_eq!(q.retry_delay_ms(1), 600);
        assert_eq!(q.retry_delay_ms(2), 1_200);
        q.retry_at(1, 1, 600);
        assert_eq!(q.state(1), Some(State::Retrying));
        assert_eq!(q.next_due(), Some(600));
        q.promote_due(599);
        assert!(q.pop_ready("f").is_none());
        q.promote_due(600);
        let m = q.pop_ready("f").unwrap();
        assert_eq!(m.attempts, 1);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut q = Queue::new(1.0, 1);
        q.insert(meta(1, "f", 0), 0);
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            q.pop_ready("f");
            let due = q.back_off(1, now).unwrap();
            waits.push(due - now);
            now = due;
            q.promote_due(now);
        }
        assert_eq!(&waits[..4], &[1_000, 2_000, 4_000, 8_000]);
        assert_eq!(*waits.last().unwrap(), 300_000);
    }

    #[test]
    fn lifting_a_throttle_ends_backoffs_but_not_retry_delays() {
        let mut q = Queue::new(1.0, 1);
        q.insert(meta(1, "f", 0), 0);
        q.insert(meta(2, "f", 0), 0);
        q.pop_ready("f");
        q.back_off(1, 0);
        q.back_off(1, 0); // its backoff has grown
        q.pop_ready("f");
        q.retry_at(2, 1, 60_000);
        assert_eq!(q.end_backoffs(), 1);
        assert_eq!(q.state(1), Some(State::Ready));
        assert_eq!(q.state(2), Some(State::Retrying));
        // Its backoff starts again from the first step, and the stale
        // heap entry does not move it.
        q.pop_ready("f");
        assert_eq!(q.back_off(1, 10), Some(1_010));
        q.promote_due(2_500);
        assert_eq!(q.state(1), Some(State::Ready));
        assert_eq!(q.stats("f", 0).retrying, 1);
    }

    #[test]
    fn stale_delays_are_skipped() {
        let mut q = Queue::new(1.0, 1);
        q.insert(meta(1, "f", 0), 0);
        q.back_off(1, 0); // due 1000
        q.promote_due(1_000);
        q.pop_ready("f");
        q.back_off(1, 1_000); // due 3000
        q.promote_due(2_000);
        assert_eq!(q.state(1), Some(State::Retrying));
        q.promote_due(3_000);
        assert_eq!(q.state(1), Some(State::Ready));
    }

    #[test]
    fn loaded_events_keep_their_delay() {
        let mut q = Queue::new(1.0, 9);
        let mut m = meta(3, "f", 0);
        m.not_before_unix_ms = 5_000;
        q.insert(m, 1_000);
        assert_eq!(q.stats("f", 1_000).retrying, 1);
        assert_eq!(q.allocate_seq(), 9);
    }

    #[test]
    fn rounds_start_with_a_different_function() {
        let mut q = Queue::new(1.0, 1);
        for (seq, f) in [(1, "a"), (2, "b"), (3, "c")] {
            q.insert(meta(seq, f, 0), 0);
        }
        let firsts: std::collections::BTreeSet<String> = (0..3)
            .map(|_| q.functions_with_ready()[0].clone())
            .collect();
        assert_eq!(firsts.len(), 3);
    }

    #[test]
    fn expiry_uses_the_scaled_age_and_skips_in_flight() {
        let mut q = Queue::new(0.01, 1);
        q.insert(meta(1, "f", 0), 0);
        q.insert(meta(2, "f", 0), 0);
        q.insert(meta(3, "gone", 0), 0);
        q.pop_ready("f"); // 1 in flight
        let age = |f: &str| (f == "f").then_some(60);
        assert!(q.expired(600, age).is_empty());
        assert_eq!(q.expired(601, age), vec![2]);
    }

    #[test]
    fn deleting_a_function_drops_its_events() {
        let mut q = Queue::new(1.0, 1);
        q.insert(meta(1, "f", 0), 0);
        q.insert(meta(2, "g", 0), 0);
        q.pop_ready("f");
        assert_eq!(q.remove_function("f"), vec![1]);
        assert!(q.remove(1).is_none(), "its in-flight end finds nothing");
        assert_eq!(q.len(), 1);
        assert_eq!(q.active_functions(), 1);
    }
}
