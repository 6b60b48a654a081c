//! `eventd offsets show|reset`: a consumer's committed offsets, high watermarks and lag
//! per partition, and moving the committed offsets of a stopped group, as Kafka's own
//! `kafka-consumer-groups` does (and, like it, never while the group has members, nor
//! while a `partitions` consumer's commits say it still runs). A dry run has no path
//! that reaches a commit: everything it decides is decided before `commit_reset`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::commands::position::{partitions_of, resolve, Position};
use crate::commands::produce::EXIT_NO_INPUT;
use crate::config::{Config, ConsumerMode, EXIT_CONFIG};
use crate::daemon::EXIT_UNAVAILABLE;
use crate::kafka::holder::OffsetHolder;
use crate::kafka::{command_brokers, plain_config, Diagnosis};

const TIMEOUT: Duration = crate::waits::METADATA_TIMEOUT;
/// `reset` refused: the group has live members, or a process still commits under it.
pub const EXIT_GROUP_ACTIVE: i32 = 1;
/// `reset --save` could not write its file; nothing was committed.
pub const EXIT_CANNOT_SAVE: i32 = 73;

pub struct OffsetsOptions {
    pub consumer: String,
    pub topic: Option<String>,
    /// `Some` for `reset`.
    pub reset: Option<ResetOptions>,
    pub json: bool,
}

pub struct ResetOptions {
    pub to: ResetTarget,
    /// Decide and print everything, write nothing (not even `save`).
    pub dry_run: bool,
    /// Reset even though a process's commits say it is running.
    pub force: bool,
    /// Where to write the offsets replaced, before committing.
    pub save: Option<PathBuf>,
}

pub enum ResetTarget {
    /// Every partition to this position.
    Position(Position),
    /// Each partition a saved file lists back to the offset it holds.
    File(PathBuf),
}

/// What `reset --save` writes and `reset --from-file` reads (`show --json` prints
/// the same fields, so its output is accepted too).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedOffsets {
    group: String,
    partitions: Vec<SavedPartition>,
}

