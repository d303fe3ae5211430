-- What the rollout endpoint (`GET …/meshes/{m}/rollout?revision=N`) reads without decoding
-- every stream's status: the mesh revision a stream has ACKed everything it was sent for,
-- and when a stream ended. An ended stream's row is kept (with `disconnected_at`) until its
-- heartbeat is old enough to drop, so "which proxies do not have it" can say "disconnected
-- since …" for a while.
ALTER TABLE proxies ADD COLUMN acked_revision BIGINT NOT NULL DEFAULT 0;
ALTER TABLE proxies ADD COLUMN disconnected_at BIGINT;
CREATE INDEX proxies_mesh_acked ON proxies (tenant, mesh, acked_revision);
