//! `[kafka.security]`: secrets reach librdkafka and nothing else. A planted password
//! must not appear in logs at trace level with librdkafka's `debug=all`, in `/metrics`,
//! in `check-config` output or in a panic, while a planted non-secret marker does
//! (so the check is looking at output that would show it).

#![cfg(feature = "fault-injection")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const SECRET: &str = "s3cret-planted-9f2e";
const MARKER: &str = "marker-client-4c1b";

fn security_section(password: &str) -> String {
    format!(
        r#"
[kafka.security]
protocol = "sasl_plaintext"
sasl_mechanism = "PLAIN"
username = "reader"
password = "{password}"
"#
    )
}

fn security_body(password: &str) -> String {
    format!(
        r#"{}
{COPY_LIKE_TO_OUT}

[[handlers]]
name = "crash"
kind = "fault"
consumer = "main"
action = "panic"
every = 1
once = true
"#,
        security_section(password)
    )
}

#[test]
fn a_planted_secret_never_shows_while_a_marker_does() {
    // No broker answers (the mock cluster has no SASL): librdkafka keeps trying, and
    // with debug=all at trace level it prints its whole configuration and every
    // connection attempt.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("eventd.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[log]\nformat = \"json\"\nlevel = \"trace\"\n{}",
            free_port(),
            // No output topic: the daemon starts its consumers without first checking
            // that outputs exist, which needs a broker.
            security_section("env:EVENTD_TEST_PASSWORD")
                + "\n[[consumers]]\nname = \"main\"\ntopics = [\"like\"]\n\n[[handlers]]\nname = \"seen\"\nkind = \"log\"\nconsumer = \"main\"\n"
        ),
    )
    .expect("config");
    let eventd = start_with(
        dir,
        config,
        port,
        &[
            ("EVENTD_TEST_PASSWORD", SECRET.to_owned()),
            ("EVENTD__KAFKA__CLIENT_ID", MARKER.to_owned()),
            ("EVENTD__KAFKA__OPTIONS__DEBUG", "all".to_owned()),
        ],
    );
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| {
            let logs = e.logs();
            logs.contains(&format!("client.id = {MARKER}"))
                && logs.contains("sasl.password = ")
                && logs.contains("\"fac\":\"FAIL\"")
        }),
        "librdkafka's debug output never showed its configuration and a failed connection: {}",
        eventd.logs()
    );
    let metrics = eventd.scrape();
    let logs = eventd.logs();
    assert!(!logs.contains(SECRET), "the secret is in the logs");
    assert!(!metrics.contains(SECRET), "the secret is in /metrics");

    // check-config, valid and with an error elsewhere, never echoes it.
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, extra) in [
        ("valid.toml", ""),
        ("invalid.toml", "\n[producer]\nlinger = \"soon\"\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[kafka]\nbrokers = \"{}\"\n{}{extra}",
                format!("127.0.0.1:{}", free_port()),
                security_body(SECRET)
            ),
        )
        .expect("config");
        let output = Command::new(env!("CARGO_BIN_EXE_eventd"))
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("check-config runs");
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!shown.contains(SECRET), "{name}: {shown}");
    }
}

#[test]
fn security_keys_are_refused_in_kafka_options_and_unreadable_secrets_name_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("raw.toml");
    std::fs::write(
        &raw,
        format!("[kafka.options]\n\"sasl.password\" = \"{SECRET}\"\n\"statistics.interval.ms\" = \"1000\"\n{COPY_LIKE_TO_OUT}"),
    )
    .expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .arg("check-config")
        .arg(&raw)
        .output()
        .expect("runs");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(78), "{shown}");
    assert!(shown.contains("kafka.security.password"), "{shown}");
    assert!(shown.contains("metrics.lag_interval"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");

    let unset = dir.path().join("unset.toml");
    std::fs::write(&unset, security_body("env:EVENTD_TEST_NEVER_SET")).expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .arg("check-config")
        .arg(&unset)
        .output()
        .expect("runs");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(78), "{shown}");
    assert!(
        shown.contains("kafka.security.password") && shown.contains("EVENTD_TEST_NEVER_SET"),
        "{shown}"
    );
}

// Secured brokers. tansu 0.6 checks SCRAM passwords (`--authentication`; it accepts any
// PLAIN password, so PLAIN proves nothing there) and has no TLS of its own: it refuses
// `--cert` with `--key`, and `--cert` alone leaves it answering nothing to a TLS hello.
// TLS is tested through the harness's TLS front (`tests/common/tls.rs`), with tansu
// advertising the front's address.

