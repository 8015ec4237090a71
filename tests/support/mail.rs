//! The test SMTP server (aiosmtpd with scripts/smtp/sink.py, which
//! scripts/test.sh starts) and the emails it stored, for the tests that send
//! dunning messages.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The test SMTP server's URL and the folder it stores emails in, or a loud
/// failure saying how to get one.
pub fn smtp_server() -> (String, PathBuf) {
    let (Ok(url), Ok(dir)) = (
        std::env::var("RECUR_TEST_SMTP_URL"),
        std::env::var("RECUR_TEST_SMTP_DIR"),
    ) else {
        panic!(
            "RECUR_TEST_SMTP_URL and RECUR_TEST_SMTP_DIR are not set: run scripts/test.sh, which \
             starts it (aiosmtpd with scripts/smtp/sink.py), or start one yourself: \
             python3 -m venv /tmp/smtp && /tmp/smtp/bin/pip install aiosmtpd==1.4.6 && \
             /tmp/smtp/bin/python scripts/smtp/sink.py --port 2525 --dir /tmp/mail & \
             export RECUR_TEST_SMTP_URL=smtp://127.0.0.1:2525 RECUR_TEST_SMTP_DIR=/tmp/mail"
        )
    };
    (url, PathBuf::from(dir))
}

/// A header of a raw email (folded lines unfolded), if present.
pub fn header(raw: &str, name: &str) -> Option<String> {
    let head = raw.split("\r\n\r\n").next().unwrap();
    head.replace("\r\n ", " ")
        .replace("\r\n\t", " ")
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
}

/// The stored emails whose `Message-ID` (`<{id}@recur>`, the dunning
/// message's id) is one of `ids`: (id, raw message), as many as arrived (the
/// folder is shared with other tests).
pub fn emails_for(dir: &Path, ids: &BTreeSet<uuid::Uuid>) -> Vec<(uuid::Uuid, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        let raw = std::fs::read_to_string(&path).unwrap();
        let Some(value) = header(&raw, "Message-ID") else {
            continue;
        };
        let Some(id) = value
            .trim()
            .strip_prefix('<')
            .and_then(|v| v.strip_suffix("@recur>"))
            .and_then(|v| v.parse::<uuid::Uuid>().ok())
        else {
            continue;
        };
        if ids.contains(&id) {
            found.push((id, raw));
        }
    }
    found
}
