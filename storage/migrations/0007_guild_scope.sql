-- 0007: every adapter, pair and right belongs to one server (guild). An adapter gets
-- the guild it serves (guild_id 0 is the "direct" scope: DMs, the console, the CLI) and
-- a label, the name people see and type, unique per guild. `name` stays the key the
-- engine, the trainer and the files use, unique on the host; it equals the label unless
-- another guild held that label first. A pair belongs to its turn's guild.
--
-- Existing rows: an adapter goes to the guild of the channels bound to it (the guild
-- with most of them), else of the guild it is the default of, else of the guild whose
-- questions it answered most, else to the direct scope. What then sits in another guild
-- than its adapter (a binding, a guild default, a pair) is let go of the adapter: the
-- binding is removed, the pair stays in its own guild as a base-model pair. The counts
-- go to the log (state key 'migration_note', read and removed by storage.migrations).

ALTER TABLE adapters ADD COLUMN guild_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE adapters ADD COLUMN label TEXT NOT NULL DEFAULT '';
UPDATE adapters SET label = name;

UPDATE adapters SET guild_id = COALESCE(
    (SELECT c.guild_id FROM channel_adapters c
     WHERE c.adapter_id = adapters.id AND c.guild_id IS NOT NULL
     GROUP BY c.guild_id ORDER BY COUNT(*) DESC, MIN(c.bound_at), c.guild_id LIMIT 1),
    (SELECT g.guild_id FROM guild_adapters g
     WHERE g.adapter_id = adapters.id ORDER BY g.bound_at, g.guild_id LIMIT 1),
    (SELECT t.guild_id FROM turns t
     WHERE t.adapter_name = adapters.name AND t.guild_id IS NOT NULL
     GROUP BY t.guild_id ORDER BY COUNT(*) DESC, MIN(t.id) LIMIT 1),
    0);

CREATE UNIQUE INDEX adapters_label_per_guild ON adapters(guild_id, label);

-- questions asked without a guild (the console, imports, the HTTP API) that an adapter
-- answered belong where that adapter now is; the rest stay direct (guild_id NULL)
UPDATE turns SET guild_id = (SELECT NULLIF(a.guild_id, 0) FROM adapters a
                             WHERE a.name = turns.adapter_name)
WHERE guild_id IS NULL AND adapter_name IS NOT NULL;

CREATE TEMP TABLE migration_0007_counts AS SELECT
    (SELECT COUNT(*) FROM adapters WHERE guild_id = 0) AS direct_adapters,
    (SELECT COUNT(*) FROM adapters WHERE guild_id <> 0) AS guild_adapters,
    (SELECT COUNT(*) FROM channel_adapters c JOIN adapters a ON a.id = c.adapter_id
     WHERE COALESCE(c.guild_id, 0) <> a.guild_id) AS bindings,
    (SELECT COUNT(*) FROM guild_adapters g JOIN adapters a ON a.id = g.adapter_id
     WHERE g.guild_id <> a.guild_id) AS defaults,
    (SELECT COUNT(*) FROM review r JOIN turns t ON t.id = r.turn_id
     JOIN adapters a ON a.name = r.adapter_name
     WHERE COALESCE(t.guild_id, 0) <> a.guild_id) AS pairs,
    (SELECT COUNT(*) FROM turns WHERE guild_id IS NULL) AS direct_turns;

DELETE FROM channel_adapters WHERE rowid IN (
    SELECT c.rowid FROM channel_adapters c JOIN adapters a ON a.id = c.adapter_id
    WHERE COALESCE(c.guild_id, 0) <> a.guild_id);
DELETE FROM guild_adapters WHERE rowid IN (
    SELECT g.rowid FROM guild_adapters g JOIN adapters a ON a.id = g.adapter_id
    WHERE g.guild_id <> a.guild_id);
UPDATE review SET adapter_name = NULL WHERE turn_id IN (
    SELECT r.turn_id FROM review r JOIN turns t ON t.id = r.turn_id
    JOIN adapters a ON a.name = r.adapter_name
    WHERE COALESCE(t.guild_id, 0) <> a.guild_id);

INSERT INTO state (key, value) SELECT 'migration_note', json_object(
    'migration', '0007_guild_scope',
    'message', printf('servers kept apart: %d adapter(s) placed in their guild, %d in the '
                      || 'direct scope (no guild could be found for them); %d question(s) '
                      || 'without a guild stay in the direct scope; let go of their adapter '
                      || 'for sitting in another guild: %d channel binding(s), %d server '
                      || 'default(s), %d pair(s) (kept as base-model pairs of their guild)',
                      guild_adapters, direct_adapters, direct_turns, bindings, defaults,
                      pairs))
FROM migration_0007_counts
WHERE true
ON CONFLICT (key) DO UPDATE SET value = excluded.value;
DROP TABLE migration_0007_counts;

-- who did what, and in which guild (NULL: before this migration, or the direct scope)
ALTER TABLE admin_actions ADD COLUMN guild_id INTEGER;
