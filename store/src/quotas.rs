//! Per-tenant quotas: what the platform admin set (`tenant_quotas`, NULL meaning "the
//! server's default"), the defaults this process runs with, and the one quota the store
//! enforces itself, `resourcesPerMesh`, inside the write transaction.
//!
//! The other two are enforced where they are spent: `streams` by the xDS server at admission,
//! `writesPerSecond` by the REST API before a write reaches the store. Both read the quotas
//! through [`Store::quotas`], a per-process cache that a change made here refreshes at once
//! and one made on another replica within [`QUOTA_CACHE_TTL`].

use crate::batch::Batch;
use crate::{Store, StoreError, Timer, now_ms};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// How long a replica uses a tenant's quotas before reading them again: the delay before a
/// change made through another replica applies here.
pub const QUOTA_CACHE_TTL: Duration = Duration::from_secs(5);

/// Tenants whose quotas one process keeps cached at most (the cache starts over when full).
const CACHE_MAX: usize = 10_000;

/// Largest value any quota accepts.
pub const QUOTA_MAX: u64 = 1_000_000_000;

/// The limits in effect for a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Concurrent xDS streams of the tenant on one replica.
    pub streams: u64,
    /// Stored resources of every kind in one mesh (the mesh itself not counted).
    pub resources_per_mesh: u64,
    /// REST writes per second on one replica (the token bucket's refill rate).
    pub writes_per_second: u64,
    /// REST writes allowed at once after a quiet period (the token bucket's size).
    pub write_burst: u64,
}

impl Quotas {
    /// The defaults when `serve` is given none. Generous enough that a tenant working
    /// normally never meets them, tight enough that one tenant cannot take a replica or the
    /// shared database from the others:
    /// - 50,000 streams: twice what one replica is sized to hold (25,000), so a single
    ///   tenant's proxies can fill a replica but a runaway reconnect loop cannot stack
    ///   streams without bound;
    /// - 10,000 resources per mesh: every change rebuilds the mesh's snapshot and every
    ///   stream holds it, so a mesh's size is what each of its proxies costs;
    /// - 100 writes/s with a burst of 200: `switchboard apply` of a few hundred resources goes
    ///   through at once, while a client stuck in a loop cannot hold the tenant's revision
    ///   lock (and the database) busy.
    pub const DEFAULT: Quotas = Quotas {
        streams: 50_000,
        resources_per_mesh: 10_000,
        writes_per_second: 100,
        write_burst: 200,
    };
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::DEFAULT
    }
}

/// What the platform admin set for a tenant; `None` takes the server's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaOverrides {
    pub streams: Option<u64>,
    pub resources_per_mesh: Option<u64>,
    pub writes_per_second: Option<u64>,
    pub write_burst: Option<u64>,
}

impl QuotaOverrides {
    /// These values where set, `defaults` elsewhere.
    pub fn over(&self, defaults: Quotas) -> Quotas {
        Quotas {
            streams: self.streams.unwrap_or(defaults.streams),
            resources_per_mesh: self
                .resources_per_mesh
                .unwrap_or(defaults.resources_per_mesh),
            writes_per_second: self.writes_per_second.unwrap_or(defaults.writes_per_second),
            write_burst: self.write_burst.unwrap_or(defaults.write_burst),
        }
    }
}

/// A tenant's quotas: as set, and in effect with this process's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantQuotas {
    pub tenant: String,
    pub set: QuotaOverrides,
    pub effective: Quotas,
    /// When the admin last set them (Unix ms); `None` if never.
    pub update_time: Option<i64>,
}

/// The defaults and the per-tenant cache of one store handle (shared by its clones).
#[derive(Debug, Default)]
pub(crate) struct QuotaState {
    defaults: RwLock<Quotas>,
    cache: Mutex<HashMap<String, (Instant, Quotas)>>,
}

impl QuotaState {
    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Quotas)>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn column(row: &AnyRow, name: &str) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = row.try_get(name)?;
    v.map(|v| u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("quota {name} is {v}"))))
        .transpose()
}

fn to_db(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v.min(QUOTA_MAX)).unwrap_or(i64::MAX))
}

impl Store {
    /// Sets the defaults for tenants without a value of their own (`serve`'s `quota_*`
    /// settings). Applies to everything read afterwards.
    pub fn set_quota_defaults(&self, defaults: Quotas) {
        let state = self.quota_state();
        *state
            .defaults
            .write()
            .unwrap_or_else(PoisonError::into_inner) = defaults;
        state.cache().clear();
    }

