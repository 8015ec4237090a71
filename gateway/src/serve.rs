//! `recur serve`: opens the ledger, billing, API keys, the in-process
//! projections, the scheduler, the Stripe translator (with a webhook secret)
//! and (when configured) the relay, and serves the command API (`recur_api`)
//! until SIGTERM or SIGINT, then drains.

use std::sync::Arc;

use anyhow::Context as _;
use recur_api::auth::KeyRing;
use recur_api::telemetry::{CountingGateway, Telemetry};
use recur_api::{AppState, router};
use recur_commands::scheduler::Scheduler;
use recur_commands::{Billing, BillingError, Catalog};
use recur_ledger::{Clock, SystemClock, TestClock};

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
    /// The master keys of personal data.
    pub master_keys: crate::config::MasterKeyArgs,
    /// Stripe webhook signing secrets, comma-separated (none: no endpoint).
    pub stripe_webhook_secrets: Option<crate::config::Secret>,
    /// Relay the ledger to NATS JetStream, when configured.
    pub relay: Option<recur_projections::RelayConfig>,
    /// Run on a test clock, with POST /v1/test_clock/advance.
    pub test_clock: bool,
    /// Where the test clock starts (default: now); never before the ledger's last event.
    pub test_clock_start: Option<time::OffsetDateTime>,
    /// Seconds between scheduler ticks on the system clock.
    pub tick_seconds: u64,
    /// How long a request may run ([`recur_api::REQUEST_TIMEOUT_MS`] by default).
    pub request_timeout_ms: u64,
    /// How long a stop waits for work in flight ([`DRAIN_MS`] by default).
    pub drain_ms: u64,
    /// Where to export each new seal, if anywhere.
    pub seal_export: Option<crate::seal_export::Target>,
    /// Rate limits per API key and per client address.
    pub rate_limits: recur_api::limits::RateLimits,
    /// The payment gateway to charge through.
    pub gateway: crate::cli::GatewayKind,
    /// The update-card page's settings.
    pub update_card: crate::config::UpdateCardArgs,
    /// Dunning policies to put in force at start (read from RECUR_DUNNING_POLICIES).
    pub dunning_policies: Option<recur_commands::dunning_policy::DunningPolicies>,
}

/// How often the in-process projections look for other processes' events (this
/// process's commits wake them at once).
const PROJECTION_POLL_MS: u64 = 20;
/// How long a stopping server waits for the requests in flight, and then for
/// the scheduler's tick and the relay, before it exits anyway.
pub const DRAIN_MS: u64 = 20_000;
/// How often the Stripe translator looks for Stripe events kept by other
/// processes (this process's webhook wakes it at once).
const TRANSLATOR_POLL_MS: u64 = 2_000;
/// Seconds between purges of expired idempotency answers.
const PURGE_INTERVAL_S: u64 = 3_600;
/// How long idempotency answers are kept, in hours (the promise is at least 24).
pub const IDEMPOTENCY_KEEP_HOURS: i64 = 48;

