//! The request path (`proxy::Plugin` + `proxy::Stream`) driven natively through the recording
//! fake host: admission and rejection, half-open probes, the bulkhead, each fault kind, retry
//! headers and their suppression, and outcome recording. Envoy stays the acceptance suite;
//! these pin each flow in milliseconds, host call by host call where it matters.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::rc::Rc;

use marty_resilience_core::config::Settings;
use marty_resilience_core::host::fake::{FakeEnvoy, FakeHost};
use marty_resilience_core::host::Map;
use marty_resilience_core::proxy::scheduler::{FAST_TICK_MS, TICK_MS};
use marty_resilience_core::proxy::{Action, Plugin, Stream};

struct Worker {
    plugin: Rc<Plugin<FakeHost>>,
    next_id: std::cell::Cell<u32>,
}

impl Worker {
    fn new(envoy: &Rc<FakeEnvoy>, config: &str) -> Self {
        let settings = Settings::parse(config.as_bytes(), &[]).expect("valid config");
        Self {
            plugin: Rc::new(Plugin::new(FakeHost::new(envoy), settings).expect("plugin starts")),
            next_id: std::cell::Cell::new(1),
        }
    }

    fn host(&self) -> &FakeHost {
        &self.plugin.host
    }

    /// Starts a GET (no body) on `route` (to the cluster `upstream`) with `headers`; returns
    /// the stream and what it answered.
    fn request(&self, route: &str, headers: &[(&str, &str)]) -> (Stream<FakeHost>, Action) {
        self.request_to(route, Some("upstream"), headers)
    }

    /// Starts a GET on `route` to `cluster` (`None`: a route with no upstream cluster).
    fn request_to(
        &self,
        route: &str,
        cluster: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (Stream<FakeHost>, Action) {
        self.start_request(route, cluster, "GET", headers, true)
    }

    /// Starts a POST on `route` whose body is still to come.
    fn post(&self, route: &str, headers: &[(&str, &str)]) -> (Stream<FakeHost>, Action) {
        self.start_request(route, Some("upstream"), "POST", headers, false)
    }

    fn start_request(
        &self,
        route: &str,
        cluster: Option<&str>,
        method: &str,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> (Stream<FakeHost>, Action) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.host()
            .set_property("xds.route_name", Some(route.as_bytes()));
        self.host()
            .set_property("xds.cluster_name", cluster.map(str::as_bytes));
        let mut all = vec![(":method", method), (":path", "/")];
        all.extend_from_slice(headers);
        self.host().new_stream(&all);
        let mut stream = Stream::new(id, self.plugin.clone());
        let action = stream.on_request_headers(end_of_stream);
        (stream, action)
    }

    /// Finishes a stream with a headers-only response of `status`.
    fn respond(&self, stream: &mut Stream<FakeHost>, status: &str) {
        self.host()
            .set_headers(Map::ResponseHeaders, &[(":status", status)]);
        stream.on_response_headers(false);
        stream.on_response_body(true);
        stream.on_delete();
    }

    /// `n` whole requests on `route`, each answered with `status` if admitted.
    fn calls(&self, route: &str, status: &str, n: usize) {
        for _ in 0..n {
            self.call(route, status);
        }
    }

    /// A whole request on `route` answered with `status` by the upstream, if admitted.
    fn call(&self, route: &str, status: &str) -> Action {
        let (mut stream, action) = self.request(route, &[]);
        if action == Action::Continue {
            self.respond(&mut stream, status);
        } else {
            stream.on_delete();
        }
        action
    }

    /// A stat as Envoy's admin would show it once this worker's tick has flushed its deferred
    /// counters (`requests_total`, `success_total`).
    fn stat(&self, name: &str) -> i64 {
        self.plugin.flush_counts();
        self.host().envoy.stat(&format!("marty_resilience.{name}"))
    }
}

/// One Envoy process with one worker configured by `config`.
fn start(config: &str) -> (Rc<FakeEnvoy>, Worker) {
    let envoy = FakeEnvoy::new();
    let worker = Worker::new(&envoy, config);
    (envoy, worker)
}

const BREAKER: &str = r#"{
  "circuit_breaker": {
    "failure_threshold": 3, "recovery_timeout": "1s", "half_open_success_threshold": 2,
    "half_open_max_requests": 1
  },
  "routes": {"users": {}}
}"#;

#[test]
fn a_healthy_request_is_admitted_with_no_shared_data_read_once_the_view_is_warm() {
    let (_, worker) = start(BREAKER);
    assert_eq!(worker.call("users", "200"), Action::Continue);
    let (mut stream, action) = worker.request("users", &[]);
    assert_eq!(action, Action::Continue);
    worker.respond(&mut stream, "200");
    // The cached admission reads one counter, never the record.
    assert_eq!(worker.host().count("get_shared_data"), 0);
    assert_eq!(worker.host().count("set_shared_data"), 0);
    assert_eq!(
        worker.host().count("get_property"),
        1,
        "the route name only"
    );
    assert_eq!(worker.stat("route.users.requests_total"), 2);
    assert_eq!(worker.stat("route.users.success_total"), 2);
    assert_eq!(worker.stat("route.users.active_requests"), 0);
}

/// The host calls of one warm request, in order: request headers, then response headers.
fn calls_of_one_request(worker: &Worker) -> (Vec<&'static str>, Vec<&'static str>) {
    worker.call("users", "200");
    let (mut stream, _) = worker.request("users", &[]);
    let request = worker.host().calls();
    worker.host().new_stream(&[]);
    worker.respond(&mut stream, "200");
    (request, worker.host().calls())
}

