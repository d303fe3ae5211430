//! `switchboard export` and `switchboard import` against a real `switchboard serve` (on
//! SQLite and on PostgreSQL): a tenant with every kind exported to YAML with its secrets
//! encrypted, imported into a fresh tenant, exported again with the same documents; a bad
//! file (a bad field in the third document, a wrong passphrase) exits 1 naming the file,
//! the document and the field, and changes nothing; bad usage exits 2. The server's log is
//! scanned for the passphrase and every key (`common::Server`'s drop).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;
use switchboard_store::{Backend, both_backends};

const ADMIN: &str = "backup-test-admin-token-0123";
const PASSPHRASE: &str = "correct horse battery staple";

/// Runs the CLI with `args` against `api` (token from `token_file`), `stdin` fed in.
fn cli(args: &[&str], stdin: Option<&str>) -> Output {
    common::cli(None, args, stdin)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The documents of a YAML export, without their secrets.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|de| serde::Deserialize::deserialize(de).unwrap())
        .filter(|v: &Value| !v.is_null())
        .map(|mut v: Value| {
            v.as_object_mut().unwrap().remove("secret");
            v
        })
        .collect()
}

struct Rest<'a> {
    http: reqwest::Client,
    base: &'a str,
}

impl Rest<'_> {
    async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, body) = common::call(
            &self.http,
            method,
            &format!("{}{path}", self.base),
            token,
            body,
            None,
        )
        .await;
        assert!((200..300).contains(&status), "{path}: {status} {body}");
        body
    }

    /// A tenant and its API key, written to a file in `dir`.
    async fn tenant(&self, dir: &Path, name: &str) -> String {
        self.call(
            Method::POST,
            "/v1/tenants",
            ADMIN,
            Some(json!({"name": name})),
        )
        .await;
        let k = self
            .call(
                Method::POST,
                &format!("/v1/tenants/{name}/api-keys"),
                ADMIN,
                Some(json!({})),
            )
            .await;
        let file = dir.join(format!("{name}.key"));
        std::fs::write(&file, format!("{}\n", k["secret"].as_str().unwrap())).unwrap();
        file.display().to_string()
    }

    async fn revision(&self, tenant: &str) -> i64 {
        self.call(Method::GET, &format!("/v1/tenants/{tenant}"), ADMIN, None)
            .await["revision"]
            .as_i64()
            .unwrap()
    }

    async fn put(&self, path: &str, spec: Value) {
        self.call(
            Method::PUT,
            &format!("/v1/tenants/acme/meshes/{path}"),
            ADMIN,
            Some(json!({"spec": spec})),
        )
        .await;
    }
}

