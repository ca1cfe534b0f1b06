//! Damaged state files through the real service: a garbage record, a truncated file, a file of garbage, a damaged
//! history, a damaged id reservation. The service starts, sets the damaged file aside as `<name>.damaged-<time>`,
//! says so in `service.log`, keeps every download it can read, and never hands out an id that is already taken.

use std::path::Path;

use protocol::{Command as Cmd, DownloadId, HistoryResult, PageRequest, Status};
use sdm_tests::harness::Sandbox;
use sdm_tests::{FileSpec, TestServer};

use crate::fault_support::{Connect, add_file, list, wait_info};
use crate::support::bounded;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// What a sandbox held before its files were damaged.
struct Before {
    /// Paused downloads, in id order.
    paused: Vec<DownloadId>,
    /// Completed downloads (in history), in id order.
    completed: Vec<DownloadId>,
}

/// A stopped service with three paused downloads in `state.json` and two finished ones in `history.jsonl`, and the
/// server they come from.
async fn populated() -> (TestServer, Sandbox, Before) {
    let server = TestServer::start().await;
    let mut sdm = Sandbox::new();
    let before = populate(&mut sdm, &server).await;
    (server, sdm, before)
}

/// Fill `sdm` as [`populated`] says.
async fn populate(sdm: &mut Sandbox, server: &TestServer) -> Before {
    let mut client = sdm.start_and_connect().await;
    let mut completed = Vec::new();
    for i in 0..2 {
        let small = server.serve(
            &format!("/small{i}.bin"),
            FileSpec::new(64 * KIB).seed(180 + i),
        );
        let id = add_file(&mut client, &small, None).await;
        let done = wait_info(&mut client, id, 20, "completed", |d| d.status.is_finished()).await;
        assert_eq!(done.status, Status::Completed, "{done:?}");
        completed.push(id);
    }
    let mut paused = Vec::new();
    for i in 0..3 {
        let big = server.serve(
            &format!("/big{i}.bin"),
            FileSpec::new(4 * MIB).seed(190 + i).rate(256 * KIB),
        );
        let id = add_file(&mut client, &big, None).await;
        let _: serde_json::Value = client
            .call(Cmd::Pause { download_id: id })
            .await
            .expect("pause");
        paused.push(id);
    }
    // `remove` of a completed download keeps it in history but takes it off the list, as a user clearing the list.
    for &id in &completed {
        let _: serde_json::Value = client
            .call(Cmd::Remove {
                download_id: id,
                delete_file: false,
            })
            .await
            .expect("remove a completed download from the list");
    }
    drop(client);
    tokio::task::block_in_place(|| sdm.stop());
    Before { paused, completed }
}

/// The names in the data folder that start with `prefix`.
fn aside(data: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(data)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(prefix))
        .collect()
}

async fn history_ids(client: &mut sdm::client::Client) -> Vec<DownloadId> {
    let page: HistoryResult = client
        .call(Cmd::History(PageRequest {
            offset: 0,
            limit: Some(1000),
        }))
        .await
        .expect("history");
    page.items.iter().map(|i| i.id).collect()
}

