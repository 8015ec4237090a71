//! The `recur` command line: its grammar and where each command goes.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::bench::ledger::{BenchBackend, Workload};

/// Recur: an event-sourced billing ledger.
#[derive(Debug, Parser)]
#[command(name = "recur", version, about = "Recur: an event-sourced billing ledger", long_about = None)]
pub struct Cli {
    /// Log as JSON lines (also RECUR_LOG_FORMAT=json).
    #[arg(long, global = true)]
    pub log_json: bool,
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
        /// Ledger location; it must be empty. Default: a fresh ./recur-demo.sqlite
        /// (in RECUR_DATA_DIR if set), replaced on each run.
        #[arg(long)]
        database: Option<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Serve the command API over HTTP (ledger: --database, else DATABASE_URL, else ./recur.sqlite).
    Serve {
        /// Address to listen on; port 0 picks a free port (printed on the first line).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Ledger location (postgres://… or sqlite:PATH).
        #[arg(long)]
        database: Option<String>,
        /// Run on a test clock (starting now, or where the ledger's last event
        /// left it if later) moved by POST /v1/test_clock/advance.
        #[arg(long)]
        test_clock: bool,
        /// Start the test clock at this instant (RFC 3339, e.g.
        /// 2027-01-01T00:00:00Z); implies --test-clock.
        #[arg(long)]
        test_clock_start: Option<String>,
        /// Seconds between scheduler ticks on the system clock.
        #[arg(long, default_value_t = 60)]
        tick_seconds: u64,
        /// Milliseconds a request may run before it is answered 503
        /// `request_timeout` (the test clock's advance excepted).
        #[arg(long, default_value_t = crate::http::REQUEST_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        request_timeout_ms: u64,
        /// Milliseconds a stopping server (SIGTERM, SIGINT) waits for the
        /// requests in flight, then for the scheduler and the relay.
        #[arg(long, default_value_t = crate::http::DRAIN_MS, value_parser = clap::value_parser!(u64).range(0..=600_000))]
        drain_ms: u64,
    },
    /// Publish every released ledger event to NATS JetStream, in ledger order.
    Relay {
        /// Ledger location; default: DATABASE_URL, else ./recur.sqlite.
        #[arg(long)]
        database: Option<String>,
        /// NATS server; default: NATS_URL.
        #[arg(long)]
        nats_url: Option<String>,
    },
    /// Run the projections as a worker fed by NATS JetStream (several may run).
    Project {
        /// Ledger (and read models) location; default: DATABASE_URL, else ./recur.sqlite.
        #[arg(long)]
        database: Option<String>,
        /// NATS server; default: NATS_URL.
        #[arg(long)]
        nats_url: Option<String>,
    },
    /// Inspect and rebuild the read models.
    Projections {
        /// Which projections command.
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Manage API keys.
    Keys {
        /// Which key command.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Measure Recur against its baselines; prints JSON lines.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// `recur ledger …`
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Recompute every hash, chain and seal; exit 2 and name the first broken position if any.
    Verify {
        /// Ledger location (postgres://… or sqlite:PATH); default: DATABASE_URL, else ./recur.sqlite.
        #[arg(long)]
        database: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Seal every released, unsealed event.
    Seal {
        /// Ledger location (postgres://… or sqlite:PATH); default: DATABASE_URL, else ./recur.sqlite.
        #[arg(long)]
        database: Option<String>,
    },
    /// Copy an embedded (SQLite) ledger, read models included, to a new file while it
    /// is in use (`VACUUM INTO`: one consistent snapshot). Postgres: use pg_dump.
    Backup {
        /// The backup file to create; it must not exist.
        #[arg(long)]
        to: PathBuf,
        /// Ledger location (sqlite:PATH); default: DATABASE_URL, else ./recur.sqlite.
        #[arg(long)]
        database: Option<String>,
    },
}

/// `recur projections …`
#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's version, position and lag behind the ledger.
    Status {
        /// Ledger location; default: DATABASE_URL, else ./recur.sqlite.
        #[arg(long)]
        database: Option<String>,
    },
    /// Build a read model again from the first event beside the one in use (which
    /// keeps serving), then switch to it in one transaction; with progress.
    Rebuild {
        /// The projection (`mrr`); omit with --all.
        name: Option<String>,
        /// Every projection.
        #[arg(long)]
        all: bool,
        /// Ledger location; default: DATABASE_URL, else ./recur.sqlite.
        #[arg(long)]
        database: Option<String>,
    },
}

/// `recur keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print it (it is shown once; only its hash is stored).
    Create {
        /// admin, billing, support or analyst.
        #[arg(long, value_enum)]
        role: crate::http::auth::Role,
        /// Ledger location; default: DATABASE_URL, else ./recur.sqlite.
        #[arg(long)]
        database: Option<String>,
    },
    /// List the API keys: id, role, status, who made them, last use (never a secret).
    List {
        /// Ledger location; default: DATABASE_URL, else ./recur.sqlite.
        #[arg(long)]
        database: Option<String>,
    },
    /// Revoke an API key: it stops working on every server at once.
    Revoke {
        /// The key's id.
        id: String,
        /// Ledger location; default: DATABASE_URL, else ./recur.sqlite.
        #[arg(long)]
        database: Option<String>,
    },
    /// Give an API key a new secret and print it (shown once); the old one stops working.
    Rotate {
        /// The key's id.
        id: String,
        /// Ledger location; default: DATABASE_URL, else ./recur.sqlite.
        #[arg(long)]
        database: Option<String>,
    },
}

impl KeysCommand {
    /// The ledger location given, if any.
    pub fn database(&self) -> Option<&str> {
        match self {
            KeysCommand::Create { database, .. }
            | KeysCommand::List { database }
            | KeysCommand::Revoke { database, .. }
            | KeysCommand::Rotate { database, .. } => database.as_deref(),
        }
    }
}

/// `recur bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The command API: `recur serve` driven by concurrent clients (create customer +
    /// create subscription); prints commands/s, p50/p99 latency and server peak RSS.
    Api(ApiBenchArgs),
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
        /// Postgres server URL that may create databases; default: DATABASE_URL.
        #[arg(long)]
        database_url: Option<String>,
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
    /// Postgres server URL that may create databases; default: DATABASE_URL.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Folder for the SQLite files; default: a folder in the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// NATS server for the lag run; default: NATS_URL (without one the lag is not measured).
    #[arg(long)]
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
    /// Postgres server URL that may create databases; default: DATABASE_URL.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Folder for the SQLite files; default: a folder in the system temp dir.
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
    /// Postgres server URL that may create databases; default: DATABASE_URL.
    #[arg(long)]
    pub database_url: Option<String>,
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
