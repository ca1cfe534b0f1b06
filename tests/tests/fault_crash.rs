//! Crash loop: the real service is SIGKILLed again and again in the middle of an 8-connection download (once while it
//! writes its state), restarted each time, and the file still completes exact, having fetched again at most about
//! one second of transfer per kill.

use std::path::Path;
use std::time::Duration;

use protocol::{DownloadId, Status};
use sdm::engine::state::DownloadRecord;
use sdm_tests::harness::Sandbox;
use sdm_tests::{FileSpec, TestServer};

use crate::fault_support::{Connect, Rng, add_file, info, wait_info};
use crate::support::{assert_exact, bounded, finished_files_in};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The bytes of download `id` that `state.json` records as on disk (what a restart resumes from).
fn durable_progress(data: &Path, id: DownloadId) -> u64 {
    // Killed during the very first write: nothing is on record yet.
    let Ok(text) = std::fs::read(data.join("state.json")) else {
        return 0;
    };
    let state: serde_json::Value =
        serde_json::from_slice(&text).expect("state.json is whole JSON after a kill");
    let rec = state["downloads"]
        .as_array()
        .expect("a downloads array")
        .iter()
        .find(|d| d["id"] == id)
        .cloned()
        .expect("the download is in state.json");
    let rec: DownloadRecord = serde_json::from_value(rec).expect("a download record");
    match rec.status {
        Status::Completed => rec.size.unwrap_or(0),
        _ => rec.plan.map_or(0, |p| p.downloaded()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_mid_download_still_end_exact_and_cost_at_most_a_second_each() {
    const KILLS: usize = 20;
    // Paced by the server, so what it sent is what the service received: 8 connections of 128 KiB/s.
    const PER_CONNECTION: u64 = 128 * KIB;
    const RATE: u64 = 8 * PER_CONNECTION;
    // Checkpoints come at most a second apart; half a second more for the sync and the requests in flight.
    const BUDGET: u64 = RATE + RATE / 2;
    bounded(240, async {
        let mut rng = Rng::from_env("crash loop");
        let server = TestServer::start().await;
        let file = server.serve(
            "/crash.bin",
            FileSpec::new(20 * MIB).seed(0xC4A5).etag().rate(PER_CONNECTION),
        );
        let mut sdm = Sandbox::new();
        let mut client = sdm.start_and_connect().await;
        let id = add_file(&mut client, &file, Some(8)).await;
        drop(client);

        let tmp = sdm.data().join("state.tmp");
        let mut wasted = Vec::new();
        let (mut sent_before, mut durable_before) = (0u64, 0u64);
        let mut caught_a_write = false;
        for kill in 0..KILLS {
            if kill == 0 {
                // The first kill lands while the state file is being written, if the poll catches it: a checkpoint
                // write, once the download is on record (a kill during the very first write is the case of
                // `an_acknowledged_add_survives_a_kill_right_after_the_reply`).
                let state = sdm.data().join("state.json");
                crate::support::until(10, "state.json", || state.exists()).await;
                caught_a_write =
                    tokio::task::block_in_place(|| sdm.kill_when_exists(&tmp, Duration::from_secs(3)));
            } else {
                tokio::time::sleep(Duration::from_millis(rng.range(300, 1800))).await;
                tokio::task::block_in_place(|| sdm.kill());
            }
            // Let the server notice the closed connections before counting what it sent.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let sent = file.bytes_sent();
            let durable = durable_progress(&sdm.data(), id);
            let lost = (sent - sent_before).saturating_sub(durable.saturating_sub(durable_before));
            wasted.push(lost);
            (sent_before, durable_before) = (sent, durable);
            // Whatever the moment of the crash, nothing but the exact file is ever at a final name.
            for name in finished_files_in(&sdm.downloads()) {
                assert_exact(&sdm.downloads().join(name), &file);
            }
            tokio::task::block_in_place(|| sdm.start());
            if durable >= file.len() {
                break;
            }
        }

        let mut client = sdm.client().await;
        let done = wait_info(&mut client, id, 120, "completed", |d| d.status.is_finished()).await;
        assert_eq!(done.status, Status::Completed, "{done:?}");
        assert_exact(Path::new(&done.path), &file);
        assert_eq!(finished_files_in(&sdm.downloads()).len(), 1);
        assert_eq!(info(&mut client, id).await.downloaded, file.len());

        let kills = wasted.len() as u64;
        let mut sorted = wasted.clone();
        sorted.sort_unstable();
        let worst = *sorted.last().unwrap_or(&0);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
        let refetched = file.bytes_sent() - file.len();
        eprintln!(
            "crash loop: {kills} kills (first during a state write: {caught_a_write}), {} KiB fetched again in all, \
             per kill: worst {} KiB, median {} KiB, mean {} KiB; budget {} KiB (1 s at {} KiB/s + 50%); \
             per kill: {:?} KiB",
            refetched / KIB,
            worst / KIB,
            median / KIB,
            refetched / kills.max(1) / KIB,
            BUDGET / KIB,
            RATE / KIB,
            wasted.iter().map(|w| w / KIB).collect::<Vec<_>>()
        );
        assert!(kills >= KILLS as u64 - 2, "only {kills} kills landed before the file was done");
        assert!(
            worst <= BUDGET,
            "a kill cost {} KiB of refetching, over the {} KiB budget",
            worst / KIB,
            BUDGET / KIB
        );
        assert!(refetched / kills.max(1) <= BUDGET);
    })
    .await;
}

/// The browser erases its own copy of a download as soon as `add` is acknowledged, so an acknowledged download must
/// survive a crash that comes right after the acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_add_survives_a_kill_right_after_the_reply() {
    bounded(60, async {
        let server = TestServer::start().await;
        let file = server.serve("/acked.bin", FileSpec::new(MIB).seed(0xAC4).rate(256 * KIB));
        let mut sdm = Sandbox::new();
        let mut client = sdm.start_and_connect().await;
        let id = add_file(&mut client, &file, None).await;
        tokio::task::block_in_place(|| sdm.kill());
        let mut client = sdm.start_and_connect().await;
        let listed = crate::fault_support::list(&mut client).await;
        assert!(
            listed.iter().any(|d| d.id == id),
            "download {id} was acknowledged, then lost in a crash right after: listed {listed:?}"
        );
        let done = wait_info(&mut client, id, 30, "completed", |d| d.status.is_finished()).await;
        assert_exact(Path::new(&done.path), &file);
    })
    .await;
}
