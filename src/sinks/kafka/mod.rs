//! Kafka through librdkafka's idempotent producer, following `shared/specs/kafka-sink.md`.
//!
//! In parts: [`settings`] (`KAFKA_*` and the producer properties they make), [`service`] (the
//! producer shared by the run, and what a delivery result means). Here: the sink. Each record
//! becomes one message (key = document id, value = the document, headers = its topic, routing
//! key and source) on the topic its route names; a page counts as delivered only once every
//! message of it has its delivery report. A record the broker can never take (too large, a
//! topic it may not write) is rejected alone; a message not acknowledged within
//! KAFKA_MESSAGE_TIMEOUT_MS fails the page, which stays unmarked.

pub mod service;
pub mod settings;

use super::{Outcome, Sink};
use crate::base::document::Document;
use anyhow::{anyhow, Result};
use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use service::{Failure, Service};
use settings::Settings;
use std::sync::Arc;

/// `SINK=kafka`.
pub const KIND: super::Kind = super::Kind {
    name: "kafka",
    aliases: &[],
    implied_by: None,
    traits: super::SinkTraits {
        json_only: false,
        prefers_original: false,
    },
    configure: |env, source| {
        Ok(Box::new(Configured {
            settings: Settings::from_env(env)?,
            // Headers carry the route; lines shipped as they are (undated) have none to read.
            route_known: !source.undated,
            service: super::Shared::default(),
        }))
    },
};

#[derive(Debug)]
struct Configured {
    settings: Settings,
    route_known: bool,
    service: super::Shared<Service>,
}

impl Configured {
    fn service(&self) -> Result<Arc<Service>> {
        self.service.get_or_build(|| Service::new(&self.settings))
    }
}

#[async_trait]
impl super::Configured for Configured {
    fn build(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(KafkaSink {
            service: self.service()?,
            settings: self.settings.clone(),
        }))
    }
    fn needs_route(&self) -> bool {
        self.settings.topic_template.is_some() || self.route_known
    }
    /// The brokers answer and take the credentials before the first page is read.
    async fn prepare(&self) -> Result<()> {
        self.service()?.probe().await
    }
}

pub struct KafkaSink {
    service: Arc<Service>,
    settings: Settings,
}

/// A message's size as librdkafka counts it against `message.max.bytes`.
fn message_size(doc: &Document, headers: &[(&str, &str)]) -> usize {
    doc.id.len()
        + doc.body.len()
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> String {
        format!("kafka:{}", self.service.brokers)
    }

    async fn check(&mut self) -> Result<()> {
        self.service.probe().await
    }

    async fn ship(&mut self, docs: &[&Document]) -> Result<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; docs.len()];
        let mut prepared = Vec::with_capacity(docs.len());
        for (i, doc) in docs.iter().enumerate() {
            let route = doc.route();
            let topic = match self.settings.topic_for(route) {
                Ok(t) => t,
                Err(why) => {
                    outcomes[i] = Some(Outcome::Rejected(format!(
                        "document {}: not sent to Kafka: {why}",
                        doc.id
                    )));
                    continue;
                }
            };
            let mut headers: Vec<(&str, &str)> = Vec::with_capacity(3);
            if let Some(t) = &route.topic {
                headers.push(("topic", t.as_str()));
            }
            if let Some(k) = &route.key {
                headers.push(("routing_key", k.as_str()));
            }
            headers.push(("source", self.settings.source.as_str()));
            let size = message_size(doc, &headers);
            if size > self.settings.max_message_bytes {
                outcomes[i] = Some(Outcome::Rejected(format!(
                    "document {}: not sent to Kafka: the message is {size} bytes, more than message.max.bytes ({}); raise it with KAFKA_PRODUCER_CONFIG=message.max.bytes=N if the topic's max.message.bytes allows",
                    doc.id,
                    self.settings.max_message_bytes
                )));
                continue;
            }
            let owned = headers.iter().fold(OwnedHeaders::new(), |h, &(k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            });
            prepared.push((i, topic, owned));
        }
        // Every message is queued before any report is awaited (the first poll of each send
        // enqueues it, in page order), then every report is awaited: none is left behind.
        let producer = &self.service.producer;
        let sends = prepared.iter().map(|(i, topic, headers)| {
            let doc = docs[*i];
            let record = FutureRecord::to(topic)
                .key(doc.id.as_bytes())
                .payload(&doc.body[..])
                .headers(headers.clone());
            async move { (*i, producer.send(record, Timeout::Never).await) }
        });
        let reports = futures_util::future::join_all(sends).await;
        let mut unacknowledged: Vec<(String, String)> = Vec::new();
        for ((i, topic, _), (_, report)) in prepared.iter().zip(reports) {
            outcomes[*i] = match report {
                Ok(_) => Some(Outcome::Delivered),
                Err((e, _)) => match service::classify(&e, topic) {
                    Failure::Record(why) => Some(Outcome::Rejected(format!(
                        "document {}: {why}",
                        docs[*i].id
                    ))),
                    Failure::Page(why) => {
                        unacknowledged.push((docs[*i].id.clone(), why));
                        None
                    }
                },
            };
        }
        if let Some((id, why)) = unacknowledged.first() {
            return Err(self.service.unreachable(&format!(
                "{} of the page's {} messages failed (first: {id}: {why}); the page stays unsent and the next run sends it again (duplicates, if any, carry the same key)",
                unacknowledged.len(),
                docs.len()
            )));
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| anyhow!("a message without a delivery report")))
            .collect()
    }
}
