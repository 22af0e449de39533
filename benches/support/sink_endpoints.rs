//! Minimal receivers for the Splunk HEC and OTLP sinks' `make bench` lines: each parses every
//! event it is sent (as the real servers must) and answers success at once, so the line measures
//! our side: reading, encoding, sending, waiting for the answer, marking.

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The body as sent, decompressed when `Content-Encoding: gzip` says so, as servers do.
pub fn gunzip(headers: &axum::http::HeaderMap, body: Bytes) -> Bytes {
    if headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"))
    {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
            .expect("gzip body");
        Bytes::from(plain)
    } else {
        body
    }
}

/// HEC: `/services/collector/event` parses the concatenated envelopes and hands out an ackId;
/// `/services/collector/ack` reports every ackId asked for as indexed.
async fn hec_event(
    axum::extract::State(next): axum::extract::State<Arc<AtomicU64>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], String) {
    let body = gunzip(&headers, body);
    let events = serde_json::Deserializer::from_slice(&body)
        .into_iter::<serde_json::Value>()
        .map(|e| e.expect("HEC envelope"))
        .filter(|e| e.get("event").is_some())
        .count();
    assert!(events > 0, "an empty HEC request");
    let ack = next.fetch_add(1, Ordering::Relaxed);
    (
        [("content-type", "application/json")],
        format!(r#"{{"text":"Success","code":0,"ackId":{ack}}}"#),
    )
}

async fn hec_ack(body: Bytes) -> ([(&'static str, &'static str); 1], String) {
    let asked: serde_json::Value = serde_json::from_slice(&body).expect("ack request");
    let acks: serde_json::Map<String, serde_json::Value> = asked["acks"]
        .as_array()
        .expect("acks")
        .iter()
        .map(|id| (id.to_string(), serde_json::Value::Bool(true)))
        .collect();
    (
        [("content-type", "application/json")],
        serde_json::json!({ "acks": acks }).to_string(),
    )
}

/// OTLP/HTTP: decodes each `ExportLogsServiceRequest` (protobuf) and answers full success.
async fn otlp_logs(
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], Vec<u8>) {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
    };
    use prost::Message;
    let body = gunzip(&headers, body);
    let request = ExportLogsServiceRequest::decode(&body[..]).expect("ExportLogsServiceRequest");
    assert!(!request.resource_logs.is_empty(), "an empty OTLP request");
    (
        [("content-type", "application/x-protobuf")],
        ExportLogsServiceResponse::default().encode_to_vec(),
    )
}

/// Starts both receivers on one port: HEC under `/services/collector/`, OTLP at `/v1/logs`.
pub fn start(rt: &tokio::runtime::Runtime) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route("/services/collector/event", post(hec_event))
        .route("/services/collector/ack", post(hec_ack))
        .route("/v1/logs", post(otlp_logs))
        .with_state(Arc::new(AtomicU64::new(0)))
        .layer(axum::extract::DefaultBodyLimit::max(100 * 1024 * 1024));
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}
