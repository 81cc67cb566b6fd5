//! The welcome, each part once per contact: the direct email, the Keap email template and the
//! API goal (docs/welcome-and-fields.md).
//!
//! With a queue, every welcome owed is written to it *before* it is sent (a [`QueuedWelcome`]
//! carrying when: "write-ahead"), delayed by `KEAP_WELCOME_RECHECK_SECONDS`. So a process that
//! dies between the welcome tag and the send, a send Keap answered with a 5xx, a timeout or an
//! unreadable answer (which may or may not have gone out), or a throttled send all end the same
//! way: `signup-retry` reads Keap's own record of emails sent to the contact since then
//! (`GET /v1/emails`). Listed means sent: done. Keap lists an email once it went out, not when
//! it was queued, so a welcome not listed is sent again only once the recheck time has passed,
//! and only by whoever newly applies the welcome tag (when one is configured): the tag is the
//! claim that keeps a queued signup and its welcome record from both sending. Two records of the
//! same part take its send slot in the state table before they send (`send_slots`).

use std::time::{Duration, SystemTime};

use super::queue::{QueuedWelcome, WelcomePart};
use super::send_slots::{SendSlot, SlotHold};
use super::{Attempt, CallError, GoalOutcome, GoalStatus, Repeat, SignupError, SignupService, WelcomeEmailOutcome};
use crate::keap::api::{ApiError, GoalStart, QueuedEmail};

/// Keap's clock and ours may differ: the sent-email listing is read from this much before the
/// send began.
const CLOCK_MARGIN: Duration = Duration::from_secs(120);
/// SQS's longest message delay.
const MAX_DELAY: Duration = Duration::from_secs(900);

/// Every welcome part of one signup, as answered.
#[derive(Default)]
pub(super) struct Welcomes {
    pub email: Option<WelcomeEmailOutcome>,
    pub template: Option<WelcomeEmailOutcome>,
    pub goal: Option<GoalOutcome>,
}

/// What one send did.
enum Sent {
    /// Keap took it (for a goal: the campaigns it started).
    Done(Vec<GoalStart>),
    /// It may or may not have gone out (5xx, timeout, lost or unreadable answer).
    Unsure(String),
    /// It surely did not go out; it may later (429 beyond the budget, no usable token).
    Later(SignupError),
    /// Keap refused it (4xx): sending it again cannot help.
    Refused { status: u16, message: String },
}

/// What `signup-retry` did with a queued welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WelcomeRetry {
    /// Sent now (for a goal: the campaigns it started; none means no campaign listens).
    Sent { started: Vec<GoalStart> },
    /// Keap lists it as sent: the earlier send went out after all.
    AlreadySent,
    /// Not known yet: look again with this message after `delay` (a new message: the send
    /// time may have changed).
    Later { welcome: QueuedWelcome, delay: Duration },
    /// This deployment no longer sends this part (its configuration changed).
    NotConfigured,
}

impl SignupService {
    /// Sends every configured welcome part once for a first signup (`first_time`), reports the
    /// others: `Some(false)` already welcomed, `None` no record that it was (skipped).
    /// `written`: the parts already written ahead to the queue for this contact.
    pub(super) async fn welcome(
        &self,
        attempt: &Attempt,
        contact_id: i64,
        first_time: Option<bool>,
        written: &[WelcomePart],
    ) -> Welcomes {
        let mut welcomes = Welcomes::default();
        let written = match first_time {
            Some(true) if written.is_empty() => self.write_ahead(contact_id).await,
            _ => written.to_vec(),
        };
        for part in self.settings.welcomes() {
            let outcome = match first_time {
                Some(true) => self.send_now(attempt, part, contact_id, written.contains(&part)).await,
                Some(false) => PartOutcome::Already,
                None => PartOutcome::Skipped,
            };
            match part {
                WelcomePart::Email => welcomes.email = Some(outcome.email()),
                WelcomePart::Template => welcomes.template = Some(outcome.email()),
                WelcomePart::Goal => welcomes.goal = Some(self.goal_outcome(outcome)),
            }
        }
        welcomes
    }

    /// Whether Keap's listing can tell if this part went out.
    fn checkable(&self, part: WelcomePart) -> bool {
        part != WelcomePart::Goal || self.settings.options.welcome_goal_sends_email
    }

