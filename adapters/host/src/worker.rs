//! A helper thread of the node: it takes jobs from a queue and answers each, in order, on a
//! second queue the node's thread waits on beside its inputs. Checkpoint snapshots
//! ([`crate::snapshots`]) and the store's durable commits ([`crate::store`]) each run on one.

use std::thread::JoinHandle;

/// The thread and its two queues. Both queues are unbounded: the node bounds the jobs it
/// leaves unanswered. Dropping it lets the thread finish the job at hand and joins it (not
/// while unwinding from a panic, when that job may never finish), so what the thread holds
/// (a read transaction, the database's last handle) is gone with it.
pub(crate) struct Worker<J, O> {
    jobs: Option<flume::Sender<J>>,
    done: flume::Receiver<O>,
    thread: Option<JoinHandle<()>>,
}

impl<J: Send + 'static, O: Send + 'static> Worker<J, O> {
    /// Starts the thread `name`, which answers each job with `work`.
    ///
    /// # Errors
    ///
    /// The thread cannot be spawned.
    pub(crate) fn start(
        name: &str,
        mut work: impl FnMut(J) -> O + Send + 'static,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = flume::unbounded::<J>();
        let (answers, done) = flume::unbounded();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for job in queue.iter() {
                    if answers.send(work(job)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Worker {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Queues `job`; false if the thread is gone (it panicked).
    pub(crate) fn submit(&self, job: J) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok())
    }

    /// Where the answers arrive, in the order of the jobs.
    pub(crate) fn done(&self) -> &flume::Receiver<O> {
        &self.done
    }
}

impl<J, O> Drop for Worker<J, O> {
    fn drop(&mut self) {
        self.jobs = None;
        if std::thread::panicking() {
            return;
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
