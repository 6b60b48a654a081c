//! A config says what eventd does, and its errors never say more than they should: a
//! syntax error names the file, line, column and key but never a secret on that line;
//! TLS verification is switched off only by its own key, with a warning; secret files
//! others can read are reported; a log filter that would silence everything is refused.
//! Each is checked through the binary: `check-config`, `run` and a SIGHUP reload.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;

const SECRET: &str = "s3cret-planted-7d21";

fn shown(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, body).expect("write config");
    path
}

/// 1-based number of the first line of `text` that starts with `start`.
fn line_of(text: &str, start: &str) -> usize {
    text.lines()
        .position(|line| line.starts_with(start))
        .map(|index| index + 1)
        .unwrap_or_else(|| panic!("no line starts with {start:?} in:\n{text}"))
}

/// A SASL section whose password line does not parse (`\q` is no TOML escape).
fn unparsable_password_section() -> String {
    format!(
        "\n[kafka.security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nusername = \"reader\"\npassword = \"{SECRET}\\q\"\n"
    )
}

#[test]
fn a_syntax_error_names_file_line_column_and_key_but_never_the_secret_on_that_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = format!(
        "[kafka]\nbrokers = \"127.0.0.1:{}\"\n{}{COPY_LIKE_TO_OUT}",
        free_port(),
        unparsable_password_section()
    );
    let path = write(&dir, "eventd.toml", &body);
    let line = line_of(&body, "password = ");
    let expected = format!(
        "{}: kafka.security.password: cannot parse (line {line}, column ",
        path.display()
    );

    for (command, output) in [
        ("check-config", check_config(&path)),
        ("run", run_with(&path)),
    ] {
        let printed = shown(&output);
        assert!(
            !printed.contains(SECRET),
            "{command} printed the secret:\n{printed}"
        );
        assert_eq!(output.status.code(), Some(78), "{command}: {printed}");
        assert!(
            printed.contains(&expected),
            "{command}: wanted {expected:?} in:\n{printed}"
        );
    }
}

#[test]
fn a_reload_with_a_syntax_error_on_a_secret_line_keeps_running_and_logs_no_secret() {
    let broker = Broker::start(2, &["like", "out"]);
    let eventd = start_eventd(&broker, COPY_LIKE_TO_OUT);
    let all = events(20, 4);
    broker.produce("like", &all[..10]);
    broker.expect_every_id("out", 10, Duration::from_secs(60), &eventd);

    let good = std::fs::read_to_string(&eventd.config).expect("read config");
    let bad = good + &unparsable_password_section();
    std::fs::write(&eventd.config, &bad).expect("write bad config");
    let line = line_of(&bad, "password = ");
    eventd.signal("HUP");
    let refusal = |e: &Eventd| {
        e.log_lines("reload refused; keeping the running config")
            .into_iter()
            .filter_map(|line| line["error"].as_str().map(str::to_owned))
            .find(|error| error.contains("kafka.security.password"))
    };
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| refusal(e).is_some()),
        "no refused reload naming kafka.security.password:\n{}",
        eventd.logs()
    );
    let error = refusal(&eventd).unwrap_or_default();
    assert!(
        error.contains(&eventd.config.display().to_string())
            && error.contains(&format!("line {line}, column ")),
        "the refusal names neither file nor line: {error}"
    );
    assert!(
        !eventd.logs().contains(SECRET),
        "the reload logged the secret"
    );

    // The running config is kept: events still flow.
    broker.produce("like", &all[10..]);
    broker.expect_every_id("out", 20, Duration::from_secs(60), &eventd);
    assert!(eventd.is_running(), "eventd exited after a refused reload");
}

