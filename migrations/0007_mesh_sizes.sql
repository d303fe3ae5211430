-- How many resources each mesh holds (the mesh itself not counted), kept by every resource
-- write in its own transaction, under the tenant's revision lock: the `resourcesPerMesh`
-- quota reads this one row instead of counting the mesh's rows on every create. Rows go with
-- their mesh and tenant; a mesh without a row holds nothing.
CREATE TABLE mesh_sizes (
    tenant    TEXT NOT NULL,
    mesh      TEXT NOT NULL,
    resources BIGINT NOT NULL,
    PRIMARY KEY (tenant, mesh)
);
INSERT INTO mesh_sizes (tenant, mesh, resources)
SELECT tenant, mesh, COUNT(*) FROM resources WHERE mesh <> '' GROUP BY tenant, mesh;
