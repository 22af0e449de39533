//! Routing, after Dataiku DSS's audit dispatch: a record may carry a **topic** (a category the
//! producer sets: `generic`, `authfail`, `iam`) and a **routing key**. A run may be restricted to
//! some topics and keys (`ACCEPT_TOPICS`, `ACCEPT_ROUTING_KEYS`); records it does not accept are
//! left untouched for a run configured for them. Sinks may place records by topic, key and date:
//! an index name template (`audit-{topic}-{yyyy.MM.dd}`) or the `routed` file layout
//! (`topic/routing-key/YYYY/mm/dd/HH/`).
//!
//! Where topic and key come from: a message field (`ROUTING_TOPIC_FIELD`, a dotted path) that
//! the SQL sources read in SQL, so a run never even claims rows it does not accept; for the API
//! sources a field of the document, by default the event's source and type.
//!
//! Only a non-empty JSON string is a topic or key: a missing field, `""`, `null`, a number or an
//! object means the record has none, which `ACCEPT_*` lists spell `_none` (so a topic that is
//! literally `_none` cannot be told from none).

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::source::SourceTraits;
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde_json::Value;

/// The topic or routing key of a record that has none: in `ACCEPT_*` lists, index names and
/// directory names.
pub const NONE: &str = "_none";

pub use crate::base::document::Route;

/// A dotted path into a JSON object, e.g. `audit_event.origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Segments are restricted to letters, digits, `_`, `-` and `@`, so the path can be written
    /// into SQL without quoting problems.
    pub fn parse(var: &str, value: &str) -> Result<Self, ConfigError> {
        let segments: Vec<String> = value.split('.').map(str::to_string).collect();
        let ok = segments.iter().all(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '@'))
        });
        if !ok {
            return Err(ConfigError(format!(
                "invalid {var} {value:?}: expected a dotted path of field names (letters, digits, '_', '-', '@'), e.g. audit_event.origin"
            )));
        }
        Ok(FieldPath(segments))
    }

    /// The string at this path, if there is one.
    pub fn lookup(&self, v: &Value) -> Option<String> {
        let mut at = v;
        for s in &self.0 {
            at = at.as_object()?.get(s)?;
        }
        at.as_str().filter(|s| !s.is_empty()).map(str::to_string)
    }

    /// The field names of the path, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// An `ACCEPT_TOPICS` / `ACCEPT_ROUTING_KEYS` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    values: Vec<String>,
    /// `_none` is in the list: records without a topic (key) are accepted too.
    none: bool,
}

impl Accept {
    pub fn parse(var: &str, value: &str) -> Result<Self, ConfigError> {
        let mut values = Vec::new();
        let mut none = false;
        for item in value.split(',').map(str::trim) {
            match item {
                "" => {
                    return Err(ConfigError(format!(
                        "invalid {var} {value:?}: expected a comma-separated list without empty entries (records without one are {NONE})"
                    )))
                }
                NONE => none = true,
                v => values.push(v.to_string()),
            }
        }
        Ok(Accept { values, none })
    }

    pub fn accepts(&self, v: Option<&str>) -> bool {
        match v {
            Some(v) => self.values.iter().any(|a| a == v),
            None => self.none,
        }
    }

    /// SQL predicate over `expr`; `ph` yields the next placeholder, bound with [`Accept::values`].
    pub fn sql(&self, expr: &str, ph: &mut dyn FnMut() -> String) -> String {
        let mut terms = Vec::new();
        if !self.values.is_empty() {
            let list: Vec<String> = self.values.iter().map(|_| ph()).collect();
            terms.push(format!("{expr} IN ({})", list.join(", ")));
        }
        if self.none {
            terms.push(format!("{expr} IS NULL"));
        }
        format!("({})", terms.join(" OR "))
    }

    /// The values to bind, in the order of the placeholders of [`Accept::sql`].
    pub fn values(&self) -> &[String] {
        &self.values
    }
}

