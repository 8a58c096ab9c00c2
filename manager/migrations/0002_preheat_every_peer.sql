-- Preheat to every peer: a task is for a seed peer (from the origin) or a
-- peer (from the mesh, once a seed of its scheduler cluster holds the layer).
ALTER TABLE preheat_tasks ADD COLUMN role TEXT NOT NULL DEFAULT 'seed';
ALTER TABLE preheat_tasks ADD COLUMN scheduler_cluster_id BIGINT NOT NULL DEFAULT 0;
