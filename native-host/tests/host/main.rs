//! Integration tests of the `sdm` binary: the real executable, over real pipes and a real socket, each test in a
//! temporary `SDM_HOME` whose service is stopped when the test ends.

// The relay: native messaging frames in and out, service start-up, the 1 MiB cap, malformed input.
mod relay;
// `sdm serve`: one per data directory, permissions, stale sockets, signals.
mod service;
// The command-line faces: install, get, add/wait/ls, settings, argument checks.
mod cli;
// Sandboxes, a relay driver, a tiny HTTP server.
mod support;
