//! `verify --chain`: lists every document and checkpoint the destination holds, then walks the
//! source's chain in sequence order from its first link to the head the source keeps. A document
//! deleted leaves a gap; one edited no longer matches its link; a link edited no longer hashes
//! to itself; one moved, inserted or put in another's place does not follow the link before it
//! (or doubles a sequence number); one forged past the head is beyond what the source linked.
//! Checkpoints must carry a valid signature (with the key given) and match the chain, and every
//! checkpoint the source kept must be in the destination unchanged.
//!
//! Memory: one entry per linked document (its sequence number, two hashes cut to 16 bytes, and
//! where it is), since a destination lists its documents in no useful order.

use crate::base::chain::{split, Checkpoint, Link, Void, GENESIS};
use crate::base::sink::{Found, ReadBack, Sink};
use crate::base::source::ChainState;
use anyhow::Result;
use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Problems listed one by one; the rest are counted.
const LIST: usize = 100;

/// The first 16 bytes of a hex SHA-256 (a malformed one compares unequal to every real hash).
type Short = [u8; 16];

fn short(hex: &str) -> Short {
    let mut out = [0xffu8; 16];
    for (k, o) in out.iter_mut().enumerate() {
        match hex
            .get(2 * k..2 * k + 2)
            .and_then(|b| u8::from_str_radix(b, 16).ok())
        {
            Some(b) => *o = b,
            None => return [0xee; 16],
        }
    }
    out
}

struct Entry {
    seq: u64,
    prev: Short,
    hash: Short,
    /// The document's content matches the digest in its link.
    doc_ok: bool,
    /// The link's hash follows from its fields.
    sound: bool,
    at: Box<str>,
}

/// What a scan of the destination found of one chain.
struct Collector<'a> {
    chain: &'a str,
    entries: Vec<Entry>,
    checkpoints: Vec<(Checkpoint, String)>,
    malformed: Vec<String>,
    /// Documents without a link (shipped before the chain was on, or by another job).
    unlinked: u64,
}

impl Found for Collector<'_> {
    fn found(&mut self, at: &str, line: &[u8]) {
        if let Some(cp) = Checkpoint::from_document(line) {
            match cp {
                Ok(cp) if cp.chain == self.chain => self.checkpoints.push((cp, at.to_string())),
                Ok(_) => {}
                Err(why) => self
                    .malformed
                    .push(format!("{at}: unreadable checkpoint: {why}")),
            }
            return;
        }
        let Ok((doc, Some(link))) = split(line) else {
            self.unlinked += 1;
            return;
        };
        let link: Link = match serde_json::from_value(link) {
            Ok(l) => l,
            Err(why) => {
                self.malformed.push(format!("{at}: unreadable link: {why}"));
                return;
            }
        };
        if link.chain != self.chain {
            return;
        }
        self.entries.push(Entry {
            seq: link.seq,
            prev: short(&link.prev),
            hash: short(&link.hash),
            doc_ok: doc == link.doc,
            sound: link.sound(),
            at: at.into(),
        });
    }
}

/// One problem: its kind, the link's sequence number where it has one, and what was found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub what: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ChainReport {
    pub chain: String,
    pub sink: String,
    /// The head the source keeps.
    pub head: u64,
    pub documents: u64,
    pub voids: u64,
    pub checkpoints: u64,
    pub unlinked: u64,
    /// How checkpoint signatures were checked.
    pub signatures: String,
    pub problems: u64,
    /// Problems per kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// The first break in sequence order, then the first [`LIST`] of all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<Problem>,
    pub listed: Vec<Problem>,
}

impl ChainReport {
    pub fn clean(&self) -> bool {
        self.problems == 0
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "chain {} in {}: {} linked documents, {} voids, {} checkpoints; the source's head is at {}\n",
            self.chain, self.sink, self.documents, self.voids, self.checkpoints, self.head
        );
        if self.unlinked > 0 {
            out.push_str(&format!(
                "documents without a link: {} (not part of the chain)\n",
                self.unlinked
            ));
        }
        out.push_str(&format!("checkpoint signatures: {}\n", self.signatures));
        if let Some(p) = &self.first {
            out.push_str(&format!("first break: {}\n", line(p)));
        }
        for p in &self.listed {
            out.push_str(&format!("  {}\n", line(p)));
        }
        if self.problems > self.listed.len() as u64 {
            out.push_str(&format!(
                "  {} more\n",
                self.problems - self.listed.len() as u64
            ));
        }
        if !self.counts.is_empty() {
            let counts: Vec<String> = self
                .counts
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            out.push_str(&format!("problems: {}\n", counts.join(", ")));
        }
        out.push_str(match self.clean() {
            true => {
                "verified: the chain is whole, every link in place and every checkpoint valid\n"
            }
            false => "NOT VERIFIED: see above\n",
        });
        out
    }
}

