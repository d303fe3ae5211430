//! The change log and commit notices.

use crate::{Change, ChangeOp, Store, StoreError};
use sqlx::Row;
use sqlx::postgres::PgListener;
use std::time::Duration;
use switchboard_model::Kind;
use switchboard_runtime::Backoff;

/// Announced after a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `tenant` committed `revision`.
    Committed { tenant: String, revision: i64 },
    /// `tenant` revoked the credential `id`: streams and sessions holding it must end.
    Revoked { tenant: String, id: String },
    /// Notices may have been lost (the PostgreSQL listener reconnected): re-check revisions.
    Resync,
}

/// The NOTIFY payload of a notice: `{tenant}:{revision}` or `{tenant}:revoked:{id}`
/// (tenant names are DNS labels and credential ids hex, so `:` cannot occur in them).
pub(crate) fn encode_notice(notice: &Notice) -> Option<String> {
    match notice {
        Notice::Committed { tenant, revision } => Some(format!("{tenant}:{revision}")),
        Notice::Revoked { tenant, id } => Some(format!("{tenant}:revoked:{id}")),
        Notice::Resync => None,
    }
}

fn decode_notice(payload: &str) -> Option<Notice> {
    let mut parts = payload.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(tenant), Some(rev), None, None) => Some(Notice::Committed {
            tenant: tenant.into(),
            revision: rev.parse().ok()?,
        }),
        (Some(tenant), Some("revoked"), Some(id), None) if !id.is_empty() => {
            Some(Notice::Revoked {
                tenant: tenant.into(),
                id: id.into(),
            })
        }
        _ => None,
    }
}

