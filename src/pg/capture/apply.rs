//! Writing decoded changes into `change_log`, rendered by PostgreSQL itself.
//!
//! pgoutput sends values as each type's text output. Casting that text back to the
//! column's type and calling `to_jsonb` on the row, server-side, gives exactly what the
//! capture trigger's `to_jsonb(NEW)` gives: numbers digit for digit, json and jsonb
//! embedded, arrays, booleans, timestamps. The row is built from the columns of the
//! Relation message the change was decoded with (types as `format_type` names them),
//! not from the table's current definition, so a change recorded before an `ALTER
//! TABLE` keeps the shape it had, as the trigger would have recorded it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use super::decode::{RelationDesc, Value};
use super::CaptureError;
use crate::event::ChangeRecord;
use crate::pg::changes::record_of;

/// Key–value pairs per `jsonb_build_object` call (its limit is 100 arguments).
const OBJECT_PAIRS: usize = 50;
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01), for commit times.
const PG_EPOCH_SECS: u64 = 946_684_800;

/// One table shape, with its prepared insert statement.
#[derive(Debug)]
pub struct Shape {
    /// The relation OID the stream refers to.
    pub oid: u32,
    /// The `table` value of its events.
    pub table: String,
    /// Its column count: row images are passed flattened, `width` values each.
    width: usize,
    /// `INSERT INTO change_log … SELECT … to_jsonb(row)`, prepared once per shape.
    statement: Statement,
    /// The same, `RETURNING` the rows as a read returns them: used only while the
    /// batch may still fit a doorbell payload, since returning large rows costs the
    /// database and the capturer.
    returning: Statement,
}

impl Shape {
    /// Looks up the column types' names and prepares the insert statement.
    pub async fn prepare(client: &Client, desc: &RelationDesc) -> Result<Shape, CaptureError> {
        let oids: Vec<u32> = desc.columns.iter().map(|c| c.1).collect();
        let modifiers: Vec<i32> = desc.columns.iter().map(|c| c.2).collect();
        let types: Vec<String> = client
            .query_typed(
                "SELECT format_type(t, m) FROM unnest($1::oid[], $2::int4[])
                     WITH ORDINALITY AS c(t, m, i) ORDER BY i",
                &[(&oids, Type::OID_ARRAY), (&modifiers, Type::INT4_ARRAY)],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let width = desc.columns.len();
        // Each column's values come in an array of their own, so that unnest walks
        // every array once (a subscript into one flat text[] walks it from the start:
        // quadratic in the chunk), and the object is built by jsonb_build_object,
        // which renders each value as to_jsonb(row) does, without a subplan per row.
        // It takes 100 arguments at most: wider rows are built from several objects.
        let image = |prefix: &str| {
            let pairs: Vec<String> = desc
                .columns
                .iter()
                .zip(&types)
                .enumerate()
                .map(|(k, ((name, _, _), ty))| {
                    format!("'{}', c.{prefix}{k}::{ty}", name.replace('\'', "''"))
                })
                .collect();
            if pairs.is_empty() {
                return "'{}'::jsonb".to_owned();
            }
            pairs
                .chunks(OBJECT_PAIRS)
                .map(|chunk| format!("jsonb_build_object({})", chunk.join(", ")))
                .collect::<Vec<_>>()
                .join(" || ")
        };
        let arrays = |first: usize| (first..first + width).map(|n| format!("${n}::text[]"));
        let names = |prefix: &'static str| (0..width).map(move |k| format!("{prefix}{k}"));
        let sources: Vec<String> = ["$2::text[]".to_owned(), "$3::timestamptz[]".to_owned()]
            .into_iter()
            .chain(arrays(4))
            .chain(arrays(4 + width))
            .collect();
        let columns: Vec<String> = ["op".to_owned(), "at".to_owned()]
            .into_iter()
            .chain(names("n"))
            .chain(names("o"))
            .collect();
        // WITH ORDINALITY scans the arrays in order and nothing sorts afterwards, so
        // nextval hands out ids in the order of the changes: commit order.
        let sql = format!(
            "INSERT INTO realtime.change_log (id, \"table\", op, row, old, committed_at)
             SELECT nextval('realtime.change_log_id_seq'), $1, c.op,
                    CASE WHEN c.op <> 'TRUNCATE' THEN {new} END,
                    CASE WHEN c.op = 'UPDATE' THEN {old} END,
                    c.at
             FROM unnest({sources}) WITH ORDINALITY AS c({columns}, i)",
            new = image("n"),
            old = image("o"),
            sources = sources.join(", "),
            columns = columns.join(", "),
        );
        let types: Vec<Type> = [Type::TEXT, Type::TEXT_ARRAY, Type::TIMESTAMPTZ_ARRAY]
            .into_iter()
            .chain(std::iter::repeat_n(Type::TEXT_ARRAY, 2 * width))
            .collect();
        let statement = client.prepare_typed(&sql, &types).await?;
        let returning = client
            .prepare_typed(&format!("{sql} RETURNING {RETURNING}"), &types)
            .await?;
        Ok(Shape {
            oid: desc.oid,
            table: desc.table.clone(),
            width,
            statement,
            returning,
        })
    }
}

/// What the insert returns of each row: the columns of
/// [`READ_AFTER`](crate::pg::changes::READ_AFTER), so that the doorbell can carry the
/// events exactly as a read of `change_log` would return them.
const RETURNING: &str = r#"id, "table", op, row, old,
    to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    (extract(epoch FROM committed_at) * 1000000)::int8"#;

/// One change ready to insert.
#[derive(Debug)]
pub struct Change {
    /// The shape it was decoded with.
    pub shape: Arc<Shape>,
    /// `INSERT`, `UPDATE`, `DELETE` or `TRUNCATE`.
    pub op: &'static str,
    /// The `row` image (the old row for DELETE; empty for TRUNCATE).
    pub row: Vec<Value>,
    /// The `old` image (UPDATE only).
    pub old: Option<Vec<Value>>,
    /// The transaction's commit time.
    pub committed_at: SystemTime,
}

/// A commit time from pgoutput (microseconds since 2000-01-01) as a `SystemTime`.
pub fn commit_time(micros: i64) -> SystemTime {
    let base = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_SECS);
    if micros >= 0 {
        base + Duration::from_micros(micros.unsigned_abs())
    } else {
        base - Duration::from_micros(micros.unsigned_abs())
    }
}