#[test]
fn a_closed_breaker_costs_the_route_name_one_counter_read_and_the_status() {
    // docs/performance.md prices each of these; a new call here is a cost on every request.
    let (_, worker) = start(BREAKER);
    let (request, response) = calls_of_one_request(&worker);
    assert_eq!(request, ["get_property", "get_metric"]);
    assert_eq!(response, ["get_header"]);
    // The cap reads its gauge right after its own increment, and gives the slot back at once.
    let (_, worker) =
        start(r#"{"circuit_breaker": {"max_concurrent_requests": 10}, "routes": {"users": {}}}"#);
    let (request, response) = calls_of_one_request(&worker);
    assert_eq!(
        request,
        [
            "get_property",
            "get_metric",
            "increment_metric",
            "get_metric"
        ]
    );
    assert_eq!(response, ["get_header", "increment_metric"]);
}

#[test]
fn a_retry_policy_costs_its_header_writes_and_nothing_more_where_envoy_reports_no_attempts() {
    let (_, worker) =
        start(r#"{"retry": {"enabled": true, "max_attempts": 3}, "routes": {"users": {}}}"#);
    // As Envoy says of an upstream's response; the virtual host does not report attempts.
    worker
        .host()
        .set_property("response.code_details", Some(b"via_upstream"));
    let (request, response) = calls_of_one_request(&worker);
    // A GET: max-retries, retry-on, per-try timeout; the preset's gRPC conditions are left
    // out, as a request without a body is no gRPC call.
    assert_eq!(
        request,
        [
            "get_property",
            "get_metric",
            "set_header",
            "set_header",
            "set_header"
        ]
    );
    // The status only: the first response taught that no attempt count comes.
    assert_eq!(response, ["get_header"]);
    // A request with a body may be a gRPC call: retry-gRPC-on too.
    let (_post, _) = worker.post("users", &[("content-type", "application/grpc")]);
    assert_eq!(
        worker.host().calls(),
        [
            "get_property",
            "get_metric",
            "set_header",
            "set_header",
            "set_header",
            "set_header"
        ]
    );
}

#[test]
fn grpc_retry_conditions_go_only_on_requests_with_a_body() {
    let (_, worker) = start(RETRIES_WITH_GRPC);
    let header = |n| worker.host().header_value(Map::RequestHeaders, n);
    let (_post, _) = worker.post("users", &[("content-type", "application/grpc")]);
    assert_eq!(
        header("x-envoy-retry-grpc-on").as_deref(),
        Some("unavailable")
    );
    assert_eq!(header("x-envoy-max-retries").as_deref(), Some("2"));
    let (_get, _) = worker.request("users", &[]);
    assert_eq!(header("x-envoy-retry-grpc-on"), None);
    assert_eq!(header("x-envoy-max-retries").as_deref(), Some("2"));
    assert_eq!(header("x-envoy-retry-on").as_deref(), Some("5xx"));
}

/// One retry-enabled request on `users` answered by `response` with `code_details`; the host
/// calls of its response.
fn respond_with(
    worker: &Worker,
    response: &[(&str, &str)],
    code_details: &str,
) -> Vec<&'static str> {
    let (mut stream, _) = worker.request("users", &[]);
    worker.host().new_stream(&[]);
    worker
        .host()
        .set_property("response.code_details", Some(code_details.as_bytes()));
    worker.host().set_headers(Map::ResponseHeaders, response);
    stream.on_response_headers(false);
    stream.on_response_body(true);
    stream.on_delete();
    worker.host().calls()
}

#[test]
fn attempt_counts_are_read_where_envoy_reports_them_and_relearned_each_route_epoch() {
    let (envoy, worker) = start(RETRIES);
    let status_only = [(":status", "200")];
    // Another filter's local reply, without the header: says nothing, the next is read too.
    // (The attempt count, where it came from, then the status.)
    let calls = respond_with(&worker, &[(":status", "429")], "rate_limited");
    assert_eq!(calls, ["get_header", "get_property", "get_header"]);
    // Envoy reports attempts: every response is read, and its retries counted.
    let counted = [(":status", "200"), ("x-envoy-attempt-count", "3")];
    assert_eq!(
        respond_with(&worker, &counted, "via_upstream"),
        ["get_header", "increment_metric", "get_header"]
    );
    // An upstream response without it in the same epoch does not stop the reading (another
    // virtual host of the bucket may not report).
    assert_eq!(
        respond_with(&worker, &status_only, "via_upstream"),
        ["get_header", "get_header"]
    );
    assert_eq!(
        respond_with(&worker, &counted, "via_upstream"),
        ["get_header", "increment_metric", "get_header"]
    );
    assert_eq!(worker.stat("route.users.retry_attempts_total"), 4);

    // The next epoch starts from nothing: an upstream response without the header stops it.
    envoy.advance_ms(10_001);
    assert!(worker.plugin.tick());
    assert_eq!(
        respond_with(&worker, &status_only, "via_upstream"),
        ["get_header", "get_property", "get_header"]
    );
    assert_eq!(
        respond_with(&worker, &counted, "via_upstream"),
        ["get_header"]
    );
    assert_eq!(worker.stat("route.users.retry_attempts_total"), 4);
    // And the epoch after reads again.
    envoy.advance_ms(10_001);
    assert!(worker.plugin.tick());
    assert_eq!(
        respond_with(&worker, &counted, "via_upstream"),
        ["get_header", "increment_metric", "get_header"]
    );
    assert_eq!(worker.stat("route.users.retry_attempts_total"), 6);
}

#[test]
fn failures_open_the_breaker_and_an_open_breaker_replies_503_without_the_upstream() {
    let (_, worker) = start(BREAKER);
    for _ in 0..3 {
        assert_eq!(worker.call("users", "503"), Action::Continue);
    }
    assert_eq!(worker.stat("route.users.circuit_opened_total"), 1);
    assert_eq!(worker.stat("route.users.circuit_state"), 1);
    assert_eq!(worker.call("users", "200"), Action::Pause);
    let reply = worker.host().last_reply().expect("a local reply");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.details, "marty_circuit_open");
    assert!(reply
        .headers
        .iter()
        .any(|(n, v)| *n == "x-marty-circuit" && v == "open"));
    assert!(reply
        .headers
        .iter()
        .any(|(n, v)| *n == "retry-after" && v == "1"));
    assert_eq!(worker.stat("route.users.rejected_total"), 1);
    // Further rejections come from this worker's view of the OPEN record: no shared-data read.
    assert_eq!(worker.call("users", "200"), Action::Pause);
    assert_eq!(worker.host().count("get_shared_data"), 0);
    // Other buckets are untouched.
    assert_eq!(worker.call("", "200"), Action::Continue);
}