    /// Writes every checkable welcome part owed to a new contact to the queue, to be checked
    /// after the recheck time; the parts written (none without a queue).
    pub(super) async fn write_ahead(&self, contact_id: i64) -> Vec<WelcomePart> {
        let Some(queue) = &self.welcome_queue else {
            return Vec::new();
        };
        let delay = self.settings.options.welcome_recheck_after.min(MAX_DELAY);
        let mut written = Vec::new();
        for part in self.settings.welcomes() {
            if !self.checkable(part) {
                continue;
            }
            let welcome = QueuedWelcome::new(part, contact_id, Some(SystemTime::now()));
            match queue.enqueue_welcome(&welcome, delay).await {
                Ok(()) => written.push(part),
                Err(error) => {
                    tracing::warn!(contact_id, part = part.as_str(), %error, "could not write the welcome ahead to the queue");
                }
            }
        }
        written
    }

    fn goal_outcome(&self, outcome: PartOutcome) -> GoalOutcome {
        let goal = self
            .settings
            .options
            .welcome_goal
            .as_ref()
            .map(|g| g.label())
            .unwrap_or_default();
        let (status, started) = match outcome {
            PartOutcome::Done(started) if started.is_empty() => (GoalStatus::NoListener, started),
            PartOutcome::Done(started) => (GoalStatus::Achieved, started),
            PartOutcome::Already => (GoalStatus::AlreadyWelcomed, Vec::new()),
            PartOutcome::Skipped => (GoalStatus::Skipped, Vec::new()),
            PartOutcome::Queued => (GoalStatus::Queued, Vec::new()),
            PartOutcome::Failed => (GoalStatus::Failed, Vec::new()),
        };
        GoalOutcome { status, goal, started }
    }

    async fn send_now(&self, attempt: &Attempt, part: WelcomePart, contact_id: i64, written: bool) -> PartOutcome {
        let began = SystemTime::now();
        match self.send_part(attempt, part, contact_id).await {
            Sent::Done(started) => {
                self.report_goal(part, contact_id, &started).await;
                PartOutcome::Done(started)
            }
            Sent::Unsure(detail) if written => {
                tracing::warn!(contact_id, part = part.as_str(), %detail, "the welcome may or may not have gone out; its queued record checks Keap's listing");
                PartOutcome::Queued
            }
            Sent::Unsure(detail) if self.checkable(part) => {
                tracing::warn!(contact_id, part = part.as_str(), %detail, "the welcome may or may not have gone out; it is checked and retried through the queue");
                self.queued_or_failed(part, contact_id, Some(began)).await
            }
            Sent::Unsure(detail) => {
                tracing::error!(contact_id, part = part.as_str(), %detail, "the welcome goal may or may not have been achieved, and Keap cannot tell (KEAP_WELCOME_GOAL_SENDS_EMAIL=false): not repeated");
                PartOutcome::Failed
            }
            Sent::Later(error) if written => {
                tracing::warn!(contact_id, part = part.as_str(), error = %error, "the welcome could not be sent now; its queued record sends it");
                PartOutcome::Queued
            }
            Sent::Later(error) => {
                tracing::warn!(contact_id, part = part.as_str(), error = %error, "the welcome could not be sent now; retried through the queue");
                self.queued_or_failed(part, contact_id, None).await
            }
            Sent::Refused { status, message } => {
                tracing::error!(contact_id, part = part.as_str(), status, %message, "Keap refused the welcome");
                PartOutcome::Failed
            }
        }
    }

    async fn queued_or_failed(&self, part: WelcomePart, contact_id: i64, began: Option<SystemTime>) -> PartOutcome {
        if self.hand_off(part, contact_id, began).await {
            PartOutcome::Queued
        } else {
            PartOutcome::Failed
        }
    }

