//! The story `./scripts/demo` tells, against an Envoy running `envoy/demo.yaml`: healthy
//! traffic, an outage that opens the `users` breaker, a failed half-open probe, recovery, one
//! fault injected on request with the `x-failure-inject` header, and the filter's Prometheus
//! metrics. It prints a timeline as it goes and returns `Err` naming
//! what did not happen when the breaker does not behave as the story says.
//!
//! The outage is Envoy's own fault filter on the demo's second listener (the "flaky
//! upstream"), switched through the admin API's runtime overrides; what reaches that upstream
//! is read from the listener's own HTTP connection manager stats.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{self, Response};
use crate::envoy::admin_ready;

/// The route the story is about: its name in `envoy/demo.yaml` and a path it matches.
pub const ROUTE: &str = "users";
pub const PATH: &str = "/users";
/// A second route with its own breaker (configured by route metadata in `envoy/demo.yaml`).
pub const OTHER_ROUTE: &str = "orders";
pub const OTHER_PATH: &str = "/orders";
/// `stat_prefix` of the flaky upstream listener's HTTP connection manager.
pub const UPSTREAM_STAT_PREFIX: &str = "flaky_upstream";
/// Runtime key of the flaky upstream's fault filter: percentage of requests answered 503.
pub const ABORT_PERCENT_KEY: &str = "fault.http.abort.abort_percent";
/// The trigger header `routes.users.failure_injection.header_trigger` enables in
/// `envoy/demo.yaml`, and the fault phase (e) asks for with it.
pub const FAULT_HEADER: &str = "x-failure-inject";
pub const FAULT_REQUEST: &str = "abort=503";

/// `routes.users` of the plugin configuration in `envoy/demo.yaml`; the story's bounds and
/// narration rely on them.
pub const FAILURE_THRESHOLD: u32 = 3;
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3);
pub const HALF_OPEN_SUCCESS_THRESHOLD: u32 = 2;

/// Stats prefix of the filter's per-route metrics in `/stats`.
const ROUTE_STATS: &str = "wasmcustom.marty_resilience.route.";

#[derive(Clone, Debug)]
pub struct Options {
    /// Port of the listener with the filter (`front` in `envoy/demo.yaml`).
    pub front_port: u16,
    pub admin_port: u16,
    /// Pause between requests while something is expected to happen soon.
    pub pacing: Duration,
    /// Pause between requests while waiting out `recovery_timeout`.
    pub slow_pacing: Duration,
    /// Bound on waiting for Envoy's admin `/ready`.
    pub ready_timeout: Duration,
}

impl Options {
    pub fn new(front_port: u16, admin_port: u16) -> Self {
        Options {
            front_port,
            admin_port,
            pacing: Duration::from_millis(150),
            slow_pacing: Duration::from_millis(500),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// What the story showed, as deltas over the run.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub elapsed: Duration,
    pub requests: i64,
    pub opened: i64,
    pub half_opened: i64,
    pub closed: i64,
    /// Requests the filter answered itself.
    pub rejected: i64,
    /// Requests the flaky upstream received while the breaker rejected the burst of phase (b):
    /// zero when the breaker really keeps load off the upstream.
    pub upstream_during_rejections: i64,
    /// Aborts the filter injected (`faults_aborted_total`): the one of phase (e).
    pub faults_aborted: i64,
    /// Requests the flaky upstream received for the injected abort of phase (e): zero.
    pub upstream_during_fault: i64,
    /// Failures the breaker counted for the injected abort of phase (e): zero.
    pub failures_during_fault: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    fn from_gauge(v: i64) -> Option<State> {
        match v {
            0 => Some(State::Closed),
            1 => Some(State::Open),
            2 => Some(State::HalfOpen),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
        })
    }
}

/// One route's filter stats at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct RouteStats {
    requests: i64,
    success: i64,
    failure: i64,
    rejected: i64,
    opened: i64,
    half_opened: i64,
    closed: i64,
    state: i64,
    /// `faults_aborted_total`: requests the filter answered with an injected abort.
    faults_aborted: i64,
}

