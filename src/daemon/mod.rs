//! What the `ringtftpd` daemon needs from the operating system beyond serving: dropping root
//! after binding ([`user`]), speaking systemd's protocols ([`systemd`]) and fitting its memory
//! limit ([`memory`]). The library never
//! uses these; they live beside `main.rs` as modules of the binary.

pub mod memory;
pub mod metrics;
pub mod systemd;
pub mod user;
