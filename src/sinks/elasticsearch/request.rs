//! Building bulk requests: the index of each document (when the name is a template), NDJSON
//! `create` actions with our document ids, and the split of a page into bodies of bounded size.

use crate::base::document::Document;
use crate::routing::Template;

/// Largest bulk body we send; Elasticsearch's default limit is 100 MB, and smaller bodies keep
/// retries cheap. Halved on a 413.
pub const MAX_BULK_BYTES: usize = 8 * 1024 * 1024;

/// Longest index name Elasticsearch accepts, in bytes.
const MAX_INDEX_NAME: usize = 255;

/// Each document's index rendered from its route, or why it cannot be placed (no date, a name
/// too long): such a document is refused alone, like a mapping error.
pub fn index_per_document(template: &Template, docs: &[&Document]) -> Vec<Result<String, String>> {
    docs.iter()
        .map(
            |d| match template.render(d.route(), crate::routing::index_part) {
                // A long topic or key must not fail the whole page.
                Ok(name) if name.len() > MAX_INDEX_NAME => Err(format!(
                    "index name {name:?} is longer than {MAX_INDEX_NAME} bytes"
                )),
                other => other,
            },
        )
        .collect()
}

/// The action lines of one request for `group` (indices into `docs`). `index` holds each
/// document's index when the name is a template; empty otherwise (the request's path names the
/// index). `create` with our deterministic id: a document already there answers 409. With
/// `replace` (INTEGRITY_CHAIN), `index`: a re-ship after a crash replaces what is there, since
/// its link may differ.
pub fn actions(
    docs: &[&Document],
    index: &[String],
    group: &[usize],
    replace: bool,
) -> Vec<String> {
    let op = match replace {
        true => "index",
        false => "create",
    };
    group
        .iter()
        .map(|&i| match index.get(i) {
            Some(name) => serde_json::json!({op: {"_index": name, "_id": docs[i].id}}),
            None => serde_json::json!({op: {"_id": docs[i].id}}),
        })
        .map(|a| a.to_string())
        .collect()
}

/// The NDJSON body: each action followed by its document, without copying the documents.
pub fn body<'a>(actions: &'a [String], docs: &[&'a Document], group: &[usize]) -> Vec<&'a [u8]> {
    let mut body: Vec<&[u8]> = Vec::with_capacity(group.len() * 2);
    for (action, &i) in actions.iter().zip(group) {
        body.push(action.as_bytes());
        body.push(&docs[i].body);
    }
    body
}

/// Groups `pending` into requests of at most `max_bytes` (a document larger than that goes alone).
pub fn split_by_bytes(pending: &[usize], docs: &[&Document], max_bytes: usize) -> Vec<Vec<usize>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for &i in pending {
        let len = docs[i].body.len() + docs[i].id.len() + 32;
        if !current.is_empty() && size + len > max_bytes {
            groups.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(i);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_split_by_size() {
        let docs: Vec<Document> = (0..5)
            .map(|i| Document::new(i.to_string(), vec![b'x'; 100]))
            .collect();
        let docs: Vec<&Document> = docs.iter().collect();
        let all: Vec<usize> = (0..5).collect();
        assert_eq!(split_by_bytes(&all, &docs, 1 << 20).len(), 1);
        let groups = split_by_bytes(&all, &docs, 300);
        assert_eq!(groups, vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(split_by_bytes(&all, &docs, 1).len(), 5);
    }

    #[test]
    fn bodies_pair_each_action_with_its_document() {
        let docs = [
            Document::new("a".into(), br#"{"n":1}"#.to_vec()),
            Document::new("b".into(), br#"{"n":2}"#.to_vec()),
            Document::new("c".into(), br#"{"n":3}"#.to_vec()),
        ];
        let docs: Vec<&Document> = docs.iter().collect();
        let group = [0, 2];
        let fixed = actions(&docs, &[], &group, false);
        let lines: Vec<&str> = body(&fixed, &docs, &group)
            .into_iter()
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                r#"{"create":{"_id":"a"}}"#,
                r#"{"n":1}"#,
                r#"{"create":{"_id":"c"}}"#,
                r#"{"n":3}"#
            ]
        );
        let named = actions(&docs, &["i0".into(), "i1".into(), "i2".into()], &[1], false);
        assert_eq!(named, [r#"{"create":{"_id":"b","_index":"i1"}}"#]);
        let replacing = actions(&docs, &[], &[1], true);
        assert_eq!(replacing, [r#"{"index":{"_id":"b"}}"#]);
    }

    #[test]
    fn documents_that_cannot_be_named_are_refused_alone() {
        let template =
            Template::parse("T", "audit-{topic}-{routing_key}-{topic}-{yyyy.MM.dd}").unwrap();
        let routed = |topic: &str, dated: bool| {
            let d = Document::new("x".into(), b"{}".to_vec());
            d.route
                .set(crate::base::document::Route {
                    topic: Some(topic.into()),
                    key: Some(topic.into()),
                    time: dated.then(|| "2024-05-01T10:00:00Z".parse().unwrap()),
                })
                .unwrap();
            d
        };
        let docs = [
            routed("Login", true),
            routed("login", false),
            routed(&"t".repeat(90), true),
        ];
        let docs: Vec<&Document> = docs.iter().collect();
        let names = index_per_document(&template, &docs);
        assert_eq!(
            names[0].as_deref(),
            Ok("audit-login-login-login-2024.05.01")
        );
        assert!(names[1].as_ref().unwrap_err().contains("no date"));
        assert!(names[2].as_ref().unwrap_err().contains("longer than 255"));
    }
}
