//! The state store (SQLite, WAL): desired resources and the source each came from, observed
//! sandbox instances, per-source apply results, and an event log. Schema changes are numbered
//! migrations applied in one transaction each; every multi-row change is one transaction, so a
//! killed process leaves either the old or the new state.

use crate::spec::{Kind, Resource};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database: stored spec is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("state database was written by a newer orchestrator (schema {found}, this one knows {known}); upgrade this binary")]
    TooNew { found: i64, known: i64 },
}

pub type Result<T> = std::result::Result<T, StoreError>;

const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE sources (
        id TEXT PRIMARY KEY,
        applied_at TEXT,
        error TEXT,
        error_at TEXT
    );
    CREATE TABLE resources (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        origin TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    );
    CREATE TABLE sandboxes (
        name TEXT PRIMARY KEY,
        instance TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        isolation TEXT NOT NULL,
        shim_pid INTEGER,
        exit_code INTEGER,
        restarts INTEGER NOT NULL DEFAULT 0,
        message TEXT,
        user_stopped INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        object TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_object ON events(object, id);",
];

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub resource: Resource,
    pub source: String,
    pub origin: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    Running,
    Stopped,
    Exited,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "Pending",
            Status::Running => "Running",
            Status::Stopped => "Stopped",
            Status::Exited => "Exited",
            Status::Failed => "Failed",
        }
    }

    pub fn parse(s: &str) -> Status {
        match s {
            "Running" => Status::Running,
            "Stopped" => Status::Stopped,
            "Exited" => Status::Exited,
            "Failed" => Status::Failed,
            _ => Status::Pending,
        }
    }
}

/// An observed sandbox instance.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRow {
    pub name: String,
    pub instance: String,
    /// Canonical JSON of the resource this instance was created from.
    pub spec: String,
    pub status: Status,
    pub isolation: String,
    pub shim_pid: Option<i64>,
    pub exit_code: Option<i64>,
    pub restarts: i64,
    pub message: Option<String>,
    pub user_stopped: bool,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// One recorded event; also its view (`events -o json|yaml` prints these, serialised).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    pub at: String,
    pub object: String,
    pub reason: String,
    pub message: String,
}

pub struct Store {
    conn: Connection,
}

