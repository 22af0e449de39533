//! Reading the environment: one snapshot taken at start, read through typed helpers whose errors
//! name the variable and what it accepts (`invalid CHUNK_SIZE "lots": expected a positive whole
//! number`). Each component reads its own variables here, in its own module.
//!
//! Variables are named by string literals at the call (`env.positive("CHUNK_SIZE")`): a test
//! collects them from the source and checks them against `.env.example` and
//! `docs/environment.md`, so the reference cannot drift from the code.

use crate::base::exit::ConfigError;
use crate::base::secret::{blank_user_info, Secret};
use std::collections::BTreeMap;
use std::time::Duration;

pub type Result<T> = std::result::Result<T, ConfigError>;

/// A snapshot of the environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// A [`Env::scoped`] view: the prefix its variables were found under.
    prefix: String,
    /// The names asked for, so a view can tell which of its variables nothing read.
    asked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Env {
    /// The process environment. A value that is not UTF-8 is kept with replacement characters
    /// (it then fails the variable's own validation, with its name).
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| {
                    Some((k.into_string().ok()?, v.to_string_lossy().into_owned()))
                })
                .collect(),
            ..Env::default()
        }
    }

    #[cfg(test)]
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..Env::default()
        }
    }

    /// The variables under `prefix` (`TARGET_SIEM_`), named without it: a component configured
    /// from this view reads its ordinary names. Errors keep naming the ordinary names until
    /// [`Env::name_in_error`] gives them their prefix.
    pub fn scoped(&self, prefix: &str) -> Env {
        Env {
            vars: self
                .vars
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
                .filter(|(k, _)| !k.is_empty())
                .collect(),
            prefix: format!("{}{prefix}", self.prefix),
            asked: Default::default(),
        }
    }

    /// The names of the set variables that start with `prefix`.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.vars
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The name a variable of this view has in the environment.
    pub fn full_name(&self, var: &str) -> String {
        format!("{}{var}", self.prefix)
    }

    /// The variables of this view that nothing has asked for (a typo, or another kind's).
    pub fn unread(&self) -> Vec<String> {
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        self.vars
            .keys()
            .filter(|k| !asked.contains(*k))
            .cloned()
            .collect()
    }

    /// The names this view was asked for.
    pub fn asked(&self) -> Vec<String> {
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.iter().cloned().collect()
    }

    /// `e` with every variable name this view was asked for written with the view's prefix, so
    /// the message names what the user set.
    pub fn name_in_error(&self, e: ConfigError) -> ConfigError {
        if self.prefix.is_empty() {
            return e;
        }
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(e.0.len() + self.prefix.len());
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut String| {
            if asked.contains(word.as_str()) {
                out.push_str(&self.prefix);
            }
            out.push_str(word);
            word.clear();
        };
        for c in e.0.chars() {
            if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
                word.push(c);
            } else {
                flush(&mut word, &mut out);
                out.push(c);
            }
        }
        flush(&mut word, &mut out);
        ConfigError(out)
    }

    /// The value as set, untrimmed; `None` when unset.
    pub fn raw(&self, var: &str) -> Option<&str> {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(var.to_string());
        self.vars.get(var).map(String::as_str)
    }

    /// The value, trimmed; an unset or empty variable is "not given" (the original treated empty
    /// as unset too).
    pub fn get(&self, var: &str) -> Option<&str> {
        self.raw(var).map(str::trim).filter(|s| !s.is_empty())
    }

    /// A secret: remembered so that no output can show it.
    pub fn secret(&self, var: &str) -> Option<Secret> {
        self.get(var).map(Secret::new)
    }

    /// A positive whole number.
    pub fn positive(&self, var: &str) -> Result<Option<usize>> {
        match self.get(var) {
            None => Ok(None),
            Some(s) => match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(ConfigError(format!(
                    "invalid {var} {s:?}: expected a positive whole number"
                ))),
            },
        }
    }

    /// A whole number within `range`, or the error naming the variable and `expected`.
    pub fn number<T>(
        &self,
        var: &str,
        range: std::ops::RangeInclusive<T>,
        expected: &str,
    ) -> Result<Option<T>>
    where
        T: std::str::FromStr + PartialOrd,
    {
        match self.get(var) {
            None => Ok(None),
            Some(s) => match s.parse::<T>() {
                Ok(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(ConfigError(format!(
                    "invalid {var} {s:?}: expected {expected}"
                ))),
            },
        }
    }

    pub fn boolean(&self, var: &str) -> Result<Option<bool>> {
        match self.get(var).map(|s| s.to_ascii_lowercase()) {
            None => Ok(None),
            // The original (django-environ) accepted these spellings of true.
            Some(s) if ["true", "1", "yes", "y", "on", "ok"].contains(&s.as_str()) => {
                Ok(Some(true))
            }
            Some(s) if ["false", "0", "no", "n", "off"].contains(&s.as_str()) => Ok(Some(false)),
            Some(s) => Err(ConfigError(format!(
                "invalid {var} {s:?}: expected true or false"
            ))),
        }
    }

    /// One of `choices` (case-insensitive); the error lists them.
    pub fn choice<T: Copy>(&self, var: &str, choices: &[(&str, T)]) -> Result<Option<T>> {
        let Some(value) = self.get(var) else {
            return Ok(None);
        };
        let lower = value.to_ascii_lowercase();
        choices
            .iter()
            .find(|(name, _)| name.to_ascii_lowercase() == lower)
            .map(|(_, v)| Some(*v))
            .ok_or_else(|| {
                ConfigError(format!(
                    "invalid {var} {value:?}: expected {}",
                    one_of(choices.iter().map(|(n, _)| *n))
                ))
            })
    }

    /// An http(s) URL with a host and no credentials in it (those have variables of their own).
    /// The error quotes the value with any user info blanked.
    pub fn http_url(&self, var: &str, expected: &str) -> Result<Option<url::Url>> {
        match self.get(var) {
            None => Ok(None),
            Some(value) => http_url(var, value, expected).map(Some),
        }
    }
}

