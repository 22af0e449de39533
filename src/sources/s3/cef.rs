//! ArcSight Common Event Format (CEF) lines, parsed by the rules of the CEF specification:
//!
//! `CEF:Version|Device Vendor|Device Product|Device Version|Device Event Class ID|Name|Severity|Extension`
//!
//! In the header a pipe and a backslash are escaped (`\|`, `\\`). The extension is a list of
//! `key=value` pairs separated by spaces; values may contain spaces, so a value ends where the
//! next ` key=` begins. In values `=` and `\` are escaped (`\=`, `\\`) and `\n`, `\r` stand for
//! line breaks. Producers differ at the edges, so the parser is lenient where the meaning is
//! still clear: an unknown escape is kept as written, `\|` in an extension is a pipe, and text
//! before `CEF:` (a syslog header) is kept apart.

use std::collections::BTreeMap;

/// The seven header fields of CEF, in order.
pub const HEADER_FIELDS: usize = 7;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cef {
    /// Text before `CEF:` (e.g. a syslog header), trimmed; empty when the line starts with it.
    pub prefix: String,
    pub version: String,
    pub device_vendor: String,
    pub device_product: String,
    pub device_version: String,
    pub device_event_class_id: String,
    pub name: String,
    pub severity: String,
    /// Extension pairs; a key given twice keeps its last value.
    pub extensions: BTreeMap<String, String>,
}

/// Parses one CEF line; the error says what is wrong, for the report.
pub fn parse(line: &str) -> Result<Cef, String> {
    let start = line
        .find("CEF:")
        .ok_or_else(|| "not a CEF line: no \"CEF:\"".to_string())?;
    let prefix = line[..start].trim().to_string();
    let rest = &line[start + 4..];

    // Split the header at unescaped pipes; whatever follows the seventh is the extension.
    let mut fields: Vec<String> = Vec::with_capacity(HEADER_FIELDS);
    let mut current = String::new();
    let mut chars = rest.char_indices();
    let mut extension_at = None;
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.clone().next() {
                Some((_, next @ ('|' | '\\'))) => {
                    current.push(next);
                    chars.next();
                }
                _ => current.push('\\'),
            },
            '|' => {
                fields.push(std::mem::take(&mut current));
                if fields.len() == HEADER_FIELDS {
                    extension_at = Some(i + 1);
                    break;
                }
            }
            c => current.push(c),
        }
    }
    let Some(extension_at) = extension_at else {
        return Err(format!(
            "CEF header has {} of {HEADER_FIELDS} fields separated by '|'",
            fields.len() + usize::from(!current.is_empty())
        ));
    };
    let mut f = fields.into_iter();
    let mut next = || f.next().unwrap_or_default();
    let version = next();
    if version.trim().is_empty() {
        return Err("CEF header has no version".into());
    }
    Ok(Cef {
        prefix,
        version,
        device_vendor: next(),
        device_product: next(),
        device_version: next(),
        device_event_class_id: next(),
        name: next(),
        severity: next(),
        extensions: extensions(&rest[extension_at..])?,
    })
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'[' | b']')
}

