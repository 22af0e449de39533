//! A fake Splunk HTTP Event Collector, following `../shared/specs/splunk-hec-sink.md`:
//! `POST /services/collector/event` and `POST /services/collector/ack`, with the answers
//! (`{"text","code"}` and HTTP status) of the spec's table.
//!
//! Strict where the spec is: `Authorization: Splunk <token>` (401 code 2/3, 403 code 4); with
//! acks on, the `X-Splunk-Request-Channel` GUID on every request (400 code 10/11); bodies of
//! concatenated JSON objects with only the envelope keys, a non-empty `event` (codes 12/13),
//! a numeric `time`, flat `fields` (code 15), string metadata, an allowed `index` (code 7),
//! anything else code 6 with `invalid-event-number`. As Splunk does, the events before a bad
//! one are indexed. ackIds increase per channel; an ack query reports `true` once, then forgets
//! the id (later queries say false).
//!
//! Tests can delay acks by a number of queries, withhold them, answer 503 "Server is busy", and
//! refuse one event (by its actor) with `invalid-event-number`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// When an ackId reads true.
#[derive(Clone, Copy, Debug)]
pub enum AckRule {
    /// At the first query.
    Immediate,
    /// After this many queries that said false.
    AfterQueries(usize),
    /// Never (lost, or not yet flushed).
    Never,
}

/// An indexed event: the whole envelope and the channel it came on.
#[derive(Clone, Debug)]
pub struct Indexed {
    pub envelope: Value,
    pub channel: Option<String>,
}

/// A request as the fake answered it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: &'static str,
    pub channel: Option<String>,
    pub status: u16,
    pub code: i64,
    /// The body came with `Content-Encoding: gzip`.
    pub gzip: bool,
}

struct Inner {
    token: String,
    ack: bool,
    indexes: Vec<String>,
    rule: AckRule,
    busy: usize,
    /// With `busy`: how many events of the request are processed before the 503 (which then
    /// names the next one in `invalid-event-number`).
    busy_processed: Option<usize>,
    reject_actor: Option<String>,
    indexed: Vec<Indexed>,
    /// Per channel: the next ackId, and the ids not yet reported true (queries still to
    /// answer false, or None: never).
    channels: HashMap<String, (u64, HashMap<u64, Option<usize>>)>,
    seen: Vec<Seen>,
}

type Shared = Arc<Mutex<Inner>>;

pub struct FakeSplunk {
    pub url: String,
    inner: Shared,
}

