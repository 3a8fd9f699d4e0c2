//! Serves an iPXE script generated per client, from memory, through the same server as files.
//!
//! Every client that asks for `boot.ipxe` gets a script that names its own address; anything
//! else is served from the directory given as the second argument (default: the current one).
//!
//! ```text
//! cargo run --example ipxe_script -- 127.0.0.1:6969 /srv/tftp
//! curl tftp://127.0.0.1:6969/boot.ipxe
//! ```

use std::net::SocketAddr;

use ringtftp::resolve::{DirectoryResolver, ResolveError, Resolver, Source};
use ringtftp::server::{Config, Server};

/// Generates `boot.ipxe` per client and hands every other name to a directory.
struct Ipxe {
    files: DirectoryResolver,
}

impl Resolver for Ipxe {
    fn resolve(&self, filename: &str, peer: SocketAddr) -> Result<Source, ResolveError> {
        if filename.trim_start_matches('/') == "boot.ipxe" {
            let script = format!(
                "#!ipxe\necho Booting {ip}\nkernel tftp://${{next-server}}/vmlinuz ip={ip}\n\
                 initrd tftp://${{next-server}}/initrd.img\nboot\n",
                ip = peer.ip().to_canonical(),
            );
            return Ok(Source::memory(script.into_bytes()));
        }
        self.files.resolve(filename, peer)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:6969").parse()?;
    let root = args.next().unwrap_or_else(|| ".".to_owned());
    let resolver = Ipxe {
        files: DirectoryResolver::new(&root)?,
    };
    let server = Server::bind(addr, resolver, Config::default())?.start()?;
    println!(
        "serving boot.ipxe and {root} on {} ({})",
        server.local_addr(),
        server.backend()
    );
    // Runs until killed; a real program would call `server.stopper()` from a signal handler.
    server.wait();
    Ok(())
}
