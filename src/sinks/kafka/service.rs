//! The producer: one idempotent librdkafka producer per run, shared by the workers, and what
//! each delivery result means for its record.

use super::settings::{Protocol, Settings};
use anyhow::{anyhow, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The last error librdkafka reported outside any message (authentication, TLS, a broker
/// gone): the reason a page's messages time out, worth naming.
#[derive(Default)]
pub struct Context {
    last_error: Arc<Mutex<Option<(RDKafkaErrorCode, String)>>>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // Connection refusals repeat every few hundred ms while a broker is down: debug only.
        tracing::debug!(target: "librdkafka", ?level, "{fac}: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        if let Some(code) = error.rdkafka_error_code() {
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((code, reason.to_string()));
        }
    }
}

/// What a failed delivery means.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Kafka will never take this record as it is: it is rejected, the page goes on.
    Record(String),
    /// The record was not acknowledged (timed out, purged): the page stays unmarked.
    Page(String),
}

pub struct Service {
    pub producer: FutureProducer<Context>,
    last_error: Arc<Mutex<Option<(RDKafkaErrorCode, String)>>>,
    pub brokers: String,
    timeout: Duration,
    sasl_user: Option<String>,
    tls: bool,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl Service {
    pub fn new(settings: &Settings) -> Result<Self> {
        let context = Context::default();
        let last_error = context.last_error.clone();
        let producer: FutureProducer<Context> = settings
            .client_config()
            .create_with_context(context)
            .map_err(|e| {
                // Conflicting properties are found only here; the values may be secrets.
                let text = match &e {
                    KafkaError::ClientConfig(_, desc, key, _) => format!("{key}: {desc}"),
                    KafkaError::ClientCreation(desc) => desc.clone(),
                    other => other.to_string(),
                };
                crate::base::exit::config_error(format!(
                    "the Kafka producer cannot be created from these settings (check KAFKA_PRODUCER_CONFIG): {text}"
                ))
            })?;
        Ok(Service {
            producer,
            last_error,
            brokers: settings.brokers.clone(),
            timeout: settings.message_timeout,
            sasl_user: settings.sasl.as_ref().map(|(_, u, _)| u.clone()),
            tls: matches!(settings.protocol, Protocol::Ssl | Protocol::SaslSsl),
        })
    }

    /// Asks the cluster for its metadata: proves the brokers answer and take the credentials,
    /// within KAFKA_MESSAGE_TIMEOUT_MS.
    pub async fn probe(&self) -> Result<()> {
        let producer = self.producer.clone();
        let timeout = self.timeout;
        let answer = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| anyhow!("Kafka metadata request: {e}"))?;
        match answer {
            Ok(_) => Ok(()),
            Err(e) => Err(self.unreachable(&e.to_string())),
        }
    }

    /// Why nothing gets through: refused credentials or TLS name their variables; otherwise
    /// the brokers did not answer in time.
    pub fn unreachable(&self, what: &str) -> anyhow::Error {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let ms = self.timeout.as_millis();
        match last {
            Some((RDKafkaErrorCode::Authentication, reason)) => anyhow!(
                "Kafka at {} refused the credentials of KAFKA_SASL_USERNAME {:?} ({}): check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM",
                self.brokers,
                self.sasl_user.as_deref().unwrap_or(""),
                crate::base::secret::scrub(&reason)
            ),
            Some((RDKafkaErrorCode::SSL, reason)) if self.tls => anyhow!(
                "Kafka at {}: TLS failed ({}): set KAFKA_SSL_CA_LOCATION to the CA that signed the brokers' certificates",
                self.brokers,
                crate::base::secret::scrub(&reason)
            ),
            Some((code, reason)) => anyhow!(
                "Kafka at {}: {what}, not acknowledged within KAFKA_MESSAGE_TIMEOUT_MS ({ms} ms); last client error: {code:?}: {}",
                self.brokers,
                crate::base::secret::scrub(&reason)
            ),
            None => anyhow!(
                "Kafka at {}: {what}, not acknowledged within KAFKA_MESSAGE_TIMEOUT_MS ({ms} ms)",
                self.brokers
            ),
        }
    }

