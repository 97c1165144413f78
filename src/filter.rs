//! Stream parameters: `since`, `tables`, `ops` and `filter`, parsed, validated against
//! the tracked tables, and matched against events.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::event::{Event, Op, View};
use crate::query::{self, QueryError};

/// The tracked tables and their columns, as the stream parameters see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Table name (`schema.table` outside `public`) to its columns: what `tables=`
    /// and `filter=` are checked against.
    tables: HashMap<String, Vec<String>>,
}

impl Catalog {
    /// A catalog of `(table, columns)`; table names as events carry them.
    pub fn new(tables: impl IntoIterator<Item = (String, Vec<String>)>) -> Catalog {
        Catalog {
            tables: tables.into_iter().collect(),
        }
    }

    /// Whether the table is tracked.
    pub fn contains(&self, table: &str) -> bool {
        self.tables.contains_key(table)
    }

    /// The tracked tables, by name.
    pub fn tables(&self) -> Vec<Arc<str>> {
        let mut tables: Vec<Arc<str>> = self.tables.keys().map(|t| Arc::from(t.as_str())).collect();
        tables.sort();
        tables
    }

    /// Whether `table` is tracked and has `column`.
    pub fn has_column(&self, table: &str, column: &str) -> bool {
        self.tables
            .get(table)
            .is_some_and(|columns| columns.iter().any(|c| c == column))
    }
}

/// Why stream parameters were refused (always a 400 before any upgrade).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// The query string itself could not be decoded.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A parameter the streams don't know.
    #[error("unknown query parameter `{0}`")]
    Unknown(String),
    /// A known parameter with a value that breaks its rule.
    #[error("invalid `{param}`: {message}")]
    Invalid {
        /// The parameter at fault.
        param: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// `tables` or `filter` names a table or column the catalog does not hold. The
    /// catalog may be older than the request, so the caller re-reads it before
    /// refusing.
    #[error("invalid `{param}`: {message}")]
    NotInCatalog {
        /// The parameter at fault.
        param: &'static str,
        /// What is missing.
        message: String,
    },
}

impl ParamError {
    fn invalid(param: &'static str, message: impl Into<String>) -> ParamError {
        ParamError::Invalid {
            param,
            message: message.into(),
        }
    }

    /// The parameter at fault, for the error body's `field`.
    pub fn param(&self) -> Option<&str> {
        match self {
            ParamError::Query(_) => None,
            ParamError::Unknown(name) => Some(name),
            ParamError::Invalid { param, .. } | ParamError::NotInCatalog { param, .. } => {
                Some(param)
            }
        }
    }

    /// The error body's `code`: `unknown_parameter`, `bad_filter` for anything wrong
    /// with a `filter=`, else `invalid_parameter`.
    pub fn code(&self) -> &'static str {
        match self {
            ParamError::Unknown(_) => "unknown_parameter",
            _ if self.param() == Some("filter") => "bad_filter",
            _ => "invalid_parameter",
        }
    }

    /// Whether a newer catalog might accept the parameters.
    pub fn is_catalog_miss(&self) -> bool {
        matches!(self, ParamError::NotInCatalog { .. })
    }
}

/// Parses a stream position: a decimal `u64`, nothing else (no sign, no spaces).
pub fn parse_position(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// What a stream asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamParams {
    /// Resume after this id (`since`, or SSE's `Last-Event-ID`).
    pub since: Option<u64>,
    /// `snapshot=true`: send the matching rows first (only when there is no `since`).
    pub snapshot: bool,
    /// Which events to send.
    pub selection: Selection,
}

impl StreamParams {
    /// Whether the parameters name tables or columns, which only the catalog can
    /// vouch for.
    pub fn names_catalog(&self) -> bool {
        self.selection.tables.is_some() || !self.selection.filters.is_empty()
    }

