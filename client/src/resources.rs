//! Reads and deletes of one tenant's resources, and the state of its proxies: the REST
//! paths of each kind (from the model's kind registry) and the documents `get -o yaml`
//! writes, in the very shape `export` writes and `apply` reads.

use crate::{Client, ClientError, segment};
use reqwest::Method;
use serde_json::{Value, json};
use switchboard_model::Kind;

/// What every document says it is (as the API's export writes it).
pub const API_VERSION: &str = "switchboard/v1";

/// A kind as the CLI takes it: its document name (`authorization-policy`) or its REST
/// collection (`authorization-policies`).
pub fn parse_kind(text: &str) -> Option<Kind> {
    let text = text.trim().to_ascii_lowercase();
    Kind::from_plural(&text).or_else(|| serde_json::from_value(Value::String(text.clone())).ok())
}

/// A kind as documents name it (`authorization-policy`).
pub fn document_kind(kind: Kind) -> String {
    match serde_json::to_value(kind) {
        Ok(Value::String(s)) => s,
        _ => kind.plural().to_owned(),
    }
}

/// Where a resource (or, `name` None, its collection) is: `/tenants/t/meshes[/m]` for
/// meshes, `/tenants/t/meshes/m/{plural}[/n]` for the rest.
pub(crate) fn path(tenant: &str, kind: Kind, mesh: &str, name: Option<&str>) -> String {
    let mut p = format!("/tenants/{}/meshes", segment(tenant));
    if kind == Kind::Mesh {
        if let Some(n) = name {
            p.push_str(&format!("/{}", segment(n)));
        }
        return p;
    }
    p.push_str(&format!("/{}/{}", segment(mesh), kind.plural()));
    if let Some(n) = name {
        p.push_str(&format!("/{}", segment(n)));
    }
    p
}

/// A resource as the API shows it (`ResourceView`) as a document:
/// `{apiVersion, kind, mesh, name, labels, spec}` (`labels` when it has some).
pub fn document(kind: Kind, view: &Value) -> Value {
    let mut doc = json!({"apiVersion": API_VERSION, "kind": document_kind(kind)});
    if let Some(o) = doc.as_object_mut() {
        if let Some(mesh) = view.get("mesh").and_then(Value::as_str)
            && !mesh.is_empty()
        {
            o.insert("mesh".into(), mesh.into());
        }
        o.insert("name".into(), view.get("name").cloned().unwrap_or_default());
        if let Some(labels) = view
            .get("labels")
            .filter(|l| l.as_object().is_some_and(|l| !l.is_empty()))
        {
            o.insert("labels".into(), labels.clone());
        }
        o.insert("spec".into(), view.get("spec").cloned().unwrap_or_default());
    }
    doc
}

impl Client {
    /// `GET` one resource: its view (name, revision, etag, times, spec).
    pub async fn get_resource(
        &self,
        tenant: &str,
        kind: Kind,
        mesh: &str,
        name: &str,
    ) -> Result<Value, ClientError> {
        self.send(
            Method::GET,
            &path(tenant, kind, mesh, Some(name)),
            &[],
            None,
        )
        .await
    }

    /// Every resource of `kind` in `mesh` (every mesh for meshes), all pages of it.
    pub async fn list_resources(
        &self,
        tenant: &str,
        kind: Kind,
        mesh: &str,
    ) -> Result<Vec<Value>, ClientError> {
        let p = path(tenant, kind, mesh, None);
        let mut items = vec![];
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("pageSize", "500")];
            if let Some(t) = &token {
                query.push(("pageToken", t.as_str()));
            }
            let page = self.send(Method::GET, &p, &query, None).await?;
            if let Some(Value::Array(a)) = page.get("items") {
                items.extend(a.iter().cloned());
            }
            match page.get("nextPageToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(items),
            }
        }
    }

    /// `DELETE` one resource (a mesh with everything in it).
    pub async fn delete_resource(
        &self,
        tenant: &str,
        kind: Kind,
        mesh: &str,
        name: &str,
    ) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &path(tenant, kind, mesh, Some(name)),
            &[],
            None,
        )
        .await
        .map(drop)
    }

    /// `GET /tenants/t`: the tenant, with its current revision.
    pub async fn tenant(&self, tenant: &str) -> Result<Value, ClientError> {
        self.send(
            Method::GET,
            &format!("/tenants/{}", segment(tenant)),
            &[],
            None,
        )
        .await
    }

    /// Whether the key works: it reads `tenant`, or (for the admin token) the list of
    /// tenants.
    pub async fn check(&self, tenant: Option<&str>) -> Result<(), ClientError> {
        match tenant {
            Some(t) => self.tenant(t).await.map(drop),
            None => self
                .send(Method::GET, "/tenants", &[], None)
                .await
                .map(drop),
        }
    }

    /// `GET …/meshes/m/proxies`: the mesh's proxy streams with their per-type status.
    pub async fn proxies(&self, tenant: &str, mesh: &str) -> Result<Value, ClientError> {
        let p = format!("{}/proxies", path(tenant, Kind::Mesh, "", Some(mesh)));
        self.send(Method::GET, &p, &[], None).await
    }

    /// `GET …/meshes/m/rollout`: whether `revision` (default: the current one) reached
    /// every proxy of the mesh.
    pub async fn rollout(
        &self,
        tenant: &str,
        mesh: &str,
        revision: Option<i64>,
    ) -> Result<Value, ClientError> {
        let p = format!("{}/rollout", path(tenant, Kind::Mesh, "", Some(mesh)));
        let revision = revision.map(|r| r.to_string());
        let query: Vec<(&str, &str)> = revision
            .as_deref()
            .map(|r| vec![("revision", r)])
            .unwrap_or_default();
        self.send(Method::GET, &p, &query, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_paths() {
        assert_eq!(parse_kind("services"), Some(Kind::Service));
        assert_eq!(parse_kind("Service"), Some(Kind::Service));
        assert_eq!(
            parse_kind("authorization-policy"),
            Some(Kind::AuthorizationPolicy)
        );
        assert_eq!(
            parse_kind("authorization-policies"),
            Some(Kind::AuthorizationPolicy)
        );
        assert_eq!(parse_kind("pods"), None);
        assert_eq!(
            document_kind(Kind::AuthorizationPolicy),
            "authorization-policy"
        );
        assert_eq!(
            path("acme", Kind::Mesh, "", Some("prod")),
            "/tenants/acme/meshes/prod"
        );
        assert_eq!(
            path("acme", Kind::Route, "prod", Some("a b")),
            "/tenants/acme/meshes/prod/routes/a%20b"
        );
        let view = json!({"name": "pay", "kind": "service", "mesh": "prod", "revision": 3,
            "etag": "\"3\"", "spec": {"port": 80}});
        assert_eq!(
            document(Kind::Service, &view),
            json!({"apiVersion": "switchboard/v1", "kind": "service", "mesh": "prod",
                "name": "pay", "spec": {"port": 80}})
        );
    }
}
