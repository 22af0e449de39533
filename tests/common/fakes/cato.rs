//! A fake of Cato's GraphQL feeds, following `../shared/specs/cato-feeds.md` §9: only
//! `POST /api/v1/graphql2` with `x-api-key` (a wrong key gets the live "permission denied"
//! answer, HTTP 200) and `Content-Type: application/json`; the query parsed as GraphQL, with
//! literals or variables; validation errors for unknown fields, arguments and enums, and for a
//! missing or malformed `timeFrame`; opaque markers bound to the account list, filters and
//! time frame; pages of at most 3000 events and 1000 audit records; per-account rate limits
//! answered as Cato does (HTTP 200, `{"errors":[{"message":"rate limit for operation: ...`).
//!
//! Where the spec is open the fake takes the least convenient reading: both `timeFrame` bounds
//! are inclusive, and the audit boundary repeats by default (each follow-up page starts with
//! the last record of the previous one). Modes: unchanged markers, expired markers (refused or
//! silently resumed at the oldest retained event), `errorString`, HTTP faults, 429.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use graphql_parser::query as gq;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PATH: &str = "/api/v1/graphql2";

#[derive(Clone, Debug)]
pub struct Event {
    pub account: String,
    pub fields: Map<String, Value>,
}

/// An eventsFeed event as Cato sends it: every fieldsMap value a string.
pub fn event(
    account: &str,
    id: &str,
    at: DateTime<Utc>,
    event_type: &str,
    sub_type: &str,
) -> Event {
    let mut fields = Map::new();
    for (k, v) in [
        ("event_id", id.to_string()),
        ("time", at.timestamp_millis().to_string()),
        ("time_str", at.to_rfc3339_opts(SecondsFormat::Secs, true)),
        ("event_type", event_type.to_string()),
        ("event_sub_type", sub_type.to_string()),
        ("account_id", account.to_string()),
        ("action", "Allow".to_string()),
        ("src_ip", "10.0.0.1".to_string()),
    ] {
        fields.insert(k.into(), Value::String(v));
    }
    Event {
        account: account.into(),
        fields,
    }
}

#[derive(Clone, Debug)]
pub struct Audit {
    pub account: String,
    pub at: DateTime<Utc>,
    pub fields: Map<String, Value>,
}

pub fn audit(account: &str, at: DateTime<Utc>, admin: &str, change: &str, model: &str) -> Audit {
    let mut fields = Map::new();
    for (k, v) in [
        ("account_id", account),
        ("admin", admin),
        ("admin_id", "1001"),
        ("change_type", change),
        ("creation_date", &at.timestamp_millis().to_string()),
        ("model_name", model),
        ("model_type", "Site"),
    ] {
        fields.insert(k.into(), Value::String(v.into()));
    }
    Audit {
        account: account.into(),
        at,
        fields,
    }
}

/// What an expired or unknown marker gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExpiredMarkers {
    /// A GraphQL error naming the marker.
    #[default]
    Refuse,
    /// The oldest retained event, without a word (a silent gap).
    Resume,
}

/// A request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub body: Value,
    pub status: u16,
    /// The answer's first bytes.
    pub answer: String,
}

#[derive(Clone, Debug)]
struct Marker {
    op: &'static str,
    accounts: Vec<String>,
    filters: Value,
    time_frame: Option<String>,
    /// eventsFeed: position in the log; auditFeed: index into the window's records.
    offset: usize,
    expired: bool,
}

