//! `TARGETS`: several destinations in one run. Each target is an ordinary sink configured from
//! the variables under `TARGET_<NAME>_` (read through a scoped [`Env`], so every sink reads its
//! usual names), with its own accept lists. Without `TARGETS` the ordinary variables describe
//! one implicit target, exactly as before.

use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::routing::{Accept, Selection};
use crate::sinks;

type Result<T> = std::result::Result<T, ConfigError>;

/// At most this many targets: each is a client per worker and a bit in a page's fan-out.
pub const MAX_TARGETS: usize = 16;

/// The unprefixed variables that mean nothing once TARGETS is set: each target has its own.
const PER_TARGET: &[&str] = &["SINK", "ACCEPT_TOPICS", "ACCEPT_ROUTING_KEYS"];

/// A target before its sink is configured: its name, its variables, what it accepts.
#[derive(Debug)]
pub struct Declared {
    /// As written in TARGETS; `None` for the implicit target of the ordinary variables.
    pub name: Option<String>,
    pub env: Env,
    pub accept: Selection,
}

/// The targets TARGETS declares, or the one implicit target.
pub fn declare(env: &Env) -> Result<Vec<Declared>> {
    let Some(list) = env.get("TARGETS") else {
        return Ok(vec![Declared {
            name: None,
            env: env.clone(),
            accept: Selection::default(),
        }]);
    };
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim) {
        let valid = name.len() <= 32
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.ends_with('_');
        if !valid {
            return Err(ConfigError(format!(
                "invalid TARGETS {list:?}: {name:?} is not a target name (letters, digits and '_', starting with a letter, at most 32), e.g. TARGETS=siem,archive"
            )));
        }
        if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(ConfigError(format!(
                "invalid TARGETS {list:?}: {name:?} is named twice (names are compared without case)"
            )));
        }
        names.push(name.to_string());
    }
    if names.len() > MAX_TARGETS {
        return Err(ConfigError(format!(
            "invalid TARGETS {list:?}: at most {MAX_TARGETS} targets"
        )));
    }
    for var in PER_TARGET {
        if env.get(var).is_some() {
            return Err(ConfigError(format!(
                "{var} is set but so is TARGETS: each target has its own, TARGET_<NAME>_{var} (e.g. {})",
                prefix(&names[0]) + var
            )));
        }
    }
    names
        .iter()
        .map(|name| {
            let scoped = env.scoped(&prefix(name));
            let accept = |var: &str| {
                scoped
                    .get(var)
                    .map(|v| Accept::parse(var, v))
                    .transpose()
                    .map_err(|e| scoped.name_in_error(e))
            };
            let accept = Selection {
                topics: accept("ACCEPT_TOPICS")?,
                keys: accept("ACCEPT_ROUTING_KEYS")?,
            };
            Ok(Declared {
                name: Some(name.clone()),
                env: scoped,
                accept,
            })
        })
        .collect()
}

/// `TARGET_<NAME>_`.
pub fn prefix(name: &str) -> String {
    format!("TARGET_{}_", name.to_ascii_uppercase())
}

impl Declared {
    /// The kind of sink the target names.
    pub fn kind(&self) -> Result<&'static sinks::Kind> {
        if self.name.is_some() && self.env.get("SINK").is_none() {
            return Err(ConfigError(format!(
                "{} is not set: name the target's sink ({})",
                self.env.full_name("SINK"),
                crate::base::env::one_of(sinks::KINDS.iter().map(|k| k.name))
            )));
        }
        sinks::choose(&self.env).map_err(|e| self.env.name_in_error(e))
    }

    /// After its sink read its settings: a variable under the target's prefix that nothing read
    /// is a typo or another sink's, and would silently leave a default in place.
    pub fn refuse_unread(&self, others: &[Declared]) -> Result<()> {
        // A longer name's variables fall under a shorter one's prefix (A and A_B).
        let mine = |var: &String| {
            let full = self.env.full_name(var);
            !others.iter().any(|o| {
                o.name != self.name
                    && o.env.full_name("").len() > self.env.full_name("").len()
                    && full.starts_with(&o.env.full_name(""))
            })
        };
        let unread: Vec<String> = self.env.unread().into_iter().filter(mine).collect();
        let Some(first) = unread.first() else {
            return Ok(());
        };
        let read = self.env.asked();
        let near = read
            .iter()
            .filter(|known| distance(known, first) <= 2)
            .min_by_key(|known| distance(known, first));
        let hint = match near {
            Some(known) => format!(" (did you mean {}?)", self.env.full_name(known)),
            None => String::new(),
        };
        Err(ConfigError(format!(
            "unknown variable {}: the {} sink of target {} does not read it{hint}",
            self.env.full_name(first),
            self.env.get("SINK").unwrap_or("?"),
            self.name.as_deref().unwrap_or_default(),
        )))
    }
}