#[test]
fn grpc_requests_are_rejected_trailers_only_with_unavailable() {
    let (_, worker) = start(BREAKER);
    worker.calls("users", "500", 3);
    let (_stream, action) = worker.request("users", &[("content-type", "application/grpc")]);
    assert_eq!(action, Action::Pause);
    let reply = worker.host().last_reply().unwrap();
    assert_eq!((reply.status, reply.grpc_status), (200, Some(14)));
    assert!(reply
        .headers
        .iter()
        .any(|(n, _)| *n == "grpc-retry-pushback-ms"));
}

#[test]
fn half_open_admits_one_probe_and_two_successes_close_it() {
    let (envoy, worker) = start(BREAKER);
    worker.calls("users", "503", 3);
    envoy.advance_ms(1_001);
    let (mut probe, action) = worker.request("users", &[]);
    assert_eq!(
        action,
        Action::Continue,
        "the first request after recovery probes"
    );
    assert_eq!(worker.stat("route.users.circuit_half_opened_total"), 1);
    assert_eq!(worker.call("users", "200"), Action::Pause, "one probe slot");
    assert_eq!(
        worker.host().last_reply().unwrap().details,
        "marty_circuit_half_open"
    );
    worker.respond(&mut probe, "200");
    assert_eq!(worker.call("users", "200"), Action::Continue);
    assert_eq!(worker.stat("route.users.circuit_closed_total"), 1);
    assert_eq!(worker.stat("route.users.circuit_state"), 0);
}

#[test]
fn a_failed_probe_opens_the_breaker_again() {
    let (envoy, worker) = start(BREAKER);
    worker.calls("users", "503", 3);
    envoy.advance_ms(1_001);
    assert_eq!(worker.call("users", "503"), Action::Continue);
    assert_eq!(worker.stat("route.users.circuit_opened_total"), 2);
    assert_eq!(worker.call("users", "200"), Action::Pause);
}

#[test]
fn the_tick_turns_open_into_half_open_without_traffic() {
    let (envoy, worker) = start(BREAKER);
    worker.calls("users", "503", 3);
    envoy.advance_ms(1_001);
    assert!(worker.plugin.tick());
    assert_eq!(worker.stat("route.users.circuit_state"), 2);
}

#[test]
fn two_workers_share_one_breaker() {
    let envoy = FakeEnvoy::new();
    let a = Worker::new(&envoy, BREAKER);
    let b = Worker::new(&envoy, BREAKER);
    // b warms its view while CLOSED, then a opens the breaker.
    assert_eq!(b.call("users", "200"), Action::Continue);
    a.calls("users", "503", 3);
    // b's cached admission sees circuit_opened_total move and reads the record.
    assert_eq!(b.call("users", "200"), Action::Pause);
}

#[test]
fn the_bulkhead_rejects_past_max_concurrent_requests_and_gives_slots_back() {
    let (_, worker) =
        start(r#"{"circuit_breaker": {"max_concurrent_requests": 2}, "routes": {"users": {}}}"#);
    let (mut first, a1) = worker.request("users", &[]);
    let (mut second, a2) = worker.request("users", &[]);
    assert_eq!((a1, a2), (Action::Continue, Action::Continue));
    assert_eq!(worker.stat("route.users.active_requests"), 2);
    let (mut third, a3) = worker.request("users", &[]);
    assert_eq!(a3, Action::Pause);
    assert_eq!(
        worker.host().last_reply().unwrap().details,
        "marty_max_concurrent_requests"
    );
    third.on_delete();
    assert_eq!(worker.stat("route.users.concurrency_rejected_total"), 1);
    assert_eq!(worker.stat("route.users.active_requests"), 2);
    worker.respond(&mut first, "200");
    // A stream that ends without a response (client reset) gives its slot back too.
    second.on_delete();
    assert_eq!(worker.stat("route.users.active_requests"), 0);
    assert_eq!(worker.call("users", "200"), Action::Continue);
}

const FAULTS: &str = r#"{
  "failure_injection": {
    "enabled": true, "base_failure_rate": 0.0,
    "abort": {"http_status": 418, "grpc_status": "RESOURCE_EXHAUSTED"},
    "delay": {"duration": "100ms", "rate": 0.0, "max": "1s"},
    "max_active_faults": 1,
    "header_trigger": {"enabled": true, "token": "s3cret"}
  },
  "routes": {"users": {}}
}"#;

#[test]
fn an_injected_abort_replies_locally_and_strips_the_trigger_and_token() {
    let (_, worker) = start(FAULTS);
    let (_s, action) = worker.request(
        "users",
        &[
            ("x-failure-inject", "true"),
            ("x-failure-inject-token", "s3cret"),
        ],
    );
    assert_eq!(action, Action::Pause);
    let reply = worker.host().last_reply().unwrap();
    assert_eq!((reply.status, reply.details), (418, "marty_fault_abort"));
    assert_eq!(worker.stat("route.users.faults_aborted_total"), 1);
    assert_eq!(
        worker
            .host()
            .header_value(Map::RequestHeaders, "x-failure-inject"),
        None
    );
    assert_eq!(
        worker
            .host()
            .header_value(Map::RequestHeaders, "x-failure-inject-token"),
        None
    );
    assert!(worker
        .host()
        .filter_state
        .borrow()
        .contains(&("marty.resilience.fault_trigger".into(), "header".into())));
}

#[test]
fn a_grpc_abort_answers_with_the_configured_grpc_status() {
    let (_, worker) = start(FAULTS);
    let (_s, action) = worker.request(
        "users",
        &[
            ("content-type", "application/grpc"),
            ("x-failure-inject", "true"),
            ("x-failure-inject-token", "s3cret"),
        ],
    );
    assert_eq!(action, Action::Pause);
    assert_eq!(worker.host().last_reply().unwrap().grpc_status, Some(8));
}

#[test]
fn a_trigger_without_the_token_is_refused_and_counted() {
    let (_, worker) = start(FAULTS);
    let (mut s, action) = worker.request("users", &[("x-failure-inject", "true")]);
    assert_eq!(action, Action::Continue);
    assert_eq!(worker.stat("route.users.fault_header_rejected_total"), 1);
    assert_eq!(
        worker
            .host()
            .header_value(Map::RequestHeaders, "x-failure-inject"),
        None
    );
    worker.respond(&mut s, "200");
    assert!(worker.host().replies.borrow().is_empty());
}

