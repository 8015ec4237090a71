//! Typed configuration. Every setting is a command-line flag, most with an
//! environment variable behind it (clap's `env`), so `recur <command> --help`
//! lists every variable read; flags win over the environment, the environment
//! over the defaults. Secrets are wrapped so that neither `Debug` nor `Display`
//! can print them. The ledger is opened in one place, [`LedgerArgs::open`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use recur_api::limits::{Rate, RateLimits};
use recur_ledger::{Clock, Ledger, LedgerConfig, LedgerError};

/// The embedded default ledger file, in the data directory.
pub const DEFAULT_LEDGER_FILE: &str = "recur.sqlite";
/// The tracing filter when `RUST_LOG` and `--log` are both unset.
pub const DEFAULT_LOG_FILTER: &str = "warn,sqlx=error";

/// A value that must never reach a log, an error message or a terminal: the
/// bootstrap admin key. `Debug` prints a placeholder and there is no `Display`;
/// [`Secret::expose`] is the one way to the value, easy to find in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    /// Never fails: a parse error would make clap echo the value to the terminal.
    /// Rules on the value (length, say) are checked where it is used, without it.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(value))
    }
}

/// A ledger location (`postgres://…`, `sqlite:PATH`): `Debug` and `Display` show
/// it with any password removed ([`redact`]).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps `location`.
    pub fn new(location: impl Into<String>) -> Self {
        Self(location.into())
    }

    /// The full location, password included, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The location without its password, safe to print.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    /// Never fails, for the reason given on [`Secret`]'s `from_str`; the ledger
    /// refuses a location it cannot use, and says so without the password.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(value.trim()))
    }
}

/// A location with any password removed, safe to print: the one in the
/// authority (`user:password@`) and any `password=` or `sslpassword=` in the
/// query string.
pub fn redact(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else {
        return location.to_owned();
    };
    // Credentials end at the authority's last `@`; the authority ends at the path.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((query, fragment)) => (query, format!("#{fragment}")),
                None => (query, String::new()),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _))
                        if name.eq_ignore_ascii_case("password")
                            || name.eq_ignore_ascii_case("sslpassword") =>
                    {
                        format!("{name}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}{fragment}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Where the ledger is: `--database`, else `DATABASE_URL`, else the embedded file.
#[derive(Clone, Debug, clap::Args)]
pub struct LedgerArgs {
    /// Ledger location: postgres://… or sqlite:PATH. A missing SQLite file is an
    /// error (a mistyped path must not start an empty ledger) unless creation is
    /// asked for (`--create` where offered, or `?mode=rwc` in the URL).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database: Option<DatabaseUrl>,
    /// Folder of the embedded default ledger (recur.sqlite), used when neither
    /// --database nor DATABASE_URL is given.
    #[arg(long, env = "RECUR_DATA_DIR", default_value = ".", value_name = "DIR")]
    pub data_dir: PathBuf,
}

/// What to do when the ledger's SQLite file is not there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenMissing {
    /// Refuse, the embedded default included: for commands that check or follow
    /// a ledger (`verify`, `seal`, `projections`, `relay`, `project`), where a new
    /// empty ledger would only hide the mistake.
    Refuse,
    /// Make the embedded default (the first `recur serve` on a machine); refuse a
    /// missing file the user named.
    CreateDefault,
    /// Make it (`--create`).
    Create,
}

impl WhenMissing {
    /// `Create` if `--create` was given, else `CreateDefault`.
    pub fn create_if(create: bool) -> Self {
        if create {
            Self::Create
        } else {
            Self::CreateDefault
        }
    }
}

/// Why a ledger could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The SQLite file is not there and creating it was not asked for.
    #[error(
        "no ledger at {path}: a missing ledger file is not created unless asked for, so that a \
         mistyped path cannot start an empty ledger; check the path, or {hint}"
    )]
    NotFound {
        /// The file looked for.
        path: String,
        /// How to create it from this command.
        hint: &'static str,
    },
    /// Any other failure to open (unreachable, bad location, migration).
    #[error("cannot open the ledger at {location}")]
    Ledger {
        /// The location, without its password.
        location: String,
        /// Why.
        #[source]
        source: LedgerError,
    },
}

