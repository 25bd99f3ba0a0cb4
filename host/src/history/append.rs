//! Fixed-capacity columns that one writer appends to while any number of readers read the
//! rows published before, without a lock and without copying: the tail of the history is
//! shared this way between the writer and every snapshot.
//!
//! Soundness rests on two rules that the types enforce. Only the unique `AppendWriter`
//! writes, and only slots past every length it has published; readers only see
//! `AppendView`s the writer made of lengths it had written, and receive them through a
//! lock or channel (which orders the writes before the reads).

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::Arc;

/// Storage of one column: `capacity` slots, written once each (until a rollback).
struct Slots<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// SAFETY: a slot is written by the one writer while no reader can reach it (past every
// published length) and read only after publication; see the module's rules.
unsafe impl<T: Send + Sync> Sync for Slots<T> {}

impl<T: Copy> Slots<T> {
    fn new(capacity: usize) -> Slots<T> {
        Slots { slots: (0..capacity).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect() }
    }

    /// SAFETY: slots `..len` were written, and none of them is being written now.
    unsafe fn prefix(&self, len: usize) -> &[T] {
        assert!(len <= self.slots.len());
        // SAFETY: `UnsafeCell<MaybeUninit<T>>` has `T`'s layout; the rows are initialised.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr().cast::<T>(), len) }
    }
}

/// The writing end of a column; not `Clone`, so there is one writer.
pub struct AppendWriter<T> {
    slots: Arc<Slots<T>>,
    len: usize,
    /// The longest prefix handed to readers: never written again.
    published: usize,
}

/// Rows `..len` of a column, as published to readers.
pub struct AppendView<T> {
    slots: Arc<Slots<T>>,
    len: usize,
}

impl<T> Clone for AppendView<T> {
    fn clone(&self) -> Self {
        AppendView { slots: self.slots.clone(), len: self.len }
    }
}

impl<T: Copy> AppendWriter<T> {
    pub fn with_capacity(capacity: usize) -> AppendWriter<T> {
        AppendWriter { slots: Arc::new(Slots::new(capacity)), len: 0, published: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_full(&self) -> bool {
        self.len == self.slots.slots.len()
    }

    /// Appends one value. Panics when full: callers size columns to what they hold.
    pub fn push(&mut self, value: T) {
        let slot = &self.slots.slots[self.len];
        // SAFETY: `len >= published`, so no reader can see this slot, and `&mut self`
        // makes this the only write.
        unsafe { (*slot.get()).write(value) };
        self.len += 1;
    }

    /// Everything written, published or not (the writer's own reads).
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: slots `..len` were written, and `&self` excludes a write meanwhile.
        unsafe { self.slots.prefix(self.len) }
    }

    /// Forgets the rows past `len` (a failed commit); published rows stay, whatever `len`
    /// says, since readers may hold them.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len.max(self.published));
    }

    /// The rows written so far, for readers; they are never written again.
    pub fn publish(&mut self) -> AppendView<T> {
        self.published = self.len;
        AppendView { slots: self.slots.clone(), len: self.len }
    }
}

impl<T: Copy> AppendView<T> {
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the writer published `len` rows and never writes them again.
        unsafe { self.slots.prefix(self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_keep_what_was_published_while_the_writer_goes_on() {
        let mut writer = AppendWriter::with_capacity(1000);
        for value in 0..10u64 {
            writer.push(value);
        }
        let view = writer.publish();
        let reader = std::thread::spawn(move || {
            for _ in 0..1000 {
                assert_eq!(view.as_slice(), (0..10).collect::<Vec<u64>>().as_slice());
            }
        });
        for value in 10..900u64 {
            writer.push(value);
        }
        writer.truncate(5);
        assert_eq!(writer.len(), 10, "published rows are never rolled back");
        reader.join().unwrap();
        assert_eq!(writer.publish().as_slice().len(), 10);
    }
}
