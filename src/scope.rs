//! A token's row scope: the JWT `filter` claim, `{"orders": ["customer_name=eq.Ada", …]}`,
//! per table, in the stream filter syntax.
//!
//! Kept apart from signature checking ([`crate::auth`]): a claim is read only from a
//! token already verified. Its filters are ANDed with a client's own on streams and
//! snapshots (enter/leave included) and applied to REST on that table. A claim that
//! cannot be read, or that names a table or column the gateway does not know, refuses
//! the credential (401) instead of silently letting its holder see everything.

use serde_json::{Map, Value};

use crate::filter::{Catalog, Filter};

/// Why a `filter` claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Not an object of arrays of filter strings, or a filter that does not parse.
    #[error("invalid `filter` claim: {0}")]
    Malformed(String),
    /// A table that is not tracked.
    #[error("invalid `filter` claim: `{0}` is not a tracked table")]
    UnknownTable(String),
    /// A column the table does not have.
    #[error("invalid `filter` claim: table `{table}` has no column `{column}`")]
    UnknownColumn {
        /// The table named.
        table: String,
        /// The column it lacks.
        column: String,
    },
}

/// The rows a token's holder may see, per table; tables not named are unrestricted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowScope {
    /// Each named table and the filters (ANDed) its rows must pass.
    tables: Vec<(String, Vec<Filter>)>,
}

impl RowScope {
    /// Reads the claim's value.
    pub fn from_claim(claim: &Value) -> Result<RowScope, ScopeError> {
        let malformed = |message: String| ScopeError::Malformed(message);
        let object = claim.as_object().ok_or_else(|| {
            malformed("expected an object of table names to arrays of filters".into())
        })?;
        let mut tables = Vec::with_capacity(object.len());
        for (table, filters) in object {
            let filters = filters
                .as_array()
                .ok_or_else(|| malformed(format!("`{table}` must map to an array of filters")))?
                .iter()
                .map(|filter| {
                    let text = filter.as_str().ok_or_else(|| {
                        malformed(format!("the filters of `{table}` must be strings"))
                    })?;
                    Filter::parse(text).map_err(|err| malformed(format!("`{table}`: {err}")))
                })
                .collect::<Result<Vec<Filter>, ScopeError>>()?;
            tables.push((table.clone(), filters));
        }
        Ok(RowScope { tables })
    }

    /// Checks every table and column against the tracked tables.
    pub fn check(&self, catalog: &Catalog) -> Result<(), ScopeError> {
        for (table, filters) in &self.tables {
            if !catalog.contains(table) {
                return Err(ScopeError::UnknownTable(table.clone()));
            }
            if let Some(filter) = filters
                .iter()
                .find(|f| !catalog.has_column(table, f.column()))
            {
                return Err(ScopeError::UnknownColumn {
                    table: table.clone(),
                    column: filter.column().to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Each restricted table with its filters.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &[Filter])> {
        self.tables.iter().map(|(t, f)| (t.as_str(), f.as_slice()))
    }

    /// The filters a row of `table` must pass (none: unrestricted).
    pub fn filters(&self, table: &str) -> &[Filter] {
        self.tables
            .iter()
            .find(|(t, _)| t == table)
            .map_or(&[], |(_, f)| f.as_slice())
    }

    /// Whether a row of `table` is inside the scope.
    pub fn allows(&self, table: &str, row: &Map<String, Value>) -> bool {
        self.filters(table).iter().all(|f| f.matches(Some(row)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        Catalog::new([(
            "orders".to_owned(),
            vec!["id".into(), "customer_name".into()],
        )])
    }

    #[test]
    fn a_claim_restricts_the_rows_of_the_tables_it_names() {
        let scope =
            RowScope::from_claim(&json!({"orders": ["customer_name=eq.Ada", "id=lt.10"]})).unwrap();
        scope.check(&catalog()).unwrap();
        let row = |name: &str, id: i64| json!({"customer_name": name, "id": id});
        let allows = |row: Value| scope.allows("orders", row.as_object().unwrap());
        assert!(allows(row("Ada", 3)));
        assert!(!allows(row("Bob", 3)));
        assert!(!allows(row("Ada", 10)));
        assert!(scope.allows("audit", json!({}).as_object().unwrap()));
    }

    #[test]
    fn malformed_claims_and_unknown_names_are_refused_with_the_reason() {
        for bad in [
            json!(["orders"]),
            json!({"orders": "customer_name=eq.Ada"}),
            json!({"orders": [1]}),
            json!({"orders": ["customer_name"]}),
            json!({"orders": ["customer_name=like.A"]}),
        ] {
            let err = RowScope::from_claim(&bad).unwrap_err();
            assert!(matches!(err, ScopeError::Malformed(_)), "{bad}: {err}");
        }
        let unknown_table = RowScope::from_claim(&json!({"nope": []})).unwrap();
        assert_eq!(
            unknown_table.check(&catalog()),
            Err(ScopeError::UnknownTable("nope".into()))
        );
        let unknown_column = RowScope::from_claim(&json!({"orders": ["x=eq.1"]})).unwrap();
        assert!(unknown_column
            .check(&catalog())
            .unwrap_err()
            .to_string()
            .contains("no column `x`"));
    }
}