const EVENTD_PASSWORD: &str = "scram-256-pw-e1b7";
const OPERATOR_PASSWORD: &str = "scram-512-pw-0c5d";
const KEY_PASSWORD: &str = "client-key-pw-93aa";

/// librdkafka properties of a SASL/SCRAM login, for the harness's own clients.
fn scram_client<'a>(
    protocol: &str,
    mechanism: &str,
    user: &str,
    password: &str,
) -> Vec<(&'a str, String)> {
    vec![
        ("security.protocol", protocol.to_owned()),
        ("sasl.mechanism", mechanism.to_owned()),
        ("sasl.username", user.to_owned()),
        ("sasl.password", password.to_owned()),
    ]
}

fn tls_client<'a>(certificates: &Certificates) -> Vec<(&'a str, String)> {
    vec![
        (
            "ssl.ca.location",
            certificates.path("ca.pem").display().to_string(),
        ),
        (
            "ssl.certificate.location",
            certificates.path("client.pem").display().to_string(),
        ),
        (
            "ssl.key.location",
            certificates.path("client.key").display().to_string(),
        ),
    ]
}

/// A consumer named `name` copying `like` to `out`, connecting as `security` says.
fn copy_body(name: &str, security: &str) -> String {
    format!(
        "{security}\n[[consumers]]\nname = \"{name}\"\ntopics = [\"like\"]\n\n[[handlers]]\nname = \"copy\"\nkind = \"forward\"\nconsumer = \"{name}\"\noutput = \"out\"\n"
    )
}

/// eventd copies every event, commits to the end and is ready: the pipeline works over
/// this connection.
fn expect_pipeline(broker: &Broker, eventd: &Eventd, total: usize) {
    broker.expect_every_id("out", total, Duration::from_secs(90), eventd);
    broker.expect_committed_to_end("eventd-main", "like", Duration::from_secs(60), eventd);
    assert!(
        eventd.wait_until(Duration::from_secs(30), |e| {
            matches!(e.http_get("/readyz"), Some((200, _)))
        }),
        "not ready: {:?}\n{}",
        eventd.http_get("/readyz"),
        eventd.logs()
    );
}

/// An eventd that cannot log in or verify the broker: it refuses to start (exit 69,
/// the startup check cannot read the brokers' metadata) and its log says why, naming
/// librdkafka's own reason (one of `why`); its group never commits.
fn expect_refused(broker: &Broker, eventd: &mut Eventd, group: &str, why: &[&str]) {
    let status = eventd.wait_exit(Duration::from_secs(60));
    let logs = eventd.logs();
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(69),
        "an eventd that cannot connect did not refuse to start:\n{logs}"
    );
    let refusal = eventd.log_lines("cannot start");
    assert!(
        refusal.iter().any(|line| {
            let error = line["error"].as_str().unwrap_or_default();
            error.contains("last broker error")
                && why
                    .iter()
                    .any(|reason| error.to_lowercase().contains(&reason.to_lowercase()))
        }),
        "the refusal does not say {why:?}:\n{logs}"
    );
    let committed = broker.committed(group, "like");
    assert!(
        committed.iter().all(|(_, offset)| offset.is_none()),
        "{group} committed {committed:?} without being able to connect"
    );
}

/// tansu requiring a SASL login, with the SCRAM-SHA-256 user `eventd` and the
/// SCRAM-SHA-512 user `operator` (the harness's own clients log in as this one), and
/// the topics `like` and `out`.
fn scram_broker() -> Broker {
    scram_broker_with(EVENTD_PASSWORD)
}

/// As `scram_broker`, with `eventd_password` as the password of the user `eventd`.
fn scram_broker_with(eventd_password: &str) -> Broker {
    let tansu = Tansu::start();
    tansu.create_user("eventd", eventd_password, "scram256");
    tansu.create_user("operator", OPERATOR_PASSWORD, "scram512");
    tansu.secure(Secured {
        authentication: true,
        tls: None,
        client: scram_client(
            "sasl_plaintext",
            "SCRAM-SHA-512",
            "operator",
            OPERATOR_PASSWORD,
        ),
    });
    Broker::from_tansu(tansu, 2, &["like", "out"])
}

