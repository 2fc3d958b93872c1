-- 0009: the channel memory. Every approved pair is indexed under several keys (its
-- question and each of its other ways to ask), each an embedding as float32 bytes.
-- The index can only ever hold approved pairs: the database itself drops a pair's keys
-- in the same transaction as the review change that takes it out of memory (un-approved,
-- moved to another adapter, its rewordings edited: re-indexed from scratch), and with
-- the pair when it is deleted (a /forget, a question deleted on Discord, a deleted
-- adapter). What is approved but not indexed yet is found and embedded by the bot.

CREATE TABLE memory_keys (
    id          INTEGER PRIMARY KEY,
    turn_id     INTEGER NOT NULL REFERENCES review(turn_id) ON DELETE CASCADE,
    adapter_name TEXT   NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('question', 'also_asked', 'paraphrase')),
    text        TEXT    NOT NULL,
    model       TEXT    NOT NULL,
    vector      BLOB    NOT NULL,
    UNIQUE (turn_id, model, kind, text)
);
CREATE INDEX memory_keys_by_adapter ON memory_keys(adapter_name, model, id);

CREATE TRIGGER memory_keys_follow_review AFTER UPDATE OF status, adapter_name, also_asked
ON review
WHEN NEW.status IS NOT 'approved' OR NEW.adapter_name IS NOT OLD.adapter_name
     OR NEW.also_asked IS NOT OLD.also_asked
BEGIN
    DELETE FROM memory_keys WHERE turn_id = NEW.turn_id;
END;

-- the approved pair an answer was given from (NULL: generated); a 👎 sends it back to review
ALTER TABLE turns ADD COLUMN recalled_from INTEGER;
-- where an imported pair came from ("faq.csv:12"; NULL: asked on Discord, the console, ...)
ALTER TABLE turns ADD COLUMN origin TEXT;
-- a question deleted on Discord is found by its message id (and forgotten)
CREATE INDEX turns_by_question_message ON turns(question_message_id);
