-- unread_counts: each user's number of unread notifications, kept by a trigger in the
-- transaction of every change to notifications (whoever writes it), so CountUnread (the
-- dashboard's part) reads one row, however many notifications the user has. A count
-- over the partial index grew with them.
CREATE TABLE IF NOT EXISTS unread_counts (
    user_id TEXT PRIMARY KEY,
    unread BIGINT NOT NULL CHECK (unread >= 0)
);
INSERT INTO unread_counts (user_id, unread)
    SELECT user_id, count(*) FROM notifications WHERE read = 0 GROUP BY user_id
    ON CONFLICT (user_id) DO NOTHING;
CREATE OR REPLACE FUNCTION notifications_unread_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.read = 0 THEN
        UPDATE unread_counts SET unread = unread - 1 WHERE user_id = OLD.user_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.read = 0 THEN
        INSERT INTO unread_counts (user_id, unread) VALUES (NEW.user_id, 1)
            ON CONFLICT (user_id) DO UPDATE SET unread = unread_counts.unread + 1;
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER notifications_unread_count
    AFTER INSERT OR DELETE OR UPDATE OF read, user_id ON notifications
    FOR EACH ROW EXECUTE FUNCTION notifications_unread_count();
