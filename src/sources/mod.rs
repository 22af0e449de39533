//! Sources: where audit records come from. Each source hands the pipeline pages of records and
//! is told, per page, which records the sink acknowledged; only those it marks.
//!
//! To add a source: one file here implementing [`Source`], plus one line in [`build`].

pub mod castai;
pub mod cdp;
pub mod django_auditlog;
pub mod s3;
pub mod single_column;

pub use crate::base::document::{Document, Record};
pub use crate::base::source::*;
use crate::config::{Config, SourceKind};
use anyhow::Result;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// The one place where sources are registered.
pub async fn build(cfg: &Config) -> Result<Box<dyn Source>> {
    Ok(match cfg.source {
        SourceKind::SingleColumnJson => Box::new(single_column::connect(cfg).await?),
        SourceKind::DjangoAuditlog => Box::new(django_auditlog::connect(cfg).await?),
        SourceKind::Castai => Box::new(castai::Castai::new(cfg)?),
        SourceKind::CdpArchive => Box::new(cdp::CdpArchive::new(cfg)?),
        SourceKind::S3Cursor => Box::new(s3::S3Cursor::new(cfg)?),
    })
}