/// See [`Env::http_url`].
pub fn http_url(var: &str, value: &str, expected: &str) -> Result<url::Url> {
    url::Url::parse(value)
        .ok()
        .filter(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some_and(|h| !h.is_empty())
                && u.username().is_empty()
                && u.password().is_none()
        })
        .ok_or_else(|| {
            let shown = blank_user_info(value);
            let why = if shown != value {
                " (credentials do not belong in the URL: use the variables for them)"
            } else {
                ""
            };
            ConfigError(format!("invalid {var} {shown:?}: expected {expected}{why}"))
        })
}

/// `90d`, `12h`, `5m`, `30s`, or a bare number of seconds.
pub fn duration(s: &str) -> Option<Duration> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs)
}

/// `a, b or c`.
pub fn one_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_helpers_name_the_variable() {
        let env = Env::from_pairs([
            ("N", "lots"),
            ("B", "maybe"),
            ("E", "  "),
            ("U", "http://u:PW@h"),
            ("C", "Json"),
        ]);
        assert_eq!(
            env.positive("N").unwrap_err().0,
            "invalid N \"lots\": expected a positive whole number"
        );
        assert_eq!(
            env.boolean("B").unwrap_err().0,
            "invalid B \"maybe\": expected true or false"
        );
        assert_eq!(env.get("E"), None);
        assert_eq!(env.raw("E"), Some("  "));
        let e = env.http_url("U", "an http(s) URL").unwrap_err().0;
        assert!(!e.contains("PW") && e.contains("invalid U"), "{e}");
        // Without a scheme the part before '@' is still credentials; a user alone may be a token.
        for (value, shown) in [
            ("key:PW@h:9000", "***@h:9000"),
            ("//key:PW@h", "//***@h"),
            ("http:key:PW@h", "http:***@h"),
            ("https://PW@h/x?token=PW", "https://***@h/x?token=***"),
            ("https://u:P/W@h", "https://***@h"),
        ] {
            let e = http_url("U", value, "an http(s) URL").unwrap_err().0;
            assert!(
                e.starts_with(&format!("invalid U {shown:?}")),
                "{value}: {e}"
            );
        }
        assert_eq!(
            env.choice("C", &[("text", 1), ("json", 2)]).unwrap(),
            Some(2)
        );
        assert_eq!(
            env.choice("C", &[("a", 1), ("b", 2), ("c", 3)])
                .unwrap_err()
                .0,
            "invalid C \"Json\": expected a, b or c"
        );
    }

    #[test]
    fn scoped_views_read_plain_names_and_report_the_prefixed_ones() {
        let env = Env::from_pairs([
            ("TARGET_A_OUTPUT_PATH", "x"),
            ("TARGET_A_OUTPUT_PAHT", "y"),
            ("TARGET_AB_SINK", "file"),
            ("OUTPUT_PATH", "top"),
        ]);
        let a = env.scoped("TARGET_A_");
        assert_eq!(a.get("OUTPUT_PATH"), Some("x"));
        assert_eq!(a.get("SINK"), None);
        assert_eq!(a.unread(), vec!["OUTPUT_PAHT".to_string()]);
        let e = a.name_in_error(ConfigError(
            "invalid OUTPUT_PATH \"x\": set SINK or OUTPUT_GZIP".into(),
        ));
        assert_eq!(
            e.0,
            "invalid TARGET_A_OUTPUT_PATH \"x\": set TARGET_A_SINK or OUTPUT_GZIP"
        );
        assert_eq!(a.full_name("SINK"), "TARGET_A_SINK");
    }

    #[test]
    fn durations() {
        assert_eq!(duration("90d"), Some(Duration::from_secs(90 * 86400)));
        assert_eq!(duration("15"), Some(Duration::from_secs(15)));
        assert_eq!(duration("5w"), None);
    }
}
