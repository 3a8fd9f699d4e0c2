//! Running a client program with a deadline.

use std::fs;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::TempDir;

/// What a finished (or killed) program left behind.
#[derive(Debug)]
pub struct Finished {
    /// The command line, for messages.
    pub command: String,
    /// `None` if the deadline passed and the program was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// A multi-line account for an `Err` or a panic message.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(status) => status.to_string(),
            None => format!("killed after {:.1?} (deadline passed)", self.elapsed),
        };
        format!(
            "{}\n  => {status}\n  stdout: {}\n  stderr: {}",
            self.command,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `cmd` with stdin closed and stdout/stderr captured (through files, so a chatty program
/// can never block on a full pipe), killing it by PID if it is still running after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Finished {
    let command = describe(&cmd);
    let dir = TempDir::new("run");
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let out = fs::File::create(&out_path).expect("create stdout capture");
    let err = fs::File::create(&err_path).expect("create stderr capture");
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() >= timeout => {
                // `Child::kill` is SIGKILL to this child's PID, nothing broader.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot wait for {command}: {e}"),
        }
    };
    let elapsed = start.elapsed();
    let read = |path| String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned();
    Finished {
        command,
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
        elapsed,
    }
}

/// `cmd` as a shell-like line: `prog 'arg one' arg2`.
fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        line.push(' ');
        if !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=[]@%+,".contains(c))
        {
            line.push_str(&arg);
        } else {
            line.push('\'');
            line.push_str(&arg.replace('\'', r"'\''"));
            line.push('\'');
        }
    }
    line
}
