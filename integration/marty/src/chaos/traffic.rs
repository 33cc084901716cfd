//! Drives a step's traffic on a fixed schedule and records what the client saw of each
//! request; also the small HTTP reads of Envoy's admin and the health endpoint.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::scenario::{Protocol, Traffic};

/// What the client saw of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A reply that is not a failure (below 500; gRPC status 0).
    Ok,
    /// 5xx, a gRPC error, or no reply at all.
    Error,
    /// Answered by the breaker itself (the reply carries `x-marty-circuit`).
    Rejected,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    /// When the request started, since the scenario started.
    pub at: Duration,
    pub latency: Duration,
    pub kind: Kind,
    /// HTTP status; none when no reply came.
    pub status: Option<u16>,
}

pub type Outcomes = Arc<Mutex<Vec<Outcome>>>;

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
pub struct Clients {
    http1: Client<HttpConnector, Full<Bytes>>,
    http2: Client<HttpConnector, Full<Bytes>>,
}

impl Clients {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Self {
            http1: Client::builder(TokioExecutor::new()).build(connector.clone()),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }

    /// GET `url`; the status and body.
    pub async fn get(&self, url: &str) -> Result<(u16, String)> {
        let req = Request::get(url)
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("GET {url}"))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.http1.request(req))
            .await
            .map_err(|_| anyhow!("GET {url}: no reply within 10s"))?
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("GET {url}: body"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Waits (at most [`COUNTS_SETTLE`]) until no worker of the filter holds counts it has not
/// added to Envoy's counters yet: `requests_total` and `success_total` are added up per
/// worker and flushed on its tick (docs/metrics.md), which `counters_unflushed` tracks.
async fn counts_flushed(clients: &Clients, admin: &str) -> Result<()> {
    let url = format!("{admin}/stats?format=json&filter=counters_unflushed%24");
    let deadline = tokio::time::Instant::now() + COUNTS_SETTLE;
    loop {
        let (status, body) = clients.get(&url).await?;
        let pending = status == 200
            && serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|json| {
                    json["stats"].as_array().map(|stats| {
                        stats
                            .iter()
                            .any(|s| s["value"].as_i64().is_some_and(|v| v != 0))
                    })
                })
                .unwrap_or(false);
        if !pending || tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Longest wait for deferred counts before stats are read anyway (a worker under load holds
/// counts again right after each flush).
const COUNTS_SETTLE: Duration = Duration::from_secs(2);

/// Counters and gauges of an Envoy admin's `/stats`, by full name. `filter` is Envoy's regex
/// filter (`/stats?filter=`), to keep frequent reads small.
pub async fn stats(
    clients: &Clients,
    admin: &str,
    filter: Option<&str>,
) -> Result<BTreeMap<String, i64>> {
    if filter.is_none() {
        // Whole snapshots are what counters are compared on; filtered reads watch gauges.
        counts_flushed(clients, admin).await?;
    }
    let url = match filter {
        Some(f) => format!("{admin}/stats?format=json&filter={f}"),
        None => format!("{admin}/stats?format=json"),
    };
    let (status, body) = clients.get(&url).await?;
    if status != 200 {
        bail!("GET {url}: HTTP {status}: {}", body.trim());
    }
    let json: Value =
        serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON"))?;
    Ok(json["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["value"].as_i64()?)))
        .collect())
}

/// Sends `traffic` to `target` on its schedule, recording into `outcomes`; returns when every
/// request has ended.
pub async fn drive(
    clients: &Clients,
    target: &str,
    traffic: &Traffic,
    scenario_start: Instant,
    outcomes: Outcomes,
) -> Result<()> {
    let total = planned(traffic);
    let interval = Duration::from_secs_f64(1.0 / traffic.rate);
    let permits = Arc::new(tokio::sync::Semaphore::new(traffic.concurrency as usize));
    let uri = format!("{}{}", target.trim_end_matches('/'), traffic.path);
    let method = Method::from_bytes(traffic.method.as_bytes())
        .map_err(|_| anyhow!("method {:?} is not an HTTP method", traffic.method))?;
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        // At `concurrency` requests in flight the schedule waits: the client never opens
        // more than it was told to.
        let permit = permits.clone().acquire_owned().await?;
        let client = match traffic.protocol {
            Protocol::Http1 => clients.http1.clone(),
            Protocol::Http2 | Protocol::Grpc => clients.http2.clone(),
        };
        let mut builder = Request::builder().method(method.clone()).uri(&uri);
        for (k, v) in &traffic.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let body = if traffic.protocol == Protocol::Grpc {
            builder = builder
                .method(Method::POST)
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            // One empty message: not compressed, length 0.
            Bytes::from_static(&[0, 0, 0, 0, 0])
        } else {
            Bytes::new()
        };
        let request = builder
            .body(Full::new(body))
            .with_context(|| format!("build a request to {uri}"))?;
        let grpc = traffic.protocol == Protocol::Grpc;
        let timeout = traffic.timeout.0;
        let outcomes = outcomes.clone();
        tasks.spawn(async move {
            let began = Instant::now();
            let (kind, status) =
                match tokio::time::timeout(timeout, send(&client, request, grpc)).await {
                    Ok(Ok(seen)) => seen,
                    Ok(Err(_)) | Err(_) => (Kind::Error, None),
                };
            lock(&outcomes).push(Outcome {
                at: began.duration_since(scenario_start),
                latency: began.elapsed(),
                kind,
                status,
            });
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Requests a step sends: `rate × duration`, at least one.
pub fn planned(traffic: &Traffic) -> u64 {
    ((traffic.rate * traffic.duration.0.as_secs_f64()).round() as u64).max(1)
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
    grpc: bool,
) -> Result<(Kind, Option<u16>)> {
    let resp = client.request(request).await?;
    let status = resp.status().as_u16();
    let rejected = resp.headers().contains_key("x-marty-circuit");
    let header_grpc = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let collected = resp.into_body().collect().await?;
    let trailer_grpc = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let kind = if rejected {
        Kind::Rejected
    } else if grpc {
        let code = trailer_grpc.or(header_grpc);
        if status == 200 && code.as_deref() == Some("0") {
            Kind::Ok
        } else {
            Kind::Error
        }
    } else if status >= 500 {
        Kind::Error
    } else {
        Kind::Ok
    };
    Ok((kind, Some(status)))
}
