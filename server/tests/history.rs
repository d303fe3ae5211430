//! `switchboard history`, `rollback` and `audit` as a user runs them: the real binary against
//! a real `switchboard serve` on 127.0.0.1, on SQLite and on PostgreSQL, with two API keys
//! of different descriptions, and another tenant's key that sees nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;
use switchboard_store::{Backend, both_backends};

const ADMIN: &str = "history-test-admin-token-0123";

use common::{code, err, out};

fn json_out(o: &Output) -> Value {
    code(o, 0);
    serde_json::from_str(&out(o)).unwrap()
}

async fn rest(base: &str, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, body) = common::call(
        &reqwest::Client::new(),
        method,
        &format!("{base}{path}"),
        ADMIN,
        body,
        None,
    )
    .await;
    assert!((200..300).contains(&status), "{path}: {status} {body}");
    body
}

/// An API key of `tenant` with `description`, in a file: (file, id).
async fn key(base: &str, dir: &Path, tenant: &str, description: &str) -> (String, String) {
    let k = rest(
        base,
        Method::POST,
        &format!("/v1/tenants/{tenant}/api-keys"),
        Some(json!({ "description": description })),
    )
    .await;
    let secret = k["secret"].as_str().unwrap();
    switchboard_runtime::leaks::remember("an API key", secret);
    let file = dir.join(format!("{}.key", k["id"].as_str().unwrap()));
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    (
        file.display().to_string(),
        k["id"].as_str().unwrap().to_owned(),
    )
}

fn mesh_file(dir: &Path, name: &str, port: u16, weight: u32) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "kind: mesh\nname: prod\n---\nkind: service\nmesh: prod\nname: pay\nspec:\n  port: {port}\n\
             ---\nkind: service\nmesh: prod\nname: cart\nspec:\n  port: 8081\n---\n\
             kind: route\nmesh: prod\nname: shop\nspec:\n  hostnames: [shop.example]\n  rules:\n  \
             - backends:\n    - service: pay\n      weight: {weight}\n    - service: cart\n      \
             weight: {}\n",
            100 - weight
        ),
    )
    .unwrap();
    path.display().to_string()
}

