-- unread_counts: each user's number of unread notifications, kept by triggers in the
-- transaction of every change to notifications (whoever writes it), so CountUnread (the
-- dashboard's part) reads one row, however many notifications the user has. A count
-- over the partial index grew with them: about 2 ms for 40,000.
CREATE TABLE IF NOT EXISTS unread_counts (
    user_id TEXT PRIMARY KEY,
    unread INTEGER NOT NULL CHECK (unread >= 0)
) WITHOUT ROWID;
INSERT INTO unread_counts (user_id, unread)
    SELECT user_id, count(*) FROM notifications WHERE read = 0 GROUP BY user_id;
CREATE TRIGGER IF NOT EXISTS notifications_unread_insert AFTER INSERT ON notifications
    WHEN NEW.read = 0
BEGIN
    INSERT INTO unread_counts (user_id, unread) VALUES (NEW.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET unread = unread + 1;
END;
CREATE TRIGGER IF NOT EXISTS notifications_unread_update AFTER UPDATE OF read, user_id
    ON notifications WHEN OLD.read <> NEW.read OR OLD.user_id <> NEW.user_id
BEGIN
    UPDATE unread_counts SET unread = unread - 1 WHERE user_id = OLD.user_id AND OLD.read = 0;
    INSERT INTO unread_counts (user_id, unread) SELECT NEW.user_id, 1 WHERE NEW.read = 0
        ON CONFLICT (user_id) DO UPDATE SET unread = unread + 1;
END;
CREATE TRIGGER IF NOT EXISTS notifications_unread_delete AFTER DELETE ON notifications
    WHEN OLD.read = 0
BEGIN
    UPDATE unread_counts SET unread = unread - 1 WHERE user_id = OLD.user_id;
END;
