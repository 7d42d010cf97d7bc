-- Relays LISTEN on shop_outbox: a commit that added outbox rows wakes them (one
-- notification per transaction), wherever the writer runs.
CREATE OR REPLACE FUNCTION shop_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('shop_outbox', '');
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION shop_outbox_notify();