#[test]
fn an_injected_delay_holds_the_request_and_the_tick_resumes_it() {
    let (envoy, worker) = start(FAULTS);
    let (mut s, action) = worker.request(
        "users",
        &[
            ("x-failure-inject", "delay=50ms"),
            ("x-failure-inject-token", "s3cret"),
        ],
    );
    assert_eq!(action, Action::Pause);
    assert_eq!(worker.host().tick_period_ms.get(), FAST_TICK_MS);
    assert_eq!(worker.stat("route.users.active_faults"), 1);
    envoy.advance_ms(10);
    worker.plugin.tick();
    assert!(worker.host().resumed.borrow().is_empty());
    envoy.advance_ms(45);
    worker.plugin.tick();
    assert_eq!(*worker.host().resumed.borrow(), [1]);
    assert_eq!(worker.host().tick_period_ms.get(), TICK_MS);
    worker.respond(&mut s, "200");
    assert_eq!(worker.stat("route.users.faults_delayed_total"), 1);
    assert_eq!(worker.stat("route.users.active_faults"), 0);
}

#[test]
fn holding_more_requests_does_not_restart_the_fast_tick() {
    let (_, worker) =
        start(r#"{"failure_injection": {"enabled": true, "header_trigger": {"enabled": true}}}"#);
    let mut held = Vec::new();
    for _ in 0..5 {
        let (s, action) = worker.request("", &[("x-failure-inject", "delay=1s")]);
        assert_eq!(action, Action::Pause);
        held.push(s);
    }
    // Envoy restarts its timer whenever the period is set: set once, not per held request.
    let sets = worker
        .host()
        .calls
        .borrow()
        .iter()
        .filter(|c| **c == "set_tick_period")
        .count();
    assert_eq!(sets, 0, "the last request set no period");
    assert_eq!(worker.plugin.scheduler.len(), 5);
}

#[test]
fn a_client_that_leaves_while_held_is_never_resumed_and_frees_its_fault_slot() {
    let (envoy, worker) = start(FAULTS);
    let (mut s, _) = worker.request(
        "users",
        &[
            ("x-failure-inject", "delay=50ms"),
            ("x-failure-inject-token", "s3cret"),
        ],
    );
    s.on_delete();
    envoy.advance_ms(100);
    worker.plugin.tick();
    assert!(worker.host().resumed.borrow().is_empty());
    assert_eq!(worker.stat("route.users.active_faults"), 0);
}

#[test]
fn max_active_faults_caps_faults_in_progress() {
    let (_, worker) = start(FAULTS);
    let trigger = [
        ("x-failure-inject", "delay=1s"),
        ("x-failure-inject-token", "s3cret"),
    ];
    let (_held, first) = worker.request("users", &trigger);
    assert_eq!(first, Action::Pause);
    let (mut second, action) = worker.request("users", &trigger);
    assert_eq!(action, Action::Continue, "over the cap: not injected");
    assert_eq!(worker.stat("route.users.faults_overflow_total"), 1);
    assert_eq!(worker.stat("route.users.active_faults"), 1);
    worker.respond(&mut second, "200");
}

#[test]
fn a_configured_rate_aborts_by_the_draw() {
    let (_, worker) =
        start(r#"{"failure_injection": {"enabled": true, "base_failure_rate": 0.5}}"#);
    worker
        .host()
        .draws
        .borrow_mut()
        .extend([0.4, 0.9, 0.6, 0.9]);
    assert_eq!(worker.call("", "200"), Action::Pause);
    assert_eq!(worker.call("", "200"), Action::Continue);
}

const RETRIES: &str = r#"{
  "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": "1s"},
  "retry": {"enabled": true, "max_attempts": 3, "retry_on": ["5xx"], "per_try_timeout": "2s"},
  "routes": {"users": {}}
}"#;

const RETRIES_WITH_GRPC: &str = r#"{
  "retry": {"enabled": true, "max_attempts": 3, "retry_on": ["5xx"], "grpc_retry_on": ["unavailable"]},
  "routes": {"users": {}}
}"#;

#[test]
fn the_retry_policy_becomes_envoy_retry_headers_and_client_headers_are_removed() {
    let (_, worker) = start(RETRIES);
    let (mut s, action) = worker.request(
        "users",
        &[
            ("x-envoy-max-retries", "100"),
            ("x-envoy-attempt-count", "9"),
            ("x-envoy-retriable-header-names", "x-retry-me"),
        ],
    );
    assert_eq!(action, Action::Continue);
    let header = |n| worker.host().header_value(Map::RequestHeaders, n);
    assert_eq!(header("x-envoy-max-retries").as_deref(), Some("2"));
    assert_eq!(header("x-envoy-retry-on").as_deref(), Some("5xx"));
    assert_eq!(
        header("x-envoy-upstream-rq-per-try-timeout-ms").as_deref(),
        Some("2000")
    );
    // Nothing reads a client's attempt count (the upstream placement asks Envoy): left alone,
    // a host call saved.
    assert_eq!(header("x-envoy-attempt-count").as_deref(), Some("9"));
    // Bounded by the max-retries the filter sets: left alone (a host call saved).
    assert_eq!(
        header("x-envoy-retriable-header-names").as_deref(),
        Some("x-retry-me")
    );
    worker.host().set_headers(
        Map::ResponseHeaders,
        &[(":status", "200"), ("x-envoy-attempt-count", "3")],
    );
    s.on_response_headers(true);
    s.on_delete();
    assert_eq!(worker.stat("route.users.retry_attempts_total"), 2);
}

#[test]
fn a_half_open_probe_goes_out_with_retries_switched_off() {
    let (envoy, worker) = start(RETRIES);
    worker.calls("users", "503", 2);
    envoy.advance_ms(1_001);
    let (_probe, action) = worker.request("users", &[]);
    assert_eq!(action, Action::Continue);
    assert_eq!(
        worker
            .host()
            .header_value(Map::RequestHeaders, "x-envoy-max-retries")
            .as_deref(),
        Some("0")
    );
    assert_eq!(
        worker.stat("route.users.retries_suppressed_breaker_total"),
        1
    );
}

