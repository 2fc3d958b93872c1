-- 0001: the core schema. Times are UTC ISO-8601 text; Discord ids are integers.

CREATE TABLE adapters (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    base_model    TEXT    NOT NULL,
    description   TEXT    NOT NULL DEFAULT '',
    system_prompt TEXT,
    based_on      TEXT,
    created_by    INTEGER,
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE training_runs (
    id           INTEGER PRIMARY KEY,
    adapter_id   INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    status       TEXT    NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    trigger      TEXT    NOT NULL DEFAULT 'manual'
                 CHECK (trigger IN ('manual', 'schedule', 'cli')),
    requested_by INTEGER,
    pid          INTEGER,
    version      INTEGER,
    metrics      TEXT    NOT NULL DEFAULT '{}',
    error        TEXT,
    log_path     TEXT,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at   TEXT,
    finished_at  TEXT
);
CREATE INDEX training_runs_by_adapter ON training_runs(adapter_id, id);

CREATE TABLE adapter_versions (
    id         INTEGER PRIMARY KEY,
    adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    version    INTEGER NOT NULL CHECK (version >= 1),
    path       TEXT    NOT NULL,
    status     TEXT    NOT NULL DEFAULT 'candidate'
               CHECK (status IN ('candidate', 'serving', 'retired')),
    scale      REAL    NOT NULL DEFAULT 1.0,
    metrics    TEXT    NOT NULL DEFAULT '{}',
    reason     TEXT,
    run_id     INTEGER REFERENCES training_runs(id) ON DELETE SET NULL,
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (adapter_id, version)
);
-- at most one serving version per adapter, enforced by the database itself
CREATE UNIQUE INDEX adapter_versions_one_serving
    ON adapter_versions(adapter_id) WHERE status = 'serving';

CREATE TABLE channel_adapters (
    channel_id INTEGER PRIMARY KEY,
    guild_id   INTEGER,
    adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    bound_by   INTEGER,
    bound_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE guild_adapters (
    guild_id   INTEGER PRIMARY KEY,
    adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    bound_by   INTEGER,
    bound_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- one question and the bot's answer to it
CREATE TABLE turns (
    id                  INTEGER PRIMARY KEY,
    source              TEXT    NOT NULL DEFAULT 'discord'
                        CHECK (source IN ('discord', 'console', 'import', 'api')),
    guild_id            INTEGER,
    channel_id          INTEGER NOT NULL DEFAULT 0,
    author_id           INTEGER NOT NULL DEFAULT 0,
    question_message_id INTEGER,
    answer_message_id   INTEGER UNIQUE,
    question            TEXT    NOT NULL,
    context             TEXT    NOT NULL DEFAULT '[]',
    answer              TEXT    NOT NULL,
    adapter_name        TEXT,
    adapter_version     INTEGER,
    latency_ms          REAL,
    created_at          TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX turns_by_channel ON turns(channel_id, id);
CREATE INDEX turns_by_author ON turns(author_id);

-- one vote per user per answer; retracting a vote deletes its row
CREATE TABLE feedback (
    turn_id    INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL,
    value      INTEGER NOT NULL CHECK (value IN (-1, 1)),
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (turn_id, user_id)
);
CREATE INDEX feedback_by_user ON feedback(user_id);

-- review candidates and the admin's decision on them
CREATE TABLE review (
    turn_id       INTEGER PRIMARY KEY REFERENCES turns(id) ON DELETE CASCADE,
    adapter_name  TEXT,
    status        TEXT    NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'approved', 'rejected')),
    edited_answer TEXT,
    reviewer_id   INTEGER,
    reviewed_at   TEXT,
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX review_by_status ON review(status, adapter_name);
