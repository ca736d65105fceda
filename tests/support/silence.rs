//! A TCP proxy in front of a real server that can be told to go silent,
//! as a store behind a broken network path does: it keeps every
//! connection open and reads what is sent, but forwards and answers
//! nothing. A connection that went silent stays silent for good (its
//! requests hang until the client gives up); connections made after
//! [`Silence::speak`] are forwarded again. It runs on the test's runtime,
//! which must have worker threads to spare (`multi_thread`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

pub struct Silence {
    pub address: SocketAddr,
    silent: Arc<AtomicBool>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Silence {
    /// Starts a proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let accepting = tokio::spawn({
            let silent = silent.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(relay(client, upstream, silent.clone()));
                }
            }
        });
        Self {
            address,
            silent,
            accepting,
        }
    }

    /// From now on nothing is forwarded or answered.
    pub fn go_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    /// New connections are forwarded again; silenced ones stay silent.
    pub fn speak(&self) {
        self.silent.store(false, Ordering::SeqCst);
    }
}

impl Drop for Silence {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Relays between `client` and `upstream` until the proxy goes silent.
async fn relay(client: TcpStream, upstream: SocketAddr, silent: Arc<AtomicBool>) {
    let (from_client, to_client) = client.into_split();
    match TcpStream::connect(upstream).await {
        Ok(server) if !silent.load(Ordering::SeqCst) => {
            let (from_server, to_server) = server.into_split();
            futures::join!(
                pump(from_client, Some(to_server), &silent),
                pump(from_server, Some(to_client), &silent),
            );
        }
        _ => pump(from_client, None::<OwnedWriteHalf>, &silent).await,
    }
}

/// Copies from `from` to `to` until the end; once the proxy has been
/// silent, only reads on for good (holding `to` open, so the peer waits for
/// an answer that never comes).
async fn pump(mut from: OwnedReadHalf, mut to: Option<OwnedWriteHalf>, silent: &AtomicBool) {
    let mut buffer = vec![0u8; 64 << 10];
    let mut speaking = true;
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        speaking &= !silent.load(Ordering::SeqCst);
        if !speaking {
            continue;
        }
        if let Some(writer) = to.as_mut()
            && writer.write_all(&buffer[..read]).await.is_err()
        {
            return;
        }
    }
}
