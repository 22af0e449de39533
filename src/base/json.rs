//! JSON text rewritten in one pass, without building a map: whitespace dropped, object members
//! in their order, each key once (at its first place with its last value, as Python's `json`
//! and order-keeping parsers read a repeated key; Elasticsearch refuses repeated keys).
//!
//! Why not `serde_json::Map`: without `preserve_order` it sorts the members; with it, every
//! object the crate parses pays for a hash map. Numbers come out as `serde_json::Value` would
//! write them, and serde_json's nesting limit applies.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A rewritten object whose top-level members are known, so one more can be set.
pub struct Object {
    out: Vec<u8>,
    /// Top-level members: (key with its quotes, value), as byte ranges of `out`.
    members: Vec<Member>,
    found: Option<Vec<u8>>,
}

#[derive(Clone, Copy)]
struct Member {
    key: (usize, usize),
    value: (usize, usize),
}

impl Object {
    /// Rewrites `text`, which must be one JSON object, and keeps the value at `path` (one or
    /// two keys; the last occurrence wins, as in the result) for [`Object::found`].
    pub fn parse(text: &str, path: &[&str]) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let mut out = Vec::with_capacity(text.len() + 64);
        let mut members = Vec::new();
        let mut found = None;
        de.deserialize_map(Writer {
            out: &mut out,
            path,
            found: &mut found,
            top: Some(&mut members),
        })?;
        de.end()?;
        Ok(Object {
            out,
            members,
            found,
        })
    }

    /// The value at the path given to [`Object::parse`], as compact JSON text.
    pub fn found(&self) -> Option<&[u8]> {
        self.found.as_deref()
    }

    /// The object with `key` set to the JSON text `value`: replaced where it is, or appended.
    pub fn with(mut self, key: &str, value: &[u8]) -> Vec<u8> {
        let quoted = serde_json::to_vec(key).expect("a string serializes");
        let at = self
            .members
            .iter()
            .find(|m| self.out[m.key.0..m.key.1] == quoted[..]);
        match at {
            Some(m) => {
                self.out.splice(m.value.0..m.value.1, value.iter().copied());
            }
            None => {
                let end = self.out.len() - 1;
                let mut member = Vec::with_capacity(quoted.len() + value.len() + 2);
                if !self.members.is_empty() {
                    member.push(b',');
                }
                member.extend_from_slice(&quoted);
                member.push(b':');
                member.extend_from_slice(value);
                self.out.splice(end..end, member);
            }
        }
        self.out
    }
}

/// Rewrites any JSON value.
pub fn rewrite(text: &str) -> Result<Vec<u8>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut out = Vec::with_capacity(text.len());
    de.deserialize_any(Writer {
        out: &mut out,
        path: &[],
        found: &mut None,
        top: None,
    })?;
    de.end()?;
    Ok(out)
}

/// What kind of JSON value the compact text `value` is, in the words of error messages.
pub fn kind(value: &[u8]) -> &'static str {
    match value.first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// Writes one value into `out`.
struct Writer<'w> {
    out: &'w mut Vec<u8>,
    /// Keys still to follow from this value down to the one to keep; empty: none.
    path: &'w [&'w str],
    found: &'w mut Option<Vec<u8>>,
    /// The top-level object: where its members' ranges go.
    top: Option<&'w mut Vec<Member>>,
}

impl<'de> DeserializeSeed<'de> for Writer<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Writes a key (quoted, escaped) and tells whether it is `watch`.
struct Key<'w> {
    out: &'w mut Vec<u8>,
    watch: Option<&'w str>,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        serde_json::to_writer(&mut *self.out, v).expect("writing to memory");
        Ok(self.watch == Some(v))
    }
}

impl Writer<'_> {
    fn put(&mut self, v: impl serde::Serialize) {
        serde_json::to_writer(&mut *self.out, &v).expect("writing to memory");
    }
}