    /// Parses the query string of `/ws` or `/events` against the tracked tables.
    pub fn parse(query: &str, catalog: &Catalog) -> Result<StreamParams, ParamError> {
        let mut since = None;
        let mut tables: Option<Vec<Arc<str>>> = None;
        let mut ops = None;
        let mut filters = Vec::new();
        let mut snapshot = None;
        for (name, value) in query::parse_pairs(query)? {
            match name.as_str() {
                "snapshot" => {
                    if snapshot.is_some() {
                        return Err(ParamError::invalid("snapshot", "given more than once"));
                    }
                    snapshot = Some(match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(ParamError::invalid(
                                "snapshot",
                                format!("must be true or false, not `{value}`"),
                            ))
                        }
                    });
                }
                "since" => {
                    if since.is_some() {
                        return Err(ParamError::invalid("since", "given more than once"));
                    }
                    since = Some(parse_position(&value).ok_or_else(|| {
                        ParamError::invalid("since", "must be a decimal event id")
                    })?);
                }
                "tables" => {
                    if tables.is_some() {
                        return Err(ParamError::invalid("tables", "given more than once"));
                    }
                    tables = Some(parse_tables(&value, catalog)?);
                }
                "ops" => {
                    if ops.is_some() {
                        return Err(ParamError::invalid("ops", "given more than once"));
                    }
                    ops = Some(parse_ops(&value)?);
                }
                "filter" => filters.push(Filter::parse(&value)?),
                _ => return Err(ParamError::Unknown(name)),
            }
        }
        for filter in &filters {
            let known = match &tables {
                Some(tables) => tables.iter().any(|t| catalog.has_column(t, &filter.column)),
                None => catalog
                    .tables
                    .keys()
                    .any(|t| catalog.has_column(t, &filter.column)),
            };
            if !known {
                return Err(ParamError::NotInCatalog {
                    param: "filter",
                    message: format!("no selected table has a column `{}`", filter.column),
                });
            }
        }
        Ok(StreamParams {
            since,
            snapshot: snapshot.unwrap_or(false),
            selection: Selection {
                tables,
                ops: ops.unwrap_or(ALL_OPS),
                filters,
                table_filters: Vec::new(),
            },
        })
    }
}

const ALL_OPS: u8 = 0b1111;

fn parse_tables(value: &str, catalog: &Catalog) -> Result<Vec<Arc<str>>, ParamError> {
    let mut tables: Vec<Arc<str>> = Vec::new();
    for name in value.split(',') {
        if name.is_empty() {
            return Err(ParamError::invalid("tables", "empty table name"));
        }
        if !catalog.contains(name) {
            return Err(ParamError::NotInCatalog {
                param: "tables",
                message: format!("`{name}` is not a tracked table"),
            });
        }
        if !tables.iter().any(|t| &**t == name) {
            tables.push(crate::event::table_name(name));
        }
    }
    Ok(tables)
}

fn parse_ops(value: &str) -> Result<u8, ParamError> {
    value.split(',').try_fold(0u8, |set, name| {
        Op::parse(name).map(|op| set | op.bit()).ok_or_else(|| {
            ParamError::invalid(
                "ops",
                format!("`{name}` is not one of INSERT, UPDATE, DELETE, TRUNCATE"),
            )
        })
    })
}

/// How a selected event goes out (see [`Selection::judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The event's shared form, unchanged.
    AsIs,
    /// The form that says how the row moved relative to the view.
    View(View),
}

/// Which events a subscriber wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// `None`: every tracked table.
    pub tables: Option<Vec<Arc<str>>>,
    /// The `ops=` asked for, one [`crate::event::Op::bit`] each.
    ops: u8,
    /// The `filter=` conditions, all of which an event must pass.
    filters: Vec<Filter>,
    /// Filters for the rows of one table only (a token's scope), ANDed with `filters`.
    table_filters: Vec<(Arc<str>, Vec<Filter>)>,
}

impl Selection {
    /// Whether the event passes the table, op and row filters.
    pub fn matches(&self, event: &Event) -> bool {
        self.judge(event).is_some()
    }