/// Opens the ledger and billing, and serves until SIGTERM or SIGINT: then it
/// stops taking connections, drains the requests in flight (at most
/// [`DRAIN_MS`]), lets the scheduler finish its tick and the relay stop, and returns.
///
/// # Errors
/// The payment gateway cannot be made (`--gateway stripe` without the feature
/// or without STRIPE_SECRET_KEY); the ledger cannot be opened (a missing SQLite file that may not be made is
/// one), the address cannot be resolved or bound, a bad `RECUR_ADMIN_KEY`.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    // A gateway that cannot be made (no Stripe support, no key) stops the
    // start before anything is opened.
    let gateway = crate::stripe_cmd::payment_gateway(options.gateway)?;
    // Listen for SIGTERM before anything else: a stop asked for while the
    // ledger opens or the projections catch up ends the process cleanly once
    // start-up is done, instead of killing it mid-migration.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let asked_to_stop = shutdown_signal();
    tokio::spawn(async move {
        asked_to_stop.await;
        tracing::info!("stopping: no new connections; draining the requests in flight");
        let _ = stop.send(true);
    });
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
    let telemetry = Arc::new(Telemetry::default());
    let vault = options
        .master_keys
        .vault(
            &options.ledger.data_dir,
            crate::config::KeyFile::MakeIfMissing,
        )
        .context("the master key of personal data")?;
    crate::config::check_master_keys(&ledger, &vault).await?;
    let billing = Arc::new(
        Billing::open(
            ledger.clone(),
            Catalog::default_catalog()?,
            Arc::new(CountingGateway::new(gateway, Arc::clone(&telemetry))),
        )
        .await?
        .with_vault(Arc::new(vault)),
    );
    if let Some(policies) = options.dunning_policies.clone() {
        let version = billing
            .set_dunning_policies(policies, recur_ledger::Source::Cli)
            .await?;
        tracing::info!(version, "dunning policies in force");
    }
    let bootstrap = options
        .admin_key
        .as_ref()
        .map(crate::config::Secret::expose)
        .filter(|k| !k.is_empty());
    let keys = Arc::new(
        KeyRing::load(ledger.clone(), bootstrap)
            .await
            .context("load the API keys")?,
    );
    tokio::spawn(Arc::clone(&keys).follow());
    if bootstrap.is_none() {
        tracing::warn!(
            "RECUR_ADMIN_KEY is not set: only keys made with `recur keys create` can call the API"
        );
    }
    let read_models = recur_projections::db::Db::of(&ledger)
        .ok_or_else(|| anyhow::anyhow!("no database for the read models"))?;
    let projected = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lists_projected = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut projections = recur_projections::Projections::open(&ledger).await?;
    projected.store(
        projections.position().0,
        std::sync::atomic::Ordering::Release,
    );
    lists_projected.store(
        projections.customers.position().0,
        std::sync::atomic::Ordering::Release,
    );
    {
        // The projections, in-process, fed from the ledger.
        let projected = Arc::clone(&projected);
        let lists_projected = Arc::clone(&lists_projected);
        let commits = Arc::clone(ledger.committed());
        tokio::spawn(async move {
            loop {
                // Registered before catching up, so a commit meanwhile still wakes us.
                let committed = commits.notified();
                tokio::pin!(committed);
                committed.as_mut().enable();
                // The lists' projection first, so they are not held up by the others.
                let lists = projections.customers.catch_up().await;
                lists_projected.store(
                    projections.customers.position().0,
                    std::sync::atomic::Ordering::Release,
                );
                let caught_up = lists.and(projections.catch_up().await);
                match caught_up {
                    Ok(()) => projected.store(
                        projections.position().0,
                        std::sync::atomic::Ordering::Release,
                    ),
                    Err(error) => tracing::warn!(%error, "projection failed; retrying"),
                }
                let poll = std::time::Duration::from_millis(PROJECTION_POLL_MS);
                tokio::select! {
                    () = &mut committed => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
        });
    }
    let stripe_kept = Arc::new(tokio::sync::Notify::new());
    let translator = Arc::new(recur_commands::translator::Translator::new(Arc::clone(
        &billing,
    )));
    let limiter = Arc::new(recur_api::limits::Limiter::new(options.rate_limits));
    tokio::spawn(Arc::clone(&limiter).prune_forever());
    // Bound before the state is made: the update-card links' default base
    // is this address's port. A host name is resolved here; the first of its addresses that binds is used.
    let listener = tokio::net::TcpListener::bind(options.listen.to_bind())
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let address = listener.local_addr()?;
    let update_card = options.update_card.config(address.port())?;
    let scheduler = Scheduler::new(
        Arc::clone(&billing),
        recur_commands::scheduler::CONCURRENCY_DEFAULT,
    );
    // The dunning outbox's channels: SMTP and SMS from the environment.
    let scheduler = match crate::dunning_channels::DunningChannels::from_env(update_card.clone())
        .context("dunning channels")?
    {
        Some(channels) => {
            // Messages go to customers: their links must reach this server
            // from outside and outlive this process.
            let unset = |value: Option<&str>| value.is_none_or(|v| v.trim().is_empty());
            anyhow::ensure!(
                !unset(options.update_card.link_key.as_ref().map(|k| k.expose()))
                    && !unset(options.update_card.public_url.as_deref()),
                "dunning messages are configured (RECUR_SMTP_URL or RECUR_SMS_ACCOUNT_SID), so \
                 RECUR_LINK_KEY or --link-key (a key that outlives this process: openssl rand \
                 -hex 32) and RECUR_PUBLIC_URL or --public-url (where customers reach this \
                 server) must be set: the update-card link in every message depends on both"
            );
            scheduler.with_messenger(Arc::new(channels))
        }
        None => {
            tracing::warn!(
                "neither RECUR_SMTP_URL nor RECUR_SMS_ACCOUNT_SID is set: dunning messages stay \
                 queued in the ledger until SMTP or SMS is configured"
            );
            scheduler
        }
    };
    let scheduler = Arc::new(scheduler);
    let state = Arc::new(AppState {
        billing,
        keys,
        scheduler: Arc::clone(&scheduler),
        test_clock: test_clock.clone(),
        clock_turn: tokio::sync::Mutex::new(()),
        read_models,
        projected,
        lists_projected,
        past: tokio::sync::Mutex::new(None),
        request_timeout: std::time::Duration::from_millis(options.request_timeout_ms.max(1)),
        telemetry: Arc::clone(&telemetry),
        limiter: Arc::clone(&limiter),
        stripe_webhook_secrets: options
            .stripe_webhook_secrets
            .as_ref()
            .map(|secrets| {
                secrets
                    .expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|secret| !secret.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        stripe_kept: Arc::clone(&stripe_kept),
        update_card,
    });
    if *stopping.borrow() {
        tracing::info!("stopped during start-up; not serving");
        return Ok(());
    }
    let mut background = tokio::task::JoinSet::new();
    if test_clock.is_none() {
        let tick_s = options.tick_seconds.max(1);
        let telemetry = Arc::clone(&telemetry);
        let mut stopping = stopping.clone();
        background.spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(tick_s));
            loop {
                // A tick, once started, is finished before the server stops.
                tokio::select! {
                    _ = every.tick() => {}
                    () = stopped(&mut stopping) => return,
                }
                let started = std::time::Instant::now();
                let ticked = scheduler.tick().await;
                telemetry.record_tick(
                    ticked.as_ref().map_err(BillingError::code),
                    started.elapsed(),
                );
                if let Err(error) = ticked {
                    tracing::warn!(
                        code = error.code(),
                        "scheduler tick failed; next tick retries"
                    );
                }
            }
        });
    }
    if !state.stripe_webhook_secrets.is_empty() {
        // The Stripe translator, woken by each webhook kept (after its
        // answer), and now and then for events other servers kept.
        let mut stopping = stopping.clone();
        background.spawn(async move {
            let poll = std::time::Duration::from_millis(TRANSLATOR_POLL_MS);
            loop {
                // Registered before the run, so a webhook meanwhile still wakes us.
                let kept = stripe_kept.notified();
                tokio::pin!(kept);
                kept.as_mut().enable();
                match translator.run(false).await {
                    Ok(report) if report.translated > 0 => tracing::info!(
                        translated = report.translated,
                        applied = report.applied,
                        events_appended = report.events_appended,
                        "Stripe events translated"
                    ),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(
                        code = error.code(),
                        %error,
                        "Stripe translation failed; retried"
                    ),
                }
                // A run once started is finished before the server stops.
                tokio::select! {
                    () = &mut kept => {}
                    () = tokio::time::sleep(poll) => {}
                    () = stopped(&mut stopping) => return,
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
                tracing::warn!(%error, "relay stopped");
            }
        });
    }
    if let Some(target) = options.seal_export.clone() {
        // The newest seal is sent again at start (an HTTP target keeps no place;
        // a file resumes after its last line), then each seal as it is made.
        let newest = crate::seal_export::newest_seal(&ledger).await?;
        let exporter = crate::seal_export::Exporter::new(target.clone(), newest.saturating_sub(1))
            .context("seal export")?;
        tracing::info!(target = %target.redacted(), "exporting seals");
        let mut stopping = stopping.clone();
        background.spawn(crate::seal_export::run(
            ledger.clone(),
            exporter,
            std::time::Duration::from_millis(crate::seal_export::POLL_INTERVAL_MS),
            async move { stopped(&mut stopping).await },
        ));
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
    // The first line of stdout, for scripts and tests that start us on port 0.
    println!("recur: listening on http://{address} (ledger {location})");
    let drain = std::time::Duration::from_millis(options.drain_ms);
    let mut draining = stopping.clone();
    // With the peer's address, for the per-address rate limit.
    let server = axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stopped(&mut draining).await });
    let mut stop_waited = stopping.clone();
    tokio::select! {
        served = server => served?,
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

/// SIGTERM (a service manager, a container runtime) or SIGINT (Ctrl-C). The
/// handlers are installed when this is called, not when it is first awaited.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let terminate = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate())
            .map_err(
                |error| tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C still stops"),
            )
            .ok()
    };
    let interrupt = Box::pin(tokio::signal::ctrl_c());
    async move {
        #[cfg(unix)]
        if let Some(mut terminate) = terminate {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt => {}
            }
            return;
        }
        let _ = interrupt.await;
    }
}