async fn history_rollback_and_audit_from_the_cli(b: Backend) {
    let Some(db) = switchboard_store::testing::fresh(b).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_key = "66".repeat(32);
    let mut extra = vec!["--admin-token", ADMIN, "--ca-key", &ca_key];
    if b == Backend::Postgres {
        extra.extend(["--database-url", &db.url]);
    }
    let server = common::start(d, &extra, None).await;
    let base = server.rest.clone();
    for t in ["acme", "other"] {
        rest(
            &base,
            Method::POST,
            "/v1/tenants",
            Some(json!({ "name": t })),
        )
        .await;
    }
    let (alice_key, alice) = key(&base, d, "acme", "alice's laptop").await;
    let (ci_key, ci) = key(&base, d, "acme", "CI pipeline").await;
    let (other_key, _) = key(&base, d, "other", "someone else").await;
    let config = d.join("config");
    let run = |args: &[&str]| common::cli(Some(&config), args, None);
    for (ctx, file, tenant) in [
        ("alice", &alice_key, "acme"),
        ("ci", &ci_key, "acme"),
        ("other", &other_key, "acme"),
    ] {
        let o = run(&[
            "login",
            "--context",
            ctx,
            "--api-url",
            &base,
            "--token-file",
            file,
            "--tenant",
            tenant,
            "--mesh",
            "prod",
        ]);
        // The other tenant's key cannot log in to acme: it is written with its own tenant.
        if ctx == "other" {
            code(&o, 1);
            let o = run(&[
                "login",
                "--context",
                ctx,
                "--api-url",
                &base,
                "--token-file",
                file,
                "--tenant",
                "other",
                "--mesh",
                "prod",
            ]);
            code(&o, 0);
        } else {
            code(&o, 0);
        }
    }

    // alice applies a canary at 90/10, CI moves it to 50/50 and the port.
    let first = mesh_file(d, "v1.yaml", 8080, 90);
    code(&run(&["apply", "--context", "alice", "-f", &first]), 0);
    let v1: Vec<Value> = {
        let o = run(&["get", "--context", "alice", "route", "shop", "-o", "json"]);
        let route = json_out(&o);
        let o = run(&["get", "--context", "alice", "service", "pay", "-o", "json"]);
        vec![route, json_out(&o)]
    };
    let n = rest(&base, Method::GET, "/v1/tenants/acme", None).await["revision"]
        .as_i64()
        .unwrap();
    let second = mesh_file(d, "v2.yaml", 9090, 50);
    code(&run(&["apply", "--context", "ci", "-f", &second]), 0);

    // history: a table naming each key, and JSON with the specs.
    let o = run(&["history", "--context", "ci", "route", "shop"]);
    code(&o, 0);
    let table = out(&o);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("REVISION"), "{table}");
    assert!(
        lines[1].contains("update") && lines[1].contains(&format!("{ci} (CI pipeline)")),
        "{table}"
    );
    assert!(
        lines[2].contains("create") && lines[2].contains(&format!("{alice} (alice's laptop)")),
        "{table}"
    );
    let h = json_out(&run(&[
        "history",
        "--context",
        "ci",
        "route",
        "shop",
        "-o",
        "json",
    ]));
    assert_eq!(h["items"][1]["spec"], v1[0]["spec"]);
    let o = run(&["history", "--context", "ci", "route", "shop", "-o", "yaml"]);
    code(&o, 0);
    assert!(out(&o).contains("CI pipeline"), "{}", out(&o));

    // rollback of one resource: the exact spec, as a new revision.
    let o = run(&[
        "rollback",
        "--context",
        "alice",
        "route",
        "shop",
        "--to-revision",
        &n.to_string(),
        "--dry-run",
    ]);
    code(&o, 0);
    let o = run(&["get", "--context", "alice", "route", "shop", "-o", "json"]);
    assert_ne!(
        json_out(&o)["spec"],
        v1[0]["spec"],
        "a dry run writes nothing"
    );
    let o = run(&[
        "rollback",
        "--context",
        "alice",
        "route",
        "shop",
        "--to-revision",
        &n.to_string(),
    ]);
    code(&o, 0);
    assert!(
        out(&o).starts_with(&format!("route prod/shop rolled back to revision {n}")),
        "{}",
        out(&o)
    );
    let o = run(&["get", "--context", "alice", "route", "shop", "-o", "json"]);
    assert_eq!(json_out(&o)["spec"], v1[0]["spec"]);
    let h = json_out(&run(&[
        "history",
        "--context",
        "ci",
        "route",
        "shop",
        "-o",
        "json",
    ]));
    assert_eq!(h["items"][0]["credential"]["id"], alice.as_str());

    // rollback of the mesh: the service's port too, in one revision.
    let before = rest(&base, Method::GET, "/v1/tenants/acme", None).await["revision"]
        .as_i64()
        .unwrap();
    let o = run(&[
        "rollback",
        "--context",
        "ci",
        "mesh",
        "prod",
        "--to-revision",
        &n.to_string(),
    ]);
    code(&o, 0);
    assert!(
        out(&o).contains(&format!("at revision {}", before + 1)),
        "{}",
        out(&o)
    );
    assert!(out(&o).contains("service pay updated"), "{}", out(&o));
    let o = run(&["get", "--context", "ci", "service", "pay", "-o", "json"]);
    assert_eq!(json_out(&o)["spec"], v1[1]["spec"]);
    let o = run(&[
        "rollback",
        "--context",
        "ci",
        "mesh",
        "prod",
        "--to-revision",
        &n.to_string(),
        "-o",
        "json",
    ]);
    assert!(json_out(&o)["revision"].is_null(), "nothing left to change");

    // audit: newest first, each change under its key; by credential.
    let o = run(&["audit", "--context", "alice"]);
    code(&o, 0);
    let audit = out(&o);
    assert!(audit.lines().next().unwrap().starts_with("TIME"), "{audit}");
    assert!(
        audit.lines().nth(1).unwrap().contains("CI pipeline"),
        "{audit}"
    );
    assert!(audit.contains("prod/shop"), "{audit}");
    let a = json_out(&run(&[
        "audit",
        "--context",
        "alice",
        "--credential",
        &alice,
        "-o",
        "json",
    ]));
    let items = a["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(
        items
            .iter()
            .all(|e| e["credential"]["id"] == alice.as_str()),
        "{a}"
    );
    let a = json_out(&run(&[
        "audit",
        "--context",
        "alice",
        "--mesh",
        "prod",
        "--limit",
        "2",
        "-o",
        "json",
    ]));
    assert_eq!(a["items"].as_array().unwrap().len(), 2);

    // Bad input: usage errors exit 2, API errors 1 with one line naming the field.
    for args in [
        vec![
            "rollback",
            "--context",
            "ci",
            "route",
            "shop",
            "--to-revision",
            "-1",
        ],
        vec!["rollback", "--context", "ci", "route", "shop"],
        vec![
            "rollback",
            "--context",
            "ci",
            "widget",
            "shop",
            "--to-revision",
            "1",
        ],
        vec!["history", "--context", "ci", "widget", "shop"],
    ] {
        code(&run(&args), 2);
    }
    let o = run(&[
        "rollback",
        "--context",
        "ci",
        "route",
        "shop",
        "--to-revision",
        "99999",
    ]);
    code(&o, 1);
    assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
    assert!(err(&o).contains("toRevision"), "{}", err(&o));
    let o = run(&["audit", "--context", "ci", "--since", "yesterday"]);
    code(&o, 1);
    assert!(err(&o).contains("since"), "{}", err(&o));

    // Another tenant's key sees neither acme's history nor its audit.
    for args in [
        vec![
            "history",
            "--context",
            "other",
            "--tenant",
            "acme",
            "route",
            "shop",
        ],
        vec!["audit", "--context", "other", "--tenant", "acme"],
        vec![
            "rollback",
            "--context",
            "other",
            "--tenant",
            "acme",
            "mesh",
            "prod",
            "--to-revision",
            "1",
        ],
    ] {
        let o = run(&args);
        code(&o, 1);
        assert!(err(&o).contains("not found"), "{}", err(&o));
    }
    let a = json_out(&run(&["audit", "--context", "other", "-o", "json"]));
    assert!(
        a["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["mesh"] != "prod"),
        "{a}"
    );
}
both_backends!(history_cli, history_rollback_and_audit_from_the_cli);
