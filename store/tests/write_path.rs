//! The write path's own guarantees, on SQLite and on PostgreSQL: the references and claims
//! a write records follow every update (they are rewritten only when they change), a spec
//! with more references than one statement reads is checked whole, concurrent writers of a
//! tenant each get their own revision, and the change log records the commit time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::collections::BTreeSet;
use switchboard_model::{Kind, Spec};
use switchboard_store::testing::store;
use switchboard_store::{
    Backend, ResourceKey, Store, StoreError, StoredResource, WriteOptions, both_backends,
};

async fn setup(backend: Backend) -> Option<(Store, switchboard_store::testing::TestDb)> {
    let (s, db) = store(backend).await?;
    s.create_tenant("acme", &json!({}), false).await.unwrap();
    put(&s, Kind::Mesh, "prod", json!({})).await.unwrap();
    Some((s, db))
}

async fn put(
    s: &Store,
    kind: Kind,
    name: &str,
    spec: serde_json::Value,
) -> Result<StoredResource, StoreError> {
    let parsed = Spec::parse(kind, spec).unwrap();
    parsed.validate().unwrap();
    s.put_spec("acme", "prod", name, &parsed, &WriteOptions::default())
        .await
}

async fn delete(s: &Store, kind: Kind, name: &str) -> Result<StoredResource, StoreError> {
    let key = ResourceKey::new("acme", "prod", kind, name);
    s.delete(&key, &WriteOptions::default()).await
}

/// A route claiming `hosts`, with one rule per backend service.
fn route(hosts: &[String], services: &[String]) -> serde_json::Value {
    let rules: Vec<_> = services
        .iter()
        .map(|s| json!({"backends": [{"service": s}]}))
        .collect();
    json!({"hostnames": hosts, "rules": rules})
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

async fn edges_follow_every_update(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    for svc in ["a", "b", "c"] {
        put(&s, Kind::Service, svc, json!({"port": 80}))
            .await
            .unwrap();
    }
    let h1 = vec!["one.example".to_owned()];
    let h2 = vec!["two.example".to_owned()];
    let svcs = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    put(&s, Kind::Route, "r", route(&h1, &svcs(&["a", "b"])))
        .await
        .unwrap();
    // New backends, the same host name: the references move, the claim stays.
    put(&s, Kind::Route, "r", route(&h1, &svcs(&["b", "c"])))
        .await
        .unwrap();
    delete(&s, Kind::Service, "a").await.unwrap();
    assert!(matches!(
        delete(&s, Kind::Service, "c").await,
        Err(StoreError::Referenced { .. })
    ));
    let err = put(&s, Kind::Route, "other", route(&h1, &svcs(&["b"])))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Claimed { owner, .. } if owner == "r"),
        "{err}"
    );
    // The same spec again changes no edge, and keeps them all.
    put(&s, Kind::Route, "r", route(&h1, &svcs(&["b", "c"])))
        .await
        .unwrap();
    assert!(matches!(
        delete(&s, Kind::Service, "b").await,
        Err(StoreError::Referenced { .. })
    ));
    // A new host name: the old one is free, the new one taken.
    put(&s, Kind::Route, "r", route(&h2, &svcs(&["b", "c"])))
        .await
        .unwrap();
    put(&s, Kind::Route, "other", route(&h1, &svcs(&["b"])))
        .await
        .unwrap();
    let err = put(&s, Kind::Route, "third", route(&h2, &svcs(&["b"])))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Claimed { owner, .. } if owner == "r"),
        "{err}"
    );
    // Fewer references and another host name: what it let go can be taken or deleted.
    let h3 = vec!["three.example".to_owned()];
    put(&s, Kind::Route, "r", route(&h3, &svcs(&["b"])))
        .await
        .unwrap();
    delete(&s, Kind::Service, "c").await.unwrap();
    put(&s, Kind::Route, "third", route(&h2, &svcs(&["b"])))
        .await
        .unwrap();
}
both_backends!(edges_follow_every_update_, edges_follow_every_update);