    /// The one place a welcome goal's achievement is judged, for `signup` and `signup-retry`
    /// alike. A goal no published campaign listens to is a configuration mistake: said loudly
    /// (a warning, the `WelcomeGoalWithoutListener` metric) and noted for `/status` and the
    /// console; a goal that started a campaign clears that notice (someone fixed it).
    async fn report_goal(&self, part: WelcomePart, contact_id: i64, started: &[GoalStart]) {
        if part != WelcomePart::Goal {
            return;
        }
        let goal = self.welcome_goal_label().unwrap_or_default();
        let now = SystemTime::now();
        let noted = if started.is_empty() {
            tracing::warn!(
                contact_id,
                goal = goal.as_str(),
                welcome_goal_without_listener = true,
                "KEAP_WELCOME_GOAL was achieved, but no published campaign in Keap listens to this API goal: nothing started (check the goal's integration and call name, and that the campaign is published)"
            );
            // Alarmed: WelcomeGoalWithoutListenerAlarm (template.yaml).
            println!(
                "{}",
                crate::metrics::welcome_goal_without_listener_line(self.function_name.clone(), &goal)
            );
            match &self.notices {
                Some(notices) => notices.record_goal_without_listener(&goal, now).await,
                None => Ok(()),
            }
        } else {
            let campaigns: Vec<i64> = started.iter().map(|s| s.campaign_id).collect();
            tracing::info!(contact_id, goal = goal.as_str(), ?campaigns, "welcome goal achieved");
            match &self.notices {
                Some(notices) => notices.clear_goal_without_listener(&goal, now).await,
                None => Ok(()),
            }
        };
        if let Err(error) = noted {
            tracing::warn!(%error, goal = goal.as_str(), "could not note the welcome goal's listeners for the console");
        }
    }

    /// Queues a welcome part owed to a contact (`began`: when a send whose outcome is unknown
    /// began). False when there is no queue or it failed: the part is then lost, and logged.
    pub(super) async fn hand_off(&self, part: WelcomePart, contact_id: i64, began: Option<SystemTime>) -> bool {
        let Some(queue) = &self.welcome_queue else {
            tracing::error!(
                contact_id,
                part = part.as_str(),
                "no queue (SIGNUP_QUEUE_URL) to retry the welcome through: it is not sent"
            );
            return false;
        };
        // Even a send that surely did not go out gets its time: the record may be received
        // twice (a batch whose answer was lost), and the second receive must look first.
        let welcome = QueuedWelcome::new(part, contact_id, Some(began.unwrap_or_else(SystemTime::now)));
        let delay = match began {
            Some(_) => self.settings.options.welcome_recheck_after.min(MAX_DELAY),
            None => Duration::ZERO,
        };
        match queue.enqueue_welcome(&welcome, delay).await {
            Ok(()) => {
                tracing::info!(contact_id, part = part.as_str(), welcome_id = %welcome.id, "welcome queued for signup-retry");
                true
            }
            Err(error) => {
                tracing::error!(contact_id, part = part.as_str(), %error, "could not queue the welcome: it is not sent");
                false
            }
        }
    }

    /// One send of `part`. Only a 429 (Keap did nothing) is retried here: any other failure
    /// may have sent it.
    async fn send_part(&self, attempt: &Attempt, part: WelcomePart, contact_id: i64) -> Sent {
        let options = &self.settings.options;
        let result: Result<Vec<GoalStart>, CallError> = match part {
            WelcomePart::Email => match &self.settings.welcome_email {
                None => Ok(Vec::new()),
                Some(email) => {
                    let message = QueuedEmail {
                        contact_ids: vec![contact_id],
                        user_id: email.user_id,
                        subject: email.subject.clone(),
                        html_body: email.html_body.clone(),
                    };
                    self.call(attempt, Repeat::OnlyIfThrottled, |credential| {
                        let message = &message;
                        async move { self.api.queue_email(&credential, message).await }
                    })
                    .await
                    .map(|()| Vec::new())
                }
            },
            WelcomePart::Template => match &options.welcome_template {
                None => Ok(Vec::new()),
                Some(template) => self
                    .call(attempt, Repeat::OnlyIfThrottled, |credential| async move {
                        self.api
                            .send_template(&credential, template.template_id, template.user_id, contact_id)
                            .await
                    })
                    .await
                    .map(|()| Vec::new()),
            },
            WelcomePart::Goal => match &options.welcome_goal {
                None => Ok(Vec::new()),
                Some(goal) => {
                    self.call(attempt, Repeat::OnlyIfThrottled, |credential| async move {
                        self.api.achieve_goal(&credential, goal, contact_id).await
                    })
                    .await
                }
            },
        };
        match result {
            Ok(started) => Sent::Done(started),
            Err(CallError::Api(ApiError::Rejected { status, message, .. })) => Sent::Refused { status, message },
            Err(CallError::Api(error @ (ApiError::Unavailable { .. } | ApiError::Protocol { .. }))) => {
                Sent::Unsure(error.to_string())
            }
            Err(other) => Sent::Later(other.into()),
        }
    }

