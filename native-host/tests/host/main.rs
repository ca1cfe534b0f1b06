//! Integration tests of the `sdm` binary: the real executable, over real pipes and a real socket, each test in a
//! temporary `SDM_HOME` whose service is killed when the test ends.

// The relay: native messaging frames in and out, service start-up, the 1 MiB cap, malformed input.
mod relay;
// `sdm serve`: one per data directory, permissions, stale sockets, signals.
mod service;
// The command-line faces: install, get, add/wait/ls, settings, argument checks.
mod cli;
// `sdm add -i` (URL lists in batches that fit in frames) and `sdm wait` with no id.
mod batch;
// The shared sandbox (`sdm_tests::harness`) on the binary cargo built for these tests, and a tiny HTTP server.
mod support;
// `sdm install` / `status` / `stop` / `uninstall` in a temporary HOME, the version handshake, the dist packages.
mod install;