/// More references and claims than one statement reads (200 of each).
async fn a_write_with_many_references(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let services = names("svc", 620);
    let hosts: Vec<String> = names("host", 620)
        .into_iter()
        .map(|h| format!("{h}.example"))
        .collect();
    for svc in &services[..619] {
        put(&s, Kind::Service, svc, json!({"port": 80}))
            .await
            .unwrap();
    }
    // The last service is missing: its reference, read by the second statement, dangles.
    let err = put(&s, Kind::Route, "big", route(&hosts, &services))
        .await
        .unwrap_err();
    match err {
        StoreError::DanglingReference { field, name, .. } => {
            assert_eq!(name, "svc-0619");
            assert_eq!(field, "spec.rules[619].backends[0].service");
        }
        e => panic!("{e}"),
    }
    put(&s, Kind::Service, &services[619], json!({"port": 80}))
        .await
        .unwrap();
    // A claim read by the second statement is held by another route.
    put(
        &s,
        Kind::Route,
        "small",
        route(&hosts[600..601], &services[..1]),
    )
    .await
    .unwrap();
    let err = put(&s, Kind::Route, "big", route(&hosts, &services))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Claimed { owner, field, .. }
            if owner == "small" && field == "spec.hostnames[600]"),
        "{err}"
    );
    delete(&s, Kind::Route, "small").await.unwrap();
    put(&s, Kind::Route, "big", route(&hosts, &services))
        .await
        .unwrap();
    // Every reference was recorded: none of the services can go.
    for svc in [&services[0], &services[499], &services[500], &services[619]] {
        assert!(
            matches!(
                delete(&s, Kind::Service, svc).await,
                Err(StoreError::Referenced { .. })
            ),
            "{svc}"
        );
    }
    // Nor can any host name be claimed again.
    let err = put(
        &s,
        Kind::Route,
        "again",
        route(&hosts[619..], &services[..1]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, StoreError::Claimed { owner, .. } if owner == "big"),
        "{err}"
    );
}
both_backends!(a_write_with_many_references_, a_write_with_many_references);

/// Writers of one tenant at once: each write gets its own revision, the revisions follow one
/// another without a gap, and the change log names each write once, at its revision.
async fn concurrent_writes_get_their_own_revisions(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    const WRITERS: usize = 8;
    const EACH: usize = 15;
    let before = s.revision("acme").await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..EACH {
                let name = format!("w{w}-{i}");
                let stored = put(&s, Kind::Service, &name, json!({"port": 80}))
                    .await
                    .unwrap();
                revisions.push((stored.revision, name));
            }
            revisions
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let revisions = t.await.unwrap();
        // One writer's writes are committed in the order it made them.
        assert!(revisions.windows(2).all(|p| p[0].0 < p[1].0));
        all.extend(revisions);
    }
    all.sort();
    let expected: Vec<i64> = (1..=(WRITERS * EACH) as i64).map(|i| before + i).collect();
    assert_eq!(all.iter().map(|(r, _)| *r).collect::<Vec<_>>(), expected);
    let logged: Vec<(i64, String)> = s
        .changes_since("acme", before, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.revision, c.name))
        .collect();
    assert_eq!(logged, all);
    let distinct: BTreeSet<_> = all.iter().map(|(_, n)| n).collect();
    assert_eq!(distinct.len(), WRITERS * EACH);
}
both_backends!(
    concurrent_writes_get_their_own_revisions_,
    concurrent_writes_get_their_own_revisions
);

