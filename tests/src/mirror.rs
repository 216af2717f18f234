//! A release mirror for end-to-end tests that `k3s_standin::MirrorServer` cannot be: it answers HTTP
//! Range requests (`206 Partial Content`, `416`), records every request it gets (path, `Range` header,
//! status, bytes sent), and injects faults on demand (cut the connection after N bytes of a body).
//!
//! It serves a directory laid out by `k3s_standin::build_mirror` (`download/<version>/k3s`,
//! `download/<version>/sha256sum-amd64.txt`), one thread per connection, `Connection: close` always.
//! Dropping it stops the accept loop and joins its thread.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

/// One request as the mirror saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    /// Percent-decoded path (`/download/v1.31.4+k3s1/k3s`).
    pub path: String,
    /// The `Range` header, verbatim (`bytes=1048576-`).
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes actually written.
    pub body_bytes: u64,
    /// The connection was cut on purpose (a [`Fault`]).
    pub cut: bool,
    pub at: SystemTime,
}

/// A fault to inject into the next matching requests.
#[derive(Debug, Clone)]
enum Fault {
    /// Send the full answer's headers, then only `after` bytes of the body, then close.
    CutAfter { path: String, after: u64, times: u32 },
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    stop: AtomicBool,
    log: Mutex<Vec<RequestRecord>>,
    faults: Mutex<Vec<Fault>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A static HTTP/1.1 file server with Range support, request log and fault injection.
#[derive(Debug)]
pub struct FaultMirror {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FaultMirror {
    /// Serves `dir` on `addr` (port 0 picks a free one).
    pub fn start(dir: &Path, addr: SocketAddr) -> io::Result<FaultMirror> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            stop: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let thread = thread::Builder::new().name("fault-mirror".into()).spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let s = s.clone();
                let _ = thread::Builder::new().name("fault-mirror-conn".into()).spawn(move || {
                    let _ = serve(stream, &s);
                });
            }
        })?;
        Ok(FaultMirror { addr, shared, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR:PORT`: the `release_url` of the spec.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `times` GET requests for `path` (percent-decoded, e.g. `/download/v1.31.9+k3s1/k3s`)
    /// get the whole answer's headers but only `after` bytes of body, then the connection is closed.
    pub fn cut_after(&self, path: &str, after: u64, times: u32) {
        lock(&self.shared.faults).push(Fault::CutAfter { path: path.to_owned(), after, times });
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    /// The requests for `path` so far.
    pub fn requests_for(&self, path: &str) -> Vec<RequestRecord> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    /// The request log, one line per request, for diagnostics.
    pub fn describe_requests(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                let at = r.at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                format!(
                    "{at:.3} {} {} range={} -> {} ({} body bytes{})\n",
                    r.method,
                    r.path,
                    r.range.as_deref().unwrap_or("-"),
                    r.status,
                    r.body_bytes,
                    if r.cut { ", CUT" } else { "" }
                )
            })
            .collect()
    }
}

impl Drop for FaultMirror {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Takes the cut-after fault for `path`, if one is armed.
fn take_cut(shared: &Shared, path: &str) -> Option<u64> {
    let mut faults = lock(&shared.faults);
    let i = faults
        .iter()
        .position(|f| matches!(f, Fault::CutAfter { path: p, times, .. } if p == path && *times > 0))?;
    let Fault::CutAfter { after, times, .. } = &mut faults[i];
    *times -= 1;
    let after = *after;
    if *times == 0 {
        faults.remove(i);
    }
    Some(after)
}

/// `bytes=START-` or `bytes=START-END` → (start, inclusive end).
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = if end.trim().is_empty() { None } else { Some(end.trim().parse().ok()?) };
    Some((start, end))
}

fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("/");
    let path = k3s_standin::mirror::percent_decode(target.split('?').next().unwrap_or("/"));
    let mut record = RequestRecord {
        method: method.clone(),
        path: path.clone(),
        range: range.clone(),
        status: 0,
        body_bytes: 0,
        cut: false,
        at: SystemTime::now(),
    };
    let result = answer(stream, shared, &method, &path, range.as_deref(), &mut record);
    lock(&shared.log).push(record);
    result
}

fn answer(
    mut stream: TcpStream,
    shared: &Shared,
    method: &str,
    path: &str,
    range: Option<&str>,
    record: &mut RequestRecord,
) -> io::Result<()> {
    let file = match (method, k3s_standin::mirror::safe_join(&shared.dir, path)) {
        ("GET" | "HEAD", Some(f)) => File::open(f).ok(),
        _ => None,
    };
    let Some(mut file) = file else {
        record.status = 404;
        let body = b"Not Found\n";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        stream.write_all(body)?;
        record.body_bytes = body.len() as u64;
        return stream.shutdown(Shutdown::Both);
    };
    let len = file.metadata()?.len();
    let (status, start, end) = match range.and_then(parse_range) {
        Some((start, _)) if start >= len => {
            record.status = 416;
            write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return stream.shutdown(Shutdown::Both);
        }
        Some((start, end)) => (206, start, end.map(|e| e.min(len - 1)).unwrap_or(len - 1)),
        None => (200, 0, len.saturating_sub(1)),
    };
    let count = if len == 0 { 0 } else { end + 1 - start };
    record.status = status;
    let mut head = if status == 206 {
        format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{len}\r\n")
    } else {
        "HTTP/1.1 200 OK\r\n".to_owned()
    };
    head.push_str(&format!(
        "Content-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nContent-Length: {count}\r\nConnection: close\r\n\r\n"
    ));
    stream.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return stream.shutdown(Shutdown::Both);
    }
    let cut = if method == "GET" { take_cut(shared, path) } else { None };
    let limit = cut.map(|c| c.min(count)).unwrap_or(count);
    file.seek(SeekFrom::Start(start))?;
    let mut body = file.take(limit);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
        record.body_bytes += n as u64;
    }
    stream.flush()?;
    if cut.is_some() && limit < count {
        record.cut = true;
    }
    stream.shutdown(Shutdown::Both)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("bytes=100-"), Some((100, None)));
        assert_eq!(parse_range("bytes=0-9"), Some((0, Some(9))));
        assert_eq!(parse_range("bytes=0-1,5-6"), None);
        assert_eq!(parse_range("items=1-"), None);
    }

    fn get(addr: SocketAddr, path: &str, range: Option<&str>) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).unwrap();
        let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{range}\r\n").unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (String::from_utf8_lossy(&all[..split]).into_owned(), all[split + 4..].to_vec())
    }

    #[test]
    fn serves_ranges_logs_requests_and_cuts_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("download/v1+k3s1")).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("download/v1+k3s1/k3s"), &data).unwrap();
        let m = FaultMirror::start(dir.path(), SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let path = "/download/v1+k3s1/k3s";

        let (head, body) = get(m.addr(), "/download/v1%2Bk3s1/k3s", None);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, data);

        m.cut_after(path, 1000, 1);
        let (head, body) = get(m.addr(), path, None);
        assert!(head.contains("Content-Length: 100000"), "{head}");
        assert_eq!(body, &data[..1000]);

        let (head, body) = get(m.addr(), path, Some("bytes=1000-"));
        assert!(
            head.starts_with("HTTP/1.1 206") && head.contains("Content-Range: bytes 1000-99999/100000"),
            "{head}"
        );
        assert_eq!(body, &data[1000..]);
        let (head, _) = get(m.addr(), path, Some("bytes=100000-"));
        assert!(head.starts_with("HTTP/1.1 416"), "{head}");
        assert!(get(m.addr(), "/../etc/passwd", None).0.starts_with("HTTP/1.1 404"));

        let log = m.requests_for(path);
        assert_eq!(log.len(), 4, "{}", m.describe_requests());
        assert!(!log[0].cut && log[1].cut && log[1].body_bytes == 1000);
        assert_eq!(log[2].range.as_deref(), Some("bytes=1000-"));
        assert_eq!(log[2].status, 206);
    }
}
