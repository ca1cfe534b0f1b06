//! Issue 15, credentials and TLS. The caller's headers (cookies, `Authorization`, `Proxy-Authorization`, anything
//! the user or the browser gave) go only to the origin they were given for: scheme, host and port. Every request the
//! engine makes is checked (the probe's HEAD and first-byte GET, a verified add's first byte, each ranged GET) on
//! both body paths. `fault_access.rs` covers another host name through the queue; these cover another port and the
//! other scheme on the same host and port. A self-signed, wrong-host or expired certificate fails with an error that
//! names the problem and leaves no file, through `sdm get` and through the service.

use std::path::Path;

use protocol::{AddRequest, Expect, Status};
use sdm_tests::harness::Sandbox;
use sdm_tests::server::{Cert, Request, TlsFront, test_ca_pem};
use sdm_tests::{FileSpec, ServedFile, TestServer};

use crate::fault_support::{Connect, add, wait_info};
use crate::support::{assert_exact, bounded, get, names_in, spec, tempdir, with_engine};

const MIB: u64 = 1024 * 1024;

/// The caller's secrets, as `(lowercase name, value)`: none may reach another origin.
const SECRETS: [(&str, &str); 4] = [
    ("cookie", "sid=C00KIE-53CR3T"),
    ("authorization", "Bearer T0K3N-53CR3T"),
    ("proxy-authorization", "Basic UFIwWFk="),
    ("x-api-key", "K3Y-53CR3T"),
];
/// What a browser sends anywhere: kept on every request.
const USER_AGENT: &str = "Mozilla/5.0 (SDM test)";

/// The headers the tests give: the secrets, a User-Agent, and a Referer from the origin `page_origin`.
fn caller_headers(page_origin: &str) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = SECRETS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    h.push(("User-Agent".into(), USER_AGENT.into()));
    h.push(("Referer".into(), format!("{page_origin}/page.html?t=1")));
    h
}

/// The same as `sdm get` flags.
fn header_flags(page_origin: &str) -> Vec<String> {
    caller_headers(page_origin)
        .into_iter()
        .flat_map(|(k, v)| ["--header".to_string(), format!("{k}: {v}")])
        .collect()
}

/// No request in `requests` carries a secret; each keeps the User-Agent, and a Referer cut to its origin.
fn assert_no_secrets(requests: &[Request], whose: &str, page_origin: &str) {
    assert!(!requests.is_empty(), "{whose} received no request");
    for r in requests {
        for (name, _) in SECRETS {
            assert_eq!(
                r.header(name),
                None,
                "{name} went to {whose}: {} {} {:?}",
                r.method,
                r.path,
                r.range()
            );
        }
        assert_eq!(r.header("user-agent"), Some(USER_AGENT), "{whose}: {r:?}");
        let referer = r.header("referer");
        assert!(
            referer.is_none() || referer == Some(&format!("{page_origin}/")),
            "{whose} got more of the referrer than its origin: {r:?}"
        );
    }
}

/// Every request in `requests` carries every secret, and the whole Referer.
fn assert_all_secrets(requests: &[Request], whose: &str, page_origin: &str) {
    assert!(!requests.is_empty(), "{whose} received no request");
    for r in requests {
        for (name, value) in SECRETS {
            assert_eq!(r.header(name), Some(value), "{whose}: {r:?}");
        }
        let referer = format!("{page_origin}/page.html?t=1");
        assert_eq!(
            r.header("referer"),
            Some(referer.as_str()),
            "{whose}: {r:?}"
        );
    }
}

/// `file`'s requests include the probe (a GET without a range) and at least two ranged GETs for the body.
fn assert_probed_and_ranged(file: &ServedFile) {
    let gets = file.gets();
    assert!(
        gets.iter().any(|r| r.range().is_none()),
        "the probe's GET did not reach the file: {gets:?}"
    );
    let ranged = gets.iter().filter(|r| r.range().is_some()).count();
    assert!(ranged >= 2, "{ranged} ranged GETs: {gets:?}");
}

/// `origin` of `server`: `http://127.0.0.1:<port>`.
fn origin(server: &TestServer) -> String {
    format!("http://{}", server.addr())
}

/// `sdm get` of `a`'s `/r` (a redirect to `file`) over 4 connections on the given body path, with the caller's
/// credentials given for `a`'s origin; the file ends exact, probed and fetched in ranges.
async fn get_through_redirect(a: &TestServer, file: &ServedFile, splice: bool) {
    let dir = tempdir();
    let mut s = spec(&a.url("/r"), dir.path());
    s.threads = 4;
    s.splice = splice;
    s.headers = caller_headers(&origin(a));
    let path = get(s).await.expect("the download succeeds");
    assert_exact(&path, file);
    assert_probed_and_ranged(file);
}

