//! The tamper-evident chain (INTEGRITY_CHAIN): what a link is, how documents and links are
//! hashed, and signed checkpoints. Shared by the pipeline (which links documents), the sources
//! (which keep the head) and `verify --chain` (which walks the links back).
//!
//! Canonical form of a document, hashed into its link: the JSON object as stored, without its
//! top-level `integrity` member, written with no whitespace, object members sorted by the bytes
//! of their names (UTF-8), arrays in order, strings as serde_json escapes them (`"`, `\` and
//! control characters only), integers in decimal and other numbers in the shortest form that
//! reads back as the same 64-bit float. A document read back from an index or a file therefore
//! hashes the same however the destination spaced or ordered it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The member of each linked document that holds its link.
pub const FIELD: &str = "integrity";
/// The member of a checkpoint document that holds the checkpoint.
pub const CHECKPOINT_FIELD: &str = "audit_transfer_checkpoint";
/// The `prev` of the first link.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends the canonical form of `v` (see the module's documentation).
pub fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (k, (name, value)) in members.into_iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, name).expect("a string serializes");
                out.push(b':');
                canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar serializes"),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    super::hash::hex(&Sha256::digest(bytes))
}

/// A document split into the SHA-256 of its canonical form (without `integrity`) and its
/// `integrity` member, if it has one. Err: the bytes are not a JSON object.
pub fn split(body: &[u8]) -> Result<(String, Option<Value>), String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(map) = &mut v else {
        return Err("not a JSON object".into());
    };
    let link = map.remove(FIELD);
    let mut out = Vec::with_capacity(body.len());
    canonical(&v, &mut out);
    Ok((sha256_hex(&out), link))
}

/// One link of a chain, as each linked document carries it under [`FIELD`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The chain: the source's name, so a link cannot be moved into another source's chain.
    pub chain: String,
    /// 1 for the first document of the chain, then one more per document.
    pub seq: u64,
    /// SHA-256 of the document's canonical form.
    pub doc: String,
    /// `hash` of the link before (seq - 1), [`GENESIS`] for the first.
    pub prev: String,
    /// SHA-256 of `audit-transfer/chain/v1`, chain, seq, prev and doc, one per line.
    pub hash: String,
}

impl Link {
    pub fn new(chain: &str, seq: u64, prev: &str, doc: String) -> Link {
        let hash = link_hash(chain, seq, prev, &doc);
        Link {
            chain: chain.to_string(),
            seq,
            doc,
            prev: prev.to_string(),
            hash,
        }
    }

    /// Whether `hash` follows from the other fields.
    pub fn sound(&self) -> bool {
        link_hash(&self.chain, self.seq, &self.prev, &self.doc) == self.hash
    }
}

fn link_hash(chain: &str, seq: u64, prev: &str, doc: &str) -> String {
    sha256_hex(format!("audit-transfer/chain/v1\n{chain}\n{seq}\n{prev}\n{doc}").as_bytes())
}

/// The document with its link as the last top-level member. Err when the document is not a
/// JSON object, or already has a member of that name (the chain would overwrite it).
pub fn attach(body: &[u8], chain: &str, seq: u64, prev: &str) -> Result<(Vec<u8>, Link), String> {
    let (doc, existing) = split(body)?;
    if existing.is_some() {
        return Err(format!(
            "the document has a top-level \"{FIELD}\" member, which INTEGRITY_CHAIN reserves"
        ));
    }
    let link = Link::new(chain, seq, prev, doc);
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .expect("a JSON object has a closing brace");
    let inner_empty = body[..end]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let mut out = Vec::with_capacity(body.len() + 300);
    out.extend_from_slice(&body[..end]);
    if !inner_empty {
        out.push(b',');
    }
    out.extend_from_slice(format!("\"{FIELD}\":").as_bytes());
    serde_json::to_writer(&mut out, &link).expect("a link serializes");
    out.push(b'}');
    Ok((out, link))
}