impl RouteStats {
    fn from(stats: &BTreeMap<String, i64>, route: &str) -> Option<RouteStats> {
        let get = |leaf: &str| stats.get(&format!("{ROUTE_STATS}{route}.{leaf}")).copied();
        Some(RouteStats {
            requests: get("requests_total")?,
            success: get("success_total")?,
            failure: get("failure_total")?,
            rejected: get("rejected_total")?,
            opened: get("circuit_opened_total")?,
            half_opened: get("circuit_half_opened_total")?,
            closed: get("circuit_closed_total")?,
            state: get("circuit_state")?,
            faults_aborted: get("faults_aborted_total")?,
        })
    }

    /// Requests whose outcome is not counted yet (see docs/metrics.md).
    fn unsettled(&self) -> i64 {
        self.requests - self.success - self.failure - self.rejected - self.faults_aborted
    }
}

/// What the injected abort of phase (e) did beyond its reply.
#[derive(Clone, Copy, Debug, Default)]
struct FaultOutcome {
    /// Requests the upstream received meanwhile.
    upstream: i64,
    /// Failures the breaker counted meanwhile.
    failures: i64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    route: RouteStats,
    /// `http.<UPSTREAM_STAT_PREFIX>.downstream_rq_total`: requests the upstream received.
    upstream_requests: i64,
    /// `http.<UPSTREAM_STAT_PREFIX>.fault.aborts_injected`.
    upstream_aborts: i64,
}

/// Runs the whole story; prints the timeline on stdout.
pub fn run(opts: &Options) -> Result<Summary, String> {
    let mut demo = Demo::new(opts.clone());
    demo.wait_ready()?;
    let result = demo.story();
    if result.is_err() {
        // Leave the upstream healthy for whoever looks at this Envoy next.
        let _ = demo.set_abort_percent(0, false);
    }
    result
}

struct Demo {
    opts: Options,
    start: Instant,
    first: Snapshot,
    last: Snapshot,
    /// The state walked through the transition counters (what the timeline announces).
    state: State,
}

impl Demo {
    fn new(opts: Options) -> Self {
        Demo {
            opts,
            start: Instant::now(),
            first: Snapshot::default(),
            last: Snapshot::default(),
            state: State::Closed,
        }
    }

    fn story(&mut self) -> Result<Summary, String> {
        let first = self.snapshot().map_err(|e| {
            format!("{e}. Is the marty-resilience module loaded? (FAIL_OPEN lets traffic through without it; see the Envoy log)")
        })?;
        self.state = State::from_gauge(first.route.state)
            .ok_or_else(|| format!("{ROUTE}: unexpected circuit_state {}", first.route.state))?;
        if self.state != State::Closed {
            return Err(format!(
                "{ROUTE}'s breaker is {} already: run the demo against a freshly started Envoy",
                self.state
            ));
        }
        self.first = first;
        self.last = first;
        self.set_abort_percent(0, false)?;

        self.healthy()?;
        let upstream_during_rejections = self.outage()?;
        self.failed_probe()?;
        self.recovery()?;
        let fault = self.injected_fault()?;
        self.prometheus()?;

        let d = self.delta(&self.last);
        let summary = Summary {
            elapsed: self.start.elapsed(),
            requests: d.requests,
            opened: d.opened,
            half_opened: d.half_opened,
            closed: d.closed,
            rejected: d.rejected,
            upstream_during_rejections,
            faults_aborted: d.faults_aborted,
            upstream_during_fault: fault.upstream,
            failures_during_fault: fault.failures,
        };
        println!();
        println!(
            "story complete in {:.1}s: {} requests on /{ROUTE}; the breaker opened {}x, half-opened {}x, closed {}x; \
             {} requests rejected locally, {} of the rejected burst reached the upstream; \
             {} fault injected, which reached neither the upstream nor the breaker",
            summary.elapsed.as_secs_f64(),
            summary.requests,
            summary.opened,
            summary.half_opened,
            summary.closed,
            summary.rejected,
            summary.upstream_during_rejections,
            summary.faults_aborted,
        );
        Ok(summary)
    }