struct Inner {
    key: String,
    events: Vec<Event>,
    /// Events before this log position are purged (retention).
    purged: usize,
    audits: Vec<Audit>,
    audit_page: usize,
    audit_repeat: bool,
    unchanged_marker: bool,
    expired: ExpiredMarkers,
    markers: HashMap<String, Marker>,
    next_marker: u64,
    limits: HashMap<&'static str, usize>,
    calls: HashMap<(String, &'static str), VecDeque<Instant>>,
    rate_limit_next: usize,
    /// After this many answered calls, the next `.1` are rate limited.
    rate_limit_at: Option<(usize, usize)>,
    served: usize,
    fail_next: VecDeque<u16>,
    account_errors: HashMap<String, String>,
    requests: Vec<Request>,
}

type Shared = Arc<Mutex<Inner>>;

pub struct FakeCato {
    /// The endpoint, for CATO_API_URL.
    pub url: String,
    inner: Shared,
}

impl FakeCato {
    pub fn start(key: &str) -> FakeCato {
        let inner: Shared = Arc::new(Mutex::new(Inner {
            key: key.into(),
            events: Vec::new(),
            purged: 0,
            audits: Vec::new(),
            audit_page: 1000,
            audit_repeat: true,
            unchanged_marker: false,
            expired: ExpiredMarkers::Refuse,
            markers: HashMap::new(),
            next_marker: 0,
            limits: HashMap::from([("eventsFeed", 100), ("auditFeed", 5)]),
            calls: HashMap::new(),
            rate_limit_next: 0,
            rate_limit_at: None,
            served: 0,
            fail_next: VecDeque::new(),
            account_errors: HashMap::new(),
            requests: Vec::new(),
        }));
        let app = Router::new()
            .route(PATH, post(graphql))
            .with_state(inner.clone());
        let base = super::serve(app);
        FakeCato {
            url: format!("{base}{PATH}"),
            inner,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    pub fn add_events(&self, events: impl IntoIterator<Item = Event>) {
        self.lock().events.extend(events);
    }

    pub fn add_audits(&self, records: impl IntoIterator<Item = Audit>) {
        self.lock().audits.extend(records);
    }

    /// Pages of auditFeed hold at most `n` records (the API's maximum is 1000).
    pub fn audit_page(&self, n: usize) {
        assert!((1..=1000).contains(&n));
        self.lock().audit_page = n;
    }

    /// Whether a follow-up auditFeed page starts with the previous page's last record.
    pub fn audit_repeat(&self, on: bool) {
        self.lock().audit_repeat = on;
    }

    /// Answers with the marker that was sent (and the same records again).
    pub fn unchanged_marker(&self, on: bool) {
        self.lock().unchanged_marker = on;
    }

    /// Every marker issued so far expires; `mode` says what using one gets.
    pub fn expire_markers(&self, mode: ExpiredMarkers) {
        let mut i = self.lock();
        i.expired = mode;
        for m in i.markers.values_mut() {
            m.expired = true;
        }
    }

    /// Drops the oldest `n` events (retention).
    pub fn purge(&self, n: usize) {
        let mut i = self.lock();
        i.purged = (i.purged + n).min(i.events.len());
    }

    /// Calls per minute and account allowed for `op`.
    pub fn limit(&self, op: &'static str, per_minute: usize) {
        self.lock().limits.insert(op, per_minute);
    }

    /// The next `n` authenticated calls are answered "rate limit for operation".
    pub fn rate_limit_next(&self, n: usize) {
        self.lock().rate_limit_next = n;
    }

    /// Once `after` more calls were answered, the following `n` are rate limited.
    pub fn rate_limit_after(&self, after: usize, n: usize) {
        let mut i = self.lock();
        i.rate_limit_at = Some((i.served + after, n));
    }

    /// The next requests are answered with these HTTP statuses (429 with `Retry-After: 1`).
    pub fn fail_next(&self, statuses: &[u16]) {
        self.lock().fail_next.extend(statuses);
    }

    pub fn account_error(&self, account: &str, error: &str) {
        self.lock()
            .account_errors
            .insert(account.into(), error.into());
    }

    pub fn clear_account_errors(&self) {
        self.lock().account_errors.clear();
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }
}

fn gql_error(message: &str, code: Option<&str>) -> Value {
    let mut e = json!({ "message": message });
    if let Some(c) = code {
        e["extensions"] = json!({ "code": c });
    }
    json!({ "errors": [e] })
}

/// A query that does not parse or validate: HTTP 400, as GraphQL servers answer.
fn invalid(message: String) -> (u16, Value) {
    (400, gql_error(&message, Some("GRAPH_QL_VALIDATION_FAILED")))
}

async fn graphql(State(inner): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let gzip = headers
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let mut i = inner.lock().unwrap();
    let (status, answer, retry_after) = answer(&mut i, &headers, &body);
    let text = match &answer {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let parsed_body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    i.requests.push(Request {
        body: parsed_body,
        status,
        answer: text.chars().take(200).collect(),
    });
    drop(i);
    let mut r = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        let mut r = (StatusCode::from_u16(status).unwrap(), enc.finish().unwrap()).into_response();
        r.headers_mut()
            .insert("content-encoding", "gzip".parse().unwrap());
        r
    } else {
        (StatusCode::from_u16(status).unwrap(), text).into_response()
    };
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("trace_id", "fake-trace-0001".parse().unwrap());
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert("retry-after", s.to_string().parse().unwrap());
    }
    r
}

fn answer(i: &mut Inner, headers: &HeaderMap, body: &[u8]) -> (u16, Value, Option<u64>) {
    if let Some(status) = i.fail_next.pop_front() {
        let after = (status == 429).then_some(1);
        return (status, Value::String(format!("HTTP {status}")), after);
    }
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return (415, gql_error("expected application/json", None), None);
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return (400, gql_error(&format!("bad JSON: {e}"), None), None),
    };
    let Some(query) = request.get("query").and_then(Value::as_str) else {
        return (400, gql_error("no query", None), None);
    };
    let variables = request
        .get("variables")
        .cloned()
        .filter(|v| !v.is_null())
        .unwrap_or_else(|| json!({}));
    let doc = match gq::parse_query::<String>(query) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            return (400, gql_error(&msg, Some("GRAPHQL_PARSE_FAILED")), None);
        }
    };
    let call = match validate(&doc, &variables) {
        Ok(c) => c,
        Err((s, v)) => return (s, v, None),
    };
    if key != Some(i.key.as_str()) {
        return (
            200,
            json!({"errors":[{"message":"permission denied","path":[call.op],"extensions":{"code":"Code104"}}],"data":{call.op: null}}),
            None,
        );
    }
    // The limits are per account and operation, shared by every key.
    if let Some((at, n)) = i.rate_limit_at {
        if i.served >= at {
            i.rate_limit_next = n;
            i.rate_limit_at = None;
        }
    }
    let limit = i.limits[call.op];
    let now = Instant::now();
    let over = i.rate_limit_next > 0
        || call.accounts.iter().any(|a| {
            let q = i.calls.entry((a.clone(), call.op)).or_default();
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
            {
                q.pop_front();
            }
            q.len() >= limit
        });
    if over {
        i.rate_limit_next = i.rate_limit_next.saturating_sub(1);
        let text = format!(
            r#"{{"errors":[{{"message":"rate limit for operation: {}","path":["{}"]}}],"data":{{"{}":null}}}}"#,
            call.op, call.op, call.op
        );
        return (200, Value::String(text), None);
    }
    for a in &call.accounts {
        i.calls
            .entry((a.clone(), call.op))
            .or_default()
            .push_back(now);
    }
    i.served += 1;
    let result = match call.op {
        "eventsFeed" => events_feed(i, &call),
        _ => audit_feed(i, &call),
    };
    match result {
        Ok(data) => (
            200,
            json!({ "data": { call.op: select(&data, &call.selection) } }),
            None,
        ),
        Err(message) => (
            200,
            json!({"errors":[{"message": message, "path":[call.op]}],"data":{call.op: null}}),
            None,
        ),
    }
}

