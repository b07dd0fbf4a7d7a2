//! `kmsctl` as a user runs it: `kmsctl dev up` in the foreground, started, read and stopped
//! by tests.

// A harness for tests: where it cannot go on, the test fails there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kms_store::etcd_testing::{free_port_pair, free_ports};

/// A running `kmsctl dev up`; SIGINT and a wait when dropped, so nothing outlives the test.
#[derive(Debug)]
pub struct DevUp {
    child: Child,
    out: PathBuf,
    dir: tempfile::TempDir,
    dev: String,
}

impl DevUp {
    /// Starts `dev up` in a new temporary directory, with `extra` arguments.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// Starts `dev up` with its directory `dev` under `dir`, kept from an earlier run or new.
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_named(dir, "dev", extra)
    }

    /// Starts `dev up --dir DIR/NAME`.
    pub fn start_named(dir: tempfile::TempDir, name: &str, extra: &[&str]) -> Self {
        let ports = free_ports(4);
        let etcd = free_port_pair();
        let out = dir.path().join("dev-up.out");
        let mut cmd = Command::new(crate::bin_path("kmsctl").unwrap());
        cmd.args(["dev", "up", "--dir"])
            .arg(dir.path().join(name))
            .args(["--control-addr", &format!("127.0.0.1:{}", ports[0])])
            .args(["--data-addr", &format!("127.0.0.1:{}", ports[1])])
            .args(["--gateway-addr", &format!("127.0.0.1:{}", ports[2])])
            .args(["--console-addr", &format!("127.0.0.1:{}", ports[3])])
            .args(["--etcd-addr", &format!("127.0.0.1:{etcd}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.path().join("dev-up.err")).unwrap());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KMS_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd.spawn().unwrap();
        let mut up = Self {
            child,
            out,
            dir,
            dev: name.to_string(),
        };
        up.wait_for("Press Ctrl-C");
        up
    }

    /// What it printed so far, stdout then stderr.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.path().join("dev-up.err")).unwrap_or_default()
    }

    /// Polls the output, in a bounded loop, until it holds `line`.
    pub fn wait_for(&mut self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.output().contains(line) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("dev up exited with {status}:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} in:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `dev.json`.
    pub fn info(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dev_dir().join("dev.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The dev directory, `--dir`.
    pub fn dev_dir(&self) -> PathBuf {
        self.dir.path().join(&self.dev)
    }

    /// The directory the dev directory is in.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Stops it and hands back its directory, for a later start.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        assert!(self.stop().success(), "{}", self.output());
        let empty = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, empty)
    }

    /// SIGINT, then the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DevUp {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// What one `kmsctl` run did.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `kmsctl` against a stack's planes, as a principal, with no environment of
/// the caller's own: no `KMS_*` variables and no config file but the one a test names.
#[derive(Debug, Clone)]
pub struct Kmsctl {
    env: Vec<(String, String)>,
}

impl Kmsctl {
    /// Calls to `stack`'s planes over plain gRPC.
    pub fn new(stack: &crate::Stack) -> Self {
        Self {
            env: vec![
                (
                    "KMS_CONTROL_ADDR".into(),
                    format!("http://{}", stack.control_addr()),
                ),
                (
                    "KMS_DATA_ADDR".into(),
                    format!("http://{}", stack.data_addr()),
                ),
                (
                    "KMSCTL_CONFIG".into(),
                    stack
                        .dir()
                        .join("no-kmsctl-config.toml")
                        .display()
                        .to_string(),
                ),
            ],
        }
    }

    /// The same, with `name` set to `value` (or removed, for an empty value).
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), value.into()));
        self
    }

    /// Runs `kmsctl ARGS` as `who` (no principal for an empty `who`).
    pub fn run(&self, who: &str, args: &[&str]) -> Run {
        self.run_with_input(who, args, None)
    }

    /// Runs `kmsctl ARGS` as `who`, with `input` on stdin.
    pub fn run_with_input(&self, who: &str, args: &[&str], input: Option<&[u8]>) -> Run {
        use std::io::Write;
        let mut cmd = Command::new(crate::bin_path("kmsctl").unwrap());
        cmd.args(args);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KMS") {
                cmd.env_remove(name);
            }
        }
        for (name, value) in &self.env {
            if !value.is_empty() {
                cmd.env(name, value);
            }
        }
        if !who.is_empty() {
            cmd.env("KMS_PRINCIPAL", who);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some(bytes) = input {
            stdin.write_all(bytes).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok(&self, who: &str, args: &[&str]) -> String {
        let r = self.run(who, args);
        assert!(r.ok, "kmsctl {args:?} failed: {}", r.stderr);
        r.stdout
    }

    /// Runs a command with `--json` that must succeed; the document it printed.
    pub fn json(&self, who: &str, args: &[&str]) -> serde_json::Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let text = self.ok(who, &with_json);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// Runs a command that must fail; what it printed on stderr.
    pub fn fails(&self, who: &str, args: &[&str]) -> String {
        let r = self.run(who, args);
        assert!(!r.ok, "kmsctl {args:?} succeeded: {}", r.stdout);
        r.stderr
    }
}
