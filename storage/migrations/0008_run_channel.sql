-- 0008: the channel a training run was asked for in (NULL: the schedule, the CLI, the
-- console). A bot restarted while the run goes on reports its end there.

ALTER TABLE training_runs ADD COLUMN channel_id INTEGER;