impl SavedOffsets {
    /// Where the file puts `row` back; `None` (said on stderr where it matters) for a
    /// partition it leaves as it is.
    fn offset_of(&self, row: &Row) -> Option<Position> {
        let entry = self
            .partitions
            .iter()
            .find(|p| p.topic == row.topic && p.partition == row.partition)?;
        if entry.committed.is_none() {
            eprintln!(
                "eventd offsets: {}/{}: the file says nothing was committed, which a commit cannot restore: left as it is",
                row.topic, row.partition
            );
        }
        entry.committed.map(Position::Offset)
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedPartition {
    topic: String,
    partition: i32,
    /// `None`: nothing was committed, which a commit cannot restore.
    committed: Option<i64>,
}

/// One partition as `show` prints it.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    topic: String,
    partition: i32,
    /// The next offset the group reads; none before its first commit.
    committed: Option<i64>,
    low: i64,
    high: i64,
    /// Events from the committed offset (else the start of the partition) to the end.
    lag: i64,
    /// `reset`: where the committed offset goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    reset_to: Option<i64>,
    /// The eventd process the commit's metadata names (a `partitions` consumer).
    #[serde(skip_serializing_if = "Option::is_none")]
    committed_by: Option<OffsetHolder>,
}

pub fn run(config: Config, options: OffsetsOptions) -> i32 {
    let Some(consumer_config) = config.consumer(&options.consumer) else {
        let names: Vec<&str> = config.consumers.iter().map(|c| c.name.as_str()).collect();
        eprintln!(
            "eventd offsets: --consumer {:?} names no [[consumers]] entry (the config has {names:?})",
            options.consumer
        );
        return EXIT_CONFIG;
    };
    let group = match consumer_config.mode {
        ConsumerMode::Group => consumer_config.group_id(),
        ConsumerMode::Partitions => match &consumer_config.commit_group {
            Some(group) => group.clone(),
            None => {
                eprintln!(
                    "eventd offsets: consumer {:?} is a partitions consumer without commit_group: it commits nothing",
                    options.consumer
                );
                return EXIT_CONFIG;
            }
        },
    };
    let topics: Vec<String> = match &options.topic {
        Some(topic) if consumer_config.topics.contains(topic) => vec![topic.clone()],
        Some(topic) => {
            eprintln!(
                "eventd offsets: consumer {:?} does not read {topic:?} (it reads {:?})",
                options.consumer, consumer_config.topics
            );
            return EXIT_CONFIG;
        }
        None => consumer_config.topics.clone(),
    };
    let Some(brokers) = command_brokers(&config, "offsets", None) else {
        return EXIT_CONFIG;
    };
    let client: BaseConsumer<Diagnosis> = match plain_config(&config, &brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create_with_context(Diagnosis::default())
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("eventd offsets: bad [kafka] settings: {error}");
            return EXIT_CONFIG;
        }
    };
    let mut rows = match read_rows(&client, &topics) {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("eventd offsets: {}: {error}", brokers.bootstrap);
            return EXIT_UNAVAILABLE;
        }
    };
    let Some(reset) = options.reset else {
        print_rows(&group, &rows, options.json);
        return 0;
    };
    let refuse_live = |members: &str| {
        eprintln!(
            "eventd offsets: group {group:?} has {members}: stop every process of consumer {:?} first (offsets of a running group cannot be moved)",
            options.consumer
        );
        EXIT_GROUP_ACTIVE
    };
    // A dry run is a preview: against a live group it goes on, saying the real reset
    // would be refused and why.
    let mut live_reason: Option<String> = None;
    match live_members(&client, &group) {
        Ok(0) => {}
        Ok(members) if reset.dry_run => live_reason = Some(format!("{members} live member(s)")),
        Ok(members) => return refuse_live(&format!("{members} live member(s)")),
        Err(reason) => {
            // Brokers without DescribeGroups still refuse a commit from outside a
            // group that has members, as Kafka does: the reset's commit is the check.
            // A dry run commits nothing, so it cannot ask.
            let then = if reset.dry_run {
                "a real reset relies on it to refuse the commit if the group has members; this dry run cannot tell"
            } else {
                "relying on it to refuse a commit from outside a group with members, as Kafka does"
            };
            eprintln!(
                "eventd offsets: the broker did not describe group {group:?} ({reason}); {then}"
            );
        }
    }
    match running_holders(&rows) {
        Some((processes, _)) if reset.dry_run && !reset.force => {
            live_reason.get_or_insert(format!(
                "a running process: {processes} (--force overrides this for a process that is gone)"
            ));
        }
        Some(holders) => {
            if let Some(exit) = refuse_running_holders(&group, &holders, reset.force) {
                return exit;
            }
        }
        None => {}
    }
    if let Some(reason) = &live_reason {
        eprintln!(
            "eventd offsets: DRY RUN OF A LIVE GROUP: group {group:?} has {reason}; the real reset is refused until every process of consumer {:?} stops",
            options.consumer
        );
    }
    if consumer_config.mode == ConsumerMode::Partitions
        && rows
            .iter()
            .any(|row| row.committed.is_some() && row.committed_by.is_none())
    {
        eprintln!(
            "eventd offsets: some committed offsets of group {group:?} name no eventd process (committed by another tool or an older eventd, or the broker returns no commit metadata): a running partitions consumer among them cannot be seen"
        );
    }
    let saved = match &reset.to {
        ResetTarget::Position(_) => None,
        ResetTarget::File(path) => match read_saved(path, &group, &rows) {
            Ok(saved) => Some(saved),
            Err(exit) => return exit,
        },
    };
    for row in &mut rows {
        let position = match (&reset.to, &saved) {
            (ResetTarget::Position(position), _) => *position,
            (ResetTarget::File(_), Some(saved)) => match saved.offset_of(row) {
                Some(position) => position,
                None => continue,
            },
            (ResetTarget::File(_), None) => continue,
        };
        match resolve(
            &client,
            &row.topic,
            row.partition,
            (row.low, row.high),
            position,
            TIMEOUT,
        ) {
            Ok(offset) => row.reset_to = Some(offset),
            Err(error) => {
                eprintln!("eventd offsets: {}/{}: {error}", row.topic, row.partition);
                return EXIT_UNAVAILABLE;
            }
        }
    }
    print_rows(&group, &rows, false);
    if reset.dry_run {
        if let Some(path) = &reset.save {
            // Refused as the real reset would be: it never replaces an existing file.
            if path.exists() {
                eprintln!(
                    "eventd offsets: --save {}: the file exists; a reset would commit nothing",
                    path.display()
                );
                return EXIT_CANNOT_SAVE;
            }
            eprintln!("eventd offsets: dry run, {} not written", path.display());
        }
        match &live_reason {
            Some(_) => eprintln!(
                "eventd offsets: dry run of a live group, nothing committed; the real reset would be refused (exit {EXIT_GROUP_ACTIVE})"
            ),
            None => eprintln!("eventd offsets: dry run, nothing committed"),
        }
        return 0;
    }
    if let Some(path) = &reset.save {
        if let Err(error) = save_replaced(path, &group, &rows) {
            eprintln!(
                "eventd offsets: --save {}: {error}; nothing committed",
                path.display()
            );
            return EXIT_CANNOT_SAVE;
        }
        eprintln!(
            "eventd offsets: the offsets replaced are in {path}; `eventd offsets reset --config CONFIG --consumer {consumer} --from-file {path}` puts them back",
            path = path.display(),
            consumer = options.consumer
        );
    }
    match commit_reset(&client, &rows) {
        Ok(()) => {
            eprintln!("eventd offsets: committed for group {group:?}");
            0
        }
        Err(CommitFailure::Refused) => {
            refuse_live("live members (the broker refused a commit from outside the group)")
        }
        Err(CommitFailure::BadOffset(row)) => {
            eprintln!("eventd offsets: {row}: offset refused");
            EXIT_CONFIG
        }
        Err(CommitFailure::Other(error)) => {
            eprintln!("eventd offsets: commit for group {group:?} failed: {error}");
            EXIT_UNAVAILABLE
        }
    }
}

