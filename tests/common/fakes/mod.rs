//! Fake servers of SaaS APIs, for sources that read from them. One module per service.

pub mod cdp;
