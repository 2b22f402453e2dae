//! Waits for whichever of two futures finishes first, on any runtime (the host has none of
//! its own: tokio's `select!` and smol's `or` each belong to one).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

/// The output of whichever of `a` and `b` finishes first (`a` when both are ready); the
/// other is dropped unfinished.
pub(crate) async fn first<T>(a: impl Future<Output = T>, b: impl Future<Output = T>) -> T {
    let (mut a, mut b) = (pin!(a), pin!(b));
    poll_fn(|cx| match a.as_mut().poll(cx) {
        Poll::Ready(value) => Poll::Ready(value),
        Poll::Pending => b.as_mut().poll(cx),
    })
    .await
}
