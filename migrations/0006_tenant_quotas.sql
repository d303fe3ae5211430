-- Per-tenant quotas set by the platform admin. A NULL column means "the server's default"
-- (the `quota_*` settings of `serve`), so changing a default reaches every tenant that has
-- not been given its own value. Rows go with their tenant.
CREATE TABLE tenant_quotas (
    tenant             TEXT PRIMARY KEY,
    streams            BIGINT,
    resources_per_mesh BIGINT,
    writes_per_second  BIGINT,
    write_burst        BIGINT,
    update_time        BIGINT NOT NULL
);
