//! The operator console: `GET /admin` (one HTML page, no script), the same data as JSON on
//! `GET /status` (its earlier fields kept, new ones added), and the console's actions, each a
//! form POST carrying a CSRF token: `POST /admin/redrive` and `POST /admin/discard` (one dead
//! letter of the signup or the event queue) and `POST /admin/enable-events` (switch the event
//! receiver on again after its 410). Every action is logged with who (the Basic-auth user
//! name) and from where.
//!
//! Everything comes from what the functions already keep: the token state (through
//! [`Connection::status`]), the queues' own counts and dead letters ([`QueueInspector`]) and
//! the event receiver's switch; no database.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use keap_relay::config::Config;
use keap_relay::events::receiver::{self, ReceiverState};
use keap_relay::events::{Event, EventType};
use keap_relay::keap::pacing::{QuotaReporter, QuotaUse, Unit};
use keap_relay::notices::{GoalNotice, Notices};
use keap_relay::queues::{DeadLetter, QueueCounts, QueueInspector};
use keap_relay::signup::QueuedSignup;
use keap_relay::store::SecretStore;
use keap_relay::token::ConnectionStatus;
use keap_relay::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;

use keap_relay::http_edge::escape_html;

/// How long a console page's CSRF token stays valid.
pub const CSRF_TTL: Duration = Duration::from_secs(3600);

/// What the console looks into, besides the connection. All optional: a deployment without
/// a queue or events simply shows less.
#[derive(Default, Clone)]
pub struct ConsoleDeps {
    /// The signup queue (`SIGNUP_QUEUE_URL`) and its dead-letter queue.
    pub signups: Option<Arc<dyn QueueInspector>>,
    /// The event queue (`EVENTS_QUEUE_URL`) and its dead-letter queue.
    pub events: Option<Arc<dyn QueueInspector>>,
    /// `EVENTS_WEBHOOK_URL`'s origin (scheme, host, port: the path may carry a token).
    pub events_receiver: Option<String>,
    /// The receiver's on/off switch (`EVENTS_STATE_SECRET_ID`).
    pub receiver_state: Option<(Arc<dyn SecretStore>, String)>,
    pub welcome: Welcome,
    /// Where events go (`connection.recovered` from the callback).
    pub emit: Option<Arc<dyn keap_relay::events::EventSink>>,
    /// Keap's quota use (docs/pacing.md); none: not shown.
    pub quota: Option<Arc<dyn QuotaReporter>>,
    /// What signup and signup-retry noted (a welcome goal nobody listens to); none: not shown.
    pub notices: Option<Arc<dyn Notices>>,
}

/// The welcome configuration, as the console shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Welcome {
    /// `KEAP_WELCOME_TAG`.
    pub tag: Option<String>,
    /// A direct welcome email is configured (`KEAP_WELCOME_EMAIL_SUBJECT`…).
    pub email: bool,
    /// `KEAP_WELCOME_GOAL`'s label (`integration:call_name`, `automation:<id>:<goal_id>`).
    pub goal: Option<String>,
    /// The configured goal was lately achieved and no published campaign listened (a
    /// configuration mistake, docs/welcome-and-fields.md); null when not seen.
    pub goal_without_listener: Option<GoalNotice>,
}

impl Welcome {
    pub fn from_config(config: &Config) -> Self {
        Self {
            tag: config.welcome_tag.clone(),
            email: config.welcome_email.is_some(),
            goal: config.signup_options.welcome_goal.as_ref().map(|g| g.label()),
            goal_without_listener: None,
        }
    }

    /// This configuration with `notices`' notice, when it is about the goal configured now
    /// (a notice about an earlier goal is not this deployment's problem any more).
    async fn with_notice(&self, notices: Option<&dyn Notices>, now: SystemTime) -> Self {
        let (Some(goal), Some(notices)) = (&self.goal, notices) else {
            return self.clone();
        };
        let notice = notices.goal_without_listener(now).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the welcome goal's notice");
            None
        });
        Self {
            goal_without_listener: notice.filter(|n| &n.goal == goal),
            ..self.clone()
        }
    }
}