fn line(p: &Problem) -> String {
    match p.seq {
        Some(s) => format!("{}: seq {s}: {}", p.kind, p.what),
        None => format!("{}: {}", p.kind, p.what),
    }
}

/// Scans `sink` for the chain and walks it.
pub async fn verify_chain(
    chain: &str,
    state: &ChainState,
    sink: &mut dyn Sink,
    key: Option<&VerifyingKey>,
) -> Result<ChainReport> {
    if sink.read_back_mode() == ReadBack::No {
        return Err(crate::base::exit::config_error(format!(
            "verify --chain lists Elasticsearch/OpenSearch indexes, files and buckets: {} cannot be read back",
            sink.name()
        )));
    }
    let mut found = Collector {
        chain,
        entries: Vec::new(),
        checkpoints: Vec::new(),
        malformed: Vec::new(),
        unlinked: 0,
    };
    sink.scan(&mut found).await?;
    let mut report = analyse(chain, state, found, key);
    report.sink = sink.name();
    Ok(report)
}

fn analyse(
    chain: &str,
    state: &ChainState,
    found: Collector<'_>,
    key: Option<&VerifyingKey>,
) -> ChainReport {
    let Collector {
        mut entries,
        checkpoints,
        malformed,
        unlinked,
        ..
    } = found;
    let mut problems: Vec<Problem> = Vec::new();
    let mut add = |kind: &'static str, seq: Option<u64>, what: String| {
        problems.push(Problem { kind, seq, what })
    };
    for m in malformed {
        add("malformed", None, m);
    }
    entries.sort_by_key(|e| e.seq);
    // Voids: those the source keeps, and those its checkpoints name.
    let mut voids: BTreeMap<u64, &Void> = state.voids.iter().map(|v| (v.seq, v)).collect();
    for (cp, _) in &checkpoints {
        for v in &cp.voids {
            voids.entry(v.seq).or_insert(v);
        }
    }
    let wanted: HashSet<u64> = checkpoints
        .iter()
        .map(|(c, _)| c.seq)
        .chain(state.checkpoints.iter().map(|c| c.seq))
        .collect();
    let mut hash_at: HashMap<u64, Short> = HashMap::new();
    let head = state.head.seq;
    let mut prev: Option<Short> = Some(short(GENESIS));
    let mut expect = 1u64;
    let mut k = 0;
    let mut void_seqs = voids.keys().copied().peekable();
    loop {
        let next_entry = entries.get(k).map(|e| e.seq);
        while void_seqs.peek().is_some_and(|&v| v < expect) {
            void_seqs.next();
        }
        let next_void = void_seqs.peek().copied();
        let seq = match (next_entry, next_void) {
            (Some(e), Some(v)) => e.min(v),
            (Some(e), None) => e,
            (None, Some(v)) => v,
            (None, None) => break,
        };
        if seq == 0 {
            add(
                "malformed",
                Some(0),
                format!("{}: sequence numbers start at 1", entries[k].at),
            );
            k += 1;
            continue;
        }
        if seq > expect {
            let what = match seq - 1 == expect {
                true => "no document holds this link (deleted?)".to_string(),
                false => format!("no documents hold seq {expect} to {} (deleted?)", seq - 1),
            };
            add("missing", Some(expect), what);
            prev = None;
        }
        let group_end = entries[k..]
            .iter()
            .position(|e| e.seq != seq)
            .map_or(entries.len(), |p| k + p);
        let group = &entries[k..group_end];
        k = group_end;
        let hash = if group.is_empty() {
            let v = voids[&seq];
            if prev.is_some_and(|p| p != short(&v.prev)) {
                add(
                    "out of place",
                    Some(seq),
                    format!(
                        "the void of record {} does not follow seq {}",
                        v.record,
                        seq - 1
                    ),
                );
            }
            short(&v.hash)
        } else {
            let fits = |e: &Entry| e.doc_ok && e.sound && prev.is_none_or(|p| p == e.prev);
            let chosen = group
                .iter()
                .position(fits)
                .or_else(|| group.iter().position(|e| e.doc_ok && e.sound))
                .unwrap_or(0);
            for (i, e) in group.iter().enumerate() {
                if i != chosen {
                    add(
                        "duplicate",
                        Some(seq),
                        format!(
                            "{} holds a second document under this link (inserted?)",
                            e.at
                        ),
                    );
                }
            }
            let e = &group[chosen];
            if !e.sound {
                add(
                    "link altered",
                    Some(seq),
                    format!("{}: its link's hash does not follow from the link", e.at),
                );
            } else if !e.doc_ok {
                add(
                    "modified",
                    Some(seq),
                    format!(
                        "{}: the document does not match the digest in its link",
                        e.at
                    ),
                );
            }
            if e.sound && prev.is_some_and(|p| p != e.prev) {
                add(
                    "out of place",
                    Some(seq),
                    format!(
                        "{}: its link does not follow seq {} (moved or inserted?)",
                        e.at,
                        seq - 1
                    ),
                );
            }
            if seq > head {
                add(
                    "beyond the head",
                    Some(seq),
                    format!("{}: the source's chain ends at {head} (forged?)", e.at),
                );
            }
            e.hash
        };
        if wanted.contains(&seq) {
            hash_at.insert(seq, hash);
        }
        prev = Some(hash);
        expect = seq + 1;
    }
    if expect <= head {
        let what = match head == expect {
            true => "no document holds this link (deleted?)".to_string(),
            false => format!("no documents hold seq {expect} to {head} (deleted?)"),
        };
        add("missing", Some(expect), what);
    }
    let signatures = match key {
        Some(k) => format!(
            "checked with key {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, k.as_bytes())
        ),
        None => "not checked (give --public-key, or set INTEGRITY_SIGNING_KEY)".into(),
    };
    for (cp, at) in &checkpoints {
        if let Some(key) = key {
            if let Err(why) = cp.check(key) {
                add("checkpoint signature", Some(cp.seq), format!("{at}: {why}"));
            }
        }
        if hash_at.get(&cp.seq) != Some(&short(&cp.hash)) {
            add(
                "checkpoint mismatch",
                Some(cp.seq),
                format!("{at}: the checkpoint does not match the chain at its seq"),
            );
        }
    }
    for kept in &state.checkpoints {
        let there: Vec<&Checkpoint> = checkpoints
            .iter()
            .filter(|(c, _)| c.seq == kept.seq)
            .map(|(c, _)| c)
            .collect();
        if there.is_empty() {
            add(
                "checkpoint missing",
                Some(kept.seq),
                "the checkpoint the source kept is not in the destination (deleted?)".into(),
            );
        } else if !there.contains(&kept) {
            add(
                "checkpoint altered",
                Some(kept.seq),
                "the destination's checkpoint differs from the one the source kept".into(),
            );
        }
    }
    problems.sort_by_key(|p| p.seq.unwrap_or(u64::MAX));
    let mut counts = BTreeMap::new();
    for p in &problems {
        *counts.entry(p.kind).or_insert(0) += 1;
    }
    ChainReport {
        chain: chain.to_string(),
        sink: String::new(),
        head,
        documents: entries.len() as u64,
        voids: voids.len() as u64,
        checkpoints: checkpoints.len() as u64,
        unlinked,
        signatures,
        problems: problems.len() as u64,
        counts,
        first: problems.first().cloned(),
        listed: problems.into_iter().take(LIST).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::chain::{attach, Head};
    use ed25519_dalek::SigningKey;

    /// `n` linked documents of chain "c", as a destination would list them.
    fn chain_of(n: u64) -> Vec<(String, Vec<u8>)> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let (body, link) =
                    attach(format!(r#"{{"n":{seq}}}"#).as_bytes(), "c", seq, &prev).unwrap();
                prev = link.hash;
                (format!("f:{seq}"), body)
            })
            .collect()
    }

    fn checkpoint(docs: &[(String, Vec<u8>)], key: &SigningKey) -> Checkpoint {
        let (_, link) = split(&docs.last().unwrap().1).unwrap();
        let link: Link = serde_json::from_value(link.unwrap()).unwrap();
        let mut cp = Checkpoint {
            chain: "c".into(),
            seq: link.seq,
            hash: link.hash,
            time: "2026-12-01T00:00:00Z".into(),
            shipped: link.seq,
            voids: Vec::new(),
            key: None,
            signature: None,
        };
        cp.sign(key);
        cp
    }

    fn walk(
        docs: &[(String, Vec<u8>)],
        cps: &[&Checkpoint],
        head: u64,
        key: &SigningKey,
    ) -> ChainReport {
        let mut found = Collector {
            chain: "c",
            entries: Vec::new(),
            checkpoints: Vec::new(),
            malformed: Vec::new(),
            unlinked: 0,
        };
        for (at, body) in docs {
            found.found(at, body);
        }
        for cp in cps {
            found.found("f:cp", &cp.document());
        }
        let state = ChainState {
            head: Head {
                seq: head,
                hash: String::new(),
            },
            voids: Vec::new(),
            checkpoints: cps.iter().map(|c| (*c).clone()).collect(),
        };
        analyse("c", &state, found, Some(&key.verifying_key()))
    }

    fn kinds(r: &ChainReport) -> Vec<(&'static str, Option<u64>)> {
        r.listed.iter().map(|p| (p.kind, p.seq)).collect()
    }

    #[test]
    fn a_whole_chain_verifies_in_any_listing_order() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut docs = chain_of(10);
        let cp = checkpoint(&docs, &key);
        docs.reverse();
        let r = walk(&docs, &[&cp], 10, &key);
        assert!(r.clean(), "{}", r.text());
        assert_eq!((r.documents, r.checkpoints), (10, 1));
    }

    #[test]
    fn each_kind_of_tampering_is_named_where_it_happened() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let docs = chain_of(10);
        let cp = checkpoint(&docs, &key);
        // Deleted: seq 3.
        let mut t = docs.clone();
        t.remove(2);
        assert_eq!(kinds(&walk(&t, &[&cp], 10, &key)), [("missing", Some(3))]);
        // Modified: seq 5's content, link untouched.
        let mut t = docs.clone();
        t[4].1 = String::from_utf8(t[4].1.clone())
            .unwrap()
            .replace(r#""n":5"#, r#""n":55"#)
            .into_bytes();
        assert_eq!(kinds(&walk(&t, &[&cp], 10, &key)), [("modified", Some(5))]);
        // Two documents swapped with their links' seq numbers (content and links moved).
        let mut t = docs.clone();
        let swap = |b: &[u8], from: &str, to: &str| {
            String::from_utf8(b.to_vec())
                .unwrap()
                .replace(from, to)
                .into_bytes()
        };
        t[1].1 = swap(&docs[1].1, r#""seq":2"#, r#""seq":3"#);
        t[2].1 = swap(&docs[2].1, r#""seq":3"#, r#""seq":2"#);
        let r = walk(&t, &[&cp], 10, &key);
        assert_eq!(
            r.first.as_ref().map(|p| (p.kind, p.seq)),
            Some(("link altered", Some(2)))
        );
        // Forged: a well-formed link appended after the head, and one doubling seq 4.
        let mut t = docs.clone();
        let last: Link = serde_json::from_value(split(&docs[9].1).unwrap().1.unwrap()).unwrap();
        t.push((
            "f:forged".into(),
            attach(br#"{"n":99}"#, "c", 11, &last.hash).unwrap().0,
        ));
        let third: Link = serde_json::from_value(split(&docs[2].1).unwrap().1.unwrap()).unwrap();
        t.push((
            "f:twin".into(),
            attach(br#"{"n":98}"#, "c", 4, &third.hash).unwrap().0,
        ));
        assert_eq!(
            kinds(&walk(&t, &[&cp], 10, &key)),
            [("duplicate", Some(4)), ("beyond the head", Some(11))]
        );
        // A checkpoint altered in the destination, and one signed by another key.
        let mut altered = cp.clone();
        altered.shipped += 1;
        let r = walk(&docs, &[&altered], 10, &key);
        assert!(
            kinds(&r).contains(&("checkpoint signature", Some(10))),
            "{}",
            r.text()
        );
        let mut state_cp = cp.clone();
        state_cp.shipped += 2;
        let other = SigningKey::from_bytes(&[2; 32]);
        let r = walk(&docs, &[&cp], 10, &other);
        assert_eq!(kinds(&r), [("checkpoint signature", Some(10))]);
        // The last documents and their checkpoint deleted: the source's head still knows.
        let r = walk(&docs[..7], &[], 10, &key);
        assert_eq!(kinds(&r), [("missing", Some(8))]);
        assert!(r.listed[0].what.contains("8 to 10"));
    }

    #[test]
    fn voids_bridge_refused_documents() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let docs = chain_of(5);
        let third: Link = serde_json::from_value(split(&docs[2].1).unwrap().1.unwrap()).unwrap();
        let mut cp = checkpoint(&docs, &key);
        cp.voids = vec![Void {
            seq: 3,
            prev: third.prev.clone(),
            hash: third.hash.clone(),
            record: "row 3".into(),
        }];
        cp.sign(&key);
        let mut t = docs.clone();
        t.remove(2);
        assert!(walk(&t, &[&cp], 5, &key).clean());
    }
}
