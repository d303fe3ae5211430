-- Each `switchboard serve` replica's heartbeat, so every replica can tell how many others are
-- alive (the replica metrics). A replica deletes its row when it stops; a row whose heartbeat
-- stopped belongs to a replica that died, and is forgotten after a while.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    started BIGINT NOT NULL,
    heartbeat BIGINT NOT NULL
);
