//! Snapshot metadata in redb: one record per (containerd namespace, snapshot name).
//!
//! Keys are `<namespace>/<name>`: namespaces cannot contain `/` ([`check_namespace`]), so one
//! namespace's snapshots are one key range and namespaces never see each other's. Every change is
//! one durable write transaction, so a restart keeps every snapshot and its directory id.
//! All calls block: the overlay snapshotter runs them in `spawn_blocking`.

use crate::model::{Info, Kind, Labels, Usage};
use crate::{Error, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_ID: &str = "next_id";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Names the directory `snapshots/<id>`; unique across namespaces, never reused.
    pub id: u64,
    pub kind: Kind,
    pub parent: String,
    pub labels: Labels,
    /// Nanoseconds since the Unix epoch.
    pub created_ns: u128,
    pub updated_ns: u128,
    /// Measured at commit; `None` while active.
    pub usage: Option<Usage>,
}

impl Record {
    pub fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            created: from_ns(self.created_ns),
            updated: from_ns(self.updated_ns),
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn from_ns(ns: u128) -> SystemTime {
    let secs = (ns / 1_000_000_000) as u64;
    UNIX_EPOCH + Duration::new(secs, (ns % 1_000_000_000) as u32)
}

/// containerd's namespace rule: letters, digits, `.`, `_`, `-`, at most 76 characters; or empty
/// for calls that name none (containerd's own, whose keys carry their namespace).
pub fn check_namespace(ns: &str) -> Result<()> {
    if ns.is_empty() {
        return Ok(());
    }
    let ok = ns.len() <= 76
        && ns.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid containerd namespace {ns:?}"
        )))
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("snapshot key must not be empty".into()));
    }
    if key.len() > 4096 {
        return Err(Error::InvalidArgument(
            "snapshot key longer than 4096 bytes".into(),
        ));
    }
    Ok(())
}

fn db_key(ns: &str, key: &str) -> String {
    format!("{ns}/{key}")
}

/// A snapshot to add with [`MetaStore::create`].
pub struct New<'a> {
    pub kind: Kind,
    pub key: &'a str,
    pub parent: &'a str,
    pub labels: Labels,
    /// Known only for committed snapshots.
    pub usage: Option<Usage>,
}

/// What [`MetaStore::create`] returns: the new record and its parents' ids, nearest first.
pub struct Created {
    pub record: Record,
    pub parent_ids: Vec<u64>,
}

pub struct MetaStore {
    db: Database,
}

type Table<'t> = redb::Table<'t, &'static str, &'static [u8]>;

