//! `recur serve`: the command API over HTTP (axum). Stripe-like JSON resources
//! under `/v1`, idempotency keys, `If-Match`, API keys with roles, problem
//! details, OpenAPI at `/openapi.json`, `/healthz` and `/readyz`.

pub mod auth;
pub mod directory;
pub mod dto;
pub mod openapi;
pub mod problem;
pub mod request;
pub mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use recur_commands::scheduler::Scheduler;
use recur_commands::{Billing, Catalog, SimulatedGateway};
use recur_ledger::{Clock, SystemClock, TestClock};
use tracing::Instrument;

use self::auth::KeyRing;
use self::directory::Directory;
use self::problem::ApiError;
use self::routes::{catalog, coupons, customers, invoices, metrics, subscriptions, system};

/// What every handler shares.
pub struct AppState {
    /// The billing service.
    pub billing: Arc<Billing>,
    /// API keys.
    pub keys: Arc<KeyRing>,
    /// Lists.
    pub directory: Directory,
    /// The scheduler.
    pub scheduler: Arc<Scheduler>,
    /// The test clock, when enabled.
    pub test_clock: Option<TestClock>,
    /// One test-clock advance at a time.
    pub clock_turn: tokio::sync::Mutex<()>,
    /// The read models' database.
    pub read_models: recur_projections::db::Db,
    /// The ledger position the projections have reached.
    pub projected: Arc<std::sync::atomic::AtomicU64>,
    /// The read models as of the last past position asked for (one build at a time).
    pub past: tokio::sync::Mutex<Option<(u64, recur_projections::db::Db)>>,
    /// How long a request may run.
    pub request_timeout: std::time::Duration,
}

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on (a host name is resolved; port 0: any free port).
    pub listen: crate::config::ListenAddr,
    /// The ledger; opened with [`ServeOptions::missing`].
    pub ledger: crate::config::LedgerArgs,
    /// What to do when the ledger's SQLite file is not there.
    pub missing: crate::config::WhenMissing,
    /// The bootstrap admin key (`RECUR_ADMIN_KEY`), held only in memory.
    pub admin_key: Option<crate::config::Secret>,
    /// Relay the ledger to NATS JetStream, when configured.
    pub relay: Option<recur_projections::RelayConfig>,
    /// Run on a test clock, with POST /v1/test_clock/advance.
    pub test_clock: bool,
    /// Where the test clock starts (default: now); never before the ledger's last event.
    pub test_clock_start: Option<time::OffsetDateTime>,
    /// Seconds between scheduler ticks on the system clock.
    pub tick_seconds: u64,
    /// How long a request may run ([`REQUEST_TIMEOUT_MS`] by default).
    pub request_timeout_ms: u64,
    /// How long a stop waits for work in flight ([`DRAIN_MS`] by default).
    pub drain_ms: u64,
}

/// How often the in-process projections look for other processes' events (this
/// process's commits wake them at once).
const PROJECTION_POLL_MS: u64 = 20;
/// How long a request may run before it is answered 503 `request_timeout`
/// (`/v1/test_clock/advance` excepted: it runs the business forward).
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// How long a stopping server waits for the requests in flight, and then for
/// the scheduler's tick and the relay, before it exits anyway.
pub const DRAIN_MS: u64 = 20_000;
/// Seconds between purges of expired idempotency answers.
const PURGE_INTERVAL_S: u64 = 3_600;
/// How long idempotency answers are kept, in hours (the promise is at least 24).
pub const IDEMPOTENCY_KEEP_HOURS: i64 = 48;

