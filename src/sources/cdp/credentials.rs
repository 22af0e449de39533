//! CDP credentials, as the CDP CLI finds them, so that what works for `cdp` works here:
//!
//! 1. `CDP_ACCESS_KEY_ID` + `CDP_PRIVATE_KEY` (the key, or the path of a file holding it), or
//!    `CDP_ACCESS_TOKEN`; both ways at once is refused (the CLI would silently take the key).
//! 2. Otherwise the shared credentials file, `CDP_SHARED_CREDENTIALS_FILE` or
//!    `~/.cdp/credentials` (INI: `key = value` or `key: value`), in the profile named by
//!    `CDP_DEFAULT_PROFILE`, else `CDP_PROFILE`, else `default` (the CLI's order). A profile holds
//!    `cdp_access_key_id` + `cdp_private_key` (a PEM key kept on one line with literal `\n`s) or
//!    `cdp_access_token`; the key pair wins when both are there, as in the CLI.
//!
//! Messages name the variable or file a bad value came from and never quote a key or token.

use super::signing::{Credentials, PrivateKey};
use crate::base::env::Env;
use crate::base::exit::ConfigError;
use crate::base::secret::Secret;
use std::path::PathBuf;

/// How requests to the CDP API are authenticated. `Debug` shows neither key nor token.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Signed requests (`x-altus-auth`) with an API access key.
    Key(Credentials),
    /// `Authorization: <token>`.
    Token(Secret),
}

type Result<T> = std::result::Result<T, ConfigError>;

/// The credentials and where they came from (for messages: a variable or a profile, never the
/// values).
pub fn resolve(env: &Env) -> Result<(Auth, String)> {
    let id = env.get("CDP_ACCESS_KEY_ID");
    let key = env.secret("CDP_PRIVATE_KEY");
    let token = env.secret("CDP_ACCESS_TOKEN");
    match (id, key, token) {
        (None, None, Some(t)) => Ok((Auth::Token(t), "CDP_ACCESS_TOKEN".into())),
        (_, _, Some(_)) => Err(ConfigError(
            "both CDP_ACCESS_TOKEN and CDP_ACCESS_KEY_ID/CDP_PRIVATE_KEY are set: expected one way to authenticate".into(),
        )),
        (Some(id), Some(key), None) => {
            let text = if looks_like_key(key.expose()) {
                key
            } else {
                // The variable holds a path: the file's content is the secret.
                std::fs::read_to_string(key.expose())
                    .map(Secret::new)
                    .map_err(|_| {
                        ConfigError(
                            "invalid CDP_PRIVATE_KEY: expected a base64 Ed25519 key, an RSA key in PEM, or the path of a readable file holding one".into(),
                        )
                    })?
            };
            let key = PrivateKey::parse(&unescape_newlines(text.expose()))
                .map_err(|why| ConfigError(format!("invalid CDP_PRIVATE_KEY: {why}")))?;
            Ok((
                Auth::Key(Credentials {
                    access_key_id: id.to_string(),
                    key,
                }),
                "CDP_ACCESS_KEY_ID/CDP_PRIVATE_KEY".into(),
            ))
        }
        (Some(_), None, None) => Err(ConfigError(
            "CDP_PRIVATE_KEY is not set: expected it with CDP_ACCESS_KEY_ID (the key, or the path of a file holding it)".into(),
        )),
        (None, Some(_), None) => Err(ConfigError(
            "CDP_ACCESS_KEY_ID is not set: expected it with CDP_PRIVATE_KEY".into(),
        )),
        (None, None, None) => from_file(env),
    }
}

fn looks_like_key(v: &str) -> bool {
    v.contains("-----BEGIN") || (v.len() == 44 && v.ends_with('='))
}

/// A PEM key kept on one line (in the credentials file, or a Secret) has literal `\n`s.
fn unescape_newlines(v: &str) -> String {
    if v.contains("-----BEGIN") {
        v.replace("\\n", "\n")
    } else {
        v.to_string()
    }
}

/// The profile to read and the variable that named it (`None`: the default profile).
fn profile(env: &Env) -> (&str, Option<&'static str>) {
    if let Some(p) = env.get("CDP_DEFAULT_PROFILE") {
        (p, Some("CDP_DEFAULT_PROFILE"))
    } else if let Some(p) = env.get("CDP_PROFILE") {
        (p, Some("CDP_PROFILE"))
    } else {
        ("default", None)
    }
}