impl LedgerArgs {
    /// The arguments for an explicit location, as if given with `--database`.
    pub fn at(location: impl Into<String>) -> Self {
        Self {
            database: Some(DatabaseUrl::new(location)),
            data_dir: PathBuf::from("."),
        }
    }

    /// The location to open: `--database` / `DATABASE_URL` if given (and not
    /// blank), else `sqlite:` the embedded file in the data directory.
    pub fn location(&self) -> DatabaseUrl {
        match &self.database {
            Some(url) if !url.expose().is_empty() => url.clone(),
            _ => DatabaseUrl::new(format!(
                "sqlite:{}",
                self.data_dir.join(DEFAULT_LEDGER_FILE).display()
            )),
        }
    }

    /// True when no location was given and the embedded default is used.
    pub fn is_embedded_default(&self) -> bool {
        self.database
            .as_ref()
            .is_none_or(|url| url.expose().is_empty())
    }

    /// The ledger's configuration: the location, and whether a missing file is made.
    pub fn ledger_config(&self, missing: WhenMissing) -> LedgerConfig {
        let create = match missing {
            WhenMissing::Refuse => false,
            WhenMissing::CreateDefault => self.is_embedded_default(),
            WhenMissing::Create => true,
        };
        LedgerConfig::new(self.location().expose()).create_if_missing(create)
    }

    /// Opens the ledger, the one way every command does.
    ///
    /// # Errors
    /// [`OpenError::NotFound`] for a missing SQLite file that may not be made
    /// (with how to make it); [`OpenError::Ledger`] for everything else.
    pub async fn open(
        &self,
        missing: WhenMissing,
        clock: Arc<dyn Clock>,
    ) -> Result<Ledger, OpenError> {
        self.open_with(self.ledger_config(missing), missing, clock)
            .await
    }

    /// [`LedgerArgs::open`] with a configuration made by
    /// [`LedgerArgs::ledger_config`] and then tuned (pool size and so on).
    ///
    /// # Errors
    /// As [`LedgerArgs::open`].
    pub async fn open_with(
        &self,
        config: LedgerConfig,
        missing: WhenMissing,
        clock: Arc<dyn Clock>,
    ) -> Result<Ledger, OpenError> {
        Ledger::open(config, clock)
            .await
            .map_err(|error| match error {
                LedgerError::NotFound { path } => OpenError::NotFound {
                    path,
                    hint: match missing {
                        WhenMissing::Refuse => {
                            "make a new ledger with `recur serve --create --database sqlite:PATH`"
                        }
                        WhenMissing::CreateDefault | WhenMissing::Create => {
                            "pass --create to make a new one (or add ?mode=rwc to the sqlite: URL)"
                        }
                    },
                },
                source => OpenError::Ledger {
                    location: self.location().redacted(),
                    source,
                },
            })
    }
}

/// The key file made in the data directory when no master key is configured.
pub const DEFAULT_MASTER_KEY_FILE: &str = "recur-master.key";

/// The master keys that protect personal data (docs/security.md): each
/// customer's data key is stored wrapped by the current master key.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct MasterKeyArgs {
    /// The master key: 64 hex digits or base64 of 32 bytes (`openssl rand -hex
    /// 32`). Unset: the key file (--master-key-file), made on first start.
    #[arg(
        long,
        env = "RECUR_MASTER_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub master_key: Option<Secret>,
    /// Earlier master keys, comma-separated: they still unwrap the data keys they
    /// wrapped, until `recur customer rewrap-keys` wraps these with the current one.
    #[arg(
        long,
        env = "RECUR_MASTER_KEYS_RETIRED",
        hide_env_values = true,
        value_name = "KEYS"
    )]
    pub master_keys_retired: Option<Secret>,
    /// The key file read when RECUR_MASTER_KEY is unset (default: recur-master.key
    /// in the data directory), made with a new random key (mode 0600) if missing.
    /// Keep it out of the database's backups.
    #[arg(long, env = "RECUR_MASTER_KEY_FILE", value_name = "PATH")]
    pub master_key_file: Option<PathBuf>,
}

