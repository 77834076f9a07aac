//! A job queue for a pool of threads that mostly wait: a FIFO behind a mutex whose idle
//! consumers park on a condition variable at once.
//!
//! crossbeam's channels spin and `sched_yield` a few times before parking, which pays off when
//! the next message is microseconds away. The group commit's sync threads wait for a disk
//! flush between jobs, and sixteen of them yielding on a two-core machine cost a tenth of the
//! CPU of durable intake (perf). A producer only makes the wake-up call when a consumer waits.
//!
//! Owns: the queue and its closing. Must not: know what the jobs are.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// A closable FIFO of jobs for a thread pool.
pub struct JobQueue<J> {
    state: Mutex<State<J>>,
    ready: Condvar,
}

struct State<J> {
    jobs: VecDeque<J>,
    /// Consumers parked in [`JobQueue::pop`].
    idle: usize,
    closed: bool,
}

impl<J> Default for JobQueue<J> {
    fn default() -> Self {
        JobQueue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                idle: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<J> JobQueue<J> {
    fn lock(&self) -> MutexGuard<'_, State<J>> {
        // A consumer that panicked while holding the lock left the queue itself intact.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job; gives it back once the queue is closed.
    pub fn push(&self, job: J) -> Result<(), J> {
        let mut s = self.lock();
        if s.closed {
            return Err(job);
        }
        s.jobs.push_back(job);
        let wake = s.idle > 0;
        drop(s);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next job, waiting for one; None once the queue is closed and empty.
    pub fn pop(&self) -> Option<J> {
        let mut s = self.lock();
        loop {
            if let Some(job) = s.jobs.pop_front() {
                return Some(job);
            }
            if s.closed {
                return None;
            }
            s.idle += 1;
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
            s.idle -= 1;
        }
    }

    /// Takes no more jobs; consumers finish the queued ones, then [`JobQueue::pop`] gives None.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Every job pushed is popped exactly once across consumers, the queued ones still after
    /// the close, and a push after the close is refused.
    #[test]
    fn jobs_are_taken_once_and_close_drains() {
        let q = Arc::new(JobQueue::default());
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(j) = q.pop() {
                        got.push(j);
                    }
                    got
                })
            })
            .collect();
        for j in 0..1000u32 {
            q.push(j).expect("open");
        }
        q.close();
        assert_eq!(q.push(1000), Err(1000));
        let mut all: Vec<u32> = consumers
            .into_iter()
            .flat_map(|c| c.join().expect("consumer"))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }
}