/// The origin of a URL (no path, no query), for display.
pub fn origin_of(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    Some(url.origin().ascii_serialization())
}

/// One queue as the console reports it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    #[serde(flatten)]
    pub counts: QueueCounts,
    /// Up to ten dead letters, each with the reason it is there.
    pub dead_letter_sample: Vec<DeadLetterReport>,
    /// Set when the queue could not be read (the rest of the page still answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterReport {
    pub id: String,
    /// The signup's email or the event's type.
    pub subject: String,
    pub reason: String,
    #[serde(serialize_with = "opt_time")]
    pub sent_at: Option<SystemTime>,
    pub receive_count: u32,
}

/// The event receiver.
#[derive(Debug, Clone, Serialize)]
pub struct EventsReport {
    /// `EVENTS_WEBHOOK_URL`'s origin; none: events are off.
    pub receiver: Option<String>,
    /// False after the receiver answered 410, until the operator switches it on again.
    pub receiver_enabled: bool,
    pub receiver_state: ReceiverState,
    pub queue: Option<QueueReport>,
}

/// Everything the console shows; `/status` answers it as JSON (the connection's fields at the
/// top level, as before).
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleReport {
    #[serde(flatten)]
    pub connection: ConnectionStatus,
    pub welcome: Welcome,
    pub signup_queue: Option<QueueReport>,
    pub events: EventsReport,
    /// The last rotation, failure and re-authorization, newest first.
    pub history: Vec<HistoryEntry>,
    /// Keap's quota as Keap last reported it; absent when Keap could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaUse>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    #[serde(serialize_with = "time")]
    pub at: SystemTime,
    pub what: String,
}

fn time<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_seconds(*at))
}

fn opt_time<S: serde::Serializer>(at: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => time(at, serializer),
        None => serializer.serialize_none(),
    }
}

/// Which queue an action is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueName {
    Signups,
    Events,
}

impl QueueName {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "signups" => Some(QueueName::Signups),
            "events" => Some(QueueName::Events),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Signups => "signups",
            QueueName::Events => "events",
        }
    }
}

impl ConsoleDeps {
    pub fn inspector(&self, queue: QueueName) -> Option<&Arc<dyn QueueInspector>> {
        match queue {
            QueueName::Signups => self.signups.as_ref(),
            QueueName::Events => self.events.as_ref(),
        }
    }

    /// Reads everything but the connection (which the handler passes in).
    pub async fn report(&self, connection: ConnectionStatus) -> ConsoleReport {
        let signup_queue = match &self.signups {
            Some(inspector) => Some(queue_report(inspector.as_ref(), QueueName::Signups).await),
            None => None,
        };
        let events_queue = match &self.events {
            Some(inspector) => Some(queue_report(inspector.as_ref(), QueueName::Events).await),
            None => None,
        };
        let receiver_state = match &self.receiver_state {
            Some((store, id)) => receiver::load(store.as_ref(), id).await.unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read the event receiver's switch");
                ReceiverState::default()
            }),
            None => ReceiverState::default(),
        };
        let history = history(&connection, &receiver_state);
        let quota = match &self.quota {
            Some(reporter) => reporter.quota_use().await,
            None => None,
        };
        let welcome = self
            .welcome
            .with_notice(self.notices.as_deref(), SystemTime::now())
            .await;
        ConsoleReport {
            quota,
            welcome,
            signup_queue,
            events: EventsReport {
                receiver: self.events_receiver.clone(),
                receiver_enabled: !receiver_state.disabled,
                receiver_state,
                queue: events_queue,
            },
            history,
            connection,
        }
    }
}

async fn queue_report(inspector: &dyn QueueInspector, queue: QueueName) -> QueueReport {
    let counts = inspector.counts().await;
    let sample = match &counts {
        Ok(counts) if counts.dead_letters > 0 => inspector.dead_letters(keap_relay::queues::PEEK_MAX).await,
        _ => Ok(Vec::new()),
    };
    let error = counts
        .as_ref()
        .err()
        .map(ToString::to_string)
        .or_else(|| sample.as_ref().err().map(ToString::to_string));
    if let Some(error) = &error {
        tracing::warn!(queue = queue.as_str(), %error, "cannot read the queue for the console");
    }
    QueueReport {
        counts: counts.unwrap_or_default(),
        dead_letter_sample: sample
            .unwrap_or_default()
            .into_iter()
            .map(|letter| dead_letter_report(letter, queue))
            .collect(),
        error,
    }
}

