//! Serves a connection a transport accepted and admitted, whatever carries it: a
//! validator's frames go to the node; a client's too, and the node's frames for that client
//! go back on the same connection.

use pbft_core::PublicKey;

use crate::driver::{Driver, Input, Role, Router};
use crate::framing::{ReadHalf, StreamEnd, WriteHalf, read_frames, write_frames};
use crate::race::first;

/// Serves one admitted connection (or QUIC stream) of `key` in `role` until it ends, and
/// says how: a transport that can tell the other side why closes an
/// [`StreamEnd::Oversized`] connection with a reason. Broken framing is counted here
/// (`truncated_frame`, `oversized_frame`).
pub async fn serve<R: ReadHalf, W: WriteHalf>(
    key: PublicKey,
    role: Role,
    mut reader: R,
    mut writer: W,
    driver: &Driver,
    router: &Router,
    max: usize,
) -> StreamEnd {
    let end = match role {
        Role::Validator => {
            read_frames(&mut reader, max, |bytes| {
                driver.input(Input::Peer { from: key, bytes })
            })
            .await
        }
        Role::Client => {
            let queue = router.attach_client(key);
            let reading = read_frames(&mut reader, max, |bytes| {
                driver.input(Input::Client { from: key, bytes })
            });
            let writing = async {
                write_frames(&mut writer, &queue.frames, max).await;
                StreamEnd::Closed
            };
            let end = first(reading, writing).await;
            router.detach_client(&key, &queue);
            end
        }
    };
    match end {
        StreamEnd::Closed => {}
        StreamEnd::Truncated => driver.metrics().reject("truncated_frame"),
        StreamEnd::Oversized => driver.metrics().reject("oversized_frame"),
    }
    end
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pbft_core::{Keypair, ReplicaId, ValidatorSet};

    use super::*;
    use crate::framing::encode;
    use crate::metrics::NodeMetrics;
    use crate::testing::{Chunks, Writes, block_on};

    fn key() -> PublicKey {
        Keypair::from_seed(&[3; 32]).public_key()
    }

    fn router() -> Arc<Router> {
        let set = ValidatorSet::new(0, &[key()]).unwrap();
        Router::new(&set, ReplicaId(0), Arc::new(NodeMetrics::new())).0
    }

    #[test]
    fn a_validators_frames_go_to_the_node_and_a_frame_cut_short_is_counted() {
        let (driver, inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
        let stream = [encode(b"vote", 64).unwrap(), encode(b"cut", 64).unwrap()].concat();
        let reader = Chunks::new([stream[..stream.len() - 1].to_vec()]);
        let end = block_on(serve(
            key(),
            Role::Validator,
            reader,
            Writes::default(),
            &driver,
            &router(),
            64,
        ));
        assert_eq!(end, StreamEnd::Truncated);
        let Ok(Input::Peer { from, bytes }) = inputs.try_recv() else {
            panic!("the whole frame reaches the node as a validator's");
        };
        assert_eq!((from, bytes), (key(), b"vote".to_vec()));
        assert!(inputs.is_empty(), "the cut frame does not");
        assert_eq!(driver.metrics().rejected("truncated_frame"), 1);
    }

    #[test]
    fn a_client_has_a_queue_while_served_and_an_oversized_prefix_ends_it() {
        let (driver, inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
        let router = router();
        let reader = Chunks::new([encode(b"status", 64).unwrap(), vec![0xff; 4]]);
        let end = block_on(serve(
            key(),
            Role::Client,
            reader,
            Writes::default(),
            &driver,
            &router,
            64,
        ));
        assert_eq!(end, StreamEnd::Oversized);
        assert!(matches!(inputs.try_recv(), Ok(Input::Client { .. })));
        assert_eq!(driver.metrics().rejected("oversized_frame"), 1);
        assert_eq!(
            router.metrics().clients_connected.get(),
            0,
            "its queue closed with the connection"
        );
    }
}
