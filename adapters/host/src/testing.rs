//! Test support for the runtime-agnostic pieces: a minimal executor, and in-memory halves of
//! a connection.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use crate::framing::{ReadHalf, WriteHalf};

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to its end on this thread (the host has no runtime of its own).
pub(crate) fn block_on<T>(future: impl Future<Output = T>) -> T {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(value) => return value,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// A receiving half that yields these chunks, then ends.
pub(crate) struct Chunks {
    chunks: VecDeque<Vec<u8>>,
    current: Vec<u8>,
}

impl Chunks {
    pub(crate) fn new(chunks: impl IntoIterator<Item = Vec<u8>>) -> Chunks {
        Chunks {
            chunks: chunks.into_iter().collect(),
            current: Vec::new(),
        }
    }
}

impl ReadHalf for Chunks {
    async fn read(&mut self) -> Option<&[u8]> {
        self.current = self.chunks.pop_front()?;
        Some(&self.current)
    }
}

/// A sending half that keeps every write, or fails each one.
#[derive(Default)]
pub(crate) struct Writes {
    pub(crate) writes: Vec<Vec<u8>>,
    pub(crate) broken: bool,
}

impl WriteHalf for Writes {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        self.writes.push(bytes.to_vec());
        Ok(())
    }
}

/// A receiving half that never receives anything and never ends.
pub(crate) struct Silent;

impl ReadHalf for Silent {
    async fn read(&mut self) -> Option<&[u8]> {
        std::future::pending().await
    }
}

/// A timer whose sleeps end at once, recording what was asked of it; or never, if
/// `never`, or if longer than `longest`.
#[derive(Default)]
pub(crate) struct TestTimer {
    pub(crate) never: bool,
    pub(crate) longest: Option<std::time::Duration>,
    pub(crate) slept: std::sync::Mutex<Vec<std::time::Duration>>,
}

impl crate::serve::Timer for TestTimer {
    async fn sleep(&self, duration: std::time::Duration) {
        if self.never || self.longest.is_some_and(|longest| duration > longest) {
            return std::future::pending().await;
        }
        self.slept.lock().unwrap().push(duration);
    }
}