#[test]
fn a_spent_budget_switches_retries_off_until_it_refills() {
    let (envoy, worker) = start(
        r#"{"retry": {"enabled": true, "budget": {"ratio": 0.1, "min_retries_per_second": 0}}}"#,
    );
    // Ten requests that each retried twice: far past a 10% budget.
    for _ in 0..10 {
        let (mut s, _) = worker.request("", &[]);
        worker.host().set_headers(
            Map::ResponseHeaders,
            &[(":status", "200"), ("x-envoy-attempt-count", "3")],
        );
        s.on_response_headers(true);
        s.on_delete();
    }
    envoy.advance_ms(300);
    worker.plugin.tick();
    let (_s, _) = worker.request("", &[]);
    assert_eq!(
        worker
            .host()
            .header_value(Map::RequestHeaders, "x-envoy-max-retries")
            .as_deref(),
        Some("0")
    );
    assert_eq!(
        worker.stat("route.upstream.retries_suppressed_budget_total"),
        1
    );
}

#[test]
fn outcomes_follow_the_classification_grpc_status_in_trailers() {
    let (_, worker) = start(BREAKER);
    let (mut s, _) = worker.request("users", &[("content-type", "application/grpc")]);
    worker
        .host()
        .set_headers(Map::ResponseHeaders, &[(":status", "200")]);
    s.on_response_headers(false);
    worker
        .host()
        .set_headers(Map::ResponseTrailers, &[("grpc-status", "14")]);
    s.on_response_trailers();
    s.on_delete();
    assert_eq!(worker.stat("route.users.failure_total"), 1);
    assert_eq!(worker.stat("route.users.success_total"), 0);
}

#[test]
fn a_stream_reset_before_a_response_says_nothing_about_the_upstream() {
    let (_, worker) = start(BREAKER);
    for _ in 0..5 {
        let (mut s, _) = worker.request("users", &[]);
        s.on_delete();
    }
    assert_eq!(worker.stat("route.users.failure_total"), 0);
    assert_eq!(worker.stat("route.users.circuit_state"), 0);
    assert_eq!(worker.stat("route.users.active_requests"), 0);
}

#[test]
fn the_health_endpoint_answers_allowed_peers_from_the_shared_records() {
    let (_, worker) = start(
        r#"{"health": {"enabled": true}, "circuit_breaker": {"failure_threshold": 1}, "routes": {"users": {}}}"#,
    );
    worker.call("users", "503");
    worker
        .host()
        .set_property("source.address", Some(b"127.0.0.1:5555"));
    worker.host().set_property("xds.route_name", Some(b""));
    worker
        .host()
        .new_stream(&[(":method", "GET"), (":path", "/resilience/health")]);
    let mut s = Stream::new(99, worker.plugin.clone());
    assert_eq!(s.on_request_headers(true), Action::Pause);
    let reply = worker.host().last_reply().unwrap();
    assert_eq!(reply.status, 503);
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["routes"]["users"]["state"], "open");
    // A peer outside allowed_sources gets a 404, as if there were no endpoint.
    worker
        .host()
        .set_property("source.address", Some(b"10.1.2.3:5555"));
    worker
        .host()
        .new_stream(&[(":method", "GET"), (":path", "/resilience/health")]);
    let mut s = Stream::new(100, worker.plugin.clone());
    assert_eq!(s.on_request_headers(true), Action::Pause);
    assert_eq!(worker.host().last_reply().unwrap().status, 404);
}

// --- Buckets: one per named route or destination (issue: breakers where users expect them) ---

const PER_NAME: &str = r#"{"circuit_breaker": {"failure_threshold": 2}}"#;

#[test]
fn unlisted_named_routes_each_get_their_own_breaker() {
    let (_, worker) = start(PER_NAME);
    worker.calls("orders", "503", 2);
    assert_eq!(worker.stat("route.orders.circuit_state"), 1);
    assert_eq!(worker.call("counted", "200"), Action::Continue);
    assert_eq!(worker.stat("route.counted.circuit_state"), 0);
    assert_eq!(worker.stat("route.counted.success_total"), 1);
}

#[test]
fn istio_default_routes_are_bucketed_by_destination_cluster() {
    let (_, worker) = start(PER_NAME);
    let reviews = "outbound|8080||reviews.default.svc.cluster.local";
    let ratings = "outbound|9080||ratings.default.svc.cluster.local";
    for _ in 0..2 {
        let (mut s, _) = worker.request_to("default", Some(reviews), &[]);
        worker.respond(&mut s, "503");
    }
    let (_s, action) = worker.request_to("default", Some(reviews), &[]);
    assert_eq!(action, Action::Pause, "reviews is open");
    let (mut s, action) = worker.request_to("default", Some(ratings), &[]);
    assert_eq!(action, Action::Continue, "ratings is not");
    worker.respond(&mut s, "200");
    assert_eq!(
        worker.stat("route.outbound_8080__reviews_default_svc_cluster_local.circuit_opened_total"),
        1
    );
    // Unnamed routes too.
    let (_s, action) = worker.request_to("", Some(reviews), &[]);
    assert_eq!(action, Action::Pause);
}

#[test]
fn a_routes_entry_keyed_by_cluster_applies_and_bucket_by_cluster_shares_across_routes() {
    let (_, worker) = start(
        r#"{"bucket_by": "cluster", "circuit_breaker": {"failure_threshold": 5},
            "routes": {"backend": {"circuit_breaker": {"failure_threshold": 1}}}}"#,
    );
    let (mut s, _) = worker.request_to("users", Some("backend"), &[]);
    worker.respond(&mut s, "503");
    let (_s, action) = worker.request_to("orders", Some("backend"), &[]);
    assert_eq!(
        action,
        Action::Pause,
        "one breaker for the cluster, across routes"
    );
    assert_eq!(worker.stat("route.backend.circuit_state"), 1);
}

#[test]
fn a_request_with_no_upstream_cluster_is_counted_by_no_breaker() {
    let (envoy, worker) = start(PER_NAME);
    for route in ["", "redirect", "default"] {
        let (mut s, action) = worker.request_to(route, None, &[]);
        assert_eq!(action, Action::Continue);
        worker.respond(&mut s, "404");
    }
    assert!(
        envoy.stat_names().iter().all(|n| !n.contains(".route.")),
        "no bucket stats: {:?}",
        envoy.stat_names()
    );
}

