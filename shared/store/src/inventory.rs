//! What zones reported, counted by the database: global's `/zones` answers from the names in
//! the primary key, without reading (or decoding) a single resource.

use std::collections::BTreeMap;

use meridian_model::Kind;
use sqlx::Row;

use super::{Backend, SqlStore, db_error};
use crate::StoreError;

impl SqlStore {
    /// How many resources of `kind` each zone reported, by zone: the resources named
    /// `ZONE.NAME`, which is how global stores a zone's inventory.
    pub async fn count_by_zone(&self, kind: Kind) -> Result<BTreeMap<String, u64>, StoreError> {
        let zone = match self.backend() {
            Backend::Sqlite => "substr(name, 1, instr(name, '.') - 1)",
            Backend::Postgres => "split_part(name, '.', 1)",
        };
        let sql = format!(
            "SELECT {zone} AS zone, COUNT(*) FROM resources WHERE kind = $1 AND name LIKE '%.%' GROUP BY 1"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind.name())
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let zone: String = row.try_get(0).map_err(db_error)?;
                let count: i64 = row.try_get(1).map_err(db_error)?;
                Ok((zone, count.max(0) as u64))
            })
            .collect()
    }
}
