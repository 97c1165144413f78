-- Capture modes: triggers (the default) or the WAL (`--capture wal`).
--
-- In WAL mode no capture trigger exists: the tracked tables are in publication
-- `rowcast` with REPLICA IDENTITY FULL (so UPDATE and DELETE carry the whole old row),
-- and one gateway replica streams logical slot `rowcast` (pgoutput) into change_log.

-- Which mode the database is in, and how far the WAL capturer got. One row.
CREATE TABLE IF NOT EXISTS realtime.capture_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- `track` reads it to decide between triggers and the publication.
    mode        text    NOT NULL DEFAULT 'trigger' CHECK (mode IN ('trigger', 'wal')),
    -- Every transaction whose commit LSN is at or below this is already in change_log
    -- (applied by the capturer, or captured by triggers before the switch to WAL mode).
    -- Written in the same transaction as the change_log rows it covers, so a capturer
    -- that crashes or is replaced skips exactly what was applied.
    applied_lsn pg_lsn  NOT NULL DEFAULT '0/0',
    -- When capture last resumed on a new slot after the old one was lost: the WAL
    -- between them was never decoded, so positions before it get `reset`
    -- (realtime.retention.pruned_upto is raised to the head at that moment).
    recaptured_at timestamptz,
    -- Set while a tracked table is seen missing from the publication: its changes in
    -- that time are never decoded, so when it is published again positions before
    -- that moment get `reset` (realtime.close_gap).
    gap_open    boolean NOT NULL DEFAULT false
);
INSERT INTO realtime.capture_state (singleton) VALUES (true) ON CONFLICT DO NOTHING;

