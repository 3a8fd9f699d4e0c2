//! `--metrics ADDR`: the server's counters at `http://ADDR/metrics` in the Prometheus text
//! format, on threads of their own, never a shard's. A scrape sums the shards' counters (a few
//! hundred relaxed atomic loads) and touches nothing on the data path.
//!
//! The listener is bounded whatever connects to it (a port scan, a scraper that keeps
//! connections open, a misconfigured load balancer's health checks): [`WORKERS`] threads
//! answer, at most [`QUEUED`] accepted connections wait for them and any beyond are closed at
//! once, and a connection that sends no request within [`READ_TIMEOUT`] is closed. Each answer is
//! HTTP/1.1 with `Connection: close` (RFC 9112 §9.6): one request per connection, which is
//! what Prometheus's scrapes need.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ringtftp::server::Metrics;

/// Threads answering scrapes.
const WORKERS: usize = 2;
/// Accepted connections waiting for a worker; more are closed at once.
const QUEUED: usize = 16;
/// How long a connection may take to send its request (a scraper sends it at once), and to
/// take the answer.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read; a scrape's is a few hundred bytes.
const HEAD_MAX: usize = 8192;

/// Binds `addr` and serves `metrics` from threads of their own until the process exits;
/// returns the address bound (with the port chosen when 0 was asked).
pub fn serve(addr: SocketAddr, metrics: Metrics) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} for --metrics"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    let (queue, waiting) = sync_channel::<TcpStream>(QUEUED);
    let waiting = Arc::new(Mutex::new(waiting));
    for i in 0..WORKERS {
        let (waiting, metrics) = (waiting.clone(), metrics.clone());
        std::thread::Builder::new()
            .name(format!("metrics-{i}"))
            .spawn(move || work(&waiting, &metrics))?;
    }
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                match queue.try_send(stream) {
                    Ok(()) => {}
                    // Every worker busy and the queue full: the connection is dropped (closed)
                    // rather than given a thread.
                    Err(TrySendError::Full(_)) => {}
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
        })?;
    Ok(bound)
}

/// A worker: answers the queued connections one after the other.
fn work(waiting: &Mutex<Receiver<TcpStream>>, metrics: &Metrics) {
    loop {
        let stream = {
            let waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
            waiting.recv()
        };
        let Ok(stream) = stream else { return };
        // A scraper that hung up or timed out is no concern of ours.
        let _ = answer(stream, metrics);
    }
}

/// Reads one request head and answers it.
fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() + n > HEAD_MAX {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET" | b"HEAD", b"/metrics") => ("200 OK", Metrics::CONTENT_TYPE, metrics.encode()),
        (b"GET" | b"HEAD", b"/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "ringtftpd: Prometheus metrics are at /metrics\n".to_owned(),
        ),
        (b"GET" | b"HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    if method != b"HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}
