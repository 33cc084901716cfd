//! Blocking clients. Every call opens a fresh connection so that Envoy's workers (which
//! each own the connections they accept) all see traffic, and so one test's connection
//! state never leaks into the next request.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::{Barrier, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Upper bound on any one client call, so a hung proxy fails the test instead of CI.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// One runtime for all blocking calls; `block_on` on a multi-thread runtime is safe from
/// many test threads at once.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("client")
            .enable_all()
            .build()
            .expect("client: build tokio runtime")
    })
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Lowercase names, in received order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header (name is case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// HTTP/1.1 request over a fresh connection. Err only when no response was received
/// (connect failure, connection closed, timeout); any status is Ok.
pub fn http1(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    runtime().block_on(request(port, Version::HTTP_11, method, path, headers))
}

/// As [`http1`], over HTTP/2 cleartext with prior knowledge.
pub fn http2(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    runtime().block_on(request(port, Version::HTTP_2, method, path, headers))
}

async fn request(
    port: u16,
    version: Version,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let what = format!("{version:?} {method} 127.0.0.1:{port}{path}");
    tokio::time::timeout(
        CLIENT_TIMEOUT,
        request_inner(port, version, method, path, headers),
    )
    .await
    .map_err(|_| format!("{what}: no response within {CLIENT_TIMEOUT:?}"))?
    .map_err(|e| format!("{what}: {e}"))
}

async fn request_inner(
    port: u16,
    version: Version,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let authority = format!("127.0.0.1:{port}");
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);

    // h2 needs :scheme and :authority, so the URI is absolute; h1 sends origin-form + Host.
    let uri = if version == Version::HTTP_2 {
        format!("http://{authority}{path}")
    } else {
        path.to_string()
    };
    let mut builder = Request::builder().method(method).uri(uri).version(version);
    if version != Version::HTTP_2 {
        builder = builder.header("host", &authority);
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("build request: {e}"))?;

    let resp = if version == Version::HTTP_2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    }
    .map_err(|e| format!("request: {e}"))?;

    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("read body (status {status}): {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Request message for [`grpc_unary`]; the upstream ignores its content.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// Reply message for [`grpc_unary`]; the upstream sends an empty one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct GrpcReply {
    pub code: tonic::Code,
    pub message: String,
    /// Response headers and trailers merged (tonic's view), lowercase names.
    pub metadata: Vec<(String, String)>,
}

impl GrpcReply {
    pub fn metadata(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.metadata
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Unary call through a real tonic client on a fresh channel. Any gRPC status
/// (including ones Envoy synthesises) is Ok; Err means the call never got a status
/// (connect failure, transport error, timeout).
pub fn grpc_unary(port: u16, path: &str, metadata: &[(&str, &str)]) -> Result<GrpcReply, String> {
    let what = format!("gRPC 127.0.0.1:{port}{path}");
    runtime()
        .block_on(async {
            tokio::time::timeout(CLIENT_TIMEOUT, grpc_unary_inner(port, path, metadata))
                .await
                .map_err(|_| format!("no status within {CLIENT_TIMEOUT:?}"))?
        })
        .map_err(|e| format!("{what}: {e}"))
}

async fn grpc_unary_inner(
    port: u16,
    path: &str,
    metadata: &[(&str, &str)],
) -> Result<GrpcReply, String> {
    use tonic::metadata::{
        AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, BinaryMetadataValue,
    };

    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| format!("endpoint: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| format!("channel ready: {e}"))?;

    let mut req = tonic::Request::new(EchoRequest {
        message: "ping".into(),
    });
    for (k, v) in metadata {
        if k.ends_with("-bin") {
            let key = BinaryMetadataKey::from_bytes(k.as_bytes())
                .map_err(|e| format!("metadata key {k:?}: {e}"))?;
            req.metadata_mut()
                .insert_bin(key, BinaryMetadataValue::from_bytes(v.as_bytes()));
        } else {
            let key = AsciiMetadataKey::from_bytes(k.as_bytes())
                .map_err(|e| format!("metadata key {k:?}: {e}"))?;
            let value = AsciiMetadataValue::try_from(*v)
                .map_err(|e| format!("metadata value {v:?}: {e}"))?;
            req.metadata_mut().insert(key, value);
        }
    }
    let path = http::uri::PathAndQuery::try_from(path).map_err(|e| format!("path: {e}"))?;
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();

    match grpc.unary(req, path, codec).await {
        Ok(resp) => Ok(GrpcReply {
            code: tonic::Code::Ok,
            message: String::new(),
            metadata: metadata_pairs(resp.metadata()),
        }),
        Err(status) => {
            // Statuses decoded from the wire carry no source; transport failures do.
            if let Some(source) = std::error::Error::source(&status) {
                return Err(format!("transport: {status}: {source}"));
            }
            Ok(GrpcReply {
                code: status.code(),
                message: status.message().to_string(),
                metadata: metadata_pairs(status.metadata()),
            })
        }
    }
}

fn metadata_pairs(m: &tonic::metadata::MetadataMap) -> Vec<(String, String)> {
    m.clone()
        .into_headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Runs `f(0..n)` on n threads released together by a barrier, so the calls really
/// overlap; results are in index order. A panic in any call is re-raised here.
pub fn concurrently<T, F>(n: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> T + Sync,
{
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, f) = (&barrier, &f);
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// A raw HTTP/1.1 request whose connection the test closes on purpose, to check that a
/// client going away mid-request releases whatever the filter holds for it.
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Writes the request head (no body) and returns without reading anything.
    pub fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> RawClient {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("RawClient: connect to 127.0.0.1:{port}: {e}"));
        let _ = stream.set_nodelay(true);
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .expect("RawClient: write request head");
        RawClient { stream }
    }

    /// Reads the response head (status line and headers) and returns its status line.
    pub fn status_line(&mut self, timeout: Duration) -> Result<String, String> {
        use std::io::Read;
        let _ = self.stream.set_read_timeout(Some(timeout));
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                Ok(_) => return Err("connection closed before the response head".into()),
                Err(e) => return Err(format!("reading the response head: {e}")),
            }
        }
        let text = String::from_utf8_lossy(&head);
        Ok(text.lines().next().unwrap_or_default().to_string())
    }

    /// Closes the connection (FIN) without having read the response.
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Sends a GET, calls `until` (typically polling the upstream until it has the request),
/// then closes the connection before reading any response.
pub fn http1_abort_after_headers(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    until: impl FnOnce(),
) {
    let client = RawClient::send(port, "GET", path, headers);
    until();
    client.close();
}
