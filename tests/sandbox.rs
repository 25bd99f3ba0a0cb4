//! The sandbox: one fixture per denied permission or fault, each beside a well-behaved
//! plugin that must receive every row exactly once while the other misbehaves.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use telemetry_host::capabilities::outgoing_http::Transport;
use telemetry_host::capabilities::secrets::Secrets;
use telemetry_suite::{PluginSpec, TestHost, recorder_manifest, test_config, wait_until};
use telemetry_testkit::fixture;

const ROWS: u64 = 200;
const WAIT: Duration = Duration::from_secs(30);

fn misbehaving(manifest: &str) -> PluginSpec {
    PluginSpec::new("bad", fixture("misbehaving"), manifest)
}

fn good() -> PluginSpec {
    PluginSpec::new("good", fixture("misbehaving"), &recorder_manifest("good"))
}

/// Feeds the rows in several updates and checks the good plugin got each exactly once.
fn feed_and_check_good(host: &mut TestHost) {
    for _ in 0..4 {
        host.feed(ROWS / 4);
    }
    assert!(host.wait_for_cursor("good", ROWS, WAIT), "the good plugin fell behind");
    host.stop();
    assert_eq!(host.recorded_rows("good"), (0..ROWS).collect::<Vec<_>>(), "the good plugin must get every row exactly once");
}

#[test]
fn reading_outside_the_granted_directory_is_denied() {
    let mut host = TestHost::start(&[
        misbehaving(
            "[grants]\ndata_dir = { path = \"bad\" }\noutbound = [{ url = \"http://127.0.0.1:9\" }]\n[config]\nfault = \"read-outside\"\n",
        ),
        good(),
    ]);
    std::fs::write(host.data_dir().join("secret.txt"), "top secret").unwrap();
    feed_and_check_good(&mut host);
    let log = host.log_text("bad");
    assert!(log.contains("read-outside denied: /etc/passwd"), "{log}");
    assert!(log.contains("read-outside denied: /data/../../etc/passwd"), "{log}");
    assert!(!log.contains("allowed"), "{log}");
}

#[test]
fn writing_to_a_read_only_directory_is_denied() {
    let root = tempfile::tempdir().unwrap();
    let config = test_config(root.path());
    // A read-only directory must exist already: the host does not create it.
    std::fs::create_dir_all(config.runtime.data_dir.join("bad")).unwrap();
    let plugins = [
        misbehaving(
            "[grants]\ndata_dir = { path = \"bad\", access = \"read-only\" }\noutbound = [{ url = \"http://127.0.0.1:9\" }]\n[config]\nfault = \"write-readonly\"\n",
        ),
        good(),
    ];
    let mut host = TestHost::start_with(root, config, &plugins, Transport::network().unwrap(), Secrets::default());
    assert!(host.load_errors.is_empty(), "{:?}", host.load_errors);
    feed_and_check_good(&mut host);
    let log = host.log_text("bad");
    assert!(log.contains("write-readonly denied:"), "{log}");
    assert!(!host.data_dir().join("bad").join("written.txt").exists());
}

#[test]
fn calling_an_ungranted_host_is_refused_with_a_clear_error() {
    let manifest = "[grants]\ndata_dir = { path = \"bad\" }\noutbound = [{ url = \"https://api.wandb.ai\" }]\n[config]\nfault = \"call-ungranted\"\nurl = \"https://evil.example.com/steal\"\n";
    let mut host = TestHost::start(&[misbehaving(manifest), good()]);
    feed_and_check_good(&mut host);
    let log = host.log_text("bad");
    assert!(
        log.contains("call-ungranted denied: SendError::Denied(\"plugin `bad` may not call https://evil.example.com:443: its manifest grants only https://api.wandb.ai\")"),
        "{log}"
    );
}

#[test]
fn a_plugin_looping_forever_is_stopped_by_its_time_limit() {
    let manifest = "[grants]\ndata_dir = { path = \"bad\" }\noutbound = [{ url = \"http://127.0.0.1:9\" }]\n[limits]\ncall_timeout_ms = 100\n[config]\nfault = \"loop\"\n";
    let mut host = TestHost::start(&[misbehaving(manifest), good()]);
    let bad = host.stats("bad");
    feed_and_check_good(&mut host);
    assert!(bad.traps.load(Ordering::Relaxed) >= 1);
    let failure = bad.last_failure.lock().unwrap().clone().unwrap_or_default();
    assert!(failure.contains("exceeded its call time limit of 100 ms"), "{failure}");
}

