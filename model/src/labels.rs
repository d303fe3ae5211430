//! Labels: string pairs on any resource, kept beside its spec (not in it), so that tools can
//! mark what they own without changing what the resource configures. Keys and values follow
//! Kubernetes' rules, which the users of `apply` already know.

use crate::FieldError;
use crate::name::is_dns_label;
use std::collections::BTreeMap;

/// A resource's labels, ordered by key (so their JSON is canonical).
pub type Labels = BTreeMap<String, String>;

/// The label `switchboard apply` puts on every resource it writes, and the only resources
/// `apply --prune` may delete: those carrying it with the value [`MANAGED_BY_APPLY`].
pub const MANAGED_BY: &str = "switchboard.dev/managed-by";
/// The value of [`MANAGED_BY`] on resources that `apply` wrote.
pub const MANAGED_BY_APPLY: &str = "apply";

/// The most labels one resource may carry.
pub const MAX_LABELS: usize = 64;

/// Checks every key and value; `field` is where the labels are (`labels`).
pub fn validate_labels(field: &str, labels: &Labels) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if labels.len() > MAX_LABELS {
        errors.push(FieldError::new(
            field,
            format!("at most {MAX_LABELS} labels, not {}", labels.len()),
        ));
    }
    for (key, value) in labels {
        let at = format!("{field}[{key:?}]");
        if !valid_key(key) {
            errors.push(FieldError::new(
                &at,
                format!(
                    "{key:?} is not a valid label key: an optional DNS subdomain prefix and '/', \
                     then 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a \
                     letter or digit"
                ),
            ));
        }
        if !value.is_empty() && !valid_segment(value) {
            errors.push(FieldError::new(
                &at,
                format!(
                    "{value:?} is not a valid label value: empty, or 1 to 63 letters, digits, \
                     '-', '_' or '.', starting and ending with a letter or digit"
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
    prefix_ok && valid_segment(name)
}

/// 1 to 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn valid_segment(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn keys_and_values() {
        let ok = labels(&[
            (MANAGED_BY, MANAGED_BY_APPLY),
            ("team", ""),
            ("app.kubernetes.io/name", "Payments_v2.1"),
        ]);
        assert!(validate_labels("labels", &ok).is_ok());
        for (k, v) in [
            ("", "x"),
            ("-team", "x"),
            ("Bad.Prefix/x", "x"),
            ("a/b/c", "x"),
            ("team", "-x"),
            ("team", &"v".repeat(64)),
        ] {
            let errors = validate_labels("labels", &labels(&[(k, v)])).unwrap_err();
            assert_eq!(errors.len(), 1, "{k:?}={v:?}");
            assert_eq!(errors[0].field, format!("labels[{k:?}]"));
        }
    }
}
