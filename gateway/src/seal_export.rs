//! Seal digest export: a copy of each seal (number, range, digest, previous
//! digest, time) kept outside the operator's database, so that a rewrite of the
//! ledger that recomputes every hash is still caught by comparing digests.
//!
//! Targets (`--seal-export` on `recur serve` and `recur ledger seal`, or
//! `RECUR_SEAL_EXPORT`): `file:PATH` appends one JSON line per seal, fsynced;
//! `http://HOST[:PORT]/PATH` POSTs each line as a JSON body, retrying with
//! backoff. Plain HTTP only: reqwest is built without TLS here, so an `https`
//! target is refused at start (send through a local TLS forwarder). The line is
//! [`recur_ledger::SealReport`] as JSON.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use recur_ledger::{Ledger, LedgerError, SealReport};

/// Seals read and exported per round.
const SEALS_PER_ROUND_MAX: usize = 1_000;
/// Attempts of one HTTP POST before the round gives up (the next round retries).
pub const HTTP_ATTEMPTS_MAX: u32 = 5;
/// Pause after the first failed POST; doubled after each further failure.
const HTTP_BACKOFF_FIRST_MS: u64 = 500;
/// Longest pause between two attempts.
const HTTP_BACKOFF_MAX_MS: u64 = 8_000;
/// How long one POST may take.
const HTTP_TIMEOUT_MS: u64 = 10_000;
/// How much of the end of an export file is read to find the last seal exported.
const FILE_TAIL_BYTES: u64 = 64 * 1024;
/// How often `recur serve` looks for seals other processes made (its own wake it at once).
pub const POLL_INTERVAL_MS: u64 = 60_000;

/// A `--seal-export` value as given. Parsing never fails (clap would echo the
/// value, and a URL may hold a token); [`SealExport::target`] checks it, and
/// `Debug` shows it without a password.
#[derive(Clone, PartialEq, Eq)]
pub struct SealExport(String);

impl FromStr for SealExport {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.trim().to_owned()))
    }
}

impl std::fmt::Debug for SealExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SealExport")
            .field(&crate::config::redact(&self.0))
            .finish()
    }
}

/// Where seals are exported.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// Append one JSON line per seal to this file.
    File(PathBuf),
    /// POST each seal to this `http://` URL.
    Http(String),
}

impl Target {
    /// The target, safe to print (an URL's password removed).
    pub fn redacted(&self) -> String {
        match self {
            Self::File(path) => format!("file:{}", path.display()),
            Self::Http(url) => crate::config::redact(url),
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl SealExport {
    /// The checked target.
    ///
    /// # Errors
    /// [`SealExportError::Invalid`] for anything but `file:PATH` or `http://…`;
    /// [`SealExportError::Https`] for `https://`.
    pub fn target(&self) -> Result<Target, SealExportError> {
        let value = self.0.as_str();
        if let Some(path) = value.strip_prefix("file:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(SealExportError::Invalid(value.to_owned()));
            }
            return Ok(Target::File(PathBuf::from(path)));
        }
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(SealExportError::Https(crate::config::redact(value)));
        }
        if lower.starts_with("http://") && value.len() > "http://".len() {
            return Ok(Target::Http(value.to_owned()));
        }
        Err(SealExportError::Invalid(crate::config::redact(value)))
    }
}

/// Why seals could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum SealExportError {
    /// Not a target this build knows.
    #[error("seal export target {0:?} is not file:PATH or http://HOST[:PORT]/PATH")]
    Invalid(String),
    /// An `https` target: this build has no TLS.
    #[error(
        "seal export target {0} is https, and recur is built without TLS: export over plain \
         http to a local TLS forwarder, or to file:PATH and ship the file"
    )]
    Https(String),
    /// The export file could not be read or written.
    #[error("seal export file {path}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP target did not take a seal after every attempt.
    #[error("seal export to {url}: seal {seal_no} not accepted after {attempts} attempts: {last}")]
    Http {
        /// The URL, without its password.
        url: String,
        /// The seal that was not exported.
        seal_no: u64,
        /// Attempts made.
        attempts: u32,
        /// The last failure (a status, or the client's error without the URL).
        last: String,
    },
    /// The export file's last seal is not this ledger's seal of that number
    /// (another ledger's file, or a ledger restored from before that seal).
    #[error(
        "seal export file {path}: its seal {seal_no} is not this ledger's (another ledger's file, \
         or this ledger was restored from before it): export to a new file"
    )]
    ForeignFile {
        /// The file.
        path: String,
        /// The seal number it last holds.
        seal_no: u64,
    },
    /// The seals could not be read.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl SealExportError {
    /// A stable code for logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "seal_export_invalid",
            Self::Https(_) => "seal_export_https_unsupported",
            Self::File { .. } => "seal_export_file_failed",
            Self::Http { .. } => "seal_export_http_failed",
            Self::ForeignFile { .. } => "seal_export_file_foreign",
            Self::Ledger(error) => error.code(),
        }
    }
}

