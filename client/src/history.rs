//! A resource's history, rollbacks of a resource or a whole mesh, and a tenant's audit log.

use crate::resources::path;
use crate::{Client, ClientError, segment};
use reqwest::Method;
use serde_json::{Value, json};
use switchboard_model::Kind;

impl Client {
    /// Up to `limit` entries of a listing at `p` (newest first), page after page.
    async fn newest(
        &self,
        p: &str,
        query: &[(&str, &str)],
        limit: usize,
    ) -> Result<Vec<Value>, ClientError> {
        let mut items = vec![];
        let mut token: Option<String> = None;
        loop {
            let size = (limit - items.len()).clamp(1, 1000).to_string();
            let mut q = query.to_vec();
            q.push(("pageSize", &size));
            if let Some(t) = &token {
                q.push(("pageToken", t.as_str()));
            }
            let page = self.send(Method::GET, p, &q, None).await?;
            if let Some(Value::Array(a)) = page.get("items") {
                items.extend(a.iter().cloned());
            }
            match page.get("nextPageToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && items.len() < limit => token = Some(t.to_owned()),
                _ => return Ok(items),
            }
        }
    }

    /// The revisions of a resource (a mesh's own with `kind` mesh), newest first, at most
    /// `limit`.
    pub async fn history(
        &self,
        tenant: &str,
        kind: Kind,
        mesh: &str,
        name: &str,
        limit: usize,
    ) -> Result<Vec<Value>, ClientError> {
        let p = format!("{}/history", path(tenant, kind, mesh, Some(name)));
        self.newest(&p, &[], limit).await
    }

    /// Writes a resource back to its spec at `to_revision` (deletes it if it did not exist
    /// then); with `dry_run`, only checks.
    pub async fn rollback(
        &self,
        tenant: &str,
        kind: Kind,
        mesh: &str,
        name: &str,
        to_revision: i64,
        dry_run: bool,
    ) -> Result<Value, ClientError> {
        let p = format!("{}/rollback", path(tenant, kind, mesh, Some(name)));
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "true")] } else { &[] };
        self.post(&p, query, &json!({ "toRevision": to_revision }))
            .await
    }

    /// Writes the whole mesh back to revision `to_revision`, in one transaction.
    pub async fn rollback_mesh(
        &self,
        tenant: &str,
        mesh: &str,
        to_revision: i64,
        dry_run: bool,
    ) -> Result<Value, ClientError> {
        let p = format!("{}/rollback", path(tenant, Kind::Mesh, "", Some(mesh)));
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "true")] } else { &[] };
        self.post(&p, query, &json!({ "toRevision": to_revision }))
            .await
    }

    /// The tenant's audit log, newest first, at most `limit` entries: only `mesh`'s, the
    /// `credential`'s, from `since` (RFC 3339) when given.
    pub async fn audit(
        &self,
        tenant: &str,
        mesh: Option<&str>,
        credential: Option<&str>,
        since: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Value>, ClientError> {
        let p = format!("/tenants/{}/audit", segment(tenant));
        let mut query = vec![];
        for (k, v) in [("mesh", mesh), ("credential", credential), ("since", since)] {
            if let Some(v) = v {
                query.push((k, v));
            }
        }
        self.newest(&p, &query, limit).await
    }
}
