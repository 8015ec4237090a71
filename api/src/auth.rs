//! API keys and roles. A key is `rk_<id>_<secret>`; only the SHA-256 of the
//! secret is stored (as events in the ledger's `apikeys` stream: created,
//! rotated, revoked, used). Every server holds the keys in memory, fed by that
//! stream. The bootstrap admin key comes from `RECUR_ADMIN_KEY` and is held only
//! in memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use recur_ledger::{EventId, ExpectedVersion, Ledger, LedgerError, NewEvent, StreamId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::AppState;
use super::problem::ApiError;

/// The stream holding the API keys.
/// The ledger stream that holds the keys' events.
pub const KEYS_STREAM: &str = "apikeys";
/// The id under which the bootstrap admin key acts.
pub const BOOTSTRAP_KEY_ID: &str = "bootstrap-admin";
/// The shortest bootstrap key accepted.
pub const BOOTSTRAP_KEY_CHARS_MIN: usize = 16;

/// What a key may do.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including key management.
    Admin,
    /// Billing commands.
    Billing,
    /// Customers, with their personal data.
    Support,
    /// Metrics and the catalog; no personal data.
    Analyst,
}

impl Role {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Billing => "billing",
            Role::Support => "support",
            Role::Analyst => "analyst",
        }
    }

    /// Whether this role sees personal data (contact details).
    pub fn sees_personal_data(self) -> bool {
        matches!(self, Role::Admin | Role::Support)
    }
}

