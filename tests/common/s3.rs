//! An S3-protocol server for the S3 source tests: moto (PyPI `moto[server]`, installed into
//! `.venv` by `make test`), one per test process like osmem-server, with credentials enforced.
//! Started by `moto_s3.py` with the Python of `TEST_PYTHON` (default `<crate>/.venv/bin/python`);
//! it exits when this process does (its standard input closes).

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub struct Moto {
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
    _child: Child,
}

pub fn moto() -> &'static Moto {
    static SERVER: OnceLock<Moto> = OnceLock::new();
    SERVER.get_or_init(|| {
        let python = super::python();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/moto_s3.py");
        let mut child = Command::new(&python)
            .arg(script)
            .arg("audit-export")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {python} {script} (moto[server], see localtest/requirements.txt; TEST_PYTHON): {e}")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("moto_s3.py said {line:?}; is moto[server] installed?"));
        let s = |k: &str| ready[k].as_str().unwrap().to_string();
        Moto {
            endpoint: s("endpoint"),
            key_id: s("key_id"),
            secret: s("secret"),
            bucket: s("bucket"),
            _child: child,
        }
    })
}

impl Moto {
    fn store(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .build()
            .unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    pub fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        let store = self.store();
        let payload = PutPayload::from(body.into());
        Self::block_on(async { store.put(&Path::from(key), payload).await })
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    pub fn delete(&self, key: &str) {
        let store = self.store();
        Self::block_on(async { store.delete(&Path::from(key)).await })
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }
}
