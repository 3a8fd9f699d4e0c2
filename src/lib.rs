//! ringtftp: a TFTP server for boot storms, built on io_uring.
//!
//! When a rack or a data hall PXE/iPXE/UEFI-boots at once, hundreds to thousands of machines
//! pull the same bootloader, kernel and initrd over TFTP. This crate is the protocol and the
//! server behind the `ringtftpd` daemon, usable as a library with any source of files (the Rust
//! counterpart of Python's `nobodd.tftpd`).
//!
//! # Architecture
//!
//! ```text
//!  datagram ─> packet::Packet::parse ─> transfer::inbound ─> Resolver::resolve ─> Source
//!                                         └─> options::Negotiated::negotiate
//!  server: one shard per core, each with its own SO_REUSEPORT socket on the port
//!    session   one transfer as the server sees it, sans-IO: the transfer::Transfer state
//!              machine, its file chunks and read-ahead, GSO batching, its timer and ending
//!              handle_* in, poll_io(now) -> send / read / arm / close out
//!    executors only do what the sessions ask, one per shard: the io_uring engine (multishot
//!              receives, provided buffers, READ_FIXED into registered chunks, batched
//!              submissions, a timer wheel), tokio-uring, or one epoll loop
//!  client: the read side of a transfer, sans-IO too (loadgen and the tests drive it)
//! ```
//!
//! The protocol core — [`packet`], [`options`], [`netascii`], [`transfer`] and the path logic of
//! [`resolve`] — never touches a socket, a thread or a clock: time comes in as `now`, and work
//! goes out as values (what to send, which file range to read, when to wake). That makes every
//! timer testable with a fake clock, and lets the load generator reuse the codec.
//!
//! Read on in that order: [`packet`] (the wire), [`options`] (negotiation), [`netascii`] (the
//! text mode), [`transfer`] (the state machine and how a driver drives it), [`client`] (its
//! counterpart), [`resolve`] (where files come from), [`server`] (the shards, the session and
//! its executors). [`image`] reads files out of the FAT boot partitions of disk images, for
//! [`resolve::boards`] (nobodd's `--board`).

pub mod client;
pub mod image;
pub mod netascii;
pub mod options;
pub mod packet;
pub mod resolve;
pub mod server;
#[cfg(any(test, feature = "sim"))]
#[doc(hidden)]
pub mod sim;
pub mod transfer;