/// What happens to API keys, in the ledger's `apikeys` stream. Only SHA-256
/// digests of secrets are ever written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
#[allow(clippy::enum_variant_names, reason = "the stored event type names")]
enum KeyEvent {
    ApiKeyCreated {
        key_id: String,
        role: Role,
        secret_sha256: String,
        /// Who made it: the creating key's id, or `cli`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created_by: Option<String>,
        #[serde(
            default,
            with = "time::serde::rfc3339::option",
            skip_serializing_if = "Option::is_none"
        )]
        created_at: Option<OffsetDateTime>,
    },
    /// A new secret for the key; the old one stops working at once.
    ApiKeyRotated {
        key_id: String,
        secret_sha256: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The key stops working at once.
    ApiKeyRevoked {
        key_id: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The key was used (recorded at most once per [`USE_RECORDED_EVERY_S`]).
    ApiKeyUsed {
        key_id: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl KeyEvent {
    fn event_type(&self) -> &'static str {
        match self {
            KeyEvent::ApiKeyCreated { .. } => "ApiKeyCreated",
            KeyEvent::ApiKeyRotated { .. } => "ApiKeyRotated",
            KeyEvent::ApiKeyRevoked { .. } => "ApiKeyRevoked",
            KeyEvent::ApiKeyUsed { .. } => "ApiKeyUsed",
        }
    }
}

/// How often each server reads the keys' stream for other servers' changes:
/// a key made, rotated or revoked anywhere is in force everywhere within this.
pub const KEYS_REFRESH_MS: u64 = 100;
/// After this long without a successful read of the keys' stream (the ledger is
/// down), an unknown key is answered 503, not 401: it may have been made since.
pub const KEYS_STALE_MS: u64 = 2_000;
/// A key's use is recorded at most this often (its `last_used_at`).
pub const USE_RECORDED_EVERY_S: i64 = 3_600;

/// One key as this process knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// Its id.
    pub id: String,
    /// Its role.
    pub role: Role,
    secret_sha256: String,
    /// Who made it (a key id, or `cli`).
    pub created_by: Option<String>,
    /// When.
    pub created_at: Option<OffsetDateTime>,
    /// When its secret last changed.
    pub rotated_at: Option<OffsetDateTime>,
    /// When it stopped working.
    pub revoked_at: Option<OffsetDateTime>,
    /// When it was last used, to the hour.
    pub last_used_at: Option<OffsetDateTime>,
}

/// The keys, as of the stream version they were read to.
#[derive(Default)]
struct Keys {
    by_id: HashMap<String, KeyEntry>,
    version: u64,
    refreshed: Option<std::time::Instant>,
}

impl Keys {
    fn apply(&mut self, event: KeyEvent) {
        match event {
            KeyEvent::ApiKeyCreated {
                key_id,
                role,
                secret_sha256,
                created_by,
                created_at,
            } => {
                self.by_id.insert(
                    key_id.clone(),
                    KeyEntry {
                        id: key_id,
                        role,
                        secret_sha256,
                        created_by,
                        created_at,
                        rotated_at: None,
                        revoked_at: None,
                        last_used_at: None,
                    },
                );
            }
            KeyEvent::ApiKeyRotated {
                key_id,
                secret_sha256,
                at,
            } => {
                if let Some(entry) = self.by_id.get_mut(&key_id) {
                    entry.secret_sha256 = secret_sha256;
                    entry.rotated_at = Some(at);
                }
            }
            KeyEvent::ApiKeyRevoked { key_id, at } => {
                if let Some(entry) = self.by_id.get_mut(&key_id) {
                    entry.revoked_at.get_or_insert(at);
                }
            }
            KeyEvent::ApiKeyUsed { key_id, at } => {
                if let Some(entry) = self.by_id.get_mut(&key_id) {
                    entry.last_used_at = Some(entry.last_used_at.map_or(at, |last| last.max(at)));
                }
            }
        }
    }
}

/// The keys this process knows: held in memory, fed by the ledger's `apikeys`
/// stream (every [`KEYS_REFRESH_MS`], and at once after this process changes
/// one), so authenticating never reads the ledger and an unknown id costs what a
/// known one does.
pub struct KeyRing {
    ledger: Ledger,
    bootstrap_sha256: Option<String>,
    keys: RwLock<Keys>,
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The key's id (recorded as the actor of what it writes).
    pub key_id: String,
    /// Its role.
    pub role: Role,
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Equality of two digests in time that does not depend on where they differ.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

/// A new secret: two UUIDv4s, 244 random bits, as 64 hex digits.
fn new_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Why a key could not be authenticated.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No such key, a wrong secret, or a revoked key.
    Unknown,
    /// The keys could not be read from the ledger lately: an unknown key may
    /// be one made since.
    Unavailable,
}

/// Why a key command failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key with that id.
    #[error("no API key {0}")]
    NotFound(String),
    /// The key was revoked.
    #[error("API key {0} is revoked")]
    Revoked(String),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Why the key ring could not be loaded at start-up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `RECUR_ADMIN_KEY` is too short to be a secret.
    #[error("RECUR_ADMIN_KEY must be at least {chars_min} characters")]
    BootstrapTooShort {
        /// [`BOOTSTRAP_KEY_CHARS_MIN`].
        chars_min: usize,
    },
    /// The keys' stream could not be read.
    #[error("could not read the API keys")]
    Ledger(#[from] LedgerError),
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::NotFound(_) => ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "api_key_not_found",
                error.to_string(),
            ),
            KeyError::Revoked(_) => ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "api_key_revoked",
                error.to_string(),
            ),
            KeyError::Ledger(error) => error.into(),
        }
    }
}

impl KeyRing {
    /// Loads the keys from the ledger; `bootstrap` is the `RECUR_ADMIN_KEY`, if set.
    ///
    /// # Errors
    /// [`LoadError::BootstrapTooShort`] for a bootstrap key shorter than
    /// [`BOOTSTRAP_KEY_CHARS_MIN`]; [`LoadError::Ledger`] when the keys cannot be read.
    pub async fn load(ledger: Ledger, bootstrap: Option<&str>) -> Result<Self, LoadError> {
        if let Some(key) = bootstrap
            && key.chars().count() < BOOTSTRAP_KEY_CHARS_MIN
        {
            return Err(LoadError::BootstrapTooShort {
                chars_min: BOOTSTRAP_KEY_CHARS_MIN,
            });
        }
        let ring = Self {
            ledger,
            bootstrap_sha256: bootstrap.map(sha256_hex),
            keys: RwLock::new(Keys::default()),
        };
        ring.refresh().await?;
        Ok(ring)
    }

