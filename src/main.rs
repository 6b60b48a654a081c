//! The `eventd` command: `run` the daemon, `check-config` a file, `produce` events, or
//! `replay` dead-lettered events through the handler that failed on them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use eventd::commands::produce::ProduceOptions;
use eventd::config::{Config, ConfigError, EXIT_CONFIG};

// glibc malloc took a third of the event path's CPU (one allocation per payload, key
// and batch slot, freed on another worker thread); mimalloc's per-thread free lists
// make those cheap. The `override` feature gives librdkafka mimalloc too: each copy
// it queues (message, header list, one block per header) is allocated on the sending
// thread and freed on the broker or report thread, the pattern that kept glibc's arena
// locks contended (a fifth of a forwarding daemon's CPU). `no_thp`: without it mimalloc
// asks for transparent huge pages, which cost forward about 40% more peak RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// From mimalloc's `mimalloc.h`, which keeps the enum's numbering across versions (it
// fills retired options with placeholders); the `mimalloc` crate does not export it.
extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    fn mi_collect(force: bool);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// `eventd produce` allocates each queued record (librdkafka's copy and its delivery
/// ticket) on the sending thread and frees it on the report thread, about a million a
/// second. mimalloc keeps freed pages resident for its default purge delay of 1 s
/// before giving them back, long enough at that rate for the held pages to cost 8-10
/// MiB of peak RSS (29-33 MiB against a budget of 28.4 for 100 B lines, 21-22 with
/// 10 ms). 10 ms is mimalloc 2's default; it costs a few hundredths of a second of
/// system time per million lines.
fn purge_freed_memory_soon() {
    // SAFETY: sets a plain integer option; mimalloc reads it at its next purge. The
    // forced collection purges now what start-up freed: a purge already scheduled
    // keeps its 1 s deadline, and later ones are not scheduled before it.
    unsafe {
        mi_option_set(MI_OPTION_PURGE_DELAY, 10);
        mi_collect(true);
    }
}

#[derive(Parser)]
#[command(
    name = "eventd",
    version,
    about = "Kafka engagement-event daemon: consume, route to handlers, produce"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file (TOML, YAML or JSON); EVENTD__SECTION__KEY variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log as JSON or for people, whatever log.format says.
        #[arg(long, value_parser = ["json", "pretty"])]
        log_format: Option<String>,
    },
    /// Validate a config file: print `ok`, or every error with its key (exit 78).
    CheckConfig {
        /// Config file (TOML, YAML or JSON), as every command takes it.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The config file, given without --config.
        #[arg(value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// Also list every topic the config reads and writes and whether each exists on
        /// kafka.brokers (exit 69 when one is missing).
        #[arg(long)]
        topics: bool,
    },
    /// Send events: JSON lines from stdin or --input, or synthetic ones with --count.
    Produce(ProduceCommand),
    /// Run one handler again on the events it dead-lettered (after a fix).
    Replay(ReplayCommand),
    /// Print a topic's events without joining a consumer group.
    Tail(TailCommand),
    /// Show a consumer's committed offsets, high watermarks and lag, or reset a stopped group's offsets.
    #[command(subcommand)]
    Offsets(OffsetsCommand),
}