#[test]
fn a_plugin_allocating_without_bound_hits_its_memory_cap() {
    let manifest = "[grants]\ndata_dir = { path = \"bad\" }\noutbound = [{ url = \"http://127.0.0.1:9\" }]\n[limits]\nmemory_mb = 32\n[config]\nfault = \"alloc\"\n";
    let mut host = TestHost::start(&[misbehaving(manifest), good()]);
    let bad = host.stats("bad");
    feed_and_check_good(&mut host);
    assert!(bad.traps.load(Ordering::Relaxed) >= 1);
    let failure = bad.last_failure.lock().unwrap().clone().unwrap_or_default();
    assert!(failure.contains("ran out of memory (limit 32 MiB)"), "{failure}");
}

#[test]
fn a_plugin_opening_files_without_bound_runs_out_of_its_own_handles_not_the_hosts() {
    let manifest = "[grants]\ndata_dir = { path = \"bad\" }\noutbound = [{ url = \"http://127.0.0.1:9\" }]\n[limits]\nhandles = 64\n[config]\nfault = \"open-files\"\n";
    let mut host = TestHost::start(&[misbehaving(manifest), good()]);
    let bad = host.stats("bad");
    feed_and_check_good(&mut host);
    assert!(bad.traps.load(Ordering::Relaxed) >= 1, "{}", host.log_text("bad"));
    let failure = bad.last_failure.lock().unwrap().clone().unwrap_or_default();
    assert!(failure.contains("ran out of handles (limit 64 open files, streams and pollables at once: limits.handles)"), "{failure}");
}

#[test]
fn a_plugin_filling_its_data_directory_is_stopped_at_its_disk_limit_with_a_full_disk_error() {
    let manifest = "[grants]\ndata_dir = { path = \"bad\" }\noutbound = [{ url = \"http://127.0.0.1:9\" }]\n[limits]\ndisk_mb = 2\n[config]\nfault = \"fill-disk\"\n";
    let mut host = TestHost::start(&[misbehaving(manifest), good()]);
    let bad = host.stats("bad");
    for _ in 0..4 {
        host.feed(ROWS / 4);
    }
    assert!(host.wait_for_cursor("good", ROWS, WAIT), "the good plugin fell behind");
    assert!(
        wait_until(WAIT, || host.log_text("bad").contains("fill-disk files refused")),
        "the plugin never ran into its limit: {}",
        host.log_text("bad")
    );
    let quota = bad.disk_quota.clone().expect("a writable data directory has an allowance");
    let used = quota.used_bytes();
    host.stop();
    assert_eq!(host.recorded_rows("good"), (0..ROWS).collect::<Vec<_>>(), "the good plugin must get every row exactly once");
    let log = host.log_text("bad");
    assert!(log.contains("No space left on device"), "the plugin sees a full disk: {log}");
    assert!(!log.contains("unrefused"), "{log}");
    let bytes: usize = log
        .lines()
        .find_map(|line| line.split("fill-disk bytes refused after ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no byte count: {log}"));
    assert!((1 << 20..=2 << 20).contains(&bytes), "appended {bytes} bytes under a 2 MiB limit");
    let files: usize = log
        .lines()
        .find_map(|line| line.split("fill-disk files refused after ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no file count: {log}"));
    assert!((256..=512).contains(&files), "made {files} empty files under a 2 MiB limit (4 KiB each)");
    assert!(quota.refused() >= 2, "{}", quota.refused());
    assert!(used <= 2 << 20, "{used} bytes counted past the limit");
    let on_disk: u64 = std::fs::read_dir(host.data_dir().join("bad")).unwrap().map(|entry| entry.unwrap().metadata().unwrap().len()).sum();
    assert!(on_disk <= 2 << 20, "{on_disk} bytes on disk past the 2 MiB limit");
}

