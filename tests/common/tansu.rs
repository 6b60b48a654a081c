//! A real Kafka-compatible broker for black-box tests: one `tansu broker` process per
//! test, on its own loopback port with its own storage in a tempdir, so tests run in
//! parallel without sharing state. It can be stopped and restarted on the same port
//! and storage to simulate a broker outage.
//!
//! Tansu 0.6.0 quirks met here, and what this harness does about them:
//! - `sqlite://` followed by an absolute path drops the leading `/` and opens the path
//!   relative to the working directory; an absolute path needs `sqlite:////abs/path`.
//!   The process also runs inside its tempdir, so a relative fallback would land there.
//! - Topics are not created on first use: they are created with CreateTopics, and
//!   creation waits until metadata shows every partition with a leader.
//! - sqlite storage fetches each record's headers with a query that scans the whole
//!   header table (it has no index), so reading costs grow with every header stored:
//!   quadratic over a test. Records eventd forwards carry three headers each. A reader
//!   tailing an output topic while eventd writes it made eventd 8-10x slower (20,000
//!   events: 2.6s without, 21-26s with). `Broker::wait_for` therefore reads each record
//!   once, and tests that move tens of thousands of events use fewer on tansu.
//! - A fetch sleeps at least half of the client's `fetch.wait.max.ms` (all of it below
//!   250ms) even when it found data: with librdkafka's default of 500ms every fetch
//!   takes 250ms or more. Readers here ask for 10ms.
//! - `memory://` storage reports high watermarks below what it stores after concurrent
//!   produces (35,880 of 40,000 records), and a consumer resuming from a commit on it
//!   skipped 1,483 offsets of one partition. It is not usable for at-least-once tests;
//!   sqlite storage is the default and also the only one that survives a restart.
//! - No initial rebalance delay: the first member of a group gets every partition and
//!   a second member joining moments later triggers a rebalance (revoke, then assign),
//!   where the embedded broker waits 100ms and assigns both at once. Tests with
//!   `members = 2` pass on both; the tansu runs exercise a mid-stream handover.
//! - A bind failure (port taken) is logged and the process exits with status 0.
//! - A member whose session expires across a SIGTERM restart can stay in the group as
//!   its leader: JoinGroup keeps naming the dead member, SyncGroup answers "rebalance
//!   in progress" forever, and the consumer never gets partitions again (seen once in
//!   four loaded runs, with librdkafka's `cgrp` log). The clean-restart outage test
//!   keeps the session alive across the restart for that reason.
//! - SIGTERM with clients connected: tansu shuts its storage down at once but keeps the
//!   connections open for about 5s, answering with storage errors (a worker thread
//!   panics with `unreachable!()` in an OffsetCommit), then exits. `stop()` allows 10s.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::tls::{Certificates, TlsFront};

const INSTALL: &str = "cargo install tansu --locked --version 0.6.0 --features dynostore,libsql";
/// A cold start prints `ready` within a second; the margin covers a loaded CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop()` lets tansu shut down on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where tansu keeps topics, messages and committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `sqlite://` in the broker's tempdir: survives `stop()` + `restart()`.
    Sqlite,
    /// `memory://`: faster, gone when the process ends (so no `restart()`), and with
    /// wrong high watermarks under concurrent produces: see the module notes.
    Memory,
}

/// A `tansu broker` process; killed and reaped on drop.
pub struct Tansu {
    binary: PathBuf,
    storage: Storage,
    port: Mutex<u16>,
    child: Mutex<Option<Child>>,
    log: PathBuf,
    dir: tempfile::TempDir,
    /// `--authentication`: every request but ApiVersions and SASL needs a SASL login.
    authentication: AtomicBool,
    /// The TLS front clients reach tansu through, when `secure` put one up; tansu then
    /// advertises its address instead of its own.
    front: Mutex<Option<TlsFront>>,
    /// librdkafka properties the harness's own clients need once the broker is secured.
    client_properties: Mutex<Vec<(String, String)>>,
}