fn read(table: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<Record>> {
    match table.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

fn write(table: &mut Table<'_>, key: &str, record: &Record) -> Result<()> {
    let bytes = serde_json::to_vec(record)?;
    table.insert(key, bytes.as_slice())?;
    Ok(())
}

/// The ids of `parent` and its ancestors, nearest first.
fn chain(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    ns: &str,
    parent: &str,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut next = parent.to_string();
    while !next.is_empty() {
        let record = read(table, &db_key(ns, &next))?
            .ok_or_else(|| Error::NotFound(format!("parent snapshot {next:?} does not exist")))?;
        ids.push(record.id);
        next = record.parent;
        if ids.len() > 10_000 {
            return Err(Error::Store("snapshot parent chain loops".into()));
        }
    }
    Ok(ids)
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(SNAPSHOTS)?;
        txn.open_table(COUNTERS)?;
        txn.commit()?;
        Ok(Self { db })
    }

    pub fn get(&self, ns: &str, key: &str) -> Result<Record> {
        check_key(key)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        read(&table, &db_key(ns, key))?
            .ok_or_else(|| Error::NotFound(format!("snapshot {key:?} does not exist")))
    }

    /// The record of `key` and its parents' ids, nearest first.
    pub fn get_with_parents(&self, ns: &str, key: &str) -> Result<(Record, Vec<u64>)> {
        check_key(key)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let record = read(&table, &db_key(ns, key))?
            .ok_or_else(|| Error::NotFound(format!("snapshot {key:?} does not exist")))?;
        let parents = chain(&table, ns, &record.parent)?;
        Ok((record, parents))
    }

    /// Adds a snapshot (`usage` is known only for committed ones). `make_dir(id)` runs inside the transaction: the record is
    /// only committed once its directory exists.
    pub fn create(
        &self,
        ns: &str,
        new: New<'_>,
        make_dir: impl FnOnce(u64) -> Result<()>,
    ) -> Result<Created> {
        let New {
            kind,
            key,
            parent,
            labels,
            usage,
        } = new;
        check_key(key)?;
        crate::model::check_labels(&labels)?;
        let txn = self.db.begin_write()?;
        let created = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let mut counters = txn.open_table(COUNTERS)?;
            let k = db_key(ns, key);
            if read(&table, &k)?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {key:?} already exists")));
            }
            if !parent.is_empty() {
                let p = read(&table, &db_key(ns, parent))?
                    .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent:?} does not exist")))?;
                if p.kind != Kind::Committed {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent:?} is not a committed snapshot"
                    )));
                }
            }
            let parent_ids = chain(&table, ns, parent)?;
            let id = counters.get(NEXT_ID)?.map(|v| v.value()).unwrap_or(1);
            counters.insert(NEXT_ID, id + 1)?;
            let now = now_ns();
            let record = Record {
                id,
                kind,
                parent: parent.to_string(),
                labels,
                created_ns: now,
                updated_ns: now,
                usage,
            };
            write(&mut table, &k, &record)?;
            make_dir(id)?;
            Created { record, parent_ids }
        };
        txn.commit()?;
        Ok(created)
    }

    /// Adds committed snapshot `name` whose tree already exists: `place_dir(id)` moves it into
    /// place inside the transaction.
    pub fn insert_committed(
        &self,
        ns: &str,
        name: &str,
        parent: &str,
        labels: Labels,
        usage: Usage,
        place_dir: impl FnOnce(u64) -> Result<()>,
    ) -> Result<()> {
        let new = New {
            kind: Kind::Committed,
            key: name,
            parent,
            labels,
            usage: Some(usage),
        };
        self.create(ns, new, place_dir)?;
        Ok(())
    }

    /// Turns active `key` into committed `name` (same directory), with `labels` and `usage`.
    pub fn commit(&self, ns: &str, key: &str, name: &str, labels: Labels, usage: Usage) -> Result<Record> {
        check_key(key)?;
        check_key(name)?;
        crate::model::check_labels(&labels)?;
        let txn = self.db.begin_write()?;
        let record = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let active = read(&table, &db_key(ns, key))?
                .ok_or_else(|| Error::NotFound(format!("active snapshot {key:?} does not exist")))?;
            if active.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            if read(&table, &db_key(ns, name))?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {name:?} already exists")));
            }
            let now = now_ns();
            let record = Record {
                kind: Kind::Committed,
                labels,
                created_ns: now,
                updated_ns: now,
                usage: Some(usage),
                ..active
            };
            table.remove(db_key(ns, key).as_str())?;
            write(&mut table, &db_key(ns, name), &record)?;
            record
        };
        txn.commit()?;
        Ok(record)
    }

    /// Removes `key` (which must have no children); returns its directory id.
    pub fn remove(&self, ns: &str, key: &str) -> Result<u64> {
        check_key(key)?;
        let txn = self.db.begin_write()?;
        let id = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let record = read(&table, &db_key(ns, key))?
                .ok_or_else(|| Error::NotFound(format!("snapshot {key:?} does not exist")))?;
            let (lo, hi) = (format!("{ns}/"), format!("{ns}0"));
            for item in table.range(lo.as_str()..hi.as_str())? {
                let (_, v) = item?;
                let other: Record = serde_json::from_slice(v.value())?;
                if record.kind == Kind::Committed && other.parent == key {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot remove snapshot {key:?}: it has children"
                    )));
                }
            }
            table.remove(db_key(ns, key).as_str())?;
            record.id
        };
        txn.commit()?;
        Ok(id)
    }

    /// Applies containerd's Update rules: only labels change; `paths` empty or `labels` replaces
    /// them all, `labels.<key>` sets or deletes one.
    pub fn update(&self, ns: &str, name: &str, labels: &Labels, paths: &[String]) -> Result<Record> {
        check_key(name)?;
        let txn = self.db.begin_write()?;
        let record = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let k = db_key(ns, name);
            let mut record = read(&table, &k)?
                .ok_or_else(|| Error::NotFound(format!("snapshot {name:?} does not exist")))?;
            if paths.is_empty() {
                record.labels = labels.clone();
            }
            for path in paths {
                if path == "labels" {
                    record.labels = labels.clone();
                } else if let Some(label) = path.strip_prefix("labels.") {
                    match labels.get(label) {
                        Some(v) => record.labels.insert(label.to_string(), v.clone()),
                        None => record.labels.remove(label),
                    };
                } else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update field {path:?} of snapshot {name:?}"
                    )));
                }
            }
            crate::model::check_labels(&record.labels)?;
            record.updated_ns = now_ns();
            write(&mut table, &k, &record)?;
            record
        };
        txn.commit()?;
        Ok(record)
    }

    /// Every snapshot of the namespace, by name.
    pub fn list(&self, ns: &str) -> Result<Vec<(String, Record)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let (lo, hi) = (format!("{ns}/"), format!("{ns}0"));
        let mut out = Vec::new();
        for item in table.range(lo.as_str()..hi.as_str())? {
            let (k, v) = item?;
            let name = k.value()[lo.len()..].to_string();
            out.push((name, serde_json::from_slice(v.value())?));
        }
        Ok(out)
    }

    /// The directory ids of every snapshot in every namespace.
    pub fn all_ids(&self) -> Result<std::collections::HashSet<u64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let mut ids = std::collections::HashSet::new();
        for item in table.iter()? {
            let (_, v) = item?;
            let record: Record = serde_json::from_slice(v.value())?;
            ids.insert(record.id);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<'a>(kind: Kind, key: &'a str, parent: &'a str) -> New<'a> {
        New {
            kind,
            key,
            parent,
            labels: Labels::new(),
            usage: None,
        }
    }

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("meta.redb")).unwrap();
        (dir, store)
    }

    #[test]
    fn namespaces_are_apart_and_survive_reopen() {
        let (dir, s) = store();
        s.create("a", new(Kind::Active, "k", ""), |_| Ok(())).unwrap();
        s.create("a-b", new(Kind::Active, "k", ""), |_| Ok(())).unwrap();
        assert!(matches!(s.get("b", "k"), Err(Error::NotFound(_))));
        assert_eq!(s.list("a").unwrap().len(), 1);
        s.commit("a", "k", "c", Labels::new(), Usage::default()).unwrap();
        drop(s);
        let s = MetaStore::open(&dir.path().join("meta.redb")).unwrap();
        assert_eq!(s.get("a", "c").unwrap().kind, Kind::Committed);
        assert_eq!(s.get("a-b", "k").unwrap().kind, Kind::Active);
        assert_eq!(s.all_ids().unwrap().len(), 2);
    }

    #[test]
    fn parents_must_be_committed_and_childless_to_remove() {
        let (_d, s) = store();
        s.create("n", new(Kind::Active, "a", ""), |_| Ok(())).unwrap();
        let e = s.create("n", new(Kind::Active, "b", "a"), |_| Ok(()));
        assert!(matches!(e, Err(Error::InvalidArgument(_))));
        s.commit("n", "a", "c", Labels::new(), Usage::default()).unwrap();
        let created = s.create("n", new(Kind::View, "v", "c"), |_| Ok(())).unwrap();
        assert_eq!(created.parent_ids.len(), 1);
        assert!(matches!(s.remove("n", "c"), Err(Error::FailedPrecondition(_))));
        s.remove("n", "v").unwrap();
        s.remove("n", "c").unwrap();
    }

    #[test]
    fn failed_directory_leaves_no_record() {
        let (_d, s) = store();
        let e = s.create("n", new(Kind::Active, "a", ""), |_| {
            Err(Error::Store("disk full".into()))
        });
        assert!(e.is_err());
        assert!(matches!(s.get("n", "a"), Err(Error::NotFound(_))));
    }
}
