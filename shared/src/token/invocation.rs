//! The invocation's deadline, and the rule that a handler does not return while its process
//! holds a spent refresh token whose answer is not stored yet (invariant 9 of
//! `docs/token-rotation.md`): Lambda freezes an environment the moment its handler returns,
//! and a frozen commit may never thaw.
//!
//! A handler runs its work through [`run`]. The token source reads the deadline with
//! [`deadline`] before it starts a Keap refresh, and marks the time between sending the
//! refresh and storing (or giving up on) its answer with [`SpentToken`]. [`run`] then waits for
//! every such token of the process before it returns, until just before the deadline.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

/// Kept back from the deadline when waiting for a commit: the runtime still has to send the
/// response.
pub const RETURN_RESERVE: Duration = Duration::from_millis(250);
/// How long [`run`] waits for a commit when the invocation has no usable deadline (the local
/// run, tests): every store call is bounded, so a commit ends well before this.
pub const WAIT_WITHOUT_DEADLINE: Duration = Duration::from_secs(120);

tokio::task_local! {
    static DEADLINE: SystemTime;
}

static SPENT: AtomicUsize = AtomicUsize::new(0);
static SETTLED: Notify = Notify::const_new();

/// The deadline of the invocation this task serves, if [`run`] set one.
pub fn deadline() -> Option<SystemTime> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// A Lambda context's deadline (ms since the epoch) as a time, or `None` when it has already
/// passed at `now` (cargo lambda's emulator sends a fixed 600000, i.e. 1970: no real deadline).
pub fn deadline_from_millis(millis: u64, now: SystemTime) -> Option<SystemTime> {
    let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(millis);
    (deadline > now).then_some(deadline)
}

/// Runs a handler's `work` with `deadline` visible to the token source, then waits until no
/// refresh token spent by this process is left uncommitted, at most until shortly before the
/// deadline.
pub async fn run<F: Future>(deadline: Option<SystemTime>, work: F) -> F::Output {
    let output = match deadline {
        Some(deadline) => DEADLINE.scope(deadline, work).await,
        None => work.await,
    };
    let wait = match deadline {
        Some(deadline) => deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(RETURN_RESERVE),
        None => WAIT_WITHOUT_DEADLINE,
    };
    if spent_uncommitted() > 0 {
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            "waiting for a token refresh to be stored before returning"
        );
        let _ = tokio::time::timeout(wait, settled()).await;
    }
    output
}

/// Refresh tokens this process has sent to Keap whose outcome is not stored yet.
pub fn spent_uncommitted() -> usize {
    SPENT.load(Ordering::SeqCst)
}

async fn settled() {
    loop {
        let notified = SETTLED.notified();
        if spent_uncommitted() == 0 {
            return;
        }
        notified.await;
    }
}

/// Held from just before a refresh is sent until its outcome is stored or given up.
#[derive(Debug)]
pub struct SpentToken(());

impl SpentToken {
    pub fn mark() -> Self {
        SPENT.fetch_add(1, Ordering::SeqCst);
        SpentToken(())
    }
}

impl Drop for SpentToken {
    fn drop(&mut self) {
        SPENT.fetch_sub(1, Ordering::SeqCst);
        SETTLED.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_in_the_past_is_no_deadline() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(deadline_from_millis(600_000, now), None);
        let later = now + Duration::from_secs(3);
        assert_eq!(
            deadline_from_millis(
                later.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64,
                now
            ),
            Some(later)
        );
    }

    #[tokio::test]
    async fn run_waits_for_a_spent_token_and_sets_the_deadline() {
        let deadline = SystemTime::now() + Duration::from_secs(5);
        let spent = SpentToken::mark();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(spent);
        });
        let started = std::time::Instant::now();
        let seen = run(Some(deadline), async { super::deadline() }).await;
        assert_eq!(seen, Some(deadline));
        assert!(
            started.elapsed() >= Duration::from_millis(90),
            "returned before the commit"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
        release.await.unwrap();
        assert_eq!(super::deadline(), None);
    }
}