#[test]
fn a_secret_echoed_by_a_granted_server_never_reaches_the_host_log() {
    const KEY: &str = "local-key-0123456789abcdef";
    // A granted server that answers with the request's headers, as httpbin does.
    let upstream = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = upstream.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let upstream_url = format!("http://{}", listener.local_addr().unwrap());
    upstream.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0u8; 8192];
                let read = socket.read(&mut request).await?;
                let echoed = String::from_utf8_lossy(&request[..read]).replace("\r\n", " | ");
                let body = format!("key={KEY}; you sent {echoed}");
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                socket.write_all(head.as_bytes()).await?;
                socket.write_all(body.as_bytes()).await
            });
        }
    });
    let root = tempfile::tempdir().unwrap();
    let config = test_config(root.path());
    let manifest = format!(
        "[grants]\ndata_dir = {{ path = \"bad\" }}\n[[grants.outbound]]\nurl = {upstream_url:?}\ncredential = {{ secret = \"echo_key\", scheme = \"basic\", username = \"api\" }}\n[config]\nfault = \"fetch\"\nonce = true\nurl = \"{upstream_url}/anything\"\n"
    );
    let secrets = Secrets::from_values([("echo_key".to_string(), KEY.to_string())]);
    let mut host = TestHost::start_with(root, config, &[misbehaving(&manifest), good()], Transport::network().unwrap(), secrets);
    feed_and_check_good(&mut host);
    let log = host.log_text("bad");
    assert!(log.contains("fetch: status 200"), "the request went out: {log}");
    assert!(log.contains("authorization: Basic [secret echo_key]"), "the echoed header is hidden: {log}");
    assert!(log.contains("key=[secret echo_key]"), "the echoed value is hidden: {log}");
    assert!(log.contains("fetch on stderr: key=[secret echo_key]; you sent"), "stderr went through the same scrubbing: {log}");
    let token = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("api:{KEY}"));
    assert!(!log.contains(KEY) && !log.contains(&token), "a secret reached the log: {log}");
}

#[test]
fn a_response_larger_than_the_plugin_may_receive_is_refused_without_being_read_whole() {
    // A granted server that streams 1 GiB.
    let upstream = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = upstream.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let upstream_url = format!("http://{}", listener.local_addr().unwrap());
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    upstream.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 1u64 << 30);
                socket.write_all(head.as_bytes()).await?;
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..1024 {
                    socket.write_all(&chunk).await?;
                    counter.fetch_add(1 << 20, Ordering::Relaxed);
                }
                Ok::<_, std::io::Error>(())
            });
        }
    });
    let manifest = format!(
        "[grants]\ndata_dir = {{ path = \"bad\" }}\noutbound = [{{ url = {upstream_url:?} }}]\n[limits]\nmemory_mb = 32\ncall_timeout_ms = 30000\n[config]\nfault = \"fetch\"\nonce = true\nurl = \"{upstream_url}/huge\"\n"
    );
    let mut host = TestHost::start(&[misbehaving(&manifest), good()]);
    feed_and_check_good(&mut host);
    let log = host.log_text("bad");
    assert!(
        log.contains("fetch failed: SendError::Connection(\"the response body is larger than 16777216 bytes, the most this plugin may receive (half its limits.memory_mb); the rest was not read\")"),
        "{log}"
    );
    // Read in pieces and dropped at the limit: the server sent little more than it (what the
    // socket buffers hold), far from the gigabyte.
    let streamed = sent.load(Ordering::Relaxed);
    assert!(streamed < 64 << 20, "the host read {streamed} bytes of a 1 GiB answer");
}

/// A plugin that traps once in `call` is restarted and then gets every row exactly once.
fn traps_once_then_recovers(call: &str) {
    let manifest = format!(
        "[grants]\ndata_dir = {{ path = \"bad\" }}\noutbound = [{{ url = \"http://127.0.0.1:9\" }}]\n[config]\nfault = \"trap-{call}\"\nonce = true\n"
    );
    let mut host = TestHost::start(&[misbehaving(&manifest), good()]);
    let bad = host.stats("bad");
    for _ in 0..4 {
        host.feed(ROWS / 4);
    }
    assert!(host.wait_for_cursor("good", ROWS, WAIT));
    assert!(host.wait_for_cursor("bad", ROWS, WAIT), "the restarted plugin must catch up");
    let failure = bad.last_failure.lock().unwrap().clone().unwrap_or_default();
    assert!(failure.contains(&format!("{call}: trapped: unreachable code, usually a panic")), "{failure}");
    assert_eq!(bad.restarts.load(Ordering::Relaxed), 1);
    host.stop();
    assert_eq!(host.recorded_rows("good"), (0..ROWS).collect::<Vec<_>>());
    assert_eq!(host.recorded_rows("bad"), (0..ROWS).collect::<Vec<_>>(), "after its restart the plugin gets the rows it missed, once");
}

