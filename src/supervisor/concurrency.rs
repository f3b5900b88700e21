//! Concurrency: whether an invocation may run now (the account's limit and a
//! function's reserved concurrency, DESIGN.md § Invocations) and whether new
//! reserved or provisioned settings fit the account.
//!
//! Lambda's model: concurrency is the number of invocations in flight, not the
//! number of environments. A function with reserved concurrency R runs at most
//! R at once and those R are kept from everyone else; every other function
//! shares the rest (the unreserved pool), of which at least
//! [`UNRESERVED_MIN`] must stay. Past a limit the invoke is throttled with
//! `TooManyRequestsException` and Lambda's reason code.

use std::cell::Cell;
use std::rc::Rc;

use crate::protocol::{ErrorKind, WireError};

/// `serve --max-concurrency`'s default: Lambda's default account limit.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 1000;
/// Lambda keeps this much of the account's concurrency unreserved.
pub const UNRESERVED_MIN: u32 = 100;

/// A count of invocations in flight, shared between the supervisor and the
/// [`Slot`]s that hold it.
#[derive(Debug, Clone, Default)]
pub struct Counter(Rc<Cell<u32>>);

impl Counter {
    pub fn get(&self) -> u32 {
        self.0.get()
    }
    fn add(&self) {
        self.0.set(self.0.get() + 1);
    }
    fn sub(&self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// An admitted invocation's place in the counts. It is held by the
/// invocation and given back when the invocation is dropped, whichever path
/// ends it (answered, timed out, its function deleted, its client gone), so
/// the counts cannot drift.
#[derive(Debug)]
pub struct Slot {
    /// The function's, the account's, and the unreserved pool's when the
    /// function has no reservation (no allocation per invoke).
    counters: [Option<Counter>; 3],
}

impl Drop for Slot {
    fn drop(&mut self) {
        for c in self.counters.iter().flatten() {
            c.sub();
        }
    }
}

/// Why an invoke was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// The function's reserved concurrency is in use (or is 0).
    Reserved,
    /// The unreserved pool shared by functions without reservation is in use.
    Account,
}

impl Throttle {
    /// Lambda's reason code.
    pub fn reason(self) -> &'static str {
        match self {
            Throttle::Reserved => "ReservedFunctionConcurrentInvocationLimitExceeded",
            Throttle::Account => "ConcurrentInvocationLimitExceeded",
        }
    }
}

impl From<Throttle> for WireError {
    fn from(t: Throttle) -> WireError {
        let mut err = WireError::new(ErrorKind::TooManyRequestsException, "Rate Exceeded.");
        err.reason = Some(t.reason().to_string());
        err
    }
}

/// The account's limit and counts.
#[derive(Debug)]
pub struct Account {
    max: u32,
    /// Every invocation in flight.
    all: Counter,
    /// Invocations of functions without reserved concurrency.
    unreserved: Counter,
    /// The sum of every function's reserved concurrency.
    reserved_total: u32,
}

