//! A K3s release mirror served from a directory on 127.0.0.1, as a static file
//! server would: `GET /download/v1.31.4%2Bk3s1/k3s` is the file
//! `<root>/download/v1.31.4+k3s1/k3s`. Supports `Range: bytes=N-`, and can
//! misbehave on request: cut a transfer off once, ignore Range, stall, redirect.
//! Every request is logged so tests can check what the client asked for.
//!
//! Shared by the integration tests and the benchmark (`#[path]` include).

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_stream::StreamExt;
use tokio_util::io::ReaderStream;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
}

#[derive(Debug, Default)]
struct Behaviour {
    /// Send this many body bytes of the next file response, then break the connection.
    cut_once_after: Option<u64>,
    ignore_range: bool,
    /// Send this many body bytes of every file response, then go silent.
    stall_after: Option<u64>,
    /// Raw request path → Location, answered with 302.
    redirects: HashMap<String, String>,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    seen: Mutex<Vec<Seen>>,
    behaviour: Mutex<Behaviour>,
}

/// A running mirror; it stops when the runtime that started it ends.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Mirror {
    /// Serves `root` on an ephemeral port of 127.0.0.1.
    pub async fn start(root: &Path) -> Mirror {
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            seen: Mutex::default(),
            behaviour: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let app = axum::Router::new().fallback(serve).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Mirror { addr, shared }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("lock").clone()
    }

    pub fn cut_once_after(&self, bytes: u64) {
        self.shared.behaviour.lock().expect("lock").cut_once_after = Some(bytes);
    }

    pub fn ignore_range(&self, ignore: bool) {
        self.shared.behaviour.lock().expect("lock").ignore_range = ignore;
    }

    pub fn stall_after(&self, bytes: u64) {
        self.shared.behaviour.lock().expect("lock").stall_after = Some(bytes);
    }

    pub fn redirect(&self, from: &str, to: &str) {
        self.shared.behaviour.lock().expect("lock").redirects.insert(from.to_string(), to.to_string());
    }
}

fn status(code: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}

async fn serve(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let raw_path = request.uri().path().to_string();
    let range = request.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    shared.seen.lock().expect("lock").push(Seen { path: raw_path.clone(), range: range.clone() });

    let (ignore_range, redirect) = {
        let b = shared.behaviour.lock().expect("lock");
        (b.ignore_range, b.redirects.get(&raw_path).cloned())
    };
    if let Some(location) = redirect {
        let mut response = status(StatusCode::FOUND);
        response.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).expect("location"));
        return response;
    }

    // Decode like a static file server: %2B becomes `+`, the directory's name.
    let decoded = percent_decode(&raw_path);
    let relative = Path::new(&decoded);
    if relative.components().any(|c| matches!(c, Component::ParentDir)) {
        return status(StatusCode::BAD_REQUEST);
    }
    let path = shared.root.join(decoded.trim_start_matches('/'));
    let Ok(mut file) = tokio::fs::File::open(&path).await else { return status(StatusCode::NOT_FOUND) };
    let Ok(meta) = file.metadata().await else { return status(StatusCode::NOT_FOUND) };
    if !meta.is_file() {
        return status(StatusCode::NOT_FOUND);
    }
    let len = meta.len();

    let start =
        match range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.strip_suffix('-')) {
            Some(n) if !ignore_range => match n.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => return status(StatusCode::BAD_REQUEST),
            },
            _ => None,
        };
    let mut response = match start {
        Some(n) if n >= len => {
            let mut r = status(StatusCode::RANGE_NOT_SATISFIABLE);
            r.headers_mut().insert(header::CONTENT_RANGE, format!("bytes */{len}").parse().expect("header"));
            return r;
        }
        Some(n) => {
            let mut r = status(StatusCode::PARTIAL_CONTENT);
            let value = format!("bytes {n}-{}/{len}", len - 1);
            r.headers_mut().insert(header::CONTENT_RANGE, value.parse().expect("header"));
            r
        }
        None => status(StatusCode::OK),
    };
    let start = start.unwrap_or(0);
    if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let remaining = len - start;
    // Misbehave only on responses longer than the limit, so small files such as
    // the hash file still arrive whole.
    let (cut, stall) = {
        let mut b = shared.behaviour.lock().expect("lock");
        let cut =
            if b.cut_once_after.is_some_and(|n| n < remaining) { b.cut_once_after.take() } else { None };
        (cut, b.stall_after.filter(|n| *n < remaining))
    };
    response.headers_mut().insert(header::CONTENT_LENGTH, remaining.into());
    response.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    *response.body_mut() = match (cut, stall) {
        (Some(n), _) => {
            // n bytes, then an error: hyper aborts the connection mid-body,
            // which the client sees as a transfer that broke off.
            let head = ReaderStream::new(file.take(n));
            let broken = tokio_stream::once(Err::<bytes::Bytes, _>(std::io::Error::other(
                "cut off by the test mirror",
            )));
            Body::from_stream(head.chain(broken))
        }
        (None, Some(n)) => {
            let head = ReaderStream::new(file.take(n));
            let silence = tokio_stream::once(()).then(|()| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Err::<bytes::Bytes, _>(std::io::Error::other("stalled"))
            });
            Body::from_stream(head.chain(silence))
        }
        (None, None) => Body::from_stream(ReaderStream::with_capacity(file, 64 * 1024)),
    };
    response
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(Ok(b)) = hex.map(|h| u8::from_str_radix(h, 16))
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