/// What a run knows about routing.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    pub topic_field: Option<FieldPath>,
    pub key_field: Option<FieldPath>,
    pub accept_topics: Option<Accept>,
    pub accept_keys: Option<Accept>,
    /// A sink places records by route (index template or routed layout), so every record needs
    /// its route even when nothing is filtered.
    pub sink_needs_route: bool,
    /// With TARGETS: what each target accepts, in the order of TARGETS. A record is taken when
    /// some target accepts it. Empty without TARGETS.
    pub targets: Vec<Selection>,
}

/// What one target accepts (`TARGET_<NAME>_ACCEPT_TOPICS`, `..._ACCEPT_ROUTING_KEYS`); `None`:
/// every value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub topics: Option<Accept>,
    pub keys: Option<Accept>,
}

/// Whether a record with route `r` passes a topic list and a key list (`None`: any value).
fn passes(topics: Option<&Accept>, keys: Option<&Accept>, r: &Route) -> bool {
    topics.is_none_or(|a| a.accepts(r.topic.as_deref()))
        && keys.is_none_or(|a| a.accepts(r.key.as_deref()))
}

impl Selection {
    pub fn accepts(&self, r: &Route) -> bool {
        passes(self.topics.as_ref(), self.keys.as_ref(), r)
    }

    /// Accepts every record.
    pub fn is_all(&self) -> bool {
        self.topics.is_none() && self.keys.is_none()
    }
}

/// Topic and key fields: ROUTING_*_FIELD, else the source's own (the event's source and type
/// for the APIs; none for SQL tables, where only the application knows which field it is).
impl Routing {
    pub fn from_env(
        env: &Env,
        source: &SourceTraits,
        sink_needs_route: bool,
    ) -> Result<Self, ConfigError> {
        let field = |var: &str, value: Option<&str>, default: Option<&str>| {
            value
                .or(default)
                .map(|p| FieldPath::parse(var, p))
                .transpose()
        };
        let accept =
            |var: &str, value: Option<&str>| value.map(|a| Accept::parse(var, a)).transpose();
        let routing = Routing {
            topic_field: field(
                "ROUTING_TOPIC_FIELD",
                env.get("ROUTING_TOPIC_FIELD"),
                source.topic_field,
            )?,
            key_field: field(
                "ROUTING_KEY_FIELD",
                env.get("ROUTING_KEY_FIELD"),
                source.key_field,
            )?,
            accept_topics: accept("ACCEPT_TOPICS", env.get("ACCEPT_TOPICS"))?,
            accept_keys: accept("ACCEPT_ROUTING_KEYS", env.get("ACCEPT_ROUTING_KEYS"))?,
            sink_needs_route,
            targets: Vec::new(),
        };
        if routing.sink_needs_route && source.undated {
            return Err(ConfigError(
                "S3_OUTPUT=original ships lines as they are, without @timestamp, so the index name template or OUTPUT_LAYOUT=routed has no date to place them by: use S3_OUTPUT=document".into(),
            ));
        }
        let run = Selection {
            topics: routing.accept_topics.clone(),
            keys: routing.accept_keys.clone(),
        };
        routing.check_selection(["ACCEPT_TOPICS", "ACCEPT_ROUTING_KEYS"], &run, source)?;
        Ok(routing)
    }
}

impl Routing {
    /// The accept lists of a selection (named by `vars`: topics, keys) fit this source, and
    /// each has the field it selects by.
    pub fn check_selection(
        &self,
        vars: [&str; 2],
        selection: &Selection,
        source: &SourceTraits,
    ) -> Result<(), ConfigError> {
        let [topics_var, keys_var] = vars;
        for (var, list, field, field_var, example) in [
            (
                topics_var,
                &selection.topics,
                &self.topic_field,
                "ROUTING_TOPIC_FIELD",
                "topic",
            ),
            (
                keys_var,
                &selection.keys,
                &self.key_field,
                "ROUTING_KEY_FIELD",
                "routing_key",
            ),
        ] {
            if list.is_none() {
                continue;
            }
            if source.whole_units {
                // A unit (CDP archive batch) is acknowledged whole: marking it would lose the
                // records this run does not accept for every other run.
                return Err(ConfigError(format!(
                    "{var} cannot be used with AUDIT_LOGGER_TYPE=CDP_ARCHIVE: an archive batch is marked as a whole, so events this run skipped would be lost to other runs; route them with the index name template or OUTPUT_LAYOUT=routed instead"
                )));
            }
            if field.is_none() {
                return Err(ConfigError(format!(
                    "{var} is set but {field_var} is not: name the message field that holds it, e.g. {field_var}=audit_event.{example}"
                )));
            }
        }
        Ok(())
    }

