-- 0004: which approved pairs each version was trained, validated and judged on.
-- turn_id has no foreign key on purpose: /forget deletes the turn itself, and
-- the bare number left here says nothing about the person.

CREATE TABLE version_pairs (
    version_id INTEGER NOT NULL REFERENCES adapter_versions(id) ON DELETE CASCADE,
    turn_id    INTEGER NOT NULL,
    split      TEXT    NOT NULL CHECK (split IN ('train', 'validation', 'held_out')),
    PRIMARY KEY (version_id, turn_id)
);
CREATE INDEX version_pairs_by_turn ON version_pairs(turn_id);
