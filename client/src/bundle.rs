//! A tenant's export and import: the two calls, and the YAML file between them (one
//! document per resource, separated by `---`, with a comment header saying what the export
//! is of and what it left out).

use crate::{Client, ClientError, ProblemField, segment};
use serde_json::{Value, json};

/// Why a file could not be read as documents. Names the document (1-based, as counted in
/// the file).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("document {document}: {message}")]
    Syntax { document: usize, message: String },
    #[error("document {document}: expected a resource (a mapping with kind, name and spec)")]
    NotAMapping { document: usize },
    #[error("no documents")]
    Empty,
}

/// The documents of a file and where each was in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Documents {
    pub documents: Vec<Value>,
    /// For each document, its number in the file (1-based; empty documents are skipped).
    pub positions: Vec<usize>,
}

impl Documents {
    /// Reads YAML (or JSON) with one resource per document. A document holding `documents`
    /// (the API's export answer, as JSON or YAML) stands for its documents.
    pub fn parse(text: &str) -> Result<Documents, FileError> {
        let mut out = Documents {
            documents: vec![],
            positions: vec![],
        };
        for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let document = i + 1;
            let value: Value =
                serde::Deserialize::deserialize(de).map_err(|e| FileError::Syntax {
                    document,
                    message: e.to_string(),
                })?;
            match value {
                Value::Null => {}
                Value::Object(mut o) if o.get("documents").is_some_and(Value::is_array) => {
                    if let Some(Value::Array(docs)) = o.remove("documents") {
                        for d in docs {
                            out.documents.push(d);
                            out.positions.push(document);
                        }
                    }
                }
                v @ Value::Object(_) => {
                    out.documents.push(v);
                    out.positions.push(document);
                }
                _ => return Err(FileError::NotAMapping { document }),
            }
        }
        if out.documents.is_empty() {
            return Err(FileError::Empty);
        }
        Ok(out)
    }

    /// A field the API named (`documents[2].spec.port`) as the file's reader knows it:
    /// `document 3: spec.port` (its number in the file, the field within it).
    pub fn locate(&self, field: &str) -> String {
        let Some((index, after)) = document_field(field) else {
            return field.to_owned();
        };
        let at = match self.positions.get(index) {
            Some(&n) if self.positions.iter().filter(|p| **p == n).count() > 1 => {
                format!("document {n}, documents[{index}]")
            }
            Some(n) => format!("document {n}"),
            None => format!("documents[{index}]"),
        };
        if after.is_empty() {
            at
        } else {
            format!("{at}: {after}")
        }
    }

    /// One line per offending field of an import's problem, each naming the document.
    pub fn explain(&self, errors: &[ProblemField]) -> Vec<String> {
        errors
            .iter()
            .map(|e| format!("{}: {}", self.locate(&e.field), e.message))
            .collect()
    }
}

/// A field the API named under `documents[i]`: `i`, and the field within the document
/// (`spec.port`; empty for the document itself).
pub fn document_field(field: &str) -> Option<(usize, &str)> {
    let rest = field.strip_prefix("documents[")?;
    let (index, after) = rest.split_once(']')?;
    let index = index.parse::<usize>().ok()?;
    Some((index, after.strip_prefix('.').unwrap_or(after)))
}

/// An export as a YAML file: a comment header, then one document per resource.
pub fn to_yaml(export: &Value) -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    let s = |k: &str| export.get(k).and_then(Value::as_str).unwrap_or_default();
    out.push_str(&format!(
        "# switchboard export of tenant {:?} at revision {}, {}\n",
        s("tenant"),
        export.get("revision").and_then(Value::as_i64).unwrap_or(0),
        s("exportTime"),
    ));
    out.push_str(&format!("# secrets: {}\n", s("secrets")));
    for note in export
        .get("notes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        out.push_str(&format!("# {}\n", note.replace('\n', " ")));
    }
    for doc in export
        .get("documents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(doc)?);
    }
    Ok(out)
}

impl Client {
    /// `POST /v1/tenants/{tenant}/export`: the export as the API answers it.
    pub async fn export(
        &self,
        tenant: &str,
        passphrase: Option<&str>,
    ) -> Result<Value, ClientError> {
        let body = match passphrase {
            Some(p) => json!({"includeSecrets": true, "passphrase": p}),
            None => json!({}),
        };
        self.post(&format!("/tenants/{}/export", segment(tenant)), &[], &body)
            .await
    }

    /// `POST /v1/tenants/{tenant}/import`: what it did (or would do, `dry_run`).
    pub async fn import(
        &self,
        tenant: &str,
        documents: &Documents,
        passphrase: Option<&str>,
        dry_run: bool,
        prune: bool,
    ) -> Result<Value, ClientError> {
        let mut body = json!({"documents": documents.documents, "prune": prune});
        if let (Some(p), Some(o)) = (passphrase, body.as_object_mut()) {
            o.insert("passphrase".into(), p.into());
        }
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "true")] } else { &[] };
        self.post(
            &format!("/tenants/{}/import", segment(tenant)),
            query,
            &body,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn documents_and_their_places() {
        let text = "# header\n---\nkind: mesh\nname: prod\n---\n---\nkind: service\nmesh: prod\nname: a\nspec: {port: 80}\n";
        let d = Documents::parse(text).unwrap();
        assert_eq!(d.documents.len(), 2);
        assert_eq!(d.positions, [1, 3]);
        assert_eq!(d.locate("documents[1].spec.port"), "document 3: spec.port");
        assert_eq!(d.locate("documents[0]"), "document 1");
        assert_eq!(d.locate("passphrase"), "passphrase");
        assert!(matches!(
            Documents::parse("kind: service\n---\nkind: [").unwrap_err(),
            FileError::Syntax { document: 2, .. }
        ));
        assert_eq!(
            Documents::parse("---\n- a\n").unwrap_err(),
            FileError::NotAMapping { document: 1 }
        );
        assert_eq!(
            Documents::parse("# nothing\n").unwrap_err(),
            FileError::Empty
        );
        // The API's JSON answer stands for its documents.
        let export = json!({"tenant": "acme", "revision": 3, "secrets": "omitted",
            "notes": ["a note"], "documents": [{"kind": "mesh", "name": "prod", "spec": {}}]});
        let yaml = to_yaml(&export).unwrap();
        assert!(yaml.starts_with("# switchboard export of tenant \"acme\" at revision 3"));
        assert!(yaml.contains("# a note\n---\n"));
        let back = Documents::parse(&yaml).unwrap();
        assert_eq!(
            back.documents,
            [json!({"kind": "mesh", "name": "prod", "spec": {}})]
        );
        let from_json = Documents::parse(&export.to_string()).unwrap();
        assert_eq!(from_json.documents, back.documents);
    }
}
