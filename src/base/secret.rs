//! Secrets: values that must never reach any output (logs at every level, error messages,
//! `Debug` of a settings struct).
//!
//! Two layers. [`Secret`] wraps a value so that `Debug` and `Display` print `***`; a value only
//! leaves it through [`Secret::expose`], where a client needs it. And every secret read from the
//! environment is also remembered here, so that the log writer can blank it out of any line,
//! whatever produced that line (a driver's error text quoting a URL, say): see [`scrub`].

use std::fmt;
use std::sync::RwLock;

/// What is printed in place of a secret.
pub const MASK: &str = "***";

/// A secret value: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value` and remembers it for [`scrub`].
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        remember(&value);
        Secret(value)
    }

    /// The value itself, for the one place that sends it (a header, a signature, a connection).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Secrets shorter than this are not scrubbed from free text: blanking every "a" or "1" in the
/// logs would make them unreadable and protects nothing a short password does not already lose.
const MIN_SCRUB_LEN: usize = 4;

/// Remembers `value` so that [`scrub`] blanks it out of any text.
pub fn remember(value: &str) {
    if value.len() < MIN_SCRUB_LEN {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    if !known.iter().any(|k| k == value) {
        known.push(value.to_string());
        // Longest first, so a secret that contains another is blanked whole.
        known.sort_by_key(|k| std::cmp::Reverse(k.len()));
    }
    // Its URL-encoded form (a password inside a URL) and its JSON-escaped form (a JSON log
    // line) are blanked too.
    let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let json = serde_json::to_string(value).unwrap_or_default();
    let json = json.trim_matches('"').to_string();
    for form in [encoded, json] {
        if form != value && !known.contains(&form) {
            known.push(form);
        }
    }
    known.sort_by_key(|k| std::cmp::Reverse(k.len()));
}

/// `text` with every remembered secret and every password inside a URL replaced by `***`.
pub fn scrub(text: &str) -> String {
    let mut out = redact_urls(text);
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    for k in known.iter() {
        if out.contains(k.as_str()) {
            out = out.replace(k.as_str(), MASK);
        }
    }
    out
}

/// A URL as it may be printed: the password of its user info replaced by `***`, also when the
/// URL is malformed (`mysql:/u:pw@host`, `mysql:u:pw@host`, `mysql:///u:pw@host`), and the
/// values of query parameters that carry credentials (`password=`, `token=`, `key=`...).
pub fn redact_url(value: &str) -> String {
    let Some(colon) = value.find(':') else {
        return redact_query(value);
    };
    let (scheme, rest) = (&value[..colon], &value[colon + 1..]);
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return redact_query(value);
    }
    let (before_query, query) = match rest.find(['?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // The user info ends at the last '@' before the query: a password may hold '/' or '@'
    // unencoded, and over-blanking a path is harmless.
    let redacted = match before_query.rfind('@') {
        Some(at) => {
            let slashes = before_query.len() - before_query.trim_start_matches('/').len();
            let userinfo = &before_query[slashes..at];
            let user = match userinfo.find(':') {
                Some(i) => format!("{}:{MASK}", &userinfo[..i]),
                // `user:pw@host` without a scheme reads as scheme `user`, user info `pw`:
                // without `//` there is no telling, so the whole user info goes.
                None if slashes == 0 => MASK.to_string(),
                None => userinfo.to_string(),
            };
            format!("{}{user}{}", &before_query[..slashes], &before_query[at..])
        }
        None => before_query.to_string(),
    };
    format!("{scheme}:{redacted}{}", redact_query(query))
}

/// A value meant to be an http(s) URL without credentials, as an error may quote it: all before
/// the last `@` of its authority blanked, user name too (a token is often given as the user).
/// Unlike [`redact_url`], it takes a scheme-less `key:secret@host` for credentials, not for a
/// scheme.
pub fn blank_user_info(value: &str) -> String {
    let end = value.find(['?', '#']).unwrap_or(value.len());
    let Some(at) = value[..end].rfind('@') else {
        return redact_url(value);
    };
    let lower = value.to_ascii_lowercase();
    let start = match value.find("//") {
        Some(i) if i < at => i + 2,
        _ => ["http:", "https:"]
            .iter()
            .find(|s| lower.starts_with(*s))
            .map_or(0, |s| s.len()),
    };
    format!("{}{MASK}{}", &value[..start], redact_url(&value[at..]))
}

/// Query parameter names whose values are credentials.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "pass",
    "secret",
    "token",
    "key",
    "apikey",
    "api_key",
    "access_token",
    "sslpassword",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

fn redact_query(text: &str) -> String {
    let Some(q) = text.find('?') else {
        return text.to_string();
    };
    let (head, query) = text.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                format!("{k}={MASK}")
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{head}{}", parts.join("&"))
}

/// Every URL-looking word of free text (`scheme:...` up to whitespace or a quote) redacted.
fn redact_urls(text: &str) -> String {
    if !text.contains('@') && !text.contains('?') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains(':') && (word.contains('@') || word.contains('?')) {
            out.push_str(&redact_url(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | '(' | ')' | ',') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_prints_mask() {
        let s = Secret::new("hunter2-long");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2-long");
    }

    #[test]
    fn urls_well_formed_and_malformed() {
        for (input, want) in [
            ("mysql://u:PW@h:3306/db", "mysql://u:***@h:3306/db"),
            (
                "mysql:/u:PW@127.0.0.1:3306/db",
                "mysql:/u:***@127.0.0.1:3306/db",
            ),
            ("mysql:u:PW@h/db", "mysql:u:***@h/db"),
            ("mysql:///u:PW@h/db", "mysql:///u:***@h/db"),
            ("postgres://u:p/w@d@h/db", "postgres://u:***@h/db"),
            (
                "http://elastic:PW@127.0.0.1:9200",
                "http://elastic:***@127.0.0.1:9200",
            ),
            ("https://h/x?token=PW&a=1", "https://h/x?token=***&a=1"),
            ("https://h/x", "https://h/x"),
            ("mysql://u@h/db", "mysql://u@h/db"),
            ("elastic:PW@h:9200", "elastic:***@h:9200"),
        ] {
            assert_eq!(redact_url(input), want, "{input}");
            assert!(!redact_url(input).contains("PW"), "{input}");
        }
    }

    #[test]
    fn scrub_free_text_and_known_values() {
        remember("S3cr3t-value!");
        let line =
            "cannot connect to mysql:/u:OTHERPW@h/db: Unknown database 'x' with S3cr3t-value!";
        let out = scrub(line);
        assert!(!out.contains("OTHERPW"), "{out}");
        assert!(!out.contains("S3cr3t-value!"), "{out}");
        assert!(out.contains("cannot connect to"), "{out}");
        // The URL-encoded form too.
        assert!(!scrub("x=S3cr3t-value%21").contains("S3cr3t"));
    }
}
