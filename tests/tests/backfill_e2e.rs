//! `relay-local backfill` against the sandbox under a quota configured down (the sandbox's
//! minute shortened `BACKFILL_TIME_SCALE` times, default 10: 60 calls per 6 s), so that a CI
//! run goes through several quota windows in seconds.
//!
//! - Killed at a random point and started again, the backfill ends in the same state as an
//!   uninterrupted one: every valid row is one contact with its fields and tags, nothing lost,
//!   no contact twice, the checkpoint holding every row once.
//! - Uninterrupted, it runs at the quota: under 1 % of Keap's answers are 429s and the run
//!   takes within 115 % of the quota's minimum time (the calls at the quota's sustained rate).
//!
//! The full figure (docs/backfill.md): `BACKFILL_ROWS=20000 BACKFILL_TIME_SCALE=1
//! BACKFILL_OAUTH_QUOTA=1 cargo test -p relay-tests --release --test backfill_e2e -- at_the_quota --nocapture`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keap_relay::SecretString;
use keap_relay::app::App;
use keap_relay::config::{AuthMode, local_config};
use keap_relay::keap::pacing::{PacingSettings, QuotaLimits};
use keap_relay::store::SecretStore;
use keap_relay::store::memory::MemoryStore;
use keap_sandbox::{DEFAULT_API_KEY, RateLimit, Sandbox, SandboxConfig};
use relay_local::backfill::{self, BackfillArgs, Checkpoint, ConsoleProgress, Sink, Summary};
use relay_tests::load::{Rng, env_number};
use test_support::temp::TempDir;

struct Setup {
    sandbox: Sandbox,
    limit: RateLimit,
    /// Calls a second the quota sustains.
    sustained: f64,
}

