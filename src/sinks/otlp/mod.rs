//! OpenTelemetry logs over OTLP/HTTP, following `shared/specs/otlp-logs-sink.md`.
//!
//! In parts, as the Splunk sink is: [`settings`] (the standard `OTEL_*` variables),
//! [`request`] (documents as log records, with the official generated types), [`service`]
//! (the client and what a receiver's answers mean). Here: the sink. A page counts as
//! delivered only on a full success. A partial success says how many records were refused,
//! not which: the sink then sends the records again in halves until each refused one is found
//! alone (accepted records may arrive twice; they carry the same `log.record.uid`).

pub mod request;
pub mod service;
pub mod settings;

use super::{Outcome, Sink};
use crate::base::document::Document;
use anyhow::Result;
use async_trait::async_trait;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use service::{Answer, Service};
use settings::Settings;
use std::collections::VecDeque;

/// `SINK=otlp`.
pub const KIND: super::Kind = super::Kind {
    name: "otlp",
    aliases: &["opentelemetry"],
    implied_by: None,
    traits: super::SinkTraits {
        json_only: true,
        prefers_original: false,
    },
    configure: |env, _| {
        Ok(Box::new(Configured {
            settings: Settings::from_env(env)?,
        }))
    },
};

#[derive(Debug)]
struct Configured {
    settings: Settings,
}

#[async_trait]
impl super::Configured for Configured {
    fn build(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(OtlpSink {
            service: Service::new(&self.settings)?,
            settings: self.settings.clone(),
        }))
    }
}

pub struct OtlpSink {
    service: Service,
    settings: Settings,
}

impl OtlpSink {
    /// One request with `group`'s records, retried by the policy while the answer is transient.
    async fn export(&self, records: &[Option<LogRecord>], group: &[usize]) -> Result<Answer> {
        let chosen = group
            .iter()
            .map(|&i| records[i].clone().expect("only encoded records are sent"))
            .collect();
        let body = request::encode(
            self.settings.protocol,
            &request::request(&self.settings, chosen),
        );
        self.settings
            .retry
            .run("OTLP receiver", || self.service.send(&body))
            .await
            .map_err(|f| self.service.error(f))
    }
}

#[async_trait]
impl Sink for OtlpSink {
    fn name(&self) -> String {
        format!("otlp:{}", self.service.url())
    }

    /// An empty export request (only here: exports never send one): the receiver checks the
    /// endpoint and the credentials and stores nothing.
    async fn check(&mut self) -> Result<()> {
        self.export(&[], &[]).await.map(|_| ())
    }

    async fn ship(&mut self, docs: &[&Document]) -> Result<Vec<Outcome>> {
        let observed = chrono::Utc::now()
            .timestamp_nanos_opt()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let mut outcomes: Vec<Option<Outcome>> = vec![None; docs.len()];
        let mut records = Vec::with_capacity(docs.len());
        for (i, doc) in docs.iter().enumerate() {
            match request::record(doc, observed) {
                Ok(r) => records.push(Some(r)),
                Err(why) => {
                    outcomes[i] = Some(Outcome::Rejected(why));
                    records.push(None);
                }
            }
        }
        let pending: Vec<usize> = (0..docs.len()).filter(|&i| records[i].is_some()).collect();
        let plain: Vec<LogRecord> = records
            .iter()
            .map(|r| r.clone().unwrap_or_default())
            .collect();
        let mut work: VecDeque<Vec<usize>> =
            request::split_by_bytes(&pending, &plain, request::MAX_BYTES).into();
        let mut settle = |group: &[usize], outcome: Outcome| {
            for &i in group {
                outcomes[i] = Some(outcome.clone());
            }
        };
        while let Some(group) = work.pop_front() {
            match self.export(&records, &group).await? {
                Answer::Accepted { rejected, message } if rejected <= 0 => {
                    if !message.is_empty() {
                        tracing::warn!(records = group.len(), "OTLP receiver warns: {message}");
                    }
                    settle(&group, Outcome::Delivered);
                }
                Answer::Accepted { rejected, message } => {
                    let refused = format!("rejected by the OTLP receiver: {message}");
                    if group.len() == 1 || rejected as usize >= group.len() {
                        for &i in &group {
                            tracing::warn!(id = %docs[i].id, "{refused}");
                        }
                        settle(&group, Outcome::Rejected(refused));
                    } else {
                        tracing::warn!(
                            records = group.len(),
                            rejected,
                            "OTLP receiver refused some records without saying which: sending them again in halves to find them"
                        );
                        halves(&mut work, group);
                    }
                }
                Answer::TooLarge(text) if group.len() > 1 => {
                    tracing::warn!(records = group.len(), "{text}: sending smaller requests");
                    halves(&mut work, group);
                }
                Answer::TooLarge(text) => settle(
                    &group,
                    Outcome::Rejected(format!("too large for the OTLP receiver: {text}")),
                ),
                Answer::Refused(text) => settle(&group, Outcome::Rejected(text)),
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every document has an outcome"))
            .collect())
    }
}

/// `group` split in two, both sent next, in page order.
fn halves(work: &mut VecDeque<Vec<usize>>, mut group: Vec<usize>) {
    let second = group.split_off(group.len() / 2);
    work.push_front(second);
    work.push_front(group);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_keep_page_order() {
        let mut work = VecDeque::from([vec![9]]);
        halves(&mut work, vec![1, 2, 3, 4, 5]);
        assert_eq!(Vec::from(work), vec![vec![1, 2], vec![3, 4, 5], vec![9]]);
    }
}
