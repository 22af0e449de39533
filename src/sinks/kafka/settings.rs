//! The sink's settings, read from `KAFKA_*` (see `shared/specs/kafka-sink.md`), and the
//! librdkafka producer properties they make.

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::secret::Secret;
use crate::routing::Template;
use rdkafka::ClientConfig;
use std::path::PathBuf;
use std::time::Duration;

type Result<T> = std::result::Result<T, ConfigError>;

/// Well above a broker fail-over (tens of seconds) and far below librdkafka's 300 s default, so
/// a cluster that is gone stops the run in minutes.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(120);

/// librdkafka's default `message.max.bytes`: the largest message the client builds.
pub const MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }
    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
    fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
}

/// A pass-through property's value; secret when its name says so.
#[derive(Debug, Clone)]
pub enum Value {
    Plain(String),
    Secret(Secret),
}

impl Value {
    fn expose(&self) -> &str {
        match self {
            Value::Plain(v) => v,
            Value::Secret(s) => s.expose(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port,host:port`, as given.
    pub brokers: String,
    /// KAFKA_TOPIC as given, and its template when it has placeholders.
    pub topic: String,
    pub topic_template: Option<Template>,
    pub protocol: Protocol,
    /// SASL mechanism, username and password (with a `sasl_*` protocol only).
    pub sasl: Option<(&'static str, String, Secret)>,
    pub ca_location: Option<PathBuf>,
    pub compression: &'static str,
    pub message_timeout: Duration,
    /// KAFKA_PRODUCER_CONFIG: other producer properties, in order.
    pub extra: Vec<(String, Value)>,
    /// The client's `message.max.bytes`: larger documents are refused by id before sending.
    pub max_message_bytes: usize,
    /// The `source` header: the source kind (AUDIT_LOGGER_TYPE).
    pub source: String,
}

/// Properties our own variables or guarantees set: the pass-through may not change them.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "KAFKA_BROKERS"),
    ("metadata.broker.list", "KAFKA_BROKERS"),
    ("security.protocol", "KAFKA_SECURITY_PROTOCOL"),
    ("sasl.mechanism", "KAFKA_SASL_MECHANISM"),
    ("sasl.mechanisms", "KAFKA_SASL_MECHANISM"),
    ("sasl.username", "KAFKA_SASL_USERNAME"),
    ("sasl.password", "KAFKA_SASL_PASSWORD"),
    ("ssl.ca.location", "KAFKA_SSL_CA_LOCATION"),
    ("compression.type", "KAFKA_COMPRESSION"),
    ("compression.codec", "KAFKA_COMPRESSION"),
    ("message.timeout.ms", "KAFKA_MESSAGE_TIMEOUT_MS"),
    ("delivery.timeout.ms", "KAFKA_MESSAGE_TIMEOUT_MS"),
    (
        "partitioner",
        "nothing: murmur2_random places keys as Java producers do",
    ),
    (
        "enable.idempotence",
        "nothing: the idempotent producer is always on",
    ),
    (
        "transactional.id",
        "nothing: the sink does not use transactions",
    ),
];

/// Whether a property's value must never be printed.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "key"].iter().any(|w| n.contains(w))
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self> {
        let brokers = env.get("KAFKA_BROKERS").ok_or_else(|| {
            ConfigError(
                "KAFKA_BROKERS is not set: expected a comma-separated list of host:port, such as kafka-1:9092,kafka-2:9092".into(),
            )
        })?;
        let list: Vec<&str> = brokers.split(',').map(str::trim).collect();
        if list
            .iter()
            .any(|b| b.is_empty() || b.contains(char::is_whitespace) || b.contains('@'))
        {
            return Err(ConfigError(format!(
                "invalid KAFKA_BROKERS {:?}: expected a comma-separated list of host:port, such as kafka-1:9092,kafka-2:9092",
                crate::base::secret::blank_user_info(brokers)
            )));
        }
        let brokers = list.join(",");

        let topic = env.get("KAFKA_TOPIC").ok_or_else(|| {
            ConfigError(
                "KAFKA_TOPIC is not set: expected a topic name, or a template such as audit-{topic}-{yyyy.MM}".into(),
            )
        })?;
        let template = Template::parse("KAFKA_TOPIC", topic)?;
        let fixed: String = template.literals().collect();
        if !fixed.chars().all(topic_char)
            || (template.is_static() && topic_problem(topic).is_some())
        {
            return Err(ConfigError(format!(
                "invalid KAFKA_TOPIC {topic:?}: expected a Kafka topic name of letters, digits, '.', '_', '-' (at most {MAX_TOPIC_LEN}), optionally with {{topic}}, {{routing_key}} and a date such as {{yyyy.MM.dd}}"
            )));
        }

        let protocol = env
            .choice(
                "KAFKA_SECURITY_PROTOCOL",
                &[
                    ("plaintext", Protocol::Plaintext),
                    ("ssl", Protocol::Ssl),
                    ("sasl_plaintext", Protocol::SaslPlaintext),
                    ("sasl_ssl", Protocol::SaslSsl),
                ],
            )?
            .unwrap_or(Protocol::Plaintext);
        let mechanism = env.choice(
            "KAFKA_SASL_MECHANISM",
            &[
                ("PLAIN", "PLAIN"),
                ("SCRAM-SHA-256", "SCRAM-SHA-256"),
                ("SCRAM-SHA-512", "SCRAM-SHA-512"),
            ],
        )?;
        let username = env.get("KAFKA_SASL_USERNAME");
        let password = env.secret("KAFKA_SASL_PASSWORD");
        let sasl = if protocol.sasl() {
            let username = username.ok_or_else(|| {
                ConfigError(format!(
                    "KAFKA_SASL_USERNAME is not set: KAFKA_SECURITY_PROTOCOL={} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
                    protocol.name()
                ))
            })?;
            let password = password.ok_or_else(|| {
                ConfigError(format!(
                    "KAFKA_SASL_PASSWORD is not set: KAFKA_SECURITY_PROTOCOL={} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
                    protocol.name()
                ))
            })?;
            Some((mechanism.unwrap_or("PLAIN"), username.to_string(), password))
        } else {
            if let Some(var) = [
                ("KAFKA_SASL_USERNAME", username.is_some()),
                ("KAFKA_SASL_PASSWORD", password.is_some()),
                ("KAFKA_SASL_MECHANISM", mechanism.is_some()),
            ]
            .iter()
            .find_map(|(v, set)| set.then_some(*v))
            {
                return Err(ConfigError(format!(
                    "{var} is set but KAFKA_SECURITY_PROTOCOL={}: set KAFKA_SECURITY_PROTOCOL=sasl_ssl (or sasl_plaintext) to authenticate",
                    protocol.name()
                )));
            }
            None
        };

        let ca_location = env.get("KAFKA_SSL_CA_LOCATION").map(PathBuf::from);
        if let Some(p) = &ca_location {
            if !protocol.tls() {
                return Err(ConfigError(format!(
                    "KAFKA_SSL_CA_LOCATION is set but KAFKA_SECURITY_PROTOCOL={}: use ssl or sasl_ssl",
                    protocol.name()
                )));
            }
            if !p.exists() {
                return Err(ConfigError(format!(
                    "invalid KAFKA_SSL_CA_LOCATION {:?}: expected the path of a readable PEM file (or directory) of CA certificates",
                    p.display()
                )));
            }
        }

        let compression = env
            .choice(
                "KAFKA_COMPRESSION",
                &[
                    ("none", "none"),
                    ("gzip", "gzip"),
                    ("lz4", "lz4"),
                    ("zstd", "zstd"),
                    ("snappy", "snappy"),
                ],
            )?
            .unwrap_or("none");
        let message_timeout = env
            .number(
                "KAFKA_MESSAGE_TIMEOUT_MS",
                1..=2_147_483_647u64,
                "a positive whole number of milliseconds",
            )?
            .map(Duration::from_millis)
            .unwrap_or(MESSAGE_TIMEOUT);

        let extra = pass_through(env.raw("KAFKA_PRODUCER_CONFIG").unwrap_or(""))?;
        let max_message_bytes = match extra.iter().rev().find(|(k, _)| k == "message.max.bytes") {
            None => MAX_MESSAGE_BYTES,
            Some((_, v)) => v.expose().parse().map_err(|_| {
                ConfigError(format!(
                    "invalid KAFKA_PRODUCER_CONFIG message.max.bytes {:?}: expected a whole number of bytes",
                    v.expose()
                ))
            })?,
        };
        let settings = Settings {
            brokers,
            topic: topic.to_string(),
            topic_template: (!template.is_static()).then_some(template),
            protocol,
            sasl,
            ca_location,
            compression,
            message_timeout,
            extra,
            max_message_bytes,
            // The source registry's default kind; only a label here.
            source: env
                .get("AUDIT_LOGGER_TYPE")
                .unwrap_or("SINGLE_COLUMN_JSON")
                .to_string(),
        };
        // librdkafka checks every property's name and value now, not at the first send.
        settings
            .client_config()
            .create_native_config()
            .map_err(|e| {
                ConfigError(match e {
                    rdkafka::error::KafkaError::ClientConfig(_, desc, key, _) => {
                        let desc = if is_secret_property(&key) {
                            "invalid value".to_string()
                        } else {
                            desc
                        };
                        format!("invalid KAFKA_PRODUCER_CONFIG property {key:?}: {desc}")
                    }
                    other => format!("invalid KAFKA_PRODUCER_CONFIG: {other}"),
                })
            })?;
        Ok(settings)
    }

    /// The producer's properties: ours, then the pass-through.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("compression.type", self.compression)
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set("security.protocol", self.protocol.name());
        if let Some((mechanism, user, password)) = &self.sasl {
            c.set("sasl.mechanism", *mechanism)
                .set("sasl.username", user)
                .set("sasl.password", password.expose());
        }
        if let Some(ca) = &self.ca_location {
            c.set("ssl.ca.location", ca.to_string_lossy());
        }
        for (k, v) in &self.extra {
            c.set(k, v.expose());
        }
        c
    }

    /// The topic of a document with `route`, or why it has none.
    pub fn topic_for(
        &self,
        route: &crate::base::document::Route,
    ) -> std::result::Result<String, String> {
        let name = match &self.topic_template {
            None => return Ok(self.topic.clone()),
            Some(t) => t.render(route, topic_part)?,
        };
        match topic_problem(&name) {
            Some(why) => Err(format!(
                "topic {name:?} is not a valid Kafka topic name: {why}"
            )),
            None => Ok(name),
        }
    }
}

/// KAFKA_PRODUCER_CONFIG: `name=value` pairs separated by `;` or new lines.
fn pass_through(text: &str) -> Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for item in text
        .split([';', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let Some((name, value)) = item.split_once('=') else {
            let shown = if is_secret_property(item) {
                "***"
            } else {
                item
            };
            return Err(ConfigError(format!(
                "invalid KAFKA_PRODUCER_CONFIG item {shown:?}: expected name=value pairs separated by ';', such as linger.ms=20;batch.size=1000000"
            )));
        };
        let (name, value) = (name.trim().to_string(), value.trim());
        if let Some((_, owner)) = OWNED.iter().find(|(p, _)| *p == name) {
            return Err(ConfigError(format!(
                "KAFKA_PRODUCER_CONFIG may not set {name}: it is set by {owner}"
            )));
        }
        if matches!(name.as_str(), "acks" | "request.required.acks")
            && !matches!(value, "all" | "-1")
        {
            return Err(ConfigError(format!(
                "KAFKA_PRODUCER_CONFIG may not set {name}={value}: the idempotent producer needs acks=all, so no record counts as delivered before every in-sync replica holds it"
            )));
        }
        let value = if is_secret_property(&name) {
            Value::Secret(Secret::new(value))
        } else {
            Value::Plain(value.to_string())
        };
        out.push((name, value));
    }
    Ok(out)
}

fn topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A topic or key as part of a topic name: `_` for every character a topic cannot hold.
pub fn topic_part(s: &str) -> String {
    s.chars()
        .map(|c| if topic_char(c) { c } else { '_' })
        .collect()
}

/// Why `name` is not a topic name Kafka accepts, if it is not.
pub fn topic_problem(name: &str) -> Option<String> {
    if name.is_empty() || name == "." || name == ".." {
        return Some("it may not be empty, \".\" or \"..\"".into());
    }
    if name.len() > MAX_TOPIC_LEN {
        return Some(format!(
            "it is {} characters long, more than {MAX_TOPIC_LEN}",
            name.len()
        ));
    }
    if !name.chars().all(topic_char) {
        return Some("it may hold only letters, digits, '.', '_' and '-'".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::document::Route;

    const BROKERS: (&str, &str) = ("KAFKA_BROKERS", "k1:9092, k2:9092");
    const TOPIC: (&str, &str) = ("KAFKA_TOPIC", "audit");

    fn read(pairs: &[(&str, &str)]) -> Result<Settings> {
        Settings::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        read(pairs).unwrap_err().0
    }

    fn props(s: &Settings) -> std::collections::BTreeMap<String, String> {
        // config_map() blanks secret values; get() does not.
        let c = s.client_config();
        c.config_map()
            .keys()
            .map(|k| (k.to_string(), c.get(k).unwrap().to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_idempotent_with_java_partitioning() {
        let s = read(&[BROKERS, TOPIC]).unwrap();
        let p = props(&s);
        assert_eq!(p["bootstrap.servers"], "k1:9092,k2:9092");
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["acks"], "all");
        assert_eq!(p["partitioner"], "murmur2_random");
        assert_eq!(p["compression.type"], "none");
        assert_eq!(p["message.timeout.ms"], "120000");
        assert_eq!(p["security.protocol"], "plaintext");
        assert!(!p.contains_key("sasl.mechanism"));
        assert_eq!(s.max_message_bytes, MAX_MESSAGE_BYTES);
        assert!(s.topic_template.is_none());
        assert_eq!(s.source, "SINGLE_COLUMN_JSON");
    }

    #[test]
    fn sasl_and_tls_properties_come_from_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let s = read(&[
            BROKERS,
            TOPIC,
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "audit"),
            ("KAFKA_SASL_PASSWORD", "kafka-pw-s3cr3t"),
            ("KAFKA_SSL_CA_LOCATION", ca.to_str().unwrap()),
            ("KAFKA_COMPRESSION", "zstd"),
            ("KAFKA_MESSAGE_TIMEOUT_MS", "5000"),
            (
                "KAFKA_PRODUCER_CONFIG",
                "linger.ms=20; ssl.key.password=key-pw-s3cr3t\nmessage.max.bytes=2000000;acks=all",
            ),
        ])
        .unwrap();
        let p = props(&s);
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(p["sasl.username"], "audit");
        assert_eq!(p["sasl.password"], "kafka-pw-s3cr3t");
        assert_eq!(p["ssl.ca.location"], ca.to_str().unwrap());
        assert_eq!(p["compression.type"], "zstd");
        assert_eq!(p["message.timeout.ms"], "5000");
        assert_eq!(p["linger.ms"], "20");
        assert_eq!(p["ssl.key.password"], "key-pw-s3cr3t");
        assert_eq!(s.max_message_bytes, 2_000_000);
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        // Default mechanism: PLAIN (librdkafka's own default, GSSAPI, is not built in).
        let s = read(&[
            BROKERS,
            TOPIC,
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_USERNAME", "audit"),
            ("KAFKA_SASL_PASSWORD", "pw"),
        ])
        .unwrap();
        assert_eq!(props(&s)["sasl.mechanism"], "PLAIN");
    }

    #[test]
    fn conflicting_overrides_are_refused() {
        for (item, expect) in [
            ("acks=1", "acks=1"),
            ("request.required.acks=0", "request.required.acks=0"),
            ("enable.idempotence=false", "enable.idempotence"),
            ("partitioner=consistent_random", "partitioner"),
            ("message.timeout.ms=5", "KAFKA_MESSAGE_TIMEOUT_MS"),
            ("sasl.password=other-s3cr3t", "KAFKA_SASL_PASSWORD"),
            ("bootstrap.servers=x:1", "KAFKA_BROKERS"),
            ("transactional.id=t", "transactions"),
            ("linger.ms", "name=value"),
            ("no.such.property=1", "no.such.property"),
            ("linger.ms=soon", "linger.ms"),
            ("ssl.key.password", "***"),
        ] {
            let e = err(&[BROKERS, TOPIC, ("KAFKA_PRODUCER_CONFIG", item)]);
            assert!(e.contains("KAFKA_PRODUCER_CONFIG"), "{item}: {e}");
            assert!(e.contains(expect), "{item}: {e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
        assert!(read(&[BROKERS, TOPIC, ("KAFKA_PRODUCER_CONFIG", "acks=-1")]).is_ok());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("KAFKA_BROKERS", "a:1,,b:2"),
            ("KAFKA_TOPIC", "audit logs"),
            ("KAFKA_TOPIC", "audit/{topic}"),
            ("KAFKA_TOPIC", "{topic}"),
            ("KAFKA_TOPIC", "audit-{nope}"),
            ("KAFKA_SECURITY_PROTOCOL", "tls"),
            ("KAFKA_COMPRESSION", "brotli"),
            ("KAFKA_MESSAGE_TIMEOUT_MS", "0"),
            ("KAFKA_MESSAGE_TIMEOUT_MS", "soon"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD", "kafka-pw-s3cr3t"),
            ("KAFKA_SASL_MECHANISM", "GSSAPI"),
            ("KAFKA_SSL_CA_LOCATION", "/etc/hosts"),
        ] {
            let mut pairs = vec![BROKERS, TOPIC];
            pairs.retain(|(k, _)| *k != var);
            pairs.push((var, val));
            let e = err(&pairs);
            assert!(e.contains(var), "{var}={val}: {e}");
            assert!(!e.contains('\n') && !e.contains("s3cr3t"), "{e}");
        }
        let e = err(&[
            BROKERS,
            TOPIC,
            ("KAFKA_SECURITY_PROTOCOL", "ssl"),
            ("KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem"),
        ]);
        assert!(e.starts_with("invalid KAFKA_SSL_CA_LOCATION"), "{e}");
        let e = err(&[
            BROKERS,
            TOPIC,
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_USERNAME", "u"),
        ]);
        assert!(e.starts_with("KAFKA_SASL_PASSWORD is not set"), "{e}");
        assert!(err(&[TOPIC]).starts_with("KAFKA_BROKERS is not set"));
        assert!(err(&[BROKERS]).starts_with("KAFKA_TOPIC is not set"));
    }

    #[test]
    fn topics_from_the_template_are_checked() {
        let s = read(&[
            BROKERS,
            ("KAFKA_TOPIC", "audit-{topic}.{routing_key}-{yyyy.MM}"),
        ])
        .unwrap();
        let route = |topic: &str| Route {
            topic: Some(topic.into()),
            key: Some("Login Event".into()),
            time: Some("2024-05-01T10:00:00Z".parse().unwrap()),
        };
        assert_eq!(
            s.topic_for(&route("web/app")).unwrap(),
            "audit-web_app.Login_Event-2024.05"
        );
        let long = "x".repeat(300);
        let e = s.topic_for(&route(&long)).unwrap_err();
        assert!(e.contains("more than 249"), "{e}");
        let e = s
            .topic_for(&Route {
                time: None,
                ..route("a")
            })
            .unwrap_err();
        assert!(e.contains("no date"), "{e}");
    }
}
