//! The client side over TCP: a session whose links are secure channels to every validator.

use std::sync::Arc;

use pbft_core::Keypair;
use pbft_host::config::Network;
use pbft_host::session::Session;
use pbft_host::start::CLIENT_FRAME_OVERHEAD;

use crate::link::{Identity, link};
use crate::secure::Role;

/// A session over TCP to every validator `network` names (link `i` to
/// [`Network::known_addresses`]`[i]`), authenticated as `keypair`. Links connect (and
/// reconnect) in the background on smol's executor; dropping the session stops them.
pub fn connect(network: &Network, keypair: &Keypair) -> Session {
    let targets = network.known_addresses();
    let (mut links, ends) = Session::channels(targets.len());
    let outgoing = std::mem::take(&mut links.outgoing);
    let keypair = Arc::new(Keypair::from_seed(&keypair.seed()));
    let max = network.core.max_message_bytes + CLIENT_FRAME_OVERHEAD;
    let tasks: Vec<smol::Task<()>> = targets
        .iter()
        .zip(outgoing)
        .enumerate()
        .map(|(index, ((expected, addr), queue))| {
            let identity = Identity {
                chain: network.core.chain_id,
                keypair: keypair.clone(),
                role: Role::Client,
                listens: None,
                expected: *expected,
            };
            smol::spawn(link(
                *addr,
                identity,
                queue,
                max,
                Some(links.inbound_for(index)),
                None,
            ))
        })
        .collect();
    Session::new(ends, Box::new(tasks))
}
