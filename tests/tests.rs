// The integration tests: one binary (`cargo test --test integration`) that starts the real
// `ringtftpd` on free loopback ports and talks to it. Each module below is one subject; add a
// test to the module it belongs to, and a module only for a new subject.
//
// A test that needs a client which is not installed prints "skipping: NAME not installed" and
// passes, unless RINGTFTP_REQUIRE_CLIENTS is set (`.ci/run` sets it and installs them all).

// Scratch directories, file contents, SHA-256, the daemon under test and the real clients.
mod util;

// Downloads with Debian's real clients (tftp-hpa, atftp, curl, busybox), compared by SHA-256.
mod clients {
    // To come: every client x sizes 0, 1, 511, 512, 513 and 1 MiB (block boundaries) x blksize
    // and windowsize (atftp only), over 127.0.0.1 and ::1; a missing file seen through each
    // client's own failure report; netascii (tftp-hpa decodes it, curl keeps the wire bytes).
}
