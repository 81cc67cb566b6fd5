//! `relay-local backfill`: existing users into Keap through the signup code path, paced by
//! Keap's quota, resumable (docs/backfill.md).
//!
//! 1. Read a CSV (header row) or JSON Lines file; columns are the signup body's fields
//!    ([`FIELDS`]), the UTM parameters as `utm_source` … `utm_content`, and custom fields as
//!    `fields.<label>`, each renamed with `--map field=column`. Unknown columns are ignored (a
//!    failures CSV has `line` and `reason` too, so it can be fed back in).
//! 2. Validate every row with the signup body's own validation, before anything is sent: bad
//!    rows are reported with their line numbers; a later row with an email seen before is
//!    skipped. Nothing is sent without `--yes`; `--dry-run` never sends.
//! 3. Send each row through [`SignupService`] (upsert, fields, tags; no welcome tag or email
//!    unless `--welcome`), paced as bulk work: a share of every quota window is left to live
//!    signups (`--live-share`), and sending stops at the day's reserve.
//! 4. Every finished row is appended to the checkpoint journal (flushed per row). Killed and
//!    started again with the same input, the run skips the rows the journal holds. A row that
//!    was in flight at the kill is sent again; the upsert by email makes that a no-op for Keap
//!    (same contact, tags `DUPLICATE`, no second welcome), and at most `--concurrency` rows are
//!    ever in flight.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keap_relay::keap::pacing::{Pacer, QuotaUse};
use keap_relay::signup::{Signup, SignupError, SignupService};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::cli::CliError;

/// The signup body's plain fields, the columns a backfill reads (besides [`UTM_COLUMNS`] and
/// [`CUSTOM_FIELD_PREFIX`] columns).
pub const FIELDS: [&str; 12] = [
    "email",
    "given_name",
    "family_name",
    "opt_in",
    "tags",
    "source",
    "phone",
    "company",
    "job_title",
    "website",
    "lead_source",
    "ip_address",
];
/// The body's `utm` object as flat columns (`utm_source` is `utm.source`).
pub const UTM_COLUMNS: [&str; 5] = ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"];
/// A column `fields.Plan` is the custom field labelled `Plan` (the body's `fields` object).
pub const CUSTOM_FIELD_PREFIX: &str = "fields.";
/// Tags in one CSV cell are separated by this.
pub const TAG_SEPARATOR: char = ';';
/// Attempts per row at transient failures (each waits as Keap or the pacer says).
const MAX_ATTEMPTS: u32 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillArgs {
    pub input: PathBuf,
    pub format: Option<Format>,
    /// `(field, column)`.
    pub map: Vec<(String, String)>,
    pub dry_run: bool,
    pub yes: bool,
    pub checkpoint: Option<PathBuf>,
    pub failures: Option<PathBuf>,
    /// Percent of each quota window left to live signups.
    pub live_share: u8,
    pub welcome: bool,
    pub concurrency: usize,
    /// Post signed signups to this deployed `/signup` instead of calling Keap directly.
    pub signup_url: Option<String>,
    pub key: Option<String>,
    /// Fill unset variables with relay-local's defaults (the local sandbox and file store).
    pub local: bool,
}

impl BackfillArgs {
    pub fn new(input: impl Into<PathBuf>) -> Self {
        Self {
            input: input.into(),
            format: None,
            map: Vec::new(),
            dry_run: false,
            yes: false,
            checkpoint: None,
            failures: None,
            live_share: 10,
            welcome: false,
            concurrency: 4,
            signup_url: None,
            key: None,
            local: false,
        }
    }

    /// The journal next to the input unless given: `<input>.checkpoint`.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint
            .clone()
            .unwrap_or_else(|| with_suffix(&self.input, ".checkpoint"))
    }

    /// `<input>.failures.csv` unless given.
    pub fn failures_path(&self) -> PathBuf {
        self.failures
            .clone()
            .unwrap_or_else(|| with_suffix(&self.input, ".failures.csv"))
    }
}

/// A name `--map` accepts: a body field, a UTM column or `fields.<label>`.
fn is_field(name: &str) -> bool {
    FIELDS.contains(&name)
        || UTM_COLUMNS.contains(&name)
        || name
            .strip_prefix(CUSTOM_FIELD_PREFIX)
            .is_some_and(|label| !label.trim().is_empty())
}

