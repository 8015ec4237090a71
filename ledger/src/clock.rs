//! The injected clock: every timestamp Recur writes comes from here, so tests
//! and the demo can run time forward like Stripe's test clocks.

use std::sync::{Arc, Mutex, PoisonError};

use time::{Duration, OffsetDateTime};

/// A source of the current instant (UTC).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The machine's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until advanced; clones share one time.
#[derive(Clone, Debug)]
pub struct TestClock(Arc<Mutex<OffsetDateTime>>);

impl TestClock {
    /// A clock frozen at `start`.
    pub fn at(start: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward; time never goes backwards, so a negative step is ignored.
    pub fn advance(&self, step: Duration) {
        if step.is_negative() {
            return;
        }
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now += step;
    }

    /// Sets the clock to `instant`, earlier than now too: for copying events
    /// with their original times, which need not increase with their positions
    /// (a time is taken before an append waits its turn to commit).
    pub fn set(&self, instant: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = instant;
    }

    /// Moves the clock to `instant` if that is later than now.
    pub fn advance_to(&self, instant: OffsetDateTime) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if instant > *now {
            *now = instant;
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
