//! What every HTTP client shares: the retry policy. Each client (in its source's or sink's own
//! folder) builds its requests and classifies its answers; this module decides about retries.

pub mod retry;
