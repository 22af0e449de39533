//! Fake third-party APIs, one file each, following their specs in `../shared/specs`.

pub mod castai;
pub mod cdp;
pub mod otlp;
pub mod splunk;