impl<'de> Visitor<'de> for Writer<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(mut self, v: bool) -> Result<(), E> {
        self.put(v);
        Ok(())
    }
    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        self.put(v);
        Ok(())
    }
    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.put(v);
        Ok(())
    }
    fn visit_f64<E>(mut self, v: f64) -> Result<(), E> {
        self.put(v);
        Ok(())
    }
    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        self.put(v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let at = self.out.len();
            if !first {
                self.out.push(b',');
            }
            let element = Writer {
                out: &mut *self.out,
                path: &[],
                found: &mut *self.found,
                top: None,
            };
            if seq.next_element_seed(element)?.is_none() {
                self.out.truncate(at);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let start = self.out.len();
        self.out.push(b'{');
        let mut members: Vec<Member> = Vec::with_capacity(map.size_hint().unwrap_or(8));
        let mut repeated = false;
        // Large objects: the keys seen so far, so finding a repeat stays linear.
        let mut seen: Option<std::collections::HashSet<Vec<u8>>> = None;
        loop {
            let at = self.out.len();
            if !members.is_empty() {
                self.out.push(b',');
            }
            let key_start = self.out.len();
            let key = Key {
                out: &mut *self.out,
                watch: self.path.first().copied(),
            };
            let Some(watched) = map.next_key_seed(key)? else {
                self.out.truncate(at);
                break;
            };
            let key = (key_start, self.out.len());
            self.out.push(b':');
            let value_start = self.out.len();
            let rest: &[&str] = match watched {
                true => &self.path[1..],
                false => &[],
            };
            if watched {
                // A later occurrence decides, also when it lacks what an earlier one had.
                *self.found = None;
            }
            map.next_value_seed(Writer {
                out: &mut *self.out,
                path: rest,
                found: &mut *self.found,
                top: None,
            })?;
            if watched && rest.is_empty() {
                *self.found = Some(self.out[value_start..].to_vec());
            }
            let this = &self.out[key.0..key.1];
            repeated = repeated
                || match &mut seen {
                    // Small objects, the usual: compare with the keys before.
                    None => members.iter().any(|m| self.out[m.key.0..m.key.1] == *this),
                    Some(seen) => !seen.insert(this.to_vec()),
                };
            if seen.is_none() && members.len() == 32 {
                seen = Some(
                    members
                        .iter()
                        .map(|m| self.out[m.key.0..m.key.1].to_vec())
                        .chain(std::iter::once(self.out[key.0..key.1].to_vec()))
                        .collect(),
                );
            }
            members.push(Member {
                key,
                value: (value_start, self.out.len()),
            });
        }
        if repeated {
            members = keep_each_key_once(self.out, start, &members);
        }
        self.out.push(b'}');
        if let Some(top) = self.top {
            *top = members;
        }
        Ok(())
    }
}