#[derive(Subcommand)]
enum OffsetsCommand {
    /// Committed offset, high watermark and lag per partition.
    Show {
        #[command(flatten)]
        target: OffsetsTarget,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move the group's committed offsets; refused while the group has live members or
    /// a partitions consumer's commits say it still runs.
    Reset {
        #[command(flatten)]
        target: OffsetsTarget,
        /// earliest, latest, an offset, or an RFC 3339 time.
        #[arg(
            long,
            required_unless_present = "from_file",
            conflicts_with = "from_file"
        )]
        to: Option<eventd::commands::position::Position>,
        /// Move each partition the file lists back to the offset it holds (a file
        /// written by --save, or the output of `offsets show --json`).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Print the old and new offsets; write nothing, to Kafka or to --save.
        #[arg(long)]
        dry_run: bool,
        /// Reset even though a process's commits say it still runs (it is gone, or its
        /// commits will be overwritten knowingly).
        #[arg(long)]
        force: bool,
        /// Before committing, write the offsets replaced to this new file, for
        /// --from-file to put back.
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct OffsetsTarget {
    /// The daemon's config file.
    #[arg(long, short)]
    config: PathBuf,
    /// The [[consumers]] entry whose group is read.
    #[arg(long)]
    consumer: String,
    /// Only this topic of the consumer.
    #[arg(long)]
    topic: Option<String>,
}

#[derive(clap::Args)]
struct TailCommand {
    /// Config file; its [kafka] section is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Bootstrap servers, overriding kafka.brokers.
    #[arg(long)]
    brokers: Option<String>,
    #[arg(long)]
    topic: String,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// earliest, latest, an offset, or an RFC 3339 time.
    #[arg(long, default_value = "earliest")]
    from: eventd::commands::position::Position,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Keep reading new events instead of stopping at the end.
    #[arg(long)]
    follow: bool,
    /// One JSON object per event, with headers and timestamp.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ReplayCommand {
    /// The daemon's config file: the handler is built from it.
    #[arg(long, short)]
    config: PathBuf,
    /// The dead-letter topic to read.
    #[arg(long)]
    from: String,
    /// The handler to run; copies another handler dead-lettered are skipped.
    #[arg(long)]
    handler: String,
    /// Only copies dead-lettered at or after this time (RFC 3339, or a duration ago: 2h).
    #[arg(long, value_parser = eventd::commands::replay::parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only copies dead-lettered before this time (RFC 3339, or a duration ago).
    #[arg(long, value_parser = eventd::commands::replay::parse_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Print what would be replayed; handle nothing, commit nothing.
    #[arg(long)]
    dry_run: bool,
    /// Consumer group that keeps the replay's progress [default: eventd-replay-<handler>].
    #[arg(long)]
    group: Option<String>,
    /// Longest wait (then exit 69) for one copy's handling, for the next copy while
    /// partitions are not read to their end, and for the final write of count
    /// windows [default: twice producer.message_timeout].
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
}

#[derive(clap::Args)]
struct ProduceCommand {
    /// Config file; its [kafka], [producer] and [supervision] sections are used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Bootstrap servers, overriding kafka.brokers.
    #[arg(long)]
    brokers: Option<String>,
    /// Topic of every event; without it each event's "topic" field chooses.
    #[arg(long)]
    topic: Option<String>,
    /// The event field whose value becomes the Kafka key.
    #[arg(long, default_value = "item_id")]
    key_field: String,
    /// Wait for each acknowledgement and print `topic partition offset` per event.
    #[arg(long)]
    sync: bool,
    /// File of JSON lines; `-` or nothing reads stdin.
    #[arg(long, short, conflicts_with = "count")]
    input: Option<PathBuf>,
    /// Generate this many synthetic browse/like/favorite/comment events.
    #[arg(long)]
    count: Option<u64>,
    /// At most this many events per second.
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
    /// Distinct item ids of synthetic events.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    keys: u32,
    /// Seed of synthetic events; the same seed gives the same topics, keys and users.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.001..=1e9).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a number of events per second from 0.001 to 1000000000"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig {
            config: None,
            file: None,
            ..
        } => {
            eprintln!("eventd check-config: no config file was given: pass one with --config FILE");
            ExitCode::from(2)
        }
        Command::CheckConfig {
            config,
            file,
            topics,
        } => match Config::load(config.or(file).as_deref()) {
            Ok(config) => {
                println!("ok");
                let security = &config.kafka.security;
                if !security.verify_certificates {
                    eprintln!("eventd check-config: warning: kafka.security.verify_certificates = false: the brokers' TLS certificates and host names are not verified");
                }
                for exposed in security.exposed_secret_files() {
                    eprintln!("eventd check-config: warning: {exposed}");
                }
                if topics {
                    return list_topics(&config);
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                for line in error.lines() {
                    println!("{line}");
                }
                ExitCode::from(EXIT_CONFIG as u8)
            }
        },
        Command::Run {
            config: path,
            log_format,
        } => {
            if let Some(format) = log_format {
                // As an environment override, so every reload of the file keeps it.
                std::env::set_var("EVENTD__LOG__FORMAT", format);
            }
            let config = match Config::load(path.as_deref()) {
                Ok(config) => config,
                Err(error) => {
                    let code = refuse_config(&error);
                    if path.is_none() {
                        eprintln!(
                            "eventd: no config file was given: pass one with `eventd run --config FILE` \
                             (config/eventd.toml runs the embedded demo)"
                        );
                    }
                    return code;
                }
            };
            eventd::logging::init(&config.log);
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            let code = runtime.block_on(eventd::daemon::run(config, path));
            // Exit without waiting for clients that may block on an unreachable broker.
            std::process::exit(code);
        }
        Command::Produce(command) => {
            purge_freed_memory_soon();
            let config = match Config::load_for_producer(command.config.as_deref()) {
                Ok(config) => config,
                Err(error) => return refuse_config(&error),
            };
            let options = ProduceOptions {
                brokers: command.brokers,
                topic: command.topic,
                key_field: command.key_field,
                sync: command.sync,
                input: command.input,
                count: command.count,
                rate: command.rate,
                keys: command.keys,
                seed: command.seed,
            };
            eventd::logging::init_for_command();
            config.kafka.security.warn_about_weaknesses();
            run_command(eventd::commands::produce::run(config, options))
        }
        Command::Tail(command) => {
            let config = match Config::load_for_producer(command.config.as_deref()) {
                Ok(config) => config,
                Err(error) => return refuse_config(&error),
            };
            let options = eventd::commands::tail::TailOptions {
                brokers: command.brokers,
                topic: command.topic,
                partition: command.partition,
                from: command.from,
                count: command.count,
                follow: command.follow,
                json: command.json,
            };
            eventd::logging::init_for_command();
            config.kafka.security.warn_about_weaknesses();
            std::process::exit(eventd::commands::tail::run(config, options));
        }
        Command::Offsets(command) => {
            use eventd::commands::offsets::{ResetOptions, ResetTarget};
            let (target, reset, json) = match command {
                OffsetsCommand::Show { target, json } => (target, None, json),
                OffsetsCommand::Reset {
                    target,
                    to,
                    from_file,
                    dry_run,
                    force,
                    save,
                } => {
                    // clap requires exactly one of --to and --from-file.
                    let to = match (to, from_file) {
                        (Some(position), _) => ResetTarget::Position(position),
                        (None, Some(file)) => ResetTarget::File(file),
                        (None, None) => {
                            eprintln!("eventd offsets reset: pass --to or --from-file");
                            std::process::exit(2);
                        }
                    };
                    let reset = ResetOptions {
                        to,
                        dry_run,
                        force,
                        save,
                    };
                    (target, Some(reset), false)
                }
            };
            let config = match Config::load(Some(&target.config)) {
                Ok(config) => config,
                Err(error) => return refuse_config(&error),
            };
            let options = eventd::commands::offsets::OffsetsOptions {
                consumer: target.consumer,
                topic: target.topic,
                reset,
                json,
            };
            eventd::logging::init_for_command();
            config.kafka.security.warn_about_weaknesses();
            std::process::exit(eventd::commands::offsets::run(config, options));
        }
        Command::Replay(command) => {
            let config = match Config::load(Some(&command.config)) {
                Ok(config) => config,
                Err(error) => return refuse_config(&error),
            };
            let options = eventd::commands::replay::ReplayOptions {
                from: command.from,
                handler: command.handler,
                since: command.since,
                until: command.until,
                dry_run: command.dry_run,
                group: command.group,
                timeout: command.timeout,
            };
            eventd::logging::init_for_command();
            config.kafka.security.warn_about_weaknesses();
            run_command(eventd::commands::replay::run(config, options))
        }
    }
}

