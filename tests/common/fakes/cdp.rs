//! A fake CDP audit API that implements `shared/specs/cdp-audit-api.md` strictly: it verifies
//! the `x-altus-auth` signature (or access token) of every request and answers 401 with an
//! error body otherwise, accepts only `POST` with `application/json`, runs one batching task
//! at a time (a second start is 409 CONFLICT), paginates with opaque tokens, lists a batch's
//! events until the batch is marked and not after, and injects 429/503 and slow answers.
//!
//! It runs on its own thread and runtime, so tests can run the binary as a blocking process.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::{Rng, RngCore};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::signature::Verifier;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How the fake authenticates callers.
#[derive(Clone)]
pub enum Auth {
    Ed25519 {
        access_key_id: String,
        public: ed25519_dalek::VerifyingKey,
    },
    Rsa {
        access_key_id: String,
        public: rsa::RsaPublicKey,
    },
    Token(String),
}

/// A credential pair for the binary: what goes into CDP_ACCESS_KEY_ID and CDP_PRIVATE_KEY.
#[derive(Clone, Debug)]
pub struct KeyPair {
    pub access_key_id: String,
    pub private_key: String,
}

/// A fresh Ed25519 key: the fake's [`Auth`] and the binary's variables.
pub fn ed25519_key() -> (Auth, KeyPair) {
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let id = format!("ed-{}", rand::thread_rng().gen::<u32>());
    (
        Auth::Ed25519 {
            access_key_id: id.clone(),
            public: signing.verifying_key(),
        },
        KeyPair {
            access_key_id: id,
            private_key: STANDARD.encode(seed),
        },
    )
}

/// A fresh 2048-bit RSA key, PKCS#8 PEM.
pub fn rsa_key() -> (Auth, KeyPair) {
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let pem = private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let id = format!("rsa-{}", rand::thread_rng().gen::<u32>());
    (
        Auth::Rsa {
            access_key_id: id.clone(),
            public: private.to_public_key(),
        },
        KeyPair {
            access_key_id: id,
            private_key: pem,
        },
    )
}

#[derive(Debug, Clone)]
pub struct Batch {
    pub archive_id: String,
    pub archive_timestamp: i64,
    pub events: Vec<Value>,
    pub marked: bool,
    /// What `eventCount` says; normally the number of events.
    pub event_count: i64,
}

#[derive(Debug, Clone)]
struct Task {
    polls_left: u32,
    final_status: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    done: bool,
    batches: Vec<String>,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub operation: String,
    pub status: u16,
    pub body: Value,
}

pub struct FakeState {
    pub auth: Auth,
    pub account_id: String,
    pub batches: Vec<Batch>,
    /// Events written but not yet in a batch: a batching task puts those of its window into
    /// batches, one per hour.
    pub unbatched: Vec<Value>,
    tasks: HashMap<String, Task>,
    /// Polls a new task answers OPEN before it ends, and how it ends.
    pub task_polls: u32,
    pub task_outcome: String,
    tokens: HashMap<String, usize>,
    /// The most batches one page holds, whatever pageSize asks (servers may return fewer).
    pub max_page: usize,
    /// Answer every page with the same next token (a broken server).
    pub repeat_token: bool,
    /// Faults answered before the operation runs: (operation or any, status).
    pub faults: VecDeque<(Option<String>, u16)>,
    /// Slow answers per operation.
    pub delays: HashMap<String, Duration>,
    /// Operations that hang for this long and then answer 504 without doing anything.
    pub hangs: HashMap<String, Duration>,
    pub seen: Vec<Seen>,
    next_id: u64,
}

impl FakeState {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{:04}-{:08x}", self.next_id, rand::random::<u32>())
    }
}

