//! Rate limits: per client address before authentication (so a flood of bad
//! keys is limited too), per API key after it. A refused request is answered
//! 429 `rate_limited` with `Retry-After` before any handler, extractor or
//! body read runs, so it writes nothing.
//!
//! Each limit is a GCRA bucket (`governor`): a sustained rate per second and a
//! burst, kept per address or per key in memory, per server. The client address
//! is the TCP peer's: `X-Forwarded-For` is never read, so behind a proxy every
//! client shares the proxy's address (raise or switch off the per-address limit
//! there and rely on the proxy's own). An IPv6 peer is counted by its /64
//! prefix, the block one subscriber usually holds, so that rotating addresses
//! inside it does not escape the limit. The probes ([`EXEMPT_PATHS`]) are never
//! limited: a throttled health check would take a healthy server out of rotation.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota};

use super::AppState;
use super::problem::ApiError;

/// Paths never limited: liveness, readiness and the metrics scrape.
pub const EXEMPT_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];
/// How often idle buckets are dropped ([`Limiter::prune`]): the limiters keep
/// at most the clients seen within this period plus one bucket's refill time.
pub const PRUNE_EVERY_MS: u64 = 10_000;

/// A sustained rate and a burst; a rate of 0 switches the limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second, sustained; 0: no limit.
    pub per_s: u32,
    /// Requests that may arrive at once after a quiet spell (at least 1).
    pub burst: u32,
}

impl Rate {
    /// No limit.
    pub const OFF: Rate = Rate { per_s: 0, burst: 0 };

    /// The governor quota, or None when the limit is off.
    fn quota(self) -> Option<Quota> {
        let per_s = NonZeroU32::new(self.per_s)?;
        // A burst below 1 could never admit a request: read it as one.
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Some(Quota::per_second(per_s).allow_burst(burst))
    }
}

/// The limits a server applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Per API key, after authentication.
    pub per_key: Rate,
    /// Per client address (an IPv6 /64), before authentication.
    pub per_address: Rate,
}

impl RateLimits {
    /// The defaults (docs/api.md, "Rate limits", gives the reasons): a key may
    /// take about a third of what one server was measured to sustain
    /// (≈ 3,200 commands/s, docs/performance.md), so a runaway client leaves
    /// room for the others; an address may carry two such keys.
    pub const DEFAULT: RateLimits = RateLimits {
        per_key: Rate {
            per_s: 1_000,
            burst: 2_000,
        },
        per_address: Rate {
            per_s: 2_000,
            burst: 4_000,
        },
    };

    /// No limits.
    pub const OFF: RateLimits = RateLimits {
        per_key: Rate::OFF,
        per_address: Rate::OFF,
    };
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The keyed limiters of one server.
pub struct Limiter {
    limits: RateLimits,
    per_key: Option<DefaultKeyedRateLimiter<String>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// What a limit counts requests by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The API key (after authentication).
    Key,
    /// The client address (before authentication).
    Address,
}

impl Scope {
    /// How a client reads it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Key => "API key",
            Scope::Address => "client address",
        }
    }
}

/// A refusal: which limit, and how long until a request would pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The limit that refused.
    pub rate: Rate,
    /// What it applies to.
    pub scope: Scope,
    /// How long until the bucket admits one request again.
    pub wait: Duration,
}

impl Limiter {
    /// Limiters for `limits`.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            per_key: limits.per_key.quota().map(DefaultKeyedRateLimiter::hashmap),
            per_address: limits
                .per_address
                .quota()
                .map(DefaultKeyedRateLimiter::hashmap),
        }
    }

    /// The limits applied.
    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// Takes one request from key `key_id`'s bucket.
    ///
    /// # Errors
    /// [`Refused`] when the bucket is empty.
    pub fn check_key(&self, key_id: &str) -> Result<(), Refused> {
        let Some(limiter) = &self.per_key else {
            return Ok(());
        };
        limiter
            .check_key(&key_id.to_owned())
            .map_err(|not_until| Refused {
                rate: self.limits.per_key,
                scope: Scope::Key,
                wait: not_until.wait_time_from(limiter.clock().now()),
            })
    }

    /// Takes one request from the bucket of the client at `address`.
    ///
    /// # Errors
    /// [`Refused`] when the bucket is empty.
    pub fn check_address(&self, address: IpAddr) -> Result<(), Refused> {
        let Some(limiter) = &self.per_address else {
            return Ok(());
        };
        limiter
            .check_key(&client_of(address))
            .map_err(|not_until| Refused {
                rate: self.limits.per_address,
                scope: Scope::Address,
                wait: not_until.wait_time_from(limiter.clock().now()),
            })
    }

    /// Drops the buckets that are full again (a client that came back would
    /// get a fresh one, the same thing), so memory follows the clients active
    /// lately, not every client ever seen.
    pub fn prune(&self) {
        if let Some(limiter) = &self.per_key {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_address {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// How many keys and client addresses have a bucket now.
    pub fn tracked(&self) -> (usize, usize) {
        (
            self.per_key.as_ref().map_or(0, |l| l.len()),
            self.per_address.as_ref().map_or(0, |l| l.len()),
        )
    }

    /// Prunes every [`PRUNE_EVERY_MS`] until the process ends (a task of `recur serve`).
    pub async fn prune_forever(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_millis(PRUNE_EVERY_MS));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.prune();
        }
    }
}