/// The bytes of text the changes' row images hold: no JSON rendering of them is
/// shorter, so a chunk above the doorbell's limit need not be returned.
pub fn text_bytes(changes: &[Change]) -> usize {
    let image = |values: &[Value]| values.iter().flatten().map(|v| v.len()).sum::<usize>();
    changes
        .iter()
        .map(|c| image(&c.row) + c.old.as_deref().map_or(0, image))
        .sum()
}

/// Inserts `changes` in order (one statement per run of one shape); with `returning`,
/// the rows written are returned, in id order.
pub async fn insert(
    client: &Client,
    changes: &[Change],
    returning: bool,
) -> Result<Vec<ChangeRecord>, CaptureError> {
    let mut written = Vec::new();
    let mut start = 0;
    while start < changes.len() {
        let shape = &changes[start].shape;
        let end = changes[start..]
            .iter()
            .position(|c| !Arc::ptr_eq(&c.shape, shape))
            .map_or(changes.len(), |n| start + n);
        let run = &changes[start..end];
        let ops: Vec<&str> = run.iter().map(|c| c.op).collect();
        let times: Vec<SystemTime> = run.iter().map(|c| c.committed_at).collect();
        // One array per column: the new images' columns, then the old images'.
        let mut columns: Vec<Vec<Option<&str>>> =
            vec![Vec::with_capacity(run.len()); 2 * shape.width];
        for change in run {
            let (new, old) = columns.split_at_mut(shape.width);
            push_image(new, Some(&change.row))?;
            push_image(old, change.old.as_deref())?;
        }
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            Vec::with_capacity(3 + columns.len());
        params.extend([
            &shape.table as &(dyn tokio_postgres::types::ToSql + Sync),
            &ops,
            &times,
        ]);
        params.extend(
            columns
                .iter()
                .map(|column| column as &(dyn tokio_postgres::types::ToSql + Sync)),
        );
        if returning {
            for row in client.query(&shape.returning, &params).await? {
                written.push(record_of(&row)?);
            }
        } else {
            client.execute(&shape.statement, &params).await?;
        }
        start = end;
    }
    Ok(written)
}

/// Appends one row image's values to the columns' arrays (NULLs when there is none).
fn push_image<'a>(
    columns: &mut [Vec<Option<&'a str>>],
    image: Option<&'a [Value]>,
) -> Result<(), CaptureError> {
    let image = image.unwrap_or(&[]);
    if !image.is_empty() && image.len() != columns.len() {
        return Err(CaptureError::Decode(format!(
            "a row of {} values for a relation of {} columns",
            image.len(),
            columns.len()
        )));
    }
    for (k, column) in columns.iter_mut().enumerate() {
        let text = match image.get(k) {
            Some(Some(bytes)) => Some(
                std::str::from_utf8(bytes)
                    .map_err(|_| CaptureError::Decode("a value is not UTF-8".into()))?,
            ),
            _ => None,
        };
        column.push(text);
    }
    Ok(())
}
