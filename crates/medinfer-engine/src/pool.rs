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
        self.with_least(|_| 0, f)
    }

    /// As [`Pool::with`], taking the free item with the lowest `cost` (the last of equals).
    pub fn with_least<R>(&self, cost: impl Fn(&T) -> usize, f: impl FnOnce(&mut T) -> R) -> R {
        let item = {
            let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                let best = (0..items.len()).rev().min_by_key(|&i| cost(&items[i]));
                if let Some(i) = best {
                    break items.swap_remove(i);
                }
                items = self
                    .ready
                    .wait(items)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        // The item goes back to the pool however `f` ends, a panic included: the guard owns it
        // for the whole call (a backend's panic guard upstream turns the panic into an error,
        // and the stream must stay usable for the next request).
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
        f(guard.item.insert(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Regression (hardening review): the item was put back only after `f` returned, so each
    /// panic inside a backend lost a stream for good and, once all were lost, every later
    /// request waited on the condvar forever.
    #[test]
    fn a_panic_inside_f_does_not_lose_the_item() {
        let pool = Pool::new(vec![0usize]);
        for _ in 0..3 {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.with(|_| -> () { panic!("engine failure") })
            }));
            assert!(r.is_err());
        }
        // With the stream lost this call would block forever; run it on a thread and wait.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                tx.send(pool.with(|n| {
                    *n += 1;
                    *n
                }))
                .unwrap()
            });
            let got = rx.recv_timeout(std::time::Duration::from_secs(10));
            assert_eq!(got, Ok(1), "the pool lost its only item to a panic");
        });
    }

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
