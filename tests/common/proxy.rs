//! A fault-injecting HTTP proxy in front of osmem-server.
//!
//! It runs on its own thread and runtime (tests block on child processes), speaks just enough
//! HTTP/1.1 (Content-Length bodies, keep-alive) and, by script, answers with an error status,
//! resets the connection before or after forwarding, delays, or fails chosen bulk items. It counts
//! every bulk item it forwarded, by document id, so a test can prove nothing was sent twice.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do with the next request(s). Rules are used in order; each serves `times` requests.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and a JSON error body; nothing is forwarded.
    Status(u16),
    /// Close the connection without forwarding.
    ResetBefore,
    /// Forward, then close the connection without answering: indexed, but the client never heard.
    ResetAfter,
    /// Forward, then wait this long before answering (past the client's timeout).
    Delay(Duration),
    /// For a bulk request: items at these positions are not forwarded and answered with this
    /// status and error type; the rest are forwarded.
    Items {
        positions: Vec<usize>,
        status: u16,
        error_type: String,
    },
}

#[derive(Debug, Default)]
struct State {
    script: VecDeque<(Fault, usize)>,
    /// Fails these document ids with 400 on every bulk request, forever.
    reject_ids: Vec<String>,
    forwarded: HashMap<String, u64>,
    bulk_requests: u64,
    /// Bulk requests that came gzip-compressed (Content-Encoding: gzip); decoded before use.
    gzip_requests: u64,
    ndjson_requests: u64,
    /// While set, bulk responses are held back (the request was forwarded).
    hold: bool,
    held: u64,
}

#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_end_matches('/').to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                loop {
                    let (sock, _) = listener.accept().await.unwrap();
                    tokio::spawn(serve(sock, upstream.clone(), st.clone()));
                }
            });
        });
        Proxy {
            port: rx.recv().unwrap(),
            state,
        }
    }

    pub fn push(&self, fault: Fault, times: usize) {
        self.state.lock().unwrap().script.push_back((fault, times));
    }

    pub fn reject_ids(&self, ids: Vec<String>) {
        self.state.lock().unwrap().reject_ids = ids;
    }

    /// Holds every bulk response from now on (after forwarding) until `release`.
    pub fn hold(&self, on: bool) {
        self.state.lock().unwrap().hold = on;
    }

    pub fn held(&self) -> u64 {
        self.state.lock().unwrap().held
    }

    /// How many times each document id was forwarded to the server.
    pub fn forwarded(&self) -> HashMap<String, u64> {
        self.state.lock().unwrap().forwarded.clone()
    }

    pub fn bulk_requests(&self) -> u64 {
        self.state.lock().unwrap().bulk_requests
    }

    pub fn gzip_requests(&self) -> u64 {
        self.state.lock().unwrap().gzip_requests
    }

    /// Bulk requests labelled `Content-Type: application/x-ndjson`.
    pub fn ndjson_requests(&self) -> u64 {
        self.state.lock().unwrap().ndjson_requests
    }
}

struct Request {
    method: String,
    path: String,
    content_type: String,
    /// The body as sent was gzip (it is decoded here, and forwarded plain).
    gzip: bool,
    body: Vec<u8>,
}

async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 65536];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let mut len = 0;
    let mut content_type = "application/json".to_string();
    let mut gzip = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = v.trim().to_string(),
                "content-encoding" => gzip = v.trim().eq_ignore_ascii_case("gzip"),
                "transfer-encoding" => panic!("proxy: chunked request bodies are not supported"),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + len {
        let mut chunk = vec![0u8; 1 << 20];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    if gzip {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
            .expect("proxy: a gzip body that does not decode");
        body = plain;
    }
    Some(Request {
        method,
        path,
        content_type,
        gzip,
        body,
    })
}

async fn respond(sock: &mut TcpStream, status: u16, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    sock.flush().await
}

async fn forward(upstream: &str, req: &Request, body: Vec<u8>) -> (u16, Vec<u8>) {
    let url = format!("{upstream}{}", req.path);
    let (method, ct) = (req.method.clone(), req.content_type.clone());
    tokio::task::spawn_blocking(move || {
        let r = ureq::request(&method, &url).set("content-type", &ct);
        let result = if body.is_empty() && method == "GET" {
            r.call()
        } else {
            r.send_bytes(&body)
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return (502, format!("{{\"error\":\"proxy: {e}\"}}").into_bytes()),
        };
        let status = resp.status();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut out).unwrap();
        (status, out)
    })
    .await
    .unwrap()
}