    pub fn quota_defaults(&self) -> Quotas {
        *self
            .quota_state()
            .defaults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A tenant's quotas as stored; `NotFound` if the tenant does not exist.
    pub async fn tenant_quotas(&self, tenant: &str) -> Result<TenantQuotas, StoreError> {
        let _t = Timer::start("tenant_quotas");
        let row = sqlx::query(
            "SELECT q.streams, q.resources_per_mesh, q.writes_per_second, q.write_burst, \
             q.update_time FROM tenants t LEFT JOIN tenant_quotas q ON q.tenant = t.name \
             WHERE t.name = $1",
        )
        .bind(tenant)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "tenant",
            name: tenant.into(),
        })?;
        let set = QuotaOverrides {
            streams: column(&row, "streams")?,
            resources_per_mesh: column(&row, "resources_per_mesh")?,
            writes_per_second: column(&row, "writes_per_second")?,
            write_burst: column(&row, "write_burst")?,
        };
        Ok(TenantQuotas {
            tenant: tenant.to_owned(),
            set,
            effective: set.over(self.quota_defaults()),
            update_time: row.try_get("update_time")?,
        })
    }

    /// Replaces what is set for `tenant` (a `None` returns that quota to the default).
    /// Quotas are not mesh configuration: the tenant's revision does not move.
    pub async fn set_tenant_quotas(
        &self,
        tenant: &str,
        set: &QuotaOverrides,
    ) -> Result<TenantQuotas, StoreError> {
        let _t = Timer::start("set_tenant_quotas");
        let turn = self.write_turn().await;
        let mut tx = self.pool().begin().await?;
        // Locks the tenant's row (without bumping its revision), so a concurrent deletion of
        // the tenant cannot leave quotas behind.
        let found = sqlx::query(
            "UPDATE tenants SET update_time = update_time WHERE name = $1 RETURNING name",
        )
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
        if found.is_none() {
            return Err(StoreError::NotFound {
                what: "tenant",
                name: tenant.into(),
            });
        }
        sqlx::query(
            "INSERT INTO tenant_quotas (tenant, streams, resources_per_mesh, writes_per_second, \
             write_burst, update_time) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant) DO \
             UPDATE SET streams = excluded.streams, resources_per_mesh = \
             excluded.resources_per_mesh, writes_per_second = excluded.writes_per_second, \
             write_burst = excluded.write_burst, update_time = excluded.update_time",
        )
        .bind(tenant)
        .bind(to_db(set.streams))
        .bind(to_db(set.resources_per_mesh))
        .bind(to_db(set.writes_per_second))
        .bind(to_db(set.write_burst))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        drop(turn);
        self.quota_state().cache().remove(tenant);
        self.tenant_quotas(tenant).await
    }

    /// The quotas in effect for `tenant`, cached for [`QUOTA_CACHE_TTL`]. For checks made
    /// often (each stream, each write); `NotFound` if the tenant does not exist.
    pub async fn quotas(&self, tenant: &str) -> Result<Quotas, StoreError> {
        let now = Instant::now();
        if let Some((at, q)) = self.quota_state().cache().get(tenant)
            && now.duration_since(*at) < QUOTA_CACHE_TTL
        {
            return Ok(*q);
        }
        let q = self.tenant_quotas(tenant).await?.effective;
        let mut cache = self.quota_state().cache();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(tenant.to_owned(), (now, q));
        Ok(q)
    }
}

/// Refuses a new resource in `mesh` when the mesh already holds `current` resources and that
/// reaches its tenant's `resourcesPerMesh` (`set` by the platform admin, else
/// `default_limit`). The write reads both under the tenant's revision lock (and after earlier
/// writes of its group), so two writers cannot both take the last place.
pub(crate) fn check_mesh_size(
    tenant: &str,
    mesh: &str,
    current: u64,
    set: Option<u64>,
    default_limit: u64,
) -> Result<(), StoreError> {
    let limit = set.unwrap_or(default_limit);
    if current >= limit {
        return Err(StoreError::ResourceQuota {
            tenant: tenant.to_owned(),
            mesh: mesh.to_owned(),
            limit,
            current,
        });
    }
    Ok(())
}

/// Adds to `batch` the count of a resource created (`created`) or deleted in `mesh`
/// (`mesh_sizes`, which the check above reads), written in the write's transaction.
pub(crate) async fn resize_mesh(
    batch: &mut Batch,
    tx: &mut Transaction<'static, Any>,
    tenant: &str,
    mesh: &str,
    created: bool,
) -> Result<(), StoreError> {
    batch
        .push(tx, |p| {
            let (tenant, mesh) = (p.text(tenant), p.text(mesh));
            if created {
                format!(
                    "INSERT INTO mesh_sizes (tenant, mesh, resources) VALUES ({tenant}, {mesh}, 1) \
                     ON CONFLICT (tenant, mesh) DO UPDATE SET resources = mesh_sizes.resources + 1"
                )
            } else {
                format!(
                    "UPDATE mesh_sizes SET resources = resources - 1 \
                     WHERE tenant = {tenant} AND mesh = {mesh}"
                )
            }
        })
        .await
}
