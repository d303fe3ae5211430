-- The change log is pruned after a retention period. A tenant's log is complete only for the
-- revisions after `changes_pruned_through`; a reader asking from an earlier revision must
-- re-read the resources instead.
ALTER TABLE tenants ADD COLUMN changes_pruned_through BIGINT NOT NULL DEFAULT 0;
CREATE INDEX changes_time ON changes (time);