/// The last link of a chain as its source keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Default for Head {
    /// Before the first link.
    fn default() -> Head {
        Head {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// A link given to a document the destination refused: no document holds it, so checkpoints
/// list it for `verify --chain` to step over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Void {
    pub seq: u64,
    pub prev: String,
    pub hash: String,
    /// The record at the source (its key), for the person reading the report.
    pub record: String,
}

/// What a run wrote about its chain: the head, what it shipped, the voids since the previous
/// checkpoint, and an Ed25519 signature when INTEGRITY_SIGNING_KEY is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chain: String,
    pub seq: u64,
    pub hash: String,
    /// RFC 3339, UTC.
    pub time: String,
    /// Documents the run shipped (delivered, or already present).
    pub shipped: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voids: Vec<Void>,
    /// The signer's public key (base64 of its 32 bytes), to tell which key to check with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Base64 Ed25519 signature over the canonical form of the checkpoint without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Checkpoint {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        let v = serde_json::to_value(&unsigned).expect("a checkpoint serializes");
        let mut out = Vec::new();
        canonical(&v, &mut out);
        out
    }

    pub fn sign(&mut self, key: &SigningKey) {
        self.key = Some(STANDARD.encode(key.verifying_key().as_bytes()));
        self.signature = Some(STANDARD.encode(key.sign(&self.signed_bytes()).to_bytes()));
    }

    /// Checks the signature with `key`.
    pub fn check(&self, key: &VerifyingKey) -> Result<(), &'static str> {
        let sig = self.signature.as_deref().ok_or("it is not signed")?;
        let sig = STANDARD
            .decode(sig)
            .ok()
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
            .ok_or("its signature is malformed")?;
        key.verify_strict(&self.signed_bytes(), &sig)
            .map_err(|_| "its signature does not verify")
    }

    /// The id of its document in a destination: the chain, the seq, and the checkpoint's own
    /// digest, so two runs that end at the same head each keep theirs.
    pub fn doc_id(&self) -> String {
        let chain = Sha256::digest(self.chain.as_bytes());
        let own = Sha256::digest(self.signed_bytes());
        format!(
            "checkpoint-{}-{}-{}",
            super::hash::hex(&chain[..6]),
            self.seq,
            super::hash::hex(&own[..6])
        )
    }

    /// The document stored in the destination.
    pub fn document(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "@timestamp": self.time,
            CHECKPOINT_FIELD: self,
        }))
        .expect("a checkpoint serializes")
    }

    /// The checkpoint a stored document holds, if it is one.
    pub fn from_document(body: &[u8]) -> Option<Result<Checkpoint, String>> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let cp = v.get(CHECKPOINT_FIELD)?;
        Some(serde_json::from_value(cp.clone()).map_err(|e| e.to_string()))
    }
}

/// The text of a key variable or option: the key itself, or the path of a file holding it.
fn key_text(text: &str) -> Result<String, &'static str> {
    let t = text.trim();
    if t.contains("-----BEGIN") {
        // A PEM block kept on one line (a Secret, an env file) has literal `\n`s.
        return Ok(t.replace("\\n", "\n"));
    }
    if t.len() == 44 && STANDARD.decode(t).is_ok_and(|b| b.len() == 32) {
        return Ok(t.to_string());
    }
    std::fs::read_to_string(t).map_err(|_| "expected a base64 Ed25519 key (44 characters), a PEM block, or the path of a readable file holding one")
}

/// An Ed25519 private key, as CDP keys are given: 44 characters of base64 holding the 32-byte
/// seed, or a PKCS#8 PEM block (`openssl genpkey -algorithm ed25519`); either itself or in a
/// file. The error never quotes the key.
pub fn signing_key(text: &str) -> Result<SigningKey, &'static str> {
    let t = key_text(text)?;
    let t = t.trim();
    if t.contains("-----BEGIN") {
        return SigningKey::from_pkcs8_pem(t)
            .map_err(|_| "the PEM block is not an Ed25519 private key (PKCS#8)");
    }
    let seed: [u8; 32] = STANDARD
        .decode(t)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("expected a base64 Ed25519 key (44 characters holding 32 bytes)")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// An Ed25519 public key: base64 of its 32 bytes (as checkpoints name it), a public key PEM
