//! The `projector_checkpoints` table: how far each projector (or relay) has read the log.

use eventlog::sql::Texts;
use eventlog::{Cursor, Db, Statement, Tx};

/// Creates the checkpoint row at the start of the log if it does not exist yet.
pub async fn ensure(db: &Db, name: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    tx.execute(
        Statement::new(
            "INSERT INTO projector_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name),
    )
    .await?;
    tx.commit().await
}

/// The checkpoint as last committed, or `None` when the row does not exist.
pub async fn read(db: &Db, name: &str) -> Result<Option<Cursor>, sqlx::Error> {
    let sql = "SELECT transaction_id, global_position FROM projector_checkpoints WHERE name = $1";
    let found = db
        .fetch_optional_as::<(i64, i64)>(Statement::new(sql).bind(name))
        .await?;
    Ok(found.map(|(transaction_id, position)| Cursor::new(transaction_id, position)))
}

/// The checkpoint as seen inside `tx`.
pub async fn read_in(tx: &mut Tx, name: &str) -> Result<Option<Cursor>, sqlx::Error> {
    let sql = "SELECT transaction_id, global_position FROM projector_checkpoints WHERE name = $1";
    let found = tx
        .fetch_optional_as::<(i64, i64)>(Statement::new(sql).bind(name))
        .await?;
    Ok(found.map(|(transaction_id, position)| Cursor::new(transaction_id, position)))
}

/// Moves the checkpoint inside `tx` (creating it when missing).
pub async fn write_in(tx: &mut Tx, name: &str, cursor: Cursor) -> Result<(), sqlx::Error> {
    let now = chrono::Utc::now();
    tx.execute(
        Statement::new(
            "INSERT INTO projector_checkpoints (name, transaction_id, global_position, updated_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET transaction_id = excluded.transaction_id, \
         global_position = excluded.global_position, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(cursor.transaction_id)
        .bind(cursor.position)
        .bind(now),
    )
    .await?;
    Ok(())
}

/// Removes a checkpoint inside `tx`.
pub async fn delete_in(tx: &mut Tx, name: &str) -> Result<(), sqlx::Error> {
    tx.execute(Statement::new("DELETE FROM projector_checkpoints WHERE name = $1").bind(name))
        .await?;
    Ok(())
}

/// Moves the checkpoint from `expected` to `new` inside `tx`, only if it is still at
/// `expected`. Returns whether it moved.
pub async fn compare_and_set_in(
    tx: &mut Tx,
    name: &str,
    expected: Cursor,
    new: Cursor,
) -> Result<bool, sqlx::Error> {
    let now = chrono::Utc::now();
    let moved = tx
        .execute(
            Statement::new(
                "UPDATE projector_checkpoints SET transaction_id = $4, global_position = $5, \
         updated_at = $6 WHERE name = $1 AND transaction_id = $2 AND global_position = $3",
            )
            .bind(name)
            .bind(expected.transaction_id)
            .bind(expected.position)
            .bind(new.transaction_id)
            .bind(new.position)
            .bind(now),
        )
        .await?;
    Ok(moved == 1)
}

/// The checkpoints of `names` inside `tx`, in one query; names without one are left out.
pub async fn read_many_in(
    tx: &mut Tx,
    names: &[&str],
) -> Result<std::collections::HashMap<String, Cursor>, sqlx::Error> {
    let mut found = std::collections::HashMap::with_capacity(names.len());
    if names.is_empty() {
        return Ok(found);
    }
    // One text per count of names (the projectors of a group: the same count every batch).
    static TEXTS: Texts = Texts::new(1);
    let backend = tx.backend();
    let sql = TEXTS.get(backend, names.len(), || {
        format!(
            "SELECT name, transaction_id, global_position FROM projector_checkpoints \
             WHERE name IN {}",
            backend.values(1, names.len())
        )
    });
    let mut query = Statement::new(&sql);
    for name in names {
        query = query.bind(*name);
    }
    for (name, transaction_id, position) in tx.fetch_all_as::<(String, i64, i64)>(query).await? {
        found.insert(name, Cursor::new(transaction_id, position));
    }
    Ok(found)
}

/// [`write_in`] for many checkpoints, in one statement.
pub async fn write_many_in(tx: &mut Tx, moved: &[(&str, Cursor)]) -> Result<(), sqlx::Error> {
    if moved.is_empty() {
        return Ok(());
    }
    let now = chrono::Utc::now();
    static TEXTS: Texts = Texts::new(1);
    let backend = tx.backend();
    let sql = TEXTS.get(backend, moved.len(), || {
        format!(
            "INSERT INTO projector_checkpoints (name, transaction_id, global_position, \
             updated_at) VALUES {} \
             ON CONFLICT (name) DO UPDATE SET transaction_id = excluded.transaction_id, \
             global_position = excluded.global_position, updated_at = excluded.updated_at",
            backend.values(moved.len(), 4)
        )
    });
    let mut query = Statement::new(&sql);
    for (name, cursor) in moved {
        query = query
            .bind(*name)
            .bind(cursor.transaction_id)
            .bind(cursor.position)
            .bind(now);
    }
    tx.execute(query).await?;
    Ok(())
}
