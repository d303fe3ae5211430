//! Ends a stream when the credential that admitted it expires.
//!
//! A JWT proxy token is checked against its `exp` when the stream opens, and a client
//! certificate against its notAfter; a stream must not outlive them. Like revocation, each
//! stream selects on one future ([`Expiry::reached`]): a timer set once at admission, no
//! polling.

use std::pin::Pin;
use std::time::SystemTime;

use tokio::time::{Instant, Sleep};

/// Which kind of credential expires (for the message that ends the stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiring {
    /// A JWT proxy token, at its `exp`.
    Jwt,
    /// A client certificate, at its notAfter.
    ClientCertificate,
}

impl Expiring {
    /// The status that ends a stream whose credential expired: the client should reconnect
    /// with a fresh one.
    pub fn status(self) -> tonic::Status {
        tonic::Status::unauthenticated(match self {
            Expiring::Jwt => {
                "token expired, reconnect with a fresh token: the JWT proxy token of this stream \
                 reached its exp"
            }
            Expiring::ClientCertificate => {
                "client certificate expired, reconnect with a renewed certificate: the \
                 certificate of this stream reached its notAfter"
            }
        })
    }
}

/// When (wall clock) and what expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: SystemTime,
    pub what: Expiring,
}

/// A stream's expiry timer; never fires for a credential that does not expire.
#[derive(Debug)]
pub(crate) struct Expiry {
    timer: Option<(Pin<Box<Sleep>>, Expiring)>,
}

impl Expiry {
    /// A timer for `deadline`, measured from now on tokio's clock (one conversion from the
    /// wall clock, at admission).
    pub(crate) fn new(deadline: Option<Deadline>) -> Self {
        let timer = deadline.map(|d| {
            let left = d.at.duration_since(SystemTime::now()).unwrap_or_default();
            (
                Box::pin(tokio::time::sleep_until(Instant::now() + left)),
                d.what,
            )
        });
        Self { timer }
    }

    /// Resolves with the kind of credential once it has expired; never without a deadline.
    pub(crate) async fn reached(&mut self) -> Expiring {
        match &mut self.timer {
            Some((sleep, what)) => {
                sleep.as_mut().await;
                *what
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_and_not_before() {
        let at = SystemTime::now() + Duration::from_secs(30);
        let mut expiry = Expiry::new(Some(Deadline {
            at,
            what: Expiring::Jwt,
        }));
        let early = tokio::time::timeout(Duration::from_secs(29), expiry.reached()).await;
        assert!(early.is_err(), "fired before the deadline");
        let on_time = tokio::time::timeout(Duration::from_secs(2), expiry.reached()).await;
        assert_eq!(on_time, Ok(Expiring::Jwt));
    }

    #[tokio::test(start_paused = true)]
    async fn a_past_deadline_fires_at_once_and_none_never() {
        let mut past = Expiry::new(Some(Deadline {
            at: SystemTime::now() - Duration::from_secs(5),
            what: Expiring::ClientCertificate,
        }));
        let r = tokio::time::timeout(Duration::from_millis(1), past.reached()).await;
        assert_eq!(r, Ok(Expiring::ClientCertificate));
        let mut never = Expiry::new(None);
        let r = tokio::time::timeout(Duration::from_secs(3600 * 24 * 365), never.reached()).await;
        assert!(r.is_err());
    }

    #[test]
    fn messages_say_to_reconnect_with_a_fresh_credential() {
        let s = Expiring::Jwt.status();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert!(
            s.message()
                .starts_with("token expired, reconnect with a fresh token")
        );
        let s = Expiring::ClientCertificate.status();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert!(s.message().contains("renewed certificate"));
    }
}
