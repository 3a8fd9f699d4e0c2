//! The daemon's executors (`--backend`), for scenarios that run once on each: every executor
//! drives the same sans-IO session, so a scenario that passes on one and fails on another has
//! found a bug in that executor's I/O (see the `backends!` macro in tests.rs).

use std::fmt;
use std::sync::OnceLock;

/// One `--backend` the daemon can be told to run. `auto` is not one: it is whichever of these
/// the host allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The io_uring engine (`--backend io-uring`).
    IoUring,
    /// tokio-uring (`--backend tokio-uring`).
    TokioUring,
    /// tokio on epoll (`--backend epoll`).
    Epoll,
}

impl Backend {
    /// The value of `--backend` (and `RINGTFTP_BACKEND`).
    pub fn value(self) -> &'static str {
        match self {
            Backend::IoUring => "io-uring",
            Backend::TokioUring => "tokio-uring",
            Backend::Epoll => "epoll",
        }
    }

    /// `["--backend", VALUE]`, to put before a daemon's other arguments.
    pub fn args(self) -> [&'static str; 2] {
        ["--backend", self.value()]
    }

    /// `args` after `--backend VALUE`.
    pub fn with<'a>(self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = self.args().to_vec();
        all.extend_from_slice(args);
        all
    }

    /// How the start-up line names it in parentheses after the shards: `(io_uring
    /// (registered buffers))`, `(tokio-uring (registered buffers))` or `(epoll)`; registered
    /// buffers need root or a large enough `RLIMIT_MEMLOCK`, so only the start is given here.
    pub fn startup(self) -> &'static str {
        match self {
            Backend::IoUring => "(io_uring (",
            Backend::TokioUring => "(tokio-uring (",
            Backend::Epoll => "(epoll)",
        }
    }

    /// Panics unless a daemon's `log` has a start-up line naming this backend: a scenario run
    /// "on tokio-uring" that silently ran on something else would prove nothing.
    pub fn assert_serving(self, log: &str) {
        let line = log
            .lines()
            .find(|l| l.contains("serving ") && l.contains(" shard"))
            .unwrap_or_else(|| panic!("no start-up line in the log:\n{log}"));
        assert!(
            line.contains(self.startup()),
            "--backend {} should start {}: {line}",
            self.value(),
            self.startup()
        );
    }

    /// Runs `scenario` on this backend: what each test `backends!` stamps out does. Where the
    /// host blocks io_uring the two ring backends skip, saying so (a failure when
    /// `RINGTFTP_REQUIRE_CLIENTS` is set, as in CI).
    pub fn run(self, scenario: fn(Backend)) {
        if self != Backend::Epoll && !io_uring_allowed() {
            super::skip::missing(
                &format!(
                    "--backend {} needs io_uring, which this host blocks \
                     (kernel.io_uring_disabled, a seccomp profile or a kernel before 5.1)",
                    self.value()
                ),
                "run where io_uring is allowed",
            );
            return;
        }
        scenario(self);
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.value())
    }
}

/// Whether this process may create an io_uring (and so the daemon, which inherits its
/// sandbox); tried once.
fn io_uring_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| io_uring::IoUring::new(2).is_ok())
}