pub struct FakeCdp {
    pub url: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeCdp {
    pub fn start(auth: Auth) -> FakeCdp {
        let state = Arc::new(Mutex::new(FakeState {
            auth,
            account_id: "9d74eee4-1cad-45d7-b645-7ccf9edbb73d".into(),
            batches: Vec::new(),
            unbatched: Vec::new(),
            tasks: HashMap::new(),
            task_polls: 2,
            task_outcome: "COMPLETED".into(),
            tokens: HashMap::new(),
            max_page: 100,
            repeat_token: false,
            faults: VecDeque::new(),
            delays: HashMap::new(),
            hangs: HashMap::new(),
            seen: Vec::new(),
            next_id: 0,
        }));
        let app = Router::new()
            .route("/api/v1/audit/{operation}", any(handle))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such path") })
            .with_state(state.clone());
        let url = super::serve(app);
        FakeCdp { url, state }
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Adds an outstanding batch of `events` archived at `archive_timestamp` (epoch ms).
    pub fn add_batch(&self, archive_timestamp: i64, events: Vec<Value>) -> String {
        let mut s = self.state();
        let archive_id = s.id("arch");
        s.batches.push(Batch {
            archive_id: archive_id.clone(),
            archive_timestamp,
            event_count: events.len() as i64,
            events,
            marked: false,
        });
        archive_id
    }

    /// `n` events for this account, `start_ms` and one second apart, ids unique per call.
    pub fn events(&self, n: usize, start_ms: i64) -> Vec<Value> {
        let mut s = self.state();
        let account = s.account_id.clone();
        (0..n)
            .map(|i| {
                let id = s.id("evt");
                event(&account, &id, start_ms + i as i64 * 1000)
            })
            .collect()
    }

    pub fn outstanding(&self) -> Vec<String> {
        self.state()
            .batches
            .iter()
            .filter(|b| !b.marked)
            .map(|b| b.archive_id.clone())
            .collect()
    }

    pub fn marked(&self) -> Vec<String> {
        self.state()
            .batches
            .iter()
            .filter(|b| b.marked)
            .map(|b| b.archive_id.clone())
            .collect()
    }

    pub fn batch(&self, archive_id: &str) -> Batch {
        self.state()
            .batches
            .iter()
            .find(|b| b.archive_id == archive_id)
            .cloned()
            .unwrap()
    }

    /// Requests of `operation` and their statuses.
    pub fn seen(&self, operation: &str) -> Vec<Seen> {
        self.state()
            .seen
            .iter()
            .filter(|s| s.operation == operation)
            .cloned()
            .collect()
    }

    pub fn inject(&self, operation: Option<&str>, status: u16) {
        self.state()
            .faults
            .push_back((operation.map(String::from), status));
    }

    /// Starts a batching task as another client would; it runs for `polls` status polls
    /// (of anyone) and then completes.
    pub fn start_foreign_task(&self, polls: u32) -> String {
        let mut s = self.state();
        let id = s.id("task");
        let now = Utc::now();
        s.tasks.insert(
            id.clone(),
            Task {
                polls_left: polls,
                final_status: "COMPLETED".into(),
                from: now - chrono::Duration::hours(1),
                to: now,
                done: false,
                batches: Vec::new(),
            },
        );
        id
    }

    /// Lets time pass for running tasks: each running task gets one poll closer to its end.
    fn tick(s: &mut FakeState) {
        let ids: Vec<String> = s.tasks.keys().cloned().collect();
        for id in ids {
            let t = s.tasks.get_mut(&id).unwrap();
            if !t.done {
                if t.polls_left > 0 {
                    t.polls_left -= 1;
                } else {
                    finish(s, &id);
                }
            }
        }
    }
}

/// A CdpAuditEvent with every required field and an API request event.
pub fn event(account_id: &str, id: &str, timestamp_ms: i64) -> Value {
    json!({
        "version": "1.0.0",
        "id": id,
        "eventSource": "iam",
        "eventName": "getUser",
        "timestamp": timestamp_ms,
        "actorIdentity": {"actorCrn": format!("crn:altus:iam:us-west-1:{account_id}:user:alice")},
        "accountId": account_id,
        "requestId": format!("req-{id}"),
        "resultCode": "SUCCESS",
        "apiRequestEvent": {
            "requestParameters": "{\"userId\": \"alice\"}",
            "mutating": false,
            "apiVersion": "v1",
            "sourceIPAddress": "192.0.2.10",
            "userAgent": "CDPCLI/0.9"
        }
    })
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(
            "x-altus-request-id",
            format!("fake-{}", rand::random::<u32>()),
        )],
        Json(json!({"code": code, "message": message})),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [(
            "x-altus-request-id",
            format!("fake-{}", rand::random::<u32>()),
        )],
        Json(body),
    )
        .into_response()
}

/// Puts the window's unbatched events into batches, one per hour of event time.
fn finish(s: &mut FakeState, task_id: &str) {
    let t = s.tasks.get(task_id).unwrap().clone();
    let (from, to) = (t.from.timestamp_millis(), t.to.timestamp_millis());
    let mut hours: std::collections::BTreeMap<i64, Vec<Value>> = Default::default();
    let mut keep = Vec::new();
    for e in std::mem::take(&mut s.unbatched) {
        let ts = e["timestamp"].as_i64().unwrap();
        if t.final_status == "COMPLETED" && ts >= from && ts < to {
            hours
                .entry(ts - ts.rem_euclid(3_600_000))
                .or_default()
                .push(e);
        } else {
            keep.push(e);
        }
    }
    s.unbatched = keep;
    let mut created = Vec::new();
    for (hour, events) in hours {
        let archive_id = s.id("arch");
        s.batches.push(Batch {
            archive_id: archive_id.clone(),
            archive_timestamp: hour,
            event_count: events.len() as i64,
            events,
            marked: false,
        });
        created.push(archive_id);
    }
    let t = s.tasks.get_mut(task_id).unwrap();
    t.done = true;
    t.batches = created;
}

