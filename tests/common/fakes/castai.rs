//! A fake CAST AI audit-log API, following `../shared/specs/castai-audit-api.md`:
//! `GET /v1/audit` and `GET /v2/audit/events` with the `X-API-Key` header, `page.limit`,
//! `fromDate`/`toDate`, `page.cursor` and `nextCursor`, 401 for a wrong key.
//!
//! Where the spec leaves things open, the fake takes the least convenient reading, so the
//! client cannot depend on them: v1 returns the newest events first and both date bounds are
//! inclusive. It is strict about what the spec fixes: unknown parameters, a `page.limit` out of
//! range, v1 follow-up pages with anything but `page.limit` and `page.cursor`, or a v2 cursor
//! with a changed query are answered 400.
//!
//! Tests can inject 429 answers and hold a page request open (to kill the client while it
//! waits), and read every request the fake received.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One stored event: the time and cluster the server filters by, and the JSON it returns
/// (whose own time field may be garbage, to test the client's handling of bad items).
#[derive(Clone, Debug)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub cluster: String,
    pub json: Value,
}

/// A request as the fake received it.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub params: Vec<(String, String)>,
    pub status: u16,
}

impl Request {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.params.iter().map(|(k, _)| k.as_str()).collect();
        k.sort();
        k
    }
}

#[derive(Default)]
struct Inner {
    key: String,
    events: Vec<Event>,
    fail_429: usize,
    hold_page: Option<usize>,
    held: bool,
    requests: Vec<Request>,
    cursors: HashMap<String, Cursor>,
    next_cursor: u64,
}

