//! The breaker's pure steps, one worker at a time, with exact time boundaries.
//! Policy (see `common::policy`): 3 failures open, 10 s open, 2 probe successes close,
//! 2 probe slots, 5 s probe leases, 60 s failure reset.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{at, policy, Breaker, S};
use marty_resilience_core::breaker::{
    self, retry_after_secs, Decision, Outcome, Record, State, Ticket, Transition,
};
use marty_resilience_core::config::BreakerPolicy;
use marty_resilience_core::retry::backoff::Strategy;

/// A breaker opened by three failures at `t0`; returns it with `open_until`.
fn opened_at(t0: u64) -> (Breaker, u64) {
    let mut b = Breaker::new(policy());
    for _ in 0..3 {
        b.request(t0, Outcome::Failure);
    }
    assert_eq!(b.rec.state, State::Open);
    let until = b.rec.open_until_ns;
    (b, until)
}

fn probe_of(ticket: Ticket) -> (usize, u64) {
    ticket.probe.expect("a HALF_OPEN admission is a probe")
}

// ---------------------------------------------------------------- CLOSED

#[test]
fn closed_admits_with_its_generation_and_writes_nothing() {
    let rec = Record::default();
    let step = breaker::admit(&rec, &policy(), at(5 * S));
    assert_eq!(
        step.result,
        Decision::Allow(Ticket {
            generation: 0,
            probe: None
        })
    );
    assert_eq!(step.write, None);
    assert_eq!(step.transition, None);
}

#[test]
fn opens_after_threshold_consecutive_failures() {
    let mut b = Breaker::new(policy());
    // Two failures: counted, still CLOSED.
    assert_eq!(b.request(S, Outcome::Failure), None);
    assert_eq!(b.request(2 * S, Outcome::Failure), None);
    assert_eq!(b.rec.state, State::Closed);
    assert_eq!(b.rec.consecutive_failures, 2);
    assert_eq!(b.rec.last_failure_ns, 2 * S);
    // The third opens it, for recovery_timeout from now.
    assert_eq!(b.request(3 * S, Outcome::Failure), Some(Transition::Opened));
    assert_eq!(b.rec.state, State::Open);
    assert_eq!(b.rec.generation, 1);
    assert_eq!(b.rec.trips, 1);
    assert_eq!(b.rec.open_until_ns, 13 * S);
    assert_eq!(b.rec.changed_at_ns, 3 * S);
    assert_eq!(b.rec.changed_at_unix_ms, at(3 * S).unix_ms);
    assert!(b.rec.probes.is_empty());
}

#[test]
fn threshold_of_one_opens_on_the_first_failure() {
    let mut b = Breaker::new(BreakerPolicy {
        failure_threshold: 1,
        ..policy()
    });
    assert_eq!(b.request(0, Outcome::Failure), Some(Transition::Opened));
}

#[test]
fn a_success_resets_the_failure_streak() {
    let mut b = Breaker::new(policy());
    b.request(S, Outcome::Failure);
    b.request(2 * S, Outcome::Failure);
    // A success in between: the streak starts over.
    let ticket = b.allow(3 * S);
    assert_eq!(b.record(3 * S, ticket, Outcome::Success), (None, true));
    assert_eq!(b.rec.consecutive_failures, 0);
    b.request(4 * S, Outcome::Failure);
    b.request(5 * S, Outcome::Failure);
    assert_eq!(
        b.rec.state,
        State::Closed,
        "only two failures since the success"
    );
    assert_eq!(b.request(6 * S, Outcome::Failure), Some(Transition::Opened));
}

#[test]
fn a_success_with_no_streak_writes_nothing() {
    let mut b = Breaker::new(policy());
    let ticket = b.allow(S);
    assert_eq!(b.record(S, ticket, Outcome::Success), (None, false));
}