/// Announces `notice` to every replica: a NOTIFY inside the transaction `tx` on PostgreSQL
/// (delivered on commit, to this replica too). On SQLite there is one replica, and the
/// caller sends to [`Store::notices`] after committing.
pub(crate) async fn notify_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    notice: &Notice,
) -> Result<(), StoreError> {
    let Some(payload) = encode_notice(notice) else {
        return Ok(());
    };
    // The payload holds only DNS labels, digits and hex (checked by the callers' inputs),
    // and quotes are doubled anyway.
    sqlx::query(&format!(
        "NOTIFY {}, '{}'",
        crate::NOTIFY_CHANNEL,
        payload.replace('\'', "''")
    ))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Listens on PostgreSQL and forwards notices; reconnects with backoff, then says `Resync`.
pub(crate) fn spawn_pg_listener(store: Store) {
    let weak = std::sync::Arc::downgrade(&store.inner);
    let url = store.url().to_string();
    let tx = store.notices().clone();
    drop(store);
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut first = true;
        loop {
            if weak.strong_count() == 0 {
                return;
            }
            let listener = async {
                let mut l = PgListener::connect(&url).await?;
                // A lost connection is reported (`Ok(None)`) rather than re-established
                // inside `try_recv`, which the poll's timeout below would cancel every second
                // while the database is down, and which would then come back listening
                // without ever reporting the loss: no `Resync`, and the notices of the gap
                // lost. This loop reconnects instead, then says `Resync`.
                l.eager_reconnect(false);
                l.listen(crate::NOTIFY_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            }
            .await;
            let mut listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for store changes; retrying (hint: is PostgreSQL reachable?)");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            backoff.reset();
            if !first {
                let _ = tx.send(Notice::Resync);
            }
            first = false;
            loop {
                // Poll with a timeout so the task ends soon after the last Store handle drops.
                match tokio::time::timeout(Duration::from_secs(1), listener.try_recv()).await {
                    Err(_) => {
                        if weak.strong_count() == 0 {
                            return;
                        }
                    }
                    Ok(Ok(Some(n))) => match decode_notice(n.payload()) {
                        Some(notice) => {
                            let _ = tx.send(notice);
                        }
                        None => tracing::warn!(
                            payload = n.payload(),
                            "ignoring malformed change notice"
                        ),
                    },
                    // The connection was lost: notices may be gone. Connect again here
                    // rather than through the listener's own reconnect, so that `Resync` is
                    // said once listening again: said now, while the database may still be
                    // down, a reload could fail and the notices of writes committed before
                    // the listener was back would be lost for good.
                    Ok(Ok(None)) => {
                        tracing::warn!("store change listener lost its connection; reconnecting");
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "store change listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    });
}

impl Store {
    /// What the tenant's revisions after `since` changed, oldest first (at most `limit`).
    /// [`StoreError::Compacted`] when changes after `since` were already pruned.
    pub async fn changes_since(
        &self,
        tenant: &str,
        since: i64,
        limit: u32,
    ) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, mesh, kind, name, op, time FROM changes WHERE tenant = $1 AND revision > $2 \
             ORDER BY revision, mesh, kind, name LIMIT $3",
        )
        .bind(tenant)
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        // Read after the rows: a prune committed in between shows here, so rows it removed
        // are never taken for a complete log (at worst a complete read is refused).
        let pruned_through = self.changes_pruned_through(tenant).await?;
        if since < pruned_through {
            return Err(StoreError::Compacted {
                since,
                pruned_through,
            });
        }
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                let op: String = r.try_get("op")?;
                Ok(Change {
                    revision: r.try_get("revision")?,
                    mesh: r.try_get("mesh")?,
                    kind: Kind::from_plural(&kind)
                        .ok_or_else(|| StoreError::Corrupt(format!("kind {kind:?}")))?,
                    name: r.try_get("name")?,
                    op: if op == "delete" {
                        ChangeOp::Delete
                    } else {
                        ChangeOp::Put
                    },
                    time: r.try_get("time")?,
                })
            })
            .collect()
    }

    /// The revision after which the tenant's change log is complete (0: nothing pruned; an
    /// unknown tenant has no log to prune either).
    async fn changes_pruned_through(&self, tenant: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT changes_pruned_through FROM tenants WHERE name = $1")
            .bind(tenant)
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(r) => r.try_get("changes_pruned_through")?,
            None => 0,
        })
    }

    /// Starts pruning the change log of revisions older than `retention`, now and then every
    /// tenth of it (between 10 s and 10 min). Call once, inside a Tokio runtime; the task
    /// ends soon after the last handle of the store is dropped.
    pub fn spawn_change_pruning(&self, retention: Duration) -> tokio::task::JoinHandle<()> {
        self.spawn_pruning(retention, "the change log", |store, before| async move {
            store.prune_changes(before).await
        })
    }

    /// Runs `prune` with the time `retention` ago (Unix ms), now and then every tenth of
    /// `retention` (between 10 s and 10 min), logging what it removed from `what`. The task
    /// ends soon after the last handle of the store is dropped.
    pub(crate) fn spawn_pruning<F, Fut>(
        &self,
        retention: Duration,
        what: &'static str,
        prune: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Store, i64) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<u64, StoreError>> + Send,
    {
        let weak = std::sync::Arc::downgrade(&self.inner);
        let every = (retention / 10).clamp(Duration::from_secs(10), Duration::from_secs(600));
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let before = crate::now_ms().saturating_sub(retention_ms);
                match prune(Store { inner }, before).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "pruned {what}"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune {what}; will retry"),
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Removes the changes of every revision committed before `before_ms` (Unix ms), whole
    /// revisions at a time, and records per tenant how far the log was pruned. Returns how
    /// many changes were removed. Safe to run on several replicas at once.
    pub async fn prune_changes(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.prune_by_tenant(
            "changes",
            "changes_pruned_through",
            before_ms,
            |tenant, through| {
                sqlx::query("DELETE FROM changes WHERE tenant = $1 AND revision <= $2")
                    .bind(tenant)
                    .bind(through)
            },
        )
        .await
    }

    /// Prunes `table` (the change log or the history) tenant by tenant: for each tenant with
    /// rows written before `before_ms`, one transaction under the write turn raises
    /// `tenants.{pruned_through}` to the newest such revision and runs the query `delete`
    /// makes of the tenant and that revision. Returns how many rows the deletes removed.
    pub(crate) async fn prune_by_tenant<F>(
        &self,
        table: &'static str,
        pruned_through: &'static str,
        before_ms: i64,
        delete: F,
    ) -> Result<u64, StoreError>
    where
        F: for<'q> Fn(
            &'q str,
            i64,
        ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    {
        let rows = sqlx::query(&format!(
            "SELECT tenant, MAX(revision) AS through FROM {table} WHERE time < $1 GROUP BY tenant"
        ))
        .bind(before_ms)
        .fetch_all(self.pool())
        .await?;
        let mut removed = 0;
        for row in rows {
            let tenant: String = row.try_get("tenant")?;
            let through: i64 = row.try_get("through")?;
            let turn = self.write_turn().await;
            let mut tx = self.pool().begin().await?;
            sqlx::query(&format!(
                "UPDATE tenants SET {pruned_through} = $2 \
                 WHERE name = $1 AND {pruned_through} < $2"
            ))
            .bind(&tenant)
            .bind(through)
            .execute(&mut *tx)
            .await?;
            let done = delete(&tenant, through).execute(&mut *tx).await?;
            tx.commit().await?;
            drop(turn);
            removed += done.rows_affected();
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_roundtrip() {
        for notice in [
            Notice::Committed {
                tenant: "acme".into(),
                revision: 42,
            },
            Notice::Revoked {
                tenant: "acme".into(),
                id: "0123abcd".into(),
            },
        ] {
            let payload = encode_notice(&notice).unwrap();
            assert_eq!(decode_notice(&payload), Some(notice));
        }
        assert_eq!(encode_notice(&Notice::Resync), None);
        assert_eq!(decode_notice("garbage"), None);
        assert_eq!(decode_notice("acme:x"), None);
        assert_eq!(decode_notice("acme:revoked:"), None);
        assert_eq!(decode_notice("acme:revoked:a:b"), None);
    }
}