/// Edit distance, for the "did you mean" of a misspelt variable.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j]))
                .min(row[j] + 1)
                .min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `TARGET_<NAME>_` variables of a name TARGETS does not list (left over, or a target
/// forgotten in TARGETS): read by nothing.
pub fn undeclared_target_variables(env: &Env, declared: &[Declared]) -> Vec<String> {
    let prefixes: Vec<String> = declared
        .iter()
        .filter(|d| d.name.is_some())
        .map(|d| d.env.full_name(""))
        .collect();
    env.names_with_prefix("TARGET_")
        .into_iter()
        .filter(|v| !prefixes.iter().any(|p| v.starts_with(p.as_str())))
        .collect()
}

/// Variables set without prefix that some target's sink reads under its prefix: left over from
/// a single-sink setup, and read by nothing now.
pub fn ignored_plain_variables(env: &Env, declared: &[Declared]) -> Vec<String> {
    if declared.iter().all(|d| d.name.is_none()) {
        return Vec::new();
    }
    let top_read = env.asked();
    let mut out: Vec<String> = declared
        .iter()
        .flat_map(|d| d.env.asked())
        .filter(|v| env.get(v).is_some() && !top_read.contains(v))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        let bad = |list: &str| {
            declare(&Env::from_pairs([("TARGETS", list)]))
                .unwrap_err()
                .0
        };
        assert!(bad("siem,my-archive").contains("\"my-archive\" is not a target name"));
        assert!(bad("siem,,a").contains("\"\" is not a target name"));
        assert!(bad("siem,SIEM").contains("named twice"));
        assert!(bad("a_").contains("is not a target name"));
        let many: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
        assert!(bad(&many.join(",")).contains("at most 16"));
        let e = declare(&Env::from_pairs([("TARGETS", "siem"), ("SINK", "file")]))
            .unwrap_err()
            .0;
        assert!(e.contains("TARGET_SIEM_SINK"), "{e}");
    }

    #[test]
    fn accept_lists_are_per_target_and_named_with_their_prefix() {
        let env = Env::from_pairs([
            ("TARGETS", "siem, alerts"),
            ("TARGET_ALERTS_ACCEPT_TOPICS", "authfail"),
        ]);
        let d = declare(&env).unwrap();
        assert_eq!(d[0].name.as_deref(), Some("siem"));
        assert!(d[0].accept.is_all());
        assert!(d[1].accept.topics.is_some() && d[1].accept.keys.is_none());
        let e = declare(&Env::from_pairs([
            ("TARGETS", "siem"),
            ("TARGET_SIEM_ACCEPT_ROUTING_KEYS", "a,,b"),
        ]))
        .unwrap_err()
        .0;
        assert!(
            e.starts_with("invalid TARGET_SIEM_ACCEPT_ROUTING_KEYS"),
            "{e}"
        );
    }

    #[test]
    fn variables_of_an_undeclared_target_are_found() {
        let env = Env::from_pairs([
            ("TARGETS", "siem"),
            ("TARGET_SIEM_SINK", "stdout"),
            ("TARGET_ARCHIVE_SINK", "file"),
        ]);
        let d = declare(&env).unwrap();
        assert_eq!(
            undeclared_target_variables(&env, &d),
            vec!["TARGET_ARCHIVE_SINK".to_string()]
        );
    }

    #[test]
    fn near_names_are_suggested() {
        assert_eq!(distance("ELASTICSEARCH_HOST", "ELASTICSEARCH_HOTS"), 2);
        assert_eq!(distance("OUTPUT_PATH", "OUTPUT_PATH"), 0);
        assert_eq!(distance("", "ab"), 2);
    }
}