#[test]
fn an_ignored_outcome_in_closed_neither_counts_nor_resets() {
    let mut b = Breaker::new(policy());
    b.request(S, Outcome::Failure);
    b.request(2 * S, Outcome::Failure);
    let ticket = b.allow(3 * S);
    assert_eq!(b.record(3 * S, ticket, Outcome::Ignored), (None, false));
    assert_eq!(b.rec.consecutive_failures, 2);
    assert_eq!(b.request(4 * S, Outcome::Failure), Some(Transition::Opened));
}

#[test]
fn a_failure_one_ns_before_failure_reset_timeout_still_extends_the_streak() {
    let mut b = Breaker::new(policy());
    b.request(0, Outcome::Failure);
    b.request(10 * S, Outcome::Failure);
    // 60 s - 1 ns after the last failure: the streak still counts.
    assert_eq!(
        b.request(70 * S - 1, Outcome::Failure),
        Some(Transition::Opened)
    );
}

#[test]
fn a_failure_exactly_failure_reset_timeout_after_the_last_one_starts_a_new_streak() {
    let mut b = Breaker::new(policy());
    b.request(0, Outcome::Failure);
    b.request(10 * S, Outcome::Failure);
    // Exactly 60 s after the last failure: the old two no longer count.
    assert_eq!(b.request(70 * S, Outcome::Failure), None);
    assert_eq!(b.rec.state, State::Closed);
    assert_eq!(b.rec.consecutive_failures, 1);
    assert_eq!(b.rec.last_failure_ns, 70 * S);
}

#[test]
fn the_reset_window_is_measured_from_the_latest_failure_of_the_streak() {
    // The expiry is measured from the most recent failure, so a streak whose failures are
    // each less than failure_reset_timeout apart keeps counting even when its first failure
    // is older than that.
    let mut b = Breaker::new(policy());
    b.request(0, Outcome::Failure);
    b.request(50 * S, Outcome::Failure);
    assert_eq!(
        b.request(100 * S, Outcome::Failure),
        Some(Transition::Opened)
    );
}

#[test]
fn a_failure_reported_with_an_earlier_clock_than_the_last_one_is_not_expired() {
    // Workers capture `now` before their CAS loop; a slightly older clock must not underflow.
    let mut b = Breaker::new(policy());
    b.request(100 * S, Outcome::Failure);
    b.request(100 * S, Outcome::Failure);
    assert_eq!(
        b.request(99 * S, Outcome::Failure),
        Some(Transition::Opened)
    );
}

// ---------------------------------------------------------------- OPEN

#[test]
fn open_rejects_until_recovery_timeout_with_exact_retry_after() {
    let (mut b, until) = opened_at(S);
    assert_eq!(until, 11 * S);
    // Right after opening: the whole recovery time remains.
    assert_eq!(b.reject(S), (State::Open, 10 * S));
    assert_eq!(b.reject(7 * S), (State::Open, 4 * S));
    // t - 1 ns stays OPEN, with 1 ns to wait.
    assert_eq!(b.reject(until - 1), (State::Open, 1));
    assert_eq!(b.rec.state, State::Open);
    assert_eq!(b.rec.remaining_open_ns(until - 1), 1);
    assert_eq!(b.rec.remaining_open_ns(until), 0);
}

#[test]
fn outcomes_in_open_change_nothing() {
    let mut b = Breaker::new(policy());
    let early = b.allow(0);
    for _ in 0..3 {
        b.request(0, Outcome::Failure);
    }
    let before = b.rec.clone();
    // A request admitted while CLOSED reports after the breaker opened: stale generation.
    assert_eq!(b.record(S, early, Outcome::Failure), (None, false));
    // A forged ticket of the current generation is no probe: nothing to learn in OPEN.
    let forged = Ticket {
        generation: b.rec.generation,
        probe: None,
    };
    assert_eq!(b.record(S, forged, Outcome::Failure), (None, false));
    assert_eq!(b.rec, before);
}

