//! The HTTPS front: a TLS listener that authenticates clients by certificate or bearer
//! token, the request router that maps Kubernetes REST paths onto [`crate::store`],
//! discovery, watch streaming, and the test hooks that sit on the request path (request
//! log, injected failures, cutting connections).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{self, EventType, ListOpts, PatchType, Store, Target, WriteOpts};
use crate::{Failure, RequestRecord, Verb, discovery};

/// Largest request body accepted (upstream's limit is 3 MiB for most writes).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Watch duration when the client sets no `timeoutSeconds` (upstream picks 30–60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Annotation of the bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// State shared by the listener, every request and the handle.
#[derive(Debug)]
pub struct Shared {
    pub store: Mutex<Store>,
    pub hooks: Mutex<Hooks>,
    pub token: String,
    pub git_version: String,
    pub server_address: String,
    /// Set: connections fail and new ones are dropped ("unreachable").
    pub cut: Arc<AtomicBool>,
    /// Bumped when connections are cut or the server stops, ending watches.
    pub cut_signal: watch::Sender<u64>,
}

/// Request-path test hooks.
#[derive(Debug, Default)]
pub struct Hooks {
    pub requests: Vec<RequestRecord>,
    pub failures: Vec<Failure>,
}

/// A lock that survives a panicked holder: tests inspect state after failures.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- connections --------------------------------------------------------------------

/// Who is on the other end of a connection: the address and, when the client showed a
/// certificate the CA signed, the user it names.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub user: Option<String>,
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TLS stream that fails every read and write once the server is "unreachable".
#[derive(Debug)]
pub struct CutIo {
    inner: TlsStream<TcpStream>,
    cut: Arc<AtomicBool>,
}

fn reset() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "stand-in made unreachable by the test")
}

impl AsyncRead for CutIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.cut.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CutIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.cut.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connections that finished their TLS handshake, for `axum::serve`. Handshakes run in
/// their own tasks so a slow client cannot stall accepting.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(CutIo, Peer)>,
    local: SocketAddr,
}

impl Listener for TlsListener {
    type Io = CutIo;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop ended (shutdown): wait until serve is stopped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer { addr: self.local, user: None })
    }
}

impl TlsListener {
    /// Accepts on `tcp` until `shutdown` fires.
    pub fn spawn(
        tcp: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        cut: Arc<AtomicBool>,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = tcp.accept() => r,
                    _ = shutdown.changed() => break,
                };
                let Ok((sock, addr)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                if cut.load(Ordering::SeqCst) {
                    drop(sock);
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let (acceptor, tx, cut) = (acceptor.clone(), tx.clone(), cut.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await
                    else {
                        return;
                    };
                    let user = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(crate::pki::client_user);
                    let _ = tx.send((CutIo { inner: tls, cut }, Peer { addr, user })).await;
                });
            }
        });
        Ok(Self { rx, local })
    }
}

// ---- requests -----------------------------------------------------------------------

fn json_response(code: u16, body: &Value) -> Response {
    json_response_typed(code, body, "application/json")
}

fn json_response_typed(code: u16, body: &Value, content_type: &str) -> Response {
    let mut resp = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json")),
    );
    resp
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

/// The axum handler for every path.
pub async fn dispatch(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let user = authenticate(&s, &peer, &parts.headers);
    let (verb, resp) = match &user {
        None => (None, error_response(&ApiError::unauthorized())),
        Some(_) => match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(bytes) => handle(&s, &parts.method, &path, &query, &parts.headers, &bytes),
            Err(_) => (None, error_response(&ApiError::bad_request("request body too large or unreadable"))),
        },
    };
    lock(&s.hooks).requests.push(RequestRecord {
        method: parts.method.to_string(),
        path,
        query,
        verb,
        user,
        code: resp.status().as_u16(),
    });
    resp
}