fn batch_json(account_id: &str, b: &Batch) -> Value {
    json!({
        "accountId": account_id,
        "eventCount": b.event_count,
        "archiveId": b.archive_id,
        "archiveTimestamp": b.archive_timestamp,
    })
}

/// Checks `x-altus-auth` (or `authorization` for a token) as the spec describes.
fn authenticate(auth: &Auth, headers: &HeaderMap, path: &str) -> Result<(), String> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (id, public_ed, public_rsa) = match auth {
        Auth::Token(token) => {
            return match header("authorization") {
                Some(t) if t == token => Ok(()),
                Some(_) => Err("invalid access token".into()),
                None => Err("missing authorization".into()),
            }
        }
        Auth::Ed25519 {
            access_key_id,
            public,
        } => (access_key_id, Some(public), None),
        Auth::Rsa {
            access_key_id,
            public,
        } => (access_key_id, None, Some(public)),
    };
    let date = header("x-altus-date").ok_or("missing x-altus-date")?;
    let when = DateTime::parse_from_rfc2822(date).map_err(|_| "x-altus-date is not RFC 1123")?;
    if (Utc::now() - when.with_timezone(&Utc)).num_minutes().abs() > 15 {
        return Err("x-altus-date too far from now".into());
    }
    let value = header("x-altus-auth").ok_or("missing x-altus-auth")?;
    let (params, signature) = value.split_once('.').ok_or("malformed x-altus-auth")?;
    let params: Value = serde_json::from_slice(
        &URL_SAFE
            .decode(params)
            .map_err(|_| "auth params not base64url")?,
    )
    .map_err(|_| "auth params not JSON")?;
    let signature = URL_SAFE
        .decode(signature)
        .map_err(|_| "signature not base64url")?;
    if params["access_key_id"] != json!(id) {
        return Err("unknown access key id".into());
    }
    let method = params["auth_method"].as_str().unwrap_or_default();
    let content_type = header("content-type").unwrap_or_default();
    let canonical = format!("POST\n{content_type}\n{date}\n{path}\n{method}");
    let valid = match (method, public_ed, public_rsa) {
        ("ed25519v1", Some(public), _) => ed25519_dalek::Signature::from_slice(&signature)
            .map(|sig| public.verify(canonical.as_bytes(), &sig).is_ok())
            .unwrap_or(false),
        ("rsav1", _, Some(public)) => {
            let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public.clone());
            rsa::pkcs1v15::Signature::try_from(signature.as_slice())
                .map(|sig| verifier.verify(canonical.as_bytes(), &sig).is_ok())
                .unwrap_or(false)
        }
        _ => return Err(format!("auth method {method:?} does not fit the key")),
    };
    if valid {
        Ok(())
    } else {
        Err("signature does not verify".into())
    }
}

async fn handle(
    State(state): State<Arc<Mutex<FakeState>>>,
    Path(operation): Path<String>,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (response, pause) = {
        let mut s = state.lock().unwrap();
        let response = precheck(&mut s, &operation, &method, &headers, uri.path(), &parsed);
        let pause = s
            .hangs
            .get(&operation)
            .map(|d| (*d, true))
            .or_else(|| s.delays.get(&operation).map(|d| (*d, false)));
        (response, pause)
    };
    let response = match (response, pause) {
        (Some(r), _) => r,
        (None, Some((d, true))) => {
            record(&state, &operation, 504, &parsed);
            tokio::time::sleep(d).await;
            return error(StatusCode::GATEWAY_TIMEOUT, "GATEWAY_TIMEOUT", "hung");
        }
        (None, pause) => {
            if let Some((d, _)) = pause {
                tokio::time::sleep(d).await;
            }
            let mut s = state.lock().unwrap();
            operate(&mut s, &operation, &parsed)
        }
    };
    record(&state, &operation, response.status().as_u16(), &parsed);
    response
}

fn record(state: &Arc<Mutex<FakeState>>, operation: &str, status: u16, body: &Value) {
    state.lock().unwrap().seen.push(Seen {
        operation: operation.to_string(),
        status,
        body: body.clone(),
    });
}

