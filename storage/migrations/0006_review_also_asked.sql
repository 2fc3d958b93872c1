-- 0006: other ways to ask an approved question, written by its reviewer (a JSON list of
-- strings). The trainer teaches each with the pair's answer: people's rewordings teach
-- recall of reworded questions that the base model's own paraphrases do not.

ALTER TABLE review ADD COLUMN also_asked TEXT NOT NULL DEFAULT '[]';
