//! A fake OTLP/HTTP logs receiver, following `../shared/specs/otlp-logs-sink.md`:
//! `POST /v1/logs` with an `ExportLogsServiceRequest`, decoded with the same generated types
//! (`opentelemetry-proto`) as protobuf (`application/x-protobuf`) or OTLP JSON
//! (`application/json`), gzip when `Content-Encoding: gzip` says so.
//!
//! Strict where the spec is: any other content type is 415, a body that does not decode is 400
//! with a `google.rpc.Status`-shaped message, the answer uses the request's content type. Tests
//! can require a header, cap the records per request (413), refuse the records of some actors (a partial success that does not
//! say which, as real receivers answer), and script failure statuses with `Retry-After`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value::Value as Any, AnyValue};
use prost::Message;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Mutex};

/// A stored log record, its body and attributes as JSON for assertions.
#[derive(Clone, Debug)]
pub struct Stored {
    pub uid: String,
    pub time_unix_nano: u64,
    pub severity: (i32, String),
    pub body: Value,
    pub attributes: Value,
    pub resource: Value,
}

/// A request as the fake answered it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub content_type: String,
    pub gzip: bool,
    pub records: usize,
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    header: Option<(String, String)>,
    refuse_actors: Vec<String>,
    /// Requests with more records than this get 413.
    max_records: Option<usize>,
    /// Statuses to answer next (status, Retry-After seconds), before looking at the body.
    script: VecDeque<(u16, Option<u64>)>,
    stored: Vec<Stored>,
    seen: Vec<Seen>,
    /// The protobuf bodies answered 200, uncompressed, for decoders other than ours.
    bodies: Vec<Vec<u8>>,
}

type Shared = Arc<Mutex<Inner>>;

pub struct FakeOtlp {
    pub url: String,
    inner: Shared,
}