async fn setup() -> Setup {
    let scale = env_number("BACKFILL_TIME_SCALE", 10).max(1) as u32;
    let limit = if env_number("BACKFILL_OAUTH_QUOTA", 0) == 1 {
        RateLimit {
            time_scale: scale,
            ..RateLimit::KEAP_OAUTH_CLIENT
        }
    } else {
        RateLimit {
            per_second: 20,
            per_minute: 60,
            per_day: 0,
            time_scale: scale,
        }
    };
    let sustained = f64::from(limit.per_second).min(f64::from(limit.per_minute) * f64::from(scale) / 60.0);
    let sandbox = Sandbox::start(SandboxConfig {
        rate_limit: Some(limit),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    Setup {
        sandbox,
        limit,
        sustained,
    }
}

/// A fresh "process": the functions' configuration in api-key mode against the sandbox, pacing
/// on with the sandbox's limits.
async fn sink(setup: &Setup) -> Arc<dyn Sink> {
    let store = Arc::new(MemoryStore::new());
    let secret = format!(r#"{{"api_key":"{DEFAULT_API_KEY}","signup_signing_key":"k"}}"#);
    store
        .put_version("app", "v1", &SecretString::from(secret))
        .await
        .unwrap();
    let mut config = local_config(AuthMode::ApiKey, &setup.sandbox.base_url());
    config.pacing = PacingSettings {
        limits: QuotaLimits {
            per_second: setup.limit.per_second,
            per_minute: setup.limit.per_minute * setup.limit.time_scale,
            per_day: 0,
        },
        ..PacingSettings::defaults(AuthMode::ApiKey)
    };
    config.welcome_tag = Some("Welcome".into());
    let app = App::with_parts(config, store, None).unwrap();
    Arc::new(backfill::service_sink_for(&app, 5, false))
}

/// `rows` users, every tenth with a tag, plus bad and repeated rows.
fn input(dir: &TempDir, rows: usize) -> std::path::PathBuf {
    let path = dir.path().join("users.csv");
    let mut text = String::from("Mail,given_name,family_name,tags,opt_in\n");
    for n in 0..rows {
        let tags = if n % 10 == 0 { "Imported" } else { "" };
        text.push_str(&format!("user{n}@example.com,Given{n},Family{n},{tags},yes\n"));
        if n == 3 {
            text.push_str("not-an-address,Bad,Row,,\n");
            text.push_str("USER1@example.com,Again,,,\n");
        }
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn args(path: &std::path::Path) -> BackfillArgs {
    BackfillArgs {
        map: vec![("email".into(), "Mail".into())],
        yes: true,
        concurrency: 4,
        ..BackfillArgs::new(path)
    }
}

async fn send(setup: &Setup, args: &BackfillArgs) -> Summary {
    let rows = backfill::read_rows(&args.input, args.format, &args.map).unwrap();
    let plan = backfill::validate(rows);
    let mut checkpoint = Checkpoint::open(&args.checkpoint_path(), &args.input).unwrap();
    let progress = ConsoleProgress::new(plan.valid.len() as u64, false);
    backfill::send_all(&plan, &mut checkpoint, sink(setup).await, args.concurrency, &progress)
        .await
        .unwrap()
}

/// Every valid row is exactly one contact with its fields; the tagged ones have the tag.
fn assert_end_state(setup: &Setup, rows: usize) {
    let tag = setup.sandbox.tag_by_name("Imported").expect("the tag was created");
    for n in 0..rows {
        let contact = setup
            .sandbox
            .contact_by_email(&format!("user{n}@example.com"))
            .unwrap_or_else(|| panic!("user{n} lost"));
        assert_eq!(contact.given_name, format!("Given{n}"));
        assert_eq!(contact.tag_ids.contains(&tag), n % 10 == 0, "user{n}");
    }
    let stats = setup.sandbox.stats();
    assert_eq!(stats.contacts_created, rows as u64, "no contact twice, none lost");
    assert!(
        setup.sandbox.tag_by_name("Welcome").is_none(),
        "no welcome tag in a backfill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_at_a_random_point_and_restarted_ends_in_the_same_state() {
    let setup = setup().await;
    let dir = TempDir::new("backfill-kill");
    let rows = env_number("BACKFILL_KILL_ROWS", 80) as usize;
    let path = input(&dir, rows);
    let args = args(&path);
    let minimum = rows as f64 / setup.sustained;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let seed = env_number("BACKFILL_SEED", seed | 1);
    let mut rng = Rng(seed);
    let kill_after = Duration::from_millis(500 + rng.below((minimum * 700.0) as u64));
    eprintln!("killing the first run after {kill_after:?} (BACKFILL_SEED={seed})");
    let first = {
        let (setup, args) = (&setup, args.clone());
        tokio::time::timeout(kill_after, async move { send(setup, &args).await }).await
    };
    assert!(first.is_err(), "the first run was killed before it finished");
    let done_before = Checkpoint::open(&args.checkpoint_path(), &path).unwrap().done.len();
    let summary = send(&setup, &args).await;
    eprintln!("{done_before} rows done before the kill; the restart: {summary:?}");
    assert_eq!(summary.resumed, done_before as u64);
    assert_eq!(summary.resumed + summary.sent, rows as u64);
    // A row in flight at the kill is sent again and found by its email: "updated", not a
    // second contact (assert_end_state counts the contacts).
    assert_eq!(summary.created + summary.updated, rows as u64);
    assert!(summary.updated <= args.concurrency as u64, "{summary:?}");
    assert_eq!(summary.skipped, 1);
    assert_eq!(summary.failed.len(), 1);
    assert!(summary.failed[0].1.contains("invalid_email"), "{:?}", summary.failed);
    assert_end_state(&setup, rows);
    let stats = setup.sandbox.stats();
    let upserts = stats.calls_to("PUT", "/crm/rest/v1/contacts") as u64;
    // Only the rows in flight at the kill may have been sent twice (an upsert by email: the
    // same contact again), never more than the concurrency.
    assert!(
        upserts <= rows as u64 + args.concurrency as u64,
        "{upserts} upserts for {rows} rows"
    );
    // The journal holds every row once.
    let journal = std::fs::read_to_string(args.checkpoint_path()).unwrap();
    let mut lines: Vec<&str> = journal.lines().skip(1).filter_map(|l| l.split('\t').next()).collect();
    let count = lines.len();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines.len(), count, "no row recorded twice");
    // Run again: nothing left to send.
    let again = send(&setup, &args).await;
    assert_eq!((again.sent, again.resumed), (0, rows as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_runs_at_the_quota_without_a_429_storm() {
    let setup = setup().await;
    let dir = TempDir::new("backfill-rate");
    let rows = env_number("BACKFILL_ROWS", 150) as usize;
    let path = input(&dir, rows);
    let args = args(&path);
    let started = Instant::now();
    let summary = send(&setup, &args).await;
    let elapsed = started.elapsed();
    assert_eq!((summary.created, summary.sent), (rows as u64, rows as u64));
    assert_end_state(&setup, rows);
    let stats = setup.sandbox.stats();
    let answered = stats.calls.len() as u64;
    let calls_needed = answered - stats.throttled;
    let minimum = calls_needed as f64 / setup.sustained;
    let ratio = elapsed.as_secs_f64() / minimum;
    let share_429 = stats.throttled as f64 / answered as f64;
    eprintln!(
        "backfill of {rows} rows: {calls_needed} calls in {:.1} s, minimum {minimum:.1} s ({:.1} %), {} of {answered} answered 429 ({:.2} %)",
        elapsed.as_secs_f64(),
        ratio * 100.0,
        stats.throttled,
        share_429 * 100.0
    );
    assert!(share_429 < 0.01, "{share_429}");
    // The target is 115 % (met at this size too, ~110 %); a CI box shared with compilers gets
    // some slack at this size, where a second of scheduling delay is 6 %.
    let target = if std::env::var_os("BACKFILL_ROWS").is_some() {
        1.15
    } else {
        1.3
    };
    assert!(ratio <= target, "{ratio}");
}

/// Every signup body field comes through a backfill's columns (custom fields as
/// `fields.<label>`), and a row Keap's model cannot take fails at once with its reason: it is
/// the row's to fix, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_sets_every_field_and_fails_a_bad_custom_value_without_retrying_it() {
    let setup = setup().await;
    let plan_field = setup.sandbox.add_custom_field("Plan", "Dropdown", &["Free", "Pro"]);
    let seats = setup.sandbox.add_custom_field("Seats", "WholeNumber", &[]);
    let partner = setup.sandbox.add_lead_source("Partner");
    let dir = TempDir::new("backfill-fields");
    let path = dir.path().join("users.csv");
    std::fs::write(
        &path,
        "Mail,phone,company,job_title,website,lead_source,ip_address,fields.Plan,Seat count,fields.Colour\n\
         ann@example.com,+1 555 0100,Acme,CTO,acme.example,Partner,203.0.113.7,pro,12,\n\
         bob@example.com,,,,,,,Gold,,\n\
         cy@example.com,,,,,,,,,blue\n",
    )
    .unwrap();
    let args = BackfillArgs {
        map: vec![
            ("email".into(), "Mail".into()),
            ("fields.Seats".into(), "Seat count".into()),
        ],
        ..args(&path)
    };
    let summary = send(&setup, &args).await;
    assert_eq!((summary.created, summary.stopped.as_deref()), (1, None), "{summary:?}");
    let reasons: Vec<&str> = summary.failed.iter().map(|(_, reason)| reason.as_str()).collect();
    assert_eq!(summary.failed.iter().map(|(line, _)| *line).collect::<Vec<_>>(), [3, 4]);
    assert!(
        reasons[0].starts_with("invalid_custom_field: `fields.Plan`"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("unknown_custom_field"), "{reasons:?}");
    assert!(reasons[1].contains("Colour"), "{reasons:?}");

    let ann = setup.sandbox.contact_by_email("ann@example.com").unwrap();
    assert_eq!(ann.phones, ["+1 555 0100"]);
    assert_eq!(ann.extra["company_name"], "Acme");
    assert_eq!(ann.extra["job_title"], "CTO");
    assert_eq!(ann.extra["website"], "https://acme.example");
    assert_eq!(ann.extra["lead_source_id"], partner.id);
    assert_eq!(ann.extra["origin"]["ip_address"], "203.0.113.7");
    let fields = ann.custom_field_values();
    assert_eq!(fields, [(plan_field.id, "Pro".into()), (seats.id, 12.into())]);
    assert!(setup.sandbox.contact_by_email("bob@example.com").is_none());
    assert!(setup.sandbox.contact_by_email("cy@example.com").is_none());
    // Each failed row reached Keap at most once: nothing was retried.
    let upserts = setup.sandbox.stats().calls_to("PUT", "/crm/rest/v1/contacts");
    assert_eq!(upserts, 1, "only ann's row was sent to Keap");

    // The failures CSV keeps the custom-field columns, so the fixed file can be fed back in.
    let rows = backfill::read_rows(&path, None, &args.map).unwrap();
    let failures = dir.path().join("failures.csv");
    backfill::write_failures(&failures, &rows, &summary.failed).unwrap();
    let back = backfill::read_rows(&failures, None, &[]).unwrap();
    assert_eq!(back[0].body["fields"]["Plan"], "Gold");
    assert_eq!(back[1].body["fields"]["Colour"], "blue");
}
