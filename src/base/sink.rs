//! What a sink is to the pipeline: it answers, per document, whether it now holds it.

use crate::base::document::Document;
use anyhow::Result;
use async_trait::async_trait;

/// The sink's final word on one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now.
    Delivered,
    /// Already stored under the same id by an earlier run (a re-ship after a crash).
    AlreadyPresent,
    /// Permanently refused for this document (mapping error, too large): the reason.
    Rejected(String),
}

#[async_trait]
pub trait Sink: Send {
    fn name(&self) -> String;
    /// Connects and verifies credentials without writing.
    async fn check(&mut self) -> Result<()>;
    /// Ships a page. `Ok` holds one outcome per document, in order; transient failures have
    /// already been retried. `Err` means the sink is unusable now (down after retries,
    /// credentials refused): the run stops and the page stays unmarked.
    async fn ship(&mut self, docs: &[&Document]) -> Result<Vec<Outcome>>;
    /// Ships a page the source named as one unit (a CDP archive batch: `name` is the file name
    /// CDP's own archives use). Sinks that have no use for names ship it as any page.
    async fn ship_named(&mut self, name: Option<&str>, docs: &[&Document]) -> Result<Vec<Outcome>> {
        let _ = name;
        self.ship(docs).await
    }
    /// INTEGRITY_CHAIN: from now on a document already stored under the same id is replaced,
    /// not kept (a re-ship after a crash may carry another link). Sinks without ids do nothing
    /// (files: a re-shipped page is written again whole, under the same name when unchanged).
    fn replace_existing(&mut self) {}
    /// How `verify` can read this destination back.
    fn read_back_mode(&self) -> ReadBack {
        ReadBack::No
    }
    /// `verify` with [`ReadBack::ByContent`]: calls `each` with where each stored document is
    /// (file and line) and its bytes, in any order.
    async fn scan(&mut self, each: &mut dyn Found) -> Result<()> {
        let _ = each;
        Err(crate::base::exit::config_error(format!(
            "verify cannot list the documents of {}",
            self.name()
        )))
    }
    /// `verify` with [`ReadBack::ById`]: what the destination holds under each document's id,
    /// as stored (`None`: it holds nothing there).
    async fn read_back(&mut self, docs: &[&Document]) -> Result<Vec<Option<Vec<u8>>>> {
        let _ = docs;
        Err(crate::base::exit::config_error(format!(
            "verify cannot read documents back by id from {}: it reads Elasticsearch/OpenSearch",
            self.name()
        )))
    }
}

/// What [`Sink::scan`] reports each stored document to.
pub trait Found: Send {
    /// The document `line`, stored at `at` (file and line).
    fn found(&mut self, at: &str, line: &[u8]);
}

/// How a destination can be read back by `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack {
    /// By document id (an index).
    ById,
    /// Only by listing what it holds, documents without their ids (files, buckets).
    ByContent,
    /// Not at all (a collector, a broker, a pipe).
    No,
}

/// What a kind of sink takes, known from its name before its settings are read, so a source
/// can choose defaults that fit it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkTraits {
    /// It stores JSON documents only (an index): lines as they were cannot go there.
    pub json_only: bool,
    /// It shows lines to a person or a pipe: a source that can ship its original lines does
    /// so by default.
    pub prefers_original: bool,
}