/// Why a dead letter is there, as far as its body tells: SQS keeps no reason, so the console
/// says what the function would find (a bad body) or what must have happened (every attempt failed).
fn dead_letter_report(letter: DeadLetter, queue: QueueName) -> DeadLetterReport {
    // SQS counts every receive, the console's own looks too: "received", not "attempts".
    let received = letter.receive_count;
    let (subject, reason) = match queue {
        QueueName::Signups => match QueuedSignup::from_message(&letter.body) {
            Ok(queued) => (
                queued.signup.email,
                "Keap refused it or stayed unavailable on every attempt (the signup-retry log has each \
                 attempt's reason under this message id)"
                    .to_owned(),
            ),
            Err(invalid) => (
                "(not a signup)".into(),
                format!("not a valid signup: {} ({invalid})", invalid.code()),
            ),
        },
        QueueName::Events => match Event::from_json(&letter.body) {
            Ok(event) => (
                event.kind.as_str().to_owned(),
                "the receiver did not take it on any attempt".to_owned(),
            ),
            Err(_) => ("(not an event)".into(), "not a valid event".into()),
        },
    };
    DeadLetterReport {
        id: letter.id,
        subject: truncate(&subject, 200),
        reason,
        sent_at: letter.sent_at,
        receive_count: received,
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn history(connection: &ConnectionStatus, receiver: &ReceiverState) -> Vec<HistoryEntry> {
    let mut entries = Vec::new();
    if let Some(at) = connection.last_refresh_at {
        let generation = connection
            .generation
            .map(|g| format!(" (generation {g})"))
            .unwrap_or_default();
        entries.push(HistoryEntry {
            at,
            what: format!("new token pair{generation}"),
        });
    }
    if let (Some(at), Some(error)) = (connection.last_error_at, &connection.last_error) {
        entries.push(HistoryEntry {
            at,
            what: format!("failure: {error}"),
        });
    }
    if let Some(at) = connection.needs_reauth_since {
        let reason = connection
            .needs_reauth_reason
            .as_deref()
            .unwrap_or("no reason recorded");
        entries.push(HistoryEntry {
            at,
            what: format!("needs re-authorization: {reason}"),
        });
    }
    if let (Some(at), Some(reason)) = (receiver.disabled_at, &receiver.disabled_reason) {
        entries.push(HistoryEntry {
            at,
            what: format!("event receiver switched off: {reason}"),
        });
    }
    if let (Some(at), Some(who)) = (receiver.enabled_at, &receiver.enabled_by) {
        entries.push(HistoryEntry {
            at,
            what: format!("event receiver switched on by {who}"),
        });
    }
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.at));
    entries
}

// CSRF: a form token is `<unix seconds>.<hex HMAC-SHA256(admin_password, "csrf.<seconds>")>`.
// A cross-site page cannot read it (the console is same-origin, no CORS), so a forged POST
// that the browser sends with the cached Basic credentials lacks it.

fn csrf_mac(admin_password: &SecretString, issued: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(admin_password.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("keap-relay-console-csrf.{issued}").as_bytes());
    mac
}

pub fn csrf_token(admin_password: &SecretString, now: SystemTime) -> String {
    let issued = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!(
        "{issued}.{}",
        hex::encode(csrf_mac(admin_password, issued).finalize().into_bytes())
    )
}

pub fn csrf_valid(admin_password: &SecretString, token: Option<&str>, now: SystemTime) -> bool {
    let Some((issued, mac)) = token.and_then(|t| t.split_once('.')) else {
        return false;
    };
    let (Ok(issued), Ok(mac)) = (issued.parse::<u64>(), hex::decode(mac)) else {
        return false;
    };
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if issued > now + 60 || now.saturating_sub(issued) > CSRF_TTL.as_secs() {
        return false;
    }
    csrf_mac(admin_password, issued).verify_slice(&mac).is_ok()
}