    /// How the event is delivered, if at all. A live view judges an UPDATE on both
    /// images: both match → as is; only the new row → [`View::Enter`]; only the old
    /// one → [`View::Leave`]; neither → not delivered. `view` only ever comes from row
    /// filters, so unfiltered streams get every event as is.
    pub fn judge(&self, event: &Event) -> Option<Delivery> {
        if self.ops & event.op.bit() == 0 || !self.selects_table(&event.table) {
            return None;
        }
        if event.op == Op::Truncate || !self.filters_table(&event.table) {
            return Some(Delivery::AsIs);
        }
        let new = self.matches_row(&event.table, event.row.as_ref());
        match (&event.old, event.op) {
            (Some(old), Op::Update) => match (self.matches_row(&event.table, Some(old)), new) {
                (true, true) => Some(Delivery::AsIs),
                (false, true) => Some(Delivery::View(View::Enter)),
                (true, false) => Some(Delivery::View(View::Leave)),
                (false, false) => None,
            },
            _ => new.then_some(Delivery::AsIs),
        }
    }

    /// The event as this selection delivers it (the original or its shared view
    /// form), or `None`.
    pub fn pick(&self, event: &Arc<Event>) -> Option<Arc<Event>> {
        self.pick_ref(event).cloned()
    }

    /// [`Selection::pick`] by reference: the event or its view form, both held by
    /// `event` (the fan-out writes them without taking a reference count per client).
    pub fn pick_ref<'a>(&self, event: &'a Arc<Event>) -> Option<&'a Arc<Event>> {
        match self.judge(event)? {
            Delivery::AsIs => Some(event),
            Delivery::View(view) => Some(event.view(view)),
        }
    }

    /// Whether `table` is selected. Names are interned
    /// ([`crate::event::table_name`]), so this is nearly always a pointer comparison.
    pub fn selects_table(&self, table: &Arc<str>) -> bool {
        self.tables.as_ref().is_none_or(|tables| {
            tables
                .iter()
                .any(|t| Arc::ptr_eq(t, table) || **t == **table)
        })
    }

    /// Whether a row of `table` passes every row filter: what a snapshot sends,
    /// judged exactly as the stream judges a change's `row`.
    pub fn matches_row(&self, table: &str, row: Option<&serde_json::Map<String, Value>>) -> bool {
        self.filters.iter().all(|filter| filter.matches(row))
            && self
                .table_filters
                .iter()
                .filter(|(t, _)| **t == *table)
                .all(|(_, filters)| filters.iter().all(|filter| filter.matches(row)))
    }

    /// Adds filters for the rows of `table` only (a token's scope), ANDed with the
    /// rest.
    pub fn and_table_filters(&mut self, table: &str, filters: &[Filter]) {
        if !filters.is_empty() {
            self.table_filters
                .push((Arc::from(table), filters.to_vec()));
        }
    }

    /// Whether rows of `table` are filtered at all (by the client or its token): only
    /// then is a change judged on its images.
    pub fn filters_table(&self, table: &str) -> bool {
        !self.filters.is_empty() || self.table_filters.iter().any(|(t, _)| **t == *table)
    }

    /// The hub index for this selection: a column and the value keys (see
    /// [`value_key`]) one of which a row must hold to match, taken from the first `eq`
    /// or `in` filter whose every operand can be keyed. `None`: no such filter.
    pub fn index_keys(&self) -> Option<(&str, Vec<String>)> {
        self.filters.iter().find_map(|filter| {
            let operands: &[Operand] = match &filter.test {
                Test::Compare(Comparison::Eq, operand) => std::slice::from_ref(operand),
                Test::In(operands) => operands,
                Test::Compare(..) => return None,
            };
            let mut keys = Vec::with_capacity(operands.len() * 2);
            for operand in operands {
                // A row string compares with the operand as text.
                keys.push(format!("s:{}", operand.text));
                if let Some(number) = operand.number {
                    // A row number compares with a numeric operand as a number; one too
                    // large to key exactly makes the filter unindexable.
                    keys.push(format!("n:{}", number.canonical()?));
                }
            }
            Some((filter.column.as_str(), keys))
        })
    }
}

