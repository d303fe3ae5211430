-- Each mesh's certificate authorities. One `active` CA signs workload certificates; during a
-- rotation the previous one stays trusted as `retiring` until `overlap_until`. The private key
-- is stored only sealed (AES-256-GCM with the key-encryption key `kek_id`, base64), never in
-- clear. Rows go with their mesh and tenant.
CREATE TABLE mesh_cas (
    tenant        TEXT NOT NULL,
    mesh          TEXT NOT NULL,
    id            TEXT NOT NULL,
    state         TEXT NOT NULL,
    origin        TEXT NOT NULL,
    chain_pem     TEXT NOT NULL,
    root_pem      TEXT NOT NULL,
    sealed_key    TEXT NOT NULL,
    kek_id        TEXT NOT NULL,
    create_time   BIGINT NOT NULL,
    overlap_until BIGINT,
    PRIMARY KEY (tenant, mesh, id)
);
-- At most one active and one retiring CA per mesh: two replicas creating a mesh's first CA
-- at once cannot both succeed.
CREATE UNIQUE INDEX mesh_cas_state ON mesh_cas (tenant, mesh, state);