#[test]
fn a_log_filter_that_would_silence_everything_is_refused_at_check_start_and_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "eventd.toml",
        &format!("[log]\nlevel = \"verbose-please\"\n{COPY_LIKE_TO_OUT}"),
    );
    let expected = format!(
        "{}: log.level: \"verbose-please\" names no level",
        path.display()
    );
    let checked = check_config(&path);
    let printed = shown(&checked);
    assert_eq!(checked.status.code(), Some(78), "{printed}");
    assert!(
        printed.contains(&expected),
        "wanted {expected:?} in:\n{printed}"
    );
    let ran = run_with(&path);
    let printed = shown(&ran);
    assert_eq!(ran.status.code(), Some(78), "{printed}");
    assert!(
        printed.contains(&expected),
        "wanted {expected:?} in:\n{printed}"
    );

    let broker = Broker::start(2, &["like", "out"]);
    let eventd = start_eventd(&broker, COPY_LIKE_TO_OUT);
    let all = events(20, 4);
    broker.produce("like", &all[..10]);
    broker.expect_every_id("out", 10, Duration::from_secs(60), &eventd);
    let good = std::fs::read_to_string(&eventd.config).expect("read config");
    let bad = good.replace("level = \"info\"", "level = \"verbose-please\"");
    assert_ne!(good, bad);
    std::fs::write(&eventd.config, &bad).expect("write bad config");
    eventd.signal("HUP");
    let refused = |e: &Eventd| {
        e.log_lines("reload refused; keeping the running config")
            .iter()
            .any(|line| {
                line["error"]
                    .as_str()
                    .is_some_and(|error| error.contains("log.level: \"verbose-please\""))
            })
    };
    assert!(
        eventd.wait_until(Duration::from_secs(20), refused),
        "no refused reload naming log.level:\n{}",
        eventd.logs()
    );
    broker.produce("like", &all[10..]);
    broker.expect_every_id("out", 20, Duration::from_secs(60), &eventd);
    assert!(eventd.is_running(), "eventd exited after a refused reload");
}

#[test]
fn tls_verification_cannot_be_switched_off_through_raw_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (property, value) in [
        ("enable.ssl.certificate.verification", "false"),
        ("ssl.endpoint.identification.algorithm", "none"),
    ] {
        let path = write(
            &dir,
            "eventd.toml",
            &format!(
                "[kafka]\nbrokers = \"127.0.0.1:{}\"\n\n[kafka.options]\n\"{property}\" = \"{value}\"\n{COPY_LIKE_TO_OUT}",
                free_port()
            ),
        );
        let expected = format!(
            "{}: kafka.options.\"{property}\": is set by eventd; use kafka.security.verify_certificates",
            path.display()
        );
        for (how, output) in [
            ("check-config", check_config(&path)),
            ("run", run_with(&path)),
        ] {
            let printed = shown(&output);
            assert_eq!(
                output.status.code(),
                Some(78),
                "{how} with {property}: {printed}"
            );
            assert!(
                printed.contains(&expected),
                "{how}: wanted {expected:?} in:\n{printed}"
            );
        }
    }
}

/// A config for a SASL login with the password read from `password_file`, and a
/// consumer with a log handler (no output topic, so `run` starts without a broker).
fn sasl_file_config(metrics_port: u16, password_file: &Path) -> String {
    format!(
        "[kafka]\nbrokers = \"127.0.0.1:{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n[log]\nformat = \"json\"\n\n\
         [kafka.security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nusername = \"reader\"\npassword = \"file:{}\"\n\n\
         [[consumers]]\nname = \"main\"\ntopics = [\"like\"]\n\n[[handlers]]\nname = \"seen\"\nkind = \"log\"\nconsumer = \"main\"\n",
        free_port(),
        password_file.display()
    )
}

