-- Every spec a write stored (NULL for a delete) with who wrote it, and the tenant-level
-- actions of the audit log (credentials created and revoked): kept for `history_retention`.
-- Not the change log's table: that one is pruned after `change_retention` (a day) and read
-- by every replica on every commit, while this one is kept for weeks and holds the specs.
-- `op` is create, update or delete; `credential_id` is '' for a write no credential made
-- (the control plane's own), `admin` for the platform admin.
CREATE TABLE history (
    tenant                 TEXT NOT NULL,
    revision               BIGINT NOT NULL,
    mesh                   TEXT NOT NULL,
    kind                   TEXT NOT NULL,
    name                   TEXT NOT NULL,
    op                     TEXT NOT NULL,
    spec                   TEXT,
    time                   BIGINT NOT NULL,
    credential_id          TEXT NOT NULL,
    credential_description TEXT NOT NULL
);
CREATE INDEX history_key ON history (tenant, mesh, kind, name, revision);
CREATE INDEX history_tenant ON history (tenant, time, revision);
-- Pruning keeps each resource's row in effect at the horizon, so the history is complete
-- for every revision from `history_pruned_through` on.
ALTER TABLE tenants ADD COLUMN history_pruned_through BIGINT NOT NULL DEFAULT 0;
