//! The one retry policy of every HTTP client (Elasticsearch, CAST AI, CDP, and the sinks to
//! come). A client classifies each failure as [`Class::Transient`] (retried),
//! [`Class::Permanent`] or [`Class::Auth`] (both returned at once); this module decides how long
//! to wait and how often.
//!
//! Waits are "full jitter" (uniformly random between zero and the exponential step, the step
//! capped at [`CAP`] before the jitter is drawn, so no wait exceeds the cap), from a generator
//! seeded by the operating system, so that pods started together do not retry in lockstep. A
//! server's `Retry-After` is honoured when it asks for longer, up to [`MAX_RETRY_AFTER`].

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use backon::{BackoffBuilder, Retryable};
use std::future::Future;
use std::time::Duration;

/// Longest wait the backoff itself chooses.
pub const CAP: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured: a server asking for more is waited for this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How a client's settings say to retry: `<PREFIX>_TIMEOUT_SECONDS`, `<PREFIX>_MAX_RETRIES`,
/// `<PREFIX>_RETRY_INITIAL_MS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Per request.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// The first step of the exponential backoff.
    pub initial: Duration,
}

impl Policy {
    /// The three settings under `prefix` (`ELASTICSEARCH`, `CASTAI`, `CDP`...), with the
    /// client's defaults.
    pub fn from_env(env: &Env, prefix: &str, defaults: Policy) -> Result<Self, ConfigError> {
        let timeout = env
            .positive(&format!("{prefix}_TIMEOUT_SECONDS"))?
            .map(|s| Duration::from_secs(s as u64))
            .unwrap_or(defaults.timeout);
        let max_retries = env
            .number(
                &format!("{prefix}_MAX_RETRIES"),
                0..=100,
                "a whole number of retries, 0 to 100",
            )?
            .unwrap_or(defaults.max_retries);
        let initial = env
            .positive(&format!("{prefix}_RETRY_INITIAL_MS"))?
            .map(|ms| Duration::from_millis(ms as u64))
            .unwrap_or(defaults.initial);
        Ok(Policy {
            timeout,
            max_retries,
            initial,
        })
    }

    /// The waits between attempts, each drawn afresh.
    pub fn waits(&self) -> Waits {
        Waits {
            steps: backon::ExponentialBuilder::default()
                .with_min_delay(self.initial)
                .with_max_delay(CAP)
                .with_max_times(self.max_retries)
                .build(),
            rng: fastrand::Rng::with_seed(os_seed()),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are spent. `what` names
    /// the service in the warnings (`Elasticsearch`, `CAST AI API`).
    pub async fn run<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let max_retries = self.max_retries;
        let policy = *self;
        let result = attempt
            .retry(PolicyBackoff(policy))
            .sleep(tokio::time::sleep)
            .when(|f: &Failure| f.class == Class::Transient)
            .adjust(|f: &Failure, wait: Option<Duration>| {
                wait.map(|w| match f.retry_after {
                    Some(after) => after.min(MAX_RETRY_AFTER).max(w),
                    None => w,
                })
            })
            .notify(|f: &Failure, wait: Duration| {
                tracing::warn!(
                    retry_in_ms = wait.as_millis() as u64,
                    "{what}: {}; retrying",
                    f.why
                );
            })
            .await;
        result.map_err(|mut f| {
            if f.class == Class::Transient {
                f.exhausted = Some(max_retries);
            }
            f
        })
    }
}

/// Adapts a [`Policy`] to backon.
#[derive(Debug, Clone, Copy)]
struct PolicyBackoff(Policy);

impl BackoffBuilder for PolicyBackoff {
    type Backoff = Waits;
    fn build(self) -> Waits {
        self.0.waits()
    }
}

/// Full-jitter waits: each uniformly random in `[0, step]`, the step doubling up to [`CAP`].
pub struct Waits {
    steps: backon::ExponentialBackoff,
    rng: fastrand::Rng,
}

impl Iterator for Waits {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let step = self.steps.next()?.min(CAP);
        let nanos = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(self.rng.u64(0..=nanos)))
    }
}

/// A seed from the operating system's random source; the clock only if that is unavailable.
fn os_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
            .unwrap_or(0),
    }
}

/// What kind of failure an attempt ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Worth another attempt: 408, 429, 5xx except 501/505, connection resets and timeouts.
    Transient,
    /// Will fail the same way again: other 4xx, a certificate that does not verify, a body the
    /// client cannot read.
    Permanent,
    /// Credentials refused (401, 403): never retried, the client words the message.
    Auth,
}

/// A failed attempt: its class, a short reason for the warnings, and the error to report.
#[derive(Debug)]
pub struct Failure {
    pub class: Class,
    pub why: String,
    pub retry_after: Option<Duration>,
    pub error: anyhow::Error,
    /// Set when the retries were spent on a transient failure: how many there were.
    pub exhausted: Option<usize>,
}

impl Failure {
    pub fn new(class: Class, why: impl Into<String>, error: anyhow::Error) -> Self {
        Failure {
            class,
            why: why.into(),
            retry_after: None,
            error,
            exhausted: None,
        }
    }