/// The user of a request: the client certificate's, else a matching bearer token's.
fn authenticate(s: &Shared, peer: &Peer, headers: &HeaderMap) -> Option<String> {
    if let Some(user) = &peer.user {
        return Some(user.clone());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ")?.trim();
    (token == s.token).then(|| "token:admin".to_owned())
}

type Query = HashMap<String, String>;

fn parse_query(query: &str) -> Query {
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

fn take_failure(s: &Shared, method: &Method, path: &str) -> Option<u16> {
    let mut hooks = lock(&s.hooks);
    let i = hooks.failures.iter().position(|f| f.matches(method.as_str(), path))?;
    let f = &mut hooks.failures[i];
    let code = f.code;
    if let Some(n) = &mut f.remaining {
        *n = n.saturating_sub(1);
        if *n == 0 {
            hooks.failures.remove(i);
        }
    }
    Some(code)
}

fn handle(
    s: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (Option<Verb>, Response) {
    let q = parse_query(query);
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|x| !x.is_empty()).collect();
    let resource = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => Some(("", "v1", rest)),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => Some((*g, *v, rest)),
        _ => None,
    };
    let Some((group, version, rest)) = resource else {
        if let Some(code) = take_failure(s, method, path) {
            return (Some(Verb::Get), error_response(&ApiError::injected(code)));
        }
        let resp = if method == Method::GET {
            non_resource(s, &segs, headers)
        } else {
            Err(ApiError::method_not_allowed("only GET is served here"))
        };
        return (Some(Verb::Get), resp.unwrap_or_else(|e| error_response(&e)));
    };
    let mut st = lock(&s.store);
    let Some(t) = resolve(&st, group, version, rest) else {
        drop(st);
        let code = take_failure(s, method, path).unwrap_or(404);
        let e = if code == 404 { ApiError::no_route() } else { ApiError::injected(code) };
        return (None, error_response(&e));
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default();
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method.clone(), t.name.is_some(), t.subresource.as_deref()) {
        (Method::GET, false, _) if watching => Verb::Watch,
        (Method::GET, true, None) if watching => Verb::Watch,
        (Method::GET, false, _) => Verb::List,
        (Method::GET, true, _) => Verb::Get,
        (Method::POST, false, None) => Verb::Create,
        (Method::POST, true, Some("eviction")) => Verb::Create,
        (Method::PUT, true, _) => Verb::Update,
        (Method::PATCH, true, _) if content_type == "application/apply-patch+yaml" => Verb::Apply,
        (Method::PATCH, true, _) => Verb::Patch,
        (Method::DELETE, true, None) => Verb::Delete,
        (Method::DELETE, false, None) => Verb::DeleteCollection,
        _ => {
            return (
                None,
                error_response(&ApiError::method_not_allowed(format!("{method} is not supported on {path}"))),
            );
        }
    };
    let manager = q.get("fieldManager").cloned();
    let body_name = || {
        parse_body(body, &content_type)
            .ok()
            .and_then(|b| b.pointer("/metadata/name").and_then(Value::as_str).map(str::to_owned))
    };
    let name_for_log = t.name.clone().or_else(|| if verb == Verb::Create { body_name() } else { None });
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All")
        || (verb == Verb::Delete
            && parse_body(body, &content_type)
                .ok()
                .and_then(|b| b.get("dryRun").and_then(Value::as_array).map(|a| !a.is_empty()))
                .unwrap_or(false));
    // The mutation log is of writes: a dry run changes nothing and is only in the
    // request log (with `dryRun=All` in its query).
    let logged = verb.is_mutating() && !dry_run;
    if let Some(code) = take_failure(s, method, path) {
        if logged {
            st.mutations.push(store::mutation(verb, &t, name_for_log, manager, code));
        }
        return (Some(verb), error_response(&ApiError::injected(code)));
    }
    let opts = WriteOpts {
        field_manager: manager.clone(),
        default_manager: default_manager(headers),
        dry_run,
        force: matches!(q.get("force").map(String::as_str), Some("true" | "1")),
    };
    if verb == Verb::Watch {
        let resp = match list_opts(&t, &q).and_then(|o| start_watch(s, &st, t, &q, o)) {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        return (Some(verb), resp);
    }
    let result: Result<(u16, Value), ApiError> = (|| match verb {
        Verb::Get => Ok((200, st.get(&t)?)),
        Verb::List => Ok((200, st.list(&t, &list_opts(&t, &q)?)?)),
        Verb::Watch => Err(ApiError::internal("watch is served as a stream")),
        Verb::Create if t.subresource.as_deref() == Some("eviction") => {
            let b = parse_body(body, &content_type)?;
            let out = st.evict(&t, &b)?;
            Ok((201, out))
        }
        Verb::Create => Ok((201, st.create(&t, parse_body(body, &content_type)?, &opts)?)),
        Verb::Update => Ok((200, st.replace(&t, parse_body(body, &content_type)?, &opts)?)),
        Verb::Apply => st.patch(&t, PatchType::Apply, parse_apply_body(body)?, &opts),
        Verb::Patch => {
            let ty = match content_type.as_str() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            st.patch(&t, ty, parse_body(body, "application/json")?, &opts)
        }
        Verb::Delete => {
            let b = if body.is_empty() { None } else { Some(parse_body(body, &content_type)?) };
            let dry = opts.dry_run
                || b.as_ref()
                    .and_then(|b| b.get("dryRun"))
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty());
            Ok((200, st.delete(&t, b.as_ref(), dry)?))
        }
        Verb::DeleteCollection => Ok((200, st.delete_collection(&t, &list_opts(&t, &q)?, opts.dry_run)?)),
    })();
    let code = result.as_ref().map(|(c, _)| *c).unwrap_or_else(|e| e.code);
    if logged {
        st.mutations.push(store::mutation(verb, &t, name_for_log, manager, code));
    }
    let pending: Vec<String> = std::mem::take(&mut st.pending_establish);
    let delay = st.establish_delay;
    drop(st);
    for name in pending {
        let s = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            lock(&s.store).establish(&name);
        });
    }
    let resp = match result {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error_response(&e),
    };
    (Some(verb), resp)
}