    /// Reads what the keys' stream gained since the last read.
    ///
    /// # Errors
    /// Ledger errors (the keys known stay in force).
    pub async fn refresh(&self) -> Result<(), LedgerError> {
        let stream = StreamId::parse(KEYS_STREAM)?;
        loop {
            let from = self.keys.read().map_or(0, |k| k.version) + 1;
            let page = self.ledger.read_stream(&stream, from, 1_000).await?;
            let done = page.len() < 1_000;
            if let Ok(mut keys) = self.keys.write() {
                for event in &page {
                    // Another reader may have applied it meanwhile.
                    if event.stream_version <= keys.version {
                        continue;
                    }
                    match serde_json::from_str::<KeyEvent>(&event.payload) {
                        Ok(key_event) => keys.apply(key_event),
                        Err(error) => tracing::error!(
                            position = event.position.0,
                            %error,
                            "an API key event this version cannot read"
                        ),
                    }
                    keys.version = event.stream_version;
                }
                if done {
                    keys.refreshed = Some(std::time::Instant::now());
                }
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Follows the keys' stream until the process ends (a task of `recur serve`).
    pub async fn follow(self: Arc<Self>) {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(KEYS_REFRESH_MS));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(error) = self.refresh().await {
                tracing::debug!(%error, "could not read the API keys; keeping the ones known");
            }
        }
    }

    async fn append(&self, event: KeyEvent, actor: &str) -> Result<(), LedgerError> {
        let now = self.ledger.clock().now();
        let stream = StreamId::parse(KEYS_STREAM)?;
        let metadata = recur_ledger::Metadata {
            actor: Some(actor.to_owned()),
            source: if actor == "cli" {
                recur_ledger::Source::Cli
            } else {
                recur_ledger::Source::Api
            },
            ..recur_ledger::Metadata::default()
        };
        self.ledger
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![
                    NewEvent::new(EventId::new_at(now), event.event_type(), 1, &event)?
                        .with_metadata(metadata),
                ],
            )
            .await?;
        self.refresh().await
    }

    /// Creates a key with `role`, made by `actor` (a key id, or `cli`); returns its
    /// id and the full key (shown once).
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn create(&self, role: Role, actor: &str) -> Result<(String, String), LedgerError> {
        let now = self.ledger.clock().now();
        let key_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
        let secret = new_secret();
        let event = KeyEvent::ApiKeyCreated {
            key_id: key_id.clone(),
            role,
            secret_sha256: sha256_hex(&secret),
            created_by: Some(actor.to_owned()),
            created_at: Some(now),
        };
        self.append(event, actor).await?;
        Ok((key_id.clone(), format!("rk_{key_id}_{secret}")))
    }

    /// Gives key `id` a new secret (the old one stops working on every server
    /// within [`KEYS_REFRESH_MS`]); returns the full new key (shown once).
    ///
    /// # Errors
    /// An unknown or revoked key; ledger errors.
    pub async fn rotate(&self, id: &str, actor: &str) -> Result<String, KeyError> {
        self.live(id)?;
        let secret = new_secret();
        let at = self.ledger.clock().now();
        let event = KeyEvent::ApiKeyRotated {
            key_id: id.to_owned(),
            secret_sha256: sha256_hex(&secret),
            at,
        };
        self.append(event, actor).await?;
        Ok(format!("rk_{id}_{secret}"))
    }