    /// Applies the welcome tag (when one is configured): true when this call newly applied it,
    /// so no signup will send the welcome. Without a welcome tag nobody can claim.
    async fn claim_welcome(&self, attempt: &Attempt, contact_id: i64) -> Result<bool, SignupError> {
        let Some(tag) = &self.settings.welcome_tag else {
            return Ok(false);
        };
        let id = self.resolve_tag(attempt, tag).await?;
        let statuses = self
            .call(attempt, Repeat::Idempotent, |credential| async move {
                self.api.apply_tags(&credential, contact_id, &[id]).await
            })
            .await?;
        Ok(statuses.get(&id) == Some(&crate::keap::api::TagApplyStatus::Success))
    }

    /// `KEAP_WELCOME_GOAL` as configured (`integration:call_name`, `automation:<id>:<goal_id>`).
    pub fn welcome_goal_label(&self) -> Option<String> {
        self.settings.options.welcome_goal.as_ref().map(|g| g.label())
    }

    fn configured(&self, part: WelcomePart) -> bool {
        self.settings.welcomes().contains(&part)
    }

    /// Whether Keap lists an email of this part as sent to the contact since `began`: for the
    /// direct email one with its subject; for the template and the goal's campaign any other.
    async fn listed_as_sent(
        &self,
        attempt: &Attempt,
        part: WelcomePart,
        contact_id: i64,
        began: SystemTime,
    ) -> Result<bool, SignupError> {
        let since = began.checked_sub(CLOCK_MARGIN).unwrap_or(SystemTime::UNIX_EPOCH);
        let emails = self
            .call(attempt, Repeat::Idempotent, |credential| async move {
                self.api.sent_emails(&credential, contact_id, since).await
            })
            .await?;
        let direct = self.settings.welcome_email.as_ref().map(|e| e.subject.as_str());
        Ok(emails.iter().any(|email| {
            let subject = email.subject.as_deref();
            match part {
                WelcomePart::Email => subject.is_some() && subject == direct,
                WelcomePart::Template | WelcomePart::Goal => direct.is_none() || subject != direct,
            }
        }))
    }