    /// Waits for everything still queued or in flight (end of the run).
    pub fn flush(&self) -> Result<()> {
        self.producer
            .flush(self.timeout)
            .map_err(|e| anyhow!("Kafka at {}: flush: {e}", self.brokers))
    }
}

impl Drop for Service {
    /// Never let the producer's own Drop purge messages in flight: wait for them first, so a
    /// run stopped mid-page (a signal) leaves no delivery unreported.
    fn drop(&mut self) {
        if self.producer.in_flight_count() > 0 {
            if let Err(e) = self.flush() {
                tracing::warn!("{e}");
            }
        }
    }
}

/// What the error of one record's delivery means.
pub fn classify(e: &KafkaError, topic: &str) -> Failure {
    use RDKafkaErrorCode as C;
    let code = match e {
        KafkaError::MessageProduction(code) => *code,
        KafkaError::Canceled => return Failure::Page("the producer was closed".into()),
        other => return Failure::Page(other.to_string()),
    };
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::TopicAuthorizationFailed
        | C::InvalidTopic
        | C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::UnknownPartition
        | C::InvalidMessage
        | C::InvalidRecord
        | C::UnsupportedForMessageFormat => Failure::Record(format!(
            "Kafka refused the message for topic {topic:?}: {code} ({code:?})"
        )),
        other => Failure::Page(format!("{other} ({other:?})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_errors_reject_the_record_and_the_rest_stop_the_page() {
        let record = |c| {
            matches!(
                classify(&KafkaError::MessageProduction(c), "t"),
                Failure::Record(_)
            )
        };
        assert!(record(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(record(RDKafkaErrorCode::TopicAuthorizationFailed));
        assert!(record(RDKafkaErrorCode::UnknownTopicOrPartition));
        assert!(!record(RDKafkaErrorCode::MessageTimedOut));
        assert!(!record(RDKafkaErrorCode::PurgeInflight));
        assert!(!record(RDKafkaErrorCode::NotEnoughReplicas));
        assert!(!record(RDKafkaErrorCode::ClusterAuthorizationFailed));
        assert!(matches!(
            classify(&KafkaError::Canceled, "t"),
            Failure::Page(_)
        ));
    }

    #[test]
    fn refused_credentials_name_the_variables_never_the_password() {
        let env = crate::base::env::Env::from_pairs([
            ("KAFKA_BROKERS", "127.0.0.1:1"),
            ("KAFKA_TOPIC", "audit"),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
            ("KAFKA_SASL_USERNAME", "audit"),
            ("KAFKA_SASL_PASSWORD", "kafka-unit-pw-s3cr3t"),
        ]);
        let s = Service::new(&Settings::from_env(&env).unwrap()).unwrap();
        let e = s.unreachable("metadata").to_string();
        assert!(e.contains("KAFKA_MESSAGE_TIMEOUT_MS"), "{e}");
        *s.last_error.lock().unwrap() = Some((
            RDKafkaErrorCode::Authentication,
            "SASL authentication error: invalid credentials with SASL mechanism SCRAM-SHA-256 (kafka-unit-pw-s3cr3t)".into(),
        ));
        let e = s.unreachable("metadata").to_string();
        assert!(
            e.contains("KAFKA_SASL_USERNAME") && e.contains("KAFKA_SASL_PASSWORD"),
            "{e}"
        );
        assert!(e.contains("invalid credentials"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        *s.last_error.lock().unwrap() =
            Some((RDKafkaErrorCode::SSL, "certificate verify failed".into()));
        assert!(s
            .unreachable("metadata")
            .to_string()
            .contains("KAFKA_SSL_CA_LOCATION"));
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }
}