// The page.

fn countdown(seconds: i64) -> String {
    let (sign, s) = if seconds < 0 { ("-", -seconds) } else { ("", seconds) };
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{sign}{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{sign}{h}h {m}m")
    } else {
        format!("{sign}{m}m {}s", s % 60)
    }
}

fn ago(at: SystemTime, now: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(at).to_string();
    match now.duration_since(at) {
        Ok(age) => format!("{text} ({} ago)", countdown(age.as_secs() as i64)),
        Err(ahead) => format!("{text} (in {})", countdown(ahead.duration().as_secs() as i64)),
    }
}

fn row(label: &str, value: &str) -> String {
    format!(
        "<tr><th>{}</th><td>{}</td></tr>\n",
        escape_html(label),
        escape_html(value)
    )
}

/// Keap's quota, window by window, as Keap last reported it (docs/pacing.md).
fn quota_html(quota: Option<&QuotaUse>) -> String {
    let Some(quota) = quota else {
        return "<h2>Keap quota</h2>\n<p>Not known yet: Keap has not been asked.</p>\n".to_owned();
    };
    let mut html = String::from("<h2>Keap quota</h2>\n<table id=\"quota\">\n");
    for window in &quota.windows {
        let unit = match window.time_unit {
            Unit::Second => "This second",
            Unit::Minute => "This minute",
            Unit::Hour => "This hour",
            Unit::Day => "Today",
        };
        let share = u64::from(window.used) * 100 / u64::from(window.limit.max(1));
        html.push_str(&row(
            unit,
            &format!(
                "{} of {} calls used ({share} %), resets {}",
                window.used, window.limit, window.resets_at
            ),
        ));
    }
    html.push_str(&row(
        "Calls from this function",
        &format!("{} sent, {} answered 429", quota.calls_sent, quota.calls_throttled),
    ));
    if quota.bulk_paused {
        html.push_str(&row(
            "Retries and backfills",
            "paused: the day's quota is down to its reserve; live signups go on",
        ));
    }
    html.push_str("</table>\n");
    html
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "—".into())
}