/// How `Tansu::secure` locks the broker down.
pub struct Secured<'a> {
    /// SASL is required (tansu checks SCRAM passwords; it accepts any PLAIN password).
    pub authentication: bool,
    /// A TLS front with these certificates; `true` requires a client certificate.
    pub tls: Option<(&'a Certificates, bool)>,
    /// librdkafka properties for the harness's own clients (admin, producers, readers).
    pub client: Vec<(&'a str, String)>,
}

impl Tansu {
    /// Starts a broker with sqlite storage (the storage a restart needs).
    pub fn start() -> Tansu {
        Tansu::start_with(Storage::Sqlite)
    }

    pub fn start_with(storage: Storage) -> Tansu {
        let binary = binary();
        let dir = tempfile::Builder::new()
            .prefix("eventd-tansu-")
            .tempdir()
            .expect("tempdir for tansu");
        let log = dir.path().join("tansu.log");
        let tansu = Tansu {
            binary,
            storage,
            port: Mutex::new(0),
            child: Mutex::new(None),
            log,
            dir,
            authentication: AtomicBool::new(false),
            front: Mutex::new(None),
            client_properties: Mutex::new(Vec::new()),
        };
        // The port is only free when probed: another test may bind it before tansu does.
        let mut attempts = Vec::new();
        for _ in 0..3 {
            let port = super::free_port();
            *tansu.port.lock().expect("port lock") = port;
            match tansu.spawn_and_wait() {
                Ok(child) => {
                    *tansu.child.lock().expect("child lock") = Some(child);
                    return tansu;
                }
                Err(failure) if failure.port_taken => attempts.push(failure.reason),
                Err(failure) => tansu.fail("start", &failure.reason),
            }
        }
        tansu.fail(
            "start",
            &format!("every port tried was taken: {}", attempts.join("; ")),
        )
    }

    /// `host:port` for `bootstrap.servers`: the TLS front when there is one.
    pub fn bootstrap(&self) -> String {
        match self.front.lock().expect("front lock").as_ref() {
            Some(front) => front.address().to_string(),
            None => format!("127.0.0.1:{}", self.port()),
        }
    }

    /// A client configuration for this broker, with the properties `secure` set.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        for (key, value) in self
            .client_properties
            .lock()
            .expect("properties lock")
            .iter()
        {
            config.set(key, value);
        }
        config
    }

    /// Creates a SCRAM user (`mechanism` is `scram256` or `scram512`) with tansu's own
    /// tool. Only before `secure` switches authentication on: the tool has no SASL.
    pub fn create_user(&self, name: &str, password: &str, mechanism: &str) {
        assert!(
            !self.authentication.load(Ordering::Relaxed),
            "tansu create_user(): `tansu user create` cannot log in; create users before `secure`"
        );
        let output = Command::new(&self.binary)
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port()))
            .args(["--mechanism", mechanism, name, password])
            .output()
            .unwrap_or_else(|error| self.fail("create user", &error.to_string()));
        if !output.status.success() {
            self.fail(
                "create user",
                &format!(
                    "`tansu user create {name}` exited {}: {}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            );
        }
    }

    /// Gives a SCRAM user a new password with tansu's own tool, which cannot log in: the
    /// broker is restarted without authentication for it and then locked again, so
    /// every client loses its connections and must log in anew.
    pub fn change_password(&self, name: &str, password: &str, mechanism: &str) {
        let locked = self.authentication.swap(false, Ordering::Relaxed);
        self.restart();
        self.create_user(name, password, mechanism);
        self.authentication.store(locked, Ordering::Relaxed);
        self.restart();
    }

    /// Restarts the broker locked down as `secured` says, on the same storage: users
    /// and topics made before stay. The harness's clients use `secured.client` from
    /// now on.
    pub fn secure(&self, secured: Secured<'_>) {
        self.authentication
            .store(secured.authentication, Ordering::Relaxed);
        *self.client_properties.lock().expect("properties lock") = secured
            .client
            .iter()
            .map(|(key, value)| (key.to_string(), value.clone()))
            .collect();
        match secured.tls {
            Some((certificates, require_client_certificate)) => {
                // tansu must advertise the front's port before the front exists.
                let port = super::free_port();
                *self.front.lock().expect("front lock") = Some(TlsFront::start(
                    port,
                    ([127, 0, 0, 1], self.port()).into(),
                    certificates,
                    require_client_certificate,
                ));
            }
            None => *self.front.lock().expect("front lock") = None,
        }
        self.restart();
    }

    /// Why the TLS front refused each handshake it refused; empty without a front.
    pub fn tls_refusals(&self) -> Vec<String> {
        self.front
            .lock()
            .expect("front lock")
            .as_ref()
            .map(TlsFront::refused)
            .unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        *self.port.lock().expect("port lock")
    }

    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// The file tansu's stdout and stderr go to, over every start.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().expect("child lock");
        match child.as_mut() {
            Some(process) => process.try_wait().expect("try_wait on tansu").is_none(),
            None => false,
        }
    }

    /// Stops the broker like an operator would (SIGTERM, then SIGKILL after a grace);
    /// storage and port are kept for `restart()`.
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().expect("child lock").take() else {
            panic!("tansu stop(): the broker is not running");
        };
        // SIGTERM through kill(1): std only sends SIGKILL.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if child.try_wait().expect("try_wait on tansu").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the broker without warning (a crash); storage and port are kept.
    pub fn kill(&self) {
        let Some(mut child) = self.child.lock().expect("child lock").take() else {
            panic!("tansu kill(): the broker is not running");
        };
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the broker again on the same port and storage after `stop()` or `kill()`.
    pub fn restart(&self) {
        assert!(
            self.storage == Storage::Sqlite,
            "tansu restart(): memory storage does not survive a restart; use Storage::Sqlite"
        );
        if self.child.lock().expect("child lock").is_some() {
            self.stop();
        }
        // The old listener's port can stay busy for a moment after the process is gone.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.spawn_and_wait() {
                Ok(child) => {
                    *self.child.lock().expect("child lock") = Some(child);
                    return;
                }
                Err(failure) if failure.port_taken && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(failure) => self.fail("restart", &failure.reason),
            }
        }
    }

    /// Creates `name` with `partitions` through the CreateTopics API and waits until
    /// metadata shows every partition with a leader.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .expect("admin client for tansu");
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(Duration::from_secs(10)));
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = futures::executor::block_on(admin.create_topics([&topic], &options))
            .unwrap_or_else(|error| {
                self.fail(
                    "create topic",
                    &format!("CreateTopics {name:?} failed: {error}"),
                )
            });
        for result in results {
            if let Err((topic, code)) = result {
                self.fail(
                    "create topic",
                    &format!("CreateTopics {topic:?} answered {code:?}"),
                );
            }
        }
        self.wait_for_topic(name, partitions);
    }

    fn wait_for_topic(&self, name: &str, partitions: i32) {
        let client: BaseConsumer = self
            .client_config()
            .create()
            .expect("metadata client for tansu");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::from("no metadata yet");
        while Instant::now() < deadline {
            match client.fetch_metadata(Some(name), Duration::from_secs(5)) {
                Ok(metadata) => {
                    let ready = metadata.topics().iter().any(|topic| {
                        topic.name() == name
                            && topic.error().is_none()
                            && topic.partitions().len() == partitions as usize
                            && topic.partitions().iter().all(|p| p.leader() >= 0)
                    });
                    if ready {
                        return;
                    }
                    last = format!(
                        "metadata: {:?}",
                        metadata
                            .topics()
                            .iter()
                            .map(|t| (t.name(), t.error(), t.partitions().len()))
                            .collect::<Vec<_>>()
                    );
                }
                Err(error) => last = error.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.fail(
            "create topic",
            &format!(
                "topic {name:?} with {partitions} partitions never showed in metadata: {last}"
            ),
        )
    }

    /// The last `lines` lines tansu printed, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn storage_url(&self) -> String {
        match self.storage {
            // Four slashes: tansu reads `sqlite:///abs` as the relative path `abs`.
            Storage::Sqlite => format!("sqlite:///{}", self.dir.path().join("tansu.db").display()),
            Storage::Memory => "memory://tansu/".to_owned(),
        }
    }

    /// Spawns `tansu broker` and waits until it printed `ready` and accepts connections.
    fn spawn_and_wait(&self) -> Result<Child, StartFailure> {
        let port = self.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = match self.front.lock().expect("front lock").as_ref() {
            Some(front) => format!("tcp://{}", front.address()),
            None => url.clone(),
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("tansu log file");
        let _ = writeln!(
            log,
            "=== eventd tests: starting {} on {url} (advertised {advertised}) with {}{} ===",
            self.binary.display(),
            self.storage_url(),
            if self.authentication.load(Ordering::Relaxed) {
                ", authentication on"
            } else {
                ""
            }
        );
        // Only what this start prints counts when looking for `ready`.
        let from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let err = log.try_clone().expect("tansu log file");
        let mut command = Command::new(&self.binary);
        command
            .arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&advertised)
            .arg("--storage-engine")
            .arg(self.storage_url());
        if self.authentication.load(Ordering::Relaxed) {
            command.arg("--authentication");
        }
        let mut child = command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|error| {
                self.fail(
                    "start",
                    &format!("cannot run {}: {error}", self.binary.display()),
                )
            });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let printed = read_from(&self.log, from);
            if let Some(status) = child.try_wait().expect("try_wait on tansu") {
                return Err(StartFailure {
                    port_taken: printed.contains("in use") || printed.contains("AddrInUse"),
                    reason: format!("tansu exited with {status} before it was ready"),
                });
            }
            if printed.contains("ready in")
                && TcpStream::connect_timeout(
                    &([127, 0, 0, 1], port).into(),
                    Duration::from_secs(1),
                )
                .is_ok()
            {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartFailure {
                    port_taken: false,
                    reason: format!(
                        "not ready within {READY_TIMEOUT:?} (no `ready in` line or port {port} closed)"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn fail(&self, what: &str, reason: &str) -> ! {
        panic!(
            "tansu {what} failed: {reason}\n\
             binary: {} (set TANSU=/path/to/tansu to choose another; install 0.6.0 with `{INSTALL}`)\n\
             storage: {}\nlog {} (kept after the test), last lines:\n{}",
            self.binary.display(),
            self.storage_url(),
            self.log.display(),
            self.log_tail(40)
        )
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            if let Some(mut process) = child.take() {
                let _ = process.kill();
                let _ = process.wait();
            }
        }
        // A failed test keeps the broker's log and storage for a look afterwards.
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "tansu log and storage kept in {}",
                self.dir.path().display()
            );
        }
    }
}

struct StartFailure {
    port_taken: bool,
    reason: String,
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_string(&mut text);
        }
    }
    text
}

/// `$TANSU`, else `tansu` on PATH, else `~/.cargo/bin/tansu`; panics with the install
/// command when none exists, because a broker test that silently skips proves nothing.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "TANSU={} is not a file; point TANSU at a tansu 0.6.0 binary or unset it to use \
             `tansu` from PATH (install: `{INSTALL}`)",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("tansu"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    if let Some(path) = on_path {
        return path;
    }
    // cargo's own bin directory, however the user configured it, then the default one.
    let cargo_bins = [
        std::env::var_os("CARGO_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")),
    ];
    let installed = cargo_bins
        .into_iter()
        .flatten()
        .map(|home| home.join("bin").join("tansu"))
        .find(|candidate| candidate.is_file());
    match installed {
        Some(path) => path,
        None => panic!(
            "tansu not found: TANSU is unset, no `tansu` on PATH, none in ~/.cargo/bin. \
             These tests need a real broker; install it with `{INSTALL}` \
             (about 20-30 minutes on 2 cores), or set TANSU=/path/to/tansu"
        ),
    }
}