/// Parses `key=value key2=value with spaces ...`.
fn extensions(ext: &str) -> Result<BTreeMap<String, String>, String> {
    let bytes = ext.as_bytes();
    // (key start, position of its '=') of every unescaped '=' that follows a key which itself
    // starts the extension or follows a space; any other '=' belongs to a value.
    let mut keys: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'=' => {
                let mut k = i;
                while k > 0 && is_key_char(bytes[k - 1]) {
                    k -= 1;
                }
                if k < i && (k == 0 || bytes[k - 1] == b' ') {
                    keys.push((k, i));
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    let before = match keys.first() {
        Some(&(k, _)) => &ext[..k],
        None => ext,
    };
    if !before.trim().is_empty() {
        return Err(format!(
            "CEF extension does not start with key=value: {:?}",
            excerpt(before.trim())
        ));
    }
    let mut out = BTreeMap::new();
    for (n, &(k, eq)) in keys.iter().enumerate() {
        let end = match keys.get(n + 1) {
            // Up to the space that separates it from the next key.
            Some(&(next_k, _)) => next_k - 1,
            None => ext.trim_end_matches(' ').len().max(eq + 1),
        };
        out.insert(ext[k..eq].to_string(), unescape_value(&ext[eq + 1..end]));
    }
    Ok(out)
}

fn unescape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('=') => out.push('='),
            Some('\\') => out.push('\\'),
            Some('|') => out.push('|'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            // Not a CEF escape: keep what was written.
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Escapes a header field as CEF writes it (the tests write lines with it).
#[cfg(test)]
pub fn escape_header(v: &str) -> String {
    v.replace('\\', "\\\\").replace('|', "\\|")
}

/// Escapes an extension value as CEF writes it.
#[cfg(test)]
pub fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn excerpt(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CATO: &str = "CEF:0|Cato Networks|Cato SASE Platform|1.0|Security Event|Internet Firewall|3|rt=1714557600123 src=10.0.0.5 dst=93.184.216.34 act=Block msg=Blocked by rule 7 suser=ann@example.com";

    #[test]
    fn header_and_extensions() {
        let c = parse(CATO).unwrap();
        assert_eq!(c.prefix, "");
        assert_eq!(c.version, "0");
        assert_eq!(c.device_vendor, "Cato Networks");
        assert_eq!(c.device_product, "Cato SASE Platform");
        assert_eq!(c.device_version, "1.0");
        assert_eq!(c.device_event_class_id, "Security Event");
        assert_eq!(c.name, "Internet Firewall");
        assert_eq!(c.severity, "3");
        assert_eq!(c.extensions["rt"], "1714557600123");
        assert_eq!(
            c.extensions["msg"], "Blocked by rule 7",
            "values keep spaces"
        );
        assert_eq!(c.extensions["suser"], "ann@example.com");
        assert_eq!(c.extensions.len(), 6);
    }

    #[test]
    fn header_escapes() {
        let c = parse(r"CEF:0|Ven\|dor|Prod\\uct|1|id|a \| b|5|").unwrap();
        assert_eq!(c.device_vendor, "Ven|dor");
        assert_eq!(c.device_product, r"Prod\uct");
        assert_eq!(c.name, "a | b");
        assert!(c.extensions.is_empty());
    }

    #[test]
    fn extension_escapes() {
        let c = parse(r"CEF:0|V|P|1|id|n|5|msg=a\=b c\\d line\nnext\r x path=C:\\dir\\f file=x\|y")
            .unwrap();
        assert_eq!(c.extensions["msg"], "a=b c\\d line\nnext\r x");
        assert_eq!(c.extensions["path"], r"C:\dir\f");
        assert_eq!(c.extensions["file"], "x|y");
    }

    #[test]
    fn unescaped_equals_inside_a_value_stays_in_the_value() {
        // `b=c` after a space is a new key; `x=y` glued to text is not.
        let c = parse("CEF:0|V|P|1|id|n|5|request=/q?x=y&z=1 b=c").unwrap();
        assert_eq!(c.extensions["request"], "/q?x=y&z=1");
        assert_eq!(c.extensions["b"], "c");
    }

    #[test]
    fn unknown_escapes_are_kept_and_a_trailing_backslash_too() {
        let c = parse(r"CEF:0|V|P|1|id|n|5|a=\t\q b=end\").unwrap();
        assert_eq!(c.extensions["a"], r"\t\q");
        assert_eq!(c.extensions["b"], "end\\");
        let h = parse(r"CEF:0|V\x|P|1|id|n|5|").unwrap();
        assert_eq!(h.device_vendor, r"V\x");
    }

    #[test]
    fn empty_values_and_trailing_spaces() {
        let c = parse("CEF:0|V|P|1|id|n|5|a= b=2   ").unwrap();
        assert_eq!(c.extensions["a"], "");
        assert_eq!(c.extensions["b"], "2");
        let c = parse("CEF:0|V|P|1|id|n|5|a=").unwrap();
        assert_eq!(c.extensions["a"], "");
    }

    #[test]
    fn keys_with_dots_brackets_and_a_repeated_key() {
        let c = parse("CEF:0|V|P|1|id|n|5|ad.user[0]=x cs1Label=Rule cs1=7 cs1=8").unwrap();
        assert_eq!(c.extensions["ad.user[0]"], "x");
        assert_eq!(c.extensions["cs1Label"], "Rule");
        assert_eq!(c.extensions["cs1"], "8");
    }

    #[test]
    fn a_syslog_prefix_is_kept_apart() {
        let c = parse("<134>May  1 10:00:00 host CEF:1|V|P|1|id|n|5|a=1").unwrap();
        assert_eq!(c.prefix, "<134>May  1 10:00:00 host");
        assert_eq!(c.version, "1");
    }

    #[test]
    fn malformed_lines_say_why() {
        assert!(parse("{\"json\": true}")
            .unwrap_err()
            .contains("no \"CEF:\""));
        let e = parse("CEF:0|V|P|1|id|n").unwrap_err();
        assert!(e.contains("6 of 7 fields"), "{e}");
        let e = parse("CEF:0|V|P|1|id|n|5|garbage a=1").unwrap_err();
        assert!(e.contains("does not start with key=value"), "{e}");
        assert!(parse("CEF:|V|P|1|id|n|5|")
            .unwrap_err()
            .contains("no version"));
        // Six escaped pipes are no separators.
        assert!(parse(r"CEF:0\|V\|P\|1\|id\|n\|5\|").is_err());
    }

    #[test]
    fn non_ascii_text_is_fine() {
        let c = parse("CEF:0|Vendör|P|1|id|Ñame|5|msg=Grüße aus Köln suser=山田").unwrap();
        assert_eq!(c.device_vendor, "Vendör");
        assert_eq!(c.extensions["msg"], "Grüße aus Köln");
        assert_eq!(c.extensions["suser"], "山田");
    }

    fn header_text() -> impl Strategy<Value = String> {
        // Anything but line breaks, including pipes, backslashes and '='.
        "[^\r\n]{0,12}"
    }

    fn value_text() -> impl Strategy<Value = String> {
        // Values may hold anything escapable; no leading or trailing space (CEF cannot
        // escape spaces, so those are not preserved at the end of a line).
        "([^ ]([^\u{0}]{0,14}[^ ])?)?"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn never_panics(line in "\\PC{0,80}") {
            let _ = parse(&line);
            let _ = parse(&format!("CEF:0|a|b|c|d|e|f|{line}"));
        }

        #[test]
        fn escaped_fields_round_trip(
            vendor in header_text(),
            name in header_text(),
            pairs in proptest::collection::btree_map("[a-zA-Z][a-zA-Z0-9_]{0,8}", value_text(), 0..6),
        ) {
            let ext: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", escape_value(v)))
                .collect();
            let line = format!(
                "CEF:0|{}|Product|1.0|100|{}|5|{}",
                escape_header(&vendor),
                escape_header(&name),
                ext.join(" ")
            );
            let c = parse(&line).unwrap();
            prop_assert_eq!(&c.device_vendor, &vendor);
            prop_assert_eq!(&c.name, &name);
            prop_assert_eq!(&c.extensions, &pairs);
        }
    }
}