/// The console page. `notice`: the result of the last action (from the redirect's query).
pub fn render(report: &ConsoleReport, csrf: &str, notice: Option<&str>, now: SystemTime) -> String {
    let c = &report.connection;
    let mut html = String::with_capacity(8192);
    html.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"30\">\
         <title>keap-relay console</title><style>\
         body{font-family:system-ui,sans-serif;max-width:48em;margin:0 auto;padding:1em;line-height:1.4}\
         table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em;border-bottom:1px solid #ddd;vertical-align:top}\
         th{width:40%;font-weight:600}.banner{padding:1em;border-radius:.4em;margin:1em 0}\
         .bad{background:#fde2e1;border:1px solid #c00}.good{background:#e3f6e5;border:1px solid #2a7}\
         .notice{background:#eef;border:1px solid #88c}a.button,button{display:inline-block;padding:.5em 1em;border-radius:.3em;\
         border:1px solid #333;background:#fff;color:#000;text-decoration:none;font-size:1em;margin:.2em 0}\
         form{display:inline}code{word-break:break-all}</style></head>\n<body>\n<h1>keap-relay</h1>\n",
    );
    if let Some(notice) = notice {
        html.push_str(&format!(
            "<p class=\"banner notice\" id=\"notice\">{}</p>\n",
            escape_html(notice)
        ));
    }
    // The connection.
    let (state, class) = if c.needs_reauth {
        ("needs re-authorization", "bad")
    } else if c.connected {
        ("connected", "good")
    } else {
        ("not connected", "bad")
    };
    html.push_str(&format!(
        "<div class=\"banner {class}\" id=\"connection\" data-state=\"{}\"><strong id=\"connection-state\">{state}</strong>",
        state.replace(' ', "_")
    ));
    if c.needs_reauth {
        html.push_str(&format!(
            "<p>Keap refused the connection: {}. Since {}.</p>",
            escape_html(c.needs_reauth_reason.as_deref().unwrap_or("no reason recorded")),
            escape_html(
                &c.needs_reauth_since
                    .map(|at| ago(at, now))
                    .unwrap_or_else(|| "an unknown time".into())
            )
        ));
    }
    if c.mode == "oauth" && !c.connected {
        html.push_str("<p><a class=\"button\" id=\"reconnect\" href=\"oauth/start\">Reconnect</a></p>");
    }
    html.push_str("</div>\n");
    if let Some(notice) = &report.welcome.goal_without_listener {
        html.push_str(&format!(
            "<div class=\"banner bad\" id=\"welcome-goal-without-listener\"><p><strong>The welcome goal {} \
             started nothing</strong>: no published campaign in Keap listens to this API goal, so new \
             contacts get no welcome campaign. Seen {} (first {}). Check the goal's integration and call \
             name in the campaign builder, and that the campaign is published.</p></div>\n",
            escape_html(&notice.goal),
            escape_html(&ago(notice.last_seen_at, now)),
            escape_html(&ago(notice.first_seen_at, now)),
        ));
    }
    html.push_str("<h2>Connection</h2>\n<table>\n");
    html.push_str(&row("Mode", c.mode));
    html.push_str(&row("Account", &opt(c.account.as_deref())));
    html.push_str(&row(
        "Access token expires",
        &match (c.access_expires_at, c.access_expires_in_seconds) {
            (Some(at), Some(left)) => format!("in {} ({})", countdown(left), humantime::format_rfc3339_seconds(at)),
            _ => "—".into(),
        },
    ));
    html.push_str(&row(
        "Refresh token age",
        &opt(c.refresh_token_age_days.map(|d| format!("{d} days"))),
    ));
    html.push_str(&row("Last rotation", &opt(c.last_refresh_at.map(|at| ago(at, now)))));
    html.push_str(&row("Generation", &opt(c.generation)));
    html.push_str(&row(
        "Last error",
        &match (&c.last_error, c.last_error_at) {
            (Some(error), Some(at)) => format!("{error} ({})", ago(at, now)),
            (Some(error), None) => error.clone(),
            _ => "—".into(),
        },
    ));
    html.push_str(&row(
        "No refresh attempt before",
        &opt(c.retry_not_before.map(|at| ago(at, now))),
    ));
    let welcome = match (&report.welcome.tag, report.welcome.email, &report.welcome.goal) {
        (None, false, None) => "none".to_owned(),
        (tag, email, goal) => {
            let mut parts = Vec::new();
            if let Some(tag) = tag {
                parts.push(format!("tag {tag}"));
            }
            if email {
                parts.push("direct email".to_owned());
            }
            if let Some(goal) = goal {
                parts.push(format!("goal {goal}"));
            }
            parts.join(", ")
        }
    };
    html.push_str(&row("Welcome", &welcome));
    html.push_str("</table>\n");
    html.push_str(&quota_html(report.quota.as_ref()));

    // The queues.
    html.push_str("<h2>Signup queue</h2>\n");
    match &report.signup_queue {
        Some(queue) => html.push_str(&queue_html(queue, QueueName::Signups, csrf)),
        None => html.push_str("<p>No signup queue (SIGNUP_QUEUE_URL is not set).</p>\n"),
    }
    html.push_str("<h2>Events</h2>\n");
    match &report.events.receiver {
        None => html.push_str("<p>Events are off (EVENTS_WEBHOOK_URL is not set).</p>\n"),
        Some(receiver) => {
            html.push_str(&format!(
                "<p>Receiver: <code>{}</code> — <strong id=\"receiver-state\">{}</strong></p>\n",
                escape_html(receiver),
                if report.events.receiver_enabled {
                    "enabled"
                } else {
                    "switched off"
                }
            ));
            if !report.events.receiver_enabled {
                html.push_str(&format!(
                    "<div class=\"banner bad\"><p>The receiver answered 410 Gone{}; no event is sent until you switch it on.</p>\
                     <form method=\"post\" action=\"admin/enable-events\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                     <button type=\"submit\" id=\"enable-receiver\">Switch the receiver on</button></form></div>\n",
                    escape_html(
                        &report
                            .events
                            .receiver_state
                            .disabled_at
                            .map(|at| format!(" at {}", ago(at, now)))
                            .unwrap_or_default()
                    ),
                    escape_html(csrf)
                ));
            }
        }
    }
    if let Some(queue) = &report.events.queue {
        html.push_str(&queue_html(queue, QueueName::Events, csrf));
    }

    html.push_str("<h2>Recent history</h2>\n");
    if report.history.is_empty() {
        html.push_str("<p>Nothing yet.</p>\n");
    } else {
        html.push_str("<ul id=\"history\">\n");
        for entry in &report.history {
            html.push_str(&format!(
                "<li>{}: {}</li>\n",
                escape_html(&ago(entry.at, now)),
                escape_html(&entry.what)
            ));
        }
        html.push_str("</ul>\n");
    }
    html.push_str("<p><small>Also as JSON: <a href=\"status\">/status</a>. Event types: ");
    let types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    html.push_str(&escape_html(&types.join(", ")));
    html.push_str(".</small></p>\n</body></html>\n");
    html
}