#[test]
fn the_first_request_at_open_until_half_opens_and_is_a_probe() {
    let (mut b, until) = opened_at(0);
    let (decision, transition) = b.admit(until);
    assert_eq!(transition, Some(Transition::HalfOpened));
    let Decision::Allow(ticket) = decision else {
        panic!("expected a probe, got {decision:?}");
    };
    assert_eq!(b.rec.state, State::HalfOpen);
    assert_eq!(b.rec.generation, 2);
    assert_eq!(ticket.generation, 2);
    // Slot 0, leased for half_open_probe_timeout; the other slot is free.
    assert_eq!(ticket.probe, Some((0, until + 5 * S)));
    assert_eq!(b.rec.probes, vec![until + 5 * S, 0]);
    assert_eq!(b.rec.half_open_successes, 0);
    assert_eq!(b.rec.changed_at_ns, until);
    assert_eq!(b.rec.probes_in_flight(until), 1);
}

// ---------------------------------------------------------------- HALF_OPEN

#[test]
fn half_open_grants_exactly_half_open_max_requests_probe_slots() {
    let (mut b, until) = opened_at(0);
    let first = b.allow(until);
    let second = b.allow(until + S);
    assert_eq!(probe_of(first), (0, until + 5 * S));
    assert_eq!(probe_of(second), (1, until + 6 * S));
    assert_eq!(b.rec.probes_in_flight(until + S), 2);
    // Both slots are taken: the next request waits for the earliest lease to run out.
    assert_eq!(b.reject(until + 2 * S), (State::HalfOpen, 3 * S));
    assert_eq!(b.reject(until + 5 * S - 1), (State::HalfOpen, 1));
}

#[test]
fn probe_successes_close_the_breaker_at_half_open_success_threshold() {
    let (mut b, until) = opened_at(0);
    let first = b.allow(until);
    let second = b.allow(until);
    // First success: counted, slot freed, still HALF_OPEN.
    assert_eq!(b.record(until + 1, first, Outcome::Success), (None, true));
    assert_eq!(b.rec.state, State::HalfOpen);
    assert_eq!(b.rec.half_open_successes, 1);
    // Two probes taken at the same instant hold distinct leases.
    assert_eq!(b.rec.probes, vec![0, until + 5 * S + 1]);
    // Second success: CLOSED, with a clean slate.
    assert_eq!(
        b.record(until + 2, second, Outcome::Success).0,
        Some(Transition::Closed)
    );
    assert_eq!(b.rec.state, State::Closed);
    assert_eq!(b.rec.generation, 3);
    assert_eq!(b.rec.consecutive_failures, 0);
    assert_eq!(b.rec.half_open_successes, 0);
    assert_eq!(b.rec.trips, 0);
    assert_eq!(b.rec.open_until_ns, 0);
    assert!(b.rec.probes.is_empty());
    assert_eq!(b.rec.changed_at_ns, until + 2);
    // And CLOSED counts from zero again: three new failures to reopen.
    b.request(until + 3, Outcome::Failure);
    b.request(until + 4, Outcome::Failure);
    assert_eq!(
        b.request(until + 5, Outcome::Failure),
        Some(Transition::Opened)
    );
}

#[test]
fn a_probe_failure_reopens_for_a_fresh_recovery_timeout() {
    let (mut b, until) = opened_at(0);
    let first = b.allow(until);
    let second = b.allow(until);
    // One probe fails: OPEN again at once, for recovery_timeout from the failure.
    assert_eq!(
        b.record(until + S, first, Outcome::Failure).0,
        Some(Transition::Opened)
    );
    assert_eq!(b.rec.state, State::Open);
    assert_eq!(b.rec.generation, 3);
    assert_eq!(b.rec.trips, 2, "second trip since the breaker last closed");
    assert_eq!(b.rec.open_until_ns, until + 11 * S);
    assert_eq!(b.rec.last_failure_ns, until + S);
    assert!(b.rec.probes.is_empty());
    // The other probe's success belongs to the old generation: ignored.
    assert_eq!(
        b.record(until + 2 * S, second, Outcome::Success),
        (None, false)
    );
    assert_eq!(b.reject(until + 11 * S - 1), (State::Open, 1));
}