#[test]
fn eventd_works_over_sasl_scram_on_tansu_and_a_wrong_login_is_refused() {
    let broker = scram_broker();
    let total = 40;
    broker.produce("like", &events(total, 8));

    let secrets = tempfile::tempdir().expect("tempdir");
    let password_file = secrets.path().join("kafka-password");
    std::fs::write(&password_file, format!("{EVENTD_PASSWORD}\n")).expect("password file");
    let login = |mechanism: &str, user: &str, password: &str| {
        format!(
            "[kafka.security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"{mechanism}\"\nusername = \"{user}\"\npassword = \"{password}\"\n"
        )
    };
    let eventd = start_eventd(
        &broker,
        &copy_body(
            "main",
            &login(
                "SCRAM-SHA-256",
                "eventd",
                &format!("file:{}", password_file.display()),
            ),
        ),
    );
    let mut wrong_password = start_eventd(
        &broker,
        &copy_body(
            "intruder",
            &login("SCRAM-SHA-256", "eventd", "not-the-password"),
        ),
    );
    // No login at all: tansu answers only ApiVersions and SASL before one.
    let mut anonymous = start_eventd(&broker, &copy_body("anonymous", ""));

    expect_pipeline(&broker, &eventd, total);
    expect_refused(
        &broker,
        &mut wrong_password,
        "eventd-intruder",
        &["SCRAM authentication failed"],
    );
    expect_refused(
        &broker,
        &mut anonymous,
        "eventd-anonymous",
        // tansu drops a client that sends anything but a login first; librdkafka sees
        // the connection reset or closed, or its next send fail on the closed socket,
        // depending on when (all three seen).
        &["reset by peer", "closed by peer", "broken pipe"],
    );

    // The operator reads what eventd wrote with `eventd tail`, logged in with
    // SCRAM-SHA-512 from the environment.
    let dir = tempfile::tempdir().expect("tempdir");
    let tail_config = dir.path().join("tail.toml");
    std::fs::write(
        &tail_config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n\n{}",
            broker.bootstrap(),
            login("SCRAM-SHA-512", "operator", "env:EVENTD_TEST_PASSWORD")
        ),
    )
    .expect("tail config");
    let output = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .args(["tail", "--config"])
        .arg(&tail_config)
        .args(["--topic", "out", "--json"])
        .env("EVENTD_TEST_PASSWORD", OPERATOR_PASSWORD)
        .output()
        .expect("eventd tail runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        printed.lines().count(),
        broker.read_all("out").len(),
        "{printed}"
    );
    for id in 0..total {
        assert!(
            printed.contains(&format!("\\\"e-{id}\\\"")),
            "e-{id} not tailed: {printed}"
        );
    }
    // The one-shot commands with the wrong password fail naming librdkafka's reason.
    let wrong_config = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong_config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n\n{}",
            broker.bootstrap(),
            copy_body(
                "main",
                &login("SCRAM-SHA-256", "eventd", "not-the-password")
            )
        ),
    )
    .expect("wrong config");
    let commands: Vec<(&str, Vec<&str>)> = vec![
        ("tail", vec!["tail", "--topic", "out", "--config"]),
        (
            "offsets",
            vec!["offsets", "show", "--consumer", "main", "--config"],
        ),
        (
            "replay",
            vec![
                "replay",
                "--from",
                "out",
                "--handler",
                "copy",
                "--dry-run",
                "--config",
            ],
        ),
    ];
    let running: Vec<(&str, std::process::Child)> = commands
        .into_iter()
        .map(|(name, args)| {
            let child = Command::new(env!("CARGO_BIN_EXE_eventd"))
                .args(args)
                .arg(&wrong_config)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("command runs");
            (name, child)
        })
        .collect();
    for (name, child) in running {
        let output = child.wait_with_output().expect("command ends");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(69), "eventd {name}: {stderr}");
        assert!(
            stderr
                .lines()
                .any(|line| line.starts_with(&format!("eventd {name}: "))
                    && line.contains("last broker error")
                    && line.contains("SCRAM authentication failed")),
            "eventd {name} does not say why the brokers refused it: {stderr}"
        );
    }

    for daemon in [&eventd, &wrong_password, &anonymous] {
        let logs = daemon.logs();
        for secret in [EVENTD_PASSWORD, OPERATOR_PASSWORD] {
            assert!(!logs.contains(secret), "a password is in the logs");
        }
    }
}

#[test]
fn a_password_from_the_environment_is_taken_as_written_and_logs_in() {
    // Read as a number, it would be 123; read as a boolean-looking word, lowercased.
    let password = "0123";
    let broker = scram_broker_with(password);
    let total = 20;
    broker.produce("like", &events(total, 4));
    let eventd = start_eventd_with_env(
        &broker,
        &copy_body(
            "main",
            "[kafka.security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nusername = \"eventd\"\n",
        ),
        &[("EVENTD__KAFKA__SECURITY__PASSWORD", password.to_owned())],
    );
    expect_pipeline(&broker, &eventd, total);
}