impl FakeOtlp {
    /// Starts the fake on 127.0.0.1 with its own thread and runtime.
    pub fn start() -> FakeOtlp {
        let inner: Shared = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/v1/logs", post(logs))
            .with_state(inner.clone());
        let url = super::serve(app);
        FakeOtlp { url, inner }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// Requests without this header (and value) get 401.
    pub fn require_header(&self, name: &str, value: &str) {
        self.lock().header = Some((name.to_ascii_lowercase(), value.into()));
    }

    /// Records whose body has `audit_event.actor` = `actor` are refused.
    pub fn refuse_actor(&self, actor: &str) {
        self.lock().refuse_actors.push(actor.into());
    }

    /// Requests carrying more than `n` records are answered 413.
    pub fn max_records(&self, n: usize) {
        self.lock().max_records = Some(n);
    }

    /// The next request is answered `status` (with `Retry-After` seconds when given).
    pub fn answer_next(&self, status: u16, retry_after: Option<u64>) {
        self.lock().script.push_back((status, retry_after));
    }

    pub fn stored(&self) -> Vec<Stored> {
        self.lock().stored.clone()
    }

    pub fn uids(&self) -> Vec<String> {
        self.lock().stored.iter().map(|s| s.uid.clone()).collect()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// The protobuf request bodies it accepted, uncompressed, as they came.
    pub fn protobuf_bodies(&self) -> Vec<Vec<u8>> {
        self.lock().bodies.clone()
    }
}

/// An AnyValue as JSON (kvlists as objects, an unset value as null).
pub fn json_of(v: &AnyValue) -> Value {
    match &v.value {
        None => Value::Null,
        Some(Any::StringValue(s)) => json!(s),
        Some(Any::BoolValue(b)) => json!(b),
        Some(Any::IntValue(i)) => json!(i),
        Some(Any::DoubleValue(d)) => json!(d),
        Some(Any::BytesValue(b)) => json!(format!("bytes:{}", b.len())),
        Some(Any::ArrayValue(a)) => Value::Array(a.values.iter().map(json_of).collect()),
        Some(Any::KvlistValue(kv)) => Value::Object(
            kv.values
                .iter()
                .map(|k| (k.key.clone(), k.value.as_ref().map_or(Value::Null, json_of)))
                .collect(),
        ),
        Some(other) => json!(format!("unexpected {other:?}")),
    }
}

fn attributes(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> Value {
    Value::Object(
        kvs.iter()
            .map(|k| (k.key.clone(), k.value.as_ref().map_or(Value::Null, json_of)))
            .collect(),
    )
}

async fn logs(State(inner): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let content_type = header("content-type");
    let json = content_type.starts_with("application/json");
    let gzip = header("content-encoding") == "gzip";
    let mut g = inner.lock().unwrap();
    let mut seen = Seen {
        content_type: content_type.clone(),
        gzip,
        records: 0,
        status: 200,
    };
    let answer = |g: &mut Inner, mut seen: Seen, status: u16, reply: Response| {
        seen.status = status;
        g.seen.push(seen);
        reply
    };
    let failure = |status: u16, message: &str| {
        let code = StatusCode::from_u16(status).unwrap();
        let body = json!({"code": 3, "message": message}).to_string();
        (code, [("content-type", "application/json")], body).into_response()
    };
    if let Some((name, value)) = g.header.clone() {
        if header(&name) != value {
            return answer(
                &mut g,
                seen,
                401,
                failure(401, "missing or wrong credentials"),
            );
        }
    }
    if !json && content_type != "application/x-protobuf" {
        return answer(&mut g, seen, 415, failure(415, "unsupported content type"));
    }
    if let Some((status, retry_after)) = g.script.pop_front() {
        let mut reply = failure(status, "scripted failure");
        if let Some(s) = retry_after {
            reply
                .headers_mut()
                .insert("retry-after", s.to_string().parse().unwrap());
        }
        return answer(&mut g, seen, status, reply);
    }
    let raw = if gzip {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return answer(&mut g, seen, 400, failure(400, "bad gzip"));
        }
        out
    } else {
        body.to_vec()
    };
    let request = if json {
        serde_json::from_slice::<ExportLogsServiceRequest>(&raw).map_err(|e| e.to_string())
    } else {
        ExportLogsServiceRequest::decode(raw.as_slice()).map_err(|e| e.to_string())
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            return answer(
                &mut g,
                seen,
                400,
                failure(400, &format!("undecodable: {e}")),
            )
        }
    };
    let count: usize = request
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .map(|sl| sl.log_records.len())
        .sum();
    if g.max_records.is_some_and(|max| count > max) {
        seen.records = count;
        return answer(&mut g, seen, 413, failure(413, "request too large"));
    }
    let mut rejected = 0i64;
    for rl in &request.resource_logs {
        let resource = rl
            .resource
            .as_ref()
            .map_or(Value::Null, |r| attributes(&r.attributes));
        for sl in &rl.scope_logs {
            for r in &sl.log_records {
                seen.records += 1;
                let body = r.body.as_ref().map_or(Value::Null, json_of);
                let actor = body["audit_event"]["actor"].as_str().unwrap_or("");
                if g.refuse_actors.iter().any(|a| a == actor) {
                    rejected += 1;
                    continue;
                }
                let attrs = attributes(&r.attributes);
                g.stored.push(Stored {
                    uid: attrs["log.record.uid"].as_str().unwrap_or("").into(),
                    time_unix_nano: r.time_unix_nano,
                    severity: (r.severity_number, r.severity_text.clone()),
                    body,
                    attributes: attrs,
                    resource: resource.clone(),
                });
            }
        }
    }
    let reply = ExportLogsServiceResponse {
        partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: rejected,
            error_message: format!("{rejected} records refused by policy"),
        }),
    };
    if !json {
        g.bodies.push(raw.clone());
    }
    let (ct, bytes) = if json {
        ("application/json", serde_json::to_vec(&reply).unwrap())
    } else {
        ("application/x-protobuf", reply.encode_to_vec())
    };
    answer(
        &mut g,
        seen,
        200,
        (StatusCode::OK, [("content-type", ct)], bytes).into_response(),
    )
}