/// A validated call: the operation, its arguments resolved, its selection.
struct Call {
    op: &'static str,
    accounts: Vec<String>,
    filters: Vec<Value>,
    marker: String,
    time_frame: Option<String>,
    selection: Sel,
}

/// A selection set: field name → its own selection.
#[derive(Debug, Default)]
struct Sel(Vec<(String, Sel)>);

/// The schema's object types this fake serves: (type, field, type of the field if an object).
type Fields = &'static [(&'static str, Option<&'static str>)];
const TYPES: &[(&str, Fields)] = &[
    (
        "EventsFeedData",
        &[
            ("marker", None),
            ("fetchedCount", None),
            ("accounts", Some("EventsFeedAccountRecords")),
        ],
    ),
    (
        "EventsFeedAccountRecords",
        &[
            ("id", None),
            ("errorString", None),
            ("records", Some("EventRecord")),
        ],
    ),
    (
        "EventRecord",
        &[("time", None), ("fieldsMap", None), ("flatFields", None)],
    ),
    (
        "AuditFeed",
        &[
            ("from", None),
            ("to", None),
            ("marker", None),
            ("fetchedCount", None),
            ("hasMore", None),
            ("accounts", Some("AuditFeedAccountRecords")),
        ],
    ),
    (
        "AuditFeedAccountRecords",
        &[("id", None), ("records", Some("AuditRecord"))],
    ),
    (
        "AuditRecord",
        &[("time", None), ("fieldsMap", None), ("flatFields", None)],
    ),
];

