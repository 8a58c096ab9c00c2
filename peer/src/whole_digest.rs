//! The whole-content digest of a task, hashed while its pieces land.
//!
//! A task that names its digest is checked against it before it is marked
//! done. Reading the whole file again at the end would cost a second pass
//! over the content after the last piece (seconds per GiB) although every
//! piece was already checked. Instead the download engine feeds
//! [`WholeDigest`] the in-order prefix as it grows: a piece that extends the
//! prefix is hashed from memory right after it is written; pieces that
//! landed ahead of it are read back from the content file (most likely still
//! in the page cache) as soon as the prefix reaches them. At the end nothing
//! is left to read. All of it blocks (hashing, reads): the engine runs it on
//! the blocking pool, with the piece write.

use crate::error::Error;
use crate::task::Task;
use sha2::{Digest, Sha256};

#[derive(Default)]
pub struct WholeDigest {
    /// Pieces `0..next` are hashed.
    next: u32,
    hasher: Sha256,
}

impl WholeDigest {
    /// Piece `index`, `data`, was just written: hash what now extends the prefix.
    pub fn landed(&mut self, task: &Task, index: u32, data: &[u8]) -> Result<(), Error> {
        if index == self.next {
            self.hasher.update(data);
            self.next += 1;
        }
        self.catch_up(task)
    }

    /// Hashes the held pieces that follow the prefix, read from the content file.
    fn catch_up(&mut self, task: &Task) -> Result<(), Error> {
        while task.has(self.next) {
            self.hasher.update(task.read_piece(self.next)?);
            self.next += 1;
        }
        Ok(())
    }

    /// `sha256:<hex>` of the whole content; an error unless every piece is held.
    pub fn finish(&mut self, task: &Task) -> Result<String, Error> {
        self.catch_up(task)?;
        let count = task.layout().map_or(0, |l| l.piece_count());
        if self.next != count {
            return Err(Error::Failed(format!(
                "whole digest: {} of {count} pieces hashed",
                self.next
            )));
        }
        Ok(format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::sha256;
    use damselfly_proto::piece::Layout;

    fn task(dir: &std::path::Path, data: &[u8], piece: u32) -> (std::sync::Arc<Task>, Layout) {
        let t = Task::new("t".into(), "http://o/f".into(), None, dir.join("c"));
        let l = Layout::new(data.len() as u64, piece);
        t.set_layout(l).unwrap();
        (t, l)
    }

    fn piece(data: &[u8], l: Layout, i: u32) -> &[u8] {
        &data[l.offset(i) as usize..(l.offset(i) + l.len_of(i) as u64) as usize]
    }

    fn expected(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(sha256(data)))
    }

    #[test]
    fn in_order_pieces_are_hashed_from_memory_as_they_land() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10u8).collect();
        let (t, l) = task(dir.path(), &data, 4);
        let mut w = WholeDigest::default();
        for i in 0..l.piece_count() {
            t.write_piece(i, piece(&data, l, i), true).unwrap();
            w.landed(&t, i, piece(&data, l, i)).unwrap();
            assert_eq!(w.next, i + 1, "hashed as it landed");
        }
        assert_eq!(w.finish(&t).unwrap(), expected(&data));
    }

    #[test]
    fn pieces_ahead_of_the_prefix_are_read_back_once_it_reaches_them() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..18u8).collect();
        let (t, l) = task(dir.path(), &data, 4);
        let mut w = WholeDigest::default();
        for i in [2, 4, 0, 3, 1] {
            t.write_piece(i, piece(&data, l, i), false).unwrap();
            w.landed(&t, i, piece(&data, l, i)).unwrap();
        }
        assert_eq!(w.next, 5);
        assert_eq!(w.finish(&t).unwrap(), expected(&data));
    }

    #[test]
    fn a_wrong_piece_on_disk_changes_the_digest_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..12u8).collect();
        let (t, l) = task(dir.path(), &data, 4);
        let mut w = WholeDigest::default();
        t.write_piece(1, b"XXXX", false).unwrap();
        t.write_piece(0, piece(&data, l, 0), false).unwrap();
        w.landed(&t, 0, piece(&data, l, 0)).unwrap();
        assert!(w.finish(&t).unwrap_err().to_string().contains("2 of 3"));
        t.write_piece(2, piece(&data, l, 2), false).unwrap();
        assert_ne!(w.finish(&t).unwrap(), expected(&data));
    }
}
