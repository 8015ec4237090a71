//! The server's metrics, served at `GET /metrics` in Prometheus' text
//! exposition format (version 0.0.4).
//!
//! Hand-written rather than a metrics crate: a dozen families with fixed
//! buckets render in a page of code, with no registry, no global recorder and
//! no dependency. Counters and histograms are recorded as things happen (the
//! HTTP middleware, the scheduler's ticks, the payment gateway); gauges (ledger
//! and projection positions, the scheduler's backlog) are read when scraped.
//!
//! Labels are bounded by construction: routes are the router's templates
//! (`/v1/customers/{id}`, never a raw path), methods outside the standard ones
//! are `other`, problem codes are our own stable codes. No metric carries an id,
//! a key, an amount or personal data.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use recur_commands::PaymentGateway;
use recur_commands::customer::PaymentMethod;
use recur_commands::invoice::ChargeOutcome;
use recur_commands::payment::{
    AttachRequest, CardError, ChargeRequest, GatewayFuture, RefundRequest,
};
use recur_commands::scheduler::TickReport;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency buckets, in microseconds, with their `le` label
/// (integers, so that no float arithmetic is needed to record or render).
const LATENCY_BUCKETS_US: [(u64, &str); 12] = [
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
    (30_000_000, "30"),
];

/// The route label of a request no route matched (its raw path is never a label).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// A latency histogram over [`LATENCY_BUCKETS_US`].
#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Observations at or under each bound (not cumulative; summed when rendered).
    buckets: [u64; LATENCY_BUCKETS_US.len()],
    count: u64,
    sum_us: u64,
}

impl Histogram {
    fn observe(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(slot) = LATENCY_BUCKETS_US.iter().position(|(le, _)| us <= *le) {
            self.buckets[slot] += 1;
        }
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }
}

/// How a command (a request that may write) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    Refused,
    Failed,
    Replayed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::Replayed => "replayed",
        }
    }
}