impl Account {
    pub fn new(max: u32) -> Account {
        Account {
            max,
            all: Counter::default(),
            unreserved: Counter::default(),
            reserved_total: 0,
        }
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// Invocations in flight, account-wide.
    pub fn in_flight(&self) -> u32 {
        self.all.get()
    }

    /// The concurrency functions without reservation share.
    pub fn unreserved_limit(&self) -> u32 {
        self.max.saturating_sub(self.reserved_total)
    }

    /// Set after any function's reserved concurrency changed.
    pub fn set_reserved_total(&mut self, total: u32) {
        self.reserved_total = total;
    }

    /// Admit one invocation of a function whose in-flight count is
    /// `function` and whose reserved concurrency is `reserved`.
    pub fn admit(&self, function: &Counter, reserved: Option<u32>) -> Result<Slot, Throttle> {
        let pool = match reserved {
            Some(r) if function.get() >= r => return Err(Throttle::Reserved),
            Some(_) => None,
            None if self.unreserved.get() >= self.unreserved_limit() => {
                return Err(Throttle::Account)
            }
            None => Some(self.unreserved.clone()),
        };
        let counters = [Some(function.clone()), Some(self.all.clone()), pool];
        for c in counters.iter().flatten() {
            c.add();
        }
        Ok(Slot { counters })
    }

    /// Whether `function` may reserve `requested`, given what the other
    /// functions reserve and what it has provisioned (Lambda's rules: the
    /// unreserved pool keeps at least [`UNRESERVED_MIN`]; a reservation
    /// cannot be below the provisioned concurrency).
    pub fn check_reserved(
        &self,
        requested: u32,
        reserved_by_others: u32,
        provisioned: Option<u32>,
    ) -> Result<(), WireError> {
        let unreserved = i64::from(self.max) - i64::from(reserved_by_others) - i64::from(requested);
        if unreserved < i64::from(UNRESERVED_MIN) {
            return Err(WireError::invalid(format!(
                "Specified ReservedConcurrentExecutions for function decreases account's \
                 UnreservedConcurrentExecution below its minimum value of [{UNRESERVED_MIN}]: \
                 the account's limit is {} (serve --max-concurrency) and other functions \
                 reserve {reserved_by_others}, so at most {} can be reserved here",
                self.max,
                (i64::from(self.max) - i64::from(reserved_by_others) - i64::from(UNRESERVED_MIN))
                    .max(0)
            )));
        }
        if let Some(p) = provisioned.filter(|&p| requested < p) {
            return Err(WireError::invalid(format!(
                "ReservedConcurrentExecutions ({requested}) cannot be less than the function's \
                 provisioned concurrency ({p}): lower or delete the provisioned concurrency \
                 config first"
            )));
        }
        Ok(())
    }

    /// Whether `function` may have `requested` provisioned environments.
    /// With reserved concurrency they come out of it; without, out of the
    /// unreserved pool, which keeps at least [`UNRESERVED_MIN`] besides what
    /// other unreserved functions have provisioned.
    pub fn check_provisioned(
        &self,
        requested: u32,
        reserved: Option<u32>,
        provisioned_unreserved_others: u32,
    ) -> Result<(), WireError> {
        if requested == 0 {
            return Err(WireError::invalid(
                "ProvisionedConcurrentExecutions must be at least 1 (to remove the \
                 configuration, delete it)",
            ));
        }
        match reserved {
            Some(r) if requested > r => Err(WireError::invalid(format!(
                "Requested Provisioned Concurrency ({requested}) should not be greater than the \
                 reservedConcurrentExecution ({r}) for the function"
            ))),
            Some(_) => Ok(()),
            None => {
                let room = i64::from(self.unreserved_limit())
                    - i64::from(UNRESERVED_MIN)
                    - i64::from(provisioned_unreserved_others);
                if i64::from(requested) > room {
                    Err(WireError::invalid(format!(
                        "Requested Provisioned Concurrency ({requested}) exceeds the account's \
                         unreserved concurrency: {} unreserved (serve --max-concurrency minus \
                         reservations), {UNRESERVED_MIN} of which must stay free, and \
                         {provisioned_unreserved_others} already provisioned by other functions \
                         leave {}",
                        self.unreserved_limit(),
                        room.max(0)
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_concurrency_caps_the_function_and_slots_give_back() {
        let account = Account::new(1000);
        let f = Counter::default();
        let a = account.admit(&f, Some(2)).unwrap();
        let b = account.admit(&f, Some(2)).unwrap();
        assert_eq!(account.admit(&f, Some(2)).unwrap_err(), Throttle::Reserved);
        assert_eq!(f.get(), 2);
        assert_eq!(account.in_flight(), 2);
        drop(a);
        assert_eq!(f.get(), 1);
        let _c = account.admit(&f, Some(2)).unwrap();
        drop(b);
        assert_eq!(account.in_flight(), 1);
    }

    #[test]
    fn reserved_zero_throttles_everything() {
        let account = Account::new(1000);
        let f = Counter::default();
        let err = account.admit(&f, Some(0)).unwrap_err();
        assert_eq!(
            err.reason(),
            "ReservedFunctionConcurrentInvocationLimitExceeded"
        );
        let wire = WireError::from(err);
        assert_eq!(wire.kind, ErrorKind::TooManyRequestsException);
        assert_eq!(
            wire.reason.as_deref(),
            Some("ReservedFunctionConcurrentInvocationLimitExceeded")
        );
    }

    #[test]
    fn unreserved_functions_share_what_reservations_leave() {
        let mut account = Account::new(5);
        let (f, g, r) = (Counter::default(), Counter::default(), Counter::default());
        account.set_reserved_total(2);
        assert_eq!(account.unreserved_limit(), 3);
        let held: Vec<Slot> = (0..2)
            .map(|_| account.admit(&f, None).unwrap())
            .chain([account.admit(&g, None).unwrap()])
            .collect();
        assert_eq!(account.admit(&g, None).unwrap_err(), Throttle::Account);
        // The reserved function still has its own two.
        let _r1 = account.admit(&r, Some(2)).unwrap();
        let _r2 = account.admit(&r, Some(2)).unwrap();
        assert_eq!(account.in_flight(), 5);
        drop(held);
        assert!(account.admit(&g, None).is_ok());
    }

    #[test]
    fn reservations_keep_a_hundred_unreserved() {
        let account = Account::new(1000);
        assert!(account.check_reserved(900, 0, None).is_ok());
        let err = account.check_reserved(901, 0, None).unwrap_err();
        assert!(err.message.contains("at most 900"), "{}", err.message);
        assert!(account.check_reserved(400, 500, None).is_ok());
        assert!(account.check_reserved(401, 500, None).is_err());
        // Below the provisioned concurrency is refused.
        assert!(account.check_reserved(3, 0, Some(4)).is_err());
        assert!(account.check_reserved(4, 0, Some(4)).is_ok());
        // A small account cannot reserve at all.
        let small = Account::new(50);
        assert!(small.check_reserved(1, 0, None).is_err());
    }

    #[test]
    fn provisioned_fits_the_reservation_or_the_unreserved_pool() {
        let mut account = Account::new(1000);
        assert!(account.check_provisioned(0, None, 0).is_err());
        assert!(account.check_provisioned(3, Some(3), 0).is_ok());
        assert!(account.check_provisioned(4, Some(3), 0).is_err());
        assert!(account.check_provisioned(900, None, 0).is_ok());
        assert!(account.check_provisioned(901, None, 0).is_err());
        account.set_reserved_total(100);
        assert!(account.check_provisioned(700, None, 100).is_ok());
        assert!(account.check_provisioned(701, None, 100).is_err());
    }
}
