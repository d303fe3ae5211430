//! One stream's `default` certificate over time: issued when the stream first wants it,
//! renewed at about half its life, re-issued soon after the mesh's CA changes signer, and
//! pushed each time without the proxy asking.
//!
//! Each stream has its own task and its own key: a key is never shared between two
//! connections, even of the same node identity, and a stream that ends takes its key with it.
//! The cost is one issuance per stream (a P-256 key and one signature), spread over time by
//! the jitter below, which is small next to what a stream costs otherwise.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use switchboard_runtime::Backoff;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::ca::WorkloadIssuer;
use super::secrets::{NodeSecret, node_secret};

/// Renewal happens at a uniformly random point in this fraction of a certificate's life, so
/// that a fleet that connected at once does not renew at once.
pub const RENEWAL_WINDOW: (f64, f64) = (0.45, 0.55);
/// After the signer changes (CA rotation), each stream re-issues within this delay (uniform),
/// so a fleet does not hit the CA at the same instant.
pub const ROTATION_SPREAD: Duration = Duration::from_secs(5);
/// Never renew sooner than this after issuing, whatever the CA answered.
const MIN_RENEWAL: Duration = Duration::from_secs(1);
/// Retries of a failed issuance: first wait, then doubling (jittered) up to the cap.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What the mesh asks of certificates now (from its snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub lifetime: Duration,
    /// The trust bundle's signer; a certificate of another signer is re-issued.
    pub signer_id: String,
}

/// When to renew a certificate that has `remaining` life left, given a `fraction` drawn from
/// [`RENEWAL_WINDOW`].
pub fn renew_after(remaining: Duration, fraction: f64) -> Duration {
    remaining.mul_f64(fraction).max(MIN_RENEWAL)
}

/// The issuance task of one stream's identity; dropping it stops the task.
#[derive(Debug)]
pub struct Renewal {
    identity: String,
    wanted: watch::Sender<Wanted>,
    issued: watch::Receiver<Option<Arc<NodeSecret>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Renewal {
    /// Starts issuing for `identity` at once, in the current span.
    pub fn start(
        issuer: Arc<dyn WorkloadIssuer>,
        tenant: &str,
        mesh: &str,
        identity: String,
        wanted: Wanted,
    ) -> Self {
        let (wanted_tx, wanted_rx) = watch::channel(wanted);
        let (issued_tx, issued_rx) = watch::channel(None);
        let task = tokio::spawn(
            run(
                issuer,
                tenant.to_owned(),
                mesh.to_owned(),
                identity.clone(),
                wanted_rx,
                issued_tx,
            )
            .instrument(tracing::Span::current()),
        );
        Self {
            identity,
            wanted: wanted_tx,
            issued: issued_rx,
            task,
        }
    }

    /// The SPIFFE ID this task issues for.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Tells the task what the mesh wants now; a change of signer or lifetime re-issues.
    pub fn want(&self, wanted: Wanted) {
        self.wanted.send_if_modified(|w| {
            let changed = *w != wanted;
            *w = wanted;
            changed
        });
    }

    /// Waits for the next certificate.
    pub async fn issued(&mut self) -> Arc<NodeSecret> {
        loop {
            if self.issued.changed().await.is_err() {
                // The task ended (it only does when the runtime stops): nothing more comes.
                return std::future::pending().await;
            }
            if let Some(secret) = self.issued.borrow_and_update().clone() {
                return secret;
            }
        }
    }
}

async fn run(
    issuer: Arc<dyn WorkloadIssuer>,
    tenant: String,
    mesh: String,
    identity: String,
    mut wanted: watch::Receiver<Wanted>,
    issued: watch::Sender<Option<Arc<NodeSecret>>>,
) {
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY).with_jitter();
    loop {
        let want = wanted.borrow_and_update().clone();
        let wait = match issuer.issue(&tenant, &mesh, &identity, want.lifetime).await {
            Ok(cert) => {
                crate::metrics::certificate_issued(&tenant);
                let remaining = cert
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                let secret = node_secret(&identity, &cert);
                drop(cert);
                let wait = if !want.signer_id.is_empty() && secret.info.signer_id != want.signer_id
                {
                    // The CA answered with a signer the mesh no longer uses (a read from
                    // before the rotation): ask again soon.
                    backoff
                        .next_delay()
                        .min(renew_after(remaining, RENEWAL_WINDOW.0))
                } else {
                    backoff.reset();
                    let fraction = rand::rng().random_range(RENEWAL_WINDOW.0..=RENEWAL_WINDOW.1);
                    renew_after(remaining, fraction)
                };
                tracing::info!(
                    serial = %secret.info.serial,
                    signer = %secret.info.signer_id,
                    spiffe_id = %identity,
                    valid_for = ?remaining,
                    renew_in = ?wait,
                    "workload certificate issued"
                );
                issued.send_replace(Some(Arc::new(secret)));
                wait
            }
            Err(e) => {
                crate::metrics::certificate_issue_failed(&tenant);
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, spiffe_id = %identity, retry_in = ?wait, "cannot issue the workload certificate");
                wait
            }
        };
        let deadline = Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *wanted.borrow() != want {
                        let spread = rand::rng().random_range(Duration::ZERO..=ROTATION_SPREAD);
                        tokio::time::sleep(spread).await;
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_at_half_life() {
        let day = Duration::from_secs(86_400);
        assert_eq!(renew_after(day, 0.5), Duration::from_secs(43_200));
        let early = renew_after(day, RENEWAL_WINDOW.0);
        let late = renew_after(day, RENEWAL_WINDOW.1);
        assert!(early < late && late < day);
        // A certificate already expired (or nearly) is not renewed in a tight loop.
        assert_eq!(renew_after(Duration::ZERO, 0.5), MIN_RENEWAL);
    }
}
