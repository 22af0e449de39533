//! Objects in a bucket (`s3://`, `gs://`, `az://` OUTPUT_PATH) through the `object_store` crate,
//! which also reads the credentials, region and endpoint (the `AWS_*`, `GOOGLE_*` and `AZURE_*`
//! variables, as its `from_env` builders do) and retries transient failures.
//!
//! Write-once: each object is created with `PutMode::Create` (`If-None-Match: *` on S3 and
//! Azure, generation 0 on GCS) and never overwritten. Its name comes from the page's ids, so a
//! page re-shipped after a crash between upload and mark targets the same object: if that holds
//! the same lines (SHA-256 of the uncompressed body) the page counts as already present; other
//! lines under that name are an error naming the object, and nothing is marked.
//!
//! Pages larger than [`MULTIPART_FROM`] go up in parts; S3 shows nothing until the upload is
//! completed, and an upload that fails is aborted. A multipart upload cannot be conditional in
//! `object_store`, so for those the name is checked just before (check, then write).

use super::write_lines;
use crate::base::document::Document;
use crate::base::exit::{chain_text, excerpt, ConfigError};
use crate::base::hash::hex;
use anyhow::{anyhow, Result};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, PutMode, PutMultipartOptions, PutOptions,
    PutPayload,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Pages whose file is at least this large are uploaded in parts.
pub const MULTIPART_FROM: usize = 64 << 20;
/// Part size of a multipart upload (S3's minimum is 5 MiB).
const PART_SIZE: usize = 16 << 20;
/// An "already exists" whose object is then not there: two conditional writes raced (S3 409).
const RACE_RETRIES: usize = 3;
/// The metadata that lets an operator (and a re-run) check an object without unpacking it.
const SHA256_KEY: &str = "audit-sha256";
const COUNT_KEY: &str = "audit-count";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    S3,
    Gcs,
    Azure,
}

impl Scheme {
    fn prefix(self) -> &'static str {
        match self {
            Scheme::S3 => "s3",
            Scheme::Gcs => "gs",
            Scheme::Azure => "az",
        }
    }

    /// The variables an operator should look at when the store refuses the credentials.
    fn credential_vars(self) -> &'static str {
        match self {
            Scheme::S3 => "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_SESSION_TOKEN, web identity, instance role)",
            Scheme::Gcs => "GOOGLE_SERVICE_ACCOUNT/GOOGLE_APPLICATION_CREDENTIALS (or the metadata server)",
            Scheme::Azure => "AZURE_STORAGE_ACCOUNT_NAME/AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_CLIENT_ID/_SECRET/AZURE_STORAGE_TENANT_ID, managed identity)",
        }
    }
}

/// A bucket (container) and a prefix in it, from OUTPUT_PATH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub scheme: Scheme,
    pub bucket: String,
    pub prefix: Path,
}

impl Location {
    /// `s3://bucket/prefix/`, `gs://...`, `az://container/...`; `None` for any other scheme.
    pub fn parse(value: &str) -> Option<std::result::Result<Location, ConfigError>> {
        let (scheme, rest) = value.split_once("://")?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "s3" => Scheme::S3,
            "gs" => Scheme::Gcs,
            "az" => Scheme::Azure,
            _ => return None,
        };
        let invalid = |why: &str| {
            ConfigError(format!(
                "invalid OUTPUT_PATH {:?}: {why}",
                crate::base::secret::blank_user_info(value)
            ))
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        Some(if bucket.contains('@') {
            Err(invalid(
                "credentials do not belong in the URL: use the variables for them",
            ))
        } else if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            Err(invalid(&format!(
                "expected {}://bucket/prefix/ with a bucket name of letters, digits, '-', '.' and '_'",
                scheme.prefix()
            )))
        } else if prefix.contains(['?', '#']) {
            Err(invalid("expected no query or fragment"))
        } else {
            Path::parse(prefix.trim_end_matches('/'))
                .ok()
                .filter(|p| !p.parts().any(|part| part.as_ref() == ".."))
                .map(|prefix| Location {
                    scheme,
                    bucket: bucket.to_string(),
                    prefix,
                })
                .ok_or_else(|| {
                    invalid("expected a prefix such as archive/audit/ (no empty, . or .. parts)")
                })
        })
    }

    /// The store for it, configured from the environment as `object_store`'s `from_env`
    /// builders are. No request is made here.
    pub fn store(&self) -> std::result::Result<Arc<dyn ObjectStore>, ConfigError> {
        let built: object_store::Result<Arc<dyn ObjectStore>> = match self.scheme {
            // A checksum with every PUT: S3 verifies the body, and buckets with Object Lock
            // retention refuse PUTs without one.
            Scheme::S3 => object_store::aws::AmazonS3Builder::from_env()
                .with_http_connector(crate::http::object_store::CertificateFailsAtOnce)
                .with_bucket_name(&self.bucket)
                .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
                .build()
                .map(|s| Arc::new(s) as _),
            Scheme::Gcs => object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_http_connector(crate::http::object_store::CertificateFailsAtOnce)
                .with_bucket_name(&self.bucket)
                .build()
                .map(|s| Arc::new(s) as _),
            Scheme::Azure => object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_http_connector(crate::http::object_store::CertificateFailsAtOnce)
                .with_container_name(&self.bucket)
                .build()
                .map(|s| Arc::new(s) as _),
        };
        built.map_err(|e| {
            ConfigError(format!(
                "cannot use OUTPUT_PATH {}: {} (check {})",
                self,
                excerpt(&chain_text(&e)),
                self.scheme.credential_vars()
            ))
        })
    }

    fn url_of(&self, path: &Path) -> String {
        format!("{}://{}/{path}", self.scheme.prefix(), self.bucket)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}/{}",
            self.scheme.prefix(),
            self.bucket,
            self.prefix
        )
    }
}

