//! What the `ringtftpd` daemon needs from the operating system beyond serving: dropping root
//! after binding ([`user`]), speaking systemd's protocols ([`systemd`]), fitting its memory
//! limit ([`memory`]) and reading nobodd's configuration files ([`nobodd`]). The library never
//! uses these; they live beside `main.rs` as modules of the binary.

pub mod memory;
pub mod metrics;
pub mod nobodd;
pub mod systemd;
pub mod user;
