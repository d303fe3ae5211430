use switchboard_model::Kind;

/// A resource that refers to one being deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub kind: Kind,
    pub name: String,
    pub field: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    #[error("{what} {name:?} already exists")]
    AlreadyExists { what: &'static str, name: String },
    /// The caller's `If-Match` etag is not the current one (`current` is None if the resource
    /// doesn't exist).
    #[error("precondition failed: the resource's etag is {}", current.as_deref().unwrap_or("none (it does not exist)"))]
    PreconditionFailed { current: Option<String> },
    #[error("{field}: {kind} {name:?} does not exist in this mesh")]
    DanglingReference {
        field: String,
        kind: Kind,
        name: String,
    },
    /// The spec breaks a rule between it and a resource it refers to, or that refers to it
    /// (`field` is in the spec being written).
    #[error("{field}: {message}")]
    Incompatible { field: String, message: String },
    #[error("{kind} {name:?} is referred to by {}", describe(.by))]
    Referenced {
        kind: Kind,
        name: String,
        by: Vec<Referrer>,
    },
    #[error("{field}: {what} {value:?} is already claimed by route {owner:?}")]
    Claimed {
        field: String,
        what: &'static str,
        value: String,
        owner: String,
    },
    /// A CA write that the mesh's CA state does not allow (e.g. during a rotation).
    #[error("{0}")]
    CaConflict(String),
    /// Completing a rotation before the old CA's overlap ends (`until`, Unix ms).
    #[error(
        "the rotation's overlap lasts until {until} (Unix ms): the old CA stays trusted until \
         then, so that certificates it signed keep working; complete with force to end it now"
    )]
    CaOverlap { until: i64 },
    /// Creating a resource would take `mesh` past its tenant's `resourcesPerMesh`.
    #[error(
        "tenant {tenant:?} has reached its quota of {limit} resources in mesh {mesh:?} (quota \
         resourcesPerMesh; the mesh holds {current}): delete resources or ask the platform \
         admin to raise it"
    )]
    ResourceQuota {
        tenant: String,
        mesh: String,
        limit: u64,
        current: u64,
    },
    #[error("configuration: {0}")]
    Config(String),
    /// Counted in `switchboard_store_errors_total` as it is made (`From<sqlx::Error>`).
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// Another write committed together with this one ([`Store::put_spec`] and
    /// [`Store::delete`] commit a tenant's concurrent writes in one transaction) hit a
    /// database error, so none of them was committed; retrying is safe.
    ///
    /// [`Store::put_spec`]: crate::Store::put_spec
    /// [`Store::delete`]: crate::Store::delete
    #[error(
        "database error in a write committed together with this one (nothing was written): {0}"
    )]
    GroupFailed(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The change log no longer holds every change after `since`: it keeps the revisions
    /// after `pruned_through`.
    #[error(
        "the change log keeps only the revisions after {pruned_through}, and revision {since} \
         is older: re-read the resources, then follow the changes from the revision they are at"
    )]
    Compacted { since: i64, pruned_through: i64 },
    /// A page cursor this store did not give out.
    #[error("not a page token this API gave out")]
    BadCursor,
    /// A revision the tenant never had (below 0 or above its current one).
    #[error("revision {revision} is not in this tenant's history (its revision is {current})")]
    RevisionOutside { revision: i64, current: i64 },
    /// A revision older than the history kept (`history_retention`).
    #[error(
        "revision {revision} is older than the history kept, which starts at revision \
         {pruned_through}"
    )]
    HistoryPruned { revision: i64, pruned_through: i64 },
    /// The history does not say what the resource was at the revision (it was written
    /// before history was kept).
    #[error("the history does not say what {kind} {name:?} was at revision {revision}")]
    HistoryIncomplete {
        kind: Kind,
        name: String,
        revision: i64,
    },
    /// Rolling back to a revision at which the resource did not exist (nor does it now).
    #[error("{kind} {name:?} did not exist at revision {revision}")]
    AbsentAt {
        kind: Kind,
        name: String,
        revision: i64,
    },
    /// The tenant's revision moved while a mesh rollback was being planned, again and
    /// again: retrying may succeed.
    #[error("the tenant kept changing while the rollback was planned; retry")]
    RevisionMoved,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        crate::metrics::database_error(&e);
        StoreError::Database(e)
    }
}

fn describe(by: &[Referrer]) -> String {
    by.iter()
        .map(|r| format!("{} {:?} ({})", r.kind, r.name, r.field))
        .collect::<Vec<_>>()
        .join(", ")
}

impl StoreError {
    /// Whether the database could not be reached or failed (as opposed to a refused write
    /// or a missing resource): retrying later may succeed. The REST API answers 503 with
    /// `Retry-After` for these.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(_)
                | StoreError::GroupFailed(_)
                | StoreError::Config(_)
                | StoreError::Migrate(_)
        )
    }
}
