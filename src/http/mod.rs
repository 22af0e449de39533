//! What every HTTP client shares: the retry policy. Each client (in its source's or sink's own
//! folder) builds its requests and classifies its answers; this module decides about retries.

#[allow(dead_code)] // Until every client has moved onto it (issue 13).
pub mod retry;
