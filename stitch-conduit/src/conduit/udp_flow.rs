//! UDP flows: the conduit's datagram path, switched over by stand-off or drop-below.
//!
//! A flow is named by the application's address. On the route side the first datagram
//! from a new application address creates the flow (an upstream socket towards the
//! proxies); on the inbound side the first conduit datagram of a new application
//! address does (a socket connected to the service). Matching and the stitch handshake
//! are the TCP connections' own (descriptions with transport UDP, a sealed hello on the
//! TCP stitch listener, which stays open as the flow's control connection); the
//! stitched datagrams then go to the peer's stitch address over UDP. One loop thread per
//! flow owns the [`UdpSender`] and [`UdpReceiver`]. Flows have no end (UDP has none);
//! they last as long as the daemon.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{initiate, log, register, Conn, Ev, Publisher, Role, Shared};
use crate::config::UdpPort;
use crate::desc::{ConnDesc, Proto, Tuple};
use crate::session::{Phase, SessionStats};
use crate::udp::{self, UdpReceiver, UdpSender, Via};

/// Flows by application address.
pub(super) type Flows = Mutex<HashMap<SocketAddr, Sender<Ev>>>;

fn flow_tx(sh: &Shared, app: SocketAddr) -> Option<Sender<Ev>> {
    sh.udp_flows
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&app)
        .cloned()
}

fn any_addr(like: SocketAddr) -> SocketAddr {
    match like.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

fn scope_of(sh: &Shared, port: &UdpPort) -> u32 {
    sh.scopes().by_name(&port.scope).map_or(0, |s| s.key_id)
}

type Out = Box<dyn Fn(&[u8]) + Send>;

/// Datagrams from applications on a `[[udp_route]]` port.
pub(super) fn serve_route(sh: Arc<Shared>, port: UdpPort, sock: UdpSocket) {
    udp::big_receive_buffer(&sock);
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, app)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let tx = match flow_tx(&sh, app) {
            Some(tx) => Some(tx),
            None => start_route_flow(&sh, &port, &sock, app),
        };
        if let Some(tx) = tx {
            let _ = tx.send(Ev::UdpApp(buf[..n].to_vec()));
        }
    }
}

fn start_route_flow(
    sh: &Arc<Shared>,
    port: &UdpPort,
    sock: &UdpSocket,
    app: SocketAddr,
) -> Option<Sender<Ev>> {
    let up = UdpSocket::bind(any_addr(port.forward)).ok()?;
    up.connect(port.forward).ok()?;
    udp::big_receive_buffer(&up);
    let desc = ConnDesc {
        tuple: Tuple {
            proto: Proto::Udp,
            src: app,
            dst: port.service,
        },
        age_ms: 0,
        global_id: sh.cfg.global_id,
        scope: scope_of(sh, port),
    };
    let (tx, rx) = mpsc::channel();
    let conn = register(sh, Role::Opener, desc, tx.clone());
    let reader = up.try_clone().ok()?;
    spawn_reader(reader, tx.clone(), false);
    let app_sock = sock.try_clone().ok()?;
    let to_app: Out = Box::new(move |p| {
        let _ = app_sock.send_to(p, app);
    });
    let to_orig: Out = Box::new(move |b| {
        let _ = up.send(b);
    });
    sh.udp_flows
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(app, tx.clone());
    let (sh, port) = (sh.clone(), port.clone());
    thread::spawn(move || run_flow(sh, conn, rx, app, &port, to_app, to_orig));
    Some(tx)
}