/// The client an address stands for: an IPv4 address (an IPv4-mapped IPv6 one
/// included) as it is, an IPv6 address by its /64 prefix.
fn client_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = v6.to_bits() & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from_bits(prefix))
        }
    }
}

/// Whole seconds to wait, rounded up and at least 1 (`Retry-After` has no
/// fractions, and 0 would invite an immediate retry that is refused again).
pub fn retry_after_s(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        let seconds = retry_after_s(refused.wait);
        ApiError::rate_limited(
            format!(
                "too many requests for this {}: at most {} a second, {} at once; retry in {seconds} s",
                refused.scope.name(),
                refused.rate.per_s,
                refused.rate.burst
            ),
            seconds,
        )
    }
}

/// The per-address limit, applied to every request but the probes before
/// anything else is read. The address is the peer's ([`ConnectInfo`]); a
/// router served without it (no peer known) is not limited by address.
pub async fn limit_address(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    if !EXEMPT_PATHS.contains(&request.uri().path())
        && let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>()
        && let Err(refused) = state.limiter.check_address(peer.ip())
    {
        return ApiError::from(refused).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_never_zero() {
        assert_eq!(retry_after_s(Duration::ZERO), 1);
        assert_eq!(retry_after_s(Duration::from_micros(1)), 1);
        assert_eq!(retry_after_s(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_s(Duration::from_millis(1_001)), 2);
    }

    #[test]
    fn a_bucket_admits_its_burst_then_refuses_each_key_on_its_own() {
        let limiter = Limiter::new(RateLimits {
            per_key: Rate { per_s: 1, burst: 3 },
            per_address: Rate::OFF,
        });
        for _ in 0..3 {
            assert_eq!(limiter.check_key("a"), Ok(()));
        }
        let refused = limiter.check_key("a").unwrap_err();
        assert_eq!(refused.scope, Scope::Key);
        assert!(refused.wait > Duration::ZERO && refused.wait <= Duration::from_secs(1));
        // Another key has its own bucket; addresses are not limited.
        assert_eq!(limiter.check_key("b"), Ok(()));
        assert_eq!(limiter.check_address("127.0.0.1".parse().unwrap()), Ok(()));
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_prefix_and_a_mapped_ipv4_as_ipv4() {
        let limiter = Limiter::new(RateLimits {
            per_key: Rate::OFF,
            per_address: Rate { per_s: 1, burst: 1 },
        });
        assert!(
            limiter
                .check_address("2001:db8::1".parse().unwrap())
                .is_ok()
        );
        assert!(
            limiter
                .check_address("2001:db8::ffff:2".parse().unwrap())
                .is_err()
        );
        assert!(
            limiter
                .check_address("2001:db8:0:1::1".parse().unwrap())
                .is_ok()
        );
        assert!(limiter.check_address("192.0.2.7".parse().unwrap()).is_ok());
        assert!(
            limiter
                .check_address("::ffff:192.0.2.7".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn a_zero_rate_switches_a_limit_off() {
        let limiter = Limiter::new(RateLimits::OFF);
        for _ in 0..10_000 {
            assert!(limiter.check_key("a").is_ok());
            assert!(limiter.check_address("192.0.2.1".parse().unwrap()).is_ok());
        }
        assert_eq!(limiter.tracked(), (0, 0));
    }

    #[test]
    fn pruning_drops_the_buckets_that_are_full_again() {
        let limiter = Limiter::new(RateLimits {
            per_key: Rate {
                per_s: 1_000,
                burst: 1,
            },
            per_address: Rate {
                per_s: 1_000,
                burst: 1,
            },
        });
        for n in 0..100_u8 {
            limiter.check_key(&n.to_string()).unwrap();
            limiter.check_address(IpAddr::from([192, 0, 2, n])).unwrap();
        }
        assert_eq!(limiter.tracked(), (100, 100));
        // One request a bucket at 1,000/s: every bucket is full again after 1 ms.
        std::thread::sleep(Duration::from_millis(20));
        limiter.prune();
        assert_eq!(limiter.tracked(), (0, 0));
    }
}
