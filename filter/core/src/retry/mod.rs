//! Retries: how long a retry waits ([`backoff`]) and whether a route may retry at all
//! ([`budget`]).
//!
//! Groundwork, not yet wired into the filter: an upstream-mode filter will hold retry attempt
//! `n ≥ 2` for [`backoff::Backoff::delay`] of retry `n − 1`, and refuse it when the route's
//! shared [`budget::Record`] is spent. Both are pure functions of their inputs (time, the
//! failure ratio and random draws are arguments), as the rest of this crate is.

pub mod backoff;
pub mod budget;
