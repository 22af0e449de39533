//! TLS for the tests: a private CA with a server certificate, and an HTTPS front for an HTTP
//! server.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A private CA and a server certificate for 127.0.0.1 signed by it, made with the openssl
/// CLI: (CA certificate, server certificate, server key).
pub fn private_ca(dir: &Path) -> (String, String, String) {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
    ]);
    std::fs::write(
        p("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("server.pem"),
    ]);
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

pub struct TlsFront {
    child: Child,
    pub port: u16,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 that nobody trusts (an end-entity certificate
/// nobody issued: rustls says UnknownIssuer), made with the openssl CLI: (certificate, key).
pub fn self_signed(dir: &Path) -> (String, String) {
    let cert = dir.join("self-signed.pem").to_string_lossy().into_owned();
    let key = dir.join("self-signed.key").to_string_lossy().into_owned();
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-keyout", &key, "-out", &cert])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl req");
    (cert, key)
}

/// An HTTPS front (localtest/tls_proxy.py) with `cert` and `key` that forwards to `upstream`.
pub fn tls_front(cert: &str, key: &str, upstream: &str) -> TlsFront {
    let python = std::env::var("TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/localtest/tls_proxy.py");
    let mut child = Command::new(python)
        .args([script, cert, key, upstream])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the TLS front");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    TlsFront {
        port: line.trim().parse().expect("port"),
        child,
    }
}
