//! SDM's integration tests: one binary, one module per subject (ripgrep's layout).
//!
//! Every test runs the real engine against `sdm_tests::TestServer` on loopback, in its own temporary folders, under a
//! timeout so a hang fails instead of blocking the run.

// Helpers shared by the modules below: specs with test defaults, timeouts, polling, file checks.
mod support;

// `oneshot::get` against a well-behaved server: segmented, no ranges, no length, small files, redirects, headers.
mod get_basic;
// `oneshot::get` against a failing server: 503/429, cut bodies, stalls, 404/410, lying headers.
mod get_faults;
// A file that changes mid-download (new ETag) is never spliced from two versions.
mod get_validators;
// Hostile Content-Disposition names stay inside the output folder; existing files are never overwritten.
mod get_names;
// Expected sha256 and the bandwidth cap.
mod get_checks;
// The `sdm get` binary interrupted or failed on the network keeps its bytes; the same command goes on from them.
mod get_resume;
// The `Engine` queue: concurrency cap, pause/resume/cancel/remove, live settings.
mod queue;
// A restarted `Engine` resumes an interrupted download from where it stopped.
mod restart;
// Issue 19: update (cap, connections), set_url (same file kept, another refused), move, pause/resume all, clear.
mod queue_ops;
// Issue 18: `add_many`, a batch of adds judged item by item, in the queue at once and written once.
mod queue_batch;
// Browser capture: verified adds, client keys, `find`, names sent on GET only, replies out of order.
mod capture;
// The fault suite's client of a sandboxed service (`sdm_tests::harness`): connect, list, add, wait; a seeded Rng.
mod fault_support;
// Crash loop: SIGKILL of `sdm serve` mid-download, 20 times; the file ends exact, each kill costs at most ~1 s.
mod fault_crash;
// Servers that misbehave on every response, 416 on resume, redirect loops, a file replaced while paused, stalls.
mod fault_servers;
// The real service on a full disk (tmpfs), a deleted download folder, a read-only one.
mod fault_disk;
// Damaged state.json, history.jsonl and settings.json through the real service: set aside, logged, recovered.
mod fault_state;
// Hostile requests through the real relay: schemes, credentials, traversal, device names, numbers out of range.
mod fault_hostile;
// Who may talk: host manifests, 0600/0700, foreign sockets refused, no secrets in logs or across redirects.
mod fault_access;
// Two relays + the CLI with 1,000 commands at once; 200 downloads under random pause/resume/cancel.
mod fault_concurrency;
// Randomized properties of the outward-facing parsers (requests, frames, Content-Range, file names).
mod fault_props;
// Issue 15, credentials: Cookie/Authorization/user headers only to the origin they were given for; bad TLS certificates.
mod fault_origin;
// Issue 15, files: symlinks and races in the download folder and $SDM_HOME; the name rule.
mod fault_files;
// Issue 15, bounds: download folders refused, launcher types opened as folders, size limits, what state keeps.
mod fault_bounds;