#[test]
fn a_success_after_a_failed_half_open_must_start_again_from_zero() {
    let (mut b, until) = opened_at(0);
    let p = b.allow(until);
    b.record(until, p, Outcome::Success);
    assert_eq!(b.rec.half_open_successes, 1);
    let p = b.allow(until);
    b.record(until, p, Outcome::Failure);
    // Second HALF_OPEN: the success of the first one does not carry over.
    let again = b.rec.open_until_ns;
    let p = b.allow(again);
    assert_eq!(b.rec.half_open_successes, 0);
    assert_eq!(b.record(again, p, Outcome::Success).0, None);
    assert_eq!(b.rec.state, State::HalfOpen);
}

#[test]
fn a_slot_freed_by_a_success_is_granted_again() {
    let mut b = Breaker::new(BreakerPolicy {
        half_open_success_threshold: 3,
        ..policy()
    });
    for _ in 0..3 {
        b.request(0, Outcome::Failure);
    }
    let until = b.rec.open_until_ns;
    let first = b.allow(until);
    let _second = b.allow(until);
    b.reject(until);
    b.record(until + 1, first, Outcome::Success);
    // Slot 0 is free again, with a new lease.
    let third = b.allow(until + 2);
    assert_eq!(probe_of(third), (0, until + 2 + 5 * S));
}

#[test]
fn an_ignored_probe_outcome_frees_its_slot_without_counting() {
    let (mut b, until) = opened_at(0);
    let first = b.allow(until);
    let _second = b.allow(until);
    assert_eq!(b.record(until + 1, first, Outcome::Ignored), (None, true));
    assert_eq!(b.rec.state, State::HalfOpen);
    assert_eq!(b.rec.half_open_successes, 0);
    assert_eq!(b.rec.probes, vec![0, until + 5 * S + 1]);
    assert_eq!(probe_of(b.allow(until + 2)).0, 0);
}

#[test]
fn an_expired_lease_frees_its_slot_so_a_stuck_probe_cannot_wedge_half_open() {
    let mut b = Breaker::new(BreakerPolicy {
        half_open_max_requests: 1,
        ..policy()
    });
    for _ in 0..3 {
        b.request(0, Outcome::Failure);
    }
    let until = b.rec.open_until_ns;
    // A probe that will never report.
    let stuck = b.allow(until);
    let lease = probe_of(stuck).1;
    assert_eq!(lease, until + 5 * S);
    // Lease - 1 ns: still held.
    assert_eq!(b.reject(lease - 1), (State::HalfOpen, 1));
    assert_eq!(b.rec.probes_in_flight(lease - 1), 1);
    // At the lease deadline the slot is free again.
    assert_eq!(b.rec.probes_in_flight(lease), 0);
    let next = b.allow(lease);
    assert_eq!(probe_of(next), (0, lease + 5 * S));
    assert_eq!(b.rec.state, State::HalfOpen);
}

#[test]
fn a_lease_is_never_zero_because_zero_marks_a_free_slot() {
    // Only reachable with a zero probe timeout at time zero, which configuration refuses;
    // the rule holds anyway.
    let policy = BreakerPolicy {
        half_open_probe_timeout: 0,
        ..policy()
    };
    let open = Record {
        state: State::Open,
        generation: 1,
        open_until_ns: 0,
        ..Record::default()
    };
    let step = breaker::admit(&open, &policy, at(0));
    let Decision::Allow(ticket) = step.result else {
        panic!("expected a probe, got {:?}", step.result);
    };
    assert_eq!(ticket.probe, Some((0, 1)));
    let written = step.write.expect("half-opened");
    assert_eq!(written.probes[0], 1);
    assert_eq!(written.probes_in_flight(0), 1);
}