/// The client key, encrypted with `KEY_PASSWORD` (PKCS#8), beside the others.
fn encrypt_client_key(certificates: &Certificates) -> std::path::PathBuf {
    let pem = std::fs::read(certificates.path("client.key")).expect("client key");
    let key = openssl::pkey::PKey::private_key_from_pem(&pem).expect("client key PEM");
    let encrypted = key
        .private_key_to_pem_pkcs8_passphrase(
            openssl::symm::Cipher::aes_256_cbc(),
            KEY_PASSWORD.as_bytes(),
        )
        .expect("encrypt client key");
    let path = certificates.path("client.encrypted.key");
    std::fs::write(&path, encrypted).expect("write encrypted key");
    path
}

#[test]
fn eventd_works_over_tls_with_a_client_certificate_and_refuses_an_unknown_broker() {
    let certificates = Certificates::generate();
    let encrypted_key = encrypt_client_key(&certificates);
    let tansu = Tansu::start();
    let mut client = tls_client(&certificates);
    client.push(("security.protocol", "ssl".to_owned()));
    tansu.secure(Secured {
        authentication: false,
        tls: Some((&certificates, true)),
        client,
    });
    let broker = Broker::from_tansu(tansu, 2, &["like", "out"]);
    let total = 40;
    broker.produce("like", &events(total, 8));

    let tls = |ca: &std::path::Path, client_certificate: bool| {
        let mut section = format!(
            "[kafka.security]\nprotocol = \"ssl\"\nca = \"{}\"\n",
            ca.display()
        );
        if client_certificate {
            section += &format!(
                "certificate = \"{}\"\nkey = \"{}\"\nkey_password = \"env:EVENTD_TEST_KEY_PASSWORD\"\n",
                certificates.path("client.pem").display(),
                encrypted_key.display()
            );
        }
        section
    };
    let key_password = [("EVENTD_TEST_KEY_PASSWORD", KEY_PASSWORD.to_owned())];
    let eventd = start_eventd_with_env(
        &broker,
        &copy_body("main", &tls(&certificates.path("ca.pem"), true)),
        &key_password,
    );
    // Another CA: the broker's certificate does not verify.
    let strangers = Certificates::generate();
    let mut unknown_broker = start_eventd_with_env(
        &broker,
        &copy_body("intruder", &tls(&strangers.path("ca.pem"), true)),
        &key_password,
    );
    let mut no_certificate = start_eventd(
        &broker,
        &copy_body("anonymous", &tls(&certificates.path("ca.pem"), false)),
    );

    expect_pipeline(&broker, &eventd, total);
    expect_refused(
        &broker,
        &mut unknown_broker,
        "eventd-intruder",
        &["certificate verify failed"],
    );
    expect_refused(
        &broker,
        &mut no_certificate,
        "eventd-anonymous",
        &["certificate required"],
    );
    let refusals = broker.tansu_process().tls_refusals();
    assert!(
        refusals
            .iter()
            .any(|why| why.to_lowercase().contains("certificate")),
        "the TLS front never refused a client without a certificate: {refusals:?}"
    );
    for daemon in [&eventd, &unknown_broker, &no_certificate] {
        assert!(
            !daemon.logs().contains(KEY_PASSWORD),
            "the key password is in the logs"
        );
    }
}

#[test]
fn verify_certificates_false_trusts_an_unknown_broker_in_the_daemon_and_commands_with_a_warning() {
    let certificates = Certificates::generate();
    let tansu = Tansu::start();
    tansu.secure(Secured {
        authentication: false,
        tls: Some((&certificates, false)),
        client: vec![
            ("security.protocol", "ssl".to_owned()),
            (
                "ssl.ca.location",
                certificates.path("ca.pem").display().to_string(),
            ),
        ],
    });
    let broker = Broker::from_tansu(tansu, 2, &["like", "out"]);
    let total = 20;
    broker.produce("like", &events(total, 4));
    // No `ca`: the broker's certificate comes from a CA nothing here trusts, which
    // eventd refuses unless told not to verify (the test above).
    let unverified = "[kafka.security]\nprotocol = \"ssl\"\nverify_certificates = false\n";
    let eventd = start_eventd(&broker, &copy_body("main", unverified));
    expect_pipeline(&broker, &eventd, total);
    let warning = "TLS certificates and host names of the brokers are NOT verified: any server that answers, an attacker in the middle included, is trusted";
    assert!(
        eventd
            .log_lines(warning)
            .iter()
            .any(|line| line["level"] == "WARN"),
        "no warning that certificates are not verified:\n{}",
        eventd.logs()
    );
    assert_eq!(eventd.metric("eventd_tls_verification_disabled", &[]), 1.0);

    // A command's clients are built the same way.
    let dir = tempfile::tempdir().expect("tempdir");
    let tail_config = dir.path().join("tail.toml");
    std::fs::write(
        &tail_config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n\n{unverified}",
            broker.bootstrap()
        ),
    )
    .expect("tail config");
    let output = Command::new(env!("CARGO_BIN_EXE_eventd"))
        .args(["tail", "--config"])
        .arg(&tail_config)
        .args(["--topic", "out", "--json"])
        .output()
        .expect("eventd tail runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{printed}{stderr}");
    assert_eq!(printed.lines().count(), total, "{printed}{stderr}");
    assert!(
        stderr.contains(warning),
        "eventd tail did not warn: {stderr}"
    );
}

