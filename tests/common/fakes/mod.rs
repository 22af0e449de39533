//! Fake third-party APIs, one file each, following their specs in `../shared/specs`.

pub mod castai;
pub mod cato;
pub mod cdp;
pub mod otlp;
pub mod splunk;

/// Serves `app` on 127.0.0.1 from a thread with its own runtime (the tests block on the binary
/// while it serves); returns its base URL.
pub fn serve(app: axum::Router) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
    });
    url
}