    /// Whether records must be given a route at all.
    pub fn active(&self) -> bool {
        self.sink_needs_route
            || self.accept_topics.is_some()
            || self.accept_keys.is_some()
            || self.targets.iter().any(|t| !t.is_all())
    }

    /// Several targets: sources keep which of them hold a record whose fan-out is incomplete.
    pub fn fans_out(&self) -> bool {
        self.targets.len() > 1
    }

    /// With TARGETS, whether some record could be accepted by no target.
    pub fn targets_restricted(&self) -> bool {
        !self.targets.is_empty() && self.targets.iter().all(|t| !t.is_all())
    }

    /// The run takes the record: ACCEPT_*, or with TARGETS some target accepts it.
    pub fn accepts(&self, r: &Route) -> bool {
        passes(self.accept_topics.as_ref(), self.accept_keys.as_ref(), r)
            && (!self.targets_restricted() || self.targets.iter().any(|t| t.accepts(r)))
    }

    /// What this run accepts, for the cursor and state files of the API sources: a file written
    /// by runs of one selection must not be continued by runs of another, or each would skip
    /// what the other ships. `None`: everything.
    pub fn accept_label(&self) -> Option<String> {
        let part = |a: &Option<Accept>, f: &Option<FieldPath>| {
            a.as_ref().map(|a| {
                let mut v = a.values.clone();
                if a.none {
                    v.push(NONE.into());
                }
                v.sort();
                let field = f.as_ref().map(|f| f.to_string()).unwrap_or_default();
                format!("{} of {field}", v.join(","))
            })
        };
        let all = || "(all)".to_string();
        let label = |topics: Option<String>, keys: Option<String>| {
            format!(
                "topics {}; routing keys {}",
                topics.unwrap_or_else(all),
                keys.unwrap_or_else(all)
            )
        };
        let topics = part(&self.accept_topics, &self.topic_field);
        let keys = part(&self.accept_keys, &self.key_field);
        // With TARGETS whose lists leave some records to no target: what any target takes.
        let targets = self.targets_restricted().then(|| {
            let each: Vec<String> = self
                .targets
                .iter()
                .map(|t| {
                    label(
                        part(&t.topics, &self.topic_field),
                        part(&t.keys, &self.key_field),
                    )
                })
                .collect();
            format!("targets [{}]", each.join(" | "))
        });
        match (topics.is_none() && keys.is_none(), targets) {
            (true, None) => None,
            (true, Some(t)) => Some(t),
            (false, None) => Some(label(topics, keys)),
            (false, Some(t)) => Some(format!("{}; {t}", label(topics, keys))),
        }
    }

