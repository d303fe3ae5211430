//! Graceful behaviour of the built binary on PostgreSQL, over real sockets: a database
//! outage (the test stops its own cluster) and SIGTERM's drain, alone and as a rolling
//! restart of three replicas.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::pg::OwnPg;
use common::{Server, call};
use reqwest::Method as M;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_runtime::eventually_within;
use switchboard_xds_proto::type_url::CLUSTER;
use switchboard_xds_server::testing::{AdsClient, node};
use tokio::sync::mpsc;

const ADMIN: &str = "graceful-test-admin-token";

/// The flags of a replica on `db` (replicas sharing a database share the CA key).
fn flags<'a>(db: &'a str, drain: &'a str) -> Vec<&'a str> {
    vec![
        "--database-url",
        db,
        "--admin-token",
        ADMIN,
        "--ca-key",
        "4242424242424242424242424242424242424242424242424242424242424242",
        "--drain-period",
        drain,
        "--log-level",
        "info",
    ]
}

/// Tenant `acme`, mesh `prod` (anonymous xDS allowed), service `pay`; returns a proxy token.
async fn setup(c: &reqwest::Client, rest: &str) -> String {
    let v1 = format!("{rest}/v1");
    let (s, body) = call(
        c,
        M::POST,
        &format!("{v1}/tenants"),
        ADMIN,
        Some(json!({"name": "acme"})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let m = format!("{v1}/tenants/acme/meshes/prod");
    let mesh = json!({"spec": {"allowUnauthenticatedXds": true}});
    assert_eq!(call(c, M::PUT, &m, ADMIN, Some(mesh), None).await.0, 200);
    put_service(c, rest, "pay").await;
    let (s, pt) = call(
        c,
        M::POST,
        &format!("{v1}/tenants/acme/proxy-tokens"),
        ADMIN,
        Some(json!({"mesh": "prod"})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{pt}");
    pt["secret"].as_str().unwrap().to_owned()
}

async fn put_service(c: &reqwest::Client, rest: &str, name: &str) {
    let (s, body) = call(
        c,
        M::PUT,
        &format!("{rest}/v1/tenants/acme/meshes/prod/services/{name}"),
        ADMIN,
        Some(json!({"spec": {"port": 8080, "protocol": "grpc"}})),
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
}

/// The cluster names of a CDS response.
fn clusters(resp: &switchboard_xds_proto::DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = resp
        .resources
        .iter()
        .map(|any| {
            let c: switchboard_xds_proto::Cluster = switchboard_xds_proto::unpack(any).unwrap();
            c.name
        })
        .collect();
    names.sort();
    names
}

async fn ready_status(c: &reqwest::Client, server: &Server) -> u16 {
    c.get(format!("{}/readyz", server.admin))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_keeps_xds_serving_and_rest_answers_503_then_resumes() {
    let Some(pg) = OwnPg::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path(), &flags(&pg.url, "2s"), None).await;
    let c = reqwest::Client::new();
    let token = setup(&c, &server.rest).await;
    let (s, pt) = call(
        &c,
        M::POST,
        &format!("{}/v1/tenants/acme/proxy-tokens", server.rest),
        ADMIN,
        Some(json!({"mesh": "prod"})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{pt}");
    let unused = pt["secret"].as_str().unwrap().to_owned();

    // A stream admitted before the outage.
    let mut before =
        AdsClient::connect(&server.xds_url(), node("acme", "prod", "n1"), Some(&token))
            .await
            .unwrap();
    before.subscribe(CLUSTER, &[]).await.unwrap();
    let first = before.recv_and_ack(&[]).await.unwrap();
    assert_eq!(clusters(&first), ["pay"]);

    pg.stop();

    // A write: 503, problem+json, Retry-After, within the store's bound (not a hang).
    let asked = Instant::now();
    let resp = c
        .put(format!(
            "{}/v1/tenants/acme/meshes/prod/services/late",
            server.rest
        ))
        .bearer_auth(ADMIN)
        .json(&json!({"spec": {"port": 8080}}))
        .send()
        .await
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:switchboard:problem:store-unavailable",
        "{problem}"
    );
    println!("REST write during the outage: 503 after {took:?}");
    assert!(
        took < switchboard_store::ACQUIRE_TIMEOUT * 2,
        "the 503 took {took:?}, beyond the store's bound of {:?}",
        switchboard_store::ACQUIRE_TIMEOUT
    );
    // A read that needs the database too.
    let (s, _) = call(
        &c,
        M::GET,
        &format!("{}/v1/tenants/acme", server.rest),
        ADMIN,
        None,
        None,
    )
    .await;
    assert_eq!(s, 503);

    // Still ready: it holds the mesh's snapshot.
    assert_eq!(ready_status(&c, &server).await, 200);

    // A new stream is served the last snapshot from memory (anonymous: the mesh allows it,
    // and nothing needs the database).
    let mut during = AdsClient::connect(&server.xds_url(), node("acme", "prod", "n2"), None)
        .await
        .unwrap();
    during.subscribe(CLUSTER, &[]).await.unwrap();
    let got = during.recv_and_ack(&[]).await.unwrap();
    assert_eq!(clusters(&got), ["pay"]);

    // The proxy token verified before the outage is admitted from this replica's memory.
    let mut known = AdsClient::connect(&server.xds_url(), node("acme", "prod", "n3"), Some(&token))
        .await
        .unwrap();
    known.subscribe(CLUSTER, &[]).await.unwrap();
    assert_eq!(clusters(&known.recv_and_ack(&[]).await.unwrap()), ["pay"]);
    // One it never verified: UNAVAILABLE with a clear message, in bounded time.
    let asked = Instant::now();
    let refused = async {
        let mut c =
            AdsClient::connect(&server.xds_url(), node("acme", "prod", "n4"), Some(&unused))
                .await?;
        c.subscribe(CLUSTER, &[]).await?;
        c.recv().await
    }
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("unreachable"), "{refused:?}");
    assert!(asked.elapsed() < switchboard_store::ACQUIRE_TIMEOUT * 2);

    pg.start_again();

    // Writes are accepted again once the pool reconnects, and reach both streams (the one
    // admitted before the outage never ended).
    eventually_within(
        Duration::from_secs(30),
        "a write accepted after the outage",
        || {
            let (c, rest) = (c.clone(), server.rest.clone());
            async move {
                let (s, _) = call(
                    &c,
                    M::PUT,
                    &format!("{rest}/v1/tenants/acme/meshes/prod/services/after"),
                    ADMIN,
                    Some(json!({"spec": {"port": 8080}})),
                    None,
                )
                .await;
                (s == 200).then_some(())
            }
        },
    )
    .await;
    for client in [&mut before, &mut during, &mut known] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let resp = client.recv().await.unwrap();
            client.ack(&resp, &[]).await.unwrap();
            if clusters(&resp) == ["after", "pay"] {
                break;
            }
            assert!(Instant::now() < deadline, "{:?}", clusters(&resp));
        }
    }
    assert_eq!(ready_status(&c, &server).await, 200);
}

/// One xDS stream's life as the rolling test sees it.
#[derive(Debug)]
enum Event {
    /// Connected to `url` (and got its first response) at `at`.
    Connected { id: usize, url: String, at: Instant },
    /// Received (and ACKed) the clusters.
    Clusters { id: usize, names: Vec<String> },
    /// The stream ended at `at`.
    Ended { id: usize, at: Instant },
}

/// Keeps one ADS stream (on a connection of its own) open on one of the `live` replicas,
/// chosen at random as a load balancer would, reconnecting when it ends, until dropped.
async fn keep_streaming(
    id: usize,
    token: String,
    live: Arc<Mutex<Vec<String>>>,
    events: mpsc::UnboundedSender<Event>,
) {
    use rand::Rng;
    loop {
        let url = {
            let live = live.lock().unwrap();
            live[rand::rng().random_range(0..live.len())].clone()
        };
        let connected = async {
            let mut c =
                AdsClient::connect(&url, node("acme", "prod", &format!("n{id}")), Some(&token))
                    .await?;
            c.subscribe(CLUSTER, &[]).await?;
            let first = c.recv_and_ack(&[]).await?;
            Ok::<_, tonic::Status>((c, first))
        };
        let (mut client, first) = match connected.await {
            Ok(ok) => ok,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = events.send(Event::Connected {
            id,
            url: url.clone(),
            at: Instant::now(),
        });
        let _ = events.send(Event::Clusters {
            id,
            names: clusters(&first),
        });
        loop {
            match client.recv_within(Duration::from_secs(3600)).await {
                None => continue,
                Some(Ok(resp)) => {
                    let _ = client.ack(&resp, &[]).await;
                    let _ = events.send(Event::Clusters {
                        id,
                        names: clusters(&resp),
                    });
                }
                Some(Err(_)) => {
                    let _ = events.send(Event::Ended {
                        id,
                        at: Instant::now(),
                    });
                    break;
                }
            }
        }
    }
}

/// Where each stream is and what it last received, from the events so far.
#[derive(Default)]
struct Streams {
    on: BTreeMap<usize, String>,
    names: BTreeMap<usize, Vec<String>>,
    connected: Vec<Instant>,
    ended: Vec<Instant>,
}

impl Streams {
    fn take(&mut self, e: Event) {
        match e {
            Event::Connected { id, url, at } => {
                self.on.insert(id, url);
                self.connected.push(at);
            }
            Event::Clusters { id, names } => {
                self.names.insert(id, names);
            }
            Event::Ended { id, at } => {
                self.on.remove(&id);
                self.ended.push(at);
            }
        }
    }
}

/// The share of `times` (after `from`) in each tenth of `period`, as a printable row.
fn spread(times: &[Instant], from: Instant, period: Duration) -> [usize; 11] {
    let mut tenths = [0usize; 11];
    for t in times.iter().filter(|t| **t >= from) {
        let tenth = (t.duration_since(from).as_secs_f64() / period.as_secs_f64() * 10.0) as usize;
        tenths[tenth.min(10)] += 1;
    }
    tenths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_a_replica_and_its_clients_move_to_another() {
    let Some(db) = switchboard_store::testing::fresh(switchboard_store::Backend::Postgres).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let drain = Duration::from_secs(4);
    let mut a = common::start(dir.path(), &flags(&db.url, "4s"), None).await;
    let b = common::start(dir.path(), &flags(&db.url, "4s"), None).await;
    let c = reqwest::Client::new();
    let token = setup(&c, &a.rest).await;

    // Ten streams on A, each on a connection of its own; they fall back to B.
    let live = Arc::new(Mutex::new(vec![a.xds_url()]));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..10)
        .map(|id| tokio::spawn(keep_streaming(id, token.clone(), live.clone(), tx.clone())))
        .collect();
    let mut streams = Streams::default();
    while streams.on.len() < 10 {
        streams.take(rx.recv().await.unwrap());
    }
    *live.lock().unwrap() = vec![b.xds_url()];

    // An in-flight REST request: a long poll that answers after 2 s.
    let (_, tenant) = call(
        &c,
        M::GET,
        &format!("{}/v1/tenants/acme", a.rest),
        ADMIN,
        None,
        None,
    )
    .await;
    let since = tenant["revision"].as_i64().unwrap();
    let poll = {
        let url = format!("{}/v1/tenants/acme/changes?since={since}&wait=2s", a.rest);
        let c = c.clone();
        tokio::spawn(async move {
            c.get(url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let term = Instant::now();
    a.signal("TERM");
    // Readiness fails at once, and the ports stop accepting.
    eventually_within(Duration::from_secs(2), "readiness to fail", || {
        let (c, admin) = (c.clone(), a.admin.clone());
        async move {
            let r = c.get(format!("{admin}/readyz")).send().await.ok()?;
            (r.status() == 503).then_some(())
        }
    })
    .await;
    eventually_within(
        Duration::from_secs(2),
        "the xDS port to stop accepting",
        || {
            let addr = a.xds_addr.clone();
            async move {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .is_err()
                    .then_some(())
            }
        },
    )
    .await;

    // The in-flight request completes.
    assert_eq!(poll.await.unwrap().unwrap(), 200);
    // Every stream ends within the drain period, and all reconnect to B.
    let status = a.exited_within(drain + Duration::from_secs(5)).await;
    let exited = term.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let b_url = b.xds_url();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(streams.ended.len() >= 10
        && streams.on.len() == 10
        && streams.on.values().all(|u| *u == b_url))
    {
        let e = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
        streams.take(e.expect("streams did not all move to replica B").unwrap());
    }
    let last_end = streams.ended.iter().max().unwrap().duration_since(term);
    println!(
        "SIGTERM: exited 0 after {exited:?}; streams ended over {last_end:?}, by tenths of the \
         drain period: {:?}",
        spread(&streams.ended, term, drain)
    );
    assert!(
        last_end <= drain + Duration::from_millis(500),
        "{last_end:?}"
    );

    // Nothing lost: a write through B reaches every moved stream.
    put_service(&c, &b.rest, "after").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !streams.names.values().all(|n| n == &["after", "pay"]) {
        let e = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
        streams.take(e.expect("the write did not reach every stream").unwrap());
    }
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_moves_every_stream_to_a_live_replica_spread_over_the_drain() {
    const STREAMS: usize = 200;
    let Some(db) = switchboard_store::testing::fresh(switchboard_store::Backend::Postgres).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let drain = Duration::from_secs(5);
    let fl = flags(&db.url, "5s");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(common::start(dir.path(), &fl, None).await);
    }
    let c = reqwest::Client::new();
    let token = setup(&c, &replicas[0].rest).await;
    let live = Arc::new(Mutex::new(
        replicas.iter().map(Server::xds_url).collect::<Vec<_>>(),
    ));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..STREAMS)
        .map(|id| tokio::spawn(keep_streaming(id, token.clone(), live.clone(), tx.clone())))
        .collect();
    let mut streams = Streams::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while streams.on.len() < STREAMS {
        let e = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
        streams.take(e.expect("not every stream connected").unwrap());
    }

    // Replace each replica in turn, as a Deployment's rolling update does: start the new one,
    // take the old one out of the load balancer, SIGTERM it, wait for it to exit.
    for i in 0..3 {
        let fresh = common::start(dir.path(), &fl, None).await;
        let old = std::mem::replace(&mut replicas[i], fresh);
        *live.lock().unwrap() = replicas.iter().map(Server::xds_url).collect();
        let mut old = old;
        let held = streams.on.values().filter(|u| **u == old.xds_url()).count();
        let (ended_before, connected_before) = (streams.ended.len(), streams.connected.len());
        let term = Instant::now();
        old.signal("TERM");
        let status = old.exited_within(drain + Duration::from_secs(10)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "replica {i}: {status:?}"
        );
        let old_url = old.xds_url();
        let deadline = Instant::now() + Duration::from_secs(30);
        while streams.on.len() < STREAMS || streams.on.values().any(|u| *u == old_url) {
            let e = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
            streams.take(
                e.expect("streams did not all move off the stopped replica")
                    .unwrap(),
            );
        }
        let ends = spread(&streams.ended[ended_before..], term, drain);
        let reconnects = spread(&streams.connected[connected_before..], term, drain);
        println!(
            "rolling restart, replica {i}: {held} streams; ends by tenth of the {drain:?} drain: \
             {ends:?}; reconnects: {reconnects:?}"
        );
        // Spread, not a storm: the stopping replica closes its connections over the drain
        // period, no tenth of it (nor its first) taking more than half of them.
        assert!(ends[0] * 2 <= held, "replica {i}: {ends:?} of {held}");
        assert!(
            ends[..10].iter().all(|n| n * 2 <= held),
            "replica {i}: {ends:?} of {held} connections closed in one tenth of the drain"
        );
    }

    // Every stream is on a live replica and converges on a new write.
    let live_urls: Vec<String> = live.lock().unwrap().clone();
    assert!(streams.on.values().all(|u| live_urls.contains(u)));
    put_service(&c, &replicas[0].rest, "after").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !streams.names.values().all(|n| n == &["after", "pay"]) || streams.names.len() < STREAMS {
        let e = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
        streams.take(e.expect("the write did not reach every stream").unwrap());
    }
    for t in tasks {
        t.abort();
    }
}