/// Where a page's objects go.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub location: Location,
    pub store: Arc<dyn ObjectStore>,
    /// [`MULTIPART_FROM`]; smaller in tests.
    pub multipart_from: usize,
}

/// What writing one object came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Created,
    /// It was there already with the same lines (an earlier run uploaded it and did not mark).
    AlreadyThere,
}

impl Bucket {
    pub fn new(location: Location, store: Arc<dyn ObjectStore>) -> Self {
        Bucket {
            location,
            store,
            multipart_from: MULTIPART_FROM,
        }
    }

    pub fn path(&self, folders: &[String], name: &str) -> Path {
        folders
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(name))
            .fold(self.location.prefix.clone(), |p, part| p.child(part))
    }

    /// Writes `docs` as the object `path`, once.
    pub async fn write(
        &self,
        path: &Path,
        gzip: Option<flate2::Compression>,
        docs: &[&Document],
    ) -> Result<Written> {
        let (body, sha) = encode(gzip, docs)?;
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::ContentType,
            if gzip.is_some() {
                "application/gzip"
            } else {
                "application/x-ndjson"
            }
            .into(),
        );
        attributes.insert(Attribute::Metadata(SHA256_KEY.into()), sha.clone().into());
        attributes.insert(
            Attribute::Metadata(COUNT_KEY.into()),
            docs.len().to_string().into(),
        );
        let body = bytes::Bytes::from(body);
        for _ in 0..=RACE_RETRIES {
            let created = if body.len() >= self.multipart_from {
                self.write_in_parts(path, &body, attributes.clone()).await
            } else {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    attributes: attributes.clone(),
                    ..PutOptions::default()
                };
                self.store
                    .put_opts(path, PutPayload::from_bytes(body.clone()), opts)
                    .await
                    .map(|_| ())
            };
            match created {
                Ok(()) => return Ok(Written::Created),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => match self.existing_sha(path).await? {
                    Some(theirs) if theirs == sha => return Ok(Written::AlreadyThere),
                    Some(theirs) => anyhow::bail!(
                        "object {} already exists with other content (SHA-256 of its lines {theirs}, this page's {sha}): not overwritten, page not marked",
                        self.location.url_of(path)
                    ),
                    // A concurrent conditional write conflicted (S3 409); try again.
                    None => continue,
                },
                Err(e) => return Err(self.explain("write", path, e)),
            }
        }
        anyhow::bail!(
            "cannot write {}: the store kept answering \"already exists\" for an object that is not there",
            self.location.url_of(path)
        )
    }

    /// A multipart upload: invisible until completed, aborted on failure. Not conditional
    /// (object_store has no create-only multipart), so the name is checked first.
    async fn write_in_parts(
        &self,
        path: &Path,
        body: &bytes::Bytes,
        attributes: Attributes,
    ) -> object_store::Result<()> {
        match self.store.head(path).await {
            Ok(meta) => {
                return Err(object_store::Error::AlreadyExists {
                    path: meta.location.to_string(),
                    source: "object exists".into(),
                })
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let opts = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let mut upload = self.store.put_multipart_opts(path, opts).await?;
        let mut result = Ok(());
        for start in (0..body.len()).step_by(PART_SIZE) {
            let part = body.slice(start..(start + PART_SIZE).min(body.len()));
            result = upload.put_part(PutPayload::from_bytes(part)).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = upload.complete().await.map(|_| ());
        }
        if let Err(e) = result {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(object = %self.location.url_of(path), error = %chain_text(&abort), "could not abort the multipart upload; the store's lifecycle rule for incomplete uploads removes its parts");
            }
            return Err(e);
        }
        Ok(())
    }

    /// The SHA-256 of the lines in the object at `path`, `None` when there is no such object.
    /// Read from the lines themselves, not from metadata anyone could have set.
    async fn existing_sha(&self, path: &Path) -> Result<Option<String>> {
        let got = match self.store.get_opts(path, GetOptions::default()).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.explain("read back", path, e)),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.explain("read back", path, e))?;
        let mut h = Sha256::new();
        if path.as_ref().ends_with(".gz") {
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain)
                .map_err(|e| {
                    anyhow!(
                        "object {} already exists and is not gzip ({e}): not overwritten, page not marked",
                        self.location.url_of(path)
                    )
                })?;
            h.update(&plain);
        } else {
            h.update(&bytes);
        }
        Ok(Some(hex(&h.finalize())))
    }

    /// Lists one page of the prefix: the bucket exists and the credentials are accepted.
    pub async fn check(&self) -> Result<()> {
        use futures_util::StreamExt;
        let mut listing = self.store.list(Some(&self.location.prefix));
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(self.explain("list", &self.location.prefix, e)),
        }
    }

    /// One line naming what to fix: the variables for refused credentials, OUTPUT_PATH for a
    /// missing bucket.
    fn explain(&self, what: &str, path: &Path, e: object_store::Error) -> anyhow::Error {
        use object_store::Error::*;
        let url = self.location.url_of(path);
        let text = chain_text(&e);
        let cause = excerpt(&text);
        // Listing errors come as `Generic` (the crate classifies only object requests); their
        // text carries the HTTP status.
        let status = match &e {
            Generic { .. } => http_status(&text),
            _ => None,
        };
        match (e, status) {
            (PermissionDenied { .. } | Unauthenticated { .. }, _)
            | (Generic { .. }, Some(401 | 403)) => anyhow!(
                "cannot {what} {url}: access refused; check {}: {cause}",
                self.location.scheme.credential_vars()
            ),
            (NotFound { .. }, _) | (Generic { .. }, Some(404)) => anyhow!(
                "cannot {what} {url}: bucket {} not found (OUTPUT_PATH): {cause}",
                self.location.bucket
            ),
            (NotImplemented | NotSupported { .. }, _) => {
                anyhow!("cannot {what} {url}: the store does not support create-only writes, which the sink needs to never overwrite an object (with S3: leave AWS_CONDITIONAL_PUT unset): {cause}")
            }
            _ => anyhow!("cannot {what} {url}: {cause}"),
        }
    }
}