/// What was recorded since the server started.
#[derive(Default)]
struct Recorded {
    requests: BTreeMap<(&'static str, String, u16), u64>,
    latency: BTreeMap<(&'static str, String), Histogram>,
    commands: BTreeMap<(&'static str, String, Outcome), u64>,
    refusals: BTreeMap<(&'static str, String, String), u64>,
    payments: BTreeMap<&'static str, u64>,
    ticks: BTreeMap<&'static str, u64>,
    tick_latency: Histogram,
    periods_started: u64,
    invoice_steps: u64,
    work_failures: BTreeMap<&'static str, u64>,
    last_tick_unix_us: Option<u64>,
}

/// One finished HTTP request, as the middleware saw it.
#[derive(Debug)]
pub struct RequestRecord<'a> {
    /// The request's method.
    pub method: &'a Method,
    /// The matched route template, or None when no route matched.
    pub route: Option<&'a str>,
    /// The answer's status.
    pub status: StatusCode,
    /// How long it took.
    pub elapsed: Duration,
    /// The problem's stable code, when the answer is a problem made now.
    pub problem_code: Option<&'a str>,
    /// The answer replays a stored one (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

/// Values read when scraped.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// The ledger's last position, if the ledger answered in time.
    pub ledger_position: Option<u64>,
    /// The position the in-process projections have applied.
    pub projected_position: u64,
    /// Events this process's billing service appended.
    pub events_appended: u64,
    /// Scheduler items due now, if the scheduler answered in time.
    pub scheduler_due_items: Option<usize>,
    /// How long the oldest due item has waited (ledger clock), if it answered.
    pub scheduler_oldest_due_age: Option<Duration>,
}

/// The server's metrics.
#[derive(Default)]
pub struct Telemetry {
    recorded: Mutex<Recorded>,
}

impl Telemetry {
    fn recorded(&self) -> MutexGuard<'_, Recorded> {
        // A panic while holding the lock leaves counts that are still counts.
        self.recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one answered request; a request whose method may write is also a
    /// command, refused (4xx) or failed (5xx) by its problem's code.
    pub fn record_request(&self, request: &RequestRecord<'_>) {
        let method = method_label(request.method);
        let route = request.route.unwrap_or(UNMATCHED_ROUTE).to_owned();
        let status = request.status.as_u16();
        let mut recorded = self.recorded();
        *recorded
            .requests
            .entry((method, route.clone(), status))
            .or_default() += 1;
        recorded
            .latency
            .entry((method, route.clone()))
            .or_default()
            .observe(request.elapsed);
        let is_command = request.route.is_some() && !request.method.is_safe();
        if !is_command {
            return;
        }
        let outcome = if request.replayed {
            Outcome::Replayed
        } else if request.status.is_server_error() {
            Outcome::Failed
        } else if request.status.is_client_error() {
            Outcome::Refused
        } else {
            Outcome::Ok
        };
        *recorded
            .commands
            .entry((method, route.clone(), outcome))
            .or_default() += 1;
        if outcome == Outcome::Refused {
            let code = request.problem_code.unwrap_or("unknown").to_owned();
            *recorded.refusals.entry((method, route, code)).or_default() += 1;
        }
    }

    /// Records a scheduler tick: its work, its failures by code, its duration.
    pub fn record_tick(&self, report: Result<&TickReport, &'static str>, elapsed: Duration) {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut recorded = self.recorded();
        recorded.tick_latency.observe(elapsed);
        recorded.last_tick_unix_us = Some(now_us);
        match report {
            Ok(report) => {
                *recorded.ticks.entry("ok").or_default() += 1;
                recorded.periods_started += u64::from(report.periods_started);
                recorded.invoice_steps += u64::from(report.invoice_steps);
                for (_, code) in &report.failures {
                    *recorded.work_failures.entry(code).or_default() += 1;
                }
            }
            Err(_) => *recorded.ticks.entry("error").or_default() += 1,
        }
    }

    fn record_payment(&self, outcome: &'static str) {
        *self.recorded().payments.entry(outcome).or_default() += 1;
    }

    /// The exposition: what was recorded, and `gauges` read now.
    pub fn render(&self, gauges: &Gauges) -> String {
        let recorded = self.recorded();
        let mut out = String::with_capacity(16 * 1024);
        header(
            &mut out,
            "recur_http_requests_total",
            "counter",
            "HTTP requests answered, by method, route template and status.",
        );
        for ((method, route, status), n) in &recorded.requests {
            sample(
                &mut out,
                "recur_http_requests_total",
                &[
                    ("method", method),
                    ("route", route),
                    ("status", &status.to_string()),
                ],
                &n.to_string(),
            );
        }
        header(
            &mut out,
            "recur_http_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its answer, by method and route template.",
        );
        for ((method, route), histogram) in &recorded.latency {
            render_histogram(
                &mut out,
                "recur_http_request_duration_seconds",
                &[("method", method), ("route", route)],
                histogram,
            );
        }
        header(
            &mut out,
            "recur_billing_commands_total",
            "counter",
            "Requests that may write (every method but GET, HEAD, OPTIONS, TRACE), by method, \
             route template and outcome: ok, refused (4xx), failed (5xx), replayed (an \
             Idempotency-Key's stored answer).",
        );
        for ((method, route, outcome), n) in &recorded.commands {
            sample(
                &mut out,
                "recur_billing_commands_total",
                &[
                    ("method", method),
                    ("route", route),
                    ("outcome", outcome.label()),
                ],
                &n.to_string(),
            );
        }
        header(
            &mut out,
            "recur_billing_refusals_total",
            "counter",
            "Commands refused (4xx, not replayed), by method, route template and the \
             problem's stable code.",
        );
        for ((method, route, code), n) in &recorded.refusals {
            sample(
                &mut out,
                "recur_billing_refusals_total",
                &[("method", method), ("route", route), ("code", code)],
                &n.to_string(),
            );
        }
        header(
            &mut out,
            "recur_payments_total",
            "counter",
            "Charges sent to the payment gateway, by outcome: succeeded, declined, \
             unavailable (no answer; retried).",
        );
        for outcome in ["succeeded", "declined", "unavailable"] {
            let n = recorded.payments.get(outcome).copied().unwrap_or(0);
            sample(
                &mut out,
                "recur_payments_total",
                &[("outcome", outcome)],
                &n.to_string(),
            );
        }
        header(
            &mut out,
            "recur_ledger_events_appended_total",
            "counter",
            "Events this process's billing service appended to the ledger (replayed \
             appends not counted).",
        );
        sample(
            &mut out,
            "recur_ledger_events_appended_total",
            &[],
            &gauges.events_appended.to_string(),
        );
        if let Some(ledger) = gauges.ledger_position {
            header(
                &mut out,
                "recur_ledger_position",
                "gauge",
                "The ledger's last position (every process's appends).",
            );
            sample(&mut out, "recur_ledger_position", &[], &ledger.to_string());
        }
        header(
            &mut out,
            "recur_projection_position",
            "gauge",
            "The ledger position the in-process read models have applied.",
        );
        sample(
            &mut out,
            "recur_projection_position",
            &[],
            &gauges.projected_position.to_string(),
        );
        if let Some(ledger) = gauges.ledger_position {
            header(
                &mut out,
                "recur_projection_lag_events",
                "gauge",
                "The ledger's last position minus the projected position.",
            );
            let lag = ledger.saturating_sub(gauges.projected_position);
            sample(
                &mut out,
                "recur_projection_lag_events",
                &[],
                &lag.to_string(),
            );
        }
        header(
            &mut out,
            "recur_scheduler_ticks_total",
            "counter",
            "Scheduler ticks, by result: ok, or error (the ledger could not be followed).",
        );
        for result in ["ok", "error"] {
            let n = recorded.ticks.get(result).copied().unwrap_or(0);
            sample(
                &mut out,
                "recur_scheduler_ticks_total",
                &[("result", result)],
                &n.to_string(),
            );
        }
        header(
            &mut out,
            "recur_scheduler_tick_duration_seconds",
            "histogram",
            "How long a scheduler tick took.",
        );
        render_histogram(
            &mut out,
            "recur_scheduler_tick_duration_seconds",
            &[],
            &recorded.tick_latency,
        );
        header(
            &mut out,
            "recur_scheduler_work_total",
            "counter",
            "Work the scheduler's ticks did, by kind: periods_started (trial ends and \
             renewals), invoice_steps (drafts, charges, refunds, recognition).",
        );
        for (kind, n) in [
            ("invoice_steps", recorded.invoice_steps),
            ("periods_started", recorded.periods_started),
        ] {
            sample(
                &mut out,
                "recur_scheduler_work_total",
                &[("kind", kind)],
                &n.to_string(),
            );
        }
        header(
            &mut out,
            "recur_scheduler_work_failures_total",
            "counter",
            "Scheduler work items that failed (retried next tick), by the error's stable code.",
        );
        for (code, n) in &recorded.work_failures {
            sample(
                &mut out,
                "recur_scheduler_work_failures_total",
                &[("code", code)],
                &n.to_string(),
            );
        }
        if let Some(us) = recorded.last_tick_unix_us {
            header(
                &mut out,
                "recur_scheduler_last_tick_timestamp_seconds",
                "gauge",
                "When the last scheduler tick finished (Unix time, the machine's clock).",
            );
            sample(
                &mut out,
                "recur_scheduler_last_tick_timestamp_seconds",
                &[],
                &seconds(us),
            );
        }
        if let Some(due) = gauges.scheduler_due_items {
            header(
                &mut out,
                "recur_scheduler_due_items",
                "gauge",
                "Scheduler work items due now (what the next tick has to do).",
            );
            sample(&mut out, "recur_scheduler_due_items", &[], &due.to_string());
        }
        if let Some(age) = gauges.scheduler_oldest_due_age {
            header(
                &mut out,
                "recur_scheduler_oldest_due_age_seconds",
                "gauge",
                "How long the oldest due work item has been due (the ledger's clock); 0 when \
                 nothing is due.",
            );
            let us = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
            sample(
                &mut out,
                "recur_scheduler_oldest_due_age_seconds",
                &[],
                &seconds(us),
            );
        }
        out
    }
}

/// Writes a family's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Writes a histogram's cumulative buckets, `+Inf`, sum and count.
fn render_histogram(out: &mut String, name: &str, labels: &[(&str, &str)], h: &Histogram) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for ((_, le), n) in LATENCY_BUCKETS_US.iter().zip(h.buckets) {
        cumulative += n;
        let mut with_le = labels.to_vec();
        with_le.push(("le", le));
        sample(out, &bucket, &with_le, &cumulative.to_string());
    }
    let mut with_le = labels.to_vec();
    with_le.push(("le", "+Inf"));
    sample(out, &bucket, &with_le, &h.count.to_string());
    sample(out, &format!("{name}_sum"), labels, &seconds(h.sum_us));
    sample(out, &format!("{name}_count"), labels, &h.count.to_string());
}

/// Microseconds as decimal seconds, without float arithmetic.
fn seconds(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Help text with `\` and newlines escaped.
fn escape_help(value: &str) -> String {
    value.replace('\\', r"\\").replace('\n', r"\n")
}

/// The method as a label: the standard ones by name, anything else `other`,
/// so that a client cannot make new series by inventing methods.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A payment gateway that counts the charges' outcomes of the one it wraps.
pub struct CountingGateway {
    inner: Arc<dyn PaymentGateway>,
    telemetry: Arc<Telemetry>,
}

impl CountingGateway {
    /// Wraps `inner`, counting into `telemetry`.
    pub fn new(inner: Arc<dyn PaymentGateway>, telemetry: Arc<Telemetry>) -> Self {
        Self { inner, telemetry }
    }
}

impl PaymentGateway for CountingGateway {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn attach_payment_method<'a>(
        &'a self,
        request: &'a AttachRequest,
    ) -> GatewayFuture<'a, Result<PaymentMethod, CardError>> {
        self.inner.attach_payment_method(request)
    }

    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> GatewayFuture<'a, ChargeOutcome> {
        Box::pin(async move {
            let outcome = self.inner.charge(request).await;
            self.telemetry.record_payment(match &outcome {
                Ok(ChargeOutcome::Succeeded { .. }) => "succeeded",
                Ok(ChargeOutcome::Declined { .. }) => "declined",
                Err(_) => "unavailable",
            });
            outcome
        })
    }

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> GatewayFuture<'a, String> {
        self.inner.refund(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("l", "a\"b\\c\nd")], "1");
        assert_eq!(out, "m{l=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        render_histogram(&mut out, "h", &[], &h);
        assert!(out.contains("h_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"30\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("h_sum 60.033000\n"), "{out}");
        assert!(out.contains("h_count 3\n"), "{out}");
    }

    #[test]
    fn invented_methods_share_one_label() {
        let method = Method::from_bytes(b"BREW").expect("a token");
        assert_eq!(method_label(&method), "other");
    }
}