#[test]
fn a_late_result_of_an_expired_and_reassigned_lease_is_ignored() {
    let mut b = Breaker::new(BreakerPolicy {
        half_open_max_requests: 1,
        ..policy()
    });
    for _ in 0..3 {
        b.request(0, Outcome::Failure);
    }
    let until = b.rec.open_until_ns;
    let slow = b.allow(until);
    let lease = probe_of(slow).1;
    let fresh = b.allow(lease);
    let before = b.rec.clone();
    // The slow probe finally fails: its slot belongs to `fresh` now, so nothing happens.
    assert_eq!(b.record(lease + 1, slow, Outcome::Failure), (None, false));
    // Nor does its success count.
    assert_eq!(b.record(lease + 1, slow, Outcome::Success), (None, false));
    assert_eq!(b.rec, before);
    // The fresh probe still owns the slot.
    assert_eq!(b.record(lease + 2, fresh, Outcome::Success), (None, true));
    assert_eq!(b.rec.half_open_successes, 1);
}

#[test]
fn a_late_result_whose_slot_was_not_reassigned_still_counts() {
    // The lease only protects the slot from being wedged; a slow probe whose slot nobody took
    // still reports on the upstream.
    let (mut b, until) = opened_at(0);
    let slow = b.allow(until);
    let lease = probe_of(slow).1;
    assert_eq!(
        b.record(lease + S, slow, Outcome::Failure).0,
        Some(Transition::Opened)
    );
}

#[test]
fn a_forged_probe_ticket_changes_nothing() {
    let (mut b, until) = opened_at(0);
    let real = b.allow(until);
    let (slot, lease) = probe_of(real);
    let before = b.rec.clone();
    let generation = b.rec.generation;
    for forged in [
        // Right slot, wrong lease.
        Ticket {
            generation,
            probe: Some((slot, lease + 1)),
        },
        // The free slot, with a plausible lease.
        Ticket {
            generation,
            probe: Some((1, lease)),
        },
        // No such slot.
        Ticket {
            generation,
            probe: Some((99, lease)),
        },
        // Not a probe at all.
        Ticket {
            generation,
            probe: None,
        },
    ] {
        for outcome in [Outcome::Failure, Outcome::Success, Outcome::Ignored] {
            assert_eq!(
                b.record(until + 1, forged, outcome),
                (None, false),
                "{forged:?} {outcome:?}"
            );
        }
    }
    assert_eq!(b.rec, before);
}

#[test]
fn a_second_report_of_the_same_probe_is_ignored() {
    let mut b = Breaker::new(BreakerPolicy {
        half_open_success_threshold: 3,
        ..policy()
    });
    for _ in 0..3 {
        b.request(0, Outcome::Failure);
    }
    let until = b.rec.open_until_ns;
    let p = b.allow(until);
    assert_eq!(b.record(until + 1, p, Outcome::Success), (None, true));
    // Its slot is free now: a repeated report cannot count twice, nor fail the breaker.
    assert_eq!(b.record(until + 2, p, Outcome::Success), (None, false));
    assert_eq!(b.record(until + 2, p, Outcome::Failure), (None, false));
    assert_eq!(b.rec.half_open_successes, 1);
    assert_eq!(b.rec.state, State::HalfOpen);
}

#[test]
fn outcomes_admitted_before_a_transition_never_move_the_breaker_after_it() {
    let mut b = Breaker::new(policy());
    // Admitted in CLOSED generation 0, answered much later.
    let old = b.allow(0);
    for _ in 0..3 {
        b.request(0, Outcome::Failure);
    }
    let until = b.rec.open_until_ns;
    let p1 = b.allow(until);
    let p2 = b.allow(until);
    b.record(until, p1, Outcome::Success);
    b.record(until, p2, Outcome::Success);
    assert_eq!(b.rec.state, State::Closed);
    assert_eq!(b.rec.generation, 3);
    // Back in CLOSED (generation 3), the generation-0 failure must not count.
    assert_eq!(b.record(until + 1, old, Outcome::Failure), (None, false));
    assert_eq!(b.rec.consecutive_failures, 0);
}