/// The status in object_store's text for a refused request ("... non-2xx status code: 403
/// Forbidden ...").
fn http_status(text: &str) -> Option<u16> {
    let (_, rest) = text.split_once("status code: ")?;
    rest.get(..3)?.parse().ok()
}

/// The object's bytes and the SHA-256 (hex) of its uncompressed lines.
fn encode(gzip: Option<flate2::Compression>, docs: &[&Document]) -> Result<(Vec<u8>, String)> {
    let mut h = Sha256::new();
    for d in docs {
        h.update(&d.body);
        h.update(b"\n");
    }
    let body = match gzip {
        Some(level) => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), level);
            write_lines(&mut gz, docs)?;
            gz.finish()?
        }
        None => {
            let mut out = Vec::new();
            write_lines(&mut out, docs)?;
            out
        }
    };
    Ok((body, hex(&h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn docs(ids: &[&str]) -> Vec<&'static Document> {
        ids.iter()
            .map(|id| {
                &*Box::leak(Box::new(Document::new(
                    id.to_string(),
                    format!("{{\"id\":\"{id}\"}}").into_bytes(),
                )))
            })
            .collect()
    }

    fn bucket() -> Bucket {
        let location = Location::parse("s3://b/archive/audit/").unwrap().unwrap();
        Bucket::new(location, Arc::new(InMemory::new()))
    }

    async fn read(b: &Bucket, path: &Path) -> String {
        let bytes = b.store.get(path).await.unwrap().bytes().await.unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
            .unwrap();
        text
    }

    #[test]
    fn output_path_urls() {
        let l = Location::parse("s3://bucket/a/b/").unwrap().unwrap();
        assert_eq!(
            (l.scheme, l.bucket.as_str(), l.prefix.as_ref()),
            (Scheme::S3, "bucket", "a/b")
        );
        let l = Location::parse("az://container").unwrap().unwrap();
        assert_eq!((l.scheme, l.prefix.as_ref()), (Scheme::Azure, ""));
        assert_eq!(
            Location::parse("gs://b/x").unwrap().unwrap().scheme,
            Scheme::Gcs
        );
        assert!(Location::parse("/var/out").is_none());
        assert!(Location::parse("http://host/x").is_none());
        for bad in [
            "s3://",
            "s3:///x",
            "s3://b/a//c",
            "s3://b/../c",
            "s3://b/x?y=1",
        ] {
            let e = Location::parse(bad).unwrap().unwrap_err().0;
            assert!(e.starts_with("invalid OUTPUT_PATH"), "{bad}: {e}");
        }
        let e = Location::parse("s3://KEY:SECRET@bucket/x")
            .unwrap()
            .unwrap_err()
            .0;
        assert!(!e.contains("SECRET") && e.contains("credentials"), "{e}");
        assert_eq!(
            bucket()
                .path(&["dt=2026-11-30".into()], "n.jsonl.gz")
                .as_ref(),
            "archive/audit/dt=2026-11-30/n.jsonl.gz"
        );
    }

    #[test]
    fn status_of_a_listing_error() {
        let text = "Generic S3 error: Error performing list request: Error performing GET http://h/b?list-type=2 in 2ms - Server returned non-2xx status code: 404 Not Found: <Error>";
        assert_eq!(http_status(text), Some(404));
        assert_eq!(http_status("connection refused"), None);
    }

    #[tokio::test]
    async fn write_once_same_lines_are_already_there_other_lines_an_error() {
        let b = bucket();
        let gz = Some(flate2::Compression::new(1));
        let path = b.path(&[], "page.jsonl.gz");
        let page = docs(&["1", "2"]);
        assert_eq!(b.write(&path, gz, &page).await.unwrap(), Written::Created);
        // A re-ship, even at another gzip level: the lines decide, not the bytes.
        let again = b.write(&path, Some(flate2::Compression::new(9)), &page);
        assert_eq!(again.await.unwrap(), Written::AlreadyThere);
        let err = b
            .write(&path, gz, &docs(&["1", "3"]))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s3://b/archive/audit/page.jsonl.gz") && err.contains("other content"),
            "{err}"
        );
        assert_eq!(read(&b, &path).await, "{\"id\":\"1\"}\n{\"id\":\"2\"}\n");
        let meta = b.store.get(&path).await.unwrap().attributes;
        assert_eq!(
            meta.get(&Attribute::Metadata(COUNT_KEY.into()))
                .map(|v| v.as_ref()),
            Some("2")
        );
    }

    #[tokio::test]
    async fn large_pages_go_in_parts_and_stay_write_once() {
        let mut b = bucket();
        b.multipart_from = 10;
        let gz = Some(flate2::Compression::new(1));
        let path = b.path(&[], "big.jsonl.gz");
        let page = docs(&["10", "20", "30"]);
        assert_eq!(b.write(&path, gz, &page).await.unwrap(), Written::Created);
        assert_eq!(read(&b, &path).await.lines().count(), 3);
        assert_eq!(
            b.write(&path, gz, &page).await.unwrap(),
            Written::AlreadyThere
        );
        assert!(b.write(&path, gz, &docs(&["10"])).await.is_err());
    }

    /// InMemory whose multipart uploads fail at completion; counts the aborts.
    #[derive(Debug)]
    struct FailingCompletion {
        inner: InMemory,
        aborted: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl std::fmt::Display for FailingCompletion {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FailingCompletion")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for FailingCompletion {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            Ok(Box::new(FailingUpload {
                inner: self.inner.put_multipart_opts(location, opts).await?,
                aborted: self.aborted.clone(),
            }))
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, location: &Path) -> object_store::Result<()> {
            self.inner.delete(location).await
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    #[derive(Debug)]
    struct FailingUpload {
        inner: Box<dyn object_store::MultipartUpload>,
        aborted: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl object_store::MultipartUpload for FailingUpload {
        fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
            self.inner.put_part(data)
        }
        async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
            Err(object_store::Error::Generic {
                store: "test",
                source: "connection reset".into(),
            })
        }
        async fn abort(&mut self) -> object_store::Result<()> {
            self.aborted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.abort().await
        }
    }

    #[tokio::test]
    async fn a_failed_multipart_upload_is_aborted_and_leaves_no_object() {
        let aborted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let store = FailingCompletion {
            inner: InMemory::new(),
            aborted: aborted.clone(),
        };
        let mut b = Bucket::new(bucket().location, Arc::new(store));
        b.multipart_from = 10;
        let path = b.path(&[], "big.jsonl");
        let err = b
            .write(&path, None, &docs(&["1", "2", "3"]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        assert_eq!(aborted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(matches!(
            b.store.head(&path).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }
}
