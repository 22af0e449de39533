//! What every HTTP client shares: the retry policy, and gzip for request bodies. Each client (in its source's or sink's own
//! folder) builds its requests and classifies its answers; this module decides about retries.

pub mod object_store;
pub mod retry;
pub mod tls;

/// `body` gzip-compressed at the fastest level: audit JSON shrinks several times even so, and
/// the CPU goes to the next page instead.
pub fn gzipped(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body).expect("writing to memory");
    gz.finish().expect("writing to memory")
}
