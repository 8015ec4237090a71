//! Personal data at rest, erasable by crypto-shredding.
//!
//! Each customer's personal data is encrypted in the ledger's events under the
//! customer's own *data key* (ChaCha20-Poly1305, a fresh random nonce per
//! message, the customer's id bound in as associated data so a ciphertext
//! cannot be moved to another customer). Data keys are stored beside the
//! ledger only wrapped by a *master key* from configuration, which never enters
//! the database; each wrapping names its master key's id, so master keys rotate
//! by rewrapping the data keys, never the events. Erasing a customer destroys
//! the data key: the events stay (the chain and the books are untouched), and
//! what they hold of the person can no longer be read by anyone.
//!
//! Everything here is pure (keys in, bytes out); the [`Vault`] keeps the master
//! keys and the random source, and the billing service does the I/O.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Bytes in a master key and in a data key.
pub const KEY_BYTES: usize = 32;
/// The AEAD's name as stored with every ciphertext.
pub const ALGORITHM: &str = "chacha20-poly1305";
/// Bytes of personal data one ciphertext may hold: a delivered Stripe event at
/// most (a contact is far smaller); base64-encoded it still fits one ledger
/// event (256 KiB).
pub const PLAINTEXT_BYTES_MAX: usize = 180 * 1024;

/// What went wrong with keys or ciphertexts.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// A master key from configuration is not 32 bytes as 64 hex digits or base64.
    #[error("a master key is 32 bytes, given as 64 hex digits or as base64")]
    MalformedMasterKey,
    /// A data key is wrapped by a master key that is not configured.
    #[error(
        "a data key is wrapped by master key {id}, which is not configured (set it in RECUR_MASTER_KEYS_RETIRED)"
    )]
    UnknownMasterKey {
        /// The missing master key's id.
        id: String,
    },
    /// A wrapped data key or a ciphertext failed authentication: it was altered,
    /// belongs to another customer, or was made under another key.
    #[error("personal data failed authentication (altered, or under another key)")]
    Unauthentic,
    /// A stored ciphertext is not in the form this code writes.
    #[error("personal data is stored in an unknown form: {0}")]
    Malformed(&'static str),
    /// The system's random source failed.
    #[error("the system's random source failed")]
    Random,
}

impl PrivacyError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            PrivacyError::MalformedMasterKey => "invalid_master_key",
            PrivacyError::UnknownMasterKey { .. } => "master_key_missing",
            PrivacyError::Unauthentic | PrivacyError::Malformed(_) => "personal_data_corrupt",
            PrivacyError::Random => "random_unavailable",
        }
    }
}

/// A master key (from `RECUR_MASTER_KEY`), known by its id: a fingerprint that
/// names it without revealing it.
pub struct MasterKey {
    id: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Reads a key given as 64 hex digits or as base64 of 32 bytes.
    ///
    /// # Errors
    /// [`PrivacyError::MalformedMasterKey`].
    pub fn parse(text: &str) -> Result<Self, PrivacyError> {
        let text = text.trim();
        let bytes = if text.len() == 2 * KEY_BYTES {
            hex::decode(text).ok()
        } else {
            BASE64.decode(text).ok()
        }
        .filter(|bytes| bytes.len() == KEY_BYTES)
        .ok_or(PrivacyError::MalformedMasterKey)?;
        Self::from_bytes(&bytes)
    }