fn row_to_sandbox(r: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxRow> {
    Ok(SandboxRow {
        name: r.get(0)?,
        instance: r.get(1)?,
        spec: r.get(2)?,
        status: Status::parse(&r.get::<_, String>(3)?),
        isolation: r.get(4)?,
        shim_pid: r.get(5)?,
        exit_code: r.get(6)?,
        restarts: r.get(7)?,
        message: r.get(8)?,
        user_stopped: r.get::<_, i64>(9)? != 0,
        created_at: r.get(10)?,
        started_at: r.get(11)?,
        finished_at: r.get(12)?,
    })
}

const SANDBOX_COLUMNS: &str = "name, instance, spec, status, isolation, shim_pid, exit_code, restarts, message, user_stopped, created_at, started_at, finished_at";

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// Retries `f` while the database is busy or locked, up to a deadline. Switching a new database
/// to WAL can report SQLITE_BUSY without consulting the busy handler (several processes
/// opening a fresh data directory at once), so the open-time steps retry here.
fn retry_busy<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Err(StoreError::Sqlite(e)) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        {
            use std::os::unix::fs::PermissionsExt;
            // Specs carry environment values: owner-only, like the rest of the data directory.
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(Duration::from_secs(30))?;
        retry_busy(|| Ok(conn.pragma_update(None, "journal_mode", "WAL")?))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store { conn };
        retry_busy(|| store.migrate())?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let known = MIGRATIONS.len() as i64;
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > known {
            return Err(StoreError::TooNew { found: version, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Re-check under the write lock: another process may have migrated meanwhile.
            let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if current > i as i64 {
                continue;
            }
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        Ok(self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?)
    }

    // ---- resources (desired state) ----

    pub fn resources(&self, kind: Option<Kind>) -> Result<Vec<StoredResource>> {
        let mut stmt = self.conn.prepare(
            "SELECT spec, source, origin, created_at, updated_at FROM resources WHERE ?1 IS NULL OR kind = ?1 ORDER BY kind, name",
        )?;
        let rows = stmt.query_map(params![kind.map(|k| k.as_str())], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (spec, source, origin, created_at, updated_at) = row?;
            out.push(StoredResource { resource: serde_json::from_str(&spec)?, source, origin, created_at, updated_at });
        }
        Ok(out)
    }

    pub fn resource(&self, kind: Kind, name: &str) -> Result<Option<StoredResource>> {
        Ok(self.resources(Some(kind))?.into_iter().find(|r| r.resource.name == name))
    }

    pub fn upsert_resource(tx: &Transaction<'_>, r: &Resource, source: &str, origin: &str) -> Result<()> {
        let at = now();
        tx.execute(
            "INSERT INTO resources (kind, name, source, origin, spec, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (kind, name) DO UPDATE SET source = ?3, origin = ?4,
               updated_at = CASE WHEN spec = ?5 THEN updated_at ELSE ?6 END, spec = ?5",
            params![r.kind().as_str(), r.name, source, origin, r.canonical_json(), at],
        )?;
        Ok(())
    }

    /// The running sandbox `old` becomes `resource` (a new name, labels, source and origin),
    /// its instance kept: the resource and the instance row change together or not at all.
    pub fn rename_sandbox(tx: &Transaction<'_>, old: &str, resource: &Resource, source: &str, origin: &str) -> Result<()> {
        let json = resource.canonical_json();
        let renamed = tx.execute(
            "UPDATE resources SET name = ?2, source = ?3, origin = ?4, spec = ?5, updated_at = ?6 WHERE kind = 'Sandbox' AND name = ?1",
            params![old, resource.name, source, origin, json, now()],
        )? + tx.execute("UPDATE sandboxes SET name = ?2, spec = ?3 WHERE name = ?1", params![old, resource.name, json])?;
        if renamed != 2 {
            return Err(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows));
        }
        Ok(())
    }

    pub fn delete_resource(tx: &Transaction<'_>, kind: Kind, name: &str) -> Result<()> {
        tx.execute("DELETE FROM resources WHERE kind = ?1 AND name = ?2", params![kind.as_str(), name])?;
        Ok(())
    }

    pub fn record_source(tx: &Transaction<'_>, source: &str, error: Option<&str>) -> Result<()> {
        let at = now();
        match error {
            None => tx.execute(
                "INSERT INTO sources (id, applied_at) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET applied_at = ?2, error = NULL, error_at = NULL",
                params![source, at],
            )?,
            Some(e) => tx.execute(
                "INSERT INTO sources (id, error, error_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET error = ?2, error_at = ?3",
                params![source, e, at],
            )?,
        };
        Ok(())
    }

    // ---- sandboxes (observed state) ----

    pub fn sandboxes(&self) -> Result<Vec<SandboxRow>> {
        let mut stmt = self.conn.prepare(&format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes ORDER BY name"))?;
        let rows = stmt.query_map([], row_to_sandbox)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn sandbox(&self, name: &str) -> Result<Option<SandboxRow>> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE name = ?1"), params![name], row_to_sandbox)
            .optional()?)
    }

    /// Records a new instance before its shim is started, so a crash in between is recoverable.
    pub fn insert_sandbox(&mut self, row: &SandboxRow) -> Result<()> {
        self.conn.execute(
            &format!("INSERT INTO sandboxes ({SANDBOX_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
            params![
                row.name, row.instance, row.spec, row.status.as_str(), row.isolation, row.shim_pid, row.exit_code,
                row.restarts, row.message, row.user_stopped as i64, row.created_at, row.started_at, row.finished_at
            ],
        )?;
        Ok(())
    }

    /// Writes an instance's observed state, and its spec (a live network update changes it
    /// without a new instance).
    pub fn update_sandbox(&mut self, row: &SandboxRow) -> Result<()> {
        self.conn.execute(
            "UPDATE sandboxes SET status = ?2, shim_pid = ?3, exit_code = ?4, restarts = ?5, message = ?6,
               user_stopped = ?7, started_at = ?8, finished_at = ?9, spec = ?10 WHERE name = ?1",
            params![
                row.name, row.status.as_str(), row.shim_pid, row.exit_code, row.restarts, row.message,
                row.user_stopped as i64, row.started_at, row.finished_at, row.spec
            ],
        )?;
        Ok(())
    }

    pub fn delete_sandbox(&mut self, name: &str) -> Result<()> {
        self.conn.execute("DELETE FROM sandboxes WHERE name = ?1", params![name])?;
        Ok(())
    }

    // ---- events ----

    pub fn event(&self, object: &str, reason: &str, message: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO events (at, object, reason, message) VALUES (?1, ?2, ?3, ?4)",
            params![now(), object, reason, message],
        )?;
        Ok(())
    }

    pub fn events(&self, object: Option<&str>, limit: usize) -> Result<Vec<Event>> {
        let mut stmt = self.conn.prepare(
            "SELECT at, object, reason, message FROM
               (SELECT * FROM events WHERE ?1 IS NULL OR object = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![object, limit as i64], |r| {
            Ok(Event { at: r.get(0)?, object: r.get(1)?, reason: r.get(2)?, message: r.get(3)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Events newer than the one with id `after`, oldest first, with their ids (at most
    /// `limit`): what a follower has not seen yet.
    pub fn events_after(&self, object: Option<&str>, after: i64, limit: usize) -> Result<Vec<(i64, Event)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, at, object, reason, message FROM events WHERE id > ?1 AND (?2 IS NULL OR object = ?2) ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![after, object, limit as i64], |r| {
            Ok((r.get(0)?, Event { at: r.get(1)?, object: r.get(2)?, reason: r.get(3)?, message: r.get(4)? }))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The id of the newest event (0 when there is none).
    pub fn last_event_id(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?)
    }

    pub fn source_error(&self, source: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT error FROM sources WHERE id = ?1", params![source], |r| r.get::<_, Option<String>>(0))
            .optional()?
            .flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ResourceSpec, VolumeSpec};

    fn volume(name: &str, size: u64) -> Resource {
        Resource { name: name.into(), labels: Default::default(), spec: ResourceSpec::Volume(VolumeSpec { size: Some(size), shared: false }) }
    }

    #[test]
    fn migrates_once_and_round_trips_resources() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        {
            let mut s = Store::open(&db).unwrap();
            let tx = s.transaction().unwrap();
            Store::upsert_resource(&tx, &volume("v", 1), "/src", "/src/a.yaml:1").unwrap();
            tx.commit().unwrap();
        }
        let s = Store::open(&db).unwrap();
        let all = s.resources(Some(Kind::Volume)).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].resource, volume("v", 1));
        assert_eq!(all[0].source, "/src");
    }

    #[test]
    fn uncommitted_changes_are_lost_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let mut s = Store::open(&db).unwrap();
        {
            let tx = s.transaction().unwrap();
            Store::upsert_resource(&tx, &volume("a", 1), "/src", "x").unwrap();
            Store::upsert_resource(&tx, &volume("b", 1), "/src", "x").unwrap();
            // dropped without commit: as if the process died here
        }
        assert!(s.resources(None).unwrap().is_empty());
    }

    #[test]
    fn many_connections_opening_a_fresh_database_at_once_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let threads: Vec<_> = (0..8).map(|_| {
            let db = db.clone();
            std::thread::spawn(move || Store::open(&db).map(|_| ()))
        }).collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        Store::open(&db).unwrap().conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(Store::open(&db), Err(StoreError::TooNew { found: 99, .. })));
    }
}