/// The key under which a row value is indexed: equal keys exactly when an `eq` filter
/// comparing that value with an operand would say equal (for the operand's keys from
/// [`Selection::index_keys`]). `None` for null (which matches nothing) and for
/// numbers too large to key exactly.
pub fn value_key(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Number(n) => Some(format!("n:{}", Number::of_json(n)?.canonical()?)),
        Value::String(s) => Some(format!("s:{s}")),
        Value::Bool(b) => Some(format!("s:{b}")),
        other => Some(format!("s:{other}")),
    }
}

/// One `filter=<column>=<op>.<value>` condition on the event's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The row's column it looks at.
    column: String,
    /// What the column's value must pass.
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Compare(Comparison, Operand),
    In(Vec<Operand>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Comparison {
    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Comparison::Eq => ordering == Ordering::Equal,
            Comparison::Neq => ordering != Ordering::Equal,
            Comparison::Lt => ordering == Ordering::Less,
            Comparison::Lte => ordering != Ordering::Greater,
            Comparison::Gt => ordering == Ordering::Greater,
            Comparison::Gte => ordering != Ordering::Less,
        }
    }
}

/// A filter value, kept as text and, when it reads as a number, as that number.
#[derive(Debug, Clone, PartialEq)]
struct Operand {
    /// As written: compared with string values.
    text: String,
    /// As a number, when it reads as one: compared with numeric values.
    number: Option<Number>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    /// JSON number grammar only: `-?digits(.digits)?([eE][+-]?digits)?`.
    fn parse(text: &str) -> Option<Number> {
        let bytes = text.as_bytes();
        let mut i = usize::from(bytes.first() == Some(&b'-'));
        let digits = |i: &mut usize| {
            let start = *i;
            while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > start
        };
        if !digits(&mut i) {
            return None;
        }
        let mut integral = true;
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            integral = false;
            if !digits(&mut i) {
                return None;
            }
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            integral = false;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        if i != bytes.len() {
            return None;
        }
        if integral {
            if let Ok(int) = text.parse() {
                return Some(Number::Int(int));
            }
        }
        text.parse().ok().map(Number::Float)
    }

    /// One text per numeric value, integral floats written as integers, so that keys
    /// are equal exactly when the numbers compare equal; `None` beyond 2^53, where
    /// floats can no longer tell neighbouring integers apart.
    fn canonical(self) -> Option<String> {
        const EXACT: f64 = 9_007_199_254_740_992.0;
        match self {
            Number::Int(i) if i.unsigned_abs() < 1 << 53 => Some(i.to_string()),
            Number::Float(f) if f.is_finite() && f.abs() < EXACT => Some(if f.fract() == 0.0 {
                (f as i64).to_string()
            } else {
                f.to_string()
            }),
            _ => None,
        }
    }

    fn of_json(number: &serde_json::Number) -> Option<Number> {
        number
            .as_i64()
            .map(Number::Int)
            .or_else(|| number.as_f64().map(Number::Float))
    }