fn next_fault(state: &Mutex<State>) -> Option<Fault> {
    let mut s = state.lock().unwrap();
    let (fault, times) = s.script.front_mut()?;
    let f = fault.clone();
    *times -= 1;
    if *times == 0 {
        s.script.pop_front();
    }
    Some(f)
}

/// Bulk body as (action line, document line) pairs.
fn pairs(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .chunks(2)
        .map(|c| {
            (
                c[0].to_vec(),
                c.get(1).map(|d| d.to_vec()).unwrap_or_default(),
            )
        })
        .collect()
}

fn doc_id(action: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(action).unwrap();
    v.as_object().unwrap().values().next().unwrap()["_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn serve(mut sock: TcpStream, upstream: String, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut sock, &mut buf).await {
        let is_bulk = req.path.contains("_bulk");
        let fault = next_fault(&state);
        match fault {
            Some(Fault::Status(code)) => {
                let body = format!(
                    r#"{{"error":{{"type":"injected","reason":"injected {code}"}},"status":{code}}}"#
                );
                if respond(&mut sock, code, body.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            Some(Fault::ResetBefore) => return,
            _ => {}
        }
        if !is_bulk {
            let (status, body) = forward(&upstream, &req, req.body.clone()).await;
            if respond(&mut sock, status, &body).await.is_err() {
                return;
            }
            continue;
        }

        // A bulk request: decide per item what is forwarded and what is answered here.
        let items = pairs(&req.body);
        let (fail_positions, fail_status, fail_type) = match &fault {
            Some(Fault::Items {
                positions,
                status,
                error_type,
            }) => (positions.clone(), *status, error_type.clone()),
            _ => (Vec::new(), 0, String::new()),
        };
        let reject_ids = state.lock().unwrap().reject_ids.clone();
        let mut local: HashMap<usize, serde_json::Value> = HashMap::new();
        let mut body = Vec::new();
        let mut sent_positions = Vec::new();
        for (i, (action, doc)) in items.iter().enumerate() {
            let id = doc_id(action);
            if fail_positions.contains(&i) {
                local.insert(i, item_error(&id, fail_status, &fail_type));
            } else if reject_ids.contains(&id) {
                local.insert(i, item_error(&id, 400, "mapper_parsing_exception"));
            } else {
                body.extend_from_slice(action);
                body.push(b'\n');
                body.extend_from_slice(doc);
                body.push(b'\n');
                sent_positions.push(i);
                *state.lock().unwrap().forwarded.entry(id).or_insert(0) += 1;
            }
        }
        {
            let mut st = state.lock().unwrap();
            st.bulk_requests += 1;
            st.gzip_requests += u64::from(req.gzip);
            st.ndjson_requests += u64::from(req.content_type == "application/x-ndjson");
        }
        let upstream_items: Vec<serde_json::Value> = if sent_positions.is_empty() {
            Vec::new()
        } else {
            let (status, resp) = forward(&upstream, &req, body).await;
            assert_eq!(
                status,
                200,
                "upstream bulk: {}",
                String::from_utf8_lossy(&resp)
            );
            let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
            v["items"].as_array().unwrap().clone()
        };
        match fault {
            Some(Fault::ResetAfter) => return,
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            _ => {}
        }
        if state.lock().unwrap().hold {
            state.lock().unwrap().held += 1;
            while state.lock().unwrap().hold {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut upstream_iter = upstream_items.into_iter();
        let mut merged = Vec::new();
        let mut errors = false;
        for i in 0..items.len() {
            let item = match local.remove(&i) {
                Some(v) => v,
                None => upstream_iter
                    .next()
                    .expect("upstream answered every forwarded item"),
            };
            let status = item.as_object().unwrap().values().next().unwrap()["status"]
                .as_u64()
                .unwrap();
            errors |= status >= 300;
            merged.push(item);
        }
        let body = serde_json::json!({"took": 1, "errors": errors, "items": merged}).to_string();
        if respond(&mut sock, 200, body.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn item_error(id: &str, status: u16, kind: &str) -> serde_json::Value {
    serde_json::json!({"create": {"_id": id, "status": status, "error": {"type": kind, "reason": format!("injected {kind}")}}})
}