    /// Revokes key `id` (on every server within [`KEYS_REFRESH_MS`]); revoking a
    /// revoked key changes nothing.
    ///
    /// # Errors
    /// An unknown key; ledger errors.
    pub async fn revoke(&self, id: &str, actor: &str) -> Result<KeyEntry, KeyError> {
        let entry = self
            .get(id)
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        if entry.revoked_at.is_none() {
            let at = self.ledger.clock().now();
            self.append(
                KeyEvent::ApiKeyRevoked {
                    key_id: id.to_owned(),
                    at,
                },
                actor,
            )
            .await?;
        }
        self.get(id)
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))
    }

    /// Key `id`, if known.
    pub fn get(&self, id: &str) -> Option<KeyEntry> {
        self.keys.read().ok()?.by_id.get(id).cloned()
    }

    fn live(&self, id: &str) -> Result<KeyEntry, KeyError> {
        let entry = self
            .get(id)
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        if entry.revoked_at.is_some() {
            return Err(KeyError::Revoked(id.to_owned()));
        }
        Ok(entry)
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Vec<KeyEntry> {
        let mut keys: Vec<KeyEntry> = self
            .keys
            .read()
            .map(|k| k.by_id.values().cloned().collect())
            .unwrap_or_default();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        keys
    }

    /// The caller a presented key stands for. Reads nothing from the ledger: an
    /// unknown id, a wrong secret and a revoked key take the same work.
    ///
    /// # Errors
    /// [`AuthFailure::Unknown`]; [`AuthFailure::Unavailable`] for an unknown key
    /// while the keys could not be read lately.
    pub fn authenticate(&self, presented: &str) -> Result<Caller, AuthFailure> {
        let digest = sha256_hex(presented);
        if let Some(hash) = &self.bootstrap_sha256
            && same_digest(&digest, hash)
        {
            return Ok(Caller {
                key_id: BOOTSTRAP_KEY_ID.to_owned(),
                role: Role::Admin,
            });
        }
        let (key_id, secret) = presented
            .strip_prefix("rk_")
            .and_then(|rest| rest.split_once('_'))
            .unwrap_or(("", presented));
        let secret_digest = sha256_hex(secret);
        let keys = self.keys.read().map_err(|_| AuthFailure::Unavailable)?;
        let found = keys.by_id.get(key_id);
        // The same comparison whether or not the id exists.
        let expected = found.map_or("", |k| k.secret_sha256.as_str());
        let matches = same_digest(&secret_digest, expected) && !expected.is_empty();
        match found {
            Some(entry) if matches && entry.revoked_at.is_none() => Ok(Caller {
                key_id: entry.id.clone(),
                role: entry.role,
            }),
            Some(_) => Err(AuthFailure::Unknown),
            None => {
                let fresh = keys.refreshed.is_some_and(|at| {
                    at.elapsed() < std::time::Duration::from_millis(KEYS_STALE_MS)
                });
                Err(if fresh {
                    AuthFailure::Unknown
                } else {
                    AuthFailure::Unavailable
                })
            }
        }
    }

    /// Whether key `id`'s use should be recorded now (never, or more than
    /// [`USE_RECORDED_EVERY_S`] ago); marks it as recorded in memory.
    fn use_due(&self, id: &str, now: OffsetDateTime) -> bool {
        let Ok(mut keys) = self.keys.write() else {
            return false;
        };
        let Some(entry) = keys.by_id.get_mut(id) else {
            return false;
        };
        if entry
            .last_used_at
            .is_some_and(|last| now - last < time::Duration::seconds(USE_RECORDED_EVERY_S))
        {
            return false;
        }
        entry.last_used_at = Some(now);
        true
    }

    /// Records that `caller` used its key, at most once per [`USE_RECORDED_EVERY_S`],
    /// on a task of its own (the request does not wait for it).
    pub fn note_use(self: &Arc<Self>, caller: &Caller) {
        if caller.key_id == BOOTSTRAP_KEY_ID {
            return;
        }
        let now = self.ledger.clock().now();
        if !self.use_due(&caller.key_id, now) {
            return;
        }
        let ring = Arc::clone(self);
        let key_id = caller.key_id.clone();
        tokio::spawn(async move {
            let event = KeyEvent::ApiKeyUsed {
                key_id: key_id.clone(),
                at: now,
            };
            if let Err(error) = ring.append(event, &key_id).await {
                tracing::debug!(%error, "could not record an API key's use");
            }
        });
    }
}

/// The roles allowed on each route, read from the OpenAPI document the routes
/// were declared in (their `api_key` security scopes); a route without security
/// is public.
#[derive(Debug, Default)]
pub struct RouteRoles {
    by_route: std::collections::HashMap<(axum::http::Method, String), Vec<Role>>,
    public: std::collections::HashSet<(axum::http::Method, String)>,
}