/// The field manager of non-apply writes without `fieldManager`: the user agent up to
/// its first `/`, as upstream derives it.
fn default_manager(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

/// A request body: JSON, or YAML when the content type says so.
fn parse_body(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    if content_type.contains("yaml") {
        return serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")));
    }
    if !content_type.is_empty() && !content_type.contains("json") && content_type != "*/*" {
        return Err(ApiError::unsupported_media_type(content_type));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// An apply body: YAML, of which JSON is a subset.
fn parse_apply_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml_ng::from_slice(body))
        .map_err(|e| ApiError::bad_request(format!("invalid apply patch: {e}")))
}

fn list_opts(t: &Target, q: &Query) -> Result<ListOpts, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let mut field_text = q.get("fieldSelector").cloned().unwrap_or_default();
    if let Some(name) = &t.name {
        // A watch on an item path (deprecated upstream) is a watch by name.
        field_text = if field_text.is_empty() {
            format!("metadata.name={name}")
        } else {
            format!("{field_text},metadata.name={name}")
        };
    }
    let fields = FieldSelector::parse(&field_text, &t.rt.field_selectors()).map_err(ApiError::bad_request)?;
    let limit = match q.get("limit") {
        Some(l) => Some(l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?),
        None => None,
    };
    Ok(ListOpts {
        labels,
        fields,
        limit,
        continue_token: q.get("continue").cloned().filter(|c| !c.is_empty()),
    })
}

/// Maps `rest` (the path after `/api/v1` or `/apis/{g}/{v}`) to a served resource.
fn resolve(st: &Store, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let all = st.resources();
    let find = |plural: &str| {
        all.iter().find(|r| r.group == group && r.version == version && r.plural == plural).cloned()
    };
    let owned = |s: Option<&&str>| s.map(|x| (*x).to_owned());
    let t = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if tail.len() <= 2 && find(plural).is_some_and(|r| r.namespaced) =>
        {
            Target {
                rt: find(plural)?,
                namespace: Some((*ns).to_owned()),
                name: owned(tail.first()),
                subresource: owned(tail.get(1)),
            }
        }
        [plural, tail @ ..] if tail.len() <= 2 => {
            let rt = find(plural)?;
            if rt.namespaced && !tail.is_empty() {
                return None;
            }
            Target { rt, namespace: None, name: owned(tail.first()), subresource: owned(tail.get(1)) }
        }
        _ => return None,
    };
    let sub_ok = match t.subresource.as_deref() {
        None => true,
        Some("status") => t.rt.status_subresource,
        Some(sub) => t.rt.subresources.iter().any(|(name, ..)| *name == sub),
    };
    sub_ok.then_some(t)
}