    fn compare(self, other: Number) -> Option<Ordering> {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

impl Operand {
    fn new(text: String) -> Operand {
        let number = Number::parse(&text);
        Operand { text, number }
    }

    /// How the row's value compares with this operand; `None` never matches.
    fn compare(&self, value: &Value) -> Option<Ordering> {
        match value {
            Value::Null => None,
            Value::Number(n) => match (Number::of_json(n), self.number) {
                (Some(row), Some(operand)) => row.compare(operand),
                _ => Some(n.to_string().as_str().cmp(self.text.as_str())),
            },
            Value::String(s) => Some(s.as_str().cmp(self.text.as_str())),
            Value::Bool(b) => Some(if *b { "true" } else { "false" }.cmp(self.text.as_str())),
            other => Some(other.to_string().as_str().cmp(self.text.as_str())),
        }
    }
}

impl Filter {
    /// Parses `<column>=<op>.<value>`.
    pub fn parse(text: &str) -> Result<Filter, ParamError> {
        let bad = |message: &str| ParamError::invalid("filter", format!("{message} in `{text}`"));
        let (column, rest) = text
            .split_once('=')
            .ok_or_else(|| bad("expected <column>=<op>.<value>"))?;
        if column.is_empty() {
            return Err(bad("empty column name"));
        }
        let (op, value) = rest
            .split_once('.')
            .ok_or_else(|| bad("expected <op>.<value>"))?;
        let comparison = match op {
            "eq" => Comparison::Eq,
            "neq" => Comparison::Neq,
            "lt" => Comparison::Lt,
            "lte" => Comparison::Lte,
            "gt" => Comparison::Gt,
            "gte" => Comparison::Gte,
            "in" if value == "()" => {
                // A list that can match nothing is a client bug, not a quiet stream.
                return Err(ParamError::invalid(
                    "filter",
                    format!(
                        "`in.()` on column `{column}` is an empty list and matches nothing \
                         (write in.(\"\") for the empty string)"
                    ),
                ));
            }
            "in" => {
                let items = parse_list(value).ok_or_else(|| bad("expected in.(a,b,…)"))?;
                return Ok(Filter {
                    column: column.to_owned(),
                    test: Test::In(items.into_iter().map(Operand::new).collect()),
                });
            }
            _ => return Err(bad("unknown operator (eq, neq, lt, lte, gt, gte, in)")),
        };
        Ok(Filter {
            column: column.to_owned(),
            test: Test::Compare(comparison, Operand::new(value.to_owned())),
        })
    }

    /// The column the filter tests.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// Whether a row passes; a missing row, column or null value never does.
    pub fn matches(&self, row: Option<&serde_json::Map<String, Value>>) -> bool {
        let Some(value) = row.and_then(|row| row.get(&self.column)) else {
            return false;
        };
        match &self.test {
            Test::Compare(comparison, operand) => operand
                .compare(value)
                .is_some_and(|ordering| comparison.accepts(ordering)),
            Test::In(operands) => operands
                .iter()
                .any(|operand| operand.compare(value) == Some(Ordering::Equal)),
        }
    }
}

/// Parses `(a,b,"c,d")`: items separated by commas; a double-quoted item may hold `,`
/// and `)`, and `\"` or `\\` inside quotes. At least one item (`()` is refused
/// before this is called).
fn parse_list(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => item.push(chars.next()?),
                    c => item.push(c),
                }
            }
            match chars.next() {
                None => {
                    items.push(item);
                    return Some(items);
                }
                Some(',') => items.push(item),
                Some(_) => return None,
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        items.push(item);
                        return Some(items);
                    }
                    Some(',') => break,
                    Some('"' | '(' | ')') => return None,
                    Some(c) => item.push(c),
                }
            }
            items.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        Catalog::new([
            (
                "orders".to_owned(),
                vec!["id".into(), "status".into(), "customer_name".into()],
            ),
            ("audit.log".to_owned(), vec!["id".into(), "note".into()]),
        ])
    }

    fn event(op: &str, table: &str, row: Value) -> Arc<Event> {
        crate::testing::event(1, table, op, Some(row), None)
    }

    fn selects(query: &str, row: Value) -> bool {
        let params = StreamParams::parse(query, &catalog()).unwrap();
        params.selection.matches(&event("UPDATE", "orders", row))
    }

    #[test]
    fn since_must_be_a_plain_decimal_u64() {
        assert_eq!(parse_position("0"), Some(0));
        assert_eq!(parse_position("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1.0",
            "18446744073709551616",
            "0x10",
            "abc",
        ] {
            assert_eq!(parse_position(bad), None, "{bad:?}");
            assert!(StreamParams::parse(&format!("since={bad}"), &catalog()).is_err());
        }
    }

    #[test]
    fn numbers_compare_as_numbers_and_text_by_code_point() {
        assert!(selects("filter=id=gt.9", json!({"id": 10})));
        assert!(!selects("filter=id=gt.9", json!({"id": "10"})));
        assert!(selects("filter=id=lte.1e1", json!({"id": 10})));
        assert!(selects("filter=id=eq.10", json!({"id": 10.0})));
        assert!(selects(
            "filter=status=lt.shipped",
            json!({"status": "pending"})
        ));
        assert!(selects("filter=status=gt.Z", json!({"status": "ä"})));
        assert!(selects("filter=id=gt.a", json!({"id": 10})) == ("10" > "a"));
    }

    #[test]
    fn null_and_missing_values_match_nothing() {
        assert!(!selects("filter=status=neq.x", json!({"status": null})));
        assert!(!selects("filter=status=neq.x", json!({"id": 1})));
    }

    #[test]
    fn in_lists_accept_quoted_items() {
        let query = r#"filter=customer_name=in.(Ann,"Smith, John","a)b","q\"t")"#;
        assert!(selects(query, json!({"customer_name": "Smith, John"})));
        assert!(selects(query, json!({"customer_name": "a)b"})));
        assert!(selects(query, json!({"customer_name": "q\"t"})));
        assert!(selects(query, json!({"customer_name": "Ann"})));
        assert!(!selects(query, json!({"customer_name": "John"})));
        for bad in ["in.", "in.()x", "in.(a", r#"in.("a"b)"#, "in.(a(b)"] {
            assert!(Filter::parse(&format!("status={bad}")).is_err(), "{bad}");
        }
        let empty = Filter::parse("status=in.()").unwrap_err();
        assert_eq!(empty.code(), "bad_filter");
        assert!(empty.to_string().contains("`status`"), "{empty}");
        assert!(selects(r#"filter=status=in.("")"#, json!({"status": ""})));
        assert!(!selects(r#"filter=status=in.("")"#, json!({"status": "x"})));
    }

    #[test]
    fn filters_are_anded_and_truncate_passes_all() {
        let query = "filter=status=eq.shipped&filter=id=gte.5";
        assert!(selects(query, json!({"status": "shipped", "id": 5})));
        assert!(!selects(query, json!({"status": "shipped", "id": 4})));
        let params = StreamParams::parse(query, &catalog()).unwrap();
        let truncate = crate::testing::event(2, "orders", "TRUNCATE", None, None);
        assert!(params.selection.matches(&truncate));
    }

    fn update(row: Value, old: Value) -> Arc<Event> {
        crate::testing::event(7, "orders", "UPDATE", Some(row), Some(old))
    }

    #[test]
    fn updates_are_judged_on_both_images() {
        let pending = StreamParams::parse("filter=status=eq.pending", &catalog()).unwrap();
        let judge = |row: &str, old: &str| {
            pending
                .selection
                .judge(&update(json!({"status": row}), json!({"status": old})))
        };
        assert_eq!(judge("pending", "pending"), Some(Delivery::AsIs));
        assert_eq!(
            judge("pending", "shipped"),
            Some(Delivery::View(View::Enter))
        );
        assert_eq!(
            judge("shipped", "pending"),
            Some(Delivery::View(View::Leave))
        );
        assert_eq!(judge("shipped", "delivered"), None);
        let everything = StreamParams::parse("", &catalog()).unwrap();
        let moved = update(json!({"status": "shipped"}), json!({"status": "pending"}));
        assert_eq!(everything.selection.judge(&moved), Some(Delivery::AsIs));
    }

    #[test]
    fn view_forms_are_built_once_and_shared() {
        let pending = StreamParams::parse("filter=status=eq.pending", &catalog()).unwrap();
        let moved = update(json!({"status": "shipped"}), json!({"status": "pending"}));
        let first = pending.selection.pick(&moved).unwrap();
        let second = pending.selection.pick(&moved).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let message: Value = serde_json::from_str(first.json()).unwrap();
        assert_eq!(message["view"], "leave");
        assert_eq!(message["row"], json!({"status": "shipped"}));
        assert_eq!(message["old"], json!({"status": "pending"}));
        assert!(!moved.json().contains("view"));
        assert!(std::str::from_utf8(&first.sse)
            .unwrap()
            .starts_with("id: 7\nevent: change\ndata: {"));
        // The first send of either form is the event's first send.
        assert!(first.mark_first_send());
        assert!(!moved.mark_first_send());
    }

    #[test]
    fn tables_and_ops_select_events() {
        let params = StreamParams::parse("tables=audit.log&ops=insert,Delete", &catalog()).unwrap();
        assert!(params
            .selection
            .matches(&event("INSERT", "audit.log", json!({}))));
        assert!(!params
            .selection
            .matches(&event("UPDATE", "audit.log", json!({}))));
        assert!(!params
            .selection
            .matches(&event("INSERT", "orders", json!({}))));
    }

    #[test]
    fn index_keys_agree_with_matching() {
        let values = [
            json!(10),
            json!(10.0),
            json!(-0.0),
            json!(0),
            json!("10"),
            json!("10.0"),
            json!(10.5),
            json!("shipped"),
            json!(true),
            json!("true"),
            json!(null),
            json!({"a": 1}),
            json!([1]),
            json!(9_007_199_254_740_993u64),
        ];
        let queries = [
            "filter=id=eq.10",
            "filter=id=eq.10.0",
            "filter=id=eq.0",
            "filter=id=eq.10.5",
            "filter=id=eq.1e1",
            "filter=id=eq.shipped",
            "filter=id=eq.true",
            r#"filter=id=in.(0,"10",x)"#,
            r#"filter=id=eq.{"a":1}"#,
            "filter=id=eq.[1]",
        ];
        for query in queries {
            let params = StreamParams::parse(query, &catalog()).unwrap();
            let (column, keys) = params.selection.index_keys().expect(query);
            assert_eq!(column, "id");
            for value in &values {
                let matched =
                    params
                        .selection
                        .matches(&event("UPDATE", "orders", json!({"id": value})));
                let keyed = value_key(value).is_some_and(|k| keys.contains(&k));
                assert_eq!(matched, keyed, "{query} vs {value}");
            }
        }
        let range = StreamParams::parse("filter=id=gt.3", &catalog()).unwrap();
        assert!(range.selection.index_keys().is_none());
        let huge = StreamParams::parse("filter=id=eq.9007199254740993", &catalog()).unwrap();
        assert!(huge.selection.index_keys().is_none());
    }

    #[test]
    fn invalid_parameters_are_refused() {
        let cases = [
            ("tables=nope", "tables"),
            ("tables=", "tables"),
            ("ops=UPSERT", "ops"),
            ("ops=", "ops"),
            ("filter=nope=eq.1", "filter"),
            ("tables=audit.log&filter=status=eq.x", "filter"),
            ("filter=status=like.x", "filter"),
            ("filter=status", "filter"),
            ("filter==eq.x", "filter"),
            ("since=1&since=2", "since"),
            ("sinse=1", "sinse"),
            ("snapshot=yes", "snapshot"),
            ("snapshot=TRUE", "snapshot"),
            ("snapshot=", "snapshot"),
            ("snapshot=true&snapshot=true", "snapshot"),
        ];
        for (query, param) in cases {
            let err = StreamParams::parse(query, &catalog()).unwrap_err();
            assert_eq!(err.param(), Some(param), "{query}");
        }
        assert!(matches!(
            StreamParams::parse("since=%zz", &catalog()),
            Err(ParamError::Query(_))
        ));
    }
}
