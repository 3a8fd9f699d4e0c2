//! Writes ringtftpd's man page and shell completions from its clap definition, for packages:
//!
//! ```text
//! cargo run --example man -- OUT_DIR
//! ```
//!
//! makes `OUT_DIR/ringtftpd.8`, `OUT_DIR/ringtftpd.bash`, `OUT_DIR/_ringtftpd` (zsh) and
//! `OUT_DIR/ringtftpd.fish`. An example rather than a feature of the daemon: clap_mangen and
//! clap_complete are dev-dependencies, so the daemon's own build never compiles them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

// The daemon's source, compiled here only for its `Cli` definition.
#[allow(dead_code)]
#[path = "../src/main.rs"]
mod daemon_main;

fn main() -> Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: man OUT_DIR")?
        .into();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let command = daemon_main::Cli::command();

    // Section 8: system administration commands, like in.tftpd(8) and dnsmasq(8).
    let man = clap_mangen::Man::new(command.clone()).section("8");
    let mut page = Vec::new();
    man.render(&mut page)?;
    let path = out.join("ringtftpd.8");
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut command = command.clone();
        let path = clap_complete::generate_to(shell, &mut command, "ringtftpd", &out)
            .with_context(|| format!("cannot write the {shell} completions"))?;
        println!("{}", path.display());
    }
    println!("{}", out.join("ringtftpd.8").display());
    Ok(())
}
