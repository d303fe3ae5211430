//! Small checks shared by the specs. Each pushes a `FieldError` naming the field it was given.

use crate::FieldError;

/// Collects errors while walking a spec; `at` builds nested field paths.
#[derive(Default)]
pub(crate) struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn port(&mut self, field: &str, port: u32) {
        if !(1..=65535).contains(&port) {
            self.push(
                field,
                format!("port {port} is out of range: use 1 to 65535"),
            );
        }
    }

    pub fn range(&mut self, field: &str, value: u32, min: u32, max: u32) {
        if value < min || value > max {
            self.push(
                field,
                format!("{value} is out of range: use {min} to {max}"),
            );
        }
    }

    pub fn reference(&mut self, field: &str, name: &str) {
        if let Err(e) = crate::validate_name(field, name) {
            self.0.push(e);
        }
    }

    /// RE2 is what Envoy and gRPC compile; the `regex` crate's syntax is the same family (no
    /// backreferences, no look-around), so a pattern it rejects would be NACKed later.
    pub fn regex(&mut self, field: &str, pattern: &str) {
        if pattern.is_empty() {
            self.push(field, "regex must not be empty");
            return;
        }
        if pattern.len() > 1024 {
            self.push(field, "regex is longer than 1024 characters");
            return;
        }
        if let Err(e) = regex_syntax::Parser::new().parse(pattern) {
            let msg = e.to_string();
            let last = msg.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            self.push(
                field,
                format!("{pattern:?} is not a valid RE2 regex: {}", last.trim()),
            );
        }
    }

    /// Header names as HTTP defines them (a token), lowercase as HTTP/2 requires.
    pub fn header_name(&mut self, field: &str, name: &str) {
        if name.starts_with(':') {
            const PSEUDO: [&str; 5] = [":authority", ":method", ":path", ":scheme", ":status"];
            if !PSEUDO.contains(&name) {
                self.push(field, format!("{name:?} is not a known pseudo-header"));
            }
            return;
        }
        if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.push(field, format!("{name:?} is not a valid HTTP header name"));
        } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.push(field, format!("{name:?} must be lowercase"));
        }
    }

    /// A header that may be set or removed by a route: not a pseudo-header and not `host`,
    /// which Envoy refuses to mutate.
    pub fn mutable_header(&mut self, field: &str, name: &str) {
        let before = self.0.len();
        self.header_name(field, name);
        if self.0.len() == before && (name.starts_with(':') || name == "host") {
            self.push(field, format!("{name:?} cannot be modified by a route"));
        }
    }

    pub fn header_value(&mut self, field: &str, value: &str) {
        if http::HeaderValue::from_str(value).is_err() {
            self.push(field, "header value has characters HTTP does not allow");
        }
    }

    /// A host name as a route or gateway claims it: DNS labels separated by dots, optionally
    /// starting with `*.` and ending with `:port` (proxyless gRPC targets carry the port).
    pub fn hostname(&mut self, field: &str, host: &str) {
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        };
        if let Some(p) = port {
            match p.parse::<u32>() {
                Ok(p) if (1..=65535).contains(&p) => {}
                _ => {
                    self.push(field, format!("{host:?} has an invalid port"));
                    return;
                }
            }
        }
        let name = name.strip_prefix("*.").unwrap_or(name);
        let ok = !name.is_empty() && name.len() <= 253 && name.split('.').all(crate::is_dns_label);
        if !ok {
            self.push(
                field,
                format!(
                    "{host:?} is not a valid hostname: use lowercase DNS labels separated by \
                     dots, optionally starting with \"*.\" and ending with \":port\""
                ),
            );
        }
    }

    pub fn into_result(self) -> Result<(), crate::ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(crate::ValidationErrors(self.0))
        }
    }
}
