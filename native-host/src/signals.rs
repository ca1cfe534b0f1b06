//! The signals that ask a foreground process to stop cleanly: the service checkpoints every download, `sdm get`
//! keeps what it has for the next run.

use std::io;

/// A stop signal, as the process may report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub name: &'static str,
    /// The exit status a shell gives a process this signal killed (128 + its number): what a clean stop exits with.
    pub exit_code: u8,
}

/// SIGTERM, SIGINT and SIGHUP (the terminal of a foreground process went away).
#[cfg(unix)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    /// Watch for the signals from now on: until then each would kill the process.
    pub fn new() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal.
    pub async fn recv(&mut self) -> Stop {
        let (name, number) = tokio::select! {
            _ = self.term.recv() => ("SIGTERM", 15),
            _ = self.int.recv() => ("SIGINT", 2),
            _ = self.hup.recv() => ("SIGHUP", 1),
        };
        Stop {
            name,
            exit_code: 128 + number,
        }
    }
}

/// The console events: Ctrl-C, the console closing, the system shutting down.
#[cfg(windows)]
pub struct Signals {
    ctrl_c: tokio::signal::windows::CtrlC,
    close: tokio::signal::windows::CtrlClose,
    shutdown: tokio::signal::windows::CtrlShutdown,
}

#[cfg(windows)]
impl Signals {
    /// Watch for the events from now on.
    pub fn new() -> io::Result<Signals> {
        use tokio::signal::windows::{ctrl_c, ctrl_close, ctrl_shutdown};
        Ok(Signals {
            ctrl_c: ctrl_c()?,
            close: ctrl_close()?,
            shutdown: ctrl_shutdown()?,
        })
    }

    /// The next event; its exit status is a Unix shell's for the like signal (SIGINT, SIGHUP, SIGTERM).
    pub async fn recv(&mut self) -> Stop {
        let (name, exit_code) = tokio::select! {
            _ = self.ctrl_c.recv() => ("Ctrl-C", 130),
            _ = self.close.recv() => ("console closed", 129),
            _ = self.shutdown.recv() => ("system shutdown", 143),
        };
        Stop { name, exit_code }
    }
}
