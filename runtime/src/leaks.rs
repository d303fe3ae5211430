//! (feature `testing`) The suite's check that no secret reaches a log: every test that runs
//! a binary or captures its own tracing output scans what was logged for PEM private keys,
//! proxy tokens (`sbp_…`), API keys (`sbk_…`), generated admin tokens (`sba_…`), JWTs, and the secrets the tests created
//! themselves ([`remember`]: the admin token, the CA key-encryption key …). A hit names the
//! log and the line, never the secret.

use std::path::Path;
use std::sync::Mutex;

/// Secrets this test process created, with what they are: any log of any test may hold none
/// of them.
static KNOWN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Shorter values would match ordinary text by chance.
const MIN_KNOWN_LEN: usize = 12;

/// Remembers a secret a test created (`what` says what it is, for the failure message).
pub fn remember(what: &str, secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_KNOWN_LEN {
        return;
    }
    let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    if !known.iter().any(|(_, s)| s == secret) {
        known.push((what.to_owned(), secret.to_owned()));
    }
}

/// One log line that holds a secret: its 1-based number and what kind of secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub line: usize,
    pub what: String,
}

/// Every line of `text` that holds a secret.
pub fn find_leaks(text: &str) -> Vec<Leak> {
    let known = KNOWN.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut leaks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut hit = |what: &str| {
            leaks.push(Leak {
                line: i + 1,
                what: what.to_owned(),
            })
        };
        if line.contains("PRIVATE KEY-----") {
            hit("a PEM private key block");
        }
        if has_token(line, "sbp_") {
            hit("a proxy token (sbp_…)");
        }
        if has_token(line, "sbk_") {
            hit("an API key (sbk_…)");
        }
        if has_token(line, "sba_") {
            hit("an admin token (sba_…)");
        }
        if has_jwt(line) {
            hit("a JWT");
        }
        for (what, secret) in &known {
            if line.contains(secret.as_str()) {
                hit(what);
            }
        }
    }
    leaks
}

/// The leaks in the log file at `path`, as a message naming the file and lines; `Ok` when
/// there are none (or no file: a process that never started logged nothing).
pub fn check_log(path: &Path) -> Result<(), String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(());
    };
    let leaks = find_leaks(&String::from_utf8_lossy(&bytes));
    if leaks.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = leaks
        .iter()
        .take(20)
        .map(|l| format!("  {}:{}: {}", path.display(), l.line, l.what))
        .collect();
    Err(format!(
        "{} log line(s) hold a secret:\n{}",
        leaks.len(),
        lines.join("\n")
    ))
}

/// Fails the test when the log at `path` holds a secret. Called from a `Drop`, it only
/// reports when the test is already failing (a second panic would abort the run).
pub fn assert_no_leaks(path: &Path) {
    if let Err(message) = check_log(path) {
        if std::thread::panicking() {
            eprintln!("{message}");
        } else {
            panic!("{message}");
        }
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// `prefix` followed by at least 16 token characters (a bare mention of the prefix, as in a
/// help text, is no secret).
fn has_token(line: &str, prefix: &str) -> bool {
    line.match_indices(prefix).any(|(at, _)| {
        line.as_bytes()[at + prefix.len()..]
            .iter()
            .take_while(|b| is_token_char(**b))
            .count()
            >= 16
    })
}

/// Three base64url segments joined by dots, the first starting `eyJ` (`{"` encoded).
fn has_jwt(line: &str) -> bool {
    line.match_indices("eyJ").any(|(at, _)| {
        let rest = &line.as_bytes()[at..];
        let mut segments = 0;
        let mut i = 0;
        loop {
            let len = rest[i..].iter().take_while(|b| is_token_char(**b)).count();
            if len < 2 {
                return false;
            }
            segments += 1;
            i += len;
            if segments == 3 {
                return true;
            }
            if rest.get(i) != Some(&b'.') {
                return false;
            }
            i += 1;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whats(text: &str) -> Vec<(usize, String)> {
        find_leaks(text)
            .into_iter()
            .map(|l| (l.line, l.what))
            .collect()
    }

    #[test]
    fn finds_each_kind_of_secret_by_line() {
        remember("admin token", "leaks-test-admin-token-0123");
        let text = "clean line\n\
             -----BEGIN PRIVATE KEY-----\n\
             token=sbp_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n\
             key sbk_0123456789abcdef0123 and sba_0123456789abcdef0123\n\
             authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlX2J5dGVz\n\
             admin leaks-test-admin-token-0123 here\n\
             -----BEGIN EC PRIVATE KEY-----";
        assert_eq!(
            whats(text),
            [
                (2, "a PEM private key block".to_owned()),
                (3, "a proxy token (sbp_…)".to_owned()),
                (4, "an API key (sbk_…)".to_owned()),
                (4, "an admin token (sba_…)".to_owned()),
                (5, "a JWT".to_owned()),
                (6, "admin token".to_owned()),
                (7, "a PEM private key block".to_owned()),
            ]
        );
    }

    #[test]
    fn mentions_and_public_material_are_no_leak() {
        let text = "proxy tokens start with sbp_, API keys with sbk_, admin tokens sba_\n\
             -----BEGIN CERTIFICATE-----\n\
             MIIBszCCAVmgAwIBAgIUeyJ0\n\
             a JSON eyJ0eXAiOiJKV1QifQ of one segment, eyJ.x.y too short\n\
             serial 4f:2a, spiffe://acme.switchboard.local/mesh/prod/service/web";
        assert_eq!(whats(text), []);
        remember("short", "abc");
        assert_eq!(whats("abc"), []);
    }

    #[test]
    fn a_log_file_is_named_with_the_line_but_not_the_secret() {
        let dir = std::env::temp_dir().join(format!("leaks-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.log");
        let secret = "sbp_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";
        std::fs::write(&path, format!("ok\nstream token {secret}\n")).unwrap();
        let message = check_log(&path).unwrap_err();
        assert!(message.contains("x.log:2: a proxy token"), "{message}");
        assert!(!message.contains(secret), "{message}");
        assert_eq!(check_log(&dir.join("missing.log")), Ok(()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