/// The reproduction of the issue: a redirect to another port on the same host. Neither the probe nor any ranged
/// request takes the secrets there, over the splice path or reqwest; the origin got them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_do_not_follow_a_redirect_to_another_port_on_either_body_path() {
    bounded(60, async {
        for splice in [true, false] {
            eprintln!("body path: {}", if splice { "splice" } else { "reqwest" });
            let (a, b) = (TestServer::start().await, TestServer::start().await);
            let file = b.serve("/f.bin", FileSpec::new(4 * MIB).seed(151).etag());
            a.redirect("/r", file.url());
            get_through_redirect(&a, &file, splice).await;
            assert_no_secrets(&b.requests(), "the other port", &origin(&a));
            assert_all_secrets(&a.requests(), "the origin", &origin(&a));
        }
    })
    .await;
}

/// A server that refuses HEAD is probed as any other (the probe sends none), and the probe's GET follows the redirect
/// without the secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_without_head_keeps_the_credentials_to_their_origin() {
    bounded(30, async {
        let (a, b) = (TestServer::start().await, TestServer::start().await);
        let file = b.serve("/f.bin", FileSpec::new(2 * MIB).seed(152).no_head());
        a.redirect("/r", file.url());
        let dir = tempdir();
        let mut s = spec(&a.url("/r"), &dir.path().join("named.bin"));
        s.threads = 2;
        s.headers = caller_headers(&origin(&a));

        let path = get(s).await.expect("the download succeeds");

        assert_exact(&path, &file);
        let requests = file.requests();
        assert!(
            requests.iter().all(|r| r.method == "GET") && requests[0].range().is_none(),
            "the probe's GET did not reach the file first: {requests:?}"
        );
        assert_no_secrets(&b.requests(), "the other port", &origin(&a));
        assert_all_secrets(&a.requests(), "the origin", &origin(&a));
    })
    .await;
}

/// The control: a redirect within the origin keeps every header, on both body paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_within_the_origin_keeps_the_credentials() {
    bounded(60, async {
        for splice in [true, false] {
            eprintln!("body path: {}", if splice { "splice" } else { "reqwest" });
            let a = TestServer::start().await;
            let file = a.serve("/f.bin", FileSpec::new(4 * MIB).seed(153).etag());
            a.redirect("/r", "/f.bin");
            get_through_redirect(&a, &file, splice).await;
            assert_all_secrets(&a.requests(), "the origin", &origin(&a));
        }
    })
    .await;
}

/// A captured download (a verified add through the engine's queue) redirected to another port: the first-byte check
/// and the download's own requests leave the browser's cookies and credentials at the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_add_keeps_the_credentials_to_their_origin() {
    with_engine(60, async |_, engine| {
        let (a, b) = (TestServer::start().await, TestServer::start().await);
        let file = b.serve("/f.bin", FileSpec::new(3 * MIB).seed(154).etag());
        a.redirect("/r", file.url());
        let mut headers: std::collections::BTreeMap<String, String> = SECRETS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        headers.insert("User-Agent".into(), USER_AGENT.into());
        let req = AddRequest {
            url: a.url("/r"),
            headers,
            client_key: Some("origin-1".into()),
            expect: Some(Expect {
                size: Some(file.len()),
                mime: None,
            }),
            threads: Some(4),
            ..AddRequest::default()
        };

        let added = engine.add_verified(req).await.expect("the add is verified");
        let done = crate::support::complete_exact(engine, added.id, &file).await;

        assert_eq!(done.status, Status::Completed, "{done:?}");
        let first = b.requests();
        assert_eq!(
            first.first().map(|r| r.range()),
            Some(Some((0, Some(0)))),
            "the verification GET came first: {first:?}"
        );
        assert!(
            file.gets()
                .iter()
                .filter(|r| r.range_start() > Some(0))
                .count()
                >= 1,
            "no ranged GET: {:?}",
            file.gets()
        );
        for r in &first {
            for (name, _) in SECRETS {
                assert_eq!(r.header(name), None, "{name} went to the other port: {r:?}");
            }
        }
        for r in a.requests() {
            for (name, value) in SECRETS {
                assert_eq!(r.header(name), Some(value), "the origin: {r:?}");
            }
        }
    })
    .await;
}

/// A sandbox whose `sdm` trusts the test CA and nothing else (`SSL_CERT_FILE`; an empty `SSL_CERT_DIR` hides one
/// the machine may set), and a fresh output folder in it.
fn tls_sandbox() -> (Sandbox, std::path::PathBuf) {
    let mut sdm = Sandbox::new();
    let ca = sdm.root.path().join("test-ca.pem");
    std::fs::write(&ca, test_ca_pem()).expect("write the test CA");
    sdm.env("SSL_CERT_FILE", &ca.to_string_lossy());
    sdm.env("SSL_CERT_DIR", "");
    let out = sdm.root.path().join("out");
    std::fs::create_dir_all(&out).expect("create the output folder");
    (sdm, out)
}