/// Runs a one-shot command (`produce`, `replay`), its logging already set up, and
/// exits with its code.
fn run_command(command: impl std::future::Future<Output = i32>) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let code = runtime.block_on(command);
    // Exit without waiting for clients that may block on an unreachable broker.
    std::process::exit(code);
}

/// `check-config --topics`: each topic the config uses, what uses it, and whether it
/// exists on the brokers, so an operator knows what to create before `run`.
fn list_topics(config: &Config) -> ExitCode {
    let used = eventd::kafka::used_topics(config);
    let Some(bootstrap) = config.kafka.brokers.clone() else {
        for (topic, use_) in &used {
            println!("{topic}\t{use_}\tcreated by the embedded broker (no kafka.brokers)");
        }
        return ExitCode::SUCCESS;
    };
    let brokers = eventd::kafka::Brokers {
        bootstrap,
        embedded: false,
    };
    let names: Vec<String> = used.iter().map(|(topic, _)| topic.clone()).collect();
    let partitions = match eventd::kafka::partitions_of_topics(config, &brokers, &names) {
        Ok(partitions) => partitions,
        Err(reason) => {
            eprintln!(
                "eventd check-config: cannot read topic metadata from {}: {reason}",
                brokers.bootstrap
            );
            return ExitCode::from(eventd::daemon::EXIT_UNAVAILABLE as u8);
        }
    };
    let mut missing = 0;
    for ((topic, use_), partitions) in used.iter().zip(partitions) {
        match partitions {
            Some(count) => println!("{topic}\t{use_}\texists, {count} partitions"),
            None => {
                missing += 1;
                println!("{topic}\t{use_}\tMISSING: create it, eventd does not");
            }
        }
    }
    if missing > 0 {
        return ExitCode::from(eventd::daemon::EXIT_UNAVAILABLE as u8);
    }
    ExitCode::SUCCESS
}

fn refuse_config(error: &ConfigError) -> ExitCode {
    for line in error.lines() {
        eprintln!("eventd: bad configuration: {line}");
    }
    ExitCode::from(EXIT_CONFIG as u8)
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("eventd: cannot start the async runtime: {error}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // 1000 ms is mimalloc 3's default purge delay and no other option's at this
        // index: a renumbered enum would set some other option.
        // SAFETY: reads a plain integer option.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
        purge_freed_memory_soon();
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 10);
    }
}
