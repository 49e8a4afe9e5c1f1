//! Fixed-width records that never move once written. The first ones can be read straight from a
//! memory-mapped index file ([`super::file`]), the later ones live in memory: mapped records cost
//! the process nothing until read, then only the pages read, which the kernel may drop again.
//! [`Records::read`] copies a record out of the file instead, for reads scattered over a file far
//! bigger than the memory a server may hold: pages read through a map count as the process's
//! resident memory until the kernel takes them back, pages read by `pread` only as page cache.

use std::fs::File;
use std::mem::size_of;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use memmap2::Mmap;

pub struct Records<T> {
    width: usize,
    /// The file, mapped and open, and the byte offset of its first record.
    mapped: Option<(Arc<Mmap>, Arc<File>, usize)>,
    mapped_count: usize,
    tail: Vec<T>,
    tail_count: usize,
}

impl<T: bytemuck::Pod> Records<T> {
    pub fn new(width: usize) -> Self {
        Self {
            width,
            mapped: None,
            mapped_count: 0,
            tail: Vec::new(),
            tail_count: 0,
        }
    }

    /// `count` records of `width` values starting at byte `offset` of `file`, mapped as `map`.
    pub fn mapped(width: usize, map: Arc<Mmap>, file: Arc<File>, offset: usize, count: usize) -> Result<Self> {
        let end = count
            .checked_mul(width)
            .and_then(|n| n.checked_mul(size_of::<T>()))
            .and_then(|n| n.checked_add(offset))
            .context("records past any file's end")?;
        ensure!(end <= map.len(), "records past the file's end");
        ensure!(
            (map.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<T>()),
            "records not aligned in the file"
        );
        Ok(Self {
            mapped: Some((map, file, offset)),
            mapped_count: count,
            ..Self::new(width)
        })
    }

    fn mapped_values(&self) -> &[T] {
        match &self.mapped {
            Some((map, _, offset)) => {
                bytemuck::cast_slice(&map[*offset..*offset + self.mapped_count * self.width * size_of::<T>()])
            }
            None => &[],
        }
    }

    #[inline]
    pub fn get(&self, record: usize) -> &[T] {
        let w = self.width;
        if record < self.mapped_count {
            &self.mapped_values()[record * w..(record + 1) * w]
        } else {
            let record = record - self.mapped_count;
            &self.tail[record * w..(record + 1) * w]
        }
    }

    /// Record `record`, copied into `buf` when it is in the file (see the module notes).
    pub fn read<'a>(&'a self, record: usize, buf: &'a mut Vec<T>) -> &'a [T] {
        let Some((_, file, offset)) = self.mapped.as_ref().filter(|_| record < self.mapped_count) else {
            return self.get(record);
        };
        buf.resize(self.width, T::zeroed());
        let at = offset + record * self.width * size_of::<T>();
        match file.read_exact_at(bytemuck::cast_slice_mut(buf), at as u64) {
            Ok(()) => buf,
            // The map reads the same bytes; a file that cannot be read fails there as it would
            // have without this copy.
            Err(_) => self.get(record),
        }
    }

    /// A record in memory, to be written again; `None` for one in the file.
    pub fn get_mut(&mut self, record: usize) -> Option<&mut [T]> {
        let w = self.width;
        let record = record.checked_sub(self.mapped_count)?;
        self.tail.get_mut(record * w..(record + 1) * w)
    }

    /// Appends a record of zeros and returns its number.
    pub fn push(&mut self) -> usize {
        self.tail.resize(self.tail.len() + self.width, T::zeroed());
        self.tail_count += 1;
        self.len() - 1
    }

    pub fn reserve(&mut self, records: usize) {
        self.tail.reserve(records * self.width);
    }

    pub fn len(&self) -> usize {
        self.mapped_count + self.tail_count
    }

    pub fn is_mapped(&self, record: usize) -> bool {
        record < self.mapped_count
    }

    pub fn width(&self) -> usize {
        self.width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_records_come_first_and_new_ones_follow_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.bin");
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut bytes = vec![0u8; 8];
        bytes.extend_from_slice(bytemuck::cast_slice(&values));
        std::fs::write(&path, &bytes).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let map = Arc::new(unsafe { Mmap::map(&*file) }.unwrap());
        assert!(
            Records::<f32>::mapped(3, map.clone(), file.clone(), 8, 5).is_err(),
            "past the end"
        );
        assert!(
            Records::<f32>::mapped(3, map.clone(), file.clone(), 2, 1).is_err(),
            "misaligned"
        );
        let mut records = Records::<f32>::mapped(3, map, file, 8, 4).unwrap();
        assert_eq!(records.get(3), &[9.0, 10.0, 11.0]);
        let mut buf = Vec::new();
        assert_eq!(records.read(2, &mut buf), &[6.0, 7.0, 8.0]);
        assert_eq!(buf, [6.0, 7.0, 8.0], "read from the file, not the map");
        assert!(records.get_mut(1).is_none());
        let new = records.push();
        assert_eq!(new, 4);
        records.get_mut(new).unwrap().copy_from_slice(&[1.0, 2.0, 3.0]);
        assert_eq!(records.get(4), &[1.0, 2.0, 3.0]);
        assert_eq!(records.read(4, &mut buf), &[1.0, 2.0, 3.0]);
        assert_eq!(
            (records.len(), records.is_mapped(3), records.is_mapped(4)),
            (5, true, false)
        );
    }
}