#[test]
fn a_trap_in_start_restarts_the_plugin_from_its_cursor() {
    traps_once_then_recovers("start");
}

#[test]
fn a_trap_in_update_restarts_the_plugin_from_its_cursor() {
    traps_once_then_recovers("update");
}

#[test]
fn a_trap_in_stop_is_reported_and_the_others_still_stop_cleanly() {
    let manifest =
        "[grants]\ndata_dir = { path = \"bad\" }\noutbound = [{ url = \"http://127.0.0.1:9\" }]\n[config]\nfault = \"trap-stop\"\n";
    let mut host = TestHost::start(&[misbehaving(manifest), good()]);
    let bad = host.stats("bad");
    feed_and_check_good(&mut host);
    let failure = bad.last_failure.lock().unwrap().clone().unwrap_or_default();
    assert!(failure.starts_with("stop: trapped: unreachable code"), "{failure}");
    assert_eq!(host.recorded_rows("bad"), (0..ROWS).collect::<Vec<_>>(), "rows before the failing stop were all delivered");
    assert!(host.log_text("good").contains("stopped"));
}

#[test]
fn a_plugin_that_always_traps_never_slows_the_others() {
    let manifest =
        "[grants]\ndata_dir = { path = \"bad\" }\noutbound = [{ url = \"http://127.0.0.1:9\" }]\n[config]\nfault = \"trap-update\"\n";
    let mut host = TestHost::start(&[misbehaving(manifest), good()]);
    let bad = host.stats("bad");
    for _ in 0..4 {
        host.feed(ROWS / 4);
    }
    assert!(host.wait_for_cursor("good", ROWS, WAIT), "the good plugin fell behind");
    assert!(wait_until(WAIT, || bad.restarts.load(Ordering::Relaxed) >= 2), "it keeps being restarted with backoff");
    assert_eq!(bad.cursor.load(Ordering::Relaxed), 0, "a batch that always traps is never counted as delivered");
    host.stop();
    assert_eq!(host.recorded_rows("good"), (0..ROWS).collect::<Vec<_>>());
}

/// An HTTP plugin (named `server`) served beside the good plugin, with `own_route` as a
/// route of the host's own, on two workers as the host has on this machine.
struct ServedPool {
    host: TestHost,
    runtime: tokio::runtime::Runtime,
    servers: Vec<telemetry_host::capabilities::http_server::BoundServer>,
    base: String,
}

/// The `trapping-server` fixture served at `/t` with `limits`.
fn serve_trapping_pool(limits: &str, own_route: Option<axum::Router>) -> ServedPool {
    let manifest = format!("[grants]\nlisten = {{ prefix = \"/t\" }}\n[limits]\n{limits}");
    serve_pool(PluginSpec::new("server", fixture("trapping-server"), &manifest), own_route)
}

fn serve_pool(server: PluginSpec, own_route: Option<axum::Router>) -> ServedPool {
    let host = TestHost::start(&[server, good()]);
    assert!(host.load_errors.is_empty(), "{:?}", host.load_errors);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let servers =
        runtime.block_on(telemetry_host::capabilities::http_server::serve("127.0.0.1:0", host.plugins(), 1 << 20, own_route)).unwrap();
    let base = format!("http://{}", servers[0].address);
    ServedPool { host, runtime, servers, base }
}

impl ServedPool {
    /// Stops the servers; the good plugin still gets every row exactly once.
    fn finish(mut self) {
        self.runtime.block_on(async {
            for server in self.servers {
                server.shutdown().await;
            }
        });
        feed_and_check_good(&mut self.host);
    }
}