enum CommitFailure {
    /// The group has members and this client is not one of them.
    Refused,
    /// `topic/partition` with an offset librdkafka would not take.
    BadOffset(String),
    Other(KafkaError),
}

/// The one place `reset` writes to Kafka.
fn commit_reset(client: &BaseConsumer<Diagnosis>, rows: &[Row]) -> Result<(), CommitFailure> {
    let mut list = TopicPartitionList::new();
    for row in rows {
        if let Some(offset) = row.reset_to {
            if list
                .add_partition_offset(&row.topic, row.partition, Offset::Offset(offset))
                .is_err()
            {
                return Err(CommitFailure::BadOffset(format!(
                    "{}/{} at {offset}",
                    row.topic, row.partition
                )));
            }
        }
    }
    if list.count() == 0 {
        return Ok(());
    }
    match client.commit(&list, CommitMode::Sync) {
        Ok(()) => Ok(()),
        Err(error) if is_refused_as_outsider(&error) => Err(CommitFailure::Refused),
        Err(error) => Err(CommitFailure::Other(error)),
    }
}

/// Exit 1 (said on stderr) when a committed offset names a process that still runs,
/// unless `force`; `None` to go on.
/// The processes whose fresh commits say they still read the group, one line for all,
/// and how long after its last commit a process counts as running.
fn running_holders(rows: &[Row]) -> Option<(String, Duration)> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut running: Vec<(&OffsetHolder, Duration, String)> = Vec::new();
    for row in rows {
        let Some(holder) = &row.committed_by else {
            continue;
        };
        if let Some(age) = holder.running_at(now_ms) {
            running.push((holder, age, format!("{}/{}", row.topic, row.partition)));
        }
    }
    if running.is_empty() {
        return None;
    }
    let mut processes: Vec<String> = Vec::new();
    for (holder, age, partition) in &running {
        let process = format!(
            "pid {} on {} (consumer {:?})",
            holder.pid, holder.host, holder.consumer
        );
        if !processes.iter().any(|p| p.starts_with(&process)) {
            processes.push(format!(
                "{process}, which committed {partition} {:.1}s ago and commits at least every {}",
                age.as_secs_f64(),
                humantime::format_duration(Duration::from_millis(holder.every_ms))
            ));
        }
    }
    Some((processes.join("; "), running[0].0.fresh_for()))
}

/// Refuses a reset while `processes` (of `running_holders`) commit, unless `force`.
fn refuse_running_holders(
    group: &str,
    (processes, fresh_for): &(String, Duration),
    force: bool,
) -> Option<i32> {
    if force {
        eprintln!(
            "eventd offsets: --force: group {group:?} is still committed to by {processes}; if it runs, it commits its own position over this reset"
        );
        return None;
    }
    eprintln!(
        "eventd offsets: group {group:?} is held by a running process: {processes}. Stop it first (a clean stop says so in its last commit), or pass --force if it is gone (it counts as running for {} after its last commit)",
        humantime::format_duration(*fresh_for)
    );
    Some(EXIT_GROUP_ACTIVE)
}

