//! Every example of the README works as written: each `eventd` command of its shell
//! blocks runs against the embedded broker with the sample config (`eventd.toml` and
//! `kafka:9092` stand for them) and exits 0, and every example event is valid.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use eventd::event::{Event, FieldNames};

/// The README's shell commands, continuation lines joined, comments dropped.
fn shell_commands(readme: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_shell = false;
    let mut pending = String::new();
    for line in readme.lines() {
        // Blocks may be indented inside a list.
        let line = line.trim_start();
        if line.starts_with("```") {
            in_shell = line == "```sh";
            continue;
        }
        if !in_shell || line.starts_with('#') || line.is_empty() {
            continue;
        }
        let line = line.split(" # ").next().unwrap_or(line).trim_end();
        match line.strip_suffix('\\') {
            Some(start) => pending.push_str(start),
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

/// The JSON objects of the README's `json` blocks and of its shell examples.
fn example_events(readme: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut in_json = false;
    for line in readme.lines() {
        let line = line.trim_start();
        if line.starts_with("```") {
            in_json = line == "```json";
            continue;
        }
        if in_json && line.starts_with('{') {
            events.push(line.to_owned());
        }
    }
    for command in shell_commands(readme) {
        if let Some(rest) = command.strip_prefix("echo '") {
            if let Some((json, _)) = rest.split_once('\'') {
                events.push(json.to_owned());
            }
        }
    }
    events
}

/// Collects what `pipe` gives, as it comes, until it closes.
fn read_on(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(read) = pipe.read(&mut buffer) {
            if read == 0 {
                break;
            }
            sink.lock()
                .expect("output")
                .push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    });
    text
}

/// A usage line (`[--json]`, `earliest|latest|...`) as one command that runs.
fn runnable(command: &str) -> String {
    command
        .replace(['[', ']'], "")
        .replace("earliest|latest|OFFSET|TIME", "earliest")
}

#[test]
fn every_example_event_of_the_readme_is_valid() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let events = example_events(&readme);
    assert!(events.len() >= 5, "found only {events:?}");
    let names = Arc::new(FieldNames::new([]));
    for event in events {
        if let Err(error) = Event::decode(Some(event.as_bytes()), &names) {
            panic!("README example event {event} is invalid: {error}");
        }
    }
}

#[test]
fn every_eventd_command_of_the_readme_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let broker = Broker::start(
        4,
        &[
            "browse",
            "like",
            "favorite",
            "comment",
            "item_stats",
            "comments.moderation",
            "comments.moderation.dlq",
            "eventd.dlq",
        ],
    );
    broker.produce("like", &events(40, 4));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("events.jsonl");
    // The README's example events, each with the topic `produce` takes from it.
    let lines: Vec<String> = example_events(&readme)
        .into_iter()
        .map(|event| match event.contains("\"topic\"") {
            true => event,
            false => event.replacen('{', "{\"topic\":\"like\",", 1),
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").expect("events.jsonl");
    let config = root.join("config/eventd.toml");
    let binary = env!("CARGO_BIN_EXE_eventd");
    let commands: Vec<String> = shell_commands(&readme)
        .into_iter()
        .filter(|command| command.contains("eventd "))
        .filter(|command| !command.starts_with("cargo ") && !command.starts_with("curl "))
        .collect();
    assert!(commands.len() >= 10, "found only {commands:#?}");
    for command in commands {
        let script = runnable(&command)
            .replace("eventd.toml", &config.display().to_string())
            .replace("events.jsonl", &input.display().to_string())
            .replace("kafka:9092", &broker.bootstrap())
            .replace("eventd ", &format!("{binary} "));
        // `exec`, so a command stopped for reading on for good is the process killed.
        let script = match script.contains('|') {
            true => script,
            false => format!("exec {script}"),
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("EVENTD__KAFKA__BROKERS", broker.bootstrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs");
        let stdout = read_on(child.stdout.take().expect("stdout"));
        let stderr = read_on(child.stderr.take().expect("stderr"));
        let follows = command.contains("--follow");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut fed = false;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if follows && !fed && Instant::now() + Duration::from_secs(55) > deadline {
                // Reading on: what arrives now must show up.
                broker.produce("like", &events(1, 1));
                fed = true;
            }
            // `--follow` reads on for good: it works once it printed what arrived.
            if (follows && !stdout.lock().expect("stdout").is_empty()) || Instant::now() >= deadline
            {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The readers end once the process is gone and its pipes closed.
        std::thread::sleep(Duration::from_millis(200));
        let (stdout, stderr) = (
            stdout.lock().expect("stdout").clone(),
            stderr.lock().expect("stderr").clone(),
        );
        match status {
            Some(status) => assert_eq!(
                status.code(),
                Some(0),
                "README command `{command}` failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
            ),
            None => assert!(
                follows && !stdout.is_empty(),
                "README command `{command}` did not finish\nstdout:\n{stdout}\nstderr:\n{stderr}"
            ),
        }
    }
}
