-- Per-stream xDS status, written by the replica holding the stream (flushed when it changes,
-- with a heartbeat), so that every replica's API can show every proxy.
CREATE TABLE proxies (
    tenant          TEXT NOT NULL,
    mesh            TEXT NOT NULL,
    node            TEXT NOT NULL,
    replica         TEXT NOT NULL,
    stream_id       BIGINT NOT NULL,
    connected_since BIGINT NOT NULL,
    heartbeat       BIGINT NOT NULL,
    status          TEXT NOT NULL,
    PRIMARY KEY (replica, stream_id)
);
CREATE INDEX proxies_node ON proxies (tenant, mesh, node);
