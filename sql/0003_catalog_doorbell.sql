-- The catalog doorbell: whatever may change the set of tracked tables or their
-- columns notifies 'rowcast_catalog' (no payload), so every gateway replica re-reads
-- its catalog before it next validates a stream's `tables=` or `filter=`.

-- track/untrack as in 0002, plus the doorbell.
CREATE OR REPLACE FUNCTION realtime.track(target regclass) RETURNS void
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
    INSERT INTO realtime.tracked (relid) VALUES (target) ON CONFLICT DO NOTHING;
    PERFORM pg_notify('rowcast_catalog', '');
END
$$;

CREATE OR REPLACE FUNCTION realtime.untrack(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture ON %s', target);
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture_truncate ON %s', target);
    DELETE FROM realtime.tracked WHERE relid = target;
    PERFORM pg_notify('rowcast_catalog', '');
END
$$;

-- DDL that can add, drop or rename columns or tables rings it too. Event triggers
-- need a superuser: where the migrating role is not one, the trigger is skipped, and
-- replicas still learn of new columns when a request names one and of dropped ones
-- within the periodic refresh.
CREATE OR REPLACE FUNCTION realtime.catalog_doorbell() RETURNS event_trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rowcast_catalog', '');
END
$$;

DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'rowcast_catalog_doorbell')
    THEN
        CREATE EVENT TRIGGER rowcast_catalog_doorbell ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE', 'DROP TABLE', 'DROP SCHEMA')
            EXECUTE FUNCTION realtime.catalog_doorbell();
    END IF;
END
$$;
