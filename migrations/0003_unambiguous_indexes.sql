-- The reverse-lookup indexes led with (tenant, mesh), the same prefix as the primary keys. On
-- tables not yet analyzed, PostgreSQL could pick them for lookups by the primary key and then
-- filter every row of the mesh: a write slowed down as the mesh grew. Leading with the
-- name makes them useless for anything but the reverse lookup they exist for.
DROP INDEX refs_target;
CREATE INDEX refs_target ON refs (to_name, to_kind, tenant, mesh);
DROP INDEX claims_owner;
CREATE INDEX claims_owner ON claims (owner_name, owner_kind, tenant, mesh);
DROP INDEX credentials_tenant;
CREATE INDEX credentials_tenant ON credentials (tenant, kind, create_time);