/// The change log's `time` is the commit time by the writer's wall clock (Unix ms).
async fn the_change_log_records_the_commit_time(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let since = s.revision("acme").await.unwrap();
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let started = unix_ms();
    put(&s, Kind::Service, "a", json!({"port": 80}))
        .await
        .unwrap();
    let committed = unix_ms();
    let changes = s.changes_since("acme", since, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert!(
        (started..=committed).contains(&changes[0].time),
        "{} not in {started}..={committed}",
        changes[0].time
    );
}
both_backends!(
    the_change_log_records_the_commit_time_,
    the_change_log_records_the_commit_time
);

/// Holds the tenant's write lock from a connection of its own, so that the store's writes
/// line up behind it: the first waits for the lock in a group of its own, the others queue
/// and are then committed together, in the order they were queued.
struct Blocker {
    conn: sqlx::AnyConnection,
}

impl Blocker {
    async fn hold(db: &switchboard_store::testing::TestDb) -> Blocker {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
        let statements: &[&str] = match db.backend {
            Backend::Postgres => &[
                "BEGIN",
                "SELECT revision FROM tenants WHERE name = 'acme' FOR UPDATE",
            ],
            Backend::Sqlite => &["BEGIN IMMEDIATE"],
        };
        for sql in statements {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        Blocker { conn }
    }

    async fn release(mut self) {
        sqlx::query("ROLLBACK")
            .execute(&mut self.conn)
            .await
            .unwrap();
    }
}

type Write = tokio::task::JoinHandle<Result<StoredResource, StoreError>>;

/// Starts `write` and waits until it is queued as the `queued`-th write behind the group
/// being committed; with `queued` 0, until the group task has taken it (a queue that is
/// merely empty may not have seen the write yet).
async fn queue(
    s: &Store,
    queued: usize,
    write: impl Future<Output = Result<StoredResource, StoreError>> + Send + 'static,
) -> Write {
    if queued == 0 {
        // A task from earlier writes may linger a moment after answering them.
        switchboard_runtime::eventually("the earlier group task to end", || async {
            (!s.group_running("acme")).then_some(())
        })
        .await;
    }
    let task = tokio::spawn(write);
    switchboard_runtime::eventually("the write to queue", || async {
        let running = queued > 0 || s.group_running("acme");
        (running && s.queued_writes("acme") == queued).then_some(())
    })
    .await;
    task
}

fn put_task(
    s: &Store,
    kind: Kind,
    name: &str,
    spec: serde_json::Value,
    precondition: switchboard_store::Precondition,
) -> impl Future<Output = Result<StoredResource, StoreError>> + Send + 'static {
    let (s, name) = (s.clone(), name.to_owned());
    async move {
        let parsed = Spec::parse(kind, spec).unwrap();
        let opts = WriteOptions {
            precondition,
            dry_run: false,
            actor: None,
        };
        s.put_spec("acme", "prod", &name, &parsed, &opts).await
    }
}

/// Writes committed together: each failing one fails alone with its own error and takes no
/// revision; the others commit, at consecutive revisions in the order they were queued,
/// each seeing the writes before it (a reference to, a claim against, an `If-Match` race
/// with an earlier write of the same group).
async fn a_group_commits_its_writes_and_refuses_alone(b: Backend) {
    use switchboard_store::Precondition::{IfMatch, None as Any};
    let Some((s, db)) = setup(b).await else {
        return;
    };
    let hosts = |h: &str| vec![h.to_owned()];
    let one = |svc: &str| vec![svc.to_owned()];
    put(&s, Kind::Service, "a", json!({"port": 80}))
        .await
        .unwrap();
    put(
        &s,
        Kind::Route,
        "r0",
        route(&hosts("taken.example"), &one("a")),
    )
    .await
    .unwrap();
    let target = put(&s, Kind::Service, "target", json!({"port": 80}))
        .await
        .unwrap();
    let before = s.revision("acme").await.unwrap();

    let blocker = Blocker::hold(&db).await;
    // The first write takes the queue and waits for the lock.
    let first = queue(
        &s,
        0,
        put_task(&s, Kind::Service, "first", json!({"port": 80}), Any),
    )
    .await;
    let port = json!({"port": 80});
    let specs = [
        (Kind::Service, "s1", port.clone(), Any),
        (
            Kind::Route,
            "bad-ref",
            route(&hosts("x.example"), &one("missing")),
            Any,
        ),
        (Kind::Service, "s2", port.clone(), Any),
        (
            Kind::Route,
            "bad-claim",
            route(&hosts("taken.example"), &one("a")),
            Any,
        ),
        (
            Kind::Service,
            "target",
            json!({"port": 81}),
            IfMatch(target.etag()),
        ),
        (
            Kind::Service,
            "target",
            json!({"port": 82}),
            IfMatch(target.etag()),
        ),
        (
            Kind::Service,
            "target",
            json!({"port": 83}),
            IfMatch(target.etag()),
        ),
        (
            Kind::Route,
            "r9",
            route(&hosts("new.example"), &one("s1")),
            Any,
        ),
        (
            Kind::Route,
            "r10",
            route(&hosts("new.example"), &one("s2")),
            Any,
        ),
    ];
    let mut group = Vec::new();
    for (i, (kind, name, spec, precondition)) in specs.into_iter().enumerate() {
        group.push(queue(&s, i + 1, put_task(&s, kind, name, spec, precondition)).await);
    }
    blocker.release().await;

    assert_eq!(first.await.unwrap().unwrap().revision, before + 1);
    let mut results = Vec::new();
    for task in group {
        results.push(task.await.unwrap());
    }
    let revision = |i: usize| match &results[i] {
        Ok(stored) => stored.revision,
        Err(e) => panic!("write {i}: {e}"),
    };
    assert_eq!(revision(0), before + 2, "s1");
    assert!(
        matches!(&results[1], Err(StoreError::DanglingReference { name, .. }) if name == "missing"),
        "{:?}",
        results[1]
    );
    assert_eq!(revision(2), before + 3, "s2");
    assert!(
        matches!(&results[3], Err(StoreError::Claimed { owner, .. }) if owner == "r0"),
        "{:?}",
        results[3]
    );
    assert_eq!(revision(4), before + 4, "the first If-Match wins");
    for i in [5, 6] {
        assert!(
            matches!(&results[i], Err(StoreError::PreconditionFailed { current: Some(tag) })
                if *tag == format!("\"{}\"", before + 4)),
            "{:?}",
            results[i]
        );
    }
    assert_eq!(
        revision(7),
        before + 5,
        "r9 refers to s1, written in the group"
    );
    assert!(
        matches!(&results[8], Err(StoreError::Claimed { owner, .. }) if owner == "r9"),
        "{:?}",
        results[8]
    );
    assert_eq!(s.revision("acme").await.unwrap(), before + 5);
    let logged: Vec<(i64, String)> = s
        .changes_since("acme", before, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.revision - before, c.name))
        .collect();
    let expected: Vec<(i64, String)> =
        [(1, "first"), (2, "s1"), (3, "s2"), (4, "target"), (5, "r9")]
            .into_iter()
            .map(|(r, n)| (r, n.to_owned()))
            .collect();
    assert_eq!(logged, expected);
    let key = |kind, name: &str| ResourceKey::new("acme", "prod", kind, name);
    let stored = s.get(&key(Kind::Service, "target")).await.unwrap();
    assert_eq!(stored.spec["port"], 81);
    for name in ["bad-ref", "bad-claim", "r10"] {
        assert!(matches!(
            s.get(&key(Kind::Route, name)).await,
            Err(StoreError::NotFound { .. })
        ));
    }
}
both_backends!(
    a_group_commits_its_writes_and_refuses_alone_,
    a_group_commits_its_writes_and_refuses_alone
);