fn selection(set: &gq::SelectionSet<'_, String>, ty: &str) -> Result<Sel, String> {
    let fields = TYPES.iter().find(|(t, _)| *t == ty).expect("known type").1;
    let mut out = Vec::new();
    for item in &set.items {
        let gq::Selection::Field(f) = item else {
            return Err("fragments are not served by this fake".into());
        };
        let Some((_, sub)) = fields.iter().find(|(n, _)| *n == f.name) else {
            return Err(format!(
                "Cannot query field \"{}\" on type \"{ty}\".",
                f.name
            ));
        };
        let allowed_args: &[&str] = if f.name == "records" {
            &["fieldNames"]
        } else {
            &[]
        };
        if let Some((a, _)) = f
            .arguments
            .iter()
            .find(|(a, _)| !allowed_args.contains(&a.as_str()))
        {
            return Err(format!(
                "Unknown argument \"{a}\" on field \"{ty}.{}\".",
                f.name
            ));
        }
        let sub_sel = match sub {
            Some(t) if f.selection_set.items.is_empty() => {
                return Err(format!(
                    "Field \"{}\" of type \"{t}\" must have a selection of subfields.",
                    f.name
                ))
            }
            Some(t) => selection(&f.selection_set, t)?,
            None if !f.selection_set.items.is_empty() => {
                return Err(format!(
                    "Field \"{}\" must not have a selection since it is a scalar.",
                    f.name
                ))
            }
            None => Sel::default(),
        };
        out.push((f.name.clone(), sub_sel));
    }
    Ok(Sel(out))
}

