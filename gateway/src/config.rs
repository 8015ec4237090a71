//! Typed configuration: defaults, then environment variables, then flags.

use std::path::PathBuf;

/// The embedded default ledger file, in the data directory.
pub const DEFAULT_LEDGER_FILE: &str = "recur.sqlite";

/// Where the ledger lives: an explicit location, else `DATABASE_URL`, else the
/// embedded SQLite file in `RECUR_DATA_DIR` (default: the current directory).
pub fn ledger_location(explicit: Option<&str>) -> String {
    if let Some(location) = explicit.filter(|l| !l.trim().is_empty()) {
        return location.to_owned();
    }
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.trim().is_empty()
    {
        return url;
    }
    let dir = std::env::var_os("RECUR_DATA_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    format!("sqlite:{}", dir.join(DEFAULT_LEDGER_FILE).display())
}

/// A location with any password removed, safe to print.
pub fn redact(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else {
        return location.to_owned();
    };
    let Some((credentials, host)) = rest.split_once('@') else {
        return location.to_owned();
    };
    let user = credentials.split(':').next().unwrap_or("");
    format!("{scheme}://{user}@{host}")
}

#[cfg(test)]
mod tests {
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
    }
}