#[test]
fn a_secret_file_others_can_read_is_warned_about_and_an_unreadable_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let secrets = tempfile::tempdir().expect("tempdir");
    let password_file = secrets.path().join("kafka-password");
    std::fs::write(&password_file, format!("{SECRET}\n")).expect("password file");
    let chmod = |mode: u32| {
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(mode))
            .expect("chmod")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = write(&dir, "eventd.toml", &sasl_file_config(port, &password_file));
    let warning = format!(
        "warning: kafka.security.password: {} is readable by group or others (mode 0644)",
        password_file.display()
    );

    // Kubernetes' default for a secret volume.
    chmod(0o644);
    let checked = check_config(&config);
    let printed = shown(&checked);
    assert_eq!(checked.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains(&warning),
        "wanted {warning:?} in:\n{printed}"
    );
    assert!(!printed.contains(SECRET), "{printed}");
    chmod(0o600);
    let printed = shown(&check_config(&config));
    assert!(!printed.contains("readable by group"), "{printed}");

    chmod(0o644);
    let eventd = start_with(dir, config, port, &[]);
    let warned = |e: &Eventd| {
        e.log_lines("secret file is readable by group or others")
            .iter()
            .any(|line| {
                line["file"] == password_file.display().to_string()
                    && line["key"] == "kafka.security.password"
                    && line["level"] == "WARN"
            })
    };
    assert!(
        eventd.wait_until(Duration::from_secs(20), warned),
        "no warning naming the secret file:\n{}",
        eventd.logs()
    );
    assert_eq!(eventd.metric("eventd_tls_verification_disabled", &[]), 0.0);
    assert!(!eventd.logs().contains(SECRET), "the secret is in the logs");

    // A regular file that cannot be read, root included (root reads a mode-000 file).
    let dir = tempfile::tempdir().expect("tempdir");
    let unreadable = write(
        &dir,
        "eventd.toml",
        &format!(
            "[kafka]\nbrokers = \"127.0.0.1:{}\"\n\n[kafka.security]\nprotocol = \"ssl\"\nca = \"/proc/self/mem\"\n{COPY_LIKE_TO_OUT}",
            free_port()
        ),
    );
    let checked = check_config(&unreadable);
    let printed = shown(&checked);
    assert_eq!(checked.status.code(), Some(78), "{printed}");
    assert!(
        printed.contains("kafka.security.ca: /proc/self/mem is not a readable file"),
        "{printed}"
    );
}

/// A secret file holding a NUL byte (a binary file mounted by mistake) cannot be a
/// librdkafka credential: `check-config` and `run` refuse it naming the key, and a
/// reload that brings it is refused while the running config keeps working (before, the
/// start failed naming `kafka.options`, and a reload's rotation was refused by every
/// client).
#[test]
fn a_secret_with_a_nul_byte_is_refused_naming_its_key_at_check_start_and_reload() {
    let broker = Broker::start(2, &["like", "out"]);
    let secrets = tempfile::tempdir().expect("tempdir");
    let password_file = secrets.path().join("kafka-password");
    std::fs::write(&password_file, b"pass\0word\n").expect("password file");
    let section = format!(
        "\n[kafka.security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nusername = \"reader\"\npassword = \"file:{}\"\n",
        password_file.display()
    );
    let expected = "kafka.security.password: contains a NUL byte";

    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "eventd.toml",
        &format!(
            "[kafka]\nbrokers = \"{}\"\n{section}{COPY_LIKE_TO_OUT}",
            broker.bootstrap()
        ),
    );
    for (command, output) in [
        ("check-config", check_config(&path)),
        ("run", run_with(&path)),
    ] {
        let printed = shown(&output);
        assert_eq!(output.status.code(), Some(78), "{command}: {printed}");
        assert!(
            printed.contains(expected) && !printed.contains("kafka.options"),
            "{command}: wanted {expected:?} in:\n{printed}"
        );
    }

    let eventd = start_eventd(&broker, COPY_LIKE_TO_OUT);
    let all = events(20, 4);
    broker.produce("like", &all[..10]);
    broker.expect_every_id("out", 10, Duration::from_secs(60), &eventd);
    let good = std::fs::read_to_string(&eventd.config).expect("read config");
    std::fs::write(&eventd.config, good + &section).expect("write bad config");
    eventd.signal("HUP");
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| {
            e.log_lines("reload refused; keeping the running config")
                .iter()
                .any(|line| {
                    line["error"]
                        .as_str()
                        .is_some_and(|error| error.contains(expected))
                })
        }),
        "no refused reload naming kafka.security.password:\n{}",
        eventd.logs()
    );
    broker.produce("like", &all[10..]);
    broker.expect_every_id("out", 20, Duration::from_secs(60), &eventd);
    assert!(eventd.is_running(), "eventd exited after a refused reload");
}