/// Exports seals in order, remembering the last one exported.
pub struct Exporter {
    target: Target,
    client: Option<reqwest::Client>,
    /// The last seal number exported (0: none).
    last: u64,
    /// The file's last seal, not yet compared with the ledger's.
    unchecked: Option<SealReport>,
}

impl Exporter {
    /// An exporter that sends seals after number `after`. A file target resumes
    /// after the last seal the file already holds instead (so it ends up with
    /// every seal once, whatever `after` says).
    ///
    /// # Errors
    /// The file exists but cannot be read; the HTTP client cannot be built.
    pub fn new(target: Target, after: u64) -> Result<Self, SealExportError> {
        let (client, unchecked) = match &target {
            Target::File(path) => (None, last_in_file(path)?),
            Target::Http(url) => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_millis(HTTP_TIMEOUT_MS))
                    .build()
                    .map_err(|error| SealExportError::Http {
                        url: crate::config::redact(url),
                        seal_no: 0,
                        attempts: 0,
                        last: error.without_url().to_string(),
                    })?;
                (Some(client), None)
            }
        };
        let last = match (&target, &unchecked) {
            (Target::File(_), Some(seal)) => seal.seal_no,
            (Target::File(_), None) => 0,
            (Target::Http(_), _) => after,
        };
        Ok(Self {
            target,
            client,
            last,
            unchecked,
        })
    }

    /// The last seal number exported (0: none yet).
    pub fn last_exported(&self) -> u64 {
        self.last
    }

    /// Exports every seal after the last one exported, in order; returns how many.
    /// A failure leaves the failed seal to the next call.
    ///
    /// # Errors
    /// The seals cannot be read, the file cannot be written, or the HTTP target
    /// refused a seal [`HTTP_ATTEMPTS_MAX`] times.
    pub async fn export_pending(&mut self, ledger: &Ledger) -> Result<usize, SealExportError> {
        if let Some(seal) = &self.unchecked {
            // Resuming after a seal the file holds only makes sense if it is ours.
            let ours = ledger
                .seals_after(seal.seal_no.saturating_sub(1), 1)
                .await?;
            let same = ours
                .first()
                .is_some_and(|o| o.seal_no == seal.seal_no && o.digest == seal.digest);
            if !same {
                let path = match &self.target {
                    Target::File(path) => path.display().to_string(),
                    Target::Http(url) => crate::config::redact(url),
                };
                return Err(SealExportError::ForeignFile {
                    path,
                    seal_no: seal.seal_no,
                });
            }
            self.unchecked = None;
        }
        let mut exported = 0;
        loop {
            let seals = ledger.seals_after(self.last, SEALS_PER_ROUND_MAX).await?;
            if seals.is_empty() {
                return Ok(exported);
            }
            for seal in seals {
                self.export(&seal).await?;
                self.last = seal.seal_no;
                exported += 1;
            }
        }
    }

    async fn export(&self, seal: &SealReport) -> Result<(), SealExportError> {
        // Only strings and numbers: serialising cannot fail.
        let line = serde_json::to_string(seal).unwrap_or_default();
        match (&self.target, &self.client) {
            (Target::File(path), _) => append_line(path, &line),
            (Target::Http(url), Some(client)) => post(client, url, seal.seal_no, line).await,
            (Target::Http(url), None) => Err(SealExportError::Invalid(crate::config::redact(url))),
        }
    }
}

/// The newest seal's number (0: none).
///
/// # Errors
/// Database errors.
pub async fn newest_seal(ledger: &Ledger) -> Result<u64, LedgerError> {
    Ok(ledger.newest_seal().await?.map_or(0, |seal| seal.seal_no))
}

/// The seal with the highest number among the last lines of an export file.
fn last_in_file(path: &Path) -> Result<Option<SealReport>, SealExportError> {
    let failed = |source| SealExportError::File {
        path: path.display().to_string(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(failed(error)),
    };
    let length = file.metadata().map_err(failed)?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(FILE_TAIL_BYTES)))
        .map_err(failed)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(failed)?;
    // A torn first line (the cut) or last line (a crash mid-write) does not parse and is skipped.
    Ok(String::from_utf8_lossy(&tail)
        .lines()
        .filter_map(|line| serde_json::from_str::<SealReport>(line).ok())
        .max_by_key(|seal| seal.seal_no))
}

