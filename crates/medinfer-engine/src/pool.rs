//! A blocking pool of per-stream engine resources (infer requests, sessions, tract states).
use std::sync::{Condvar, Mutex, PoisonError};

/// Items are taken for the duration of one request and returned afterwards; a caller finding
/// the pool empty waits until another request finishes.
pub(crate) struct Pool<T> {
    items: Mutex<Vec<T>>,
    ready: Condvar,
}

impl<T> Pool<T> {
    pub fn new(items: Vec<T>) -> Pool<T> {
        Pool {
            items: Mutex::new(items),
            ready: Condvar::new(),
        }
    }

    /// Runs `f` with exclusive use of one item.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut item = {
            let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(it) = items.pop() {
                    break it;
                }
                items = self
                    .ready
                    .wait(items)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        // Return the item even if `f` panics (a guard upstream turns the panic into an error).
        struct Return<'a, T> {
            pool: &'a Pool<T>,
            item: Option<T>,
        }
        impl<T> Drop for Return<'_, T> {
            fn drop(&mut self) {
                if let Some(it) = self.item.take() {
                    self.pool
                        .items
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(it);
                    self.pool.ready.notify_one();
                }
            }
        }
        let mut guard = Return {
            pool: self,
            item: None,
        };
        let r = f(&mut item);
        guard.item = Some(item);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn never_hands_one_item_to_two_callers() {
        let pool = Arc::new(Pool::new(vec![0usize, 0]));
        let busy = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (pool, busy, max) = (pool.clone(), busy.clone(), max.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        pool.with(|n| {
                            let b = busy.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(b, Ordering::SeqCst);
                            *n += 1;
                            std::thread::yield_now();
                            busy.fetch_sub(1, Ordering::SeqCst);
                        })
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(max.load(Ordering::SeqCst) <= 2);
        let total: usize = pool.items.lock().unwrap().iter().sum();
        assert_eq!(total, 400);
    }
}