/// A database error in one write of a group fails the group: nothing of it is committed,
/// not even the writes before it; that write gets the database error, the others one that
/// says so; and the tenant's next writes commit as usual.
async fn a_database_error_fails_the_whole_group(b: Backend) {
    use switchboard_store::Precondition::None as Any;
    let Some((s, db)) = setup(b).await else {
        return;
    };
    let trigger: &[&str] = match b {
        Backend::Postgres => &[
            "CREATE FUNCTION refuse_boom() RETURNS trigger AS $$ BEGIN \
             IF NEW.name = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF; RETURN NEW; \
             END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON resources FOR EACH ROW \
             EXECUTE FUNCTION refuse_boom()",
        ],
        Backend::Sqlite => &["CREATE TRIGGER refuse_boom BEFORE INSERT ON resources \
             WHEN NEW.name = 'boom' BEGIN SELECT RAISE(ABORT, 'boom refused'); END"],
    };
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
        for sql in trigger {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
    let before = s.revision("acme").await.unwrap();
    let port = || json!({"port": 80});
    let blocker = Blocker::hold(&db).await;
    let first = queue(&s, 0, put_task(&s, Kind::Service, "first", port(), Any)).await;
    let mut group = Vec::new();
    for (i, name) in ["ok-1", "boom", "ok-2"].into_iter().enumerate() {
        group.push(queue(&s, i + 1, put_task(&s, Kind::Service, name, port(), Any)).await);
    }
    blocker.release().await;
    assert_eq!(first.await.unwrap().unwrap().revision, before + 1);
    let results: Vec<_> = futures_join(group).await;
    assert!(
        matches!(&results[1], Err(StoreError::Database(e)) if e.to_string().contains("boom refused")),
        "{:?}",
        results[1]
    );
    for i in [0, 2] {
        assert!(
            matches!(&results[i], Err(StoreError::GroupFailed(m)) if m.contains("boom refused")),
            "{:?}",
            results[i]
        );
    }
    assert_eq!(s.revision("acme").await.unwrap(), before + 1);
    assert_eq!(s.changes_since("acme", before + 1, 10).await.unwrap(), []);
    for name in ["ok-1", "ok-2"] {
        let key = ResourceKey::new("acme", "prod", Kind::Service, name);
        assert!(matches!(
            s.get(&key).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    let again = put(&s, Kind::Service, "ok-1", port()).await.unwrap();
    assert_eq!(again.revision, before + 2);
}
both_backends!(
    a_database_error_fails_the_whole_group_,
    a_database_error_fails_the_whole_group
);

async fn futures_join(tasks: Vec<Write>) -> Vec<Result<StoredResource, StoreError>> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}
