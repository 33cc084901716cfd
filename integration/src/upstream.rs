//! An in-process upstream whose behaviour each request commands through headers, so a
//! test states the failure it wants next to the request that should meet it.
//!
//! | header | effect |
//! | --- | --- |
//! | `x-upstream-status: <code>` | reply with this HTTP status (default 200) |
//! | `x-upstream-delay-ms: <ms>` | wait this long before replying (counts as in flight) |
//! | `x-upstream-reset: 1` | never reply: h1 closes the connection, h2 resets the stream |
//! | `x-upstream-fail-first: <k>` | only the first k requests with the same `x-request-id` (else `x-test-key`) fail; later ones get a plain 200 / grpc-status 0 |
//! | `x-upstream-grpc-status: <n>` | gRPC requests: grpc-status in the trailers (default 0; 14 while failing under fail-first) |
//! | `x-upstream-grpc-message: <s>` | gRPC requests: grpc-message |
//! | `x-upstream-grpc-trailers-only: 1` | gRPC requests: status in the headers, no body |
//! | `x-upstream-stream-ms: <ms>` | gRPC requests: a server stream: headers and a first message at once, the trailers after `<ms>` |
//!
//! "Failing" commands (status, reset, grpc-status) always apply without
//! `x-upstream-fail-first`; with it they apply to the first k attempts only, which is how
//! retry tests get "fails twice, then succeeds". A gRPC request (content-type
//! `application/grpc*`) gets HTTP 200 with a gRPC reply unless `x-upstream-status` is
//! given, which then simulates a non-gRPC hop answering with that status.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// What the upstream saw of one request, recorded on arrival (before any delay).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub at: Instant,
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// Lowercase names, in arrival order; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub version: Version,
    /// Value of `x-test-key`, "" if absent.
    pub key: String,
}

impl RecordedRequest {
    /// First value of a header (name is case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    requests: Vec<RecordedRequest>,
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
    /// Attempts seen per fail-first id.
    attempts: HashMap<String, u64>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    // A panicking handler must not hide every later assertion behind a poison error.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Test upstream on 127.0.0.1, serving HTTP/1.1 and h2c (prior knowledge) on one port.
/// Owns its runtime so tests stay plain `#[test]` functions; dropping it stops serving.
pub struct Upstream {
    port: u16,
    state: Shared,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("upstream")
            .enable_all()
            .build()
            .expect("upstream: build tokio runtime");
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("upstream: bind 127.0.0.1:0");
        std_listener
            .set_nonblocking(true)
            .expect("upstream: set listener non-blocking");
        let port = std_listener
            .local_addr()
            .expect("upstream: listener local_addr")
            .port();
        let state: Shared = Arc::default();

        let accept_state = state.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener)
                .expect("upstream: register listener with tokio");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // EMFILE and the like: back off rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    // Errors here are resets we asked for, or peers going away: not news.
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });

        Upstream {
            port,
            state,
            runtime: Some(runtime),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests received with this `x-test-key` ("" = without one).
    pub fn count(&self, key: &str) -> usize {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.key == key)
            .count()
    }

    pub fn total(&self) -> usize {
        lock(&self.state).requests.len()
    }

    /// Every request received, in arrival order.
    pub fn all_requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    pub fn requests(&self, key: &str) -> Vec<RecordedRequest> {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.key == key)
            .cloned()
            .collect()
    }

    /// Highest number of requests with this key that were in progress at once (delay
    /// included): what a concurrency limit in front of the upstream let through.
    pub fn max_in_flight(&self, key: &str) -> usize {
        lock(&self.state)
            .max_in_flight
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Requests currently in progress with this key.
    pub fn in_flight(&self, key: &str) -> usize {
        lock(&self.state).in_flight.get(key).copied().unwrap_or(0)
    }

    /// Forgets recorded requests, in-flight maxima and fail-first attempts (requests
    /// still in progress keep counting as in flight).
    pub fn reset_counts(&self) {
        let mut s = lock(&self.state);
        s.requests.clear();
        s.attempts.clear();
        let current = s.in_flight.clone();
        s.max_in_flight = current;
    }

    /// Polls until `count(key) >= n`; panics after `timeout` with what was seen.
    #[track_caller]
    pub fn wait_for_count(&self, key: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.count(key);
            if seen >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "upstream: waited {timeout:?} for {n} request(s) with x-test-key {key:?}, saw {seen}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping the tasks closes the listener and every open connection.
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// The error a handler returns to make hyper abort: h1 closes the connection without a
/// response, h2 sends RST_STREAM. Envoy sees either as an upstream reset.
#[derive(Debug)]
struct CommandedReset;

impl fmt::Display for CommandedReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reset commanded by x-upstream-reset")
    }
}

impl std::error::Error for CommandedReset {}

/// Decrements the key's in-flight count however the handler ends (reply, reset, or the
/// future being dropped because the peer went away).
struct InFlight {
    state: Shared,
    key: String,
}

