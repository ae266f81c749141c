//! One platform-certificate download at a time, with backoff while `/v3/certificates` fails.
//!
//! A download that hangs must not stall payments, and a failing endpoint must not be hammered by
//! every request and notify (before this gate, each call retried the download with no backoff).
//! Callers start a download through [`RefreshGate::begin`] and, when they have nothing to verify
//! with yet, wait for it through [`RefreshGate::wait`] no longer than their bound.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Wait after the first failed download; doubled after each further failure.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait between two attempts while downloads keep failing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct State {
    in_flight: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Single-flight and backoff for certificate downloads. Shared by the clones of a client.
#[derive(Debug, Default)]
pub struct RefreshGate {
    state: Mutex<State>,
    done: Notify,
}

/// The right to run the one download; dropping it without [`Permit::succeeded`] counts as a
/// failure (a cancelled download also backs off), and wakes the waiters either way.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<RefreshGate>,
    ok: bool,
}

impl Permit {
    pub fn succeeded(mut self) {
        self.ok = true;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.in_flight = false;
        if self.ok {
            state.failures = 0;
            state.retry_at = None;
        } else {
            state.failures = state.failures.saturating_add(1);
            state.retry_at = Some(Instant::now() + backoff(state.failures));
        }
        drop(state);
        self.gate.done.notify_waiters();
    }
}

/// The wait after `failures` consecutive failures: 1 s, 2 s, 4 s, … up to [`BACKOFF_MAX`].
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_START
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

impl RefreshGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The permit to download now, unless a download is under way or the last one failed
    /// less than its backoff ago.
    pub fn begin(self: &Arc<Self>) -> Option<Permit> {
        let mut state = self.lock();
        if state.in_flight || state.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        state.in_flight = true;
        Some(Permit {
            gate: Arc::clone(self),
            ok: false,
        })
    }

    pub fn in_flight(&self) -> bool {
        self.lock().in_flight
    }

    /// Consecutive failed downloads so far.
    pub fn failures(&self) -> u32 {
        self.lock().failures
    }

    /// Waits until the download under way ends, or `bound` passes; at once when none is.
    pub async fn wait(&self, bound: Duration) {
        let notified = self.done.notified();
        tokio::pin!(notified);
        // Registered before the check, so an end between the check and the await still wakes us.
        notified.as_mut().enable();
        if !self.in_flight() {
            return;
        }
        let _ = tokio::time::timeout(bound, notified).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn one_download_at_a_time_and_backoff_after_a_failure() {
        let gate = Arc::new(RefreshGate::default());
        let permit = gate.begin().expect("the first caller downloads");
        assert!(
            gate.begin().is_none(),
            "a second download while one is under way"
        );
        drop(permit); // failed
        assert_eq!(gate.failures(), 1);
        assert!(gate.begin().is_none(), "retried inside the backoff");
        tokio::time::advance(BACKOFF_START).await;
        let permit = gate.begin().expect("retried after the backoff");
        permit.succeeded();
        assert_eq!(gate.failures(), 0);
        assert!(gate.begin().is_some(), "no backoff after a success");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_bounded_and_ends_with_the_download() {
        let gate = Arc::new(RefreshGate::default());
        // Nothing under way: no wait at all.
        let started = Instant::now();
        gate.wait(Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::ZERO);

        // A download that never ends: the waiter gives up at its bound.
        let permit = gate.begin().unwrap();
        let started = Instant::now();
        gate.wait(Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        // A download that ends after 1 s wakes the waiter then.
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                gate.wait(Duration::from_secs(3)).await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        permit.succeeded();
        assert_eq!(waiter.await.unwrap(), Duration::from_secs(1));
    }
}