    /// A transient failure whose reason is also its error.
    pub fn transient(why: impl Into<String>) -> Self {
        let why = why.into();
        Failure::new(Class::Transient, why.clone(), anyhow::anyhow!(why))
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// The error to report; after spent retries it says so, naming `service`.
    pub fn into_error(self, service: &str) -> anyhow::Error {
        match self.exhausted {
            Some(n) => anyhow::anyhow!("{service} failed after {n} retries: {}", self.why),
            None => self.error,
        }
    }
}

/// The class of an HTTP status that is not a success.
pub fn classify_status(status: u16) -> Class {
    match status {
        401 | 403 => Class::Auth,
        408 | 425 | 429 => Class::Transient,
        501 | 505 => Class::Permanent,
        500..=599 => Class::Transient,
        _ => Class::Permanent,
    }
}

/// The class of a failure to get a response at all. A certificate that does not verify is
/// permanent: it will not verify on the next attempt either.
pub fn classify_transport(error_text: &str) -> Class {
    if is_certificate_error(error_text) {
        Class::Permanent
    } else {
        Class::Transient
    }
}

/// Whether an error's text (its whole chain) says the server's certificate did not verify.
pub fn is_certificate_error(error_text: &str) -> bool {
    let t = error_text.to_ascii_lowercase();
    [
        "invalid peer certificate",
        "certificate verify failed",
        "unknownissuer",
        "certificate is not valid",
        "notvalidforname",
        "badsignature",
        "expired certificate",
        "certificate expired",
    ]
    .iter()
    .any(|needle| t.contains(needle))
}

/// The `Retry-After` header of an answer, if it has a readable one.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// A `Retry-After` header: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn policy(initial_ms: u64, max_retries: usize) -> Policy {
        Policy {
            timeout: Duration::from_secs(1),
            max_retries,
            initial: Duration::from_millis(initial_ms),
        }
    }

    #[test]
    fn literal_statuses() {
        for s in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify_status(s), Class::Transient, "{s}");
        }
        for s in [400, 404, 409, 413, 422, 501, 505] {
            assert_eq!(classify_status(s), Class::Permanent, "{s}");
        }
        assert_eq!(classify_status(401), Class::Auth);
        assert_eq!(classify_status(403), Class::Auth);
    }

    #[test]
    fn literal_transport_errors() {
        let cert = "error sending request for url (https://127.0.0.1:9200/): client error (Connect): invalid peer certificate: UnknownIssuer";
        assert_eq!(classify_transport(cert), Class::Permanent);
        let reset = "error sending request: connection closed before message completed";
        assert_eq!(classify_transport(reset), Class::Transient);
        let refused =
            "error trying to connect: tcp connect error: Connection refused (os error 111)";
        assert_eq!(classify_transport(refused), Class::Transient);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn waits_never_exceed_the_cap_even_from_a_large_initial_step() {
        for w in policy(30_000, 50).waits() {
            assert!(w <= CAP, "{w:?}");
        }
        let waits: Vec<Duration> = policy(100, 8).waits().collect();
        assert_eq!(waits.len(), 8);
        // Step n is 100 ms * 2^n: each wait lies within its step.
        for (n, w) in waits.iter().enumerate() {
            let step = Duration::from_millis(100 * (1 << n)).min(CAP);
            assert!(*w <= step, "wait {n} {w:?} > step {step:?}");
        }
    }

    #[test]
    fn waits_differ_between_runs() {
        let a: Vec<Duration> = policy(1000, 6).waits().collect();
        let b: Vec<Duration> = policy(1000, 6).waits().collect();
        assert_ne!(a, b, "two schedules drew the same jitter");
    }

    #[tokio::test(start_paused = true)]
    async fn transient_is_retried_permanent_is_not() {
        let calls = AtomicUsize::new(0);
        let r: Result<(), Failure> = policy(10, 3)
            .run("test", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Failure::transient("HTTP 503"))
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let e = r.unwrap_err().into_error("Svc").to_string();
        assert_eq!(e, "Svc failed after 3 retries: HTTP 503");

        let calls = AtomicUsize::new(0);
        let r: Result<(), Failure> = policy(10, 3)
            .run("test", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Failure::new(
                    Class::Auth,
                    "HTTP 401",
                    anyhow::anyhow!("credentials refused"),
                ))
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            r.unwrap_err().into_error("Svc").to_string(),
            "credentials refused"
        );

        let calls = AtomicUsize::new(0);
        let r = policy(10, 3)
            .run("test", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Failure::transient("reset"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_up_to_its_cap() {
        let start = tokio::time::Instant::now();
        let _ = policy(1, 1)
            .run("test", || async {
                Err::<(), _>(
                    Failure::transient("HTTP 429").with_retry_after(Some(Duration::from_secs(5))),
                )
            })
            .await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );

        let start = tokio::time::Instant::now();
        let _ = policy(1, 1)
            .run("test", || async {
                Err::<(), _>(
                    Failure::transient("HTTP 429")
                        .with_retry_after(Some(Duration::from_secs(3600))),
                )
            })
            .await;
        assert!(start.elapsed() <= MAX_RETRY_AFTER + Duration::from_secs(1));
    }

    #[test]
    fn settings_per_prefix() {
        let env = Env::from_pairs([("CDP_MAX_RETRIES", "2"), ("CDP_RETRY_INITIAL_MS", "50")]);
        let p = Policy::from_env(&env, "CDP", policy(500, 8)).unwrap();
        assert_eq!((p.max_retries, p.initial), (2, Duration::from_millis(50)));
        let bad = Env::from_pairs([("CASTAI_TIMEOUT_SECONDS", "0")]);
        let e = Policy::from_env(&bad, "CASTAI", policy(500, 8))
            .unwrap_err()
            .0;
        assert!(e.starts_with("invalid CASTAI_TIMEOUT_SECONDS"), "{e}");
    }
}
