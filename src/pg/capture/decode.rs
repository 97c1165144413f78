//! pgoutput messages (parsed by `pg_walstream`) into what the capturer needs: table
//! shapes and row images as PostgreSQL's text output, TOAST-unchanged values filled
//! from the old row.

use bytes::Bytes;
use pg_walstream::protocol::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};

use super::CaptureError;

/// A column value as pgoutput sent it, in text format; `None` is SQL NULL.
pub type Value = Option<Bytes>;

/// A table's columns as of the changes that follow its Relation message (the shape
/// before or after an `ALTER TABLE`, as the WAL recorded it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationDesc {
    /// The relation's OID, which later messages refer to.
    pub oid: u32,
    /// Named as trigger mode names it: `orders`, or `schema.table` outside `public`.
    pub table: String,
    /// Name, type OID and type modifier of each column, in attribute order.
    pub columns: Vec<(String, u32, i32)>,
}

/// One decoded row change or truncation.
#[derive(Debug)]
pub enum RowChange {
    /// INSERT: the new row.
    Insert {
        /// The relation.
        oid: u32,
        /// The new row.
        new: Vec<Value>,
    },
    /// UPDATE: the new row (unchanged TOAST values filled in) and the old one.
    Update {
        /// The relation.
        oid: u32,
        /// The new row.
        new: Vec<Value>,
        /// The old row (REPLICA IDENTITY FULL).
        old: Vec<Value>,
    },
    /// DELETE: the old row.
    Delete {
        /// The relation.
        oid: u32,
        /// The old row.
        old: Vec<Value>,
    },
    /// TRUNCATE of one or more tables (one event each).
    Truncate {
        /// The relations.
        oids: Vec<u32>,
    },
}

/// What one XLogData payload carried.
#[derive(Debug)]
pub enum Decoded {
    /// A table shape, sent before the first change to it and after each change of it.
    Relation(RelationDesc),
    /// A change inside the current transaction.
    Change(RowChange),
    /// Anything the capturer does not need (Begin/Commit come as their own events,
    /// Type, Origin, logical messages).
    Ignored,
}

/// Decodes pgoutput protocol version 1 (no in-progress streaming: large transactions
/// arrive after their commit and are applied in bounded chunks by the capturer).
pub struct Decoder {
    /// The parser; stateless for protocol 1, kept to avoid rebuilding it per message.
    parser: LogicalReplicationParser,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder {
            parser: LogicalReplicationParser::with_protocol_version(1),
        }
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

impl Decoder {
    /// Decodes one XLogData payload.
    pub fn decode(&mut self, data: Bytes) -> Result<Decoded, CaptureError> {
        let message = self
            .parser
            .parse_wal_message_bytes(data)
            .map_err(|err| CaptureError::Decode(err.to_string()))?
            .message;
        Ok(match message {
            LogicalReplicationMessage::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => Decoded::Relation(RelationDesc {
                oid: relation_id,
                table: table_name(&namespace, &relation_name),
                columns: columns
                    .iter()
                    .map(|c| (c.name.to_string(), c.type_id, c.type_modifier))
                    .collect(),
            }),
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                Decoded::Change(RowChange::Insert {
                    oid: relation_id,
                    new: values(tuple, None)?,
                })
            }
            LogicalReplicationMessage::Update {
                relation_id,
                old_tuple,
                new_tuple,
                ..
            } => {
                let old = match old_tuple {
                    Some(old) => values(old, None)?,
                    None => {
                        return Err(CaptureError::Decode(format!(
                            "UPDATE of relation {relation_id} carries no old row: its REPLICA IDENTITY is not FULL (run SELECT realtime.track on it)"
                        )))
                    }
                };
                let new = values(new_tuple, Some(&old))?;
                Decoded::Change(RowChange::Update {
                    oid: relation_id,
                    new,
                    old,
                })
            }
            LogicalReplicationMessage::Delete {
                relation_id,
                old_tuple,
                key_type,
            } => {
                if key_type != 'O' {
                    return Err(CaptureError::Decode(format!(
                        "DELETE of relation {relation_id} carries only its key: its REPLICA IDENTITY is not FULL (run SELECT realtime.track on it)"
                    )));
                }
                Decoded::Change(RowChange::Delete {
                    oid: relation_id,
                    old: values(old_tuple, None)?,
                })
            }
            LogicalReplicationMessage::Truncate { relation_ids, .. } => {
                Decoded::Change(RowChange::Truncate { oids: relation_ids })
            }
            _ => Decoded::Ignored,
        })
    }
}

/// `orders` for `public.orders`, else `schema.table`: the trigger's naming.
pub fn table_name(schema: &str, table: &str) -> String {
    if schema == "public" {
        table.to_owned()
    } else {
        format!("{schema}.{table}")
    }
}

/// The text values of a tuple; TOAST-unchanged ones taken from `old`.
fn values(tuple: TupleData, old: Option<&[Value]>) -> Result<Vec<Value>, CaptureError> {
    tuple
        .columns
        .into_iter()
        .enumerate()
        .map(|(i, column)| {
            if column.is_null() {
                Ok(None)
            } else if column.is_unchanged() {
                old.and_then(|old| old.get(i).cloned()).ok_or_else(|| {
                    CaptureError::Decode(format!(
                        "column {i} is an unchanged TOAST value and no old row carries it"
                    ))
                })
            } else if column.is_binary() {
                Err(CaptureError::Decode(
                    "binary column value; the stream must use text format".into(),
                ))
            } else {
                Ok(Some(column.into_bytes()))
            }
        })
        .collect()
}