    /// The route of a document from its own fields and `@timestamp` (API sources).
    pub fn route_of_body(&self, body: &[u8]) -> Route {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return Route::default();
        };
        Route {
            topic: self.topic_field.as_ref().and_then(|p| p.lookup(&v)),
            key: self.key_field.as_ref().and_then(|p| p.lookup(&v)),
            time: v
                .get("@timestamp")
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// A name with placeholders: `{topic}`, `{routing_key}` and a date such as `{yyyy.MM.dd}`
/// (letters `yyyy`, `MM`, `dd`, `HH`, separated by `.`, `-` or `_`), in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Topic,
    Key,
    Date(Vec<DatePart>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DatePart {
    Year,
    Month,
    Day,
    Hour,
    Sep(char),
}

impl Template {
    pub fn parse(var: &str, value: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError(format!("invalid {var} {value:?}: {why}"));
        let mut parts = Vec::new();
        let mut rest = value;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest.find('}').ok_or_else(|| bad("a '{' is not closed"))?;
                    let name = &rest[1..end];
                    parts.push(match name {
                        "topic" => Part::Topic,
                        "routing_key" => Part::Key,
                        _ => Part::Date(date_parts(name).ok_or_else(|| {
                            bad(&format!(
                                "unknown placeholder {{{name}}}: expected {{topic}}, {{routing_key}} or a date such as {{yyyy.MM.dd}}"
                            ))
                        })?),
                    });
                    rest = &rest[end + 1..];
                }
                Some(i) => {
                    parts.push(Part::Literal(rest[..i].to_string()));
                    rest = &rest[i..];
                }
                None => {
                    parts.push(Part::Literal(rest.to_string()));
                    rest = "";
                }
            }
            if parts
                .last()
                .is_some_and(|p| matches!(p, Part::Literal(l) if l.contains('}')))
            {
                return Err(bad("a '}' has no '{'"));
            }
        }
        let dynamic = parts.iter().any(|p| !matches!(p, Part::Literal(_)));
        if dynamic && !matches!(parts.first(), Some(Part::Literal(_))) {
            return Err(bad("it must start with a fixed name, e.g. audit-{topic}"));
        }
        Ok(Template {
            source: value.to_string(),
            parts,
        })
    }

