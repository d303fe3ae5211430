-- Switchboard schema. Portable SQL: the same file runs on PostgreSQL and SQLite.
-- Times are Unix milliseconds; specs are canonical JSON text.

-- A tenant's revision is bumped by every write to anything it owns; the write is stamped with it.
CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);

-- Meshes (mesh = '') and everything inside them.
CREATE TABLE resources (
    tenant      TEXT NOT NULL,
    mesh        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (tenant, mesh, kind, name)
);

-- References between resources of one mesh: checked on write, and block deleting the target.
CREATE TABLE refs (
    tenant    TEXT NOT NULL,
    mesh      TEXT NOT NULL,
    from_kind TEXT NOT NULL,
    from_name TEXT NOT NULL,
    field     TEXT NOT NULL,
    to_kind   TEXT NOT NULL,
    to_name   TEXT NOT NULL,
    PRIMARY KEY (tenant, mesh, from_kind, from_name, field)
);
CREATE INDEX refs_target ON refs (tenant, mesh, to_kind, to_name);

-- Values only one resource of a mesh may hold (route host names).
CREATE TABLE claims (
    tenant     TEXT NOT NULL,
    mesh       TEXT NOT NULL,
    what       TEXT NOT NULL,
    value      TEXT NOT NULL,
    owner_kind TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    PRIMARY KEY (tenant, mesh, what, value)
);
CREATE INDEX claims_owner ON claims (tenant, mesh, owner_kind, owner_name);

-- What each revision changed, so a subscriber can catch up without a full reload.
CREATE TABLE changes (
    tenant   TEXT NOT NULL,
    revision BIGINT NOT NULL,
    mesh     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    name     TEXT NOT NULL,
    op       TEXT NOT NULL,
    time     BIGINT NOT NULL,
    PRIMARY KEY (tenant, revision, mesh, kind, name)
);

-- API keys and proxy tokens. Only a SHA-256 of the secret is kept.
CREATE TABLE credentials (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    mesh        TEXT,
    description TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    create_time BIGINT NOT NULL
);
CREATE INDEX credentials_tenant ON credentials (tenant, kind);
