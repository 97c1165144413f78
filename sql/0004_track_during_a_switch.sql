-- realtime.track and realtime.untrack take the mode-switch lock (0x726f7773 = 'rows',
-- the one realtime.switch_to_wal and realtime.hold_writers take), so a table tracked
-- or untracked while a switch runs is handled for the mode the switch leaves behind.
-- Without it, `CREATE TABLE t; SELECT realtime.track('t')` committed while a gateway
-- started with `--capture wal` switched the database got capture triggers for trigger
-- mode after the switch had listed the tracked tables: t ended up with triggers and out
-- of the publication, and WAL capture refused until t was tracked again.

CREATE OR REPLACE FUNCTION realtime.track(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1920890739);
    -- A new statement after the lock: it sees the mode a switch just committed.
    IF (SELECT mode FROM realtime.capture_state) = 'wal' THEN
        PERFORM realtime.publish(target);
    ELSE
        PERFORM realtime.add_capture_triggers(target);
    END IF;
    INSERT INTO realtime.tracked (relid) VALUES (target) ON CONFLICT DO NOTHING;
END
$$;

CREATE OR REPLACE FUNCTION realtime.untrack(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1920890739);
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