/// A listing in progress: the whole result, fixed at the first page, and where it stands.
struct Cursor {
    results: Vec<Value>,
    offset: usize,
    page: usize,
    /// v2: the query without cursor and limit, which follow-up pages must repeat.
    query: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Inner>>;

pub struct FakeCastai {
    pub url: String,
    inner: Shared,
}

impl FakeCastai {
    /// Starts the fake on 127.0.0.1 with its own thread and runtime (the tests block on the
    /// binary while it serves). It accepts only `key`.
    pub fn start(key: &str) -> FakeCastai {
        let inner: Shared = Arc::new(Mutex::new(Inner {
            key: key.into(),
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/v1/audit", get(v1))
            .route("/v2/audit/events", get(v2))
            .with_state(inner.clone());
        let url = super::serve(app);
        FakeCastai { url, inner }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    pub fn add(&self, events: impl IntoIterator<Item = Event>) {
        self.lock().events.extend(events);
    }

    /// The next `n` requests (with a valid key) are answered 429.
    pub fn fail_429(&self, n: usize) {
        self.lock().fail_429 = n;
    }

    /// Requests for page `page` (1-based, within one listing) wait until `release`.
    pub fn hold_page(&self, page: usize) {
        self.lock().hold_page = Some(page);
    }

    pub fn release(&self) {
        let mut i = self.lock();
        i.hold_page = None;
        i.held = false;
    }

    /// Whether a request is waiting at the held page.
    pub fn is_holding(&self) -> bool {
        self.lock().held
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }
}

/// A v1 item as the spec describes it.
pub fn v1_event(id: &str, at: DateTime<Utc>, cluster: &str, event_type: &str) -> Event {
    Event {
        at,
        cluster: cluster.into(),
        json: json!({
            "id": id,
            "eventType": event_type,
            "initiatedBy": {"id": "u-1", "name": "Ann Auditor", "email": "ann@example.com"},
            "time": at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            "event": {"cluster": {"id": cluster, "name": "prod"}, "reason": "test"},
            "labels": {"clusterId": cluster},
            "operation": {"type": "delete", "text": "Cluster deleted"},
        }),
    }
}

/// A v2 event as the spec describes it.
pub fn v2_event(id: &str, at: DateTime<Utc>, cluster: &str) -> Event {
    Event {
        at,
        cluster: cluster.into(),
        json: json!({
            "eventId": id,
            "requestId": format!("req-{id}"),
            "correlationId": format!("corr-{id}"),
            "tenantId": "org-1",
            "occurredAt": at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            "ingestedAt": (at + chrono::Duration::seconds(2)).to_rfc3339_opts(SecondsFormat::AutoSi, true),
            "sourceService": "cluster-controller",
            "eventDomain": "cluster",
            "eventResource": "node",
            "eventAction": "delete",
            "eventSeverity": "SEVERITY_INFO",
            "eventSeverityText": "info",
            "description": "Node deleted",
            "actor": {"type": "user", "id": "u-1", "displayName": "Ann Auditor", "email": "ann@example.com"},
            "resource": {"type": "node", "id": format!("node-{id}"), "displayName": "node"},
            "labels": {"env": "prod"},
            "clusterId": cluster,
        }),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"message": message}))).into_response()
}

fn parse_time(v: Option<&String>) -> Option<DateTime<Utc>> {
    v.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

#[derive(Clone, Copy, PartialEq)]
enum Version {
    V1,
    V2,
}

async fn v1(State(s): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    serve(s, Version::V1, headers, q).await
}

async fn v2(State(s): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    serve(s, Version::V2, headers, q).await
}

async fn serve(s: Shared, version: Version, headers: HeaderMap, q: Option<String>) -> Response {
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let path = match version {
        Version::V1 => "/v1/audit",
        Version::V2 => "/v2/audit/events",
    };
    let (response, page) = {
        let mut inner = s.lock().unwrap();
        let authorized = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|k| k == inner.key);
        let (response, page) = if !authorized {
            (Err(error(StatusCode::UNAUTHORIZED, "Unauthorized")), 0)
        } else if inner.fail_429 > 0 {
            inner.fail_429 -= 1;
            (
                Err(error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded")),
                0,
            )
        } else {
            match listing(&mut inner, version, &params) {
                Ok((body, page)) => (Ok(body), page),
                Err(message) => (Err(error(StatusCode::BAD_REQUEST, &message)), 0),
            }
        };
        let status = match &response {
            Ok(_) => 200,
            Err(r) => r.status().as_u16(),
        };
        inner.requests.push(Request {
            path: path.into(),
            params: params.clone(),
            status,
        });
        (response, page)
    };
    // Hold outside the lock, so the test can look and release.
    loop {
        {
            let mut inner = s.lock().unwrap();
            if inner.hold_page != Some(page) || page == 0 {
                break;
            }
            inner.held = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match response {
        Ok(body) => Json(body).into_response(),
        Err(r) => r,
    }
}

/// One page of a listing; returns the body and the page's number in its listing.
fn listing(
    inner: &mut Inner,
    version: Version,
    params: &[(String, String)],
) -> Result<(Value, usize), String> {
    let allowed: &[&str] = match version {
        Version::V1 => &[
            "page.limit",
            "page.cursor",
            "fromDate",
            "toDate",
            "clusterId",
        ],
        Version::V2 => &[
            "page.limit",
            "page.cursor",
            "fromDate",
            "toDate",
            "sort.field",
            "sort.order",
            "filter.clusters",
            "filter.domains",
            "filter.resources",
            "filter.actions",
            "filter.severity",
        ],
    };
    if let Some((k, _)) = params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(format!("unknown parameter {k}"));
    }
    let single: HashMap<String, String> = params.iter().cloned().collect();
    let (min, max) = match version {
        Version::V1 => (10, 1000),
        Version::V2 => (1, 250),
    };
    let limit: usize = single
        .get("page.limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| (min..=max).contains(l))
        .ok_or_else(|| format!("page.limit must be {min}..{max}"))?;
    let query: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "page.cursor" && k != "page.limit")
        .cloned()
        .collect();

    let token = match single.get("page.cursor") {
        Some(token) => {
            let cursor = inner
                .cursors
                .get(token)
                .ok_or_else(|| "invalid page.cursor".to_string())?;
            match version {
                Version::V1 if !query.is_empty() => {
                    return Err("a cursor request takes only page.limit and page.cursor".into())
                }
                Version::V2 if cursor.query != query => {
                    return Err("the query changed between pages".into())
                }
                _ => {}
            }
            token.clone()
        }
        None => {
            let from = parse_time(single.get("fromDate")).ok_or("fromDate: expected RFC 3339")?;
            let to = parse_time(single.get("toDate")).ok_or("toDate: expected RFC 3339")?;
            let clusters: Vec<&str> = params
                .iter()
                .filter(|(k, _)| k == "clusterId" || k == "filter.clusters")
                .map(|(_, v)| v.as_str())
                .collect();
            let mut matching: Vec<&Event> = inner
                .events
                .iter()
                .filter(|e| e.at >= from && e.at <= to)
                .filter(|e| clusters.is_empty() || clusters.contains(&e.cluster.as_str()))
                .collect();
            let ascending = version == Version::V2
                && single.get("sort.field").map(String::as_str) == Some("occurred_at")
                && single.get("sort.order").map(String::as_str) == Some("ASC");
            matching.sort_by_key(|e| e.at);
            if !ascending {
                matching.reverse();
            }
            let results = matching.into_iter().map(|e| e.json.clone()).collect();
            let token = new_token(inner);
            inner.cursors.insert(
                token.clone(),
                Cursor {
                    results,
                    offset: 0,
                    page: 0,
                    query,
                },
            );
            token
        }
    };
    let cursor = inner.cursors.remove(&token).expect("cursor");
    let end = (cursor.offset + limit).min(cursor.results.len());
    let items: Vec<Value> = cursor.results[cursor.offset..end].to_vec();
    let page = cursor.page + 1;
    let count = cursor.results.len();
    let next = if end < count {
        let next = new_token(inner);
        inner.cursors.insert(
            next.clone(),
            Cursor {
                offset: end,
                page,
                ..cursor
            },
        );
        Some(next)
    } else {
        None
    };
    let body = match version {
        // v1 ends with an empty cursor, v2 leaves it out: the client must take both.
        Version::V1 => json!({"items": items, "nextCursor": next.unwrap_or_default()}),
        Version::V2 => {
            let mut b = json!({"events": items, "previousCursor": "", "count": count});
            if let Some(n) = next {
                b["nextCursor"] = Value::String(n);
            }
            b
        }
    };
    Ok((body, page))
}

fn new_token(inner: &mut Inner) -> String {
    inner.next_cursor += 1;
    format!("cur-{:08x}", inner.next_cursor * 2654435761 % 4294967291)
}