/// The field names a file with these columns gives values for: every plain field and UTM
/// column, and each custom field named by a column or a `--map`.
fn fields_of<'a>(columns: impl Iterator<Item = &'a str>, map: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = FIELDS
        .iter()
        .chain(UTM_COLUMNS.iter())
        .map(|f| (*f).to_owned())
        .collect();
    let custom = columns
        .filter(|c| c.starts_with(CUSTOM_FIELD_PREFIX))
        .map(str::to_owned)
        .chain(map.iter().map(|(field, _)| field.clone()));
    for name in custom {
        if is_field(&name) && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Puts one field's value into a signup body: a UTM column into `utm`, `fields.<label>` into
/// `fields`, the rest at the top.
fn put(body: &mut Map<String, Value>, field: &str, value: Value) {
    let (parent, key) = if let Some(label) = field.strip_prefix(CUSTOM_FIELD_PREFIX) {
        ("fields", label)
    } else if UTM_COLUMNS.contains(&field) {
        ("utm", &field["utm_".len()..])
    } else {
        body.insert(field.to_owned(), value);
        return;
    };
    let nested = body
        .entry(parent)
        .and_modify(|v| {
            if !v.is_object() {
                *v = Value::Object(Map::new());
            }
        })
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(object) = nested {
        object.insert(key.to_owned(), value);
    }
}

/// One field's value in a signup body, the reverse of [`put`] (`utm` also under its long name).
fn get<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    if let Some(label) = field.strip_prefix(CUSTOM_FIELD_PREFIX) {
        body.get("fields")?.get(label)
    } else if UTM_COLUMNS.contains(&field) {
        let utm = body.get("utm")?;
        utm.get(&field["utm_".len()..]).or_else(|| utm.get(field))
    } else {
        body.get(field)
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Parses `backfill`'s flags and its one operand, the input file.
pub fn parse_args(args: impl Iterator<Item = String>) -> Result<BackfillArgs, CliError> {
    let mut args = args.peekable();
    let mut input = None;
    let mut parsed = BackfillArgs::new("");
    while let Some(arg) = args.next() {
        let flag = arg.as_str();
        if !flag.starts_with("--") {
            if input.replace(PathBuf::from(&arg)).is_some() {
                return Err(CliError::Operand("backfill", "FILE"));
            }
            continue;
        }
        let mut value = || args.next().ok_or_else(|| CliError::MissingValue(arg.clone()));
        let invalid = |value: String| CliError::InvalidValue {
            flag: flag.to_owned(),
            value,
        };
        match flag {
            "--format" => {
                parsed.format = Some(match value()?.as_str() {
                    "csv" => Format::Csv,
                    "jsonl" | "ndjson" => Format::JsonLines,
                    other => return Err(invalid(other.to_owned())),
                })
            }
            "--map" => {
                let pair = value()?;
                match pair.split_once('=') {
                    Some((field, column)) if is_field(field.trim()) && !column.trim().is_empty() => {
                        parsed.map.push((field.trim().to_owned(), column.trim().to_owned()))
                    }
                    _ => return Err(invalid(pair)),
                }
            }
            "--dry-run" => parsed.dry_run = true,
            "--yes" => parsed.yes = true,
            "--welcome" => parsed.welcome = true,
            "--local" => parsed.local = true,
            "--checkpoint" => parsed.checkpoint = Some(PathBuf::from(value()?)),
            "--failures" => parsed.failures = Some(PathBuf::from(value()?)),
            "--live-share" => {
                let raw = value()?;
                parsed.live_share = match raw.parse::<u8>() {
                    Ok(share) if share <= 90 => share,
                    _ => return Err(invalid(raw)),
                }
            }
            "--concurrency" => {
                let raw = value()?;
                parsed.concurrency = match raw.parse::<usize>() {
                    Ok(n) if (1..=64).contains(&n) => n,
                    _ => return Err(invalid(raw)),
                }
            }
            "--signup-url" => parsed.signup_url = Some(value()?),
            "--key" => parsed.key = Some(value()?),
            _ => return Err(CliError::Unknown(arg)),
        }
    }
    parsed.input = input.ok_or(CliError::Operand("backfill", "FILE"))?;
    Ok(parsed)
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a CSV file with a header row: {detail}")]
    Csv { path: PathBuf, detail: String },
    #[error("{path} has no column for the email (columns: {columns}); name it with --map email=COLUMN")]
    NoEmailColumn { path: PathBuf, columns: String },
    #[error("the checkpoint {path} belongs to another input file (start over: delete it)")]
    CheckpointMismatch { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// One input row: its line number and its fields, as a signup body.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: u64,
    pub body: Map<String, Value>,
}

/// Reads every row (`format` from the flag, else from the extension: `.jsonl`/`.ndjson` are
/// JSON Lines, anything else CSV).
pub fn read_rows(path: &Path, format: Option<Format>, map: &[(String, String)]) -> Result<Vec<Row>, BackfillError> {
    let format = format.unwrap_or_else(|| match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl" | "ndjson") => Format::JsonLines,
        _ => Format::Csv,
    });
    let column_of = |field: &str| -> String {
        map.iter()
            .find(|(f, _)| f == field)
            .map_or_else(|| field.to_owned(), |(_, c)| c.clone())
    };
    let read_error = |source| BackfillError::Read {
        path: path.to_owned(),
        source,
    };
    let mut rows = Vec::new();
    match format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(true)
                .trim(csv::Trim::All)
                .from_path(path)
                .map_err(|e| BackfillError::Csv {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?;
            let headers = reader
                .headers()
                .map_err(|e| BackfillError::Csv {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?
                .clone();
            let index: HashMap<&str, usize> = headers.iter().enumerate().map(|(i, h)| (h, i)).collect();
            if !index.contains_key(column_of("email").as_str()) {
                return Err(BackfillError::NoEmailColumn {
                    path: path.to_owned(),
                    columns: headers.iter().collect::<Vec<_>>().join(", "),
                });
            }
            let fields = fields_of(headers.iter(), map);
            for record in reader.records() {
                let record = record.map_err(|e| BackfillError::Csv {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?;
                let line = record.position().map_or(0, |p| p.line());
                let mut body = Map::new();
                for field in &fields {
                    let Some(cell) = index.get(column_of(field).as_str()).and_then(|&i| record.get(i)) else {
                        continue;
                    };
                    if cell.is_empty() {
                        continue;
                    }
                    put(&mut body, field, csv_value(field, cell));
                }
                rows.push(Row { line, body });
            }
        }
        Format::JsonLines => {
            let file = std::fs::File::open(path).map_err(read_error)?;
            for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line_text = line.map_err(read_error)?;
                if line_text.trim().is_empty() {
                    continue;
                }
                let line = n as u64 + 1;
                let mut body = Map::new();
                match serde_json::from_str::<Value>(&line_text) {
                    Ok(Value::Object(object)) => {
                        // The body's own `utm` and `fields` objects come as they are; flat
                        // columns (`utm_source`, `fields.Plan`, mapped names) are put into them.
                        for nested in ["utm", "fields"] {
                            if let Some(value) = object.get(nested) {
                                body.insert(nested.to_owned(), value.clone());
                            }
                        }
                        for field in fields_of(object.keys().map(String::as_str), map) {
                            if let Some(value) = object.get(&column_of(&field)).filter(|v| !v.is_null()) {
                                put(&mut body, &field, value.clone());
                            }
                        }
                    }
                    // Kept as a row with no email: validation reports it with its line.
                    _ => {
                        body.insert("_unreadable".into(), Value::Bool(true));
                    }
                }
                rows.push(Row { line, body });
            }
        }
    }
    Ok(rows)
}

/// A CSV cell as the signup body's JSON: `opt_in` a boolean (when it reads as one), `tags`
/// a list split on [`TAG_SEPARATOR`] (digits are tag ids), `lead_source` an id when it is
/// digits, the rest text (custom field values are checked against the field's type later).
fn csv_value(field: &str, cell: &str) -> Value {
    match field {
        "lead_source" => match cell.parse::<i64>() {
            Ok(id) if id > 0 && cell.bytes().all(|b| b.is_ascii_digit()) => Value::from(id),
            _ => Value::String(cell.to_owned()),
        },
        "opt_in" => match cell.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "1" => Value::Bool(true),
            "false" | "no" | "n" | "0" => Value::Bool(false),
            _ => Value::String(cell.to_owned()),
        },
        "tags" => Value::Array(
            cell.split(TAG_SEPARATOR)
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| match t.parse::<i64>() {
                    Ok(id) if id > 0 && t.bytes().all(|b| b.is_ascii_digit()) => Value::from(id),
                    _ => Value::String(t.to_owned()),
                })
                .collect(),
        ),
        _ => Value::String(cell.to_owned()),
    }
}

/// What validation found.
#[derive(Debug, Default)]
pub struct Plan {
    pub valid: Vec<(Row, Signup)>,
    /// `(row, reason)`.
    pub invalid: Vec<(Row, String)>,
    /// `(row, line of the first row with that email)`.
    pub duplicates: Vec<(Row, u64)>,
}

pub fn validate(rows: Vec<Row>) -> Plan {
    let mut plan = Plan::default();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for row in rows {
        if row.body.contains_key("_unreadable") {
            plan.invalid.push((row, "not a JSON object".into()));
            continue;
        }
        match Signup::from_object(&row.body) {
            Ok(signup) => {
                let key = signup.email.to_ascii_lowercase();
                if let Some(first) = seen.get(&key) {
                    let first = *first;
                    plan.duplicates.push((row, first));
                } else {
                    seen.insert(key, row.line);
                    plan.valid.push((row, signup));
                }
            }
            Err(invalid) => {
                let reason = format!("{}: {invalid}", invalid.code());
                plan.invalid.push((row, reason));
            }
        }
    }
    plan
}

/// How one row ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Created,
    Updated,
    /// Taken by a deployed `/signup` and queued there (202): the relay delivers it.
    Queued,
    Failed(String),
}

impl RowOutcome {
    fn journal(&self) -> (&'static str, &str) {
        match self {
            RowOutcome::Created => ("created", ""),
            RowOutcome::Updated => ("updated", ""),
            RowOutcome::Queued => ("queued", ""),
            RowOutcome::Failed(reason) => ("failed", reason),
        }
    }

    fn from_journal(status: &str, detail: &str) -> Option<Self> {
        Some(match status {
            "created" => RowOutcome::Created,
            "updated" => RowOutcome::Updated,
            "queued" => RowOutcome::Queued,
            "failed" => RowOutcome::Failed(detail.to_owned()),
            _ => return None,
        })
    }
}

/// Why one send did not finish the row, classified by what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Try the same row again after this long.
    Later(Duration, String),
    /// The row cannot succeed (Keap refused it, or a value it holds; the reason).
    Refused(String),
    /// No row can succeed until someone acts (Keap is not connected, the signing key is
    /// refused): stop sending; the same command resumes once it is fixed.
    Stop(String),
}

/// Where rows go: the signup service in this process, or a deployed `/signup`.
#[async_trait]
pub trait Sink: Send + Sync {
    async fn send(&self, signup: &Signup) -> Result<RowOutcome, SendError>;
    /// Keap's quota as last reported, for the progress line.
    fn quota(&self) -> Option<QuotaUse> {
        None
    }
}

/// Rows through [`SignupService`] in this process, with its bulk pacer.
pub struct ServiceSink {
    pub service: SignupService,
    pub pacer: Option<Arc<Pacer>>,
}

#[async_trait]
impl Sink for ServiceSink {
    async fn send(&self, signup: &Signup) -> Result<RowOutcome, SendError> {
        match self.service.process(signup).await {
            Ok(outcome) if outcome.created => Ok(RowOutcome::Created),
            Ok(_) => Ok(RowOutcome::Updated),
            Err(SignupError::Rejected { status, message }) => {
                Err(SendError::Refused(format!("Keap refused it ({status}): {message}")))
            }
            // An unknown custom field, a value of the wrong type, a field off the allow-list.
            Err(error @ SignupError::Invalid { .. }) => Err(SendError::Refused(format!("{}: {error}", error.code()))),
            Err(error @ SignupError::NotConnected { .. }) => Err(SendError::Stop(error.to_string())),
            Err(error) => Err(SendError::Later(
                error.retry_after().unwrap_or(Duration::from_secs(2)),
                error.to_string(),
            )),
        }
    }

    fn quota(&self) -> Option<QuotaUse> {
        self.pacer.as_ref().map(|p| p.quota_use())
    }
}

/// The checkpoint journal: a header naming the input's SHA-256, then one line per finished
/// row (`line<TAB>status<TAB>detail`), appended and flushed as each row finishes.
pub struct Checkpoint {
    path: PathBuf,
    file: std::fs::File,
    pub done: BTreeMap<u64, RowOutcome>,
}

const JOURNAL_HEADER: &str = "# keap-relay backfill checkpoint v1 input-sha256=";

impl Checkpoint {
    pub fn open(path: &Path, input: &Path) -> Result<Self, BackfillError> {
        let digest = file_digest(input)?;
        let header = format!("{JOURNAL_HEADER}{digest}");
        let write_error = |source| BackfillError::Write {
            path: path.to_owned(),
            source,
        };
        let mut done = BTreeMap::new();
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(BackfillError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        if let Some(text) = &existing {
            let mut lines = text.lines();
            if lines.next() != Some(header.as_str()) {
                return Err(BackfillError::CheckpointMismatch { path: path.to_owned() });
            }
            for entry in lines {
                // A line cut short by a kill is ignored: that row is sent again.
                let mut parts = entry.splitn(3, '\t');
                let (Some(line), Some(status)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if let (Ok(line), Some(outcome)) = (
                    line.parse::<u64>(),
                    RowOutcome::from_journal(status, parts.next().unwrap_or("")),
                ) {
                    done.insert(line, outcome);
                }
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(write_error)?;
        if existing.is_none() {
            writeln!(file, "{header}").map_err(write_error)?;
        } else if existing.as_deref().is_some_and(|t| !t.ends_with('\n')) {
            // The kill cut the last line: end it so the next entry starts on its own line.
            writeln!(file).map_err(write_error)?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            done,
        })
    }

    fn record(&mut self, line: u64, outcome: &RowOutcome) -> Result<(), BackfillError> {
        let (status, detail) = outcome.journal();
        let detail: String = detail.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        writeln!(self.file, "{line}\t{status}\t{detail}")
            .and_then(|()| self.file.flush())
            .map_err(|source| BackfillError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.done.insert(line, outcome.clone());
        Ok(())
    }
}

fn file_digest(path: &Path) -> Result<String, BackfillError> {
    let bytes = std::fs::read(path).map_err(|source| BackfillError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// The end of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub created: u64,
    pub updated: u64,
    pub queued: u64,
    /// Duplicates of an earlier row's email.
    pub skipped: u64,
    /// Invalid rows and rows Keap refused, with their reasons.
    pub failed: Vec<(u64, String)>,
    /// Rows finished in an earlier run (from the checkpoint).
    pub resumed: u64,
    /// Rows sent in this run.
    pub sent: u64,
    /// Why the run stopped before the end (nothing more could succeed), if it did.
    pub stopped: Option<String>,
    /// Valid rows neither finished now nor in an earlier run (after a stop).
    pub not_sent: u64,
}

/// Progress reporting: a bar on a terminal, plain lines otherwise.
pub trait Progress: Send + Sync {
    fn update(&self, done: u64, total: u64, rate: f64, quota: Option<&QuotaUse>);
    fn finish(&self);
}

/// `indicatif` on a terminal, a plain line every few seconds elsewhere.
pub struct ConsoleProgress {
    bar: Option<indicatif::ProgressBar>,
    last_line: std::sync::Mutex<Option<Instant>>,
}

impl ConsoleProgress {
    pub fn new(total: u64, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} rows  {msg}  elapsed {elapsed_precise}  ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Self {
            bar,
            last_line: std::sync::Mutex::new(None),
        }
    }
}

fn quota_text(quota: Option<&QuotaUse>) -> String {
    let Some(quota) = quota else {
        return "quota: not reported yet".into();
    };
    let windows: Vec<String> = quota
        .windows
        .iter()
        .map(|w| format!("{}/{} per {:?}", w.used, w.limit, w.time_unit).to_lowercase())
        .collect();
    let throttled = quota.calls_throttled;
    format!("quota {} ({throttled} × 429)", windows.join(", "))
}

impl Progress for ConsoleProgress {
    fn update(&self, done: u64, total: u64, rate: f64, quota: Option<&QuotaUse>) {
        let text = format!("{rate:.1} rows/s  {}", quota_text(quota));
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(text);
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(5)) && done < total {
            return;
        }
        *last = Some(Instant::now());
        let eta = if rate > 0.0 {
            format!("{:.0} s", (total - done) as f64 / rate)
        } else {
            "unknown".into()
        };
        println!("backfill: {done}/{total} rows, {text}, ETA {eta}");
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// Sends the plan's valid rows that the checkpoint does not hold, `concurrency` at a time.
pub async fn send_all(
    plan: &Plan,
    checkpoint: &mut Checkpoint,
    sink: Arc<dyn Sink>,
    concurrency: usize,
    progress: &dyn Progress,
) -> Result<Summary, BackfillError> {
    let mut summary = Summary {
        skipped: plan.duplicates.len() as u64,
        ..Summary::default()
    };
    for (row, reason) in &plan.invalid {
        summary.failed.push((row.line, format!("invalid: {reason}")));
    }
    let pending: Vec<(u64, Signup)> = plan
        .valid
        .iter()
        .filter(|(row, _)| !checkpoint.done.contains_key(&row.line))
        .map(|(row, signup)| (row.line, signup.clone()))
        .collect();
    summary.resumed = (plan.valid.len() - pending.len()) as u64;
    let total = plan.valid.len() as u64;
    let started = Instant::now();
    let mut finished = summary.resumed;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, RowOutcome)>(concurrency * 2);
    let queue = Arc::new(std::sync::Mutex::new(pending.into_iter()));
    // Set by the first row that says no row can succeed; no worker takes a row after it.
    let stopped: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let delivered = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (queue, sink, tx, stopped, delivered) = (
            queue.clone(),
            sink.clone(),
            tx.clone(),
            stopped.clone(),
            delivered.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                if stopped.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    break;
                }
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((line, signup)) = next else { break };
                match send_one(sink.as_ref(), &signup, &delivered).await {
                    Ok(outcome) => {
                        if tx.send((line, outcome)).await.is_err() {
                            break;
                        }
                    }
                    // Not journalled: the same command sends this row again.
                    Err(reason) => {
                        stopped.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(reason);
                        break;
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut sent_now = 0u64;
    loop {
        // While rows wait (Keap throttling or failing), the progress still moves: the rate
        // falls and a plain line still comes every few seconds.
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        match next {
            Ok(Some((line, outcome))) => {
                checkpoint.record(line, &outcome)?;
                finished += 1;
                sent_now += 1;
            }
            Ok(None) => break,
            Err(_waiting) => {}
        }
        let rate = sent_now as f64 / started.elapsed().as_secs_f64().max(0.001);
        progress.update(finished, total, rate, sink.quota().as_ref());
    }
    for worker in workers {
        let _ = worker.await;
    }
    progress.finish();
    summary.sent = sent_now;
    summary.stopped = stopped.lock().unwrap_or_else(|e| e.into_inner()).take();
    summary.not_sent = total.saturating_sub(finished);
    for (line, outcome) in &checkpoint.done {
        match outcome {
            RowOutcome::Created => summary.created += 1,
            RowOutcome::Updated => summary.updated += 1,
            RowOutcome::Queued => summary.queued += 1,
            RowOutcome::Failed(reason) => summary.failed.push((*line, reason.clone())),
        }
    }
    summary.failed.sort();
    Ok(summary)
}

/// One row to its end, or `Err` with the reason to stop the whole run. `delivered` counts the
/// rows any worker got through.
async fn send_one(sink: &dyn Sink, signup: &Signup, delivered: &AtomicU64) -> Result<RowOutcome, String> {
    let delivered_before = delivered.load(Ordering::Relaxed);
    let mut last = String::new();
    for _ in 0..MAX_ATTEMPTS {
        match sink.send(signup).await {
            Ok(outcome) => {
                delivered.fetch_add(1, Ordering::Relaxed);
                return Ok(outcome);
            }
            Err(SendError::Refused(reason)) => return Ok(RowOutcome::Failed(reason)),
            Err(SendError::Stop(reason)) => return Err(reason),
            Err(SendError::Later(wait, reason)) => {
                last = reason;
                tokio::time::sleep(wait.clamp(Duration::from_millis(50), Duration::from_secs(900))).await;
            }
        }
    }
    // No row got through while this one was tried: Keap (or the way to it) is down, not this
    // row; stop, and the same command resumes later. Otherwise the row itself is the trouble.
    if delivered.load(Ordering::Relaxed) == delivered_before {
        return Err(format!(
            "Keap kept failing ({MAX_ATTEMPTS} attempts at one row, none got through meanwhile): {last}"
        ));
    }
    Ok(RowOutcome::Failed(format!(
        "gave up after {MAX_ATTEMPTS} attempts: {last}"
    )))
}

/// Writes the failures as a CSV the backfill reads back (the signup fields, then `line` and
/// `reason`, which a new run ignores).
pub fn write_failures(path: &Path, rows: &[Row], failed: &[(u64, String)]) -> Result<(), BackfillError> {
    let write_error = |e: csv::Error| BackfillError::Write {
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    };
    let by_line: HashMap<u64, &Row> = rows.iter().map(|r| (r.line, r)).collect();
    // The plain fields and UTM columns, then the custom fields the failed rows set.
    let labels: std::collections::BTreeSet<String> = failed
        .iter()
        .filter_map(|(line, _)| by_line.get(line)?.body.get("fields")?.as_object())
        .flat_map(|fields| fields.keys().map(|label| format!("{CUSTOM_FIELD_PREFIX}{label}")))
        .collect();
    let fields = fields_of(labels.iter().map(String::as_str), &[]);
    let mut writer = csv::Writer::from_path(path).map_err(write_error)?;
    let mut header: Vec<&str> = fields.iter().map(String::as_str).collect();
    header.extend(["line", "reason"]);
    writer.write_record(&header).map_err(write_error)?;
    for (line, reason) in failed {
        let mut record: Vec<String> = Vec::new();
        for field in &fields {
            let cell = by_line
                .get(line)
                .and_then(|row| get(&row.body, field))
                .map(|value| match value {
                    Value::String(s) => s.clone(),
                    Value::Array(items) => items
                        .iter()
                        .map(|i| match i {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(&TAG_SEPARATOR.to_string()),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            record.push(cell);
        }
        record.push(line.to_string());
        record.push(reason.clone());
        writer.write_record(&record).map_err(write_error)?;
    }
    writer.flush().map_err(|source| BackfillError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The validation report: counts, then each bad row with its line (the first 50).
pub fn plan_report(plan: &Plan) -> String {
    let mut text = format!(
        "{} rows to send, {} invalid, {} duplicate emails skipped\n",
        plan.valid.len(),
        plan.invalid.len(),
        plan.duplicates.len()
    );
    for (row, reason) in plan.invalid.iter().take(50) {
        text.push_str(&format!("  line {}: {reason}\n", row.line));
    }
    if plan.invalid.len() > 50 {
        text.push_str(&format!("  … and {} more\n", plan.invalid.len() - 50));
    }
    for (row, first) in plan.duplicates.iter().take(10) {
        text.push_str(&format!("  line {}: same email as line {first}, skipped\n", row.line));
    }
    text
}

/// Rows posted, signed, to a deployed `/signup` (its functions pace Keap; this side follows
/// `Retry-After`).
pub struct SignupUrlSink {
    pub http: reqwest::Client,
    pub url: String,
    pub key: keap_relay::SecretString,
}

#[async_trait]
impl Sink for SignupUrlSink {
    async fn send(&self, signup: &Signup) -> Result<RowOutcome, SendError> {
        let body = signup_json(signup).map_err(|e| SendError::Refused(format!("cannot write its body: {e}")))?;
        let signature = crate::helpers::sign_now(&self.key, body.as_bytes());
        let answer = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-signature", signature)
            .body(body)
            .send()
            .await;
        let response = match answer {
            Ok(response) => response,
            Err(error) => {
                return Err(SendError::Later(
                    Duration::from_secs(2),
                    error.without_url().to_string(),
                ));
            }
        };
        let status = response.status().as_u16();
        let retry_after = keap_relay::keap::retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        match status {
            200 | 201 => {
                let created = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("created").and_then(Value::as_bool))
                    .unwrap_or(false);
                Ok(if created {
                    RowOutcome::Created
                } else {
                    RowOutcome::Updated
                })
            }
            202 => Ok(RowOutcome::Queued),
            429 | 500..=599 => Err(SendError::Later(
                retry_after.unwrap_or(Duration::from_secs(5)),
                format!("/signup answered {status}"),
            )),
            // Every row would get the same answer: a wrong key, URL or route.
            401 | 403 | 404 | 405 => Err(SendError::Stop(format!(
                "/signup answered {status}{}: {}",
                if status == 401 {
                    " (check --key)"
                } else {
                    " (check --signup-url)"
                },
                crate::progress::one_line(&text, 200)
            ))),
            _ => Err(SendError::Refused(format!(
                "/signup answered {status}: {}",
                crate::progress::one_line(&text, 200)
            ))),
        }
    }
}

/// The signup body for a validated signup (`Signup` serializes to the body's own shape, every
/// field included).
pub fn signup_json(signup: &Signup) -> Result<String, serde_json::Error> {
    serde_json::to_string(signup)
}

/// The in-process sink over the functions' configuration (`KEAP_*`, the secret store): the
/// same token source as the functions, a bulk pacer leaving `live_share` percent to live
/// signups, and no welcome tag or email unless `welcome`.
pub async fn service_sink(live_share: u8, welcome: bool) -> Result<ServiceSink, String> {
    let app = keap_relay::app::App::from_env().await.map_err(|e| e.to_string())?;
    Ok(service_sink_for(&app, live_share, welcome))
}

/// [`service_sink`] over an app already built.
pub fn service_sink_for(app: &keap_relay::app::App, live_share: u8, welcome: bool) -> ServiceSink {
    use keap_relay::keap::pacing::CallClass;
    use keap_relay::signup::SignupSettings;
    let mut api = app.api.clone();
    let mut pacer = None;
    if app.config.pacing.enabled {
        let mut settings = app.config.pacing.clone().with_class(CallClass::Bulk);
        settings.live_headroom_percent = live_share;
        // One process doing the bulk work: it learns its share from Keap's headers.
        settings.processes = 1;
        // A command line can wait; a refusal would only be retried after the same wait.
        settings.max_wait = Duration::from_secs(60);
        let shared = Arc::new(Pacer::new(settings));
        api = api.with_pacer(shared.clone());
        pacer = Some(shared);
    }
    let mut settings = SignupSettings::from_config(&app.config);
    if !welcome {
        settings.welcome_tag = None;
        settings.welcome_email = None;
    }
    let credentials: Arc<dyn keap_relay::token::CredentialSource> = app.connection.clone();
    ServiceSink {
        service: SignupService::new(api, credentials, settings),
        pacer,
    }
}

/// The whole command: read, validate, report; then (with `--yes`, without `--dry-run`) send,
/// summarise and write the failures. The exit code: 0 when nothing failed.
pub async fn run(args: &BackfillArgs, terminal: bool) -> std::process::ExitCode {
    use std::process::ExitCode;
    let rows = match read_rows(&args.input, args.format, &args.map) {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("relay-local backfill: {error}");
            return ExitCode::from(2);
        }
    };
    let plan = validate(rows.clone());
    print!("{}", plan_report(&plan));
    if args.dry_run || !args.yes {
        println!(
            "nothing sent ({}); run again with --yes to send",
            if args.dry_run { "--dry-run" } else { "no --yes" }
        );
        return if plan.invalid.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let sink: Arc<dyn Sink> = match &args.signup_url {
        Some(url) => Arc::new(SignupUrlSink {
            http: reqwest::Client::new(),
            url: url.clone(),
            key: crate::helpers::signing_key(args.key.clone()),
        }),
        None => match service_sink(args.live_share, args.welcome).await {
            Ok(sink) => Arc::new(sink),
            Err(error) => {
                eprintln!("relay-local backfill: cannot set up the signup path: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut checkpoint = match Checkpoint::open(&args.checkpoint_path(), &args.input) {
        Ok(checkpoint) => checkpoint,
        Err(error) => {
            eprintln!("relay-local backfill: {error}");
            return ExitCode::from(2);
        }
    };
    let progress = ConsoleProgress::new(plan.valid.len() as u64, terminal);
    let started = Instant::now();
    let summary = match send_all(&plan, &mut checkpoint, sink.clone(), args.concurrency, &progress).await {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("relay-local backfill: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "backfill done in {:.1} s: {} created, {} updated, {} queued by /signup, {} skipped (duplicate emails), {} failed; {} rows sent now, {} from an earlier run",
        started.elapsed().as_secs_f64(),
        summary.created,
        summary.updated,
        summary.queued,
        summary.skipped,
        summary.failed.len(),
        summary.sent,
        summary.resumed
    );
    if let Some(quota) = sink.quota() {
        println!("{}", quota_text(Some(&quota)));
    }
    if let Some(reason) = &summary.stopped {
        println!(
            "stopped: {reason}\n{} rows not sent yet: fix the cause and run the same command again; it resumes from {}",
            summary.not_sent,
            args.checkpoint_path().display()
        );
    }
    if summary.failed.is_empty() {
        return if summary.stopped.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let path = args.failures_path();
    match write_failures(&path, &rows, &summary.failed) {
        Ok(()) => println!(
            "failures (with reasons) written to {}: fix them and feed that file back in",
            path.display()
        ),
        Err(error) => eprintln!("relay-local backfill: {error}"),
    }
    for (line, reason) in summary.failed.iter().take(20) {
        println!("  line {line}: {reason}");
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<BackfillArgs, CliError> {
        parse_args(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn flags_are_parsed_and_bounded() {
        let parsed = args("users.csv --map email=E-mail --live-share 20 --yes --concurrency 8").unwrap();
        assert_eq!(parsed.input, PathBuf::from("users.csv"));
        assert_eq!(parsed.map, vec![("email".to_owned(), "E-mail".to_owned())]);
        assert_eq!((parsed.live_share, parsed.yes, parsed.concurrency), (20, true, 8));
        assert!(!parsed.welcome && !parsed.dry_run);
        assert_eq!(parsed.checkpoint_path(), PathBuf::from("users.csv.checkpoint"));
        assert!(args("--yes").is_err(), "the file is required");
        assert!(args("a.csv --map nickname=x").is_err());
        assert!(args("a.csv --map fields.=x").is_err(), "a custom field needs its label");
        let parsed = args("a.csv --map fields.Plan=plan --map utm_source=src --map phone=Tel").unwrap();
        assert_eq!(parsed.map.len(), 3);
        assert!(args("a.csv --live-share 95").is_err());
        assert!(args("a.csv --concurrency 0").is_err());
        assert!(args("a.csv b.csv").is_err());
    }

    #[test]
    fn csv_and_json_lines_are_validated_with_line_numbers() {
        let dir = test_support::temp::TempDir::new("backfill-read");
        let csv_path = dir.path().join("users.csv");
        std::fs::write(
            &csv_path,
            "E-mail,given_name,opt_in,tags,notes\n\
             a@example.com,Ann,yes,VIP;12,x\n\
             not-an-email,Bob,,,\n\
             A@example.com,Ann again,,,\n\
             \"c@example.com\",\"Smith, Jr\",no,,\n",
        )
        .unwrap();
        let map = vec![("email".to_owned(), "E-mail".to_owned())];
        let rows = read_rows(&csv_path, None, &map).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].body["tags"], serde_json::json!(["VIP", 12]));
        assert_eq!(rows[0].body["opt_in"], Value::Bool(true));
        let plan = validate(rows);
        assert_eq!(plan.valid.len(), 2);
        assert_eq!(plan.valid[1].1.given_name.as_deref(), Some("Smith, Jr"));
        assert_eq!(plan.invalid.len(), 1);
        assert_eq!(plan.invalid[0].0.line, 3);
        assert!(plan.invalid[0].1.starts_with("invalid_email"), "{}", plan.invalid[0].1);
        assert_eq!((plan.duplicates[0].0.line, plan.duplicates[0].1), (4, 2));
        assert!(plan_report(&plan).contains("line 3: invalid_email"));

        let missing = read_rows(&csv_path, None, &[]).unwrap_err();
        assert!(matches!(missing, BackfillError::NoEmailColumn { .. }), "{missing}");

        let jsonl = dir.path().join("users.jsonl");
        std::fs::write(
            &jsonl,
            "{\"mail\":\"d@example.com\"}\n\n[1,2]\n{\"mail\":\"e@example.com\",\"tags\":[\"T\"]}\n",
        )
        .unwrap();
        let plan = validate(read_rows(&jsonl, None, &[("email".into(), "mail".into())]).unwrap());
        assert_eq!(plan.valid.len(), 2);
        assert_eq!(plan.invalid[0].0.line, 3);
    }

    #[test]
    fn every_body_field_is_a_column_and_the_body_is_the_signup_body() {
        let dir = test_support::temp::TempDir::new("backfill-fields");
        let csv_path = dir.path().join("users.csv");
        std::fs::write(
            &csv_path,
            "email,phone,company,job_title,website,lead_source,ip_address,utm_source,utm_campaign,fields.Plan,Seats\n\
             a@example.com,+1 555 0100,Acme,CTO,acme.example,42,203.0.113.7,newsletter,spring,Pro,3\n\
             b@example.com,,,,,Partner,,,,,\n",
        )
        .unwrap();
        let rows = read_rows(&csv_path, None, &[("fields.Seats".into(), "Seats".into())]).unwrap();
        assert_eq!(
            Value::Object(rows[0].body.clone()),
            serde_json::json!({
                "email": "a@example.com", "phone": "+1 555 0100", "company": "Acme", "job_title": "CTO",
                "website": "acme.example", "lead_source": 42, "ip_address": "203.0.113.7",
                "utm": {"source": "newsletter", "campaign": "spring"},
                "fields": {"Plan": "Pro", "Seats": "3"},
            })
        );
        assert_eq!(rows[1].body["lead_source"], "Partner", "a name, looked up when sent");
        let plan = validate(rows);
        assert!(plan.invalid.is_empty(), "{:?}", plan.invalid);
        // What a deployed /signup is sent parses back to the same signup.
        for (_, signup) in &plan.valid {
            let body = signup_json(signup).unwrap();
            assert_eq!(&Signup::from_json(body.as_bytes()).unwrap(), signup, "{body}");
        }
        let details = &plan.valid[0].1.details;
        assert_eq!(details.utm.as_ref().and_then(|u| u.campaign.as_deref()), Some("spring"));
        assert_eq!(details.fields.len(), 2);

        // JSON Lines: the body's own objects, flat columns and mapped names together.
        let jsonl = dir.path().join("users.jsonl");
        std::fs::write(
            &jsonl,
            "{\"email\":\"c@example.com\",\"utm\":{\"medium\":\"email\"},\"utm_source\":\"ad\",\"fields\":{\"Plan\":\"Free\"},\"seats\":2,\"Phone\":\"555 0101\"}\n\
             {\"email\":\"d@example.com\",\"ip_address\":\"not an address\"}\n",
        )
        .unwrap();
        let map = [
            ("fields.Seats".into(), "seats".into()),
            ("phone".into(), "Phone".into()),
        ];
        let rows = read_rows(&jsonl, None, &map).unwrap();
        assert_eq!(
            Value::Object(rows[0].body.clone()),
            serde_json::json!({
                "email": "c@example.com", "phone": "555 0101",
                "utm": {"medium": "email", "source": "ad"},
                "fields": {"Plan": "Free", "Seats": 2},
            })
        );
        let plan = validate(rows);
        assert_eq!(plan.invalid.len(), 1);
        assert!(plan.invalid[0].1.contains("ip_address"), "{:?}", plan.invalid);
    }

    /// An input of `count` users `u0@example.com` …, one a line after the header (line 2 on),
    /// and its plan.
    fn numbered_users(dir: &test_support::temp::TempDir, count: usize) -> (PathBuf, Plan) {
        let input = dir.path().join("in.csv");
        let text: String = (0..count).map(|n| format!("u{n}@example.com\n")).collect();
        std::fs::write(&input, format!("email\n{text}")).unwrap();
        let plan = validate(read_rows(&input, None, &[]).unwrap());
        (input, plan)
    }

    /// A sink that says every row needs the operator first (as Keap not connected does).
    struct Unconnected(std::sync::atomic::AtomicU32);

    #[async_trait]
    impl Sink for Unconnected {
        async fn send(&self, _: &Signup) -> Result<RowOutcome, SendError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(SendError::Stop("Keap is not connected: connect it first".into()))
        }
    }

    #[tokio::test]
    async fn a_run_that_cannot_succeed_stops_at_once_and_resumes_later() {
        let dir = test_support::temp::TempDir::new("backfill-stop");
        let (input, plan) = numbered_users(&dir, 50);
        let mut checkpoint = Checkpoint::open(&dir.path().join("cp"), &input).unwrap();
        let sink = Arc::new(Unconnected(Default::default()));
        let progress = ConsoleProgress::new(50, false);
        let summary = send_all(&plan, &mut checkpoint, sink.clone(), 4, &progress)
            .await
            .unwrap();
        assert_eq!(
            summary.stopped.as_deref(),
            Some("Keap is not connected: connect it first")
        );
        assert_eq!((summary.sent, summary.not_sent), (0, 50));
        assert!(summary.failed.is_empty(), "no row is blamed: {:?}", summary.failed);
        let tries = sink.0.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            tries <= 4,
            "at most one try per worker, not {MAX_ATTEMPTS} per row: {tries}"
        );
        assert!(
            checkpoint.done.is_empty(),
            "nothing journalled: the same command sends every row"
        );
    }

    /// Keap failing (5xx, unreachable) for every row, or for one row only.
    struct Failing {
        only: Option<&'static str>,
    }

    #[async_trait]
    impl Sink for Failing {
        async fn send(&self, signup: &Signup) -> Result<RowOutcome, SendError> {
            match self.only {
                Some(email) if signup.email != email => Ok(RowOutcome::Created),
                _ => Err(SendError::Later(
                    Duration::ZERO,
                    "Keap unavailable: connection failed".into(),
                )),
            }
        }
    }

    #[tokio::test]
    async fn keap_failing_every_row_stops_the_run_one_failing_row_fails_alone() {
        let dir = test_support::temp::TempDir::new("backfill-outage");
        let (input, plan) = numbered_users(&dir, 6);
        let progress = ConsoleProgress::new(6, false);

        let mut checkpoint = Checkpoint::open(&dir.path().join("down"), &input).unwrap();
        let down = Arc::new(Failing { only: None });
        let summary = send_all(&plan, &mut checkpoint, down, 2, &progress).await.unwrap();
        let reason = summary.stopped.as_deref().unwrap_or_default();
        assert!(reason.starts_with("Keap kept failing"), "{summary:?}");
        assert!(
            summary.failed.is_empty(),
            "an outage is no row's fault: {:?}",
            summary.failed
        );
        assert_eq!(summary.not_sent, 6);

        let mut checkpoint = Checkpoint::open(&dir.path().join("one"), &input).unwrap();
        let one_row = Arc::new(Failing {
            only: Some("u1@example.com"),
        });
        let summary = send_all(&plan, &mut checkpoint, one_row, 2, &progress).await.unwrap();
        assert_eq!((summary.stopped, summary.created), (None, 5));
        assert_eq!(summary.failed.len(), 1, "{:?}", summary.failed);
        assert_eq!(summary.failed[0].0, 3, "u1 is on line 3");
        assert!(summary.failed[0].1.starts_with("gave up after"), "{:?}", summary.failed);
    }

    #[test]
    fn a_failures_csv_reads_back_as_input() {
        let dir = test_support::temp::TempDir::new("backfill-failures");
        let rows = vec![Row {
            line: 7,
            body: serde_json::from_str(r#"{"email":"f@example.com","tags":["A",3],"given_name":"Fé"}"#).unwrap(),
        }];
        let path = dir.path().join("failures.csv");
        write_failures(&path, &rows, &[(7, "Keap refused it (400): bad".into())]).unwrap();
        let back = read_rows(&path, None, &[]).unwrap();
        assert_eq!(back[0].body["email"], "f@example.com");
        assert_eq!(back[0].body["tags"], serde_json::json!(["A", 3]));
        assert_eq!(back[0].body["given_name"], "Fé");
        assert!(!back[0].body.contains_key("reason"));
    }

    #[test]
    fn the_checkpoint_survives_a_cut_line_and_refuses_another_input() {
        let dir = test_support::temp::TempDir::new("backfill-checkpoint");
        let input = dir.path().join("in.csv");
        std::fs::write(&input, "email\na@example.com\n").unwrap();
        let path = dir.path().join("cp");
        let mut checkpoint = Checkpoint::open(&path, &input).unwrap();
        checkpoint.record(2, &RowOutcome::Created).unwrap();
        drop(checkpoint);
        // A kill in the middle of writing a line.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "3\tcrea").unwrap();
        drop(file);
        let mut checkpoint = Checkpoint::open(&path, &input).unwrap();
        assert_eq!(checkpoint.done.len(), 1);
        checkpoint.record(3, &RowOutcome::Failed("x\ty".into())).unwrap();
        let checkpoint = Checkpoint::open(&path, &input).unwrap();
        assert_eq!(checkpoint.done[&3], RowOutcome::Failed("x y".into()));
        std::fs::write(&input, "email\nb@example.com\n").unwrap();
        assert!(matches!(
            Checkpoint::open(&path, &input),
            Err(BackfillError::CheckpointMismatch { .. })
        ));
    }
}
