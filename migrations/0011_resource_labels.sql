-- Labels: string pairs beside a resource's spec (canonical JSON of a sorted map), which tools
-- use to mark what they own; `switchboard apply --prune` deletes only resources labelled
-- `switchboard.dev/managed-by: apply`.
ALTER TABLE resources ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
