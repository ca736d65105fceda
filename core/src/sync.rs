//! The one way sluice takes a lock.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, even when a thread panicked while it held it: what sluice
/// keeps behind a lock (task tables, sets, timestamps) is whole after each
/// statement that changes it, so a panic elsewhere leaves it usable, and one
/// failed request must not stop every later one.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_still_locks_with_its_value() {
        let mutex = std::sync::Arc::new(Mutex::new(vec![1]));
        let poisoner = std::sync::Arc::clone(&mutex);
        let _ = std::thread::spawn(move || {
            let mut held = poisoner.lock().unwrap();
            held.push(2);
            panic!("while holding the lock");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), [1, 2]);
    }
}