/// Rewrites the members written from `start + 1` on so each key is there once: its first
/// place, its last value. Returns the new ranges.
fn keep_each_key_once(out: &mut Vec<u8>, start: usize, members: &[Member]) -> Vec<Member> {
    let old = out.split_off(start + 1);
    let base = start + 1;
    let bytes = |r: (usize, usize)| &old[r.0 - base..r.1 - base];
    let last: std::collections::HashMap<&[u8], &Member> =
        members.iter().map(|m| (bytes(m.key), m)).collect();
    let mut written = std::collections::HashSet::with_capacity(last.len());
    let mut kept: Vec<Member> = Vec::with_capacity(last.len());
    for m in members {
        let key = bytes(m.key);
        if !written.insert(key) {
            continue;
        }
        let last = last[key];
        if !kept.is_empty() {
            out.push(b',');
        }
        let key_start = out.len();
        out.extend_from_slice(key);
        let key_end = out.len();
        out.push(b':');
        let value_start = out.len();
        out.extend_from_slice(bytes(last.value));
        kept.push(Member {
            key: (key_start, key_end),
            value: (value_start, out.len()),
        });
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn members_keep_their_order_and_whitespace_goes() {
        assert_eq!(
            text(rewrite("{ \"z\" : 1.50, \"a\":\t[1, 2 ,{\"k\" : \"a b\\\" \\\\\"}, []],\n\"\\u00e4\": null, \"t\": true, \"e\": {} }").unwrap()),
            r#"{"z":1.5,"a":[1,2,{"k":"a b\" \\"},[]],"ä":null,"t":true,"e":{}}"#
        );
        assert_eq!(text(rewrite(" [ ] ").unwrap()), "[]");
        assert_eq!(text(rewrite("-7").unwrap()), "-7");
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_last_value_at_every_level() {
        assert_eq!(
            text(rewrite(r#"{"a":1,"b":{"x":1,"y":2,"x":3},"a":[{"k":1,"k":2}]}"#).unwrap()),
            r#"{"a":[{"k":2}],"b":{"x":3,"y":2}}"#
        );
        // Beyond 32 members the repeats are found through a set.
        let text = |keys: &[usize]| {
            let members: Vec<String> = keys.iter().map(|k| format!("\"k{k}\":{k}")).collect();
            format!("{{{}}}", members.join(","))
        };
        let all: Vec<usize> = (0..40).collect();
        assert_eq!(
            String::from_utf8(rewrite(&text(&all)).unwrap()).unwrap(),
            text(&all)
        );
        let twice: Vec<usize> = (0..40).chain(35..36).collect();
        let got = String::from_utf8(rewrite(&text(&twice)).unwrap()).unwrap();
        assert_eq!(got, text(&all));
        let first_late = format!(
            "{{{},\"k3\":\"last\"}}",
            &text(&all)[1..text(&all).len() - 1]
        );
        let got = String::from_utf8(rewrite(&first_late).unwrap()).unwrap();
        assert!(
            got.starts_with(r#"{"k0":0,"k1":1,"k2":2,"k3":"last","k4":4"#),
            "{got}"
        );
        assert_eq!(got.matches("\"k3\"").count(), 1);
    }

    #[test]
    fn the_value_at_a_path_is_found_and_a_member_set() {
        let o =
            Object::parse(r#"{"@timestamp":"old","e":{"t":"new","u":1}}"#, &["e", "t"]).unwrap();
        assert_eq!(o.found(), Some(&b"\"new\""[..]));
        let value = o.found().unwrap().to_vec();
        assert_eq!(
            text(o.with("@timestamp", &value)),
            r#"{"@timestamp":"new","e":{"t":"new","u":1}}"#
        );
        let o = Object::parse(r#"{"b":1,"t":[1, 2]}"#, &["t"]).unwrap();
        assert_eq!(o.found(), Some(&b"[1,2]"[..]));
        assert_eq!(
            text(o.with("@timestamp", b"0")),
            r#"{"b":1,"t":[1,2],"@timestamp":0}"#
        );
        let o = Object::parse("{}", &["t"]).unwrap();
        assert_eq!(o.found(), None);
        assert_eq!(text(o.with("@timestamp", b"0")), r#"{"@timestamp":0}"#);
        // The last parent decides, also when it lacks the key; nested copies are not the path.
        let o = Object::parse(
            r#"{"e":{"t":1},"x":{"e":{"t":2}},"e":{"u":3}}"#,
            &["e", "t"],
        )
        .unwrap();
        assert_eq!(o.found(), None);
        let o = Object::parse(r#"{"e":{"t":1,"t":2},"x":{"t":3}}"#, &["e", "t"]).unwrap();
        assert_eq!(o.found(), Some(&b"2"[..]));
    }

    #[test]
    fn a_repeated_key_at_the_top_then_set() {
        let o = Object::parse(r#"{"a":1,"@timestamp":2,"a":3}"#, &["a"]).unwrap();
        assert_eq!(o.found(), Some(&b"3"[..]));
        assert_eq!(
            text(o.with("@timestamp", b"3")),
            r#"{"a":3,"@timestamp":3}"#
        );
    }

    #[test]
    fn nesting_beyond_serde_jsons_limit_is_refused_with_its_error() {
        let deep = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n));
        assert!(Object::parse(&deep(120), &[]).is_ok());
        let e = Object::parse(&deep(10_000), &[]).err().unwrap().to_string();
        assert!(e.contains("recursion limit exceeded"), "{e}");
    }

    #[test]
    fn anything_but_one_object_is_refused() {
        for t in [
            "[1]",
            "\"{}\"",
            "1",
            "null",
            "{",
            "{\"a\":1} x",
            "{\"a\":tru}",
            "",
        ] {
            assert!(Object::parse(t, &[]).is_err(), "{t}");
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(
            [&b"{}"[..], b"[]", b"\"s\"", b"true", b"null", b"-1"].map(kind),
            ["object", "array", "string", "boolean", "null", "number"]
        );
    }

    proptest::proptest! {
        /// Whatever the value, the rewrite reads back as the same value.
        #[test]
        fn a_rewrite_reads_back_as_the_same_value(v in any_json()) {
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            let back: serde_json::Value = serde_json::from_slice(&rewrite(&pretty).unwrap()).unwrap();
            proptest::prop_assert_eq!(back, v);
        }
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // Exact in binary, so the comparison does not depend on float parsing.
            (-1_000_000i64..1_000_000).prop_map(|n| Value::from(n as f64 / 1024.0)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
