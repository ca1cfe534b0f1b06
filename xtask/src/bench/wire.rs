//! A userspace netem, because this kernel has none (no `sch_netem`, no `sch_fq` to honour departure times): two
//! TUN devices joined by a process that holds every packet for a fixed delay and drops a fraction of them at random.
//! Like `netem delay 50ms loss 0.1%` on both ends of a veth pair, including netem's default queue of 1000 packets per
//! direction. The devices keep TCP segmentation offload (`IFF_VNET_HDR`, `TUNSETOFFLOAD`), so a packet is what netem
//! on a veth would see: up to 64 KiB, queued, delayed and lost whole. Without it, 1000 packets of 1500 bytes per
//! 50 ms held the link to 27.6 MiB/s, far below what netem on a veth lets through.
//!
//! The bench runs it as `xtask __wire A B DELAY_MS LOSS_PPM`: it creates both devices, prints `ready`, and forwards
//! until killed. The bench then moves `B` into the server's namespace and gives the two ends their addresses.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// netem's default `limit`: packets held per direction; more are dropped, as a full queue drops them.
pub const QUEUE: usize = 1000;

/// The queue in use: [`QUEUE`], or `$SDM_BENCH_WIRE_QUEUE` to see the same link without that bound on its rate.
pub fn queue() -> usize {
    std::env::var("SDM_BENCH_WIRE_QUEUE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(QUEUE)
}
/// Largest packet the devices hand over: a 64 KiB TCP segmentation-offload packet behind its 10-byte
/// `virtio_net_hdr` (no packet-info header: `IFF_NO_PI`).
const MAX_PACKET: usize = 65_536 + 10;

/// `xtask __wire A B DELAY_MS LOSS_PPM`.
pub fn main(args: &[String]) -> Result<()> {
    let [a, b, delay, loss] = args else {
        bail!("usage: xtask __wire DEV_A DEV_B DELAY_MS LOSS_PER_MILLION");
    };
    let delay = Duration::from_millis(delay.parse().context("DELAY_MS")?);
    let loss: u32 = loss.parse().context("LOSS_PER_MILLION")?;
    let (ta, tb) = (open_tun(a)?, open_tun(b)?);
    let (ra, rb) = (ta.try_clone()?, tb.try_clone()?);
    let ab = std::thread::spawn(move || forward(ra, tb, delay, loss));
    let ba = std::thread::spawn(move || forward(rb, ta, delay, loss));
    println!("ready");
    std::io::stdout().flush()?;
    for t in [ab, ba] {
        t.join()
            .map_err(|_| anyhow::anyhow!("a wire thread panicked"))??;
    }
    Ok(())
}

/// Create TUN device `name` (layer 3, no packet-info header) and attach to it.
fn open_tun(name: &str) -> Result<File> {
    /// `_IOW('T', 202, int)`.
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    if name.len() >= libc::IFNAMSIZ {
        bail!("device name {name:?} too long");
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("cannot open /dev/net/tun")?;
    // struct ifreq: the name, then the flags as a short (the rest of the union unused).
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    ifr[libc::IFNAMSIZ..libc::IFNAMSIZ + 2].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes on Linux), which `ifr` is, and the fd is open.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, ifr.as_mut_ptr()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("TUNSETIFF {name}"));
    }
    /// `_IOW('T', 208, unsigned int)`.
    const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
    let offload = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is an attached TUN device.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            TUNSETOFFLOAD as _,
            offload as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("TUNSETOFFLOAD {name}"));
    }
    Ok(tun)
}

/// Read packets from `from`, and write each to `to` `delay` later, unless it is lost or the queue is full.
fn forward(mut from: File, to: File, delay: Duration, loss_ppm: u32) -> Result<()> {
    let held = Arc::new(AtomicUsize::new(0));
    let limit = queue();
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = {
        let held = held.clone();
        std::thread::spawn(move || deliver(rx, to, &held))
    };
    let mut buf = [0u8; MAX_PACKET + 64];
    loop {
        let n = from.read(&mut buf).context("read from the TUN device")?;
        if fastrand::u32(..1_000_000) < loss_ppm || held.load(Ordering::Relaxed) >= limit {
            continue;
        }
        held.fetch_add(1, Ordering::Relaxed);
        if tx
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("a wire writer panicked"))?
}

/// Write each packet at its time; every packet has the same delay, so arrival order is delivery order.
fn deliver(rx: mpsc::Receiver<(Instant, Vec<u8>)>, mut to: File, held: &AtomicUsize) -> Result<()> {
    for (due, packet) in rx {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // A packet the other side refuses (device going down) is lost, as on a wire.
        let _ = to.write(&packet);
        held.fetch_sub(1, Ordering::Relaxed);
    }
    Ok(())
}