impl RouteRoles {
    /// The table of `api`.
    ///
    /// # Panics
    /// A scope that names no role: a declaration mistake caught by any test
    /// that builds the router.
    pub fn of(api: &utoipa::openapi::OpenApi) -> Self {
        let mut by_route = std::collections::HashMap::new();
        let mut public = std::collections::HashSet::new();
        for (path, item) in &api.paths.paths {
            let operations = [
                (axum::http::Method::GET, &item.get),
                (axum::http::Method::POST, &item.post),
                (axum::http::Method::PUT, &item.put),
                (axum::http::Method::PATCH, &item.patch),
                (axum::http::Method::DELETE, &item.delete),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let scopes: Vec<String> = operation
                    .security
                    .iter()
                    .flatten()
                    .filter_map(|requirement| {
                        serde_json::to_value(requirement)
                            .ok()?
                            .get("api_key")?
                            .as_array()
                            .cloned()
                    })
                    .flatten()
                    .filter_map(|scope| scope.as_str().map(str::to_owned))
                    .collect();
                if operation.security.is_none() {
                    public.insert((method, path.clone()));
                    continue;
                }
                let roles = scopes
                    .iter()
                    .map(|scope| {
                        serde_json::from_value::<Role>(serde_json::Value::String(scope.clone()))
                            .unwrap_or_else(|_| panic!("{method} {path}: {scope:?} is no role"))
                    })
                    .collect();
                by_route.insert((method, path.clone()), roles);
            }
        }
        // The document itself is public; it is served beside the routes.
        public.insert((axum::http::Method::GET, "/openapi.json".to_owned()));
        Self { by_route, public }
    }

    /// The roles allowed on `method` `path` (a route template); None: public,
    /// or a method the route does not have (the router answers 405). HEAD is
    /// checked as the GET that answers it.
    pub fn of_route(&self, method: &axum::http::Method, path: &str) -> Option<&[Role]> {
        let method = if method == axum::http::Method::HEAD {
            axum::http::Method::GET
        } else {
            method.clone()
        };
        self.by_route
            .get(&(method, path.to_owned()))
            .map(Vec::as_slice)
    }

    /// Whether `method` `path` is declared public (no key needed).
    pub fn is_public(&self, method: &axum::http::Method, path: &str) -> bool {
        self.public.contains(&(method.clone(), path.to_owned()))
    }
}

/// Authenticates and authorises a request before any handler or extractor
/// runs, by the roles its route declares: 401 `unauthenticated`, 429
/// `rate_limited` (the key's rate limit, [`crate::limits`]), 403 `forbidden`.
/// The caller is handed to the handler in the request's extensions.
pub async fn authorize(
    axum::extract::State((state, roles)): axum::extract::State<(Arc<AppState>, Arc<RouteRoles>)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let Some(allowed) = path.and_then(|path| roles.of_route(request.method(), &path)) else {
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    let caller = match Caller::authenticate(&parts, &state) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    // Before the role check: a key hammering routes it may not call is limited too.
    if let Err(refused) = state.limiter.check_key(&caller.key_id) {
        return ApiError::from(refused).into_response();
    }
    if !allowed.contains(&caller.role) {
        return ApiError::forbidden(caller.role.name()).into_response();
    }
    parts.extensions.insert(caller);
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

impl Caller {
    /// The caller the request's bearer key names.
    ///
    /// # Errors
    /// 401 `unauthenticated`; 503 `unavailable` when keys cannot be checked.
    fn authenticate(parts: &Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthenticated)?;
        match state.keys.authenticate(presented) {
            Ok(caller) => {
                state.keys.note_use(&caller);
                Ok(caller)
            }
            Err(AuthFailure::Unknown) => Err(ApiError::unauthenticated()),
            Err(AuthFailure::Unavailable) => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "API keys cannot be checked: the ledger is unavailable; retry shortly",
            )),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    /// The caller [`authorize`] let in; authenticated here on a route that
    /// declares no roles.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        Self::authenticate(parts, state)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use recur_ledger::{LedgerConfig, SystemClock};

    use super::*;

    #[tokio::test]
    async fn a_short_bootstrap_key_is_refused_as_such_and_a_long_one_loads() {
        let path = std::env::temp_dir().join(format!("recur-keys-{}.db", uuid::Uuid::now_v7()));
        let config =
            LedgerConfig::new(format!("sqlite:{}", path.display())).create_if_missing(true);
        let ledger = Ledger::open(config, Arc::new(SystemClock))
            .await
            .expect("a scratch ledger");
        let error = KeyRing::load(ledger.clone(), Some("short"))
            .await
            .err()
            .expect("a short key is refused");
        assert!(
            matches!(error, LoadError::BootstrapTooShort { chars_min } if chars_min == BOOTSTRAP_KEY_CHARS_MIN),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("RECUR_ADMIN_KEY must be at least {BOOTSTRAP_KEY_CHARS_MIN} characters")
        );
        let long = "k".repeat(BOOTSTRAP_KEY_CHARS_MIN);
        assert!(KeyRing::load(ledger, Some(&long)).await.is_ok());
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
