//! Request budgets per principal (API key or JWT service), per minute.
//!
//! Fixed one-minute windows aligned to the clock, counted in this process's memory. With N
//! gateway processes behind a load balancer, a principal can make up to N times its budget
//! per minute; the budget is meant as protection against runaway clients, not as a billing
//! quota. At a window boundary a client may spend the end of one window and the start of the
//! next back to back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window ends.
    pub reset_seconds: u64,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, (u64, u32)>>,
}

impl RateLimiter {
    /// Counts one request of `principal` against `limit` per minute.
    pub fn check(&self, principal: &str, limit: u32) -> Decision {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.check_at(principal, limit, now)
    }

    /// Whether `principal` has spent its `limit` this minute, without counting a request;
    /// `Some(seconds until the window ends)` when it has.
    pub fn exhausted(&self, principal: &str, limit: u32) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let windows = self.windows.lock().expect("rate limiter lock poisoned");
        let (window, spent) = windows.get(principal)?;
        (*window == now / 60 && *spent >= limit).then_some(60 - now % 60)
    }

    fn check_at(&self, principal: &str, limit: u32, now: u64) -> Decision {
        let window = now / 60;
        let reset_seconds = 60 - now % 60;
        let mut windows = self.windows.lock().expect("rate limiter lock poisoned");
        if windows.len() > 100_000 {
            windows.retain(|_, (w, _)| *w == window);
        }
        // Look up before inserting: the key is allocated once per principal, not per request.
        if !windows.contains_key(principal) {
            windows.insert(principal.to_string(), (window, 0));
        }
        let entry = windows.get_mut(principal).expect("just inserted");
        if entry.0 != window {
            *entry = (window, 0);
        }
        let allowed = entry.1 < limit;
        if allowed {
            entry.1 += 1;
        }
        Decision {
            allowed,
            limit,
            remaining: limit.saturating_sub(entry.1),
            reset_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_spent_then_refused_then_renewed_next_minute() {
        let limiter = RateLimiter::default();
        for remaining in (0..3).rev() {
            let decision = limiter.check_at("k", 3, 600);
            assert!(decision.allowed);
            assert_eq!(decision.remaining, remaining);
        }
        let refused = limiter.check_at("k", 3, 630);
        assert!(!refused.allowed);
        assert_eq!(refused.reset_seconds, 30);
        assert!(
            limiter.check_at("other", 3, 630).allowed,
            "budgets are per principal"
        );
        assert!(limiter.check_at("k", 3, 660).allowed);
    }
}
