//! One shard: a thread with its own main socket on the shared port and every transfer whose
//! request that socket received. Shards share nothing on the data path; the kernel's
//! `SO_REUSEPORT` hash picks the shard for each client address and port.
//!
//! This file only starts the executor the configuration chose ([`BackendChoice`]): the io_uring
//! engine ([`super::ring`]), tokio-uring ([`super::task`]) or the epoll engine ([`super::poll`]). With `auto`, a shard whose
//! ring the kernel or sandbox refuses says so once and serves on epoll.

use std::io;
use std::sync::Arc;

use socket2::Socket;
use tokio::sync::watch;

use super::cache::CHUNK;
use super::{Backend, BackendChoice, Shared};

/// Runs shard `index` on the calling thread until the server stops; reports the backend it
/// runs through `ready` before serving (nothing if it cannot run the one asked for).
pub(crate) fn run(
    index: usize,
    socket: Socket,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Backend>,
) {
    super::metrics::enter_shard(index, shared.counters.clone());
    let choice = shared.config.backend;
    let socket = match choice {
        BackendChoice::Epoll => socket,
        BackendChoice::Auto | BackendChoice::IoUring | BackendChoice::TokioUring => {
            let tried = match choice {
                BackendChoice::TokioUring => {
                    tokio_uring(index, socket, shared.clone(), stop.clone(), ready.clone())
                }
                _ => super::ring::run(index, socket, shared.clone(), stop.clone(), ready.clone()),
            };
            match tried {
                Ok(()) => return,
                Err((e, back)) if choice == BackendChoice::Auto => {
                    if index == 0 {
                        tracing::warn!(error = %e, "io_uring is unavailable (seccomp, kernel.io_uring_disabled or an old kernel); serving with epoll");
                    }
                    back
                }
                Err((e, _)) => {
                    // The operator asked for this backend: no silent substitute.
                    tracing::error!(shard = index, error = %e, "cannot run the {choice} backend");
                    return;
                }
            }
        }
    };
    epoll(index, socket, shared, stop, ready);
}

/// Serves on tokio-uring; gives the socket back where the kernel refuses a ring.
fn tokio_uring(
    index: usize,
    socket: Socket,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Backend>,
) -> Result<(), (io::Error, Socket)> {
    let rt = match super::uring::runtime() {
        Ok(rt) => rt,
        Err(e) => return Err((e, socket)),
    };
    rt.block_on(async move {
        let io = super::uring::Uring::new(index, shared.config.block_cache / CHUNK);
        let _ = ready.send(Backend::TokioUring {
            registered_buffers: io.registered(),
        });
        let spilled = io.spilled.clone();
        super::task::serve(io, socket, shared, stop).await;
        if spilled.get() > 0 {
            tracing::debug!(
                shard = index,
                spilled = spilled.get(),
                "heap buffers used when the registered pool ran dry"
            );
        }
    });
    Ok(())
}

/// Serves on epoll: the engine of [`super::poll`].
fn epoll(
    index: usize,
    socket: Socket,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Backend>,
) {
    super::poll::run(index, socket, shared, stop, ready);
}
