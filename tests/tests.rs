// The integration tests: one binary (`cargo test --test integration`) that starts the real
// `ringtftpd` on free loopback ports and talks to it. Each module below is one subject; add a
// test to the module it belongs to, and a module only for a new subject.
//
// A test that needs a client which is not installed (or root, or a host feature) says so through
// util/skip.rs and passes, unless RINGTFTP_REQUIRE_CLIENTS is set (`.ci/run` sets it and
// installs them all); every skip is printed at once and again, as a list, when the binary exits.

/// A test with a scratch directory of its own, named after it, as ripgrep's `rgtest!` gives
/// each test its own directory: `tftptest!(name, |dir| { ... });` is `#[test] fn name()` that
/// starts with `let dir = TempDir::new("name");`.
macro_rules! tftptest {
    ($name:ident, |$dir:ident| $body:block) => {
        #[test]
        fn $name() {
            let $dir = $crate::util::TempDir::new(stringify!($name));
            $body
        }
    };
}

/// A scenario run on every executor. Every backend executes the same sans-IO session, so what
/// differs between them is I/O: receives, sends, timers, reads, descriptors, stopping. Beside
/// `fn name(backend: Backend)` (which starts its daemon with `--backend`, usually through
/// `Daemon::start_backend`), `backends!(name);` stamps out one `#[test]` per backend in a
/// module of the same name: `name::io_uring`, `name::tokio_uring` and `name::epoll`. So
/// `cargo test name` runs the scenario everywhere and `cargo test epoll` runs every scenario on
/// epoll. Where the host blocks io_uring the first two skip, saying so (util/backend.rs).
macro_rules! backends {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[test]
            fn io_uring() {
                $crate::util::Backend::IoUring.run(super::$scenario);
            }

            #[test]
            fn tokio_uring() {
                $crate::util::Backend::TokioUring.run(super::$scenario);
            }

            #[test]
            fn epoll() {
                $crate::util::Backend::Epoll.run(super::$scenario);
            }
        }
    )+};
}

// Scratch directories, file contents, SHA-256, the daemon under test and its backends, the real
// clients and a raw TFTP peer on a UDP socket (util/raw.rs: hand-made packets and a lock-step
// downloader).
mod util;

// Downloads with Debian's real clients (tftp-hpa, atftp, curl, busybox), compared by SHA-256,
// on every backend: every client (plain, with its options, atftp with 16-block windows) x sizes
// 0, 1, 511, 512, 513, 2 x 1468 and 1 MiB; atftp windowsize 4/16/64 x blksize 1468/8192 (and
// the log shows the window granted); 40 MiB with atftp at 64 x 8 KiB windows, more than its
// socket buffer holds; 40 MiB at 512-byte blocks (block number rollover); netascii (tftp-hpa
// decodes it back to the original, curl keeps the wire bytes); IPv6 ::1 with every client. And
// once: tsize announces netascii's encoded length.
mod clients;

// What must be refused or ignored: a missing file (ERROR 1 as each client reports it); `..`,
// symlinks and absolute paths out of the root (ERROR 2 / never served, no server path in the
// message); directories; WRQ (raw, tftp-hpa, curl, atftp, busybox: ERROR 2 "read-only" and
// the root unchanged); DATA/ACK/OACK on the main port (ERROR 4); ERROR on the main port (no
// reply); a repeated RRQ (one transfer, one port; on every backend); a client that never
// answers its OACK is next answered without options (that client, that file only).
mod errors;

// The server as a whole: 200 concurrent lock-step transfers from threads, all byte-exact on
// their own ports; each --backend named in the start-up line (registered buffers as root) with
// one SO_REUSEPORT main socket per shard; RINGTFTP_BACKEND=epoll, and --backend winning over
// it; io_uring by default (/proc/net/udp and ss); with io_uring blocked by a seccomp filter,
// io-uring and tokio-uring refuse to start and auto serves on epoll; SIGTERM during a 40 MiB
// transfer (it finishes, new requests get no answer, exit 0); SIGHUP logged, the daemon
// serving on. The concurrent transfers and SIGTERM run on every backend.
mod server;

// --single-port, every test on every backend: real clients (curl, tftp-hpa, atftp with 16-block
// windows, busybox) byte-exact with every reply from the main port; 64 clients on two shards
// (SO_REUSEPORT keeps each client on its shard); a client asking again from the same port gets
// its new file; stray ACKs are not answered and stray DATA gets ERROR 4, without disturbing a
// transfer.
mod single_port;

// The command line: port in use, port 69 without CAP_NET_BIND_SERVICE (as nobody through
// setpriv), a missing directory, a file as --directory, an unknown --backend or
// RINGTFTP_BACKEND (each a clear error and a non-zero exit), and --help.
mod cli;

