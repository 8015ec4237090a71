//! The `recur` command line: its grammar and where each command goes.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{
    DatabaseUrl, LedgerArgs, ListenAddr, LogArgs, MasterKeyArgs, NatsArgs, RateLimitArgs, Secret,
    UpdateCardArgs, WhenMissing,
};
use crate::seal_export::SealExport;
use recur_bench::ledger::{BenchBackend, Workload};

/// The environment variables the projections read wherever they run (they
/// choose how metrics count; docs/metrics.md), listed with the commands that run them.
pub const METRICS_ENV_HELP: &str = "\
Environment read by the projections (docs/metrics.md):
  RECUR_METRICS_PROFILE      counting profile: default or conservative
  RECUR_METRICS_PAUSE        override: how a pause counts
  RECUR_METRICS_ONCE_COUPON  override: how a once coupon counts
  RECUR_PAST_DUE_CHURN_DAYS  override: days past due that count as churn";

/// Recur: an event-sourced billing ledger.
#[derive(Debug, Parser)]
#[command(name = "recur", version, about = "Recur: an event-sourced billing ledger", long_about = None)]
pub struct Cli {
    /// Logging (global: given before or after the command).
    #[command(flatten)]
    pub log: LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect and check the ledger.
    Ledger {
        /// Which ledger command.
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Simulate a year of the coaching business through Recur on a test clock, then
    /// print what an owner would want to know (runs on a fresh embedded ledger).
    #[command(after_help = METRICS_ENV_HELP)]
    Demo {
        /// Seed of the simulation: the same seed gives the same business.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Customers arriving over the period.
        #[arg(long, default_value_t = 500)]
        customers: u64,
        /// Months to simulate.
        #[arg(long, default_value_t = 12)]
        months: u32,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Ledger location; it must be empty, and is made if missing. Default: a
        /// fresh recur-demo.sqlite in the data directory, replaced on each run
        /// (DATABASE_URL is not read: the demo never writes to your ledger).
        #[arg(long, value_name = "URL")]
        database: Option<DatabaseUrl>,
        /// Folder of the default demo ledger (recur-demo.sqlite).
        #[arg(long, env = "RECUR_DATA_DIR", default_value = ".", value_name = "DIR")]
        data_dir: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// The master keys that encrypt the people's contact details (default:
        /// recur-master.key in the data directory, made if missing).
        #[command(flatten)]
        master_keys: MasterKeyArgs,
        /// The payment gateway the year is charged through: simulated (default,
        /// in memory) or stripe (a Stripe test account or the local fake:
        /// STRIPE_SECRET_KEY must be a test key; a build with `--features stripe`).
        #[arg(long, value_enum, default_value_t = GatewayKind::Simulated)]
        gateway: GatewayKind,
    },
    /// Serve the command API over HTTP (ledger: --database, else DATABASE_URL, else
    /// recur.sqlite in the data directory, made on first start).
    #[command(after_help = METRICS_ENV_HELP)]
    // Boxed: the largest variant by far, and parsed once.
    Serve(Box<ServeArgs>),
    /// Publish every released ledger event to NATS JetStream, in ledger order.
    Relay {
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Where to publish.
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Run the projections as a worker fed by NATS JetStream (several may run).
    #[command(after_help = METRICS_ENV_HELP)]
    Project {
        /// The ledger and read models (they must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Where the events come from.
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Inspect and rebuild the read models.
    Projections {
        /// Which projections command.
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Customers' personal data: erasure and master-key rotation.
    Customer {
        /// Which customer command.
        #[command(subcommand)]
        command: CustomersCommand,
    },
    /// Manage API keys.
    Keys {
        /// Which key command.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Compare the ledger's charges, refunds, disputes and dispute fees at Stripe
    /// with Stripe's balance transactions over [--from, --to); record and print
    /// each mismatch. Exit 0 when they agree, 1 when anything differs, 2 on an
    /// error. Needs a build with `--features stripe` and STRIPE_SECRET_KEY.
    Reconcile {
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Start, inclusive: a date (UTC midnight, 2026-03-01) or an RFC 3339 time.
        #[arg(long, value_name = "DATE")]
        from: String,
        /// End, exclusive: a date (UTC midnight) or an RFC 3339 time.
        #[arg(long, value_name = "DATE")]
        to: String,
        /// Print the run as JSON (as `GET /v1/reconciliations` shows it).
        #[arg(long)]
        json: bool,
    },
    /// Stripe: translate the kept webhooks into billing commands; the catalog
    /// sync (needs a build with `--features stripe`, and STRIPE_SECRET_KEY;
    /// STRIPE_API_BASE for another API base).
    Stripe {
        /// Which Stripe command.
        #[command(subcommand)]
        command: StripeCommand,
    },
    /// Measure Recur against its baselines; prints JSON lines.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// The payment gateway `recur serve` charges through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum GatewayKind {
    /// In memory, following Stripe's test cards: nothing leaves the machine.
    #[default]
    Simulated,
    /// Stripe (STRIPE_SECRET_KEY; a build with `--features stripe`).
    Stripe,
}

/// `recur stripe …`
#[derive(Debug, Subcommand)]
pub enum StripeCommand {
    /// Run the Stripe translator over the Stripe events the webhook kept:
    /// those after its checkpoint, or all of them with --from-start (a re-run
    /// adds only what is missing). Prints what each event did. `recur serve`
    /// runs the same translator after each webhook.
    Translate {
        /// Translate every kept Stripe event again, from the first.
        #[arg(long)]
        from_start: bool,
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
        /// The master keys (the Stripe events are kept encrypted).
        #[command(flatten)]
        master_keys: MasterKeyArgs,
    },
    /// Create a Stripe product per plan and a price per price of the ledger's
    /// catalog, where missing (found again by product id `recur_<plan>` and
    /// price lookup_key = Recur's price id: a second run creates nothing).
    /// Exit 1 when a Stripe price differs from Recur's (left as it is).
    SyncCatalog {
        /// The ledger whose catalog is synced (it must exist, unless --create).
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Make the ledger if its SQLite file does not exist (it then holds
        /// the default catalog).
        #[arg(long)]
        create: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `recur serve` options.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on: HOST:PORT, the host an IP address or a name
    /// (localhost:8080); port 0 picks a free port (printed on the first line).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub listen: ListenAddr,
    /// The ledger.
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Make the ledger if its SQLite file does not exist (without it, only the
    /// embedded default is made; a Postgres database is made by its administrator).
    #[arg(long)]
    pub create: bool,
    /// Bootstrap admin key (at least 16 characters), held only in memory. Prefer
    /// the environment: a flag's value is visible to other users of the machine.
    #[arg(
        long,
        env = "RECUR_ADMIN_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub admin_key: Option<Secret>,
    /// Relay the ledger to NATS JetStream when a server is named.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The master keys of personal data.
    #[command(flatten)]
    pub master_keys: MasterKeyArgs,
    /// Stripe webhook signing secrets (`whsec_…`), comma-separated: a delivery
    /// to POST /webhooks/stripe signed with any of them is accepted (several
    /// during a rotation). Unset: no webhook endpoint (404).
    #[arg(
        long,
        env = "RECUR_STRIPE_WEBHOOK_SECRETS",
        hide_env_values = true,
        value_name = "SECRETS"
    )]
    pub stripe_webhook_secrets: Option<Secret>,
    /// Run on a test clock (starting now, or where the ledger's last event
    /// left it if later) moved by POST /v1/test_clock/advance.
    #[arg(long)]
    pub test_clock: bool,
    /// Start the test clock at this instant (RFC 3339, e.g.
    /// 2027-01-01T00:00:00Z); implies --test-clock.
    #[arg(long)]
    pub test_clock_start: Option<String>,
    /// Seconds between scheduler ticks on the system clock.
    #[arg(long, default_value_t = 60)]
    pub tick_seconds: u64,
    /// Milliseconds a request may run before it is answered 503
    /// `request_timeout` (the test clock's advance excepted).
    #[arg(long, default_value_t = recur_api::REQUEST_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub request_timeout_ms: u64,
    /// Export each new seal outside the database (docs/operations.md): file:PATH
    /// appends a JSON line per seal; http://HOST[:PORT]/PATH POSTs it (plain HTTP,
    /// retried with backoff; https is refused: use a local TLS forwarder).
    #[arg(
        long,
        env = "RECUR_SEAL_EXPORT",
        hide_env_values = true,
        value_name = "TARGET"
    )]
    pub seal_export: Option<SealExport>,
    /// Milliseconds a stopping server (SIGTERM, SIGINT) waits for the
    /// requests in flight, then for the scheduler and the relay.
    #[arg(long, default_value_t = crate::serve::DRAIN_MS, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub drain_ms: u64,
    /// Rate limits per API key and per client address.
    #[command(flatten)]
    pub rate_limits: RateLimitArgs,
    /// The payment gateway: simulated (default: Stripe's test cards in
    /// memory) or stripe (STRIPE_SECRET_KEY, STRIPE_API_BASE; a build with
    /// `--features stripe`).
    #[arg(long, value_enum, env = "RECUR_GATEWAY", default_value_t = GatewayKind::Simulated)]
    pub gateway: GatewayKind,
    /// The update-card page: its links' key, the public URL, the business's name.
    #[command(flatten)]
    pub update_card: UpdateCardArgs,
    /// Dunning policies (TOML, the shape of commands/dunning/default.toml): put
    /// in force at start, recorded as an event when they differ from those in
    /// force. Unset: the ledger's last policies, or the shipped ones.
    #[arg(long, env = "RECUR_DUNNING_POLICIES", value_name = "FILE")]
    pub dunning_policies: Option<std::path::PathBuf>,
}

/// `recur ledger …`
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Recompute every hash, chain and seal. Exit 0: intact; 2: broken (the first
    /// broken position is named); 3: the ledger holds no events, so nothing was
    /// checked; 1: an error (a missing ledger is one: verify never makes one).
    Verify {
        /// The ledger.
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One resource's facts in ledger order, one line each: position, time, actor,
    /// request id, type, a summary, and the resource's state after it. RESOURCE is
    /// a customer id (all its streams: its own, its contact's, its subscriptions'
    /// and invoices', found by reading the ledger), a subscription or invoice id,
    /// or a stream name (`invoice-<id>`, `customer-<id>`: that stream alone).
    History {
        /// A customer, subscription or invoice id, or a stream name.
        resource: String,
        /// Print the entries as `GET /v1/customers/{id}/history` shows them, as one
        /// JSON document.
        #[arg(long)]
        json: bool,
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// Copy a ledger written before personal data was encrypted into a new, empty
    /// one where it is (contact details under each customer's data key; an erased
    /// customer's under a key thrown away), every other event byte for byte with
    /// its id, position and time; then check the copy event by event. Switch to
    /// the new ledger, then destroy the old one and its backups (docs/security.md).
    Rekey {
        /// The ledger to copy (it must exist and verify).
        #[command(flatten)]
        from: LedgerArgs,
        /// The new ledger: postgres://… or sqlite:PATH (made if missing; it must be empty).
        #[arg(long, value_name = "URL")]
        to: DatabaseUrl,
        /// The master keys that wrap the new ledger's data keys.
        #[command(flatten)]
        master_keys: MasterKeyArgs,
    },
    /// Seal every released, unsealed event (cron-friendly with --export).
    Seal {
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Then export the seals (docs/operations.md): file:PATH appends one JSON line
        /// per seal the file lacks; http://HOST[:PORT]/PATH POSTs the newest seal from
        /// before this run and each new one (plain HTTP; https is refused).
        #[arg(
            long,
            env = "RECUR_SEAL_EXPORT",
            hide_env_values = true,
            value_name = "TARGET"
        )]
        export: Option<SealExport>,
    },
    /// Write the offline proof of one resource: its events, chain hashes and the seals
    /// covering them, as JSON (docs/ledger.md, "Proofs"). Its events must be sealed.
    Proof {
        /// A stream (invoice-<uuid>), an API path (/v1/invoices/<id>, invoices/<id>;
        /// customers, subscriptions, coupons) or a bare API id.
        resource: String,
        /// Write the proof here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// Check a proof without any database. Exit 0: intact (one line: resource, events,
    /// seals and digests); 2: a check failed (which, and where); 1: unreadable or not a proof.
    VerifyProof {
        /// The proof file.
        file: PathBuf,
        /// Also compare its seals with their exported copies (a --seal-export file).
        #[arg(long, value_name = "FILE")]
        exported: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy an embedded (SQLite) ledger, read models included, to a new file while it
    /// is in use (`VACUUM INTO`: one consistent snapshot). Postgres: use pg_dump.
    Backup {
        /// The backup file to create; it must not exist.
        #[arg(long)]
        to: PathBuf,
        /// The ledger (an embedded SQLite one; it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
    },
}

/// `recur projections …`
#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's version, position and lag behind the ledger.
    #[command(after_help = METRICS_ENV_HELP)]
    Status {
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// Build a read model again from the first event beside the one in use (which
    /// keeps serving), then switch to it in one transaction; with progress.
    #[command(after_help = METRICS_ENV_HELP)]
    Rebuild {
        /// The projection (`mrr`); omit with --all.
        name: Option<String>,
        /// Every projection.
        #[arg(long)]
        all: bool,
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
    },
}

/// Why personal data is erased, on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ErasureReasonArg {
    /// The person asked (GDPR article 17).
    RequestedByCustomer,
    /// The retention period ended.
    RetentionExpired,
    /// Another lawful ground, recorded outside Recur.
    Other,
}

impl From<ErasureReasonArg> for recur_commands::customer::ErasureReason {
    fn from(value: ErasureReasonArg) -> Self {
        match value {
            ErasureReasonArg::RequestedByCustomer => Self::RequestedByCustomer,
            ErasureReasonArg::RetentionExpired => Self::RetentionExpired,
            ErasureReasonArg::Other => Self::Other,
        }
    }
}

/// `recur customer …`
#[derive(Debug, Subcommand)]
pub enum CustomersCommand {
    /// Erase a customer's personal data (crypto-shredding): record the erasure,
    /// destroy its data key, delete stored API answers that held it. The books,
    /// the chain and every figure stay as they were. Needs no master key.
    Forget {
        /// The customer's id.
        id: String,
        /// Why.
        #[arg(long, value_enum, default_value = "requested-by-customer")]
        reason: ErasureReasonArg,
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// Wrap every customer's data key with the current master key, so that a
    /// retired master key (RECUR_MASTER_KEYS_RETIRED) can be dropped. Events are
    /// not rewritten.
    RewrapKeys {
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
        /// The master keys: the current one and the retired ones.
        #[command(flatten)]
        master_keys: MasterKeyArgs,
    },
}

/// `recur keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print it (it is shown once; only its hash is stored).
    Create {
        /// admin, billing, support or analyst.
        #[arg(long, value_enum)]
        role: recur_api::auth::Role,
        /// The ledger.
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Make the ledger if its SQLite file does not exist (as `recur serve --create`).
        #[arg(long)]
        create: bool,
    },
    /// List the API keys: id, role, status, who made them, last use (never a secret).
    List {
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// Revoke an API key: it stops working on every server at once.
    Revoke {
        /// The key's id.
        id: String,
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// Give an API key a new secret and print it (shown once); the old one stops working.
    Rotate {
        /// The key's id.
        id: String,
        /// The ledger (it must exist).
        #[command(flatten)]
        ledger: LedgerArgs,
    },
}

impl KeysCommand {
    /// The ledger given, and what to do if its file is missing: only `create`
    /// makes a ledger (the embedded default, or any with --create).
    pub fn ledger(&self) -> (&LedgerArgs, WhenMissing) {
        match self {
            KeysCommand::Create { ledger, create, .. } => (ledger, WhenMissing::create_if(*create)),
            KeysCommand::List { ledger }
            | KeysCommand::Revoke { ledger, .. }
            | KeysCommand::Rotate { ledger, .. } => (ledger, WhenMissing::Refuse),
        }
    }
}

/// `recur bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The command API: `recur serve` driven by concurrent clients (create customer +
    /// create subscription); prints commands/s, p50/p99 latency and server peak RSS.
    Api(ApiBenchArgs),
    /// Signed Stripe deliveries to `recur serve`'s webhook from concurrent
    /// clients, a quarter redeliveries: webhooks/s, p50/p99, server peak RSS, and
    /// a check that each event was kept exactly once.
    Webhooks(WebhookBenchArgs),
    /// N active monthly subscriptions renew at one instant: renewals/s and events/s
    /// against the raw W2 baseline, peak RSS, and checks (billed once, books
    /// balanced, ledger intact).
    Billing(BillingBenchArgs),
    /// Rebuild every projection from a ledger of a million demo events (against the
    /// raw W3 replay), then the lag from commit to read model at a steady rate via NATS.
    Projections(ProjectionsBenchArgs),
    /// The ledger workload of ../shared/bench/WORKLOAD.md against its raw-SQL baseline.
    Ledger {
        /// Which store to measure.
        #[arg(long, value_enum, default_value = "sqlite")]
        backend: BackendArg,
        /// Which workload.
        #[arg(long, value_enum, default_value = "all")]
        workload: WorkloadArg,
        /// Rounds, each running Recur then the raw baseline.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Postgres server URL that may create databases.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
        database_url: Option<DatabaseUrl>,
        /// Folder for the SQLite benchmark files; default: a folder in the system temp dir.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Most commits in flight at once in the Postgres backend.
        #[arg(long, default_value_t = 2)]
        committers: usize,
    },
}

/// `recur bench projections` options (a variant of [`BenchCommand`]).
#[derive(Debug, clap::Args)]
pub struct ProjectionsBenchArgs {
    /// Which store the ledger and read models are on.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: BackendArg,
    /// Events in the ledger rebuilt (made once by the demo's simulator, then kept).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Postgres server URL that may create databases.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<DatabaseUrl>,
    /// Folder for the SQLite files; default: a folder in the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// NATS server for the lag run (without one the lag is not measured).
    #[arg(long, env = "NATS_URL", hide_env_values = true, value_name = "URL")]
    pub nats_url: Option<String>,
    /// Writes per second during the lag run.
    #[arg(long, default_value_t = 1_000)]
    pub lag_rate: u64,
    /// Seconds the lag is measured.
    #[arg(long, default_value_t = 30)]
    pub lag_seconds: u64,
}

/// `recur bench billing` options (a variant of [`BenchCommand`]).
#[derive(Debug, clap::Args)]
pub struct BillingBenchArgs {
    /// Which store the ledger is on.
    #[arg(long, value_enum, default_value = "postgres")]
    pub backend: BackendArg,
    /// Subscriptions that renew at once.
    #[arg(long, default_value_t = 100_000)]
    pub subscriptions: usize,
    /// Billing work items the scheduler runs at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Postgres server URL that may create databases.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<DatabaseUrl>,
    /// Folder for the SQLite files; default: a folder in the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `recur bench webhooks` options.
#[derive(Debug, clap::Args)]
pub struct WebhookBenchArgs {
    /// Which store `recur serve` runs on.
    #[arg(long, value_enum, default_value = "postgres")]
    pub backend: BackendArg,
    /// Concurrent clients, one connection each.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Deliveries per client (every fourth a redelivery).
    #[arg(long, default_value_t = 500)]
    pub deliveries: usize,
    /// Postgres server URL that may create databases.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<DatabaseUrl>,
    /// Folder for the SQLite benchmark file; default: a folder in the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `recur bench api` options (a variant of [`BenchCommand`]).
#[derive(Debug, clap::Args)]
pub struct ApiBenchArgs {
    /// Which store `recur serve` runs on.
    #[arg(long, value_enum, default_value = "postgres")]
    pub backend: BackendArg,
    /// Concurrent clients, one connection each.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Customer + subscription pairs per client.
    #[arg(long, default_value_t = 100)]
    pub iterations: usize,
    /// Postgres server URL that may create databases.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<DatabaseUrl>,
    /// Folder for the SQLite file; default: a folder in the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `--backend`
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackendArg {
    /// PostgreSQL at DATABASE_URL.
    Postgres,
    /// SQLite files.
    Sqlite,
}

impl From<BackendArg> for BenchBackend {
    fn from(value: BackendArg) -> Self {
        match value {
            BackendArg::Postgres => Self::Postgres,
            BackendArg::Sqlite => Self::Sqlite,
        }
    }
}

/// `--workload`
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WorkloadArg {
    /// One event per transaction, 16 writers.
    #[value(name = "W1", alias = "w1")]
    W1,
    /// Ten events per transaction, 16 writers.
    #[value(name = "W2", alias = "w2")]
    W2,
    /// Replay in global order.
    #[value(name = "W3", alias = "w3")]
    W3,
    /// W1, W2 and W3.
    All,
}

impl WorkloadArg {
    /// The workloads this choice stands for.
    pub fn workloads(self) -> Vec<Workload> {
        match self {
            Self::W1 => vec![Workload::W1],
            Self::W2 => vec![Workload::W2],
            Self::W3 => vec![Workload::W3],
            Self::All => vec![Workload::W1, Workload::W2, Workload::W3],
        }
    }
}