/// Reads conduit datagrams (`decode: true`) or application datagrams into a flow.
fn spawn_reader(sock: UdpSocket, tx: Sender<Ev>, from_app: bool) {
    thread::spawn(move || {
        let mut b = vec![0u8; 65_536];
        while let Ok(n) = sock.recv(&mut b) {
            let ev = if from_app {
                Ev::UdpApp(b[..n].to_vec())
            } else {
                match udp::decode(&b[..n]) {
                    Ok((_, d)) => Ev::UdpIn(Via::Original, d),
                    Err(_) => continue,
                }
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
}

/// Conduit datagrams from the proxy chain on a `[[udp_inbound]]` port.
pub(super) fn serve_inbound(sh: Arc<Shared>, port: UdpPort, sock: UdpSocket) {
    udp::big_receive_buffer(&sock);
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, relay)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok((app, d)) = udp::decode(&buf[..n]) else {
            continue;
        };
        let tx = match flow_tx(&sh, app) {
            Some(tx) => Some(tx),
            None => start_inbound_flow(&sh, &port, &sock, relay, app),
        };
        if let Some(tx) = tx {
            let _ = tx.send(Ev::UdpIn(Via::Original, d));
        }
    }
}

fn start_inbound_flow(
    sh: &Arc<Shared>,
    port: &UdpPort,
    sock: &UdpSocket,
    relay: SocketAddr,
    app: SocketAddr,
) -> Option<Sender<Ev>> {
    let target = UdpSocket::bind(any_addr(port.forward)).ok()?;
    target.connect(port.forward).ok()?;
    udp::big_receive_buffer(&target);
    let desc = ConnDesc {
        tuple: Tuple {
            proto: Proto::Udp,
            src: port.service,
            dst: app,
        },
        age_ms: 0,
        global_id: sh.cfg.global_id,
        scope: scope_of(sh, port),
    };
    let (tx, rx) = mpsc::channel();
    let conn = register(sh, Role::Acceptor, desc, tx.clone());
    spawn_reader(target.try_clone().ok()?, tx.clone(), true);
    let back = sock.try_clone().ok()?;
    let to_app: Out = Box::new(move |p| {
        let _ = target.send(p);
    });
    let to_orig: Out = Box::new(move |b| {
        let _ = back.send_to(b, relay);
    });
    sh.udp_flows
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(app, tx.clone());
    let (sh, port) = (sh.clone(), port.clone());
    thread::spawn(move || run_flow(sh, conn, rx, app, &port, to_app, to_orig));
    Some(tx)
}

/// Stitched datagrams from peer conduits.
pub(super) fn serve_stitch(sh: Arc<Shared>, sock: UdpSocket) {
    udp::big_receive_buffer(&sock);
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok((app, d)) = udp::decode(&buf[..n]) else {
            continue;
        };
        if let Some(tx) = flow_tx(&sh, app) {
            let _ = tx.send(Ev::UdpIn(Via::Stitched, d));
        }
    }
}

fn run_flow(
    sh: Arc<Shared>,
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Ev>,
    app: SocketAddr,
    port: &UdpPort,
    to_app: Out,
    to_orig: Out,
) {
    let mode = port.mode();
    // Held datagrams leave at most one per 25 us (40k/s) after a stand-off.
    let mut sender = UdpSender::new(mode, 8192, 25);
    let mut receiver = UdpReceiver::new(mode);
    let mut peer: Option<SocketAddr> = None;
    let mut control: Option<TcpStream> = None;
    let mut publisher = Publisher::new(&sh, port.auto, port.preconfigured_peer);
    let mut app_bytes = 0u64;
    let mut stats = SessionStats::default();
    loop {
        // While held datagrams are being released, turn at least every 100 us.
        let wait = if sender.has_held() {
            Duration::from_micros(100)
        } else {
            Duration::from_millis(2)
        };
        let ev = rx.recv_timeout(wait);
        let now = sh.now_us();
        let mut sends = Vec::new();
        let mut delivers = Vec::new();
        match ev {
            Ok(Ev::UdpApp(p)) => {
                app_bytes += p.len() as u64;
                sends = sender.send(p, now);
            }
            Ok(Ev::UdpIn(via, d)) => {
                let n = d.payload.len() as u64;
                match via {
                    Via::Original => stats.rx_original_bytes += n,
                    Via::Stitched => stats.rx_stitched_bytes += n,
                }
                delivers = receiver.receive(d, via, now);
            }
            Ok(Ev::Initiate(p)) => {
                let (sh, conn) = (sh.clone(), conn.clone());
                thread::spawn(move || initiate(sh, conn, p));
            }
            Ok(Ev::Stitched(s, p)) => {
                peer = Some(p);
                control = Some(s);
                sender.switch(now);
                let mut st = conn.st();
                st.match_to_ready_us = st.matched_at.map(|t| t.elapsed().as_micros() as u64);
                drop(st);
                log(
                    &sh,
                    format_args!(
                        "conn {}: UDP flow switched to the stitched path ({p})",
                        conn.id
                    ),
                );
            }
            Ok(Ev::Publish) => publisher.request(),
            Ok(Ev::In(_) | Ev::AppGone) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        sends.extend(sender.tick(now));
        delivers.extend(receiver.tick(now));
        for (via, d) in sends {
            let b = udp::encode(app, &d);
            let n = d.payload.len() as u64;
            match (via, peer, sh.udp_stitch.as_ref()) {
                (Via::Original, _, _) => {
                    stats.tx_original_bytes += n;
                    to_orig(&b);
                }
                (Via::Stitched, Some(p), Some(s)) => {
                    stats.tx_stitched_bytes += n;
                    let _ = s.send_to(&b, p);
                }
                (Via::Stitched, _, _) => {}
            }
        }
        for p in delivers {
            app_bytes += p.len() as u64;
            to_app(&p);
        }
        publisher.tick(&sh, &conn, app_bytes);
        let mut st = conn.st();
        st.phase = if control.is_some() {
            Phase::Stitched
        } else {
            Phase::Original
        };
        st.stats = stats;
        st.stats.duplicates = receiver.stats().below_dropped;
        st.udp = Some(receiver.stats());
    }
}