/// `sdm get URL -o OUT` with the test headers (given for `page_origin`) and `extra` flags; its exit and stderr.
fn sdm_get(
    sdm: &Sandbox,
    url: &str,
    out: &Path,
    page_origin: &str,
    extra: &[&str],
) -> (bool, String) {
    let mut args = vec!["get".to_string(), url.to_string(), "-o".into()];
    args.push(out.to_string_lossy().into_owned());
    args.extend(header_flags(page_origin));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = tokio::task::block_in_place(|| sdm.run(&args));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A redirect between http and https on the same host and port changes the origin: https → http (where the
/// ranged bodies go over the splice path, in clear) and http → https both leave the secrets behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_do_not_follow_a_redirect_to_the_other_scheme() {
    bounded(60, async {
        let (sdm, out) = tls_sandbox();
        let server = TestServer::start().await;
        let front = TlsFront::start(&server, Cert::Good).await;
        let port = front.addr().port();
        let cases = [
            (
                "https",
                "/to-http",
                format!("http://127.0.0.1:{port}/plain.bin"),
                155,
            ),
            (
                "http",
                "/to-https",
                format!("https://127.0.0.1:{port}/tls.bin"),
                156,
            ),
        ];
        for (scheme, from, to, seed) in cases {
            eprintln!("from {scheme}");
            let target = to.rsplit_once('/').map(|(_, p)| format!("/{p}")).unwrap();
            let file = server.serve(&target, FileSpec::new(4 * MIB).seed(seed).etag());
            server.redirect(from, &to);
            let page_origin = format!("{scheme}://127.0.0.1:{port}");
            let url = format!("{page_origin}{from}");

            let (ok, err) = sdm_get(&sdm, &url, &out, &page_origin, &["-c", "4"]);

            assert!(ok, "sdm get {url} failed: {err}");
            assert_exact(&out.join(&target[1..]), &file);
            assert_probed_and_ranged(&file);
            let from_requests: Vec<Request> = server
                .requests()
                .into_iter()
                .filter(|r| r.path == from)
                .collect();
            assert_all_secrets(&from_requests, "the origin", &page_origin);
            // An https referrer is not sent to http at all.
            let referer_origin = if scheme == "https" {
                "(none)"
            } else {
                &page_origin
            };
            assert_no_secrets(&file.requests(), "the other scheme", referer_origin);
        }
    })
    .await;
}

/// The certificate problems the issue names, and the words the error must use for each.
const BAD_CERTS: [(Cert, &str); 3] = [
    (Cert::SelfSigned, "self-signed"),
    (Cert::WrongHost, "another host name"),
    (Cert::Expired, "has expired"),
];

/// `sdm get` from a server with a bad certificate fails at once, says what is wrong with the certificate, leaves no
/// file (nor `.part`), and sends the server no request. The same server with a good certificate works (so the
/// failures are the certificates').
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdm_get_refuses_a_bad_certificate_clearly_and_leaves_no_file() {
    bounded(90, async {
        let (sdm, out) = tls_sandbox();
        let server = TestServer::start().await;
        let file = server.serve("/f.bin", FileSpec::new(2 * MIB).seed(157));
        for (cert, words) in BAD_CERTS {
            let front = TlsFront::start(&server, cert).await;

            let (ok, err) = sdm_get(&sdm, &front.url("/f.bin"), &out, "https://a.example", &[]);

            assert!(!ok, "{cert:?}: sdm get succeeded");
            assert!(
                err.contains("certificate") && err.contains(words),
                "{cert:?}: the error does not say `{words}`: {err}"
            );
            assert_eq!(names_in(&out), Vec::<String>::new(), "{cert:?} left files");
            assert!(
                server.requests().is_empty(),
                "{cert:?}: a request got through"
            );
        }
        let good = TlsFront::start(&server, Cert::Good).await;
        let (ok, err) = sdm_get(&sdm, &good.url("/f.bin"), &out, "https://a.example", &[]);
        assert!(ok, "a good certificate fails: {err}");
        assert_exact(&out.join("f.bin"), &file);
    })
    .await;
}

/// The same through the service's queue: each download fails with the certificate's problem and no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_refuses_a_bad_certificate_clearly_and_leaves_no_file() {
    bounded(90, async {
        let (mut sdm, _) = tls_sandbox();
        let server = TestServer::start().await;
        server.serve("/f.bin", FileSpec::new(2 * MIB).seed(158));
        let mut client = sdm.start_and_connect().await;
        let mut fronts = Vec::new();
        for (cert, words) in BAD_CERTS {
            let front = TlsFront::start(&server, cert).await;
            let id = add(
                &mut client,
                AddRequest {
                    url: front.url("/f.bin"),
                    ..AddRequest::default()
                },
            )
            .await;
            fronts.push((front, cert, words, id));
        }
        for (_, cert, words, id) in &fronts {
            let d = wait_info(&mut client, *id, 60, "failed", |d| d.status.is_finished()).await;
            assert_eq!(d.status, Status::Failed, "{cert:?}: {d:?}");
            let error = d.error.unwrap_or_default();
            assert!(
                error.contains("certificate") && error.contains(words),
                "{cert:?}: the error does not say `{words}`: {error}"
            );
        }
        let left = std::fs::read_dir(sdm.downloads()).map_or(0, |d| d.count());
        assert_eq!(left, 0, "files left in the download folder");
        assert!(server.requests().is_empty(), "a request got through");
    })
    .await;
}