/// The saved offsets of `path` for `group`, each naming a partition of `rows`.
fn read_saved(path: &Path, group: &str, rows: &[Row]) -> Result<SavedOffsets, i32> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        eprintln!("eventd offsets: --from-file {}: {error}", path.display());
        EXIT_NO_INPUT
    })?;
    let saved: SavedOffsets = serde_json::from_str(&text).map_err(|error| {
        eprintln!(
            "eventd offsets: --from-file {}: not a file of `reset --save` or `show --json`: {error}",
            path.display()
        );
        EXIT_CONFIG
    })?;
    if saved.group != group {
        eprintln!(
            "eventd offsets: --from-file {} holds offsets of group {:?}, not of this consumer's group {group:?}",
            path.display(),
            saved.group
        );
        return Err(EXIT_CONFIG);
    }
    let topics: Vec<&str> = rows.iter().map(|row| row.topic.as_str()).collect();
    for entry in &saved.partitions {
        // A topic left out with --topic is not reset; a partition of a reset topic
        // that does not exist is an error, not silently skipped.
        if topics.contains(&entry.topic.as_str())
            && !rows
                .iter()
                .any(|row| row.topic == entry.topic && row.partition == entry.partition)
        {
            eprintln!(
                "eventd offsets: --from-file {}: {}/{} is not a partition of the topic",
                path.display(),
                entry.topic,
                entry.partition
            );
            return Err(EXIT_CONFIG);
        }
    }
    Ok(saved)
}

/// Writes the committed offsets a reset replaces, in the form `--from-file` reads;
/// never over an existing file, which may hold an earlier reset's way back.
fn save_replaced(path: &Path, group: &str, rows: &[Row]) -> std::io::Result<()> {
    use std::io::Write;
    let saved = SavedOffsets {
        group: group.to_owned(),
        partitions: rows
            .iter()
            .filter(|row| row.reset_to.is_some())
            .map(|row| SavedPartition {
                topic: row.topic.clone(),
                partition: row.partition,
                committed: row.committed,
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&saved).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

fn read_rows(client: &BaseConsumer<Diagnosis>, topics: &[String]) -> Result<Vec<Row>, String> {
    let mut list = TopicPartitionList::new();
    for topic in topics {
        for partition in partitions_of(client, topic, TIMEOUT)? {
            list.add_partition(topic, partition);
        }
    }
    let committed = client
        .committed_offsets(list, TIMEOUT)
        .map_err(|error| format!("committed offsets: {error}"))?;
    let mut rows = Vec::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic().to_owned(), element.partition());
        let (low, high) = client
            .fetch_watermarks(&topic, partition, TIMEOUT)
            .map_err(|error| format!("watermarks of {topic}/{partition}: {error}"))?;
        let committed = match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        };
        let committed_by = committed.and_then(|_| OffsetHolder::from_metadata(element.metadata()));
        rows.push(Row {
            lag: (high - committed.unwrap_or(low).max(low)).max(0),
            topic,
            partition,
            committed,
            low,
            high,
            reset_to: None,
            committed_by,
        });
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(rows)
}

/// A commit refused because the group has members and this client is not one of them.
fn is_refused_as_outsider(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::ConsumerCommit(
            RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::RebalanceInProgress
        )
    )
}

/// Members of `group` the broker knows now (DescribeGroups).
fn live_members(client: &BaseConsumer<Diagnosis>, group: &str) -> Result<usize, String> {
    let groups = client
        .fetch_group_list(Some(group), TIMEOUT)
        .map_err(|error| error.to_string())?;
    Ok(groups
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .map(|g| g.members().len())
        .sum())
}

fn print_rows(group: &str, rows: &[Row], json: bool) {
    if json {
        let document = serde_json::json!({ "group": group, "partitions": rows });
        println!("{document}");
        return;
    }
    let reset = rows.iter().any(|row| row.reset_to.is_some());
    println!("group {group}");
    let mut table = vec![vec![
        "TOPIC".to_owned(),
        "PARTITION".to_owned(),
        "COMMITTED".to_owned(),
        "HIGH".to_owned(),
        "LAG".to_owned(),
    ]];
    if reset {
        table[0].push("RESET TO".to_owned());
    }
    for row in rows {
        let mut line = vec![
            row.topic.clone(),
            row.partition.to_string(),
            row.committed
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            row.high.to_string(),
            row.lag.to_string(),
        ];
        if reset {
            line.push(
                row.reset_to
                    .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            );
        }
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|column| {
            table
                .iter()
                .map(|line| line[column].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in table {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
