//! A fault-free in-memory cluster: real replicas and signatures, FIFO delivery, no delays.
//!
//! For benchmarks and scenario tests that need a working cluster rather than an adversary.

use std::collections::{BTreeMap, VecDeque};

use pbft_core::{
    Batch, Config, Destination, Keypair, Output, PublicKey, QuorumCertificate, Replica, Request,
    ValidatorSet,
};

use crate::{chain, validator_keys};

/// n validators wired in memory.
pub struct Cluster {
    /// The replicas, by id.
    pub replicas: Vec<Replica>,
    /// The validator set.
    pub set: ValidatorSet,
    keys: Vec<PublicKey>,
    now: u64,
    network: VecDeque<(usize, PublicKey, Vec<u8>)>,
    /// Replies waiting for each client.
    inbox: BTreeMap<PublicKey, Vec<Vec<u8>>>,
    /// Batches and QCs as replica 0 delivered them, by seq.
    pub committed: BTreeMap<u64, (Batch, QuorumCertificate)>,
    /// Encoded bytes put on the network, counting each copy of a broadcast.
    pub bytes_sent: u64,
}

impl Cluster {
    /// A cluster of `n` validators with `config` (its chain id is replaced by the sim's).
    pub fn new(n: usize, mut config: Config) -> Self {
        config.chain_id = chain();
        let keypairs = validator_keys(n);
        let keys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();
        let set = ValidatorSet::new(0, &keys).expect("simulated keys are valid");
        let replicas = keypairs
            .into_iter()
            .map(|keypair| {
                Replica::new(config.clone(), set.clone(), keypair).expect("valid config")
            })
            .collect();
        Cluster {
            replicas,
            set,
            keys,
            now: 0,
            network: VecDeque::new(),
            inbox: BTreeMap::new(),
            committed: BTreeMap::new(),
            bytes_sent: 0,
        }
    }

    /// Hands a request to validator `to`, as a client connected to it would.
    pub fn submit(&mut self, to: usize, request: Request) -> Result<(), pbft_core::Error> {
        let result = self.replicas[to].submit(self.now, request);
        self.drain(to);
        result
    }

    /// Delivers messages and fires timers until every replica is idle (only heartbeats left).
    pub fn run(&mut self) {
        self.run_checking(|_| {});
    }

    /// [`Cluster::run`], calling `check` on the replica after every message it handles.
    pub fn run_checking(&mut self, mut check: impl FnMut(&Replica)) {
        loop {
            while let Some((to, from, bytes)) = self.network.pop_front() {
                // Rejections (e.g. votes for slots already executed) are normal here.
                let _ = self.replicas[to].handle_message(self.now, &from, &bytes);
                self.drain(to);
                check(&self.replicas[to]);
            }
            if self.replicas.iter().all(Replica::is_idle) {
                return;
            }
            let next = self.replicas.iter().filter_map(Replica::poll_timeout).min();
            let Some(at) = next else {
                return;
            };
            self.now = self.now.max(at);
            for index in 0..self.replicas.len() {
                self.replicas[index].handle_timeout(self.now);
                self.drain(index);
            }
        }
    }

    /// Replies that reached `client` since the last call.
    pub fn take_replies(&mut self, client: &PublicKey) -> Vec<Vec<u8>> {
        self.inbox.remove(client).unwrap_or_default()
    }

    fn drain(&mut self, index: usize) {
        while let Some(output) = self.replicas[index].poll_output() {
            match output {
                Output::Persist(_)
                | Output::Evidence(_)
                | Output::Install(_)
                | Output::StateDiverged { .. } => {}
                Output::Send { to, bytes } => self.route(index, to, bytes),
                Output::Deliver(delivery) => {
                    // The application echoes each operation back as its result.
                    let results = delivery
                        .execute
                        .iter()
                        .filter_map(|&i| delivery.batch.requests.get(i as usize))
                        .map(|request| request.op.clone())
                        .collect();
                    let seq = delivery.seq;
                    let checkpoint = delivery.checkpoint;
                    if index == 0 {
                        self.committed
                            .insert(seq, (delivery.batch, delivery.certificate));
                    }
                    // The application keeps no state: its snapshot is empty.
                    let snapshot = checkpoint.then(Vec::new);
                    self.replicas[index]
                        .executed(self.now, seq, results, snapshot)
                        .expect("the cluster executes in delivery order");
                }
                other => panic!("the cluster does not handle {other:?}"),
            }
        }
    }

    fn route(&mut self, index: usize, to: Destination, bytes: Vec<u8>) {
        let from = self.keys[index];
        match to {
            Destination::Validator(id) => {
                self.bytes_sent += bytes.len() as u64;
                self.network.push_back((id.0 as usize, from, bytes));
            }
            Destination::AllValidators => {
                for peer in (0..self.replicas.len()).filter(|&peer| peer != index) {
                    self.bytes_sent += bytes.len() as u64;
                    self.network.push_back((peer, from, bytes.clone()));
                }
            }
            Destination::Client(key) => {
                self.bytes_sent += bytes.len() as u64;
                self.inbox.entry(key).or_default().push(bytes);
            }
            // The set never changes here.
            Destination::Outside(_) => {}
        }
    }
}