/// Picks the selected fields of a full answer.
fn select(v: &Value, sel: &Sel) -> Value {
    if sel.0.is_empty() {
        return v.clone();
    }
    match v {
        Value::Array(items) => Value::Array(items.iter().map(|x| select(x, sel)).collect()),
        Value::Object(o) => Value::Object(
            sel.0
                .iter()
                .map(|(k, s)| (k.clone(), select(o.get(k).unwrap_or(&Value::Null), s)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn to_json(v: &gq::Value<'_, String>, vars: &Value, declared: &[String]) -> Result<Value, String> {
    Ok(match v {
        gq::Value::Variable(n) => {
            if !declared.contains(n) {
                return Err(format!("Variable \"${n}\" is not defined."));
            }
            vars.get(n).cloned().unwrap_or(Value::Null)
        }
        gq::Value::Int(n) => json!(n.as_i64()),
        gq::Value::Float(f) => json!(f),
        gq::Value::String(s) => Value::String(s.clone()),
        gq::Value::Boolean(b) => Value::Bool(*b),
        gq::Value::Null => Value::Null,
        gq::Value::Enum(e) => Value::String(e.clone()),
        gq::Value::List(l) => Value::Array(
            l.iter()
                .map(|x| to_json(x, vars, declared))
                .collect::<Result<_, _>>()?,
        ),
        gq::Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), to_json(x, vars, declared)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

const AUDIT_FIELDS: &[&str] = &[
    "account",
    "account_id",
    "admin",
    "admin_id",
    "apiKey",
    "audit_creation_type",
    "change_type",
    "creation_date",
    "insertion_date",
    "model_name",
    "model_type",
    "module",
];

fn validate(doc: &gq::Document<'_, String>, vars: &Value) -> Result<Call, (u16, Value)> {
    let ops: Vec<&gq::OperationDefinition<'_, String>> = doc
        .definitions
        .iter()
        .filter_map(|d| match d {
            gq::Definition::Operation(o) => Some(o),
            _ => None,
        })
        .collect();
    let [op] = ops.as_slice() else {
        return Err(invalid("exactly one operation expected".into()));
    };
    let (declared, set): (Vec<(String, String)>, _) = match op {
        gq::OperationDefinition::SelectionSet(s) => (Vec::new(), s),
        gq::OperationDefinition::Query(q) => (
            q.variable_definitions
                .iter()
                .map(|d| (d.name.clone(), d.var_type.to_string()))
                .collect(),
            &q.selection_set,
        ),
        _ => return Err(invalid("only queries are served".into())),
    };
    let names: Vec<String> = declared.iter().map(|(n, _)| n.clone()).collect();
    let [gq::Selection::Field(field)] = set.items.as_slice() else {
        return Err(invalid("exactly one feed field expected".into()));
    };
    let (op, allowed, ty): (&'static str, &[&str], &str) = match field.name.as_str() {
        "eventsFeed" => (
            "eventsFeed",
            &["accountIDs", "filters", "marker"],
            "EventsFeedData",
        ),
        "auditFeed" => (
            "auditFeed",
            &["accountIDs", "ids", "timeFrame", "filters", "marker"],
            "AuditFeed",
        ),
        other => {
            return Err(invalid(format!(
                "Cannot query field \"{other}\" on type \"Query\"."
            )))
        }
    };
    let mut args = Map::new();
    for (name, value) in &field.arguments {
        if !allowed.contains(&name.as_str()) {
            return Err(invalid(format!(
                "Unknown argument \"{name}\" on field \"Query.{op}\"."
            )));
        }
        if let gq::Value::Variable(v) = value {
            let ty = declared
                .iter()
                .find(|(n, _)| n == v)
                .map(|(_, t)| t.as_str());
            if let Some(t) = ty.filter(|t| name == "timeFrame" && *t != "TimeFrame!") {
                return Err(invalid(format!(
                    "Variable \"${v}\" of type \"{t}\" used in position expecting type \"TimeFrame!\"."
                )));
            }
        }
        args.insert(name.clone(), to_json(value, vars, &names).map_err(invalid)?);
    }
    let selection = selection(&field.selection_set, ty).map_err(invalid)?;
    let accounts: Vec<String> = match args.get("accountIDs").or_else(|| args.get("ids")) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(invalid("accountIDs: expected IDs".into())),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(invalid("accountIDs: expected a list of account IDs".into())),
    };
    let filters: Vec<Value> = match args.get("filters") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(f)) => f.clone(),
        Some(_) => return Err(invalid("filters: expected a list".into())),
    };
    for f in &filters {
        let Some(o) = f.as_object() else {
            return Err(invalid("a filter must be an object".into()));
        };
        if let Some(k) = o
            .keys()
            .find(|k| !["fieldName", "operator", "values"].contains(&k.as_str()))
        {
            return Err(invalid(format!(
                "Field \"{k}\" is not defined by type \"{}FieldFilterInput\".",
                if op == "eventsFeed" {
                    "EventFeed"
                } else {
                    "Audit"
                }
            )));
        }
        let operators: &[&str] = if op == "eventsFeed" {
            &["is", "is_not", "in", "not_in"]
        } else {
            &[
                "is",
                "is_not",
                "in",
                "not_in",
                "exists",
                "not_exists",
                "between",
                "not_between",
            ]
        };
        let operator = o
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !operators.contains(&operator) {
            return Err(invalid(format!(
                "Value \"{operator}\" does not exist in the operator enum."
            )));
        }
        let field_ok = match op {
            "eventsFeed" => matches!(
                o.get("fieldName").and_then(Value::as_str),
                Some("event_type" | "event_sub_type")
            ),
            _ => o
                .get("fieldName")
                .and_then(|f| f.get("AuditFieldName"))
                .and_then(Value::as_str)
                .is_some_and(|n| AUDIT_FIELDS.contains(&n)),
        };
        if !field_ok {
            return Err(invalid(format!("bad fieldName in filter {f}")));
        }
        if !o
            .get("values")
            .is_some_and(|v| v.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
        {
            return Err(invalid("filter values: expected a list of strings".into()));
        }
    }
    let time_frame = match (op, args.get("timeFrame")) {
        ("auditFeed", Some(Value::String(t))) => {
            if parse_time_frame(t).is_none() {
                return Err(invalid(format!("Invalid TimeFrame \"{t}\"")));
            }
            Some(t.clone())
        }
        ("auditFeed", _) => {
            return Err(invalid(
                "Argument \"timeFrame\" of type \"TimeFrame!\" is required.".into(),
            ))
        }
        _ => None,
    };
    let marker = match args.get("marker") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("marker: expected a String".into())),
    };
    Ok(Call {
        op,
        accounts,
        filters,
        marker,
        time_frame,
        selection,
    })
}

/// `last.<ISO-8601 duration>` or `utc.` + a range with its varying part in braces.
pub fn parse_time_frame(t: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if let Some(d) = t.strip_prefix("last.") {
        let d = d.strip_prefix('P')?;
        let (days, time) = d.split_once('T').unwrap_or((d, ""));
        let mut secs: i64 = 0;
        if let Some(n) = days.strip_suffix('D') {
            secs += n.parse::<i64>().ok()? * 86400;
        } else if !days.is_empty() {
            return None;
        }
        let mut rest = time;
        while !rest.is_empty() {
            let i = rest.find(|c: char| !c.is_ascii_digit())?;
            let n: i64 = rest[..i].parse().ok()?;
            secs += n * match &rest[i..i + 1] {
                "H" => 3600,
                "M" => 60,
                "S" => 1,
                _ => return None,
            };
            rest = &rest[i + 1..];
        }
        if secs == 0 {
            return None;
        }
        let now = Utc::now();
        return Some((now - chrono::Duration::seconds(secs), now));
    }
    let r = t.strip_prefix("utc.")?;
    let (prefix, rest) = r.split_once('{')?;
    let (range, suffix) = rest.split_once('}')?;
    let (a, b) = range.split_once("--")?;
    let parse = |s: String| {
        NaiveDateTime::parse_from_str(&s, "%Y-%m-%d/%H:%M:%S")
            .ok()
            .map(|n| n.and_utc())
    };
    let from = parse(format!("{prefix}{a}{suffix}"))?;
    let to = parse(format!("{prefix}{b}{suffix}"))?;
    (from <= to).then_some((from, to))
}

fn issue(i: &mut Inner, m: Marker) -> String {
    i.next_marker += 1;
    // Opaque: nothing in it can be edited into another position.
    let token = format!("{:016x}{:08x}", rand_u64(i.next_marker), i.next_marker);
    i.markers.insert(token.clone(), m);
    token
}

fn rand_u64(seed: u64) -> u64 {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15 ^ (std::process::id() as u64) << 32;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// The position a sent marker stands for, or the error to answer.
fn position(i: &Inner, call: &Call, start: usize) -> Result<Option<usize>, String> {
    if call.marker.is_empty() {
        return Ok(None);
    }
    let Some(m) = i.markers.get(&call.marker) else {
        return match i.expired {
            ExpiredMarkers::Refuse => Err("invalid marker".into()),
            ExpiredMarkers::Resume => Ok(Some(start)),
        };
    };
    if m.op != call.op
        || m.accounts != call.accounts
        || m.filters != Value::Array(call.filters.clone())
        || m.time_frame != call.time_frame
    {
        return Err("marker does not belong to this query".into());
    }
    if m.expired {
        return match i.expired {
            ExpiredMarkers::Refuse => Err("marker expired".into()),
            ExpiredMarkers::Resume => Ok(Some(start)),
        };
    }
    Ok(Some(m.offset))
}

fn matches(filters: &[Value], get: impl Fn(&str) -> Option<String>) -> bool {
    filters.iter().all(|f| {
        let name = match &f["fieldName"] {
            Value::String(s) => s.clone(),
            o => o["AuditFieldName"].as_str().unwrap_or_default().to_string(),
        };
        let value = get(&name);
        let values: BTreeSet<&str> = f["values"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let hit = value.as_deref().is_some_and(|v| values.contains(v));
        match f["operator"].as_str().unwrap() {
            "is" | "in" => hit,
            "is_not" | "not_in" => !hit,
            "exists" => value.is_some(),
            "not_exists" => value.is_none(),
            _ => true,
        }
    })
}

fn events_feed(i: &mut Inner, call: &Call) -> Result<Value, String> {
    let start = i.purged;
    let from = position(i, call, start)?.unwrap_or(start).max(start);
    let mut records: Vec<(String, Value)> = Vec::new();
    let mut pos = from;
    while pos < i.events.len() && records.len() < 3000 {
        let e = &i.events[pos];
        pos += 1;
        if !call.accounts.contains(&e.account)
            || !matches(&call.filters, |k| {
                e.fields.get(k).and_then(Value::as_str).map(String::from)
            })
        {
            continue;
        }
        let time = e.fields["time_str"].clone();
        records.push((
            e.account.clone(),
            json!({"time": time, "fieldsMap": e.fields, "flatFields": null}),
        ));
    }
    let marker = if i.unchanged_marker && !call.marker.is_empty() {
        call.marker.clone()
    } else {
        let m = Marker {
            op: call.op,
            accounts: call.accounts.clone(),
            filters: Value::Array(call.filters.clone()),
            time_frame: None,
            offset: pos,
            expired: false,
        };
        issue(i, m)
    };
    // A failing account's records are not part of the answer.
    records.retain(|(acc, _)| !i.account_errors.contains_key(acc));
    let accounts: Vec<Value> = call
        .accounts
        .iter()
        .map(|a| {
            let recs: Vec<&Value> = records
                .iter()
                .filter(|(acc, _)| acc == a)
                .map(|(_, r)| r)
                .collect();
            json!({"id": a, "errorString": i.account_errors.get(a), "records": recs})
        })
        .collect();
    Ok(json!({"marker": marker, "fetchedCount": records.len(), "accounts": accounts}))
}

fn audit_feed(i: &mut Inner, call: &Call) -> Result<Value, String> {
    let tf = call.time_frame.clone().expect("validated");
    let (from, to) = parse_time_frame(&tf).expect("validated");
    let mut all: Vec<&Audit> = i
        .audits
        .iter()
        .filter(|a| call.accounts.contains(&a.account) && a.at >= from && a.at <= to)
        .filter(|a| {
            matches(&call.filters, |k| {
                a.fields.get(k).and_then(Value::as_str).map(String::from)
            })
        })
        .collect();
    all.sort_by_key(|a| a.at);
    let start = match position(i, call, 0)? {
        // The boundary is inclusive: the last record of the previous page comes again.
        Some(p) if i.audit_repeat && p > 0 => p - 1,
        Some(p) => p,
        None => 0,
    };
    let end = (start + i.audit_page).min(all.len());
    let page: Vec<(String, Value)> = all[start.min(end)..end]
        .iter()
        .map(|a| {
            (
                a.account.clone(),
                json!({"time": a.at.to_rfc3339_opts(SecondsFormat::Secs, true), "fieldsMap": a.fields, "flatFields": null}),
            )
        })
        .collect();
    let has_more = end < all.len();
    let marker = if i.unchanged_marker && !call.marker.is_empty() {
        call.marker.clone()
    } else {
        let m = Marker {
            op: call.op,
            accounts: call.accounts.clone(),
            filters: Value::Array(call.filters.clone()),
            time_frame: Some(tf),
            offset: end,
            expired: false,
        };
        issue(i, m)
    };
    let accounts: Vec<Value> = call
        .accounts
        .iter()
        .map(|a| {
            let recs: Vec<&Value> = page
                .iter()
                .filter(|(acc, _)| acc == a)
                .map(|(_, r)| r)
                .collect();
            json!({"id": a, "records": recs})
        })
        .collect();
    Ok(json!({
        "from": from.to_rfc3339_opts(SecondsFormat::Secs, true),
        "to": to.to_rfc3339_opts(SecondsFormat::Secs, true),
        "marker": marker, "fetchedCount": page.len(), "hasMore": has_more, "accounts": accounts
    }))
}