    /// (a) All 200, breaker closed.
    fn healthy(&mut self) -> Result<(), String> {
        self.phase(
            "(a) healthy traffic",
            "the flaky upstream answers 200; the breaker stays CLOSED and only counts",
        );
        for _ in 0..5 {
            let r = self.get(PATH)?;
            if r.status != 200 {
                return Err(format!(
                    "healthy phase: GET {PATH} answered {} instead of 200",
                    r.status
                ));
            }
            self.pace(self.opts.pacing);
        }
        if self.state != State::Closed {
            return Err(format!(
                "healthy phase: the breaker is {} instead of CLOSED",
                self.state
            ));
        }
        Ok(())
    }

    /// (b) Every request fails upstream; the breaker opens after `FAILURE_THRESHOLD` and then
    /// answers locally. Returns how many of the rejected burst reached the upstream.
    fn outage(&mut self) -> Result<i64, String> {
        self.phase(
            "(b) outage",
            &format!(
                "the upstream now fails every request; failure_threshold={FAILURE_THRESHOLD} consecutive failures open the breaker"
            ),
        );
        self.set_abort_percent(100, true)?;
        let opened_before = self.last.route.opened;
        let mut upstream_failures = 0;
        // Slack over the threshold: the runtime change reaches each worker asynchronously.
        let max = FAILURE_THRESHOLD as usize + 10;
        let mut first_rejection = None;
        for _ in 0..max {
            let r = self.get(PATH)?;
            match r.header("x-marty-circuit") {
                Some("open") => {
                    first_rejection = Some(r);
                    break;
                }
                Some(other) => {
                    return Err(format!(
                        "outage: rejected with x-marty-circuit: {other}, expected open"
                    ))
                }
                None if r.status >= 500 => upstream_failures += 1,
                None => {}
            }
            self.pace(self.opts.pacing);
        }
        let Some(rejection) = first_rejection else {
            return Err(format!(
                "the breaker never opened: {upstream_failures} upstream failures in {max} requests, \
                 expected it to open after {FAILURE_THRESHOLD} in a row"
            ));
        };
        if self.last.route.opened <= opened_before {
            return Err(
                "a request was rejected as open, but circuit_opened_total did not move".into(),
            );
        }
        if rejection.status != 503 || rejection.header("retry-after").is_none() {
            return Err(format!(
                "a rejection must be 503 with retry-after; got {} {:?}",
                rejection.status, rejection.headers
            ));
        }

        self.note(&format!(
            "requests are answered by the filter itself now; the upstream's request counter \
             (http.{UPSTREAM_STAT_PREFIX}.downstream_rq_total) should stand still at {}",
            self.last.upstream_requests
        ));
        let upstream_before = self.last.upstream_requests;
        let rejected_before = self.last.route.rejected;
        for _ in 0..5 {
            self.pace(self.opts.pacing);
            let r = self.get(PATH)?;
            if r.header("x-marty-circuit") != Some("open") {
                // Only possible if this machine is slow enough for recovery_timeout to pass.
                break;
            }
        }
        let reached = self.last.upstream_requests - upstream_before;
        let rejected = self.last.route.rejected - rejected_before;
        self.note(&format!(
            "{rejected} more requests rejected locally; the upstream received {reached} of them \
             (its fault filter has injected {} 503s in all, the ones that opened the breaker)",
            self.last.upstream_aborts - self.first.upstream_aborts
        ));
        if reached != 0 {
            return Err(format!(
                "{reached} requests reached the upstream while the breaker was open"
            ));
        }

        // The other route has its own breaker: one failure does not open it.
        let r = self.get_quiet(OTHER_PATH)?;
        let stats = self.stats()?;
        if let Some(other) = RouteStats::from(&stats, OTHER_ROUTE) {
            self.note(&format!(
                "meanwhile GET {OTHER_PATH} -> {} {}: route {OTHER_ROUTE} has its own breaker \
                 (failure_threshold 5 from its route metadata), still {} with {} failure(s); \
                 that request did reach the upstream",
                r.status,
                origin(&r),
                State::from_gauge(other.state).map_or("?", State::label),
                other.failure
            ));
        }
        Ok(reached)
    }