/// Start the service on damaged files and check what every case shares: it answers, the damaged file is aside, the
/// log says so, and a new download gets an id no earlier download had. Returns the ids listed after the restart.
async fn restart_on_damage(
    sdm: &mut Sandbox,
    before: &Before,
    damaged: &str,
    server: &TestServer,
) -> Vec<DownloadId> {
    let mut client = sdm.start_and_connect().await;
    let _: protocol::PingResult = client.call(Cmd::Ping).await.expect("the service answers");
    let set_aside = aside(&sdm.data(), &format!("{damaged}.damaged-"));
    assert_eq!(set_aside.len(), 1, "{damaged} set aside: {set_aside:?}");
    let log = sdm.service_log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(damaged) && l.contains("damaged")),
        "service.log does not warn about {damaged}:\n{log}"
    );
    let listed: Vec<DownloadId> = list(&mut client).await.iter().map(|d| d.id).collect();
    let new = server.serve("/new.bin", FileSpec::new(KIB).seed(199));
    let id = add_file(&mut client, &new, None).await;
    let taken: Vec<DownloadId> = before
        .paused
        .iter()
        .chain(&before.completed)
        .copied()
        .collect();
    assert!(
        !taken.contains(&id),
        "after {damaged} was damaged, a new download got id {id}, which an earlier download had (ids before: {taken:?})"
    );
    listed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_record_in_the_state_file_costs_only_that_download() {
    bounded(60, async {
        let (server, mut sdm, before) = populated().await;
        let path = sdm.data().join("state.json");
        let mut state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        state["downloads"][1] = serde_json::json!({"id": "not a number", "status": 42});
        std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

        let listed = restart_on_damage(&mut sdm, &before, "state.json", &server).await;
        assert_eq!(listed, vec![before.paused[0], before.paused[2]]);
        let mut client = sdm.client().await;
        for d in list(&mut client)
            .await
            .iter()
            .filter(|d| before.paused.contains(&d.id))
        {
            assert_eq!(d.status, Status::Paused, "{d:?}");
        }
        let history = history_ids(&mut client).await;
        assert!(
            before.completed.iter().all(|id| history.contains(id)),
            "history keeps {:?}: {history:?}",
            before.completed
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_of_garbage_starts_empty_without_reusing_ids() {
    bounded(60, async {
        let (server, mut sdm, before) = populated().await;
        std::fs::write(sdm.data().join("state.json"), b"\0\xff{{{ this is not json").unwrap();

        let listed = restart_on_damage(&mut sdm, &before, "state.json", &server).await;
        assert!(listed.is_empty(), "{listed:?}");
        let mut client = sdm.client().await;
        // The download added after the restart may have finished too, so check the earlier ones are all there.
        let history = history_ids(&mut client).await;
        assert!(
            before.completed.iter().all(|id| history.contains(id)),
            "history is untouched: {history:?} lacks some of {:?}",
            before.completed
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_state_file_keeps_the_downloads_before_the_cut() {
    bounded(60, async {
        let (server, mut sdm, before) = populated().await;
        let path = sdm.data().join("state.json");
        let text = std::fs::read_to_string(&path).unwrap();
        // Cut in the middle of the last download's record: the two before it are whole.
        let last = format!("\"id\":{}", before.paused[2]);
        let cut = text
            .rfind(&last)
            .unwrap_or_else(|| panic!("no {last} in {text}"))
            + last.len()
            + 5;
        std::fs::write(&path, &text[..cut]).unwrap();

        let listed = restart_on_damage(&mut sdm, &before, "state.json", &server).await;
        assert!(
            listed.starts_with(&before.paused[..2]),
            "the downloads recorded whole before the cut were lost: listed {listed:?}, had {:?}",
            before.paused
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_history_keeps_its_good_lines() {
    bounded(60, async {
        let (server, mut sdm, before) = populated().await;
        let path = sdm.data().join("history.jsonl");
        let mut text = std::fs::read(&path).unwrap();
        // A garbage line in the middle, and a last line cut short as by a crash mid-append.
        let first_end = text.iter().position(|&b| b == b'\n').unwrap() + 1;
        text.splice(first_end..first_end, b"\x00\x01garbage{\n".iter().copied());
        text.extend_from_slice(br#"{"id": 99, "url": "http://x/"#);
        std::fs::write(&path, &text).unwrap();

        let listed = restart_on_damage(&mut sdm, &before, "history.jsonl", &server).await;
        assert_eq!(listed, before.paused, "the queue is untouched");
        let mut client = sdm.client().await;
        // The download added after the restart may have finished too: every earlier item must be there, and nothing
        // from the damaged lines.
        let kept = history_ids(&mut client).await;
        assert!(
            before.completed.iter().all(|id| kept.contains(id)),
            "history keeps {:?}: {kept:?}",
            before.completed
        );
        assert!(!kept.contains(&99), "the cut line is not an item: {kept:?}");
        assert!(kept.len() <= before.completed.len() + 1, "{kept:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_settings_fall_back_to_defaults() {
    bounded(60, async {
        let (server, mut sdm, before) = populated().await;
        std::fs::write(
            sdm.data().join("settings.json"),
            b"{\"max_concurrent\": \"many\"",
        )
        .unwrap();

        let listed = restart_on_damage(&mut sdm, &before, "settings.json", &server).await;
        assert_eq!(listed, before.paused, "the queue is untouched");
        let mut client = sdm.client().await;
        let s: protocol::SettingsResult = client.call(Cmd::GetSettings).await.expect("settings");
        assert_eq!(s.settings, protocol::Settings::default());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_ids_file_is_set_aside_and_no_id_is_reused_even_with_the_state_file_lost() {
    bounded(60, async {
        let (server, mut sdm, before) = populated().await;
        // Both records of which ids were handed out are gone: only history still names some of them.
        std::fs::write(sdm.data().join("ids.json"), b"{\"reserved_unt\0\0").unwrap();
        std::fs::write(sdm.data().join("state.json"), b"\0\xffgarbage").unwrap();

        restart_on_damage(&mut sdm, &before, "ids.json", &server).await;
        assert_eq!(aside(&sdm.data(), "state.json.damaged-").len(), 1);
        // A reservation is written afresh before the new download's id was handed out.
        let ids: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sdm.data().join("ids.json")).unwrap()).unwrap();
        let latest = *before.paused.iter().chain(&before.completed).max().unwrap();
        assert!(ids["reserved_until"].as_u64().unwrap() > latest, "{ids}");
    })
    .await;
}
