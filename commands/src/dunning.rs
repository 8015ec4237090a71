//! When a failed payment is retried: the default policies per segment, from the
//! customer's brief ("Dunning Campaign Configuration"). Emails, SMS and offers
//! come with the dunning issue; this is the retry clock only.

use time::{Duration, OffsetDateTime};

use crate::customer::Segment;

/// Retry delays after each failed attempt, per segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    standard: Vec<Duration>,
    high_value: Vec<Duration>,
    trial: Vec<Duration>,
}

impl Default for RetryPolicy {
    /// standard: 1 h, 1 d, 3 d, 1 w, 2 w; high value: 30 min, 2 h, 12 h, 2 d, 4 d,
    /// 1 w, 10 d, 3 w; trial: 2 h, 1 d, 3 d.
    fn default() -> Self {
        let hours =
            |list: &[i64]| -> Vec<Duration> { list.iter().map(|h| Duration::hours(*h)).collect() };
        let mut high_value: Vec<Duration> = vec![Duration::minutes(30)];
        high_value.extend(hours(&[2, 12, 48, 96, 168, 240, 504]));
        Self {
            standard: hours(&[1, 24, 72, 168, 336]),
            high_value,
            trial: hours(&[2, 24, 72]),
        }
    }
}

impl RetryPolicy {
    /// The delays for a segment.
    pub fn delays(&self, segment: Segment) -> &[Duration] {
        match segment {
            Segment::Standard => &self.standard,
            Segment::HighValue => &self.high_value,
            Segment::Trial => &self.trial,
        }
    }

    /// When to retry after `failed_attempts` failures (1 after the first), or
    /// `None` when the policy gives up.
    pub fn next_retry_at(
        &self,
        segment: Segment,
        failed_attempts: usize,
        now: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        let delays = self.delays(segment);
        failed_attempts
            .checked_sub(1)
            .and_then(|i| delays.get(i))
            .map(|delay| now + *delay)
    }
}