/// Whether a missing key file may be made with a new key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFile {
    /// Made on first start (`recur serve`, `recur demo`).
    MakeIfMissing,
    /// Must exist (`rewrap-keys`, `rekey`: a new key there would wrap or
    /// encrypt everything under a key nobody keeps).
    MustExist,
}

impl MasterKeyArgs {
    /// The vault: the configured master key, else the key file's (made if
    /// missing and `key_file` allows), with the retired keys.
    ///
    /// # Errors
    /// A malformed key (named by its source, never shown), a key file that is
    /// unreadable or (with [`KeyFile::MustExist`]) missing.
    pub fn vault(
        &self,
        data_dir: &Path,
        key_file: KeyFile,
    ) -> anyhow::Result<recur_commands::privacy::Vault> {
        use anyhow::Context;
        use recur_commands::privacy::{MasterKey, Vault};
        let current = match self.master_key.as_ref().filter(|k| !k.expose().is_empty()) {
            Some(key) => MasterKey::parse(key.expose()).context("RECUR_MASTER_KEY")?,
            None => {
                let file = self
                    .master_key_file
                    .clone()
                    .unwrap_or_else(|| data_dir.join(DEFAULT_MASTER_KEY_FILE));
                read_key_file(&file, key_file)?
            }
        };
        let retired = match &self.master_keys_retired {
            Some(keys) => keys
                .expose()
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(MasterKey::parse)
                .collect::<Result<Vec<_>, _>>()
                .context("RECUR_MASTER_KEYS_RETIRED")?,
            None => Vec::new(),
        };
        Ok(Vault::new(current, retired))
    }
}

/// Refuses to serve a ledger whose data keys are wrapped by a master key the
/// vault does not hold (a second server that made its own key file, a key
/// dropped from RECUR_MASTER_KEYS_RETIRED too early): better not to start than
/// to answer 503 on every customer, or to wrap new keys beside unreadable ones.
///
/// # Errors
/// The ids of the missing master keys; database errors.
pub async fn check_master_keys(
    ledger: &Ledger,
    vault: &recur_commands::privacy::Vault,
) -> anyhow::Result<()> {
    let missing: Vec<String> = ledger
        .data_key_masters()
        .await?
        .into_iter()
        .filter(|id| !vault.knows(id))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "this ledger's data keys are wrapped by master key(s) {} that are not configured \
         (the current one is {}): set RECUR_MASTER_KEY to the key in use, and any earlier one \
         in RECUR_MASTER_KEYS_RETIRED",
        missing.join(", "),
        vault.current_id()
    );
    Ok(())
}

