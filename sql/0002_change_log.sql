-- The change log: every captured change, ids assigned in commit order.
CREATE SCHEMA IF NOT EXISTS realtime;

CREATE SEQUENCE IF NOT EXISTS realtime.change_log_id_seq AS bigint;

CREATE TABLE IF NOT EXISTS realtime.change_log (
    id           bigint PRIMARY KEY,
    "table"      text        NOT NULL,
    op           text        NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    row          jsonb,
    old          jsonb,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER SEQUENCE realtime.change_log_id_seq OWNED BY realtime.change_log.id;

-- Retention's memory: the highest id it ever deleted. A resume point below it may have
-- lost events, so it gets a `reset`; one above it never does, whatever the gaps.
CREATE TABLE IF NOT EXISTS realtime.retention (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_upto bigint  NOT NULL DEFAULT 0
);
INSERT INTO realtime.retention (singleton) VALUES (true) ON CONFLICT DO NOTHING;

-- Tables under capture, so the gateway can validate `tables=` and filter columns.
CREATE TABLE IF NOT EXISTS realtime.tracked (
    relid regclass PRIMARY KEY
);

-- The capture trigger. For rows it is a deferred constraint trigger, so it runs at
-- COMMIT; it takes one transaction-scoped advisory lock before it draws an id, and that
-- lock is released only once the transaction is visible. Ids therefore become visible
-- in the order they were drawn: a reader at `id > cursor` can never be overtaken by a
-- smaller id committing later.
--
-- TRUNCATE fires no row triggers, so the same function also runs as a statement
-- trigger and records one event without a row. That runs at statement time and holds
-- the lock until the transaction ends, so its id is in commit order too (PostgreSQL
-- refuses TRUNCATE of a table with pending row events, so no earlier change to the same
-- table in the transaction can be ordered after it).
CREATE OR REPLACE FUNCTION realtime.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    -- Everything that does not need the lock is computed before taking it: the lock
    -- serialises every tracked commit, so its section is kept to nextval + INSERT.
    tbl     text := CASE WHEN TG_TABLE_SCHEMA = 'public' THEN TG_TABLE_NAME
                         ELSE TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME END;
    new_row jsonb := CASE TG_OP WHEN 'TRUNCATE' THEN NULL
                                WHEN 'DELETE' THEN to_jsonb(OLD)
                                ELSE to_jsonb(NEW) END;
    old_row jsonb := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END;
BEGIN
    -- 0x726f7763617374 = 'rowcast': the commit-order lock shared by every tracked table.
    PERFORM pg_advisory_xact_lock(32199620637860724);
    INSERT INTO realtime.change_log (id, "table", op, row, old, committed_at)
    VALUES (nextval('realtime.change_log_id_seq'), tbl, TG_OP, new_row, old_row,
            clock_timestamp());
    -- The doorbell: no payload (NOTIFY's 8000-byte limit never matters) and, being the
    -- same every time, PostgreSQL folds it to one notification per transaction.
    PERFORM pg_notify('rowcast', '');
    RETURN NULL;
END
$$;

-- Put a table under capture (idempotent).
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
END
$$;

-- Take a table out of capture (idempotent).
CREATE OR REPLACE FUNCTION realtime.untrack(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture ON %s', target);
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_capture_truncate ON %s', target);
    DELETE FROM realtime.tracked WHERE relid = target;
END
$$;

-- One batch of retention: of the `batch` oldest rows, delete those committed before
-- now - `max_age`, or whose id is more than `max_rows` below the newest id (NULL disables
-- a rule); record the highest id deleted and return how many rows went. Bounded work per
-- call, so it never holds long locks. Only one caller prunes at a time; the others return
-- 0 at once. Writers never wait on it: it takes no capture lock.
CREATE OR REPLACE FUNCTION realtime.prune(max_age interval, max_rows bigint, batch integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    row_horizon bigint := 0;
    cutoff      timestamptz := '-infinity';
    deleted     bigint;
    top         bigint;
BEGIN
    -- 0x726f7770 = 'rowp': the pruning lock, distinct from the commit-order lock.
    IF NOT pg_try_advisory_xact_lock(1920890736) THEN
        RETURN 0;
    END IF;
    IF max_rows IS NOT NULL THEN
        SELECT coalesce(max(id), 0) - max_rows INTO row_horizon FROM realtime.change_log;
    END IF;
    IF max_age IS NOT NULL THEN
        cutoff := clock_timestamp() - max_age;
    END IF;
    WITH oldest AS (
        SELECT id, committed_at FROM realtime.change_log ORDER BY id LIMIT batch
    ), gone AS (
        DELETE FROM realtime.change_log c USING oldest o
        WHERE c.id = o.id AND (o.id <= row_horizon OR o.committed_at < cutoff)
        RETURNING c.id
    )
    SELECT count(*), max(id) INTO deleted, top FROM gone;
    IF deleted > 0 THEN
        UPDATE realtime.retention SET pruned_upto = greatest(pruned_upto, top);
    END IF;
    RETURN deleted;
END
$$;

SELECT realtime.track('public.orders');