#[test]
fn requests_and_successes_reach_the_counters_on_the_tick_and_say_when_they_are_pending() {
    let (envoy, worker) = start(BREAKER);
    worker.calls("users", "200", 3);
    // The last request (the call log is per stream) moved no counter and, with no
    // `max_concurrent_requests`, not the `active_requests` gauge either:
    // `counters_unflushed` moved with the first.
    assert_eq!(worker.host().count("increment_metric"), 0);
    let read = |name: &str| envoy.stat(&format!("marty_resilience.{name}"));
    assert_eq!(read("route.users.requests_total"), 0, "not before the tick");
    assert_eq!(read("counters_unflushed"), 1, "this worker holds counts");
    // An uncapped in-flight request reaches the gauge on the tick, and its end on the next.
    let (mut in_flight, _) = worker.request("users", &[]);
    assert_eq!(
        read("route.users.active_requests"),
        0,
        "not before the tick"
    );
    envoy.advance_ms(u64::from(TICK_MS));
    worker.plugin.tick();
    assert_eq!(read("route.users.active_requests"), 1);
    worker.respond(&mut in_flight, "200");
    drop(in_flight);
    assert_eq!(read("route.users.active_requests"), 1, "until the tick");
    assert_eq!(read("counters_unflushed"), 1);
    envoy.advance_ms(u64::from(TICK_MS));
    worker.plugin.tick();
    assert_eq!(read("route.users.active_requests"), 0);
    assert_eq!(read("route.users.requests_total"), 4);
    assert_eq!(read("route.users.success_total"), 4);
    // A failure is counted at once.
    worker.call("users", "503");
    assert_eq!(read("route.users.failure_total"), 1);
    envoy.advance_ms(u64::from(TICK_MS));
    worker.plugin.tick();
    assert_eq!(read("route.users.requests_total"), 5);
    assert_eq!(read("route.users.success_total"), 4);
    // The +1 stays until a tick finds nothing new (so a trap before then is covered by the
    // VM's lease).
    assert_eq!(read("counters_unflushed"), 1);
    envoy.advance_ms(u64::from(TICK_MS));
    worker.plugin.tick();
    assert_eq!(read("counters_unflushed"), 0);
    // A plugin that goes away (configuration replaced) flushes what it still holds.
    worker.call("users", "200");
    assert_eq!(read("counters_unflushed"), 1);
    drop(worker);
    assert_eq!(read("route.users.requests_total"), 6);
    assert_eq!(read("route.users.success_total"), 5);
    assert_eq!(read("counters_unflushed"), 0);
}