    /// No placeholders: the same name for every record.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The fixed text, each placeholder replaced by `*` (an index pattern).
    pub fn pattern(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                _ if out.ends_with('*') => {}
                _ => out.push('*'),
            }
        }
        out
    }

    /// The literal parts, for checking them as a whole name would be checked.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Literal(l) => Some(l.as_str()),
            _ => None,
        })
    }

    /// The name for `route`; `clean` makes a topic or key safe for where it goes. Errs when a
    /// date is wanted and the record has none.
    pub fn render(&self, route: &Route, clean: impl Fn(&str) -> String) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Topic => out.push_str(&clean(route.topic.as_deref().unwrap_or(NONE))),
                Part::Key => out.push_str(&clean(route.key.as_deref().unwrap_or(NONE))),
                Part::Date(parts) => {
                    let t = route.time.ok_or_else(|| {
                        format!(
                            "the record has no date for the name template {:?}",
                            self.source
                        )
                    })?;
                    for d in parts {
                        match d {
                            DatePart::Year => out.push_str(&format!("{:04}", t.year())),
                            DatePart::Month => out.push_str(&format!("{:02}", t.month())),
                            DatePart::Day => out.push_str(&format!("{:02}", t.day())),
                            DatePart::Hour => out.push_str(&format!("{:02}", t.hour())),
                            DatePart::Sep(c) => out.push(*c),
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

fn date_parts(spec: &str) -> Option<Vec<DatePart>> {
    let mut parts = Vec::new();
    let mut rest = spec;
    while !rest.is_empty() {
        let (part, len) = if rest.starts_with("yyyy") {
            (DatePart::Year, 4)
        } else if rest.starts_with("MM") {
            (DatePart::Month, 2)
        } else if rest.starts_with("dd") {
            (DatePart::Day, 2)
        } else if rest.starts_with("HH") {
            (DatePart::Hour, 2)
        } else {
            let c = rest.chars().next()?;
            if !matches!(c, '.' | '-' | '_') {
                return None;
            }
            (DatePart::Sep(c), 1)
        };
        parts.push(part);
        rest = &rest[len..];
    }
    parts
        .iter()
        .any(|p| !matches!(p, DatePart::Sep(_)))
        .then_some(parts)
}

/// A topic or key as part of an Elasticsearch index name: lowercase, and `_` for every character
/// an index name cannot hold.
pub fn index_part(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect()
}

/// A topic or key as one directory name: `_` for anything but letters, digits and `.-_@+`, and
/// never `.` or `..`, so a value can never leave OUTPUT_PATH.
pub fn path_segment(s: &str) -> String {
    let seg: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if seg.is_empty() || seg.chars().all(|c| c == '.') {
        "_".repeat(seg.len().max(1))
    } else {
        seg
    }
}

/// `topic/routing-key/YYYY/mm/dd/HH` under the output directory (the DSS Event Server layout).
pub fn routed_dir(route: &Route) -> Result<std::path::PathBuf, String> {
    let t = route
        .time
        .ok_or("the record has no date for OUTPUT_LAYOUT=routed")?;
    let mut p = std::path::PathBuf::new();
    p.push(path_segment(route.topic.as_deref().unwrap_or(NONE)));
    p.push(path_segment(route.key.as_deref().unwrap_or(NONE)));
    p.push(format!("{:04}", t.year()));
    p.push(format!("{:02}", t.month()));
    p.push(format!("{:02}", t.day()));
    p.push(format!("{:02}", t.hour()));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn route(topic: Option<&str>, key: Option<&str>) -> Route {
        Route {
            topic: topic.map(String::from),
            key: key.map(String::from),
            time: Some(Utc.with_ymd_and_hms(2024, 3, 9, 7, 5, 0).unwrap()),
        }
    }

    #[test]
    fn templates_render_topic_key_and_date() {
        let t = Template::parse("V", "audit-{topic}-{routing_key}-{yyyy.MM.dd}").unwrap();
        assert!(!t.is_static());
        assert_eq!(
            t.render(&route(Some("AuthFail"), None), index_part)
                .unwrap(),
            "audit-authfail-_none-2024.03.09"
        );
        assert_eq!(t.pattern(), "audit-*-*-*");
        let hourly = Template::parse("V", "a{yyyy-MM-dd_HH}").unwrap();
        assert_eq!(
            hourly.render(&route(None, None), index_part).unwrap(),
            "a2024-03-09_07"
        );
        let no_date = Route {
            time: None,
            ..route(Some("x"), None)
        };
        assert!(t.render(&no_date, index_part).is_err());
        assert!(Template::parse("V", "plain").unwrap().is_static());
    }

    #[test]
    fn bad_templates_name_the_variable() {
        for bad in [
            "a-{topik}",
            "a-{yyyy",
            "a-}",
            "{topic}-a",
            "a-{yyyy/MM}",
            "a-{}",
        ] {
            let e = Template::parse("ELASTICSEARCH_APP_AUDIT_LOG_INDEX", bad).unwrap_err();
            assert!(
                e.0.contains("ELASTICSEARCH_APP_AUDIT_LOG_INDEX"),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn accept_lists_and_none() {
        let a = Accept::parse("ACCEPT_TOPICS", "generic, authfail").unwrap();
        assert!(a.accepts(Some("generic")) && !a.accepts(Some("other")) && !a.accepts(None));
        let n = Accept::parse("ACCEPT_TOPICS", "_none").unwrap();
        assert!(n.accepts(None) && !n.accepts(Some("generic")));
        assert!(Accept::parse("ACCEPT_TOPICS", "a,,b").is_err());
        let mut i = 0;
        let sql = a.sql("x", &mut || {
            i += 1;
            format!("${i}")
        });
        assert_eq!(sql, "(x IN ($1, $2))");
    }

    #[test]
    fn only_strings_are_topics() {
        let p = FieldPath::parse("ROUTING_TOPIC_FIELD", "audit_event.topic").unwrap();
        let v: Value = serde_json::json!({"audit_event": {"topic": "t"}});
        assert_eq!(p.lookup(&v).as_deref(), Some("t"));
        for other in [
            serde_json::json!({"audit_event": {"topic": 1}}),
            serde_json::json!({"audit_event": {"topic": null}}),
            serde_json::json!({"audit_event": "x"}),
        ] {
            assert_eq!(p.lookup(&other), None);
        }
        assert!(FieldPath::parse("ROUTING_TOPIC_FIELD", "a..b").is_err());
        assert!(FieldPath::parse("ROUTING_TOPIC_FIELD", "a'b").is_err());
    }

    #[test]
    fn values_cannot_escape_a_path_or_an_index_name() {
        assert_eq!(path_segment(".."), "__");
        assert_eq!(path_segment("a/b"), "a_b");
        assert_eq!(path_segment(""), "_");
        assert_eq!(index_part("A b*c"), "a_b_c");
        let dir = routed_dir(&route(Some("../etc"), Some("k"))).unwrap();
        assert_eq!(dir, std::path::Path::new(".._etc/k/2024/03/09/07"));
    }
}
