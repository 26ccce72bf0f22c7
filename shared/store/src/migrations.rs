//! Migrations, embedded in the binary so that it needs no files beside it at run time.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::Backend;

macro_rules! embed {
    ($backend:literal, [$($version:literal : $file:literal),+ $(,)?]) => {
        vec![$(Migration::new(
            $version,
            Cow::Borrowed($file),
            MigrationType::Simple,
            sqlx::AssertSqlSafe(include_str!(concat!("../../../migrations/", $backend, "/", $file))).into_sql_str(),
            false,
        )),+]
    };
}

pub fn migrator(backend: Backend) -> Migrator {
    use sqlx::SqlSafeStr as _;
    let migrations = match backend {
        Backend::Sqlite => {
            embed!("sqlite", [1: "0001_resources.sql", 2: "0002_sync_position.sql", 3: "0003_signing_keys.sql", 4: "0004_status.sql", 5: "0005_applied.sql", 6: "0006_requests.sql", 7: "0007_trace.sql"])
        }
        Backend::Postgres => {
            embed!("postgres", [1: "0001_resources.sql", 2: "0002_notify.sql", 3: "0003_sync_position.sql", 4: "0004_signing_keys.sql", 5: "0005_status.sql", 6: "0006_applied.sql", 7: "0007_requests.sql", 8: "0008_trace.sql"])
        }
    };
    Migrator::with_migrations(migrations)
}