fn queue_html(queue: &QueueReport, name: QueueName, csrf: &str) -> String {
    let n = name.as_str();
    let mut html = String::new();
    if let Some(error) = &queue.error {
        html.push_str(&format!(
            "<p class=\"banner bad\">Could not read this queue: {}</p>\n",
            escape_html(error)
        ));
    }
    let delayed_label = match name {
        QueueName::Signups => "Parked for a reconnection, or delayed",
        QueueName::Events => "Delayed",
    };
    html.push_str(&format!(
        "<table id=\"{n}-counts\">\n<tr><th>Waiting</th><td id=\"{n}-waiting\">{}</td></tr>\n\
         <tr><th>Being handled or backing off</th><td id=\"{n}-in-flight\">{}</td></tr>\n\
         <tr><th>{delayed_label}</th><td id=\"{n}-delayed\">{}</td></tr>\n\
         <tr><th>Dead letters</th><td id=\"{n}-dead-letters\">{}</td></tr>\n</table>\n",
        queue.counts.waiting, queue.counts.in_flight, queue.counts.delayed, queue.counts.dead_letters
    ));
    if !queue.dead_letter_sample.is_empty() {
        html.push_str(&format!("<ul id=\"{n}-dead-letter-list\">\n"));
        for letter in &queue.dead_letter_sample {
            let id = escape_html(&letter.id);
            let hidden = format!(
                "<input type=\"hidden\" name=\"queue\" value=\"{n}\"><input type=\"hidden\" name=\"id\" value=\"{id}\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">",
                escape_html(csrf)
            );
            html.push_str(&format!(
                "<li class=\"dead-letter\"><strong>{}</strong> — {} <small>(<code>{id}</code>, received {} times{})</small><br>\
                 <form method=\"post\" action=\"admin/redrive\">{hidden}<button type=\"submit\" class=\"redrive\">Redrive</button></form> \
                 <form method=\"post\" action=\"admin/discard\">{hidden}<button type=\"submit\" class=\"discard\">Discard</button></form></li>\n",
                escape_html(&letter.subject),
                escape_html(&letter.reason),
                letter.receive_count,
                letter
                    .sent_at
                    .map(|at| format!(", first sent {}", humantime::format_rfc3339_seconds(at)))
                    .unwrap_or_default(),
            ));
        }
        html.push_str("</ul>\n");
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_is_valid_for_an_hour_with_the_same_password_only() {
        let password = SecretString::from("local-admin-password");
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = csrf_token(&password, now);
        assert!(csrf_valid(&password, Some(&token), now + Duration::from_secs(3599)));
        assert!(!csrf_valid(&password, Some(&token), now + Duration::from_secs(3601)));
        assert!(!csrf_valid(
            &SecretString::from("another-admin-password"),
            Some(&token),
            now
        ));
        for bad in [None, Some(""), Some("x.y"), Some("1700000000."), Some("1700000000.00")] {
            assert!(!csrf_valid(&password, bad, now), "{bad:?}");
        }
        let forged = token.replace("1700000000", "1700000001");
        assert!(!csrf_valid(&password, Some(&forged), now));
    }

    #[test]
    fn countdowns_read_well() {
        assert_eq!(countdown(59), "0m 59s");
        assert_eq!(countdown(3_700), "1h 1m");
        assert_eq!(countdown(90_000), "1d 1h 0m");
        assert_eq!(countdown(-61), "-1m 1s");
    }

    #[test]
    fn dead_letter_reasons_come_from_the_body() {
        let letter = |body: &str| DeadLetter {
            id: "m1".into(),
            body: body.into(),
            sent_at: None,
            receive_count: 5,
        };
        let bad = dead_letter_report(letter("{\"nope\":1}"), QueueName::Signups);
        assert!(bad.reason.contains("missing_email"), "{bad:?}");
        let good = dead_letter_report(letter("{\"email\":\"a@example.com\"}"), QueueName::Signups);
        assert_eq!(good.subject, "a@example.com");
        assert!(good.reason.contains("every attempt"), "{good:?}");
        assert_eq!(good.receive_count, 5);
        let event = Event::connection_recovered("x").to_json();
        let event = dead_letter_report(letter(&event), QueueName::Events);
        assert_eq!(event.subject, "connection.recovered");
    }

    /// Not connected, nothing configured, no queue.
    fn empty_report() -> ConsoleReport {
        ConsoleReport {
            connection: keap_relay::token::TokenState::default().status_report(SystemTime::now()),
            welcome: Welcome::default(),
            signup_queue: None,
            events: EventsReport {
                receiver: None,
                receiver_enabled: true,
                receiver_state: ReceiverState::default(),
                queue: None,
            },
            history: Vec::new(),
            quota: None,
        }
    }

    #[test]
    fn the_page_escapes_what_it_shows() {
        let report = ConsoleReport {
            welcome: Welcome {
                tag: Some("<b>vip</b>".into()),
                email: false,
                goal: Some("<i>web</i>:signup".into()),
                goal_without_listener: Some(GoalNotice {
                    goal: "<i>web</i>:signup".into(),
                    first_seen_at: SystemTime::now() - Duration::from_secs(3600),
                    last_seen_at: SystemTime::now(),
                }),
            },
            signup_queue: Some(QueueReport {
                counts: QueueCounts::default(),
                dead_letter_sample: vec![DeadLetterReport {
                    id: "\"><script>".into(),
                    subject: "<script>alert(1)</script>".into(),
                    reason: "r".into(),
                    sent_at: None,
                    receive_count: 1,
                }],
                error: None,
            }),
            ..empty_report()
        };
        let html = render(&report, "1.ab", Some("<i>done</i>"), SystemTime::now());
        assert!(
            !html.contains("<script>")
                && !html.contains("<b>vip")
                && !html.contains("<i>done")
                && !html.contains("<i>web"),
            "{html}"
        );
        assert!(html.contains("id=\"welcome-goal-without-listener\""), "{html}");
        assert!(html.contains("id=\"reconnect\""), "not connected: a Reconnect button");
    }

    #[test]
    fn quota_use_is_added_to_the_report_only_when_known_and_shown_on_the_page() {
        use keap_relay::keap::pacing::{Pacer, PacingSettings, QuotaLimits};
        let report = empty_report();
        let without = serde_json::to_value(&report).unwrap();
        assert!(without.get("quota").is_none(), "{without}");
        let pacer = Pacer::new(PacingSettings::defaults(keap_relay::config::AuthMode::OAuth));
        let with = ConsoleReport {
            quota: Some(pacer.quota_use()),
            ..report
        };
        let json = serde_json::to_value(&with).unwrap();
        for (field, value) in without.as_object().unwrap() {
            assert_eq!(&json[field], value, "{field}");
        }
        assert_eq!(
            json["quota"]["limits"],
            serde_json::to_value(QuotaLimits::OAUTH_CLIENT).unwrap()
        );
        assert_eq!(json["quota"]["bulk_paused"], false);
        let html = render(&with, "1.ab", None, SystemTime::now());
        assert!(
            html.contains("id=\"quota\"") && html.contains("0 sent, 0 answered 429"),
            "{html}"
        );
    }
}
