//! API keys and roles. A key is `rk_<id>_<secret>`; only the SHA-256 of the
//! secret is stored (as events in the ledger's `apikeys` stream). The bootstrap
//! admin key comes from `RECUR_ADMIN_KEY` and is held only in memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use recur_ledger::{EventId, ExpectedVersion, Ledger, LedgerError, NewEvent, StreamId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::problem::ApiError;

/// The stream holding the API keys.
const KEYS_STREAM: &str = "apikeys";
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

#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
enum KeyEvent {
    ApiKeyCreated {
        key_id: String,
        role: Role,
        secret_sha256: String,
    },
}

/// The keys this process knows.
pub struct KeyRing {
    ledger: Ledger,
    bootstrap_sha256: Option<String>,
    keys: RwLock<HashMap<String, (Role, String)>>,
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The key's id (recorded as the actor of what it writes).
    pub key_id: String,
    /// Its role.
    pub role: Role,
}

impl Caller {
    /// Refuses unless the caller's role is one of `roles` (admin always passes).
    ///
    /// # Errors
    /// 403 `forbidden`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.role == Role::Admin || roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(self.role.name()))
        }
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl KeyRing {
    /// Loads the keys from the ledger; `bootstrap` is the `RECUR_ADMIN_KEY`, if set.
    ///
    /// # Errors
    /// A bootstrap key shorter than [`BOOTSTRAP_KEY_CHARS_MIN`]; ledger errors.
    pub async fn load(ledger: Ledger, bootstrap: Option<&str>) -> Result<Self, String> {
        if let Some(key) = bootstrap
            && key.chars().count() < BOOTSTRAP_KEY_CHARS_MIN
        {
            return Err(format!(
                "RECUR_ADMIN_KEY must be at least {BOOTSTRAP_KEY_CHARS_MIN} characters"
            ));
        }
        let ring = Self {
            ledger,
            bootstrap_sha256: bootstrap.map(sha256_hex),
            keys: RwLock::new(HashMap::new()),
        };
        ring.reload().await.map_err(|e| e.to_string())?;
        Ok(ring)
    }

    async fn reload(&self) -> Result<(), LedgerError> {
        let stream = StreamId::parse(KEYS_STREAM)?;
        let mut keys = HashMap::new();
        let mut from = 1;
        loop {
            let page = self.ledger.read_stream(&stream, from, 1_000).await?;
            let done = page.len() < 1_000;
            for event in &page {
                if let Ok(KeyEvent::ApiKeyCreated {
                    key_id,
                    role,
                    secret_sha256,
                }) = serde_json::from_str(&event.payload)
                {
                    keys.insert(key_id, (role, secret_sha256));
                }
                from = event.stream_version + 1;
            }
            if done {
                break;
            }
        }
        if let Ok(mut current) = self.keys.write() {
            *current = keys;
        }
        Ok(())
    }

    /// Creates a key with `role`; returns its id and the full key (shown once).
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn create(&self, role: Role) -> Result<(String, String), LedgerError> {
        let now = self.ledger.clock().now();
        let key_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let event = KeyEvent::ApiKeyCreated {
            key_id: key_id.clone(),
            role,
            secret_sha256: sha256_hex(&secret),
        };
        let stream = StreamId::parse(KEYS_STREAM)?;
        self.ledger
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(
                    EventId::new_at(now),
                    "ApiKeyCreated",
                    1,
                    &event,
                )?],
            )
            .await?;
        self.reload().await?;
        Ok((key_id.clone(), format!("rk_{key_id}_{secret}")))
    }

    /// The caller a presented key stands for, if any.
    pub async fn authenticate(&self, presented: &str) -> Option<Caller> {
        if let Some(hash) = &self.bootstrap_sha256
            && sha256_hex(presented) == *hash
        {
            return Some(Caller {
                key_id: BOOTSTRAP_KEY_ID.to_owned(),
                role: Role::Admin,
            });
        }
        let rest = presented.strip_prefix("rk_")?;
        let (key_id, secret) = rest.split_once('_')?;
        let lookup = |ring: &Self| {
            ring.keys
                .read()
                .ok()
                .and_then(|keys| keys.get(key_id).cloned())
        };
        let found = match lookup(self) {
            Some(found) => Some(found),
            // Perhaps created by another process since we loaded.
            None => {
                self.reload().await.ok()?;
                lookup(self)
            }
        };
        let (role, hash) = found?;
        (sha256_hex(secret) == hash).then(|| Caller {
            key_id: key_id.to_owned(),
            role,
        })
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthenticated)?;
        state
            .keys
            .authenticate(presented)
            .await
            .ok_or_else(ApiError::unauthenticated)
    }
}
