-- 0003: one training run at a time per host. The row names the run and the
-- process that holds it, so a lock left by a crashed bot or a killed child can
-- be recognised (that process is gone) and cleared.

CREATE TABLE training_lock (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    run_id      INTEGER REFERENCES training_runs(id) ON DELETE SET NULL,
    pid         INTEGER NOT NULL,
    host        TEXT    NOT NULL,
    acquired_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