/// block (`openssl pkey -pubout`), either itself or in a file; or a private key PEM block, whose
/// public half is taken.
pub fn verifying_key(text: &str) -> Result<VerifyingKey, &'static str> {
    let t = key_text(text)?;
    let t = t.trim();
    if t.contains("-----BEGIN PUBLIC KEY") {
        return VerifyingKey::from_public_key_pem(t)
            .map_err(|_| "the PEM block is not an Ed25519 public key");
    }
    if t.contains("-----BEGIN") {
        return signing_key(t).map(|k| k.verifying_key());
    }
    let bytes: [u8; 32] = STANDARD
        .decode(t)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("expected a base64 Ed25519 public key (44 characters holding 32 bytes)")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 public key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        let mut out = Vec::new();
        canonical(&serde_json::from_str(text).unwrap(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_form_sorts_members_and_drops_spacing() {
        assert_eq!(
            canon(r#"{ "b": [1, 2.50, {"z": null, "a": "x\u0041\n"}], "a": true, "é": 1e3 }"#),
            r#"{"a":true,"b":[1,2.5,{"a":"xA\n","z":null}],"é":1000.0}"#
        );
        // The same document however it is spaced or ordered hashes the same.
        let a = split(br#"{"x":1,"y":{"b":2,"a":1}}"#).unwrap().0;
        let b = split(b"{ \"y\": {\"a\": 1, \"b\": 2},\n \"x\": 1 }")
            .unwrap()
            .0;
        assert_eq!(a, b);
        assert_ne!(a, split(br#"{"x":2,"y":{"b":2,"a":1}}"#).unwrap().0);
    }

    #[test]
    fn attached_links_chain_and_hash_without_themselves() {
        let (one, l1) = attach(br#"{"m":"a"} "#, "c", 1, GENESIS).unwrap();
        let (two, l2) = attach(b"{}", "c", 2, &l1.hash).unwrap();
        assert!(one.ends_with(b"}"));
        assert_eq!(&two[..2], b"{\"");
        let (doc, link) = split(&one).unwrap();
        let link: Link = serde_json::from_value(link.unwrap()).unwrap();
        assert_eq!((doc, &link), (l1.doc.clone(), &l1));
        assert!(l1.sound() && l2.sound());
        assert_eq!(l2.prev, l1.hash);
        // A changed field of the link no longer follows.
        let mut moved = l2.clone();
        moved.seq = 3;
        assert!(!moved.sound());
        // Another chain, same document and place: another hash.
        assert_ne!(Link::new("d", 1, GENESIS, l1.doc.clone()).hash, l1.hash);
        assert!(attach(br#"{"integrity":1}"#, "c", 1, GENESIS)
            .unwrap_err()
            .contains("reserves"));
        assert!(attach(b"[1]", "c", 1, GENESIS).is_err());
    }

    #[test]
    fn checkpoints_verify_only_with_the_signers_key_and_unchanged() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let mut cp = Checkpoint {
            chain: "c".into(),
            seq: 9,
            hash: "ab".into(),
            time: "2026-12-01T00:00:00Z".into(),
            shipped: 9,
            voids: Vec::new(),
            key: None,
            signature: None,
        };
        assert_eq!(cp.check(&key.verifying_key()), Err("it is not signed"));
        cp.sign(&key);
        assert_eq!(cp.check(&key.verifying_key()), Ok(()));
        assert!(cp.check(&other.verifying_key()).is_err());
        let back = Checkpoint::from_document(&cp.document()).unwrap().unwrap();
        assert_eq!(back.check(&key.verifying_key()), Ok(()));
        let mut altered = back.clone();
        altered.shipped = 10;
        assert!(altered.check(&key.verifying_key()).is_err());
        assert!(Checkpoint::from_document(br#"{"a":1}"#).is_none());
    }

    #[test]
    fn keys_come_as_base64_pem_or_a_file_and_errors_never_quote_them() {
        use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
        let key = SigningKey::from_bytes(&[5; 32]);
        let seed = STANDARD.encode([5u8; 32]);
        assert_eq!(signing_key(&seed).unwrap().to_bytes(), key.to_bytes());
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_eq!(signing_key(&pem).unwrap().to_bytes(), key.to_bytes());
        assert_eq!(
            signing_key(&pem.trim().replace('\n', "\\n"))
                .unwrap()
                .to_bytes(),
            key.to_bytes()
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.pem");
        std::fs::write(&file, pem.as_bytes()).unwrap();
        assert_eq!(
            signing_key(file.to_str().unwrap()).unwrap().to_bytes(),
            key.to_bytes()
        );
        let public = key.verifying_key();
        let public_pem = public.to_public_key_pem(LineEnding::LF).unwrap();
        for text in [
            STANDARD.encode(public.as_bytes()),
            public_pem,
            pem.to_string(),
        ] {
            assert_eq!(verifying_key(&text).unwrap(), public);
        }
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ";
        for bad in [
            secret,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----",
        ] {
            let e = signing_key(bad).unwrap_err();
            assert!(!e.contains("c2Vj"), "{e}");
        }
    }
}