    /// (c) Still failing: after `RECOVERY_TIMEOUT` one probe goes through, fails, and the
    /// breaker opens again.
    fn failed_probe(&mut self) -> Result<(), String> {
        self.phase(
            "(c) still failing at half-open",
            &format!(
                "after recovery_timeout ({}s) the breaker lets a probe through; the upstream still fails it",
                RECOVERY_TIMEOUT.as_secs()
            ),
        );
        let opened_before = self.last.route.opened;
        let probe = self.until_probe(self.last.route.half_opened)?;
        if probe.status < 500 {
            return Err(format!(
                "the half-open probe answered {}; the upstream should still be failing",
                probe.status
            ));
        }
        self.wait_for("the failed probe to reopen the breaker", |s| {
            s.route.opened > opened_before && s.route.state == 1
        })?;
        Ok(())
    }

    /// (d) The upstream heals; half-open probes succeed and close the breaker.
    fn recovery(&mut self) -> Result<(), String> {
        self.phase(
            "(d) recovery",
            &format!(
                "the upstream is healthy again, but the breaker waits out recovery_timeout before probing; \
                 {HALF_OPEN_SUCCESS_THRESHOLD} successful probes close it"
            ),
        );
        self.set_abort_percent(0, true)?;
        let closed_before = self.last.route.closed;
        let probe = self.until_probe(self.last.route.half_opened)?;
        if probe.status != 200 {
            return Err(format!(
                "the first probe after recovery answered {}, expected 200",
                probe.status
            ));
        }
        let mut n = 0;
        while self.last.route.closed <= closed_before {
            n += 1;
            if n > HALF_OPEN_SUCCESS_THRESHOLD as usize + 5 {
                return Err(format!(
                    "the breaker did not close after {n} requests to a healthy upstream (state {})",
                    self.state
                ));
            }
            self.pace(self.opts.pacing);
            let r = self.get(PATH)?;
            if r.status != 200 && r.header("x-marty-circuit") != Some("half-open") {
                return Err(format!(
                    "recovery: GET {PATH} answered {} {}",
                    r.status,
                    origin(&r)
                ));
            }
        }
        self.wait_for("the breaker to read closed", |s| s.route.state == 0)?;
        let upstream_before = self.last.upstream_requests;
        for _ in 0..3 {
            self.pace(self.opts.pacing);
            let r = self.get(PATH)?;
            if r.status != 200 {
                return Err(format!(
                    "after closing: GET {PATH} answered {}, expected 200",
                    r.status
                ));
            }
        }
        self.note(&format!(
            "traffic flows again: the upstream received {} of the last 3 requests",
            self.last.upstream_requests - upstream_before
        ));
        Ok(())
    }

    /// (e) One request asks for a fault with the trigger header: the filter answers it 503
    /// itself, the upstream never sees it, and the breaker neither counts it nor moves.
    fn injected_fault(&mut self) -> Result<FaultOutcome, String> {
        self.phase(
            "(e) an injected fault",
            &format!(
                "{ROUTE} has failure_injection on with the header trigger (and no configured faults); \
                 one request asks for an abort with `{FAULT_HEADER}: {FAULT_REQUEST}`"
            ),
        );
        let before = self.last;
        let r = self.get_with(PATH, &[(FAULT_HEADER, FAULT_REQUEST)])?;
        if r.status != 503 || r.header("x-marty-fault") != Some("abort") {
            return Err(format!(
                "GET {PATH} with {FAULT_HEADER}: {FAULT_REQUEST} answered {} {:?}, expected 503 \
                 with x-marty-fault: abort (is routes.{ROUTE}.failure_injection in envoy/demo.yaml?)",
                r.status, r.headers
            ));
        }
        let outcome = FaultOutcome {
            upstream: self.last.upstream_requests - before.upstream_requests,
            failures: self.last.route.failure - before.route.failure,
        };
        let aborted = self.last.route.faults_aborted - before.route.faults_aborted;
        self.note(&format!(
            "answered by the filter: faults_aborted_total +{aborted}; the upstream received {} \
             request(s), the breaker counted {} failure(s) and is still {}",
            outcome.upstream, outcome.failures, self.state
        ));
        if aborted != 1 {
            return Err(format!(
                "faults_aborted_total moved by {aborted} for one injected abort"
            ));
        }
        if outcome.upstream != 0 {
            return Err(format!(
                "the injected abort reached the upstream ({} request(s))",
                outcome.upstream
            ));
        }
        if outcome.failures != 0 || self.state != State::Closed || self.last.route.state != 0 {
            return Err(format!(
                "the injected abort touched the breaker: {} failure(s) counted, state {}",
                outcome.failures, self.state
            ));
        }
        // Without the header the same route is untouched.
        let r = self.get(PATH)?;
        if r.status != 200 {
            return Err(format!(
                "GET {PATH} without the trigger header answered {}, expected 200",
                r.status
            ));
        }
        Ok(outcome)
    }