// Hostile input against the real daemon: a corpus of malformed, illegal and abusive datagrams
// on the main port (each an ERROR or silence, no path in any message, nothing from outside the
// root); on every backend, a stray transfer ID during a transfer, a garbage flood, a client
// that vanishes mid-transfer (given up after 12 s, descriptors released) and one that closes
// its port (ICMP port unreachable: ended at once as "unreachable"); a normal transfer works
// after each. Names with an old PXE ROM's trailing 0xFF junk serve the file meant, confined.
mod hostile;

// Real packet loss on a real path: a network namespace pair joined by a veth pair, nftables
// dropping 1 %, 5 %, 10 % or 20 % of UDP each way; curl, atftp and tftp-hpa fetch 1 MiB at
// 1 % and 5 %, and loadgen 128 KiB in windows, 2 transfers at once, at 20 %; on every backend,
// the real clients 128 KiB at 5 % and loadgen at 10 %; all byte-exact, completion times and
// the server's retransmits printed and bounded; atftp in windows of 4, 8 and 16 at 1 %, the
// DATA the server sent within 25 % of the unavoidable cost. Needs root, ip and nft (skipped
// otherwise unless CI requires them).
mod faults;

// A server behind a destination-NAT virtual address (nftables in a namespace): with
// --single-port, curl, tftp-hpa and atftp (windowed) fetch byte-exact through it; without, the
// replies come from a transfer port the NAT does not rewrite, and tftp-hpa fails.
mod nat;

// Blocks that fit the path: on a 1400-byte-MTU veth, curl and atftp asking for 65464 are granted
// 1368 and fetch byte-exact; --mtu 1200 grants 1168.
mod mtu;

// Which file a request gets: --client-dirs by address (curl from 127.0.0.2 and 127.0.0.3) and by
// MAC (curl across a veth pair; needs root, ip and nft); --map-file with tftp-hpa (`\Boot\BCD`)
// and curl (`pxelinux.cfg/default` to the client's hex address), abort messages, a rewrite out
// of the root refused, a bad rule file naming its line; a file rewritten in place with its size
// and mtime put back (the new bytes, not cached chunks); a FIFO (ERROR at once, never opened);
// a new tree renamed into place and a flipped symlink root, each served within 1.5 s while a
// transfer across the swap finishes with the old bytes; --map-file re-read on SIGHUP, a bad
// one leaving the rules in force; a Raspberry Pi 4 (by MAC across a veth pair) refused a file
// past 65535 blocks of 1024, served one that fits.
mod files;

// Resources running out and files changing: a descriptor limit (new requests "Server busy",
// held transfers finish byte-exact, service resumes), the --max-buffer-mb budget (the same, and
// a netascii encoding that does not fit), a file renamed over (the snapshot is served),
// truncated or rewritten in place (ERROR, never a mix as success) — those on every backend —
// and 10 000 loadgen clients at once (all byte-exact, the daemon's peak RSS bounded); under a
// 64 MiB memory cgroup, 500 distinct 1 MiB downloads on 2 and 16 shards (no OOM kill, each
// byte-exact or busy).
mod resources;

// Operations: --user nobody started as root (served byte-exact; every task of /proc/PID/task
// shows uid 65534 and no capabilities; a root-only file is out of reach), a switch that cannot
// be made (an unknown user; nobody asked to become root, through setpriv) refuses to serve;
// socket activation through systemd-socket-activate (shards share the socket passed), with a
// passed SO_REUSEPORT socket (each shard joins the port with its own) and in single-port mode
// (one shard); READY=1 before the first answer and STOPPING=1 on SIGTERM over a NOTIFY_SOCKET of
// the test's own; the units of dist/systemd pass systemd-analyze verify; --metrics after a
// transfer, a missing file, a busy refusal and a client gone silent (counters, histogram, and a
// parser of the text format); on every backend, a UEFI tsize probe (OACK answered with ERROR 8)
// counted as outcome "probe", not "client_error", and logged at debug level only.
mod ops;

// Raspberry Pi boot partitions from inside OS images (--board, nobodd's job), built with
// mkfs.fat, mtools and sfdisk: every file of a FAT32 in MBR partition 1 (firmware, a long name,
// a nested directory, an empty and a fragmented file) byte-exact to every client on every
// backend, the serial in any case or without its leading zero; FAT12, FAT16, a GPT, a logical
// partition and a bare filesystem; a board limited to 127.0.0.2 (ERROR 2 to others); boards
// beside --directory; directories refused, `..` confined to the partition, WRQ refused, netascii;
// bad boards (missing, cut, past the end, not FAT) stopping the start and named; corrupt cluster
// chains (loops, past the last cluster) ERROR 0 at once while the rest is served; an image
// rewritten in place or renamed over read again, and on every backend one changed mid-transfer
// never served as a mix; nobodd's configuration files; nobodd-tftpd (RINGTFTP_NOBODD) serving
// the same bytes; a loop device as the image; a room of 40 Pis booting with loadgen.
mod images;
