//! The schema: numbered migrations from `sql/`, embedded in the binary and applied in
//! one transaction under an advisory lock, so replicas starting together are safe.

use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient};

use super::DbError;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number, the order of application.
    pub version: i32,
    /// Its name, recorded beside the number.
    pub name: &'static str,
    /// The SQL, run as one batch.
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "orders",
        sql: include_str!("../../sql/0001_orders.sql"),
    },
    Migration {
        version: 2,
        name: "change_log",
        sql: include_str!("../../sql/0002_change_log.sql"),
    },
    Migration {
        version: 3,
        name: "capture_wal",
        sql: include_str!("../../sql/0003_capture_wal.sql"),
    },
    Migration {
        version: 4,
        name: "track_during_a_switch",
        sql: include_str!("../../sql/0004_track_during_a_switch.sql"),
    },
];

/// 0x726f776d = 'rowm': held while migrating.
const MIGRATION_LOCK: i64 = 1_920_890_733;

/// Applies the migrations that are not yet recorded; returns the versions applied.
pub async fn apply(client: &mut Client) -> Result<Vec<i32>, DbError> {
    let tx = client.transaction().await?;
    tx.execute_typed(
        "SELECT pg_advisory_xact_lock($1)",
        &[(&MIGRATION_LOCK, Type::INT8)],
    )
    .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS realtime;
         CREATE TABLE IF NOT EXISTS realtime.migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let done = applied_versions(&tx).await?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(migration.sql).await?;
        tx.execute_typed(
            "INSERT INTO realtime.migrations (version, name) VALUES ($1, $2)",
            &[
                (&migration.version, Type::INT4),
                (&migration.name, Type::TEXT),
            ],
        )
        .await?;
        applied.push(migration.version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// Checks that every migration has been applied (for `--no-migrate`).
pub async fn check(client: &Client) -> Result<(), DbError> {
    let exists: bool = client
        .query_typed_one("SELECT to_regclass('realtime.migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Err(DbError::SchemaMissing(
            "realtime.migrations does not exist".into(),
        ));
    }
    let done = applied_versions(client).await?;
    let missing: Vec<String> = MIGRATIONS
        .iter()
        .filter(|m| !done.contains(&m.version))
        .map(|m| format!("{:04}_{}", m.version, m.name))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DbError::SchemaMissing(format!(
            "not applied: {}",
            missing.join(", ")
        )))
    }
}

/// Inserts sample orders when `orders` is empty; returns how many were inserted.
pub async fn seed(client: &Client) -> Result<u64, DbError> {
    let inserted = client
        .execute_typed(
            "INSERT INTO public.orders (customer_name, product_name, status)
             SELECT * FROM (VALUES
                 ('Ada Lovelace', 'Analytical Engine manual', 'delivered'),
                 ('Grace Hopper', 'COBOL compiler', 'shipped'),
                 ('Alan Turing', 'Bombe rotor set', 'pending'),
                 ('Edsger Dijkstra', 'Semaphore kit', 'pending'),
                 ('Barbara Liskov', 'CLU reference', 'shipped'),
                 ('Donald Knuth', 'TAOCP volume 4B', 'delivered'),
                 ('Margaret Hamilton', 'Apollo guidance listing', 'pending'),
                 ('Ken Thompson', 'Unix tape', 'shipped')
             ) AS sample(customer_name, product_name, status)
             WHERE NOT EXISTS (SELECT 1 FROM public.orders)",
            &[],
        )
        .await?;
    Ok(inserted)
}

/// The versions `realtime.migrations` records as applied.
async fn applied_versions(client: &impl GenericClient) -> Result<Vec<i32>, DbError> {
    Ok(client
        .query_typed("SELECT version FROM realtime.migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}
