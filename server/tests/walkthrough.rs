//! The README's walkthrough, run as it stands: its first `sh` block is read from README.md and
//! run by bash (`-eu -o pipefail`) against a real `switchboard serve`, in a directory holding
//! a copy of `examples/`, with the test's `switchboard` binary first on `PATH`. One line is
//! changed: `API=…`, to the port this test's server listens on. Then what it should have done
//! is checked through the REST API, on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use switchboard_store::{Backend, both_backends};

/// The first ```sh block after the `## Walkthrough` heading.
fn walkthrough_block(readme: &str) -> String {
    let section = readme
        .split_once("\n## Walkthrough\n")
        .expect("README has a Walkthrough section")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("the Walkthrough has a sh block")
        .1;
    block
        .split_once("```\n")
        .expect("the sh block ends")
        .0
        .to_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

async fn the_readme_walkthrough(b: Backend) {
    let Some(db) = switchboard_store::testing::fresh(b).await else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = walkthrough_block(&readme);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    copy_dir(&root.join("examples"), &d.join("examples"));
    let ca_key = "77".repeat(32);
    let mut extra = vec!["--ca-key", &ca_key];
    if b == Backend::Postgres {
        extra.extend(["--database-url", &db.url]);
    }
    // No --admin-token: serve generates one into data/admin-token, as on a fresh machine.
    let server = common::start(d, &extra, None).await;

    let api_line = "API=http://127.0.0.1:8080\n";
    assert!(block.starts_with(api_line), "{block}");
    let script = block.replacen(api_line, &format!("API={}\n", server.rest), 1);
    let bin_dir = Path::new(common::BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("bash")
        .args(["-eu", "-o", "pipefail", "-c", &script])
        .current_dir(d)
        .env("PATH", path)
        .env("SWITCHBOARD_CONFIG", d.join("config"))
        .env_remove("SWITCHBOARD_TOKEN")
        .env_remove("SWITCHBOARD_API_URL")
        .env_remove("SWITCHBOARD_TENANT")
        .env_remove("SWITCHBOARD_CONTEXT")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "the walkthrough failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        o.status
    );
    println!("{stdout}\n{stderr}");
    for line in [
        "service prod/payments created",
        "route prod/payments created",
        "gateway prod/edge created",
        "route prod/checkout updated",
        "gateway prod/edge deleted",
        "service prod/web deleted",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line}\n{stdout}");
    }
    assert!(stdout.contains("--- live/route/prod/checkout"), "{stdout}");
    assert!(stdout.contains("diff exit 3: changes to apply"), "{stdout}");
    assert!(
        stdout.contains("plan exit 3: Envoy resources would change"),
        "{stdout}"
    );
    assert!(stdout.contains("~ RouteConfiguration checkout"), "{stdout}");

    // What the mesh holds now, read with the API key the walkthrough made.
    let key = std::fs::read_to_string(d.join("acme.key")).unwrap();
    let key = key.trim();
    assert!(key.starts_with("sbk_"), "{key}");
    switchboard_runtime::leaks::remember("the walkthrough's API key", key);
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let url = format!("{}/v1/tenants/acme/meshes/prod{path}", server.rest);
        let http = http.clone();
        async move { common::call(&http, Method::GET, &url, key, None, None).await }
    };
    let (status, route) = get("/routes/checkout").await;
    assert_eq!(status, 200, "{route}");
    // Rolled back to revision 3: 90/10 again, as a new revision, by the walkthrough's key.
    assert_eq!(
        route["spec"]["rules"][1]["backends"],
        json!([{"service": "checkout-v1", "weight": 90}, {"service": "checkout-v2", "weight": 10}])
    );
    assert_eq!(route["revision"], 6, "{route}");
    let (status, history) = get("/routes/checkout/history").await;
    assert_eq!(status, 200, "{history}");
    let weights: Vec<(i64, Value)> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["revision"].as_i64().unwrap(),
                h["spec"]["rules"][1]["backends"][0]["weight"].clone(),
            )
        })
        .collect();
    assert!(weights.contains(&(3, json!(90))), "{history}");
    assert!(weights.contains(&(4, json!(50))), "{history}");
    assert!(weights.contains(&(6, json!(90))), "{history}");
    assert_eq!(
        route["labels"],
        json!({"switchboard.dev/managed-by": "apply"})
    );
    for gone in [
        "/gateways/edge",
        "/routes/storefront",
        "/services/web",
        "/endpoints/web-1",
    ] {
        assert_eq!(get(gone).await.0, 404, "{gone}");
    }
    let (_, services) = get("/services").await;
    let names: Vec<&str> = services["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect::<Vec<_>>();
    assert_eq!(names, ["checkout-v1", "checkout-v2", "payments"]);
    drop(server);
}
both_backends!(the_readme_walkthrough_, the_readme_walkthrough);