    /// (f) The same stats as Prometheus sees them, with the route as a label.
    fn prometheus(&mut self) -> Result<(), String> {
        self.phase(
            "(f) metrics",
            &format!("GET /stats/prometheus, the filter's lines for marty_route=\"{ROUTE}\""),
        );
        let r = client::http1(self.opts.admin_port, "GET", "/stats/prometheus", &[])?;
        if r.status != 200 {
            return Err(format!("/stats/prometheus answered {}", r.status));
        }
        let text = r.text();
        let label = format!("{{marty_route=\"{ROUTE}\"}}");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("marty_resilience_route_") && l.contains(&label))
            .collect();
        for line in &lines {
            println!("    {line}");
        }
        let requests = format!("marty_resilience_route_requests_total{label}");
        if !lines.iter().any(|l| l.starts_with(&requests)) {
            return Err(format!(
                "{requests} missing from /stats/prometheus: is stats_config.stats_tags set?"
            ));
        }
        let aborted = format!("marty_resilience_route_faults_aborted_total{label} 1");
        if !lines.iter().any(|l| l.trim_end() == aborted) {
            return Err(format!("{aborted} missing from /stats/prometheus"));
        }
        Ok(())
    }

    /// Sends requests at the slow pace until one is let through (a half-open probe).
    fn until_probe(&mut self, half_opened_before: i64) -> Result<Response, String> {
        let deadline = Instant::now() + RECOVERY_TIMEOUT + Duration::from_secs(15);
        loop {
            self.pace(self.opts.slow_pacing);
            let r = self.get(PATH)?;
            if r.header("x-marty-circuit").is_none() {
                if self.last.route.half_opened <= half_opened_before {
                    return Err(format!(
                        "a request went through ({}) but the breaker never went HALF_OPEN",
                        r.status
                    ));
                }
                return Ok(r);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no request was let through within {:?}: the breaker never went HALF_OPEN \
                     (recovery_timeout is {}s)",
                    RECOVERY_TIMEOUT + Duration::from_secs(15),
                    RECOVERY_TIMEOUT.as_secs()
                ));
            }
        }
    }

    /// One request on the front listener, with its timeline line and the transitions it caused.
    fn get(&mut self, path: &str) -> Result<Response, String> {
        self.get_with(path, &[])
    }

    /// As [`Demo::get`], with request headers (shown on the timeline).
    fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        // Transitions made by the filter's timer since the last request come first.
        self.observe()?;
        let before = self.last;
        let r = client::http1(self.opts.front_port, "GET", path, headers)?;
        let snap = self.settled(&before)?;
        let shown: String = headers
            .iter()
            .map(|(name, value)| format!(" [{name}: {value}]"))
            .collect();
        let line = format!(
            "{}GET {path}{shown} -> {} {:<40} {}",
            self.stamp(),
            r.status,
            origin(&r),
            self.describe(&snap)
        );
        let transitions = self.advance(snap);
        // OPEN -> HALF_OPEN happens before a request is handled (it is what admits the probe);
        // the other transitions are the outcome of one.
        let before_request = transitions
            .iter()
            .take_while(|(from, to)| (*from, *to) == (State::Open, State::HalfOpen))
            .count();
        let (first, rest) = transitions.split_at(before_request);
        self.announce(first);
        println!("{line}");
        self.announce(rest);
        Ok(r)
    }

    /// A request outside the `users` story: no timeline line of its own.
    fn get_quiet(&mut self, path: &str) -> Result<Response, String> {
        let r = client::http1(self.opts.front_port, "GET", path, &[])?;
        // Let the filter count its outcome before anyone reads the stats.
        std::thread::sleep(Duration::from_millis(50));
        Ok(r)
    }

    /// The stats once the last request's outcome is counted (the filter counts when Envoy
    /// destroys the stream, which may be just after the client has the response, and adds
    /// requests and successes to the counters on its 250 ms tick). Bounded; on timeout the
    /// latest stats are used as they are.
    fn settled(&self, before: &Snapshot) -> Result<Snapshot, String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let snap = self.snapshot()?;
            let counted = snap.route.requests > before.route.requests
                && snap.route.unsettled() <= self.first.route.unsettled();
            if counted || Instant::now() > deadline {
                return Ok(snap);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reads the stats and announces the transitions since the last look.
    fn observe(&mut self) -> Result<(), String> {
        let snap = self.snapshot()?;
        let transitions = self.advance(snap);
        self.announce(&transitions);
        Ok(())
    }

    /// Polls the stats (announcing transitions) until `cond` holds; bounded.
    fn wait_for(&mut self, what: &str, cond: impl Fn(&Snapshot) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.observe()?;
            if cond(&self.last) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out waiting for {what} (state {})",
                    self.state
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The transitions between `self.last` and `snap`, in order; keeps `snap`.
    ///
    /// The circuit_state gauge alone could miss OPEN -> HALF_OPEN -> OPEN between two looks;
    /// the transition counters cannot, and the breaker's state machine says in which order
    /// they happened.
    fn advance(&mut self, snap: Snapshot) -> Vec<(State, State)> {
        let mut opened = snap.route.opened - self.last.route.opened;
        let mut half_opened = snap.route.half_opened - self.last.route.half_opened;
        let mut closed = snap.route.closed - self.last.route.closed;
        let mut transitions = Vec::new();
        loop {
            let next = match self.state {
                State::Closed if opened > 0 => {
                    opened -= 1;
                    State::Open
                }
                State::Open if half_opened > 0 => {
                    half_opened -= 1;
                    State::HalfOpen
                }
                State::HalfOpen if closed > 0 => {
                    closed -= 1;
                    State::Closed
                }
                State::HalfOpen if opened > 0 => {
                    opened -= 1;
                    State::Open
                }
                _ => break,
            };
            transitions.push((self.state, next));
            self.state = next;
        }
        self.last = snap;
        transitions
    }

    fn announce(&self, transitions: &[(State, State)]) {
        for &(from, to) in transitions {
            let why = match (from, to) {
                (State::Closed, State::Open) => {
                    "failure_threshold reached: requests are now rejected locally"
                }
                (State::Open, State::HalfOpen) => {
                    "recovery_timeout elapsed: the next request is a probe"
                }
                (State::HalfOpen, State::Open) => {
                    "the probe failed: open for another recovery_timeout"
                }
                (State::HalfOpen, State::Closed) => "enough probes succeeded: traffic flows again",
                _ => "",
            };
            println!("{}*** {ROUTE}: {from} -> {to}  ({why})", self.stamp());
        }
    }

    fn describe(&self, snap: &Snapshot) -> String {
        let d = self.delta(snap);
        let state = State::from_gauge(snap.route.state).map_or("?", State::label);
        format!(
            "[{ROUTE}: state={state} ok={} failed={} rejected={} opened={} | upstream received {}]",
            d.success,
            d.failure,
            d.rejected,
            d.opened,
            snap.upstream_requests - self.first.upstream_requests
        )
    }

    /// Counters since the story started.
    fn delta(&self, snap: &Snapshot) -> RouteStats {
        let (a, b) = (&self.first.route, &snap.route);
        RouteStats {
            requests: b.requests - a.requests,
            success: b.success - a.success,
            failure: b.failure - a.failure,
            rejected: b.rejected - a.rejected,
            opened: b.opened - a.opened,
            half_opened: b.half_opened - a.half_opened,
            closed: b.closed - a.closed,
            state: b.state,
            faults_aborted: b.faults_aborted - a.faults_aborted,
        }
    }

    fn snapshot(&self) -> Result<Snapshot, String> {
        let stats = self.stats()?;
        let route = RouteStats::from(&stats, ROUTE).ok_or_else(|| {
            format!("the filter's stats for route {ROUTE} ({ROUTE_STATS}{ROUTE}.*) are missing")
        })?;
        let upstream = |leaf: &str| {
            let name = format!("http.{UPSTREAM_STAT_PREFIX}.{leaf}");
            stats
                .get(&name)
                .copied()
                .ok_or_else(|| format!("Envoy stat {name} is missing"))
        };
        Ok(Snapshot {
            route,
            upstream_requests: upstream("downstream_rq_total")?,
            upstream_aborts: upstream("fault.aborts_injected")?,
        })
    }

    /// The filter's per-route stats and the upstream listener's, by full name.
    fn stats(&self) -> Result<BTreeMap<String, i64>, String> {
        let filter = format!(
            r"^({}|http\.{UPSTREAM_STAT_PREFIX}\.(downstream_rq_total|fault\.aborts_injected)$)",
            ROUTE_STATS.replace('.', r"\.")
        );
        let path = format!("/stats?format=json&filter={}", percent_encode(&filter));
        let r = client::http1(self.opts.admin_port, "GET", &path, &[])?;
        if r.status != 200 {
            return Err(format!("admin {path} answered {}: {}", r.status, r.text()));
        }
        let json: Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("admin /stats json: {e}: {}", r.text()))?;
        Ok(json["stats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["value"].as_i64()?)))
            .collect())
    }

    /// Switches the flaky upstream's injected 503s through the admin runtime layer.
    fn set_abort_percent(&mut self, percent: u32, announce: bool) -> Result<(), String> {
        let path = format!("/runtime_modify?{ABORT_PERCENT_KEY}={percent}");
        let r = client::http1(self.opts.admin_port, "POST", &path, &[])?;
        if r.status != 200 {
            return Err(format!(
                "admin POST {path} answered {}: {}",
                r.status,
                r.text()
            ));
        }
        if announce {
            println!(
                "{}POST {path}  (the upstream now fails {percent}% of requests)",
                self.stamp()
            );
        }
        Ok(())
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            let why = match admin_ready(self.opts.admin_port) {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy's admin on 127.0.0.1:{} not ready within {:?}: {why}",
                    self.opts.admin_port, self.opts.ready_timeout
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn phase(&self, title: &str, what: &str) {
        println!();
        println!("== {title}: {what}");
    }

    fn note(&self, text: &str) {
        println!("{}    {text}", self.stamp());
    }

    fn pace(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn stamp(&self) -> String {
        format!(
            "{:<9}",
            format!("t={:.1}s", self.start.elapsed().as_secs_f64())
        )
    }
}

/// Who answered: the filter (its header says in which state, or that it injected a fault) or
/// the upstream.
fn origin(r: &Response) -> String {
    if let Some(fault) = r.header("x-marty-fault") {
        return format!("(x-marty-fault: {fault}, from the filter)");
    }
    match r.header("x-marty-circuit") {
        Some(circuit) => format!(
            "(x-marty-circuit: {circuit}, retry-after: {})",
            r.header("retry-after").unwrap_or("-")
        ),
        None => {
            let body = r.text();
            let body = body.trim();
            if r.status == 200 || body.is_empty() || body.len() > 40 {
                "(from upstream)".to_string()
            } else {
                format!("(from upstream: {body})")
            }
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
