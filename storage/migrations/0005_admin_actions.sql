-- 0005: what admins did, and who did it: sign-ins to the web review page, decisions on
-- pairs, exports, promotions, training runs started or cancelled. Decisions are also on
-- the review row itself (reviewer_id); this log keeps every step. admin_id is a Discord
-- user id; target names the thing acted on ("pair 12", "faq v3", "run 7").

CREATE TABLE admin_actions (
    id         INTEGER PRIMARY KEY,
    admin_id   INTEGER NOT NULL,
    source     TEXT    NOT NULL DEFAULT 'web',
    action     TEXT    NOT NULL,
    target     TEXT,
    detail     TEXT    NOT NULL DEFAULT '{}',
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX admin_actions_by_admin ON admin_actions(admin_id, id);
