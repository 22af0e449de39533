//! INTEGRITY_CHAIN in the loop: a page's documents get the links after the head the page holds,
//! in page order, and the page's commit keeps where they moved it. A document the destination
//! refused keeps its link as a void, which the next checkpoint names.

use crate::base::chain::{attach, Head, Link, Void};
use crate::base::document::Document;
use crate::base::source::ChainAdvance;

/// A page's documents with their links.
pub struct Linked {
    /// The linked documents (same ids and routes), in page order.
    pub docs: Vec<Document>,
    /// For each, its position in the page's document list.
    pub at: Vec<usize>,
    pub links: Vec<Link>,
    /// Documents that cannot carry a link (position in the list, why): not shipped.
    pub refused: Vec<(usize, String)>,
}

/// Links `docs` after `head`.
pub fn link(chain: &str, head: &Head, docs: &[&Document]) -> Linked {
    let mut out = Linked {
        docs: Vec::with_capacity(docs.len()),
        at: Vec::with_capacity(docs.len()),
        links: Vec::with_capacity(docs.len()),
        refused: Vec::new(),
    };
    let mut prev = head.hash.clone();
    let mut seq = head.seq;
    for (k, d) in docs.iter().enumerate() {
        match attach(&d.body, chain, seq + 1, &prev) {
            Ok((body, link)) => {
                seq += 1;
                prev.clone_from(&link.hash);
                let doc = Document::new(d.id.clone(), body);
                if let Some(route) = d.route.get() {
                    let _ = doc.route.set(route.clone());
                }
                out.docs.push(doc);
                out.at.push(k);
                out.links.push(link);
            }
            Err(why) => out.refused.push((k, why)),
        }
    }
    out
}

/// Where the page moves the head: to its last link; the links of documents no one acknowledged
/// are voids (`record` names each document's record).
pub fn advance(
    links: &[Link],
    acknowledged: impl Fn(usize) -> bool,
    record: impl Fn(usize) -> String,
) -> Option<ChainAdvance> {
    let last = links.last()?;
    Some(ChainAdvance {
        head: Head {
            seq: last.seq,
            hash: last.hash.clone(),
        },
        voids: links
            .iter()
            .enumerate()
            .filter(|(k, _)| !acknowledged(*k))
            .map(|(k, l)| Void {
                seq: l.seq,
                prev: l.prev.clone(),
                hash: l.hash.clone(),
                record: record(k),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_continues_the_head_and_refused_documents_become_voids() {
        let docs = [
            Document::new("a".into(), br#"{"n":1}"#.to_vec()),
            Document::new("b".into(), br#"{"n":2,"integrity":{}}"#.to_vec()),
            Document::new("c".into(), br#"{"n":3}"#.to_vec()),
        ];
        let refs: Vec<&Document> = docs.iter().collect();
        let head = Head {
            seq: 41,
            hash: "f".repeat(64),
        };
        let linked = link("src", &head, &refs);
        assert_eq!(linked.at, [0, 2]);
        assert_eq!(linked.refused.len(), 1);
        assert_eq!(
            linked.links.iter().map(|l| l.seq).collect::<Vec<_>>(),
            [42, 43]
        );
        assert_eq!(linked.links[0].prev, head.hash);
        assert_eq!(linked.links[1].prev, linked.links[0].hash);
        assert_eq!(linked.docs[1].id, "c");
        // The same page after the same head links the same way (a re-ship after a crash).
        assert_eq!(link("src", &head, &refs).links, linked.links);
        let moved = advance(&linked.links, |k| k == 0, |k| format!("row {k}")).unwrap();
        assert_eq!(moved.head.seq, 43);
        assert_eq!(moved.head.hash, linked.links[1].hash);
        assert_eq!(moved.voids.len(), 1);
        assert_eq!(
            (moved.voids[0].seq, moved.voids[0].record.as_str()),
            (43, "row 1")
        );
        assert!(advance(&[], |_| true, |_| String::new()).is_none());
    }
}