/// Appends one line and flushes it to disk: a copy that a crash can lose is no anchor.
fn append_line(path: &Path, line: &str) -> Result<(), SealExportError> {
    let failed = |source| SealExportError::File {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(failed)?;
    // A line torn by a crash gets its end first, so this line stays whole.
    let mut torn = false;
    if file.metadata().map_err(failed)?.len() > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::End(-1)).map_err(failed)?;
        file.read_exact(&mut last).map_err(failed)?;
        torn = last[0] != b'\n';
    }
    let text = if torn {
        format!("\n{line}\n")
    } else {
        format!("{line}\n")
    };
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_data().map_err(failed)
}

/// POSTs one seal; a 2xx answer takes it. Retries with doubling pauses.
async fn post(
    client: &reqwest::Client,
    url: &str,
    seal_no: u64,
    line: String,
) -> Result<(), SealExportError> {
    let mut pause_ms = HTTP_BACKOFF_FIRST_MS;
    let mut last = String::new();
    for attempt in 1..=HTTP_ATTEMPTS_MAX {
        let sent = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(line.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => last = format!("answered {}", response.status()),
            // The client's error names the URL, which may hold a token: drop it.
            Err(error) => last = error.without_url().to_string(),
        }
        tracing::warn!(
            target_url = %crate::config::redact(url),
            seal_no,
            attempt,
            failure = %last,
            "seal export attempt failed"
        );
        if attempt < HTTP_ATTEMPTS_MAX {
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            pause_ms = (pause_ms * 2).min(HTTP_BACKOFF_MAX_MS);
        }
    }
    Err(SealExportError::Http {
        url: crate::config::redact(url),
        seal_no,
        attempts: HTTP_ATTEMPTS_MAX,
        last,
    })
}

/// `recur serve`'s exporter: exports what is pending at start, then after each
/// seal this process makes (the store seals in the background) and every
/// `poll` for seals made elsewhere, until `stop` resolves. Failures are logged
/// and retried on the next round; they never stop the server.
pub async fn run(
    ledger: Ledger,
    mut exporter: Exporter,
    poll: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let sealed = std::sync::Arc::clone(ledger.sealed());
    loop {
        // Registered before exporting, so a seal made meanwhile still wakes us.
        let woken = sealed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match exporter.export_pending(&ledger).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(
                count,
                last_seal = exporter.last_exported(),
                "seals exported"
            ),
            Err(error) => tracing::warn!(
                code = error.code(),
                error = %recur_ledger::Chain(&error),
                "seal export failed; the next round retries"
            ),
        }
        tokio::select! {
            () = &mut stop => return,
            () = &mut woken => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn target(value: &str) -> Result<Target, SealExportError> {
        value.parse::<SealExport>().unwrap().target()
    }

    #[test]
    fn targets_are_a_file_or_plain_http_and_https_is_refused_without_its_password() {
        assert_eq!(
            target("file:/var/lib/recur/seals.jsonl").unwrap(),
            Target::File("/var/lib/recur/seals.jsonl".into())
        );
        assert_eq!(
            target("file:seals.jsonl").unwrap(),
            Target::File("seals.jsonl".into())
        );
        assert!(matches!(
            target("http://127.0.0.1:9000/seals").unwrap(),
            Target::Http(_)
        ));
        let https = target("https://user:hunter2secret@example.com/x").unwrap_err();
        assert_eq!(https.code(), "seal_export_https_unsupported");
        assert!(!https.to_string().contains("hunter2secret"), "{https}");
        for bad in ["", "file:", "ftp://x", "seals.jsonl", "http://"] {
            assert!(target(bad).is_err(), "{bad:?}");
        }
        let debug = format!(
            "{:?}",
            "http://u:hunter2secret@h/p".parse::<SealExport>().unwrap()
        );
        assert!(!debug.contains("hunter2secret"), "{debug}");
    }

    #[test]
    fn a_file_resumes_after_its_highest_seal_and_skips_a_torn_line() {
        let path = std::env::temp_dir().join(format!(
            "recur-seal-export-{}.jsonl",
            uuid::Uuid::new_v4().simple()
        ));
        let last = |path: &Path| last_in_file(path).unwrap().map_or(0, |seal| seal.seal_no);
        assert_eq!(last(&path), 0, "a missing file holds none");
        let line = |no: u64| {
            serde_json::to_string(&SealReport {
                seal_no: no,
                from_position: 0,
                to_position: 1,
                event_count: 1,
                digest: "ab".repeat(32),
                previous_digest: "00".repeat(32),
                sealed_at: time::OffsetDateTime::UNIX_EPOCH,
            })
            .unwrap()
        };
        std::fs::write(&path, format!("{}\n{}\n{{\"seal_no\":9", line(1), line(2))).unwrap();
        assert_eq!(last(&path), 2);
        append_line(&path, &line(3)).unwrap();
        assert_eq!(last(&path), 3, "the torn line did not swallow it");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with(&format!("9\n{}\n", line(3))), "{text}");
        let _ = std::fs::remove_file(&path);
    }
}