fn from_file(env: &Env) -> Result<(Auth, String)> {
    let (name, named_by) = profile(env);
    let none = || {
        ConfigError(format!(
            "no CDP credentials: set CDP_ACCESS_KEY_ID and CDP_PRIVATE_KEY, or CDP_ACCESS_TOKEN, or add profile {name:?} ({}) to ~/.cdp/credentials (CDP_SHARED_CREDENTIALS_FILE)",
            named_by.unwrap_or("CDP_PROFILE")
        ))
    };
    let home = || env.get("HOME").map(PathBuf::from);
    let (path, text) = match env.get("CDP_SHARED_CREDENTIALS_FILE") {
        Some(p) => {
            // The CLI expands `~` in it.
            let path = match p.strip_prefix("~/") {
                Some(rest) => home().map_or_else(|| PathBuf::from(p), |h| h.join(rest)),
                None => PathBuf::from(p),
            };
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError(format!(
                    "invalid CDP_SHARED_CREDENTIALS_FILE {:?}: expected a readable CDP credentials file ({e})",
                    path.display()
                ))
            })?;
            (path, text)
        }
        None => {
            let path = home().ok_or_else(none)?.join(".cdp").join("credentials");
            let text = std::fs::read_to_string(&path).map_err(|_| none())?;
            (path, text)
        }
    };
    // As the CLI's parser: values as written (no quotes or escapes taken out), values may
    // continue on indented lines.
    let options = ini::ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        enabled_indented_mutiline_value: true,
        ..Default::default()
    };
    let ini = ini::Ini::load_from_str_opt(&text, options).map_err(|e| {
        // The parser's message gives line, column and what is wrong, never the text.
        ConfigError(format!(
            "invalid CDP credentials file {}: line {}, column {}: {}",
            path.display(),
            e.line,
            e.col,
            e.msg
        ))
    })?;
    let section = ini.section(Some(name)).ok_or_else(|| match named_by {
        Some(var) => ConfigError(format!(
            "invalid {var} {name:?}: no such profile in {}",
            path.display()
        )),
        None => ConfigError(format!(
            "no CDP credentials: no profile \"default\" in {} (name another with CDP_PROFILE, or set CDP_ACCESS_KEY_ID and CDP_PRIVATE_KEY, or CDP_ACCESS_TOKEN)",
            path.display()
        )),
    })?;
    let origin = format!("profile {name:?} of {}", path.display());
    // Option names are case-insensitive, as in the CLI's parser; empty is unset.
    let get = |k: &str| {
        section
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
            .map(Secret::new)
    };
    let (id, key) = (get("cdp_access_key_id"), get("cdp_private_key"));
    if id.is_some() || key.is_some() {
        let missing = |k: &str| ConfigError(format!("{origin} has no {k}"));
        let id = id.ok_or_else(|| missing("cdp_access_key_id"))?;
        let key = key.ok_or_else(|| missing("cdp_private_key"))?;
        let key = PrivateKey::parse(&unescape_newlines(key.expose()))
            .map_err(|why| ConfigError(format!("invalid cdp_private_key in {origin}: {why}")))?;
        return Ok((
            Auth::Key(Credentials {
                access_key_id: id.expose().to_string(),
                key,
            }),
            origin,
        ));
    }
    match get("cdp_access_token") {
        Some(token) => Ok((Auth::Token(token), origin)),
        None => Err(ConfigError(format!(
            "{origin} has neither cdp_access_key_id/cdp_private_key nor cdp_access_token"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "VHswlNpwJnMpuXhIq7LYDfzs+R9pHvVLqgBGbhcnbSE=";

    fn resolved(pairs: &[(&str, &str)]) -> Result<(Auth, String)> {
        resolve(&Env::from_pairs(pairs.iter().copied()))
    }

    fn key_id(auth: &Auth) -> &str {
        match auth {
            Auth::Key(c) => &c.access_key_id,
            Auth::Token(_) => panic!("a token, not a key"),
        }
    }

    /// A credentials file in a directory of its own (not under any HOME).
    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdp-credentials");
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_string();
        (dir, path)
    }

    /// A home directory holding `.cdp/credentials`.
    fn home(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".cdp")).unwrap();
        std::fs::write(dir.path().join(".cdp/credentials"), text).unwrap();
        let path = dir.path().to_str().unwrap().to_string();
        (dir, path)
    }

    /// Issue 14 item 9 (a): the CLI reads the file CDP_SHARED_CREDENTIALS_FILE names.
    #[test]
    fn the_file_named_by_cdp_shared_credentials_file() {
        let (_dir, path) = file(&format!(
            "[default]\ncdp_access_key_id = shared\ncdp_private_key = {SEED}\n"
        ));
        let (auth, origin) = resolved(&[
            ("HOME", "/nonexistent"),
            ("CDP_SHARED_CREDENTIALS_FILE", &path),
        ])
        .unwrap();
        assert_eq!(key_id(&auth), "shared");
        assert_eq!(origin, format!("profile \"default\" of {path}"));
        // A file named but not there is that variable's mistake.
        let err = resolved(&[("CDP_SHARED_CREDENTIALS_FILE", "/nonexistent/creds")])
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("invalid CDP_SHARED_CREDENTIALS_FILE \"/nonexistent/creds\""),
            "{err}"
        );
        // `~` is the home directory, as the CLI expands it.
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("creds"),
            format!("[default]\ncdp_access_key_id = tilde\ncdp_private_key = {SEED}\n"),
        )
        .unwrap();
        let (auth, _) = resolved(&[
            ("HOME", home.path().to_str().unwrap()),
            ("CDP_SHARED_CREDENTIALS_FILE", "~/creds"),
        ])
        .unwrap();
        assert_eq!(key_id(&auth), "tilde");
    }

    /// Issue 14 item 9 (b): CDP_DEFAULT_PROFILE, then CDP_PROFILE, then `default`.
    #[test]
    fn profile_from_cdp_default_profile_then_cdp_profile() {
        let (_dir, h) = home(&format!(
            "[default]\ncdp_access_key_id = d\ncdp_private_key = {SEED}\n\
             [other]\ncdp_access_key_id = o\ncdp_private_key = {SEED}\n\
             [ops]\ncdp_access_key_id = p\ncdp_private_key = {SEED}\n"
        ));
        let f = ("HOME", h.as_str());
        let (auth, origin) = resolved(&[f, ("CDP_DEFAULT_PROFILE", "other")]).unwrap();
        assert_eq!(key_id(&auth), "o");
        assert!(origin.contains("\"other\""), "{origin}");
        let both = [f, ("CDP_DEFAULT_PROFILE", "other"), ("CDP_PROFILE", "ops")];
        assert_eq!(key_id(&resolved(&both).unwrap().0), "o");
        assert_eq!(
            key_id(&resolved(&[f, ("CDP_PROFILE", "ops")]).unwrap().0),
            "p"
        );
        assert_eq!(key_id(&resolved(&[f]).unwrap().0), "d");
        let err = resolved(&[f, ("CDP_DEFAULT_PROFILE", "nope"), ("CDP_PROFILE", "ops")])
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("invalid CDP_DEFAULT_PROFILE \"nope\""),
            "{err}"
        );
    }

    /// Issue 14 item 9 (c): a profile may hold an access token instead of a key pair.
    #[test]
    fn a_profile_with_an_access_token() {
        let (_dir, h) = home("[default]\ncdp_access_token = tok-in-a-profile\n");
        let (auth, origin) = resolved(&[("HOME", &h)]).unwrap();
        match &auth {
            Auth::Token(t) => assert_eq!(t.expose(), "tok-in-a-profile"),
            Auth::Key(_) => panic!("expected the token"),
        }
        assert!(origin.starts_with("profile \"default\""), "{origin}");
        assert!(!format!("{auth:?}").contains("tok-in-a-profile"));
        // With both, the key pair wins, as in the CLI.
        let (_dir, path) = file(&format!(
            "[default]\ncdp_access_token = t\ncdp_access_key_id = k\ncdp_private_key = {SEED}\n"
        ));
        let (auth, _) = resolved(&[("CDP_SHARED_CREDENTIALS_FILE", &path)]).unwrap();
        assert_eq!(key_id(&auth), "k");
        // Half a key pair is not silently replaced by the token.
        let (_dir, path) = file("[default]\ncdp_access_token = t\ncdp_access_key_id = k\n");
        let err = resolved(&[("CDP_SHARED_CREDENTIALS_FILE", &path)])
            .unwrap_err()
            .0;
        assert!(err.ends_with("has no cdp_private_key"), "{err}");
        let (_dir, path) = file("[default]\nregion = eu-1\n");
        let err = resolved(&[("CDP_SHARED_CREDENTIALS_FILE", &path)])
            .unwrap_err()
            .0;
        assert!(err.contains("cdp_access_token"), "{err}");
    }

    /// Issue 14 item 9 (d): `key: value` as well as `key = value`, as INI has it.
    #[test]
    fn colon_and_equals_lines() {
        let (_dir, h) = home(&format!(
            "; written by hand\n[default]\ncdp_access_key_id: colon\ncdp_private_key:{SEED}\n"
        ));
        let (auth, _) = resolved(&[("HOME", &h)]).unwrap();
        assert_eq!(key_id(&auth), "colon");
    }

    #[test]
    fn a_one_line_pem_key_and_bad_files_are_never_quoted() {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
        let one_line = pem.trim().replace('\n', "\\n");
        let (_dir, path) = file(&format!(
            "[default]\nCDP_ACCESS_KEY_ID = upper\ncdp_private_key = {one_line}\n"
        ));
        let (auth, _) = resolved(&[("CDP_SHARED_CREDENTIALS_FILE", &path)]).unwrap();
        assert!(
            matches!(&auth, Auth::Key(c) if c.access_key_id == "upper" && c.key.auth_method() == "rsav1")
        );

        let (_dir, path) =
            file("[default]\ncdp_access_key_id = k\ncdp_private_key = s3cr3t-not-a-key\n");
        let err = resolved(&[("CDP_SHARED_CREDENTIALS_FILE", &path)])
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("invalid cdp_private_key in profile \"default\"")
                && !err.contains("s3cr3t"),
            "{err}"
        );
        let (_dir, path) = file("[default\ncdp_access_token = s3cr3t-token\n");
        let err = resolved(&[("CDP_SHARED_CREDENTIALS_FILE", &path)])
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("invalid CDP credentials file") && !err.contains("s3cr3t"),
            "{err}"
        );
    }
}