/// The master key in `file`; a missing file is made (mode 0600, a new random
/// key, written whole before it appears) when `key_file` allows.
fn read_key_file(
    file: &Path,
    key_file: KeyFile,
) -> anyhow::Result<recur_commands::privacy::MasterKey> {
    use anyhow::Context;
    use recur_commands::privacy::MasterKey;
    use std::io::Write;
    match std::fs::read_to_string(file) {
        Ok(text) => {
            MasterKey::parse(&text).with_context(|| format!("the key file {}", file.display()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            anyhow::ensure!(
                key_file == KeyFile::MakeIfMissing,
                "no master key: set RECUR_MASTER_KEY, or RECUR_MASTER_KEY_FILE to the key file \
                 in use ({} does not exist)",
                file.display()
            );
            let (key, text) = MasterKey::generate()?;
            // Written whole under a temporary name, then linked into place: a
            // reader never sees a half-written file, and of two processes
            // starting at once the first link wins and the other reads it.
            let staged = file.with_extension(format!("new-{}", std::process::id()));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let written = options.open(&staged).and_then(|mut out| {
                out.write_all(text.as_bytes())?;
                out.sync_all()
            });
            let linked = written.and_then(|()| std::fs::hard_link(&staged, file));
            let _ = std::fs::remove_file(&staged);
            match linked {
                Ok(()) => {
                    tracing::warn!(
                        file = %file.display(),
                        "made a new master key file for personal data: keep it safe and apart \
                         from the database's backups, or set RECUR_MASTER_KEY"
                    );
                    Ok(key)
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    read_key_file(file, KeyFile::MustExist)
                }
                Err(error) => {
                    Err(error).with_context(|| format!("make the key file {}", file.display()))
                }
            }
        }
        Err(error) => Err(error).with_context(|| format!("read the key file {}", file.display())),
    }
}

/// The NATS JetStream server and stream that carry the ledger to other processes.
#[derive(Clone, Debug, clap::Args)]
pub struct NatsArgs {
    /// NATS server (e.g. nats://127.0.0.1:4222, started with `nats-server -js`).
    #[arg(long, env = "NATS_URL", hide_env_values = true, value_name = "URL")]
    pub nats_url: Option<String>,
    /// JetStream stream name (subjects `<lowercase name>.events.>`), so that
    /// several ledgers can share one server.
    #[arg(long, env = "RECUR_NATS_STREAM", default_value = recur_projections::RelayConfig::STREAM_DEFAULT, value_name = "NAME")]
    pub nats_stream: String,
}

impl NatsArgs {
    /// The relay's configuration, if a server is named (a blank URL names none).
    pub fn relay_config(&self) -> Option<recur_projections::RelayConfig> {
        let url = self.nats_url.as_deref().map(str::trim)?;
        if url.is_empty() {
            return None;
        }
        Some(recur_projections::RelayConfig::new(url).with_stream(&self.nats_stream))
    }
}

/// Rate limits of `recur serve` (docs/api.md, "Rate limits"): a sustained rate
/// per second and a burst, per API key and per client address; a rate of 0
/// switches that limit off.
#[derive(Clone, Debug, clap::Args)]
pub struct RateLimitArgs {
    /// Requests per second one API key may sustain (0: no limit).
    #[arg(long, env = "RECUR_RATE_LIMIT_PER_KEY_PER_S", default_value_t = RateLimits::DEFAULT.per_key.per_s, value_name = "N")]
    pub rate_limit_per_key_per_s: u32,
    /// Requests one API key may send at once after a quiet spell.
    #[arg(long, env = "RECUR_RATE_LIMIT_PER_KEY_BURST", default_value_t = RateLimits::DEFAULT.per_key.burst, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub rate_limit_per_key_burst: u32,
    /// Requests per second one client address (an IPv6 /64) may sustain, with
    /// or without a valid key; the TCP peer's address, X-Forwarded-For is not
    /// read (0: no limit).
    #[arg(long, env = "RECUR_RATE_LIMIT_PER_ADDRESS_PER_S", default_value_t = RateLimits::DEFAULT.per_address.per_s, value_name = "N")]
    pub rate_limit_per_address_per_s: u32,
    /// Requests one client address may send at once after a quiet spell.
    #[arg(long, env = "RECUR_RATE_LIMIT_PER_ADDRESS_BURST", default_value_t = RateLimits::DEFAULT.per_address.burst, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub rate_limit_per_address_burst: u32,
}

impl RateLimitArgs {
    /// The limits asked for.
    pub fn limits(&self) -> RateLimits {
        RateLimits {
            per_key: Rate {
                per_s: self.rate_limit_per_key_per_s,
                burst: self.rate_limit_per_key_burst,
            },
            per_address: Rate {
                per_s: self.rate_limit_per_address_per_s,
                burst: self.rate_limit_per_address_burst,
            },
        }
    }
}

/// The default business name on the update-card page.
pub const BUSINESS_NAME_DEFAULT: &str = "Recur";

/// The update-card page (docs/update_card.md): the key that signs its links,
/// the address customers reach the server at, and the name the page shows.
#[derive(Clone, Debug, clap::Args)]
pub struct UpdateCardArgs {
    /// Signs the update-card links: hex or base64 of at least 32 bytes
    /// (`openssl rand -hex 32`). Unset: a random key made at start, so links
    /// stop working when the server restarts (and differ between servers).
    #[arg(
        long,
        env = "RECUR_LINK_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub link_key: Option<Secret>,
    /// The server's address as customers reach it, the base of every link
    /// (e.g. https://billing.example.com). Unset: http://127.0.0.1:<port>.
    #[arg(long, env = "RECUR_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// The business's name, shown on the update-card page.
    #[arg(long, env = "RECUR_BUSINESS_NAME", default_value = BUSINESS_NAME_DEFAULT, value_name = "NAME")]
    pub business_name: String,
}

impl UpdateCardArgs {
    /// The page's configuration for a server listening on `port`: the
    /// configured key, or a new random one (with a warning).
    ///
    /// # Errors
    /// A malformed key (named by its variable, never shown); a public URL
    /// that is not http:// or https://.
    pub fn config(
        &self,
        port: u16,
    ) -> anyhow::Result<recur_api::routes::update_card::UpdateCardConfig> {
        use recur_commands::update_card_link::LinkKey;
        let key = match self
            .link_key
            .as_ref()
            .filter(|k| !k.expose().trim().is_empty())
        {
            Some(key) => LinkKey::parse(key.expose())
                .map_err(|error| anyhow::anyhow!("RECUR_LINK_KEY: {error}"))?,
            None => {
                tracing::warn!(
                    "RECUR_LINK_KEY is not set: update-card links are signed with a random key \
                     made now, and stop working when this server restarts"
                );
                LinkKey::generate()
                    .map_err(|error| anyhow::anyhow!("update-card link key: {error}"))?
            }
        };
        let public_url = match self
            .public_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            Some(url) => {
                anyhow::ensure!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "RECUR_PUBLIC_URL must start with http:// or https://"
                );
                url.trim_end_matches('/').to_owned()
            }
            None => format!("http://127.0.0.1:{port}"),
        };
        let business_name = match self.business_name.trim() {
            "" => BUSINESS_NAME_DEFAULT.to_owned(),
            name => name.to_owned(),
        };
        Ok(recur_api::routes::update_card::UpdateCardConfig {
            key,
            public_url,
            business_name,
        })
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging: where (stderr), how much, in which format.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Which logs to keep, in tracing's filter syntax (e.g. `info`,
    /// `warn,recur_commands=debug`).
    #[arg(long = "log", env = "RUST_LOG", global = true, default_value = DEFAULT_LOG_FILTER, value_name = "FILTER")]
    pub filter: String,
    /// Log format.
    #[arg(long, env = "RECUR_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log as JSON lines (the same as --log-format json).
    #[arg(long, global = true)]
    pub log_json: bool,
}

impl LogArgs {
    /// The format asked for.
    pub fn format(&self) -> LogFormat {
        if self.log_json {
            LogFormat::Json
        } else {
            self.log_format
        }
    }
}

/// An address to listen on: `HOST:PORT`, where the host is an IP address or a
/// name resolved when the server binds (`localhost:8080`); port 0 picks a free port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddr {
    host: String,
    port: u16,
}

