//! Trust and client identity for the HTTP clients that take a CA file or a client certificate
//! from a variable: one reading of PEM files, one wording of what went wrong.

use crate::base::exit::config_error;
use anyhow::Result;
use std::path::Path;

/// `builder` trusting the PEM certificates in `path` (named by `var`) besides the system roots.
pub fn trust(
    mut builder: reqwest::ClientBuilder,
    path: &Path,
    var: &str,
) -> Result<reqwest::ClientBuilder> {
    let pem = std::fs::read(path)
        .map_err(|e| config_error(format!("cannot read {var} {}: {e}", path.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            config_error(format!(
                "invalid {var} {}: expected PEM certificates",
                path.display()
            ))
        })?;
    for cert in certs {
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

/// `builder` presenting the client certificate chain in `cert` and its private key in `key`
/// (mutual TLS). The key's content never reaches a message, only its path.
pub fn identity(
    builder: reqwest::ClientBuilder,
    (cert, cert_var): (&Path, &str),
    (key, key_var): (&Path, &str),
) -> Result<reqwest::ClientBuilder> {
    let read = |path: &Path, var: &str| {
        std::fs::read(path)
            .map_err(|e| config_error(format!("cannot read {var} {}: {e}", path.display())))
    };
    let mut pem = read(cert, cert_var)?;
    pem.push(b'\n');
    pem.extend_from_slice(&read(key, key_var)?);
    let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
        config_error(format!(
            "invalid {cert_var} {} or {key_var} {}: expected a PEM certificate chain and its PEM private key",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(builder.identity(identity))
}

/// The useful end of a certificate error's chain ("invalid peer certificate: UnknownIssuer").
pub fn why_untrusted(error_text: &str) -> &str {
    error_text
        .find("invalid peer certificate")
        .map_or(error_text, |i| &error_text[i..])
}