impl InFlight {
    fn enter(state: &Shared, key: &str) -> InFlight {
        let mut s = lock(state);
        let now = {
            let n = s.in_flight.entry(key.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        let max = s.max_in_flight.entry(key.to_string()).or_insert(0);
        *max = (*max).max(now);
        InFlight {
            state: state.clone(),
            key: key.to_string(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        if let Some(n) = s.in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn parse_header<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    header(headers, name).and_then(|v| v.trim().parse().ok())
}

async fn handle(
    state: Shared,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, CommandedReset> {
    let at = Instant::now();
    let h = req.headers().clone();
    let key = header(&h, "x-test-key").unwrap_or("").to_string();
    let _in_flight = InFlight::enter(&state, &key);

    let failing = {
        let mut s = lock(&state);
        s.requests.push(RecordedRequest {
            at,
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| req.uri().path().to_string()),
            headers: h
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            version: req.version(),
            key: key.clone(),
        });
        match parse_header::<u64>(&h, "x-upstream-fail-first") {
            None => true,
            Some(k) => {
                let id = header(&h, "x-request-id").unwrap_or(&key).to_string();
                let seen = s.attempts.entry(id).or_insert(0);
                *seen += 1;
                *seen <= k
            }
        }
    };
    let fail_first = h.contains_key("x-upstream-fail-first");

    // Read the request body before answering so h2 never sees a half-read stream.
    let _ = req.into_body().collect().await;

    if let Some(ms) = parse_header::<u64>(&h, "x-upstream-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    if failing && header(&h, "x-upstream-reset") == Some("1") {
        return Err(CommandedReset);
    }

    let explicit_status = parse_header::<u16>(&h, "x-upstream-status");
    let is_grpc = header(&h, "content-type").is_some_and(|ct| ct.starts_with("application/grpc"));

    if is_grpc && !(failing && explicit_status.is_some()) {
        let code = if failing {
            parse_header::<u32>(&h, "x-upstream-grpc-status").unwrap_or(if fail_first {
                14
            } else {
                0
            })
        } else {
            0
        };
        let message = header(&h, "x-upstream-grpc-message")
            .map(str::to_string)
            .unwrap_or_else(|| {
                if code == 0 {
                    String::new()
                } else {
                    format!("upstream grpc-status {code}")
                }
            });
        let mut status_headers = HeaderMap::new();
        status_headers.insert("grpc-status", HeaderValue::from(code));
        if !message.is_empty() {
            status_headers.insert(
                "grpc-message",
                HeaderValue::from_str(&message)
                    .expect("upstream: grpc-message is a valid header value"),
            );
        }
        let trailers_only = failing && header(&h, "x-upstream-grpc-trailers-only") == Some("1");
        let mut builder = Response::builder()
            .status(200)
            .header("content-type", "application/grpc");
        let body = if trailers_only {
            for (k, v) in &status_headers {
                builder = builder.header(k, v);
            }
            ReplyBody::empty()
        } else {
            // One empty message: flag 0, length 0.
            let mut body = ReplyBody::frames(vec![
                Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])),
                Frame::trailers(status_headers),
            ]);
            if let Some(ms) = parse_header::<u64>(&h, "x-upstream-stream-ms") {
                body.pause_before_last =
                    Some(Box::pin(tokio::time::sleep(Duration::from_millis(ms))));
            }
            body
        };
        return Ok(builder.body(body).expect("upstream: build gRPC response"));
    }

    let status = match (failing, explicit_status) {
        (true, Some(s)) => s,
        (true, None) if fail_first => 503,
        _ => 200,
    };
    let text = format!("upstream {status} key={key}\n");
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(ReplyBody::frames(vec![Frame::data(Bytes::from(text))]))
        .expect("upstream: build response (is x-upstream-status a valid code?)"))
}

/// A body of a fixed list of frames: hyper's stock bodies cannot carry trailers without
/// pulling in a stream crate.
struct ReplyBody {
    frames: VecDeque<Frame<Bytes>>,
    /// Waited out before the last frame: a stream that stays open.
    pause_before_last: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ReplyBody {
    fn empty() -> Self {
        ReplyBody {
            frames: VecDeque::new(),
            pause_before_last: None,
        }
    }

    fn frames(frames: Vec<Frame<Bytes>>) -> Self {
        ReplyBody {
            frames: frames.into(),
            pause_before_last: None,
        }
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.frames.len() == 1 {
            if let Some(pause) = this.pause_before_last.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause_before_last = None;
            }
        }
        Poll::Ready(this.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // An exact size lets h1 send content-length; trailers need chunked encoding.
        if self.frames.iter().all(Frame::is_data) {
            let len = self
                .frames
                .iter()
                .filter_map(Frame::data_ref)
                .map(|d| d.len() as u64)
                .sum();
            SizeHint::with_exact(len)
        } else {
            SizeHint::default()
        }
    }
}