/// Method, content type, signature, injected faults: an answer if the request stops here.
fn precheck(
    s: &mut FakeState,
    operation: &str,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    body: &Value,
) -> Option<Response> {
    if method != Method::POST {
        return Some(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "only POST",
        ));
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "INVALID_ARGUMENT",
            "Content-Type must be application/json",
        ));
    }
    if let Err(why) = authenticate(&s.auth, headers, path) {
        return Some(error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", &why));
    }
    if !body.is_object() {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "body must be a JSON object",
        ));
    }
    let fault = s
        .faults
        .front()
        .is_some_and(|(op, _)| op.as_deref().is_none_or(|o| o == operation));
    if fault {
        let (_, status) = s.faults.pop_front().unwrap();
        let code = match status {
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            _ => "INTERNAL",
        };
        return Some(error(
            StatusCode::from_u16(status).unwrap(),
            code,
            "injected fault",
        ));
    }
    None
}

fn operate(s: &mut FakeState, operation: &str, body: &Value) -> Response {
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", m);
    let account = s.account_id.clone();
    match operation {
        "batchEventsForArchiving" => {
            let time = |k: &str| {
                body[k]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
            };
            let (Some(from), Some(to)) = (time("fromTimestamp"), time("toTimestamp")) else {
                return bad("fromTimestamp and toTimestamp (ISO 8601) are required");
            };
            FakeCdp::tick(s);
            if s.tasks.values().any(|t| !t.done) {
                return error(
                    StatusCode::CONFLICT,
                    "CONFLICT",
                    "a batching task is already running",
                );
            }
            let id = s.id("task");
            let task = Task {
                polls_left: s.task_polls,
                final_status: s.task_outcome.clone(),
                from,
                to,
                done: false,
                batches: Vec::new(),
            };
            s.tasks.insert(id.clone(), task);
            ok(json!({ "taskId": id }))
        }
        "getBatchEventsForArchivingStatus" => {
            let Some(id) = body["taskId"].as_str() else {
                return bad("taskId is required");
            };
            if !s.tasks.contains_key(id) {
                return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such task");
            }
            FakeCdp::tick(s);
            let t = &s.tasks[id];
            if !t.done {
                return ok(json!({"status": "OPEN", "eventBatches": []}));
            }
            let batches: Vec<Value> = t
                .batches
                .iter()
                .filter_map(|a| s.batches.iter().find(|b| &b.archive_id == a))
                .map(|b| batch_json(&account, b))
                .collect();
            ok(json!({"status": t.final_status, "eventBatches": batches}))
        }
        "listOutstandingArchiveBatches" => {
            let page_size = match &body["pageSize"] {
                Value::Null => 100,
                v => match v.as_u64() {
                    Some(n) if (20..=100).contains(&n) => n as usize,
                    _ => return bad("pageSize must be from 20 to 100"),
                },
            };
            let offset = match body["pageToken"].as_str() {
                None => 0,
                Some(t) => match s.tokens.get(t) {
                    Some(o) => *o,
                    None => return bad("invalid pageToken"),
                },
            };
            let outstanding: Vec<Value> = s
                .batches
                .iter()
                .filter(|b| !b.marked)
                .map(|b| batch_json(&account, b))
                .collect();
            let end = (offset + page_size.min(s.max_page)).min(outstanding.len());
            let page = outstanding[offset.min(end)..end].to_vec();
            let mut answer = json!({ "eventBatches": page });
            if end < outstanding.len() {
                let token = if s.repeat_token {
                    "same-token".to_string()
                } else {
                    let mut raw = [0u8; 12];
                    rand::thread_rng().fill_bytes(&mut raw);
                    URL_SAFE.encode(raw)
                };
                s.tokens.insert(token.clone(), end);
                answer["nextPageToken"] = json!(token);
            }
            ok(answer)
        }
        "listEventsInArchiveBatch" => {
            let Some(id) = body["archiveId"].as_str() else {
                return bad("archiveId is required");
            };
            match s.batches.iter().find(|b| b.archive_id == id && !b.marked) {
                Some(b) => ok(json!({ "auditEvents": b.events })),
                None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such batch"),
            }
        }
        "markArchiveBatchesAsSuccessful" => {
            let Some(ids) = body["archiveIds"].as_array() else {
                return bad("archiveIds is required");
            };
            let ids: Vec<String> = ids
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            if ids
                .iter()
                .any(|id| !s.batches.iter().any(|b| &b.archive_id == id && !b.marked))
            {
                return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such batch");
            }
            for b in s.batches.iter_mut().filter(|b| ids.contains(&b.archive_id)) {
                b.marked = true;
            }
            ok(json!({
                "archiveIds": ids,
                "archiveTimestamp": Utc::now().to_rfc3339(),
            }))
        }
        _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown operation"),
    }
}