impl ListenAddr {
    /// The address as `tokio::net::TcpListener::bind` takes it.
    pub fn to_bind(&self) -> (&str, u16) {
        (self.host.as_str(), self.port)
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a `--listen` value was refused.
#[derive(Debug, thiserror::Error)]
pub enum ListenAddrError {
    /// No `:PORT`.
    #[error("expected HOST:PORT (e.g. 127.0.0.1:8080, localhost:8080, [::1]:8080)")]
    NoPort,
    /// The port is not 0–65535.
    #[error("the port must be a number from 0 to 65535")]
    BadPort,
    /// Empty host.
    #[error("the host is empty")]
    NoHost,
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (host, port) = value
            .trim()
            .rsplit_once(':')
            .ok_or(ListenAddrError::NoPort)?;
        let port = port.parse().map_err(|_| ListenAddrError::BadPort)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(ListenAddrError::NoHost);
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// A benchmark's scratch folder: `dir`, else one in the system temp dir.
pub fn scratch_dir(explicit: Option<&Path>) -> PathBuf {
    explicit.map_or_else(
        || std::env::temp_dir().join("recur-bench"),
        Path::to_path_buf,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn redact_drops_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact("postgres://alice:s3cret@db:5432/recur"),
            "postgres://alice@db:5432/recur"
        );
        assert_eq!(
            redact("postgres://alice@db/recur"),
            "postgres://alice@db/recur"
        );
        assert_eq!(redact("sqlite:recur.sqlite"), "sqlite:recur.sqlite");
        // An `@` inside the password: everything before the last `@` is credentials.
        assert_eq!(
            redact("postgres://alice:p@ss@db/recur"),
            "postgres://alice@db/recur"
        );
        assert_eq!(
            redact("postgres://alice:pw@db/recur?application_name=a@b"),
            "postgres://alice@db/recur?application_name=a@b"
        );
        // A password in the query string.
        assert_eq!(
            redact("postgres://db/recur?user=alice&password=s3cret&sslmode=require"),
            "postgres://db/recur?user=alice&password=***&sslmode=require"
        );
        assert_eq!(
            redact("postgres://alice@db/recur?PASSWORD=x#frag"),
            "postgres://alice@db/recur?PASSWORD=***#frag"
        );
    }

    #[test]
    fn secrets_never_appear_in_debug_or_display_output() {
        let key = Secret::new("rk_admin_0123456789abcdef");
        assert!(!format!("{key:?}").contains("0123456789abcdef"));
        assert!(!format!("{key:#?}").contains("0123456789abcdef"));
        assert_eq!(key.expose(), "rk_admin_0123456789abcdef");

        let url = DatabaseUrl::new("postgres://alice:s3cret@db:5432/recur");
        for shown in [
            format!("{url:?}"),
            format!("{url:#?}"),
            format!("{url}"),
            url.redacted(),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("alice@db:5432/recur"), "{shown}");
        }
        // Nor when they sit inside a parsed command line.
        let args = LedgerArgs::at("postgres://alice:s3cret@db/recur");
        assert!(!format!("{args:?}").contains("s3cret"));
    }

    #[test]
    fn the_embedded_default_is_made_only_by_commands_that_may_make_it() {
        let default = LedgerArgs {
            database: None,
            data_dir: PathBuf::from("/var/lib/recur"),
        };
        assert_eq!(
            default.location().expose(),
            "sqlite:/var/lib/recur/recur.sqlite"
        );
        assert!(
            default
                .ledger_config(WhenMissing::CreateDefault)
                .create_if_missing
        );
        assert!(!default.ledger_config(WhenMissing::Refuse).create_if_missing);
        let named = LedgerArgs::at("sqlite:/tmp/typo.sqlite");
        assert!(
            !named
                .ledger_config(WhenMissing::CreateDefault)
                .create_if_missing
        );
        assert!(named.ledger_config(WhenMissing::Create).create_if_missing);
    }

    #[test]
    fn the_update_card_settings_default_to_this_server_and_refuse_a_short_key_without_showing_it() {
        let args = |key: Option<&str>, url: Option<&str>| UpdateCardArgs {
            link_key: key.map(Secret::new),
            public_url: url.map(str::to_owned),
            business_name: "Coaching & Co".to_owned(),
        };
        let made = args(None, None).config(8080).unwrap();
        assert_eq!(made.public_url, "http://127.0.0.1:8080");
        assert_eq!(made.business_name, "Coaching & Co");
        let given = args(Some(&"ab".repeat(32)), Some("https://pay.example.com/"))
            .config(8080)
            .unwrap();
        assert_eq!(given.public_url, "https://pay.example.com");
        let short = "abcd".repeat(4);
        let error = args(Some(&short), None)
            .config(8080)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("RECUR_LINK_KEY"), "{error}");
        assert!(!error.contains(&short), "{error}");
        assert!(args(None, Some("ftp://x")).config(1).is_err());
    }

    #[test]
    fn listen_addresses_take_names_and_ip_addresses() {
        let named: ListenAddr = "localhost:8080".parse().unwrap();
        assert_eq!(named.to_bind(), ("localhost", 8080));
        let v6: ListenAddr = "[::1]:0".parse().unwrap();
        assert_eq!(v6.to_bind(), ("::1", 0));
        assert_eq!(v6.to_string(), "[::1]:0");
        assert!("localhost".parse::<ListenAddr>().is_err());
        assert!("localhost:http".parse::<ListenAddr>().is_err());
        assert!(":8080".parse::<ListenAddr>().is_err());
    }
}
