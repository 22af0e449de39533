//! CDP request signing (`x-altus-date` / `x-altus-auth`), as Cloudera's request-signing
//! specification describes it. The cryptography is the `ed25519-dalek` and `rsa` crates'.
//!
//! Canonical string: `METHOD\ncontent-type\nx-altus-date\npath\nauth_method`; header value:
//! `base64url({"access_key_id": ID, "auth_method": METHOD}) + "." + base64url(signature)`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use chrono::{DateTime, Utc};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use sha2::Sha256;

/// A CDP API private key: Ed25519 (`ed25519v1`) or RSA (`rsav1`).
#[derive(Clone)]
pub enum PrivateKey {
    Ed25519(Box<ed25519_dalek::SigningKey>),
    Rsa(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        write!(f, "PrivateKey({})", self.auth_method())
    }
}

impl PrivateKey {
    /// Reads a key as CDP hands them out: 44 characters of base64 holding a 32-byte Ed25519
    /// seed (that length is how the official clients tell it apart), or an RSA key in PEM
    /// (PKCS#8, or PKCS#1 as older key files have it). The error never quotes the key.
    pub fn parse(text: &str) -> Result<PrivateKey, String> {
        let text = text.trim();
        if text.len() == 44 && !text.contains('-') {
            let seed = STANDARD
                .decode(text)
                .map_err(|_| "a 44-character Ed25519 key must be standard base64".to_string())?;
            let seed: [u8; 32] = seed
                .try_into()
                .map_err(|_| "an Ed25519 key must decode to 32 bytes".to_string())?;
            return Ok(PrivateKey::Ed25519(Box::new(
                ed25519_dalek::SigningKey::from_bytes(&seed),
            )));
        }
        if text.contains("-----BEGIN") {
            let key = rsa::RsaPrivateKey::from_pkcs8_pem(text)
                .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(text))
                .map_err(|_| "the PEM block is not an RSA private key (PKCS#8 or PKCS#1)")?;
            return Ok(PrivateKey::Rsa(Box::new(
                rsa::pkcs1v15::SigningKey::<Sha256>::new(key),
            )));
        }
        Err("expected a base64 Ed25519 key (44 characters) or an RSA private key in PEM".into())
    }

    pub fn auth_method(&self) -> &'static str {
        match self {
            PrivateKey::Ed25519(_) => "ed25519v1",
            PrivateKey::Rsa(_) => "rsav1",
        }
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            PrivateKey::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
            PrivateKey::Rsa(k) => k.sign(message).to_vec(),
        }
    }
}

/// An API access key id and its private key.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key_id: String,
    pub key: PrivateKey,
}

impl Credentials {
    /// The `x-altus-auth` value for one request.
    pub fn auth_header(&self, method: &str, content_type: &str, date: &str, path: &str) -> String {
        let auth_method = self.key.auth_method();
        let canonical = canonical_string(method, content_type, date, path, auth_method);
        let signature = self.key.sign(canonical.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE.encode(auth_params(&self.access_key_id, auth_method)),
            URL_SAFE.encode(signature)
        )
    }
}

/// The signed string. `path` is without the query string.
pub fn canonical_string(
    method: &str,
    content_type: &str,
    date: &str,
    path: &str,
    auth_method: &str,
) -> String {
    format!("{method}\n{content_type}\n{date}\n{path}\n{auth_method}")
}

/// The parameters JSON with the exact spacing the official clients produce (Python's
/// `json.dumps` defaults), which servers compare byte for byte after decoding.
pub fn auth_params(access_key_id: &str, auth_method: &str) -> String {
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    format!(
        "{{\"access_key_id\": {}, \"auth_method\": {}}}",
        quote(access_key_id),
        quote(auth_method)
    )
}

/// `x-altus-date`: RFC 1123 in GMT, e.g. `Thu, 17 Nov 2005 18:49:58 GMT`.
pub fn altus_date(now: DateTime<Utc>) -> String {
    now.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    use rsa::signature::Verifier;

    const SEED: &str = "VHswlNpwJnMpuXhIq7LYDfzs+R9pHvVLqgBGbhcnbSE=";

    #[test]
    fn ed25519_signature_matches_the_spec_test_vector() {
        let key = PrivateKey::parse(SEED).unwrap();
        assert_eq!(key.auth_method(), "ed25519v1");
        let canonical = canonical_string(
            "PUT",
            "",
            "Thu, 17 Nov 2005 18:49:58 GMT",
            "/foo/bar",
            "ed25519v1",
        );
        assert_eq!(
            canonical,
            "PUT\n\nThu, 17 Nov 2005 18:49:58 GMT\n/foo/bar\ned25519v1"
        );
        assert_eq!(
            URL_SAFE.encode(key.sign(canonical.as_bytes())),
            "et_Ueu_w3QuQbqvDdwy9aT8HLzsXBdJfRRRHe4fEK_RZ-qR-xvM35XG8J8q-YMz70GunK82JoSt5ztz0lAuCBg=="
        );
    }

    #[test]
    fn auth_header_matches_the_spec_test_vector() {
        let creds = Credentials {
            access_key_id: "ABCD-EFGH-IJKL-MNOP-QRST".into(),
            key: PrivateKey::parse(SEED).unwrap(),
        };
        let header = creds.auth_header("PUT", "", "Thu, 17 Nov 2005 18:49:58 GMT", "/foo/bar");
        assert_eq!(
            header,
            "eyJhY2Nlc3Nfa2V5X2lkIjogIkFCQ0QtRUZHSC1JSktMLU1OT1AtUVJTVCIsICJhdXRoX21ldGhvZCI6ICJlZDI1NTE5djEifQ==\
             .et_Ueu_w3QuQbqvDdwy9aT8HLzsXBdJfRRRHe4fEK_RZ-qR-xvM35XG8J8q-YMz70GunK82JoSt5ztz0lAuCBg=="
        );
    }

    #[test]
    fn date_is_rfc1123_gmt() {
        let t = DateTime::parse_from_rfc3339("2005-11-17T18:49:58Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(altus_date(t), "Thu, 17 Nov 2005 18:49:58 GMT");
    }

    #[test]
    fn rsa_keys_sign_pkcs1v15_sha256_and_verify() {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = PrivateKey::parse(&pem).unwrap();
        assert_eq!(key.auth_method(), "rsav1");
        let sig = key.sign(b"POST\napplication/json\ndate\n/p\nrsav1");
        let verifier = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(private.to_public_key());
        let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).unwrap();
        verifier
            .verify(b"POST\napplication/json\ndate\n/p\nrsav1", &sig)
            .unwrap();
    }

    #[test]
    fn bad_keys_are_refused_without_quoting_them() {
        for bad in [
            "not a key",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==xx",
            "-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----",
        ] {
            let err = PrivateKey::parse(bad).unwrap_err();
            assert!(!err.contains(bad), "{err}");
        }
        assert!(!format!("{:?}", PrivateKey::parse(SEED).unwrap()).contains(SEED));
    }
}