    /// Retries a welcome `signup` or an earlier retry queued: checks Keap's sent-email listing
    /// first when the last send may have gone out, and sends only when it surely did not.
    pub async fn retry_welcome(&self, welcome: &QueuedWelcome) -> Result<WelcomeRetry, SignupError> {
        let (part, contact_id) = (welcome.part, welcome.contact_id);
        if !self.configured(part) {
            return Ok(WelcomeRetry::NotConfigured);
        }
        let attempt = Attempt::new(self.credentials.credential().await?, self.settings.retry_budget);
        // A record without a send time (written by hand, or by an older version) is looked up
        // from when it was queued: it may have been received, and sent, before.
        if let Some(began) = welcome.attempted_at.or(Some(welcome.first_seen_at)) {
            if !self.checkable(part) {
                tracing::error!(
                    contact_id,
                    part = part.as_str(),
                    "a welcome goal that may have been achieved cannot be checked (KEAP_WELCOME_GOAL_SENDS_EMAIL=false): not repeated"
                );
                return Ok(WelcomeRetry::NotConfigured);
            }
            if self.listed_as_sent(&attempt, part, contact_id, began).await? {
                tracing::info!(
                    contact_id,
                    part = part.as_str(),
                    "Keap lists the welcome as sent: not sending it again"
                );
                return Ok(WelcomeRetry::AlreadySent);
            }
            // Whoever newly applies the welcome tag owns the welcome. Found applied, a signup
            // claimed it and sends it itself within its function's run: so the record waits the
            // recheck time from when it first saw the claim, then looks again. Without a welcome
            // tag only the signup that created the contact sends, within its run after `began`.
            let settle_from = if self.settings.welcome_tag.is_none() {
                Some(began)
            } else if self.claim_welcome(&attempt, contact_id).await? {
                None
            } else if let Some(seen) = welcome.claim_seen_at {
                Some(seen)
            } else {
                return Ok(WelcomeRetry::Later {
                    welcome: QueuedWelcome {
                        id: uuid::Uuid::new_v4(),
                        claim_seen_at: Some(SystemTime::now()),
                        ..welcome.clone()
                    },
                    delay: self.settings.options.welcome_recheck_after.min(MAX_DELAY),
                });
            };
            if let Some(from) = settle_from {
                let settled = from
                    .checked_add(self.settings.options.welcome_recheck_after)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                if let Ok(left) = settled.duration_since(SystemTime::now()) {
                    // Too early to tell: Keap lists an email only once it went out.
                    return Ok(WelcomeRetry::Later {
                        welcome: QueuedWelcome {
                            id: uuid::Uuid::new_v4(),
                            ..welcome.clone()
                        },
                        delay: (left + Duration::from_secs(1)).min(MAX_DELAY),
                    });
                }
            }
            tracing::info!(
                contact_id,
                part = part.as_str(),
                "Keap does not list the welcome as sent: sending it"
            );
        }
        // Another record of the same part may be here too: one sends, the other waits until
        // the holder's send is listed (send_slots.rs).
        let began = SystemTime::now();
        let slot = SlotHold {
            contact_id,
            part,
            from: began,
            hold: self.settings.options.welcome_recheck_after,
        };
        match self.send_slots.take(&slot).await {
            Ok(SendSlot::Taken) => {}
            Ok(SendSlot::HeldUntil(until)) => {
                tracing::info!(
                    contact_id,
                    part = part.as_str(),
                    "another send of this welcome holds its slot: looking again once it is listed"
                );
                let left = until.duration_since(began).unwrap_or_default();
                return Ok(WelcomeRetry::Later {
                    welcome: QueuedWelcome {
                        id: uuid::Uuid::new_v4(),
                        attempted_at: Some(welcome.attempted_at.unwrap_or(began)),
                        ..welcome.clone()
                    },
                    delay: (left + Duration::from_secs(1)).min(MAX_DELAY),
                });
            }
            Err(error) => {
                return Err(SignupError::Unavailable {
                    retry_after: None,
                    detail: error.to_string(),
                });
            }
        }
        let sent = self.send_part(&attempt, part, contact_id).await;
        if matches!(sent, Sent::Later(_) | Sent::Refused { .. }) {
            // Surely not sent: the next record need not wait out the hold.
            if let Err(error) = self.send_slots.release(&slot).await {
                tracing::warn!(contact_id, part = part.as_str(), %error, "could not free the welcome's send slot: the next record waits out its hold");
            }
        }
        match sent {
            Sent::Done(started) => {
                self.report_goal(part, contact_id, &started).await;
                Ok(WelcomeRetry::Sent { started })
            }
            Sent::Unsure(detail) => {
                tracing::warn!(contact_id, part = part.as_str(), %detail, "the welcome may or may not have gone out again; checking later");
                Ok(WelcomeRetry::Later {
                    welcome: QueuedWelcome::new(part, contact_id, Some(began)),
                    delay: self.settings.options.welcome_recheck_after.min(MAX_DELAY),
                })
            }
            Sent::Later(error) => Err(error),
            Sent::Refused { status, message } => Err(SignupError::Rejected { status, message }),
        }
    }
}

/// One part's outcome, before it is put in the answer's terms.
enum PartOutcome {
    Done(Vec<GoalStart>),
    Already,
    Skipped,
    Queued,
    Failed,
}

impl PartOutcome {
    fn email(self) -> WelcomeEmailOutcome {
        match self {
            PartOutcome::Done(_) => WelcomeEmailOutcome::Sent,
            PartOutcome::Already => WelcomeEmailOutcome::AlreadyWelcomed,
            PartOutcome::Skipped => WelcomeEmailOutcome::Skipped,
            PartOutcome::Queued => WelcomeEmailOutcome::Queued,
            PartOutcome::Failed => WelcomeEmailOutcome::Failed,
        }
    }
}
