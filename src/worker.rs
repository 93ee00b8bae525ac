//! A thread that does the blocking work the loop must not: it takes every job waiting
//! as one batch, and hands the results back through a shared list and a wake-up call
//! (the loop's `mio::Waker`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// The loop's handle on a worker thread taking jobs `J` and giving results `D`.
pub struct Worker<J, D> {
    tx: mpsc::Sender<J>,
    done: Arc<Mutex<Vec<D>>>,
    /// Jobs submitted whose batch has not finished yet.
    pending: Arc<AtomicUsize>,
}

impl<J: Send + 'static, D: Send + 'static> Worker<J, D> {
    /// Starts the thread `name`: `run` gets each batch (every job waiting, in order of
    /// submission) and returns the results, which are published before `wake` is
    /// called.
    pub fn start(
        name: &str,
        wake: impl Fn() + Send + 'static,
        mut run: impl FnMut(Vec<J>) -> Vec<D> + Send + 'static,
    ) -> std::io::Result<Worker<J, D>> {
        let (tx, rx) = mpsc::channel::<J>();
        let done = Arc::new(Mutex::new(Vec::new()));
        let pending = Arc::new(AtomicUsize::new(0));
        let (out, left) = (done.clone(), pending.clone());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let n = batch.len();
                    let results = run(batch);
                    if let Ok(mut d) = out.lock() {
                        d.extend(results);
                    }
                    left.fetch_sub(n, Ordering::AcqRel);
                    wake();
                }
            })?;
        Ok(Worker { tx, done, pending })
    }

    /// Queues a job; gives it back when the thread is gone.
    pub fn submit(&self, job: J) -> Result<(), J> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.tx.send(job).map_err(|e| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }

    /// Takes the results published so far.
    pub fn take_done(&self) -> Vec<D> {
        self.done
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// Jobs submitted whose batch has not finished (their results may wait in
    /// [`Worker::take_done`]).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_back_in_order() {
        let (wtx, wrx) = mpsc::channel::<()>();
        let w: Worker<u32, u32> = Worker::start(
            "test",
            move || {
                let _ = wtx.send(());
            },
            |b: Vec<u32>| b.into_iter().map(|x| x * 2).collect(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for i in 0..10 {
            assert!(w.submit(i).is_ok());
        }
        let mut got = Vec::new();
        while got.len() < 10 {
            wrx.recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{e}"));
            got.extend(w.take_done());
        }
        assert_eq!(got, (0..10).map(|x| x * 2).collect::<Vec<_>>());
        assert_eq!(w.pending(), 0);
    }
}
