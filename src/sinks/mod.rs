//! Sinks: where documents go. A sink answers, per document, whether it now holds it; only
//! then does the pipeline let the source mark the record.
//!
//! To add a sink: one file here implementing [`Sink`], plus one line in [`build`].

pub mod elasticsearch;
pub mod file;
pub mod index;

use crate::base::document::Document;
use crate::config::SinkConfig;
use anyhow::Result;
use async_trait::async_trait;

pub use crate::base::sink::{Outcome, Sink};

/// The one place where sinks are registered.
pub fn build(cfg: &SinkConfig) -> Result<Box<dyn Sink>> {
    Ok(match cfg {
        SinkConfig::Elasticsearch(es) => Box::new(elasticsearch::ElasticsearchSink::new(es)?),
        SinkConfig::File {
            dir,
            gzip,
            gzip_level,
            layout,
        } => Box::new(
            file::FileSink::new(dir.clone(), *gzip)
                .with_level(*gzip_level)
                .with_layout(*layout),
        ),
        SinkConfig::Stdout => Box::new(file::StdoutSink),
    })
}