#[test]
fn eventd_works_over_sasl_ssl_on_tansu() {
    let certificates = Certificates::generate();
    let tansu = Tansu::start();
    tansu.create_user("eventd", EVENTD_PASSWORD, "scram512");
    let mut client = scram_client("sasl_ssl", "SCRAM-SHA-512", "eventd", EVENTD_PASSWORD);
    client.push((
        "ssl.ca.location",
        certificates.path("ca.pem").display().to_string(),
    ));
    tansu.secure(Secured {
        authentication: true,
        tls: Some((&certificates, false)),
        client,
    });
    let broker = Broker::from_tansu(tansu, 2, &["like", "out"]);
    let total = 40;
    broker.produce("like", &events(total, 8));
    let eventd = start_eventd_with_env(
        &broker,
        &copy_body(
            "main",
            &format!(
                "[kafka.security]\nprotocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nusername = \"eventd\"\npassword = \"env:EVENTD_TEST_PASSWORD\"\nca = \"{}\"\n",
                certificates.path("ca.pem").display()
            ),
        ),
        &[("EVENTD_TEST_PASSWORD", EVENTD_PASSWORD.to_owned())],
    );
    expect_pipeline(&broker, &eventd, total);
    assert!(
        broker.tansu_process().tls_refusals().is_empty(),
        "the TLS front refused eventd: {:?}",
        broker.tansu_process().tls_refusals()
    );
}

#[test]
fn a_rotated_password_file_is_used_after_sighup_without_a_restart() {
    let broker = scram_broker();
    let secrets = tempfile::tempdir().expect("tempdir");
    let password_file = secrets.path().join("kafka-password");
    std::fs::write(&password_file, format!("{EVENTD_PASSWORD}\n")).expect("password file");
    let eventd = start_eventd(
        &broker,
        &copy_body(
            "main",
            &format!(
                "[kafka.security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nusername = \"eventd\"\npassword = \"file:{}\"\n",
                password_file.display()
            ),
        ),
    );
    let all = events(40, 8);
    broker.produce("like", &all[..20]);
    broker.expect_every_id("out", 20, Duration::from_secs(60), &eventd);

    // The cluster's operator rotates the password; every connection drops, and eventd's
    // next logins with the old one are refused.
    let rotated = "scram-256-pw-rotated-5f0e";
    broker
        .tansu_process()
        .change_password("eventd", rotated, "scram256");
    let refusals = |e: &Eventd| e.logs().matches("SCRAM authentication failed").count();
    let refused_before = refusals(&eventd);
    broker.produce("like", &all[20..]);
    assert!(
        eventd.wait_until(Duration::from_secs(60), |e| refusals(e) > refused_before),
        "eventd's old password was never refused after the rotation:\n{}",
        eventd.logs()
    );
    assert_eq!(
        ids(&broker.read_all("out")).len(),
        20,
        "events were copied without a valid login"
    );

    // The secret file is updated (as a Kubernetes Secret is) and eventd told to reload.
    std::fs::write(&password_file, format!("{rotated}\n")).expect("password file");
    eventd.signal("HUP");
    assert!(
        eventd.wait_until(Duration::from_secs(20), |e| {
            e.log_lines("config change applied")
                .iter()
                .any(|line| line["key"] == "kafka.security.password")
        }),
        "the reload did not apply the rotated password:\n{}",
        eventd.logs()
    );
    broker.expect_every_id("out", 40, Duration::from_secs(60), &eventd);
    broker.expect_committed_to_end("eventd-main", "like", Duration::from_secs(60), &eventd);
    assert!(
        eventd.is_running(),
        "eventd restarted to pick up the password"
    );
    let logs = eventd.logs();
    assert!(
        !logs.contains(EVENTD_PASSWORD) && !logs.contains(rotated),
        "a password is in the logs"
    );
}
