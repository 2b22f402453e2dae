//! Checkpoint snapshots taken on a thread of their own, so a checkpoint does not hold the
//! node's thread for as long as the state takes to read and hash.
//!
//! At a checkpoint the node commits its round (unsynced), opens a read transaction on it
//! and hands it over with the replica's [`SnapshotJob`]
//! ([`pbft_core::Replica::executed_deferring`]); later batches execute meanwhile, in newer
//! transactions the read one does not see. The thread reads the application's snapshot,
//! digests it ([`SnapshotJob::finish`]) and encodes the store's record of it; the node hands
//! the result to the replica, which signs the checkpoint then
//! ([`pbft_core::Replica::snapshot_taken`]). Jobs run one at a time, in order.

use std::time::Instant;

use pbft_core::{SnapshotJob, TakenSnapshot};
use redb::ReadTransaction;

use crate::application::{AppError, Application};
use crate::store::checkpoint_record;
use crate::worker::Worker;

/// A checkpoint's state, digested and encoded for the store.
#[derive(Debug)]
pub struct Finished {
    /// For the replica.
    pub taken: TakenSnapshot,
    /// For the store ([`crate::store::Round::record_checkpoint_encoded`]).
    pub record: Vec<u8>,
    /// How long the thread took: reading, digesting and encoding, s.
    pub seconds: f64,
}

/// What the thread sends back for each job.
pub type Outcome = Result<Finished, AppError>;

/// The thread and its two queues ([`Worker`]).
pub struct Snapshots(Worker<(ReadTransaction, SnapshotJob), Outcome>);

impl Snapshots {
    /// Starts the thread with `app`, a copy of the node's application that only takes
    /// snapshots (see [`Application::snapshot`]). Its queue is bounded by the node: past
    /// `MAX_SNAPSHOTS_PENDING` jobs it waits for the oldest before it goes on.
    ///
    /// # Errors
    ///
    /// The thread cannot be spawned.
    pub fn start<A: Application + Send + 'static>(app: A) -> std::io::Result<Snapshots> {
        let worker = Worker::start(
            "pbft-snapshots",
            move |(read, job): (ReadTransaction, SnapshotJob)| {
                let started = Instant::now();
                app.snapshot(&read).map(|app| {
                    // The transaction pins the pages of its state: let them go first.
                    drop(read);
                    let taken = job.finish(app);
                    let record = checkpoint_record(taken.app(), &taken.core_state());
                    Finished {
                        taken,
                        record,
                        seconds: started.elapsed().as_secs_f64(),
                    }
                })
            },
        )?;
        Ok(Snapshots(worker))
    }

    /// Queues a job on the state `read` sees (the state right after the job's seq). Lost
    /// only if the thread is gone, which the node learns from [`Snapshots::done`].
    pub fn submit(&self, read: ReadTransaction, job: SnapshotJob) {
        self.0.submit((read, job));
    }

    /// Where finished jobs arrive, in the order they were submitted: a driver waits on it
    /// beside its other inputs.
    pub fn done(&self) -> &flume::Receiver<Outcome> {
        self.0.done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvStore, Op};
    use crate::store::Store;
    use pbft_core::{ChainId, Config, Keypair, Replica, ValidatorSet};

    #[test]
    fn a_job_reads_the_state_of_its_transaction_not_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let mut app = KvStore::new();
        let put = |key: &str| {
            Op::Put {
                key: key.into(),
                value: b"v".to_vec(),
            }
            .encode()
        };
        let round = store.begin().unwrap();
        app.execute(round.tx(), &[&put("a")]).unwrap();
        store.commit_unsynced(round).unwrap();
        let read = store.read().unwrap();
        let expected = KvStore::snapshot_of(&read).unwrap();
        // A later write the job must not see.
        let round = store.begin().unwrap();
        app.execute(round.tx(), &[&put("b")]).unwrap();
        store.commit_unsynced(round).unwrap();

        // A replica of one validator, at its first checkpoint, hands over the job.
        let key = Keypair::from_seed(&[9; 32]);
        let set = ValidatorSet::new(0, &[key.public_key()]).unwrap();
        let chain = ChainId::from_name("snapshots");
        let mut config = Config::new(chain);
        config.checkpoint_interval = 1;
        let mut replica = Replica::new(config, set, key).unwrap();
        let client = Keypair::from_seed(&[10; 32]);
        let request = pbft_core::Request::new(&chain, &client, 1, put("a"));
        replica.submit(1, request).unwrap();
        replica.handle_timeout(10);
        let delivery = std::iter::from_fn(|| replica.poll_output())
            .find_map(|output| match output {
                pbft_core::Output::Deliver(delivery) => Some(delivery),
                _ => None,
            })
            .expect("a lone validator commits");
        let job = replica
            .executed_deferring(10, delivery.seq, vec![b"done".to_vec()])
            .unwrap()
            .expect("a checkpoint job");
        assert_eq!(
            replica.checkpoint_state(delivery.seq),
            None,
            "not signed yet"
        );

        let snapshots = Snapshots::start(KvStore::new()).unwrap();
        snapshots.submit(read, job);
        let finished = snapshots.done().recv().unwrap().unwrap();
        assert_eq!(finished.taken.app(), &expected[..]);
        assert_eq!(
            finished.record,
            checkpoint_record(&expected, &finished.taken.core_state())
        );
        replica.snapshot_taken(11, finished.taken).unwrap();
        let state = replica.checkpoint_state(delivery.seq).expect("kept");
        assert_eq!(state.app, expected);
    }
}