#[test]
fn a_pooled_handler_running_to_its_time_limit_holds_up_no_other_request() {
    let own_route = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    let served = serve_trapping_pool("http_instances = 2\ncall_timeout_ms = 2000\n", Some(own_route));
    let base = &served.base;
    // Both workers busy with a spin each.
    let (spins, ping, ping_time) = served.runtime.block_on(async {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let spins: Vec<_> = (0..2)
            .map(|_| {
                let request = client.get(format!("{base}/t/spin"));
                tokio::spawn(async move {
                    let response = request.send().await.unwrap();
                    (response.status().as_u16(), response.text().await.unwrap(), started.elapsed())
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = Instant::now();
        let ping = client.get(format!("{base}/ping")).send().await.unwrap().text().await.unwrap();
        let ping_time = asked.elapsed();
        let mut answers = Vec::new();
        for spin in spins {
            answers.push(spin.await.unwrap());
        }
        (answers, ping, ping_time)
    });
    assert_eq!(ping, "pong");
    // Each instance yields at every epoch tick (5 ms) and lets the worker poll for I/O.
    assert!(ping_time < Duration::from_millis(250), "the host's own route waited {ping_time:?} behind two spinning handlers");
    for (status, text, elapsed) in &spins {
        assert_eq!(*status, 503, "{text}");
        assert!(text.contains("exceeded its call time limit of 2000 ms"), "{text}");
        // Side by side, not one after the other: each instance yields to the workers.
        assert!(*elapsed >= Duration::from_millis(2000) && *elapsed < Duration::from_millis(3500), "stopped after {elapsed:?}");
    }
    let stats = served.host.stats("server");
    assert_eq!((stats.traps.load(Ordering::Relaxed), stats.restarts.load(Ordering::Relaxed)), (2, 2));
    served.finish();
}

#[test]
fn a_pooled_handler_calls_out_through_the_host_without_holding_up_the_server() {
    // An upstream that takes its time, on a runtime of its own.
    let upstream = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = upstream.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let upstream_url = format!("http://{}", listener.local_addr().unwrap());
    let slow = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            "fetched upstream"
        }),
    );
    upstream.spawn(async move { axum::serve(listener, slow).await });
    let manifest =
        format!("[grants]\nlisten = {{ prefix = \"/p\" }}\noutbound = [{{ url = {upstream_url:?} }}]\n[limits]\nhttp_instances = 2\n");
    let own_route = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    let served = serve_pool(PluginSpec::new("server", fixture("proxy-server"), &manifest), Some(own_route));
    let base = &served.base;
    let (fetches, denied, ping_time) = served.runtime.block_on(async {
        let client = reqwest::Client::new();
        let fetch = |url: String| {
            let request = client.post(format!("{base}/p/fetch")).body(url);
            async move {
                let response = request.send().await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            }
        };
        // Both instances waiting on the upstream, more requests queued behind them.
        let fetches: Vec<_> = (0..4).map(|_| tokio::spawn(fetch(format!("{upstream_url}/slow")))).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let asked = Instant::now();
        assert_eq!(client.get(format!("{base}/ping")).send().await.unwrap().text().await.unwrap(), "pong");
        let ping_time = asked.elapsed();
        let mut answers = Vec::new();
        for fetch in fetches {
            answers.push(fetch.await.unwrap());
        }
        (answers, fetch("http://127.0.0.1:9/elsewhere".into()).await, ping_time)
    });
    // The workers stay free for other requests while instances wait on the network.
    assert!(ping_time < Duration::from_millis(250), "the host's own route waited {ping_time:?} behind two outgoing calls");
    for (status, body) in &fetches {
        assert_eq!((*status, body.as_str()), (200, "fetched upstream"));
    }
    assert_eq!(denied.0, 502, "{}", denied.1);
    assert!(denied.1.contains("Denied") && denied.1.contains("127.0.0.1:9"), "{}", denied.1);
    served.finish();
}

#[test]
fn a_trapping_handler_instance_is_replaced_while_its_pool_keeps_answering() {
    let served = serve_trapping_pool("http_instances = 2\n", None);
    let base = format!("{}/t", served.base);
    let (trapped, answers) = served.runtime.block_on(async {
        let client = reqwest::Client::new();
        let get = |path: &str| {
            let request = client.get(format!("{base}{path}"));
            async move {
                let response = request.send().await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            }
        };
        let trapped = get("/trap").await;
        let mut answers = Vec::new();
        for _ in 0..20 {
            answers.push(get("/").await);
        }
        (trapped, answers)
    });
    assert_eq!(trapped.0, 503, "a trap is answered 503: {}", trapped.1);
    assert!(trapped.1.contains("plugin `server` failed"), "{}", trapped.1);
    assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
    let stats = served.host.stats("server");
    assert_eq!((stats.traps.load(Ordering::Relaxed), stats.restarts.load(Ordering::Relaxed)), (1, 1));
    served.finish();
}