async fn export_and_import_with_the_cli(b: Backend) {
    let Some(db) = switchboard_store::testing::fresh(b).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_key = "44".repeat(32);
    let mut extra = vec!["--admin-token", ADMIN, "--ca-key", &ca_key];
    if b == Backend::Postgres {
        extra.extend(["--database-url", &db.url]);
    }
    switchboard_runtime::leaks::remember("export passphrase", PASSPHRASE);
    let server = common::start(dir.path(), &extra, None).await;
    let rest = Rest {
        http: reqwest::Client::new(),
        base: &server.rest,
    };
    let acme = rest.tenant(dir.path(), "acme").await;
    rest.put("prod", json!({"mtls": {"mode": "permissive"}}))
        .await;
    rest.put(
        "prod/services/payments",
        json!({"protocol": "http", "port": 8080}),
    )
    .await;
    rest.put(
        "prod/endpoints/payments-1",
        json!({"service": "payments", "address": "10.0.0.1", "port": 8080}),
    )
    .await;
    rest.put("prod/routes/pay", json!({"hostnames": ["pay.example.com"], "rules": [{"backends": [{"service": "payments"}]}]}))
        .await;
    rest.put(
        "prod/authorization-policies/p",
        json!({"service": "payments", "action": "allow", "from": [{"anyAuthenticated": true}]}),
    )
    .await;
    let (chain, key) = common::tls::server_certificate("pay.example.com");
    rest.put(
        "prod/certificates/shop",
        json!({"certificateChain": chain, "privateKey": key}),
    )
    .await;
    rest.put(
        "prod/gateways/edge",
        json!({"port": 8443, "routes": ["pay"], "tls": {"certificates": ["shop"]}}),
    )
    .await;
    let pass = dir.path().join("passphrase");
    std::fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    let pass = pass.display().to_string();
    let file = dir.path().join("acme.yaml");
    let file_s = file.display().to_string();
    let api = ["--api-url", server.rest.as_str()];

    let o = cli(
        &[
            &[
                "export",
                "--tenant",
                "acme",
                "--include-secrets",
                "--passphrase-file",
                &pass,
                "-o",
                &file_s,
                "--token-file",
                &acme,
            ][..],
            &api[..],
        ]
        .concat(),
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("exported 7 documents of tenant \"acme\""),
        "{}",
        stderr(&o)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let yaml = std::fs::read_to_string(&file).unwrap();
    assert!(
        yaml.starts_with("# switchboard export of tenant \"acme\""),
        "{yaml}"
    );
    assert!(yaml.contains("# secrets: encrypted"), "{yaml}");
    assert!(
        !yaml.contains("PRIVATE KEY") && yaml.contains("sbx1:"),
        "{yaml}"
    );
    let original = documents(&yaml);
    assert_eq!(original.len(), 7);

    // Into a fresh tenant, then exported again: the same documents.
    let copy = rest.tenant(dir.path(), "copy").await;
    let o = cli(
        &[
            &[
                "import",
                "--tenant",
                "copy",
                "-f",
                &file_s,
                "--passphrase-file",
                &pass,
                "--token-file",
                &copy,
            ][..],
            &api[..],
        ]
        .concat(),
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("7 created"), "{}", stderr(&o));
    let o = cli(
        &[
            &["export", "--tenant", "copy", "--token-file", &copy][..],
            &api[..],
        ]
        .concat(),
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let plain = String::from_utf8(o.stdout).unwrap();
    assert!(plain.contains("# secrets: omitted"), "{plain}");
    assert!(
        !plain.contains("sbx1:") && !plain.contains("PRIVATE KEY"),
        "{plain}"
    );
    assert_eq!(documents(&plain), original);

    // A dry run from standard input: nothing written.
    let revision = rest.revision("copy").await;
    let o = cli(
        &[
            &[
                "import",
                "--tenant",
                "copy",
                "-f",
                "-",
                "--dry-run",
                "--passphrase-file",
                &pass,
                "--token-file",
                &copy,
            ][..],
            &api[..],
        ]
        .concat(),
        Some(&yaml),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("dry run of <stdin>"), "{}", stderr(&o));
    assert!(stderr(&o).contains("7 unchanged"), "{}", stderr(&o));

    // A bad field in the third document (after the header: the mesh, the service, the
    // certificate): exit 1, one line naming the file, the document and the field.
    let mut docs: Vec<String> = yaml.split("\n---\n").map(str::to_owned).collect();
    assert!(
        docs[3].starts_with("apiVersion: switchboard/v1\nkind: certificate"),
        "{}",
        docs[3]
    );
    docs[3] = docs[3].replace("\nspec:\n", "\nspec:\n  colour: red\n");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, docs.join("\n---\n")).unwrap();
    let bad_s = bad.display().to_string();
    let o = cli(
        &[
            &[
                "import",
                "--tenant",
                "copy",
                "-f",
                &bad_s,
                "--passphrase-file",
                &pass,
                "--token-file",
                &copy,
            ][..],
            &api[..],
        ]
        .concat(),
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let line = stderr(&o);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with(&format!("switchboard import: {bad_s}: document 3: spec")),
        "{line}"
    );
    assert!(line.contains("colour"), "{line}");

    // A wrong passphrase: the first document's CA key does not open.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase at all").unwrap();
    let o = cli(
        &[
            &[
                "import",
                "--tenant",
                "copy",
                "-f",
                &file_s,
                "--passphrase-file",
                &wrong.display().to_string(),
                "--token-file",
                &copy,
            ][..],
            &api[..],
        ]
        .concat(),
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("document 1: secret.ca.privateKey: does not decrypt"),
        "{}",
        stderr(&o)
    );
    assert_eq!(rest.revision("copy").await, revision, "nothing written");

    // Bad usage: exit 2.
    let o = cli(
        &[&["export", "--tenant", "acme"][..], &api[..]].concat(),
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--token-file"), "{}", stderr(&o));
    let o = cli(&["import", "-f", &file_s], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = cli(
        &[
            &[
                "export",
                "--tenant",
                "acme",
                "--include-secrets",
                "--token-file",
                &acme,
            ][..],
            &api[..],
        ]
        .concat(),
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    drop(server);
}
both_backends!(
    export_and_import_with_the_cli_,
    export_and_import_with_the_cli
);