impl FakeSplunk {
    /// Starts the fake on 127.0.0.1 with its own thread and runtime. It accepts only `token`;
    /// `ack`: indexer acknowledgement enabled for it.
    pub fn start(token: &str, ack: bool) -> FakeSplunk {
        let inner: Shared = Arc::new(Mutex::new(Inner {
            token: token.into(),
            ack,
            indexes: vec!["main".into(), "audit".into()],
            rule: AckRule::Immediate,
            busy: 0,
            busy_processed: None,
            reject_actor: None,
            indexed: Vec::new(),
            channels: HashMap::new(),
            seen: Vec::new(),
        }));
        let app = Router::new()
            .route("/services/collector/event", post(event))
            .route("/services/collector/ack", post(ack_query))
            .with_state(inner.clone());
        let url = super::serve(app);
        FakeSplunk { url, inner }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// How acks of requests accepted from now on read.
    pub fn ack_rule(&self, rule: AckRule) {
        self.lock().rule = rule;
    }

    /// Every pending ack reads true at its next query (Splunk caught up).
    pub fn release_acks(&self) {
        let mut i = self.lock();
        i.rule = AckRule::Immediate;
        for (_, pending) in i.channels.values_mut() {
            for left in pending.values_mut() {
                *left = Some(0);
            }
        }
    }

    /// The next `n` event requests are answered 503 code 9.
    pub fn busy(&self, n: usize) {
        self.lock().busy = n;
    }

    /// The next event request has its first `processed` events indexed, then is answered
    /// 503 code 9 with `invalid-event-number` = `processed`.
    pub fn busy_after(&self, processed: usize) {
        let mut i = self.lock();
        i.busy = 1;
        i.busy_processed = Some(processed);
    }

    /// An event whose `audit_event.actor` is `actor` is refused (400 code 6 with its
    /// `invalid-event-number`).
    pub fn reject_actor(&self, actor: &str) {
        self.lock().reject_actor = Some(actor.into());
    }

    pub fn indexed(&self) -> Vec<Indexed> {
        self.lock().indexed.clone()
    }

    /// `fields.audit_transfer_id` of every indexed event, in arrival order.
    pub fn ids(&self) -> Vec<String> {
        self.indexed()
            .iter()
            .map(|e| {
                e.envelope["fields"]["audit_transfer_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }
}

fn answer(status: u16, text: &str, code: i64) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (status, Json(json!({"text": text, "code": code}))).into_response()
}

fn with_event(status: u16, text: &str, code: i64, i: usize) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    let body = json!({"text": text, "code": code, "invalid-event-number": i});
    (status, Json(body)).into_response()
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// HTTP status, text and code of an error answer.
type Refusal = (u16, &'static str, i64);

/// Token, then channel (when acks are on): the error answer, or the channel.
fn admit(i: &Inner, headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(auth) = headers.get("authorization") else {
        return Err((401, "Token is required", 2));
    };
    let Some(token) = auth.to_str().ok().and_then(|a| a.strip_prefix("Splunk ")) else {
        return Err((401, "Invalid authorization", 3));
    };
    if token != i.token {
        return Err((403, "Invalid token", 4));
    }
    let channel = headers
        .get("x-splunk-request-channel")
        .and_then(|c| c.to_str().ok())
        .map(String::from);
    if i.ack {
        match &channel {
            None => return Err((400, "Data channel is missing", 10)),
            Some(c) if !is_guid(c) => return Err((400, "Invalid data channel", 11)),
            _ => {}
        }
    }
    Ok(channel)
}

fn record(
    i: &mut Inner,
    path: &'static str,
    channel: &Option<String>,
    r: Response,
    code: i64,
) -> Response {
    i.seen.push(Seen {
        path,
        channel: channel.clone(),
        status: r.status().as_u16(),
        code,
        gzip: false,
    });
    r
}

/// The body as sent, gunzipped when its `Content-Encoding` says gzip; None: not valid gzip, or
/// an encoding the fake does not know.
fn decoded(headers: &HeaderMap, body: &[u8]) -> Option<(Vec<u8>, bool)> {
    match headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None => Some((body.to_vec(), false)),
        Some("gzip") => {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .ok()?;
            Some((out, true))
        }
        Some(_) => None,
    }
}

/// Why envelope `v` is refused: (HTTP status, text, code).
fn check(i: &Inner, v: &Value) -> Option<Refusal> {
    const FORMAT: Option<Refusal> = Some((400, "Invalid data format", 6));
    let Value::Object(o) = v else { return FORMAT };
    if o.keys().any(|k| {
        ![
            "time",
            "host",
            "source",
            "sourcetype",
            "index",
            "fields",
            "event",
        ]
        .contains(&k.as_str())
    }) {
        return FORMAT;
    }
    match o.get("event") {
        None | Some(Value::Null) => return Some((400, "Event field is required", 12)),
        Some(Value::String(s)) if s.is_empty() => {
            return Some((400, "Event field cannot be blank", 13))
        }
        _ => {}
    }
    match o.get("time") {
        None | Some(Value::Number(_)) => {}
        Some(Value::String(s)) if s.parse::<f64>().is_ok() => {}
        _ => return FORMAT,
    }
    for k in ["host", "source", "sourcetype", "index"] {
        if o.get(k).is_some_and(|x| !x.is_string()) {
            return FORMAT;
        }
    }
    if let Some(fields) = o.get("fields") {
        let flat = fields.as_object().is_some_and(|f| {
            f.values().all(|x| match x {
                Value::String(_) | Value::Number(_) => true,
                Value::Array(a) => a.iter().all(Value::is_string),
                _ => false,
            })
        });
        if !flat {
            return Some((400, "Error in handling indexed fields", 15));
        }
    }
    if let Some(index) = o.get("index").and_then(Value::as_str) {
        if !i.indexes.iter().any(|x| x == index) {
            return Some((400, "Incorrect index", 7));
        }
    }
    let actor = &v["event"]["audit_event"]["actor"];
    if i.reject_actor.is_some() && actor.as_str() == i.reject_actor.as_deref() {
        return FORMAT;
    }
    None
}

async fn event(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    const PATH: &str = "/services/collector/event";
    let mut i = s.lock().unwrap();
    let channel = match admit(&i, &headers) {
        Ok(c) => c,
        Err((status, text, code)) => {
            return record(&mut i, PATH, &None, answer(status, text, code), code)
        }
    };
    let Some((body, gzip)) = decoded(&headers, &body) else {
        let r = answer(400, "Invalid data format", 6);
        return record(&mut i, PATH, &channel, r, 6);
    };
    let (r, code) = event_answer(&mut i, &channel, &body);
    let r = record(&mut i, PATH, &channel, r, code);
    i.seen.last_mut().unwrap().gzip = gzip;
    r
}

/// An admitted event request, its body decoded: the answer and its code.
fn event_answer(i: &mut Inner, channel: &Option<String>, body: &[u8]) -> (Response, i64) {
    if i.busy > 0 {
        i.busy -= 1;
        let mut r = match i.busy_processed.take() {
            Some(n) => {
                let events = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
                for envelope in events.take(n).map_while(Result::ok) {
                    i.indexed.push(Indexed {
                        envelope,
                        channel: channel.clone(),
                    });
                }
                with_event(503, "Server is busy", 9, n)
            }
            None => answer(503, "Server is busy", 9),
        };
        r.headers_mut().insert("retry-after", "1".parse().unwrap());
        return (r, 9);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        let r = answer(400, "No data", 5);
        return (r, 5);
    }
    let mut accepted = Vec::new();
    let mut refusal = None;
    for (n, item) in serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .enumerate()
    {
        let why = match &item {
            Err(_) => Some((400, "Invalid data format", 6)),
            Ok(v) => check(i, v),
        };
        match (why, item) {
            (None, Ok(v)) => accepted.push(v),
            (Some(why), _) => {
                refusal = Some((why, n));
                break;
            }
            (None, Err(_)) => unreachable!(),
        }
    }
    // Splunk processes the events before a bad one.
    for envelope in accepted {
        i.indexed.push(Indexed {
            envelope,
            channel: channel.clone(),
        });
    }
    if let Some(((status, text, code), n)) = refusal {
        let r = with_event(status, text, code, n);
        return (r, code);
    }
    let r = if i.ack {
        let rule = i.rule;
        let (next, pending) = i
            .channels
            .entry(channel.clone().unwrap())
            .or_insert_with(|| (0, HashMap::new()));
        let id = *next;
        *next += 1;
        pending.insert(
            id,
            match rule {
                AckRule::Immediate => Some(0),
                AckRule::AfterQueries(n) => Some(n),
                AckRule::Never => None,
            },
        );
        Json(json!({"text": "Success", "code": 0, "ackId": id})).into_response()
    } else {
        Json(json!({"text": "Success", "code": 0})).into_response()
    };
    (r, 0)
}

async fn ack_query(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    const PATH: &str = "/services/collector/ack";
    let mut i = s.lock().unwrap();
    if !i.ack {
        let r = answer(400, "ACK is disabled", 14);
        return record(&mut i, PATH, &None, r, 14);
    }
    let channel = match admit(&i, &headers) {
        Ok(c) => c.unwrap(),
        Err((status, text, code)) => {
            return record(&mut i, PATH, &None, answer(status, text, code), code)
        }
    };
    let ids: Option<Vec<u64>> = serde_json::from_slice::<Value>(&body)
        .ok()
        .filter(|v| v.as_object().is_some_and(|o| o.len() == 1))
        .and_then(|v| serde_json::from_value(v["acks"].clone()).ok());
    let Some(ids) = ids else {
        let r = answer(400, "Invalid data format", 6);
        return record(&mut i, PATH, &Some(channel), r, 6);
    };
    let Some((_, pending)) = i.channels.get_mut(&channel) else {
        let r = answer(400, "Invalid data channel", 11);
        return record(&mut i, PATH, &Some(channel), r, 11);
    };
    let mut acks = serde_json::Map::new();
    for id in ids {
        let done = match pending.get_mut(&id) {
            Some(Some(0)) => {
                pending.remove(&id);
                true
            }
            Some(Some(left)) => {
                *left -= 1;
                false
            }
            _ => false,
        };
        acks.insert(id.to_string(), Value::Bool(done));
    }
    let r = Json(json!({ "acks": acks })).into_response();
    record(&mut i, PATH, &Some(channel), r, 0)
}