#[test]
fn probe_slot_count_follows_the_policy_in_force() {
    let (mut b, until) = opened_at(0);
    let a = b.allow(until);
    let bb = b.allow(until);
    assert_eq!(b.rec.probes.len(), 2);
    // Reconfigured to 3 slots: one more probe fits.
    b.policy.half_open_max_requests = 3;
    let c = b.allow(until + 1);
    assert_eq!(probe_of(c).0, 2);
    b.reject(until + 1);
    // Reconfigured to 1 slot: the next admission truncates to slot 0, still leased.
    b.policy.half_open_max_requests = 1;
    b.reject(until + 2);
    assert_eq!(b.rec.probes.len(), 3, "a rejection writes nothing");
    b.record(until + 3, a, Outcome::Ignored);
    let d = b.allow(until + 4);
    assert_eq!(probe_of(d).0, 0);
    assert_eq!(b.rec.probes.len(), 1);
    // Probes of dropped slots report into nothing.
    assert_eq!(b.record(until + 5, bb, Outcome::Failure), (None, false));
    assert_eq!(b.record(until + 5, c, Outcome::Failure), (None, false));
    assert_eq!(b.rec.state, State::HalfOpen);
}

// ---------------------------------------------------------------- tick

#[test]
fn tick_half_opens_an_expired_open_breaker_exactly_at_open_until() {
    let (mut b, until) = opened_at(0);
    // t - 1 ns: nothing to do.
    assert_eq!(b.tick(until - 1), (None, false));
    assert_eq!(b.rec.state, State::Open);
    // t: HALF_OPEN with every slot free.
    assert_eq!(b.tick(until), (Some(Transition::HalfOpened), true));
    assert_eq!(b.rec.state, State::HalfOpen);
    assert_eq!(b.rec.generation, 2);
    assert_eq!(b.rec.probes, vec![0, 0]);
    assert_eq!(b.rec.changed_at_ns, until);
    // The next request is a probe, with no second transition.
    let (decision, transition) = b.admit(until + 1);
    assert_eq!(transition, None);
    assert!(matches!(
        decision,
        Decision::Allow(Ticket {
            generation: 2,
            probe: Some((0, _))
        })
    ));
}

#[test]
fn tick_is_idempotent() {
    let (mut b, until) = opened_at(0);
    assert_eq!(b.tick(until).0, Some(Transition::HalfOpened));
    assert_eq!(b.tick(until), (None, false));
    assert_eq!(
        b.tick(until + 100 * S),
        (None, false),
        "HALF_OPEN waits for probes"
    );
}

#[test]
fn tick_clears_a_stale_failure_count_exactly_at_failure_reset_timeout() {
    let mut b = Breaker::new(policy());
    b.request(0, Outcome::Failure);
    b.request(S, Outcome::Failure);
    assert_eq!(b.tick(61 * S - 1), (None, false));
    assert_eq!(b.rec.consecutive_failures, 2);
    // Exactly failure_reset_timeout after the last failure: cleared, no transition.
    assert_eq!(b.tick(61 * S), (None, true));
    assert_eq!(b.rec.consecutive_failures, 0);
    assert_eq!(b.rec.generation, 0);
    assert_eq!(b.rec.state, State::Closed);
    // Nothing left to clear.
    assert_eq!(b.tick(200 * S), (None, false));
}

#[test]
fn tick_on_a_fresh_breaker_does_nothing() {
    let mut b = Breaker::new(policy());
    assert_eq!(b.tick(0), (None, false));
    assert_eq!(b.tick(u64::MAX), (None, false));
}

// ---------------------------------------------------------------- trips, clocks, helpers

#[test]
fn trips_count_reopenings_since_the_breaker_last_closed() {
    let (mut b, mut until) = opened_at(0);
    assert_eq!(b.rec.trips, 1);
    for expected in 2..=4 {
        let p = b.allow(until);
        b.record(until, p, Outcome::Failure);
        assert_eq!(b.rec.trips, expected);
        // The recovery time does not grow with trips (recovery_timeout is flat).
        assert_eq!(b.rec.open_until_ns, until + 10 * S);
        until = b.rec.open_until_ns;
    }
    let p1 = b.allow(until);
    let p2 = b.allow(until);
    b.record(until, p1, Outcome::Success);
    b.record(until, p2, Outcome::Success);
    assert_eq!(b.rec.trips, 0);
    assert_eq!(breaker::recovery_timeout(&b.policy, 7), 10 * S);
}

