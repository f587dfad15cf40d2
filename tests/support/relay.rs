//! A TCP relay on loopback in front of a manager: what the CLI dials instead of the manager,
//! so that a test can reset every connection through it (a network blip, a load balancer
//! restarting) while the manager and the relay's own listener stay up.

use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Relay {
    address: String,
    /// Both ends of every connection relayed so far.
    open: Arc<Mutex<Vec<TcpStream>>>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to `target` (`host:port`).
    pub fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let address = listener.local_addr().expect("the relay's address").to_string();
        let open = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let target = target.to_string();
        let acceptor = {
            let (open, stopping) = (open.clone(), stopping.clone());
            std::thread::spawn(move || accept(listener, &target, &open, &stopping))
        };
        Relay { address, open, stopping, acceptor: Some(acceptor) }
    }

    /// What to give `-H`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Resets every connection relayed so far (new ones are still accepted); returns how many
    /// there were.
    pub fn cut(&self) -> usize {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        for stream in open.iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let count = open.len() / 2;
        open.clear();
        count
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, target: &str, open: &Mutex<Vec<TcpStream>>, stopping: &AtomicBool) {
    while !stopping.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            // Non-blocking, so that dropping the relay ends this loop.
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let Ok(server) = TcpStream::connect(target) else { continue };
        let _ = client.set_nonblocking(false);
        let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else { continue };
        let (Ok(client_keep), Ok(server_keep)) = (client.try_clone(), server.try_clone()) else { continue };
        open.lock().unwrap_or_else(PoisonError::into_inner).extend([client_keep, server_keep]);
        std::thread::spawn(move || pipe(client, server));
        std::thread::spawn(move || pipe(server_copy, client_copy));
    }
}

/// Copies `from` to `to` until either side ends, then ends both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
