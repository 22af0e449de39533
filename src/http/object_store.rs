//! object_store's own HTTP client and retries (for the S3 source and the bucket sink), except for
//! a certificate that does not verify: object_store counts that as a connection error and tries
//! ten more times, where no retry can change the answer. Here it fails at once, and the caller's
//! message says what to fix.

use crate::base::exit::chain_text;
use crate::http::retry::is_certificate_error;
use async_trait::async_trait;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::ClientOptions;

#[derive(Debug, Default)]
pub struct CertificateFailsAtOnce;

impl HttpConnector for CertificateFailsAtOnce {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Client(inner)))
    }
}

#[derive(Debug)]
struct Client(HttpClient);

#[async_trait]
impl HttpService for Client {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.0.execute(req).await.map_err(|e| {
            let text = chain_text(&e);
            if e.kind() == HttpErrorKind::Connect && is_certificate_error(&text) {
                // `Unknown` is the kind object_store does not retry.
                let text = text.strip_prefix("HTTP error: ").unwrap_or(&text);
                HttpError::new(HttpErrorKind::Unknown, CertificateError(text.to_string()))
            } else {
                e
            }
        })
    }
}

/// The text of the connection error, which names what is wrong with the certificate.
#[derive(Debug)]
pub struct CertificateError(String);

impl std::fmt::Display for CertificateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertificateError {}