#[test]
fn a_capped_route_moves_its_in_flight_gauge_at_once() {
    let (envoy, worker) =
        start(r#"{"circuit_breaker": {"max_concurrent_requests": 5}, "routes": {"users": {}}}"#);
    let (mut s, _) = worker.request("users", &[]);
    assert_eq!(
        envoy.stat("marty_resilience.route.users.active_requests"),
        1
    );
    worker.respond(&mut s, "200");
    assert_eq!(
        envoy.stat("marty_resilience.route.users.active_requests"),
        0
    );
}

#[test]
fn an_uncapped_slot_held_past_the_idle_timeout_keeps_its_bucket_and_comes_back() {
    let (envoy, worker) = start(r#"{"bucket_idle_timeout": "1s"}"#);
    let (mut long_stream, _) = worker.request("adhoc", &[]);
    let tick = || {
        envoy.advance_ms(u64::from(TICK_MS));
        worker.plugin.tick();
    };
    // Flushed (+1); a bucket whose slots this VM holds is not aged out while the stream goes on.
    for _ in 0..12 {
        tick();
    }
    let active = || envoy.stat("marty_resilience.route.adhoc.active_requests");
    assert_eq!(active(), 1);
    assert!(worker.plugin.bucket_policy("adhoc").is_some(), "kept");
    worker.respond(&mut long_stream, "200");
    tick();
    assert_eq!(active(), 0);
    // Then it ages out like any idle bucket.
    for _ in 0..12 {
        tick();
    }
    assert!(worker.plugin.bucket_policy("adhoc").is_none(), "aged out");
}

#[test]
fn past_max_buckets_new_names_share_the_overflow_bucket() {
    let (envoy, worker) = start(r#"{"max_buckets": 2}"#);
    for route in ["a", "b", "c", "d", "c"] {
        assert_eq!(worker.call(route, "200"), Action::Continue);
    }
    assert_eq!(worker.stat("route.a.requests_total"), 1);
    assert_eq!(worker.stat("route.b.requests_total"), 1);
    assert_eq!(worker.stat("route._overflow_.requests_total"), 3);
    assert_eq!(
        worker.stat("buckets_overflow_total"),
        2,
        "c and d, once each"
    );
    // A second worker agrees through the shared registry.
    let other = Worker::new(&envoy, r#"{"max_buckets": 2}"#);
    other.call("e", "200");
    assert_eq!(other.stat("route._overflow_.requests_total"), 4);
}

#[test]
fn two_stat_prefixes_share_no_stat_and_no_breaker() {
    let envoy = FakeEnvoy::new();
    let a = Worker::new(
        &envoy,
        r#"{"stat_prefix": "edge_a", "circuit_breaker": {"failure_threshold": 1}}"#,
    );
    let b = Worker::new(
        &envoy,
        r#"{"stat_prefix": "edge_b", "circuit_breaker": {"failure_threshold": 1}}"#,
    );
    a.call("users", "503");
    assert_eq!(envoy.stat("edge_a.route.users.circuit_state"), 1);
    assert_eq!(b.call("users", "200"), Action::Continue);
    assert_eq!(envoy.stat("edge_b.route.users.circuit_state"), 0);
    assert_eq!(envoy.stat("marty_resilience.route.users.requests_total"), 0);
}

#[test]
fn rejections_tell_a_calling_envoy_not_to_retry_unless_switched_off() {
    let (_, worker) = start(r#"{"circuit_breaker": {"failure_threshold": 1}}"#);
    worker.call("users", "503");
    worker.call("users", "200");
    let reply = worker.host().last_reply().unwrap();
    let has = |reply: &marty_resilience_core::host::LocalReply, name: &str| {
        reply.headers.iter().any(|(n, v)| *n == name && v == "true")
    };
    assert!(has(&reply, "x-envoy-ratelimited") && has(&reply, "x-envoy-overloaded"));

    let envoy = FakeEnvoy::new();
    let off = Worker::new(
        &envoy,
        r#"{"prevent_caller_retries": false, "circuit_breaker": {"failure_threshold": 1}}"#,
    );
    off.call("users", "503");
    off.call("users", "200");
    let reply = off.host().last_reply().unwrap();
    assert!(!has(&reply, "x-envoy-ratelimited") && !has(&reply, "x-envoy-overloaded"));
}

#[test]
fn a_bulkhead_rejection_says_it_is_one() {
    let (_, worker) = start(r#"{"circuit_breaker": {"max_concurrent_requests": 1}}"#);
    let (_held, _) = worker.request("users", &[]);
    let (_s, action) = worker.request("users", &[]);
    assert_eq!(action, Action::Pause);
    let reply = worker.host().last_reply().unwrap();
    assert!(reply
        .headers
        .iter()
        .any(|(n, v)| *n == "x-marty-bulkhead" && v == "full"));
    assert!(reply.headers.iter().all(|(n, _)| *n != "x-marty-circuit"));
}

#[test]
fn with_health_route_only_that_route_reads_its_path() {
    let (_, worker) = start(r#"{"health": {"enabled": true, "route": "marty_health"}}"#);
    worker.call("users", "200");
    let (mut s, _) = worker.request("users", &[]);
    worker.respond(&mut s, "200");
    assert_eq!(
        worker.host().count("get_header"),
        1,
        ":status only, not :path"
    );
    worker
        .host()
        .set_property("source.address", Some(b"127.0.0.1:1"));
    let (_s, action) = worker.request_to("marty_health", None, &[]);
    // The Worker sends `:path: /`: not the endpoint, so it goes on.
    assert_eq!(action, Action::Continue);
    worker
        .host()
        .set_property("xds.route_name", Some(b"marty_health"));
    worker
        .host()
        .new_stream(&[(":method", "GET"), (":path", "/resilience/health")]);
    let mut s = Stream::new(500, worker.plugin.clone());
    assert_eq!(s.on_request_headers(true), Action::Pause);
    assert_eq!(worker.host().last_reply().unwrap().status, 200);
}

#[test]
fn enable_metrics_false_skips_the_per_request_counters_not_the_gauges() {
    let (_, worker) =
        start(r#"{"circuit_breaker": {"enable_metrics": false, "failure_threshold": 1}}"#);
    let (mut s, _) = worker.request("users", &[]);
    assert_eq!(worker.stat("route.users.active_requests"), 1);
    worker.respond(&mut s, "503");
    assert_eq!(worker.stat("route.users.requests_total"), 0);
    assert_eq!(worker.stat("route.users.failure_total"), 0);
    assert_eq!(worker.stat("route.users.circuit_opened_total"), 1);
    assert_eq!(worker.stat("route.users.circuit_state"), 1);
}

#[test]
fn the_guides_retry_section_retries_and_enable_circuit_breaker_false_retries_probes() {
    let (envoy, worker) = start(
        r#"{"circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 1},
            "retry": {"max_attempts": 5, "base_delay": 0.2, "max_delay": 60.0,
                      "backoff_strategy": "exponential_jitter", "enable_adaptive_delays": true,
                      "enable_circuit_breaker": false}}"#,
    );
    let (mut s, _) = worker.request("users", &[]);
    assert_eq!(
        worker
            .host()
            .header_value(Map::RequestHeaders, "x-envoy-max-retries")
            .as_deref(),
        Some("4"),
        "a retry section without `enabled` retries"
    );
    worker.respond(&mut s, "503");
    envoy.advance_ms(1_001);
    let (_probe, action) = worker.request("users", &[]);
    assert_eq!(action, Action::Continue);
    assert_eq!(
        worker
            .host()
            .header_value(Map::RequestHeaders, "x-envoy-max-retries")
            .as_deref(),
        Some("4"),
        "probes retried when enable_circuit_breaker is false"
    );
}

// --- Reliability ------------------------------------------------------------------------------

#[test]
fn a_configuration_whose_stats_envoy_does_not_keep_is_refused() {
    let envoy = FakeEnvoy::new();
    envoy
        .excluded_stats
        .borrow_mut()
        .push("marty_resilience.".to_string());
    let settings = Settings::parse(b"{}", &[]).unwrap();
    let refused = Plugin::new(FakeHost::new(&envoy), settings)
        .err()
        .expect("refused");
    assert!(refused.contains("stats_matcher"), "{refused}");
    // Another instance's prefix is kept: it runs.
    let settings = Settings::parse(br#"{"stat_prefix": "kept"}"#, &[]).unwrap();
    assert!(Plugin::new(FakeHost::new(&envoy), settings).is_ok());
}

#[test]
fn a_local_reply_of_another_filter_is_no_upstream_failure_and_cannot_close_a_probe() {
    let (envoy, worker) = start(BREAKER);
    worker
        .host()
        .set_property("response.code_details", Some(b"fault_filter_abort"));
    for _ in 0..5 {
        assert_eq!(worker.call("users", "503"), Action::Continue);
    }
    assert_eq!(
        worker.stat("route.users.circuit_state"),
        0,
        "not the upstream's 503s"
    );
    assert_eq!(worker.stat("route.users.failure_total"), 0);
    // The router's own replies for a failed upstream still count.
    worker.host().set_property(
        "response.code_details",
        Some(b"upstream_reset_before_response_started{connection_failure}"),
    );
    worker.calls("users", "503", 3);
    assert_eq!(worker.stat("route.users.circuit_state"), 1);
    // A probe answered locally with a 200 does not close the breaker.
    envoy.advance_ms(1_001);
    worker
        .host()
        .set_property("response.code_details", Some(b"direct_response"));
    worker.calls("users", "200", 3);
    assert_eq!(worker.stat("route.users.circuit_closed_total"), 0);
}

#[test]
fn with_count_attempts_the_placement_before_the_router_counts_no_outcome() {
    let (_, worker) = start(r#"{"retry": {"enabled": true, "count_attempts": true}}"#);
    worker.call("users", "503");
    worker.call("users", "200");
    assert_eq!(worker.stat("route.users.requests_total"), 2);
    assert_eq!(
        worker.stat("route.users.failure_total"),
        0,
        "counted per try upstream"
    );
    assert_eq!(worker.stat("route.users.success_total"), 0);
    assert!(worker
        .plugin
        .settings
        .notices()
        .iter()
        .any(|(_, line)| line.contains("count_attempts")));
}

#[test]
fn the_upstream_placement_holds_retries_but_does_not_count_them() {
    let (_, worker) = start(
        r#"{"mode": "upstream", "retry": {"enabled": true, "max_attempts": 3,
            "backoff_strategy": "fixed", "base_delay": 0.1, "max_delay": 0.1}}"#,
    );
    let attempt = |n: u64| {
        worker
            .host()
            .set_property("upstream.request_attempt_count", Some(&n.to_le_bytes()));
    };
    attempt(2);
    let (_s, action) = worker.request("users", &[]);
    assert_eq!(action, Action::Pause, "held for the backoff");
    assert_eq!(worker.stat("route.users.retry_attempts_total"), 0);
    // The try number is Envoy's: a client-sent attempt count does not hold a first try.
    attempt(1);
    let (_s, action) = worker.request("users", &[("x-envoy-attempt-count", "3")]);
    assert_eq!(action, Action::Continue);
    assert_eq!(worker.plugin.scheduler.len(), 1);
    // Nor can an absurd try number hold a request past the last retry's delay.
    attempt(4_000_000_000);
    let (_s, action) = worker.request("users", &[]);
    assert_eq!(action, Action::Pause);
    assert_eq!(worker.plugin.scheduler.len(), 2);
}

#[test]
fn a_breaker_the_configuration_disables_is_reset_so_health_recovers() {
    let envoy = FakeEnvoy::new();
    let before = Worker::new(
        &envoy,
        r#"{"routes": {"users": {"circuit_breaker": {"failure_threshold": 1}}}}"#,
    );
    before.call("users", "503");
    assert_eq!(before.stat("route.users.circuit_state"), 1);
    // A configuration update (new VMs, same shared data) disables it.
    let after = Worker::new(
        &envoy,
        r#"{"routes": {"users": {"circuit_breaker": {"enabled": false}}}}"#,
    );
    envoy.advance_ms(300);
    after.plugin.tick();
    assert_eq!(after.stat("route.users.circuit_state"), 0);
    assert_eq!(after.stat("route.users.circuit_closed_total"), 1);
}

#[test]
fn a_bucket_nobody_uses_is_forgotten_after_bucket_idle_timeout() {
    let envoy = FakeEnvoy::new();
    let config = r#"{"bucket_idle_timeout": "4s", "health": {"enabled": true},
        "circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 1}}"#;
    let worker = Worker::new(&envoy, config);
    worker.call("renamed", "503");
    envoy.advance_ms(1_100);
    worker.plugin.tick();
    assert_eq!(
        worker.stat("route.renamed.circuit_state"),
        2,
        "HALF_OPEN, then no traffic"
    );
    let health = |w: &Worker| {
        w.host()
            .set_property("source.address", Some(b"127.0.0.1:1"));
        w.host()
            .new_stream(&[(":method", "GET"), (":path", "/resilience/health")]);
        let mut s = Stream::new(900, w.plugin.clone());
        s.on_request_headers(true);
        w.host().last_reply().unwrap().status
    };
    assert_eq!(health(&worker), 503);
    // Ticks go on without requests; within 1.25 x the idle timeout it is forgotten.
    for _ in 0..25 {
        envoy.advance_ms(250);
        worker.plugin.tick();
    }
    assert_eq!(worker.stat("route.renamed.circuit_state"), 0);
    assert_eq!(health(&worker), 200);
    // Another worker's health agrees: the registry no longer lists it.
    let other = Worker::new(&envoy, config);
    assert_eq!(health(&other), 200);
    // Used again, it starts afresh, CLOSED.
    assert_eq!(worker.call("renamed", "200"), Action::Continue);
}

#[test]
fn a_bucket_in_use_is_never_forgotten() {
    let (envoy, worker) = start(
        r#"{"bucket_idle_timeout": "2s", "circuit_breaker": {"failure_threshold": 1,
            "recovery_timeout": 60}}"#,
    );
    worker.call("busy", "503");
    for _ in 0..40 {
        envoy.advance_ms(250);
        worker.plugin.tick();
        worker.call("busy", "200");
    }
    assert_eq!(
        worker.stat("route.busy.circuit_state"),
        1,
        "still OPEN: in use"
    );
}

#[test]
fn a_streaming_probe_is_settled_by_its_response_headers() {
    let (envoy, worker) = start(
        r#"{"circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 1,
            "half_open_success_threshold": 1, "half_open_probe_timeout": 2}}"#,
    );
    worker.call("stream", "503");
    envoy.advance_ms(1_001);
    let (mut probe, action) = worker.request("stream", &[("content-type", "application/grpc")]);
    assert_eq!(action, Action::Continue);
    worker
        .host()
        .set_headers(Map::ResponseHeaders, &[(":status", "200")]);
    probe.on_response_headers(false);
    // Settled while the stream goes on: CLOSED now, not when the stream ends.
    assert_eq!(worker.stat("route.stream.circuit_closed_total"), 1);
    assert_eq!(
        worker.stat("route.stream.active_requests"),
        1,
        "still in flight"
    );
    envoy.advance_ms(60_000);
    probe.on_response_body(false);
    worker
        .host()
        .set_headers(Map::ResponseTrailers, &[("grpc-status", "0")]);
    probe.on_response_trailers();
    probe.on_delete();
    assert_eq!(worker.stat("route.stream.active_requests"), 0);
    assert_eq!(worker.stat("route.stream.success_total"), 1, "counted once");
    assert_eq!(worker.stat("route.stream.circuit_state"), 0);
}
