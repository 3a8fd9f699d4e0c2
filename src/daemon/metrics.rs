//! `--metrics ADDR`: the server's counters at `http://ADDR/metrics` in the Prometheus text
//! format, served by `tiny_http` on threads of its own, never a shard's. A scrape sums the
//! shards' counters (a few hundred relaxed atomic loads) and touches nothing on the data path.

use std::net::SocketAddr;

use anyhow::{anyhow, Result};
use ringtftp::server::Metrics;
use tiny_http::{Header, Method, Response, Server};

/// Binds `addr` and serves `metrics` from a thread until the process exits; returns the
/// address bound (with the port chosen when 0 was asked).
pub fn serve(addr: SocketAddr, metrics: Metrics) -> Result<SocketAddr> {
    let server =
        Server::http(addr).map_err(|e| anyhow!("cannot listen on {addr} for --metrics: {e}"))?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or("");
                let response = match (request.method(), path) {
                    (Method::Get | Method::Head, "/metrics") => {
                        Response::from_string(metrics.encode())
                            .with_header(header(Metrics::CONTENT_TYPE))
                    }
                    (Method::Get | Method::Head, "/") => {
                        Response::from_string("ringtftpd: Prometheus metrics are at /metrics\n")
                            .with_header(header("text/plain; charset=utf-8"))
                    }
                    _ => Response::from_string("not found\n").with_status_code(404),
                };
                // A scraper that hung up is no concern of ours.
                let _ = request.respond(response);
            }
        })?;
    Ok(bound)
}

fn header(content_type: &str) -> Header {
    Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
        .expect("a Content-Type header is valid")
}
