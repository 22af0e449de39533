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

    /// On a thread of its own: callers may be inside a test's runtime.
    fn block_on<F>(f: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(f)
            })
            .join()
            .unwrap()
        })
    }

    pub fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        let store = self.store();
        let payload = PutPayload::from(body.into());
        Self::block_on(async { store.put(&Path::from(key), payload).await })
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    /// The keys under `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        use futures_util::TryStreamExt;
        let store = self.store();
        let prefix = Path::from(prefix);
        let mut keys: Vec<String> = Self::block_on(async {
            store
                .list(Some(&prefix))
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
        })
        .unwrap_or_else(|e| panic!("list {prefix}: {e}"));
        keys.sort();
        keys
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let store = self.store();
        Self::block_on(async { store.get(&Path::from(key)).await?.bytes().await })
            .unwrap_or_else(|e| panic!("get {key}: {e}"))
            .to_vec()
    }

    pub fn delete(&self, key: &str) {
        let store = self.store();
        Self::block_on(async { store.delete(&Path::from(key)).await })
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }
}

impl super::Env {
    /// The file sink writing gzip objects under `prefix` of the moto bucket.
    pub fn into_moto(self, prefix: &str) -> super::Env {
        let m = moto();
        self.set("SINK", "file")
            .set("OUTPUT_PATH", &format!("s3://{}/{prefix}/", m.bucket))
            .set("OUTPUT_GZIP", "true")
            .set("AWS_ENDPOINT_URL", &m.endpoint)
            .set("AWS_ALLOW_HTTP", "true")
            .set("AWS_REGION", "us-east-1")
            .set("AWS_ACCESS_KEY_ID", &m.key_id)
            .set("AWS_SECRET_ACCESS_KEY", &m.secret)
    }
}