#[test]
fn open_until_saturates_instead_of_overflowing() {
    let mut b = Breaker::new(policy());
    let t = u64::MAX - S;
    for _ in 0..3 {
        b.request(t, Outcome::Failure);
    }
    assert_eq!(b.rec.state, State::Open);
    assert_eq!(b.rec.open_until_ns, u64::MAX);
    assert_eq!(b.reject(t), (State::Open, S));
}

#[test]
fn retry_after_secs_rounds_up_and_is_at_least_one() {
    assert_eq!(retry_after_secs(0), 1);
    assert_eq!(retry_after_secs(1), 1);
    assert_eq!(retry_after_secs(S - 1), 1);
    assert_eq!(retry_after_secs(S), 1);
    assert_eq!(retry_after_secs(S + 1), 2);
    assert_eq!(retry_after_secs(30 * S), 30);
    assert_eq!(retry_after_secs(u64::MAX), u64::MAX.div_ceil(S));
}

#[test]
fn states_have_gauge_values_and_names() {
    assert_eq!(State::Closed.gauge(), 0);
    assert_eq!(State::Open.gauge(), 1);
    assert_eq!(State::HalfOpen.gauge(), 2);
    assert_eq!(State::Closed.name(), "closed");
    assert_eq!(State::Open.name(), "open");
    assert_eq!(State::HalfOpen.name(), "half-open");
    assert_eq!(Transition::Opened.to(), State::Open);
    assert_eq!(Transition::HalfOpened.to(), State::HalfOpen);
    assert_eq!(Transition::Closed.to(), State::Closed);
}

#[test]
fn remaining_open_ns_is_zero_outside_open() {
    let (mut b, until) = opened_at(0);
    assert_eq!(b.rec.remaining_open_ns(0), until);
    assert_eq!(b.rec.remaining_open_ns(until + 1), 0);
    b.tick(until);
    assert_eq!(b.rec.remaining_open_ns(0), 0);
    assert_eq!(Record::default().remaining_open_ns(0), 0);
}

#[test]
fn leases_stay_unique_and_bounded_when_the_clock_is_at_its_end() {
    // Saturated deadlines must not make the slot search spin: candidates then count down.
    let probes = [u64::MAX, u64::MAX - 1, 0];
    let lease = marty_resilience_core::breaker::unique_lease(u64::MAX, 0, &probes);
    assert_eq!(lease, Some(u64::MAX - 2));
    // Every slot taken and the previous lease excluded: still an answer.
    let full = [u64::MAX, u64::MAX - 1, u64::MAX - 2];
    let lease = marty_resilience_core::breaker::unique_lease(u64::MAX, u64::MAX - 2, &full);
    assert_eq!(lease, Some(u64::MAX - 3));
    // Never 0, which means a free slot.
    assert_eq!(
        marty_resilience_core::breaker::unique_lease(1, 0, &[1, 2]),
        Some(3)
    );
}

// ---------------------------------------------------------------- recovery backoff

/// Production numbers (30 s open) growing exponentially, capped at `max` seconds.
fn backoff_policy(strategy: Strategy, max: u64) -> BreakerPolicy {
    BreakerPolicy {
        recovery_timeout: 30 * S,
        recovery_backoff: strategy,
        max_recovery_timeout: max * S,
        half_open_success_threshold: 1,
        ..policy()
    }
}

/// Lets the breaker's probe through at `t` (when its open period ends) and fails it; returns
/// the new open period's end.
fn fail_probe(b: &mut Breaker, t: u64) -> u64 {
    assert_eq!(
        b.rec.open_until_ns, t,
        "probes are let through at open_until"
    );
    let ticket = b.allow(t);
    assert!(ticket.probe.is_some());
    assert_eq!(
        b.record(t, ticket, Outcome::Failure).0,
        Some(Transition::Opened)
    );
    b.rec.open_until_ns
}