/// Builds the router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/openapi.json", get(system::openapi))
        .route("/v1/customers", post(customers::create))
        .route(
            "/v1/customers/{id}",
            get(customers::get).post(customers::update),
        )
        .route(
            "/v1/customers/{id}/payment_method",
            post(customers::attach_payment_method),
        )
        .route("/v1/customers/{id}/view", get(metrics::customer_view))
        .route(
            "/v1/subscriptions",
            post(subscriptions::create).get(subscriptions::list),
        )
        .route("/v1/subscriptions/{id}", get(subscriptions::get))
        .route("/v1/subscriptions/{id}/change", post(subscriptions::change))
        .route(
            "/v1/subscriptions/{id}/preview_change",
            post(subscriptions::preview_change),
        )
        .route("/v1/subscriptions/{id}/cancel", post(subscriptions::cancel))
        .route("/v1/subscriptions/{id}/pause", post(subscriptions::pause))
        .route("/v1/subscriptions/{id}/resume", post(subscriptions::resume))
        .route(
            "/v1/subscriptions/{id}/undo_cancellation",
            post(subscriptions::undo_cancellation),
        )
        .route(
            "/v1/subscriptions/{id}/discount",
            post(subscriptions::apply_discount).delete(subscriptions::remove_discount),
        )
        .route("/v1/invoices", get(invoices::list))
        .route("/v1/invoices/{id}", get(invoices::get))
        .route("/v1/invoices/{id}/pay", post(invoices::pay))
        .route("/v1/invoices/{id}/void", post(invoices::void))
        .route("/v1/invoices/{id}/refund", post(invoices::refund))
        .route("/v1/purchases", post(invoices::purchase))
        .route("/v1/coupons", post(coupons::create))
        .route("/v1/coupons/{code}", get(coupons::get))
        .route("/v1/plans", get(catalog::plans).post(catalog::create_plan))
        .route("/v1/plans/{id}", post(catalog::update_plan))
        .route(
            "/v1/tax_rates",
            get(catalog::tax_rates).post(catalog::create_tax_rate),
        )
        .route("/v1/tax_rates/{id}/retire", post(catalog::retire_tax_rate))
        .route(
            "/v1/prices",
            get(catalog::prices).post(catalog::create_price),
        )
        .route("/v1/metrics/mrr", get(metrics::mrr_series))
        .route("/v1/metrics/movements", get(metrics::movements))
        .route("/v1/metrics/churn", get(metrics::churn))
        .route("/v1/metrics/cohorts", get(metrics::cohorts))
        .route("/v1/metrics/mrr-at", get(metrics::mrr_at))
        .route("/v1/ledger/trial-balance", get(metrics::trial_balance))
        .route("/v1/ledger/ar-aging", get(metrics::ar_aging))
        .route(
            "/v1/ledger/revenue-recognition",
            get(metrics::revenue_recognition),
        )
        .route(
            "/v1/api_keys",
            post(system::create_key).get(system::list_keys),
        )
        .route("/v1/api_keys/{id}/revoke", post(system::revoke_key))
        .route("/v1/api_keys/{id}/rotate", post(system::rotate_key))
        .route("/v1/test_clock/advance", post(system::advance))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(request::BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            request_id,
        ))
        .with_state(state)
}

/// Gives every request an id (`x-request-id`, in the logs too), bounds its
/// time, and logs its outcome.
async fn request_id(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let id = uuid::Uuid::now_v7().to_string();
    let span = tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
    let bounded = request.uri().path() != "/v1/test_clock/advance";
    async move {
        let started = std::time::Instant::now();
        let running = next.run(request);
        let mut response = if bounded {
            match tokio::time::timeout(state.request_timeout, running).await {
                Ok(response) => response,
                // The handler is dropped where it stands: what it committed
                // stays, and a retry with the same Idempotency-Key takes its key
                // over and finishes it without writing twice.
                Err(_) => ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "request_timeout",
                    format!(
                        "the request took longer than {} ms; it may have been partly applied: \
                         retry with the same Idempotency-Key",
                        state.request_timeout.as_millis()
                    ),
                )
                .into_response(),
            }
        } else {
            running.await
        };
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "answered"
        );
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-request-id", value);
        }
        response
    }
    .instrument(span)
    .await
}