-- The capture triggers of trigger mode, on one table (idempotent).
CREATE OR REPLACE FUNCTION realtime.add_capture_triggers(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture ON %s', target);
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture_truncate ON %s', target);
    EXECUTE format(
        'CREATE CONSTRAINT TRIGGER rowcast_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
        'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION realtime.capture()',
        target);
    EXECUTE format(
        'CREATE TRIGGER rowcast_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION realtime.capture()',
        target);
END
$$;

-- WAL mode's counterpart: no triggers, the table in publication `rowcast`, whole old
-- rows in the WAL (idempotent). The publication must exist.
CREATE OR REPLACE FUNCTION realtime.publish(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture ON %s', target);
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture_truncate ON %s', target);
    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', target);
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel r
                   JOIN pg_publication p ON p.oid = r.prpubid
                   WHERE p.pubname = 'rowcast' AND r.prrelid = target) THEN
        EXECUTE format('ALTER PUBLICATION rowcast ADD TABLE %s', target);
    END IF;
END
$$;

-- Put a table under capture the way the database's mode says (idempotent).
CREATE OR REPLACE FUNCTION realtime.track(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT mode FROM realtime.capture_state) = 'wal' THEN
        PERFORM realtime.publish(target);
    ELSE
        PERFORM realtime.add_capture_triggers(target);
    END IF;
    INSERT INTO realtime.tracked (relid) VALUES (target) ON CONFLICT DO NOTHING;
END
$$;

-- Take a table out of capture, in either mode (idempotent).
CREATE OR REPLACE FUNCTION realtime.untrack(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture ON %s', target);
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture_truncate ON %s', target);
    IF EXISTS (SELECT 1 FROM pg_publication_rel r
               JOIN pg_publication p ON p.oid = r.prpubid
               WHERE p.pubname = 'rowcast' AND r.prrelid = target) THEN
        EXECUTE format('ALTER PUBLICATION rowcast DROP TABLE %s', target);
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY DEFAULT', target);
    END IF;
    DELETE FROM realtime.tracked WHERE relid = target;
END
$$;

-- The publication WAL mode streams; created before the slot, because pgoutput looks
-- publications up as of each decoded change, and one created later is "missing" for
-- the changes before it.
CREATE OR REPLACE FUNCTION realtime.ensure_publication() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'rowcast') THEN
        CREATE PUBLICATION rowcast;
    END IF;
END
$$;

-- The trigger → WAL switch, run in its own transaction once the publication and the
-- slot exist (see src/pg/capture/switch.rs for why no change is lost or doubled).
-- Replacing the triggers takes each tracked table's lock, so it waits for the writers
-- in flight (their triggers fire and they commit first) and holds back new ones until
-- this commits. The WAL insert position read after every lock is taken is therefore
-- above every trigger-captured commit and below every commit the WAL must capture:
-- it becomes applied_lsn, and the capturer applies only commits above it. Returns it.
CREATE OR REPLACE FUNCTION realtime.switch_to_wal() RETURNS pg_lsn
LANGUAGE plpgsql AS $$
DECLARE
    t     regclass;
    point pg_lsn;
BEGIN
    -- 0x726f7773 = 'rows': one switch at a time.
    PERFORM pg_advisory_xact_lock(1920890739);
    IF (SELECT mode FROM realtime.capture_state FOR UPDATE) = 'wal' THEN
        RETURN NULL;
    END IF;
    FOR t IN SELECT relid FROM realtime.tracked ORDER BY relid::oid LOOP
        PERFORM realtime.publish(t);
    END LOOP;
    point := pg_current_wal_insert_lsn();
    UPDATE realtime.capture_state SET mode = 'wal', applied_lsn = point;
    RETURN point;
END
$$;

-- The WAL → trigger switch, first half: holds back the writers of every tracked table
-- (they finish first, new ones wait) and returns the WAL insert position. Every commit
-- on a tracked table below it must be applied by the capturer before
-- realtime.switch_to_trigger() runs in the same transaction.
CREATE OR REPLACE FUNCTION realtime.hold_writers() RETURNS pg_lsn
LANGUAGE plpgsql AS $$
DECLARE
    t regclass;
BEGIN
    PERFORM pg_advisory_xact_lock(1920890739);
    FOR t IN SELECT relid FROM realtime.tracked ORDER BY relid::oid LOOP
        EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', t);
    END LOOP;
    RETURN pg_current_wal_insert_lsn();
END
$$;

-- The WAL → trigger switch, second half: triggers back on, the tables out of the
-- publication (so the commits after this one, captured by triggers, are not decoded).
CREATE OR REPLACE FUNCTION realtime.switch_to_trigger() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT relid FROM realtime.tracked ORDER BY relid::oid LOOP
        PERFORM realtime.add_capture_triggers(t);
        IF EXISTS (SELECT 1 FROM pg_publication_rel r
                   JOIN pg_publication p ON p.oid = r.prpubid
                   WHERE p.pubname = 'rowcast' AND r.prrelid = t) THEN
            EXECUTE format('ALTER PUBLICATION rowcast DROP TABLE %s', t);
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY DEFAULT', t);
        END IF;
    END LOOP;
    UPDATE realtime.capture_state SET mode = 'trigger';
END
$$;

-- Capture resumes on a new slot after the old one was lost (dropped or invalidated):
-- the WAL between them was never decoded, so every position up to the current head,
-- the head included, gets `reset`: retention's horizon is raised to a fresh id, above
-- every id drawn so far and below every id drawn after. The new slot's consistent
-- point becomes the applied position.
CREATE OR REPLACE FUNCTION realtime.recapture(consistent_point pg_lsn) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE realtime.retention
    SET pruned_upto = greatest(pruned_upto, nextval('realtime.change_log_id_seq'));
    UPDATE realtime.capture_state
    SET applied_lsn = consistent_point, recaptured_at = now();
END
$$;

-- A tracked table was published again after a gap (see capture_state.gap_open): every
-- position up to now gets `reset`, as after a recapture. Returns whether a gap closed.
CREATE OR REPLACE FUNCTION realtime.close_gap() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE realtime.capture_state SET gap_open = false WHERE gap_open;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE realtime.retention
    SET pruned_upto = greatest(pruned_upto, nextval('realtime.change_log_id_seq'));
    RETURN true;
END
$$;
