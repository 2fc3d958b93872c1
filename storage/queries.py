"""Every SQL statement of the project, parameterised, in one place.

The operations of storage/ops use these; both stores run those operations.
"""

NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

# --- adapters -----------------------------------------------------------------------
INSERT_ADAPTER = """
INSERT INTO adapters (name, label, guild_id, base_model, description, system_prompt, based_on,
                      created_by)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
SELECT_ADAPTER = "SELECT * FROM adapters WHERE name = ?"
SELECT_ADAPTER_IN = "SELECT * FROM adapters WHERE guild_id = ? AND label = ?"
# (scope None: every guild's)
LIST_ADAPTERS = "SELECT * FROM adapters WHERE (? IS NULL OR guild_id = ?) ORDER BY label, name"
SET_SYSTEM_PROMPT = "UPDATE adapters SET system_prompt = ? WHERE name = ?"
LIST_ADAPTER_NAMES = "SELECT name FROM adapters ORDER BY name"

_VERSION_COLUMNS = """
SELECT v.*, a.name AS adapter FROM adapter_versions v JOIN adapters a ON a.id = v.adapter_id"""
SELECT_VERSION = _VERSION_COLUMNS + " WHERE a.name = ? AND v.version = ?"
SELECT_VERSIONS = _VERSION_COLUMNS + " WHERE a.name = ? ORDER BY v.version"
SELECT_SERVING_VERSION = _VERSION_COLUMNS + " WHERE a.name = ? AND v.status = 'serving'"
NEXT_VERSION_NUMBER = """
SELECT COALESCE(MAX(version), 0) + 1 FROM adapter_versions WHERE adapter_id = ?"""
INSERT_VERSION = """
INSERT INTO adapter_versions (adapter_id, version, path, status, scale, metrics, reason, run_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
RETIRE_SERVING = """
UPDATE adapter_versions SET status = 'retired' WHERE adapter_id = ? AND status = 'serving'"""
SET_VERSION_REASON = """
UPDATE adapter_versions SET reason = ? WHERE adapter_id = ? AND version = ?"""
MAKE_SERVING = """
UPDATE adapter_versions SET status = 'serving', reason = COALESCE(?, reason),
    scale = COALESCE(?, scale)
WHERE adapter_id = ? AND version = ?"""

# --- channel and guild bindings -----------------------------------------------------
BIND_CHANNEL = """
INSERT INTO channel_adapters (channel_id, guild_id, adapter_id, bound_by) VALUES (?, ?, ?, ?)
ON CONFLICT (channel_id) DO UPDATE SET guild_id = excluded.guild_id,
    adapter_id = excluded.adapter_id, bound_by = excluded.bound_by, bound_at = """ + NOW
UNBIND_CHANNEL = "DELETE FROM channel_adapters WHERE channel_id = ?"
BIND_GUILD = """
INSERT INTO guild_adapters (guild_id, adapter_id, bound_by) VALUES (?, ?, ?)
ON CONFLICT (guild_id) DO UPDATE SET adapter_id = excluded.adapter_id,
    bound_by = excluded.bound_by, bound_at = """ + NOW
# a channel is only ever served by an adapter of its own guild
CHANNEL_ADAPTER = """
SELECT a.name, a.label FROM channel_adapters c JOIN adapters a ON a.id = c.adapter_id
WHERE c.channel_id = ? AND a.guild_id = COALESCE(c.guild_id, 0)"""
GUILD_ADAPTER = """
SELECT a.name, a.label FROM guild_adapters g JOIN adapters a ON a.id = g.adapter_id
WHERE g.guild_id = ? AND a.guild_id = g.guild_id"""
CHANNELS_OF_ADAPTER = """
SELECT c.channel_id FROM channel_adapters c JOIN adapters a ON a.id = c.adapter_id
WHERE a.name = ? ORDER BY c.channel_id"""

# --- turns and feedback -------------------------------------------------------------
INSERT_TURN = """
INSERT INTO turns (source, guild_id, channel_id, author_id, question_message_id,
                   answer_message_id, question, context, answer, adapter_name,
                   adapter_version, latency_ms, recalled_from, origin)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
SELECT_TURN = "SELECT * FROM turns WHERE id = ?"
# the pair a memory answer came from, back to review (its memory keys go with the status)
REOPEN_RECALLED = """
UPDATE review SET status = 'pending', reviewer_id = NULL, reviewed_at = NULL
WHERE status = 'approved' AND turn_id = (SELECT recalled_from FROM turns WHERE id = ?)
RETURNING turn_id"""
SELECT_TURN_BY_ANSWER_MESSAGE = "SELECT * FROM turns WHERE answer_message_id = ?"
RECENT_TURNS = "SELECT * FROM turns WHERE channel_id = ? ORDER BY id DESC LIMIT ?"
UPSERT_VOTE = """
INSERT INTO feedback (turn_id, user_id, value) VALUES (?, ?, ?)
ON CONFLICT (turn_id, user_id) DO UPDATE SET value = excluded.value,
    created_at = """ + NOW
RETRACT_VOTE = "DELETE FROM feedback WHERE turn_id = ? AND user_id = ? AND value = ?"
SCORE = "SELECT COALESCE(SUM(value), 0) FROM feedback WHERE turn_id = ?"
INSERT_REVIEW_CANDIDATE = """
INSERT INTO review (turn_id, adapter_name) SELECT id, adapter_name FROM turns WHERE id = ?
ON CONFLICT (turn_id) DO NOTHING"""
# a pending candidate whose score fell below the threshold is withdrawn; decided ones stay
WITHDRAW_PENDING_BELOW = """
DELETE FROM review WHERE status = 'pending' AND turn_id = ?
    AND (SELECT COALESCE(SUM(value), 0) FROM feedback WHERE turn_id = review.turn_id) < ?"""
PRUNE_PENDING_BELOW = """
DELETE FROM review WHERE status = 'pending'
    AND (SELECT COALESCE(SUM(value), 0) FROM feedback WHERE turn_id = review.turn_id) < ?"""

# --- review -------------------------------------------------------------------------
_REVIEW_COLUMNS = """
SELECT t.*, r.adapter_name AS review_adapter,
       (SELECT a.label FROM adapters a WHERE a.name = r.adapter_name) AS review_label,
       r.status, r.edited_answer, r.also_asked,
       r.reviewer_id, r.reviewed_at, (SELECT COALESCE(SUM(f.value), 0) FROM feedback f
                       WHERE f.turn_id = t.id) AS score
FROM review r JOIN turns t ON t.id = r.turn_id"""
# a pair belongs to the scope of its turn's guild (0: the direct scope); scope None: all
_IN_SCOPE = "(? IS NULL OR COALESCE(t.guild_id, 0) = ?)"
_TURNS_IN_SCOPE = "(? IS NULL OR turn_id IN (SELECT id FROM turns WHERE COALESCE(guild_id, 0) = ?))"
SELECT_REVIEWS = _REVIEW_COLUMNS + """
WHERE r.status = ? AND (? IS NULL OR r.adapter_name = ?) AND """ + _IN_SCOPE + """
ORDER BY score DESC, t.id LIMIT ?"""
SELECT_REVIEW = _REVIEW_COLUMNS + " WHERE r.turn_id = ?"
COUNT_REVIEWS = """
SELECT COUNT(*) FROM review WHERE status = ? AND (? IS NULL OR adapter_name = ?)
    AND """ + _TURNS_IN_SCOPE
DECIDE_REVIEW = """
UPDATE review SET status = ?, edited_answer = ?, also_asked = COALESCE(?, also_asked),
    reviewer_id = ?, reviewed_at = """ + NOW + """
WHERE turn_id = ?"""
_PENDING_AT_LEAST = """
FROM review WHERE status = 'pending' AND (? IS NULL OR adapter_name = ?) AND """ + \
    _TURNS_IN_SCOPE + """
    AND (SELECT COALESCE(SUM(value), 0) FROM feedback WHERE turn_id = review.turn_id) >= ?"""
COUNT_PENDING_AT_LEAST = "SELECT COUNT(*) " + _PENDING_AT_LEAST
APPROVE_PENDING_AT_LEAST = """
UPDATE review SET status = 'approved', reviewer_id = ?, reviewed_at = """ + NOW + """
WHERE turn_id IN (SELECT turn_id """ + _PENDING_AT_LEAST + ")"
APPROVED_PAIRS = """
SELECT t.id AS turn_id, t.question, COALESCE(r.edited_answer, t.answer) AS answer,
       r.adapter_name, t.channel_id, t.context, t.created_at, r.also_asked,
       (SELECT COALESCE(SUM(f.value), 0) FROM feedback f WHERE f.turn_id = t.id) AS score
FROM review r JOIN turns t ON t.id = r.turn_id
WHERE r.status = 'approved' AND (? IS NULL OR r.adapter_name = ?) AND """ + _IN_SCOPE + """
ORDER BY t.id"""
INSERT_APPROVED_REVIEW = """
INSERT INTO review (turn_id, adapter_name, also_asked, reviewer_id, status, reviewed_at)
VALUES (?, ?, ?, ?, 'approved', """ + NOW + ")"

# --- forgetting a user --------------------------------------------------------------
TURN_IDS_OF_AUTHOR = "SELECT id FROM turns WHERE author_id = ?"
DELETE_TURNS_OF_AUTHOR = "DELETE FROM turns WHERE author_id = ?"
DELETE_TURN_OF_QUESTION = "DELETE FROM turns WHERE question_message_id = ? RETURNING id"
DELETE_VOTES_OF_USER = "DELETE FROM feedback WHERE user_id = ?"

# --- training runs ------------------------------------------------------------------
_RUN_COLUMNS = """
SELECT r.*, a.name AS adapter, a.label AS adapter_label, a.guild_id AS adapter_guild
FROM training_runs r JOIN adapters a ON a.id = r.adapter_id"""
INSERT_RUN = """
INSERT INTO training_runs (adapter_id, status, trigger, requested_by, channel_id)
VALUES (?, 'queued', ?, ?, ?)"""
SELECT_RUN = _RUN_COLUMNS + " WHERE r.id = ?"
LIST_RUNS = _RUN_COLUMNS + """
WHERE (? IS NULL OR a.name = ?) AND (? IS NULL OR a.guild_id = ?) ORDER BY r.id DESC LIMIT ?"""
RUN_COLUMNS_UPDATABLE = frozenset(
    {"status", "pid", "version", "metrics", "error", "log_path", "started_at", "finished_at"})

# --- state that survives restarts ------------------------------------------------
GET_STATE = "SELECT value FROM state WHERE key = ?"
SET_STATE = """
INSERT INTO state (key, value) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = """ + NOW
# approved pairs of an adapter that its serving version has not seen (held-out pairs
# are never trained on, yet they are not new: any recorded split counts as seen), or
# whose review changed after that version's run read its data (a corrected answer, other
# ways to ask added): that version learned them otherwise
_SERVING = """
    FROM adapter_versions v JOIN adapters a ON a.id = v.adapter_id
    LEFT JOIN training_runs t ON t.id = v.run_id
    WHERE a.name = ? AND v.status = 'serving'"""
COUNT_UNSEEN_APPROVED = """
SELECT COUNT(*) FROM review r WHERE r.status = 'approved' AND r.adapter_name = ?
    AND (r.turn_id NOT IN (
            SELECT p.turn_id FROM version_pairs p WHERE p.version_id IN (
                SELECT v.id """ + _SERVING + """))
         OR r.reviewed_at > (SELECT COALESCE(t.started_at, v.created_at) """ + _SERVING + """))"""
INSERT_VERSION_PAIR = """
INSERT OR IGNORE INTO version_pairs (version_id, turn_id, split) VALUES (?, ?, ?)"""
VERSION_PAIR_COUNTS = """
SELECT p.split, COUNT(*) AS n FROM version_pairs p
JOIN adapter_versions v ON v.id = p.version_id JOIN adapters a ON a.id = v.adapter_id
WHERE a.name = ? AND v.version = ? GROUP BY p.split"""

# --- the training lock ----------------------------------------------------------------
SELECT_LOCK = "SELECT * FROM training_lock WHERE id = 1"
INSERT_LOCK = "INSERT INTO training_lock (id, run_id, pid, host) VALUES (1, ?, ?, ?)"
HAND_OVER_LOCK = "UPDATE training_lock SET run_id = ?, pid = ? WHERE id = 1 AND pid = ?"
DELETE_LOCK = "DELETE FROM training_lock WHERE id = 1 AND (? IS NULL OR run_id IS ?)"
RUNS_LEFT_RUNNING = _RUN_COLUMNS + " WHERE r.status IN ('queued', 'running')"

# --- stats --------------------------------------------------------------------------
# the counts of one scope (parameters: the scope, seven times over; None: every guild's)
_SCOPE_TURNS = "SELECT id FROM turns WHERE ?1 IS NULL OR COALESCE(guild_id, 0) = ?1"
STATS = """
SELECT (SELECT COUNT(*) FROM (""" + _SCOPE_TURNS + """)) AS answers,
       (SELECT COUNT(*) FROM feedback WHERE turn_id IN (""" + _SCOPE_TURNS + """)) AS votes,
       (SELECT COUNT(*) FROM review WHERE status = 'pending'
            AND turn_id IN (""" + _SCOPE_TURNS + """)) AS pending,
       (SELECT COUNT(*) FROM review WHERE status = 'approved'
            AND turn_id IN (""" + _SCOPE_TURNS + """)) AS approved,
       (SELECT COUNT(*) FROM review WHERE status = 'rejected'
            AND turn_id IN (""" + _SCOPE_TURNS + """)) AS rejected,
       (SELECT COUNT(*) FROM adapters WHERE ?1 IS NULL OR guild_id = ?1) AS adapters,
       (SELECT COUNT(*) FROM training_runs WHERE adapter_id IN (
            SELECT id FROM adapters WHERE ?1 IS NULL OR guild_id = ?1)) AS runs"""


def update_run_sql(columns: list[str]) -> str:
    unknown = set(columns) - RUN_COLUMNS_UPDATABLE
    if unknown:
        raise ValueError(f"training_runs has no updatable column(s) {sorted(unknown)}")
    return "UPDATE training_runs SET " + ", ".join(f"{c} = ?" for c in columns) + " WHERE id = ?"


# --- the web review page: searching pairs, counts, what a version saw, the admin log ---
# the review columns as a sub-query, so filters and sorts can name `score` and `status`
# (adapter '__base__', records.BASE_ADAPTER, selects the pairs the base model answered)
_REVIEW_SEARCH = "SELECT * FROM (" + _REVIEW_COLUMNS + """) AS pair
WHERE status = ?
  AND (? IS NULL OR COALESCE(review_adapter, '__base__') = ?)
  AND (? IS NULL OR channel_id = ?)
  AND (? IS NULL OR COALESCE(guild_id, 0) = ?)
  AND (? IS NULL OR score >= ?)
  AND (? IS NULL OR question LIKE ? ESCAPE '\\' OR answer LIKE ? ESCAPE '\\'
       OR edited_answer LIKE ? ESCAPE '\\')"""
# every sort ends with the turn id, so pages of a listing never overlap
REVIEW_SORTS = {
    "score": "score DESC, id",
    "newest": "id DESC",
    "oldest": "id",
    "adapter": "review_adapter, score DESC, id",
    "channel": "channel_id, score DESC, id",
    "reviewed": "reviewed_at DESC, id DESC",
}
REVIEW_COUNTS = """
SELECT adapter_name, status, COUNT(*) AS n FROM review WHERE """ + _TURNS_IN_SCOPE + """
GROUP BY 1, 2"""
REVIEW_CHANNELS = """
SELECT DISTINCT t.channel_id FROM review r JOIN turns t ON t.id = r.turn_id
WHERE r.status = ? AND """ + _IN_SCOPE + " ORDER BY 1"
# a turn deleted by /forget leaves its number here and nothing else
VERSION_PAIRS = """
SELECT p.turn_id, p.split, t.question, COALESCE(r.edited_answer, t.answer) AS answer
FROM version_pairs p
JOIN adapter_versions v ON v.id = p.version_id JOIN adapters a ON a.id = v.adapter_id
LEFT JOIN turns t ON t.id = p.turn_id LEFT JOIN review r ON r.turn_id = p.turn_id
WHERE a.name = ? AND v.version = ?
ORDER BY CASE p.split WHEN 'train' THEN 0 WHEN 'validation' THEN 1 ELSE 2 END, p.turn_id"""
INSERT_ADMIN_ACTION = """
INSERT INTO admin_actions (admin_id, source, action, target, detail, guild_id)
VALUES (?, ?, ?, ?, ?, ?)"""
RECENT_ADMIN_ACTIONS = """
SELECT * FROM admin_actions WHERE ? IS NULL OR COALESCE(guild_id, 0) = ? ORDER BY id DESC LIMIT ?"""


def search_reviews_sql(sort: str, *, count: bool = False) -> str:
    """The pair search with a whitelisted sort (parameters: see `review_search_params`)."""
    if count:
        return "SELECT COUNT(*) FROM (" + _REVIEW_SEARCH + ")"
    if sort not in REVIEW_SORTS:
        raise ValueError(f"unknown sort {sort!r}; one of {', '.join(REVIEW_SORTS)}")
    return _REVIEW_SEARCH + " ORDER BY " + REVIEW_SORTS[sort] + " LIMIT ? OFFSET ?"


def review_search_params(status: str, adapter: str | None, channel_id: int | None,
                         min_score: int | None, text: str | None,
                         scope: int | None = None) -> tuple:
    pattern = None
    if text:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
    return (status, adapter, adapter, channel_id, channel_id, scope, scope,
            min_score, min_score, pattern, pattern, pattern, pattern)