/// Why `recur serve` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The ledger could not be opened.
    #[error(transparent)]
    Open(#[from] crate::config::OpenError),
    /// The ledger failed while starting.
    #[error(transparent)]
    Ledger(#[from] recur_ledger::LedgerError),
    /// The catalog or billing could not be opened.
    #[error(transparent)]
    Billing(#[from] recur_commands::BillingError),
    /// The API keys could not be loaded (or `RECUR_ADMIN_KEY` is too short).
    #[error(transparent)]
    Keys(#[from] auth::LoadError),
    /// The ledger's database cannot hold read models.
    #[error("no database for the read models")]
    NoReadModelDatabase,
    /// The read models could not be opened.
    #[error(transparent)]
    Projections(#[from] recur_projections::ProjectionError),
    /// The relay to NATS could not start.
    #[error(transparent)]
    Relay(#[from] recur_projections::RelayError),
    /// The address could not be resolved or bound.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address asked for.
        address: String,
        /// The system's refusal.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error("serving failed")]
    Serve(#[source] std::io::Error),
}

/// Opens the ledger and billing, and serves until SIGTERM or SIGINT: then it
/// stops taking connections, drains the requests in flight (at most
/// [`DRAIN_MS`]), lets the scheduler finish its tick and the relay stop, and returns.
///
/// # Errors
/// [`ServeError`]: the ledger cannot be opened (a missing SQLite file that may
/// not be made is one), the address cannot be resolved or bound, a bad
/// `RECUR_ADMIN_KEY`.
pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    let location = options.ledger.location();
    let test_clock = options.test_clock.then(|| {
        TestClock::at(
            options
                .test_clock_start
                .unwrap_or_else(time::OffsetDateTime::now_utc),
        )
    });
    let clock: Arc<dyn Clock> = match &test_clock {
        Some(clock) => Arc::new(clock.clone()),
        None => Arc::new(SystemClock),
    };
    let ledger = options.ledger.open(options.missing, clock).await?;
    if let Some(clock) = &test_clock {
        // A test clock never runs behind what the ledger already recorded.
        let last = ledger.last_position().await?;
        let previous = recur_ledger::Position(last.0.saturating_sub(1));
        if let Some(event) = ledger.read_all(previous, 1).await?.first()
            && event.recorded_at > clock.now()
        {
            clock.advance_to(event.recorded_at);
        }
    }
    let billing = Arc::new(
        Billing::open(
            ledger.clone(),
            Catalog::default_catalog()?,
            Arc::new(SimulatedGateway::new()),
        )
        .await?,
    );
    let bootstrap = options
        .admin_key
        .as_ref()
        .map(crate::config::Secret::expose)
        .filter(|k| !k.is_empty());
    let keys = Arc::new(KeyRing::load(ledger.clone(), bootstrap).await?);
    tokio::spawn(Arc::clone(&keys).follow());
    if bootstrap.is_none() {
        tracing::warn!(
            "RECUR_ADMIN_KEY is not set: only keys made with `recur keys create` can call the API"
        );
    }
    let scheduler = Arc::new(Scheduler::new(
        Arc::clone(&billing),
        recur_commands::scheduler::CONCURRENCY_DEFAULT,
    ));
    let read_models =
        recur_projections::db::Db::of(&ledger).ok_or(ServeError::NoReadModelDatabase)?;
    let projected = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut projections = recur_projections::Projections::open(&ledger).await?;
    projected.store(
        projections.position().0,
        std::sync::atomic::Ordering::Release,
    );
    {
        // The projections, in-process, fed from the ledger.
        let projected = Arc::clone(&projected);
        let commits = Arc::clone(ledger.committed());
        tokio::spawn(async move {
            loop {
                // Registered before catching up, so a commit meanwhile still wakes us.
                let committed = commits.notified();
                tokio::pin!(committed);
                committed.as_mut().enable();
                match projections.catch_up().await {
                    Ok(()) => projected.store(
                        projections.position().0,
                        std::sync::atomic::Ordering::Release,
                    ),
                    Err(error) => {
                        tracing::warn!(error = %recur_ledger::Chain(&error), "projection failed; retrying");
                    }
                }
                let poll = std::time::Duration::from_millis(PROJECTION_POLL_MS);
                tokio::select! {
                    () = &mut committed => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
        });
    }
    let state = Arc::new(AppState {
        billing,
        keys,
        directory: Directory::default(),
        scheduler: Arc::clone(&scheduler),
        test_clock: test_clock.clone(),
        clock_turn: tokio::sync::Mutex::new(()),
        read_models,
        projected,
        past: tokio::sync::Mutex::new(None),
        request_timeout: std::time::Duration::from_millis(options.request_timeout_ms.max(1)),
    });
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut background = tokio::task::JoinSet::new();
    if test_clock.is_none() {
        let tick_s = options.tick_seconds.max(1);
        let mut stopping = stopping.clone();
        background.spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(tick_s));
            loop {
                // A tick, once started, is finished before the server stops.
                tokio::select! {
                    _ = every.tick() => {}
                    () = stopped(&mut stopping) => return,
                }
                if let Err(error) = scheduler.tick().await {
                    tracing::warn!(
                        code = error.code(),
                        "scheduler tick failed; next tick retries"
                    );
                }
            }
        });
    }
    if let Some(config) = options.relay.clone() {
        // Distribution to other processes (`recur project`); the in-process
        // projections above do not need it.
        let relay = recur_projections::Relay::connect(ledger.clone(), config).await?;
        let mut stopping = stopping.clone();
        background.spawn(async move {
            if let Err(error) = relay.run(stopped(&mut stopping)).await {
                tracing::warn!(error = %recur_ledger::Chain(&error), "relay stopped");
            }
        });
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(PURGE_INTERVAL_S));
        loop {
            every.tick().await;
            let before = ledger.clock().now() - time::Duration::hours(IDEMPOTENCY_KEEP_HOURS);
            if let Err(error) = ledger.purge_requests(before).await {
                tracing::warn!(%error, "could not purge expired idempotency answers");
            }
        }
    });
    // A host name is resolved here; the first of its addresses that binds is used.
    let listen = |source| ServeError::Listen {
        address: options.listen.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(options.listen.to_bind())
        .await
        .map_err(listen)?;
    let address = listener.local_addr().map_err(listen)?;
    // The first line of stdout, for scripts and tests that start us on port 0.
    println!("recur: listening on http://{address} (ledger {location})");
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: no new connections; draining the requests in flight");
        let _ = stop.send(true);
    });
    let drain = std::time::Duration::from_millis(options.drain_ms);
    let mut draining = stopping.clone();
    let server = axum::serve(listener, router(state).into_make_service())
        .with_graceful_shutdown(async move { stopped(&mut draining).await });
    let mut stop_waited = stopping.clone();
    tokio::select! {
        served = server => served.map_err(ServeError::Serve)?,
        () = async {
            stopped(&mut stop_waited).await;
            tokio::time::sleep(drain).await;
        } => tracing::warn!(drain_ms = options.drain_ms, "requests still running after the drain; stopping anyway"),
    }
    let finished = tokio::time::timeout(drain, async {
        while background.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            drain_ms = options.drain_ms,
            "the scheduler or the relay did not stop in time"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves once the server is told to stop.
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone: nobody can tell us to stop any more.
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// SIGTERM (a service manager, a container runtime) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C still stops");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
