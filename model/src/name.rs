//! Resource names are DNS-1123 labels, so they can appear in xDS resource names, SPIFFE IDs and
//! host names without escaping.

use crate::FieldError;

/// True for a DNS-1123 label: 1 to 63 characters of `a-z`, `0-9` and `-`, starting and ending
/// with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Checks a resource name and says what is wrong with it.
pub fn validate_name(field: &str, name: &str) -> Result<(), FieldError> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{name:?} is not a valid name: use 1 to 63 lowercase letters, digits or '-', \
                 starting and ending with a letter or digit"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "payments", "a-1", "0abc", &"x".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64), "ä"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
