//! The closed-loop clients: each sends its requests one after another, retransmits on its
//! timer, and accepts a result from f + 1 matching replies.

use pbft_core::{Client, Message, Request};

use super::{Event, Simulation};
use crate::chain;

/// A simulated client.
pub(super) struct SimClient {
    pub(super) client: Client,
    /// Requests still to send.
    pub(super) remaining: usize,
    /// The request waiting for its result.
    pub(super) outstanding: Option<Request>,
}

impl Simulation {
    /// Client `index` sends its next request to the primary it knows, if it has one left.
    pub(super) fn next_request(&mut self, index: usize) {
        let now = self.now;
        let op = match self.operator_op(index) {
            Some(op) => op,
            None => {
                let client = &mut self.clients[index];
                if client.remaining == 0 {
                    return;
                }
                client.remaining -= 1;
                format!("client {index} op {}", client.remaining).into_bytes()
            }
        };
        let client = &mut self.clients[index];
        let request = client.client.request(now, op);
        client.outstanding = Some(request.clone());
        self.submitted.insert(request.digest(&chain()));
        let from = self.validators.len() + index;
        let primary = client.client.primary();
        let set = client.client.validators().clone();
        let bytes = Message::Request(request).encode();
        let replicas: Vec<usize> = match self.gateway_node() {
            Some(gateway) => vec![gateway],
            None => self.instances_in(&set, primary),
        };
        for replica in replicas {
            self.send(replica, from, bytes.clone());
        }
        self.schedule_client_timer(index);
    }

    /// A reply reaches client `index`; once it accepts a result, it checks it and goes on.
    pub(super) fn client_receives(&mut self, index: usize, bytes: &[u8]) {
        let Ok(Some(outcome)) = self.clients[index].client.handle_reply(bytes) else {
            return;
        };
        let client = &mut self.clients[index];
        let Some(request) = client.outstanding.take() else {
            return;
        };
        self.check_accepted(index, &request, &outcome.result);
        self.check_inclusion(&request, outcome.seq);
        // The operator's requests come on top of the clients' load.
        if !self.operator_answered(index, &outcome.result) {
            self.report.requests_completed += 1;
            self.report.last_completed_ms = self.now;
        }
        self.next_request(index);
    }

    /// Client `index`'s timer set for `at`: it retransmits its request to every validator, or
    /// to its gateway (which sends it to every validator when their replies are late).
    pub(super) fn client_timer(&mut self, index: usize, at: u64) {
        if self.clients[index].client.poll_timeout() != Some(at) {
            return;
        }
        if let Some(request) = self.clients[index].client.handle_timeout(self.now) {
            let bytes = Message::Request(request.clone()).encode();
            let from = self.validators.len() + index;
            let targets: Vec<usize> = match self.gateway_node() {
                Some(gateway) => vec![gateway],
                None => (0..self.validators.len()).collect(),
            };
            for target in targets {
                self.send(target, from, bytes.clone());
            }
        }
        self.schedule_client_timer(index);
    }

    /// Schedules client `index`'s next timer, if it wants one.
    fn schedule_client_timer(&mut self, index: usize) {
        if let Some(at) = self.clients[index].client.poll_timeout() {
            self.schedule_at(at.max(self.now), Event::ClientTimer { client: index, at });
        }
    }
}