#[test]
fn exponential_recovery_backoff_doubles_the_open_period_up_to_its_cap() {
    let mut b = Breaker::new(backoff_policy(Strategy::Exponential, 100));
    for _ in 0..3 {
        b.request(0, Outcome::Failure);
    }
    assert_eq!((b.rec.state, b.rec.trips), (State::Open, 1));
    // Trip 1: 30 s; retry-after says the whole period.
    assert_eq!(b.rec.open_until_ns, 30 * S);
    assert_eq!(b.reject(0), (State::Open, 30 * S));
    // Trip 2: 60 s.
    let t2 = fail_probe(&mut b, 30 * S);
    assert_eq!((t2, b.rec.trips), (90 * S, 2));
    assert_eq!(b.reject(30 * S), (State::Open, 60 * S));
    assert_eq!(retry_after_secs(60 * S), 60);
    // Trip 3 would be 120 s: capped at max_recovery_timeout, 100 s.
    let t3 = fail_probe(&mut b, t2);
    assert_eq!((t3 - t2, b.rec.trips), (100 * S, 3));
    assert_eq!(b.reject(t2 + S), (State::Open, 99 * S));
    // And stays there.
    let t4 = fail_probe(&mut b, t3);
    assert_eq!((t4 - t3, b.rec.trips), (100 * S, 4));
}

#[test]
fn exponential_recovery_periods_are_30_60_120_seconds_below_the_default_cap() {
    let p = backoff_policy(Strategy::Exponential, 300);
    let periods: Vec<u64> = (1..=6)
        .map(|k| breaker::recovery_timeout(&p, k) / S)
        .collect();
    assert_eq!(periods, [30, 60, 120, 240, 300, 300]);
}

#[test]
fn closing_resets_the_trips_and_the_next_open_is_the_first_again() {
    let mut b = Breaker::new(backoff_policy(Strategy::Exponential, 300));
    for _ in 0..3 {
        b.request(0, Outcome::Failure);
    }
    let t2 = fail_probe(&mut b, 30 * S);
    assert_eq!((t2, b.rec.trips), (90 * S, 2));
    // A successful probe closes the breaker (one success needed here).
    let ticket = b.allow(t2);
    assert_eq!(
        b.record(t2, ticket, Outcome::Success).0,
        Some(Transition::Closed)
    );
    assert_eq!((b.rec.state, b.rec.trips), (State::Closed, 0));
    // The next streak opens for recovery_timeout again, not 120 s.
    let t = t2 + S;
    for _ in 0..3 {
        b.request(t, Outcome::Failure);
    }
    assert_eq!((b.rec.state, b.rec.trips), (State::Open, 1));
    assert_eq!(b.rec.open_until_ns, t + 30 * S);
    assert_eq!(b.reject(t), (State::Open, 30 * S));
}

#[test]
fn fixed_recovery_backoff_keeps_recovery_timeout_on_every_trip() {
    let fixed = backoff_policy(Strategy::Fixed, 300);
    for trips in [0, 1, 2, 3, 10, u32::MAX] {
        assert_eq!(breaker::recovery_timeout(&fixed, trips), 30 * S, "{trips}");
    }
    // Even a policy built with a cap below recovery_timeout (configuration rejects one).
    let odd = BreakerPolicy {
        max_recovery_timeout: S,
        ..fixed
    };
    assert_eq!(breaker::recovery_timeout(&odd, 5), 30 * S);
}

#[test]
fn every_deterministic_recovery_backoff_grows_as_documented() {
    let periods = |strategy| -> Vec<u64> {
        let p = backoff_policy(strategy, 86_400);
        (1..=5)
            .map(|k| breaker::recovery_timeout(&p, k) / S)
            .collect()
    };
    assert_eq!(periods(Strategy::Linear), [30, 60, 90, 120, 150]);
    assert_eq!(periods(Strategy::Exponential), [30, 60, 120, 240, 480]);
    assert_eq!(periods(Strategy::Fibonacci), [30, 30, 60, 90, 150]);
    assert_eq!(periods(Strategy::Polynomial), [30, 120, 270, 480, 750]);
}
