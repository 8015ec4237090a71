//! The `recur` binary: parses the command line and hands over.

use anyhow::Context;
use clap::Parser;
use recur_bench::ledger::{self as ledger_bench, LedgerBenchOptions};
use recur_gateway::cli::{
    BenchCommand, Cli, Command, CustomersCommand, KeysCommand, LedgerCommand, ProjectionsCommand,
    StripeCommand,
};
use recur_gateway::config::{self, DatabaseUrl, LogArgs, LogFormat, WhenMissing};
use recur_gateway::demo::{self, DemoOptions};
use recur_gateway::ledger_cmd;
use recur_gateway::serve;

// The read models' rebuilds and the ledger's replay allocate many small, short-lived
// values (decoded events, statement parameters); glibc's malloc spent a fifth of a
// rebuild's time on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stack of each runtime worker thread (tokio's default is 2 MiB).
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(&cli.log)?;
    // A metrics setting that silently did nothing would give wrong figures.
    recur_projections::profile::Profile::from_env()?;
    // Billing commands are deep futures; unoptimised builds lay them out large.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(WORKER_STACK_BYTES)
        .enable_all()
        .build()?;
    let code = runtime.block_on(run(cli))?;
    std::process::exit(code);
}

/// Logs to stderr, filtered by `--log` / `RUST_LOG`, as text or JSON lines;
/// colour only on a terminal, so files and pipes get plain text.
fn init_logs(log: &LogArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(&log.filter)
        .with_context(|| format!("--log / RUST_LOG {:?} is not a tracing filter", log.filter))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match log.format() {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Ledger {
            command: LedgerCommand::Verify { ledger, json },
        } => Ok(ledger_cmd::verify(&ledger, json)
            .await
            .context("ledger verify")?),
        Command::Ledger {
            command:
                LedgerCommand::Rekey {
                    from,
                    to,
                    master_keys,
                },
        } => {
            let to = config::LedgerArgs {
                database: Some(to),
                data_dir: from.data_dir.clone(),
            };
            let summary = recur_gateway::rekey::rekey(&from, &to, &master_keys)
                .await
                .context("ledger rekey")?;
            println!(
                "re-keyed {} events into {}: {} contact event(s) encrypted ({} of erased customers, under destroyed keys), {} data key(s) carried; the copy checks out event by event and verifies",
                summary.events,
                to.location().redacted(),
                summary.encrypted,
                summary.shredded,
                summary.keys_carried,
            );
            Ok(0)
        }
        Command::Ledger {
            command:
                LedgerCommand::History {
                    resource,
                    json,
                    ledger,
                },
        } => {
            ledger_cmd::history(&ledger, &resource, json)
                .await
                .context("ledger history")?;
            Ok(0)
        }
        Command::Ledger {
            command: LedgerCommand::Seal { ledger, export },
        } => {
            ledger_cmd::seal(&ledger, export.as_ref())
                .await
                .context("ledger seal")?;
            Ok(0)
        }
        Command::Ledger {
            command:
                LedgerCommand::Proof {
                    resource,
                    out,
                    ledger,
                },
        } => {
            ledger_cmd::proof(&ledger, &resource, out.as_deref())
                .await
                .context("ledger proof")?;
            Ok(0)
        }
        Command::Ledger {
            command:
                LedgerCommand::VerifyProof {
                    file,
                    exported,
                    json,
                },
        } => Ok(ledger_cmd::verify_proof(&file, exported.as_deref(), json)
            .context("ledger verify-proof")?),
        Command::Ledger {
            command: LedgerCommand::Backup { to, ledger },
        } => {
            ledger_cmd::backup(&ledger, &to)
                .await
                .context("ledger backup")?;
            Ok(0)
        }
        Command::Serve(args) => {
            let test_clock_start = args
                .test_clock_start
                .as_deref()
                .map(|text| {
                    time::OffsetDateTime::parse(
                        text,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .with_context(|| format!("--test-clock-start {text:?} is not RFC 3339"))
                })
                .transpose()?;
            let seal_export = args
                .seal_export
                .as_ref()
                .map(recur_gateway::seal_export::SealExport::target)
                .transpose()
                .context("--seal-export / RECUR_SEAL_EXPORT")?;
            let dunning_policies = args
                .dunning_policies
                .as_ref()
                .map(|path| {
                    let text = std::fs::read_to_string(path).with_context(|| {
                        format!(
                            "--dunning-policies / RECUR_DUNNING_POLICIES: {}",
                            path.display()
                        )
                    })?;
                    recur_commands::dunning_policy::DunningPolicies::parse(&text).with_context(
                        || {
                            format!(
                                "--dunning-policies / RECUR_DUNNING_POLICIES: {}",
                                path.display()
                            )
                        },
                    )
                })
                .transpose()?;
            serve::serve(serve::ServeOptions {
                dunning_policies,
                seal_export,
                listen: args.listen,
                missing: WhenMissing::create_if(args.create),
                relay: args.nats.relay_config(),
                ledger: args.ledger,
                admin_key: args.admin_key,
                master_keys: args.master_keys,
                stripe_webhook_secrets: args.stripe_webhook_secrets,
                test_clock: args.test_clock || test_clock_start.is_some(),
                test_clock_start,
                tick_seconds: args.tick_seconds,
                request_timeout_ms: args.request_timeout_ms,
                drain_ms: args.drain_ms,
                rate_limits: args.rate_limits.limits(),
                gateway: args.gateway,
                update_card: args.update_card,
            })
            .await
            .context("serve")?;
            Ok(0)
        }
        Command::Stripe {
            command:
                StripeCommand::SyncCatalog {
                    ledger,
                    create,
                    json,
                },
        } => recur_gateway::stripe_cmd::sync_catalog(&ledger, create, json)
            .await
            .context("stripe sync-catalog"),
        Command::Reconcile {
            ledger,
            from,
            to,
            json,
        } => match recur_gateway::stripe_cmd::reconcile(&ledger, &from, &to, json).await {
            Ok(code) => Ok(code),
            Err(error) => {
                // 1 means "differs": an error that stopped the run is 2.
                eprintln!("error: reconcile: {error:#}");
                Ok(2)
            }
        },
        Command::Relay { ledger, nats } => {
            recur_gateway::projections_cmd::relay(&ledger, &nats)
                .await
                .context("relay")?;
            Ok(0)
        }
        Command::Project { ledger, nats } => {
            recur_gateway::projections_cmd::project(&ledger, &nats)
                .await
                .context("project")?;
            Ok(0)
        }
        Command::Projections { command } => {
            match command {
                ProjectionsCommand::Status { ledger } => {
                    recur_gateway::projections_cmd::status(&ledger)
                        .await
                        .context("projections status")?;
                }
                ProjectionsCommand::Rebuild { name, all, ledger } => {
                    recur_gateway::projections_cmd::rebuild(&ledger, name.as_deref(), all)
                        .await
                        .context("projections rebuild")?;
                }
            }
            Ok(0)
        }
        Command::Customer { command } => {
            match command {
                CustomersCommand::Forget { id, reason, ledger } => {
                    recur_gateway::customer_cmd::forget(&ledger, &id, reason.into())
                        .await
                        .context("customer forget")?;
                }
                CustomersCommand::RewrapKeys {
                    ledger,
                    master_keys,
                } => {
                    recur_gateway::customer_cmd::rewrap_keys(&ledger, &master_keys)
                        .await
                        .context("customer rewrap-keys")?;
                }
            }
            Ok(0)
        }
        Command::Stripe {
            command:
                StripeCommand::Translate {
                    from_start,
                    ledger,
                    master_keys,
                },
        } => {
            recur_gateway::stripe_cmd::translate(&ledger, &master_keys, from_start)
                .await
                .context("stripe translate")?;
            Ok(0)
        }
        Command::Keys { command } => {
            let (ledger, missing) = command.ledger();
            let ledger = ledger
                .open(missing, std::sync::Arc::new(recur_ledger::SystemClock))
                .await
                .context("keys")?;
            let ring = recur_api::auth::KeyRing::load(ledger, None).await?;
            match command {
                KeysCommand::Create { role, .. } => {
                    let (id, key) = ring.create(role, "cli").await.context("create the key")?;
                    println!("{key}");
                    eprintln!(
                        "created {} key {id}; it is shown once, keep it secret",
                        role.name()
                    );
                }
                KeysCommand::List { .. } => {
                    for key in ring.list() {
                        let when = |at: Option<time::OffsetDateTime>| {
                            at.map_or("-".to_owned(), recur_api::dto::rfc3339)
                        };
                        println!(
                            "{}\t{}\t{}\tcreated {} by {}\tlast used {}",
                            key.id,
                            key.role.name(),
                            if key.revoked_at.is_some() {
                                "revoked"
                            } else {
                                "active"
                            },
                            when(key.created_at),
                            key.created_by.as_deref().unwrap_or("-"),
                            when(key.last_used_at),
                        );
                    }
                }
                KeysCommand::Revoke { id, .. } => {
                    ring.revoke(&id, "cli").await.context("revoke the key")?;
                    eprintln!("revoked key {id}");
                }
                KeysCommand::Rotate { id, .. } => {
                    let key = ring.rotate(&id, "cli").await.context("rotate the key")?;
                    println!("{key}");
                    eprintln!("rotated key {id}; the new key is shown once, keep it secret");
                }
            }
            Ok(0)
        }
        Command::Demo {
            seed,
            customers,
            months,
            json,
            database,
            data_dir,
            quiet,
            master_keys,
            gateway,
        } => {
            use std::io::IsTerminal;
            let (channels, external) =
                demo::DemoChannels::from_env().context("demo dunning channels")?;
            if external && !quiet {
                eprintln!("dunning messages go out through the configured SMTP / SMS channels");
            }
            let options = DemoOptions {
                seed,
                customers,
                months,
                database: database.map(|url| url.expose().to_owned()),
                data_dir,
                progress: !quiet && std::io::stderr().is_terminal(),
                master_keys,
                payments: recur_gateway::stripe_cmd::demo_payments(gateway)?,
                channels,
            };
            let (outcome, _) = demo::run(&options).await.context("demo")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                demo::print(&outcome);
            }
            Ok(0)
        }
        Command::Bench {
            command: BenchCommand::Api(args),
        } => {
            let options = recur_bench::api::ApiBenchOptions {
                backend: args.backend.into(),
                clients: args.clients,
                iterations: args.iterations,
                database_url: server_url(args.database_url),
                scratch_dir: scratch_dir(args.dir),
            };
            recur_bench::api::run(&options).await.context("bench api")?;
            Ok(0)
        }
        Command::Bench {
            command: BenchCommand::Webhooks(args),
        } => {
            let options = recur_bench::webhooks::WebhookBenchOptions {
                backend: args.backend.into(),
                clients: args.clients,
                deliveries: args.deliveries,
                database_url: server_url(args.database_url),
                scratch_dir: scratch_dir(args.dir),
            };
            recur_bench::webhooks::run(&options)
                .await
                .context("bench webhooks")?;
            Ok(0)
        }
        Command::Bench {
            command: BenchCommand::Billing(args),
        } => {
            let options = recur_bench::billing::BillingBenchOptions {
                backend: args.backend.into(),
                subscriptions: args.subscriptions,
                concurrency: args.concurrency,
                database_url: server_url(args.database_url),
                scratch_dir: scratch_dir(args.dir),
            };
            recur_bench::billing::run(&options)
                .await
                .context("bench billing")?;
            Ok(0)
        }
        Command::Bench {
            command: BenchCommand::Projections(args),
        } => {
            let options = recur_bench::projections::ProjectionsBenchOptions {
                backend: args.backend.into(),
                events: args.events,
                database_url: server_url(args.database_url),
                scratch_dir: scratch_dir(args.dir),
                nats_url: args.nats_url.filter(|u| !u.trim().is_empty()),
                lag_rate: args.lag_rate,
                lag_seconds: args.lag_seconds,
            };
            recur_bench::projections::run(&options)
                .await
                .context("bench projections")?;
            Ok(0)
        }
        Command::Bench {
            command:
                BenchCommand::Ledger {
                    backend,
                    workload,
                    rounds,
                    database_url,
                    dir,
                    committers,
                },
        } => {
            let options = LedgerBenchOptions {
                backend: backend.into(),
                workloads: workload.workloads(),
                rounds,
                database_url: server_url(database_url),
                scratch_dir: scratch_dir(dir),
                committers,
            };
            ledger_bench::run(&options).await.context("bench ledger")?;
            Ok(0)
        }
    }
}

/// A benchmark's Postgres server (`--database-url`, else `DATABASE_URL`), as the
/// benchmarks take it.
fn server_url(url: Option<DatabaseUrl>) -> Option<String> {
    url.map(|url| url.expose().to_owned())
        .filter(|url| !url.is_empty())
}

/// A benchmark's folder for SQLite files: `--dir`, else one in the system temp dir.
fn scratch_dir(explicit: Option<std::path::PathBuf>) -> std::path::PathBuf {
    config::scratch_dir(explicit.as_deref())
}
