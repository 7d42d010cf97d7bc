-- Consumers forget inbox rows past the stream's horizon (see consumer.py): by age.
CREATE INDEX IF NOT EXISTS inbox_handled_at ON inbox (consumer, handled_at);