/// `/version`, `/healthz`, discovery.
fn non_resource(s: &Shared, segs: &[&str], headers: &HeaderMap) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let aggregated = discovery::wants_aggregated(accept);
    let rs = lock(&s.store).resources();
    let doc = match segs {
        ["version"] => version_info(&s.git_version),
        ["healthz" | "livez" | "readyz"] => {
            let mut r = Response::new(Body::from("ok"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            return Ok(r);
        }
        ["api"] if aggregated => {
            return Ok(json_response_typed(200, &discovery::aggregated_core(&rs), discovery::AGGREGATED_V2));
        }
        ["api"] => discovery::api_versions(&s.server_address),
        ["api", "v1"] => discovery::resource_list(&rs, "", "v1").ok_or_else(ApiError::no_route)?,
        ["apis"] if aggregated => {
            return Ok(json_response_typed(200, &discovery::aggregated_apis(&rs), discovery::AGGREGATED_V2));
        }
        ["apis"] => discovery::api_group_list(&rs),
        ["apis", g] => discovery::api_group(&rs, g).ok_or_else(ApiError::no_route)?,
        ["apis", g, v] => discovery::resource_list(&rs, g, v).ok_or_else(ApiError::no_route)?,
        _ => return Err(ApiError::no_route()),
    };
    Ok(json_response(200, &doc))
}

/// `/version` as a K3s server answers it.
fn version_info(git_version: &str) -> Value {
    let core = git_version.trim_start_matches('v');
    let mut parts = core.split(['.', '+', '-']);
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("0");
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": git_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.22.9",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

// ---- watch --------------------------------------------------------------------------

/// Starts a watch stream: backlog (current state or history after `resourceVersion`),
/// then live events, as newline-delimited `{"type":…,"object":…}` until
/// `timeoutSeconds`, the client going away, or connections being cut.
fn start_watch(
    s: &Arc<Shared>,
    st: &Store,
    t: Target,
    q: &Query,
    opts: ListOpts,
) -> Result<Response, ApiError> {
    let initial_events = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let from = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let from = if initial_events { None } else { from };
    let timeout = match q.get("timeoutSeconds") {
        Some(secs) => {
            Duration::from_secs(secs.parse().map_err(|_| ApiError::bad_request("invalid timeoutSeconds"))?)
        }
        None => DEFAULT_WATCH_TIMEOUT,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    match st.watch(&t, from) {
        Err(e) => {
            // Upstream reports a compacted resourceVersion as an ERROR event in a 200 stream.
            let line = line(&json!({"type": "ERROR", "object": e.to_status()}));
            let _ = tx.try_send(Ok(line));
        }
        Ok(start) => {
            let mut cut = s.cut_signal.subscribe();
            tokio::spawn(async move {
                let bookmark = initial_events.then_some(start.snapshot_rv);
                let mut live = start.rx;
                for ev in start.backlog {
                    if let Some(l) = render(&ev, &t, &opts)
                        && tx.send(Ok(l)).await.is_err()
                    {
                        return;
                    }
                }
                if let Some(rv) = bookmark {
                    let bm = json!({"type": "BOOKMARK", "object": {
                        "kind": t.rt.kind, "apiVersion": t.rt.api_version(),
                        "metadata": {"resourceVersion": rv.to_string(), "annotations": {INITIAL_EVENTS_END: "true"}},
                    }});
                    if tx.send(Ok(line(&bm))).await.is_err() {
                        return;
                    }
                }
                let deadline = tokio::time::sleep(timeout);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        _ = tx.closed() => break,
                        _ = cut.changed() => break,
                        ev = live.recv() => match ev {
                            Ok(ev) => {
                                if let Some(l) = render(&ev, &t, &opts)
                                    && tx.send(Ok(l)).await.is_err()
                                {
                                    break;
                                }
                            }
                            // Lagged or closed: end the stream; the client re-watches
                            // from its last resourceVersion and the history replays.
                            Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => break,
                        },
                    }
                }
            });
        }
    }
    let mut resp = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// One event as this watch sees it, with selector transitions: an object that starts
/// matching is ADDED, one that stops matching is DELETED.
fn render(ev: &store::Event, t: &Target, opts: &ListOpts) -> Option<Bytes> {
    if ev.key.group != t.rt.group || ev.key.resource != t.rt.plural {
        return None;
    }
    if t.rt.namespaced && t.namespace.as_ref().is_some_and(|ns| *ns != ev.key.namespace) {
        return None;
    }
    let matches = |o: &Value| opts.labels.matches(o) && opts.fields.matches(o);
    let now = matches(&ev.obj);
    let ty = match ev.ty {
        EventType::Added if now => "ADDED",
        EventType::Deleted if now => "DELETED",
        EventType::Modified => match (ev.old.as_ref().is_some_and(matches), now) {
            (true, true) => "MODIFIED",
            (false, true) => "ADDED",
            (true, false) => "DELETED",
            (false, false) => return None,
        },
        _ => return None,
    };
    let mut obj = ev.obj.clone();
    obj["apiVersion"] = json!(t.rt.api_version());
    obj["kind"] = json!(t.rt.kind);
    Some(line(&json!({"type": ty, "object": obj})))
}