    /// A new random key and its text form (hex), e.g. for a key file.
    ///
    /// # Errors
    /// [`PrivacyError::Random`].
    pub fn generate() -> Result<(Self, String), PrivacyError> {
        let mut bytes = [0_u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| PrivacyError::Random)?;
        Ok((Self::from_bytes(&bytes)?, hex::encode(bytes)))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, PrivacyError> {
        let digest = Sha256::new()
            .chain_update(b"recur master key id\0")
            .chain_update(bytes)
            .finalize();
        Ok(Self {
            id: format!("mk_{}", hex::encode(&digest[..8])),
            key: aead_key(bytes)?,
        })
    }

    /// Its id (`mk_` and 16 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A customer's data key, unwrapped (in memory only).
pub struct DataKey {
    owner: Uuid,
    key: LessSafeKey,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Personal data as an event stores it: encrypted under its owner's data key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encrypted {
    /// Always [`ALGORITHM`].
    pub alg: String,
    /// The nonce, base64.
    pub nonce: String,
    /// Ciphertext and tag, base64.
    pub ciphertext: String,
}

/// The master keys in force and the random source: wraps, unwraps, encrypts
/// and decrypts.
#[derive(Debug)]
pub struct Vault {
    current: MasterKey,
    retired: Vec<MasterKey>,
    random: SystemRandom,
}

impl Vault {
    /// A vault wrapping new data keys with `current`; `retired` keys still
    /// unwrap the data keys they wrapped, until these are rewrapped.
    pub fn new(current: MasterKey, retired: Vec<MasterKey>) -> Self {
        Self {
            current,
            retired,
            random: SystemRandom::new(),
        }
    }

    /// The id of the master key that wraps new data keys.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// Whether the master key `id` is the current one or a retired one.
    pub fn knows(&self, id: &str) -> bool {
        self.master(id).is_ok()
    }

    /// A new data key for `owner`, and its wrapped form (under the current
    /// master key) to store.
    ///
    /// # Errors
    /// [`PrivacyError::Random`].
    pub fn new_data_key(&self, owner: Uuid) -> Result<(DataKey, Vec<u8>), PrivacyError> {
        let mut bytes = [0_u8; KEY_BYTES];
        self.random
            .fill(&mut bytes)
            .map_err(|_| PrivacyError::Random)?;
        let wrapped = self.seal(&self.current.key, &wrap_aad(owner), &bytes)?;
        Ok((
            DataKey {
                owner,
                key: aead_key(&bytes)?,
            },
            wrapped,
        ))
    }

    /// Unwraps `owner`'s data key, wrapped by the master key `master_key_id`.
    ///
    /// # Errors
    /// [`PrivacyError::UnknownMasterKey`], [`PrivacyError::Unauthentic`].
    pub fn unwrap(
        &self,
        owner: Uuid,
        wrapped: &[u8],
        master_key_id: &str,
    ) -> Result<DataKey, PrivacyError> {
        let master = self.master(master_key_id)?;
        let bytes = self.open(&master.key, &wrap_aad(owner), wrapped)?;
        Ok(DataKey {
            owner,
            key: aead_key(&bytes)?,
        })
    }

    /// `wrapped` (by `master_key_id`) wrapped again by the current master key;
    /// None when it already is.
    ///
    /// # Errors
    /// As [`Vault::unwrap`].
    pub fn rewrap(
        &self,
        owner: Uuid,
        wrapped: &[u8],
        master_key_id: &str,
    ) -> Result<Option<Vec<u8>>, PrivacyError> {
        if master_key_id == self.current.id() {
            return Ok(None);
        }
        let master = self.master(master_key_id)?;
        let bytes = self.open(&master.key, &wrap_aad(owner), wrapped)?;
        self.seal(&self.current.key, &wrap_aad(owner), &bytes)
            .map(Some)
    }

    /// Encrypts `plaintext` (personal data of the key's owner) for an event.
    ///
    /// # Errors
    /// [`PrivacyError::Random`]; [`PrivacyError::Malformed`] beyond
    /// [`PLAINTEXT_BYTES_MAX`].
    pub fn encrypt(&self, key: &DataKey, plaintext: &[u8]) -> Result<Encrypted, PrivacyError> {
        if plaintext.len() > PLAINTEXT_BYTES_MAX {
            return Err(PrivacyError::Malformed("personal data too large"));
        }
        let sealed = self.seal(&key.key, &data_aad(key.owner), plaintext)?;
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        Ok(Encrypted {
            alg: ALGORITHM.to_owned(),
            nonce: BASE64.encode(nonce),
            ciphertext: BASE64.encode(ciphertext),
        })
    }

    /// Decrypts what [`Vault::encrypt`] made with the same owner's key.
    ///
    /// # Errors
    /// [`PrivacyError::Malformed`], [`PrivacyError::Unauthentic`].
    pub fn decrypt(&self, key: &DataKey, encrypted: &Encrypted) -> Result<Vec<u8>, PrivacyError> {
        if encrypted.alg != ALGORITHM {
            return Err(PrivacyError::Malformed("unknown algorithm"));
        }
        let mut sealed = BASE64
            .decode(&encrypted.nonce)
            .map_err(|_| PrivacyError::Malformed("nonce is not base64"))?;
        if sealed.len() != NONCE_LEN {
            return Err(PrivacyError::Malformed("nonce length"));
        }
        sealed.extend(
            BASE64
                .decode(&encrypted.ciphertext)
                .map_err(|_| PrivacyError::Malformed("ciphertext is not base64"))?,
        );
        self.open(&key.key, &data_aad(key.owner), &sealed)
    }

    fn master(&self, id: &str) -> Result<&MasterKey, PrivacyError> {
        std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|key| key.id == id)
            .ok_or_else(|| PrivacyError::UnknownMasterKey { id: id.to_owned() })
    }

    /// `nonce || ciphertext || tag`.
    fn seal(
        &self,
        key: &LessSafeKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, PrivacyError> {
        let mut nonce = [0_u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| PrivacyError::Random)?;
        let mut sealed =
            Vec::with_capacity(NONCE_LEN + plaintext.len() + key.algorithm().tag_len());
        sealed.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        // Random 96-bit nonces: a data key encrypts a handful of messages and a
        // master key wraps one key per customer, far below the birthday bound.
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| PrivacyError::Malformed("too large to encrypt"))?;
        sealed.extend(body);
        Ok(sealed)
    }

    fn open(&self, key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, PrivacyError> {
        if sealed.len() < NONCE_LEN + key.algorithm().tag_len() {
            return Err(PrivacyError::Malformed("too short"));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| PrivacyError::Unauthentic)?;
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| PrivacyError::Unauthentic)?;
        Ok(plain.to_vec())
    }
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey, PrivacyError> {
    UnboundKey::new(&CHACHA20_POLY1305, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| PrivacyError::MalformedMasterKey)
}

fn wrap_aad(owner: Uuid) -> Vec<u8> {
    [b"recur data key\0".as_slice(), owner.as_bytes()].concat()
}

fn data_aad(owner: Uuid) -> Vec<u8> {
    [b"recur personal data\0".as_slice(), owner.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn vault() -> Vault {
        Vault::new(MasterKey::generate().unwrap().0, Vec::new())
    }

    #[test]
    fn personal_data_round_trips_only_under_its_owners_key() {
        let vault = vault();
        let alice = Uuid::now_v7();
        let bob = Uuid::now_v7();
        let (alice_key, wrapped) = vault.new_data_key(alice).unwrap();
        let encrypted = vault.encrypt(&alice_key, b"Alice Example").unwrap();
        assert!(!encrypted.ciphertext.contains("Alice"));
        assert_eq!(
            vault.decrypt(&alice_key, &encrypted).unwrap(),
            b"Alice Example"
        );

        let unwrapped = vault.unwrap(alice, &wrapped, vault.current_id()).unwrap();
        assert_eq!(
            vault.decrypt(&unwrapped, &encrypted).unwrap(),
            b"Alice Example"
        );
        // Alice's wrapped key does not unwrap as Bob's, nor her data under his key.
        assert!(matches!(
            vault.unwrap(bob, &wrapped, vault.current_id()),
            Err(PrivacyError::Unauthentic)
        ));
        let (bob_key, _) = vault.new_data_key(bob).unwrap();
        assert!(matches!(
            vault.decrypt(&bob_key, &encrypted),
            Err(PrivacyError::Unauthentic)
        ));
    }

    #[test]
    fn a_flipped_bit_fails_authentication() {
        let vault = vault();
        let owner = Uuid::now_v7();
        let (key, _) = vault.new_data_key(owner).unwrap();
        let mut encrypted = vault.encrypt(&key, b"alice@example.com").unwrap();
        let mut bytes = BASE64.decode(&encrypted.ciphertext).unwrap();
        bytes[0] ^= 1;
        encrypted.ciphertext = BASE64.encode(bytes);
        assert!(matches!(
            vault.decrypt(&key, &encrypted),
            Err(PrivacyError::Unauthentic)
        ));
    }

    #[test]
    fn a_rotated_master_key_still_unwraps_through_the_retired_one() {
        let (old, old_text) = MasterKey::generate().unwrap();
        let owner = Uuid::now_v7();
        let before = Vault::new(old, Vec::new());
        let (key, wrapped) = before.new_data_key(owner).unwrap();
        let encrypted = before.encrypt(&key, b"+1 555 0100").unwrap();
        let old_id = before.current_id().to_owned();

        let after = Vault::new(
            MasterKey::generate().unwrap().0,
            vec![MasterKey::parse(&old_text).unwrap()],
        );
        let rewrapped = after.rewrap(owner, &wrapped, &old_id).unwrap().unwrap();
        let key = after.unwrap(owner, &rewrapped, after.current_id()).unwrap();
        assert_eq!(after.decrypt(&key, &encrypted).unwrap(), b"+1 555 0100");
        assert!(
            after
                .rewrap(owner, &rewrapped, after.current_id())
                .unwrap()
                .is_none()
        );

        let forgotten = Vault::new(MasterKey::generate().unwrap().0, Vec::new());
        assert!(matches!(
            forgotten.unwrap(owner, &wrapped, &old_id),
            Err(PrivacyError::UnknownMasterKey { .. })
        ));
    }

    #[test]
    fn master_keys_parse_from_hex_or_base64_and_nothing_else() {
        let hex_key = "00".repeat(KEY_BYTES);
        let from_hex = MasterKey::parse(&hex_key).unwrap();
        let from_base64 = MasterKey::parse(&BASE64.encode([0_u8; KEY_BYTES])).unwrap();
        assert_eq!(from_hex.id(), from_base64.id());
        assert!(from_hex.id().starts_with("mk_"));
        for bad in ["", "short", &"0".repeat(63), &BASE64.encode([0_u8; 16])] {
            assert!(matches!(
                MasterKey::parse(bad),
                Err(PrivacyError::MalformedMasterKey)
            ));
        }
        assert!(!format!("{from_hex:?}").contains("0000"));
    }
}
