//! Runs the real `qa-serve` binary on a free loopback port with the base all-MiniLM-L6-v2
//! (`make model`; untrained QA head, seeded) and checks it against the real `qa-infer`
//! binary, its limits, its shutdown, and huggingface_hub's client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_qa-serve");

const SUPER_BOWL: &str = "Super Bowl 50 was an American football game to determine the champion of the National Football League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, California.";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_dir() -> PathBuf {
    let dir = root().join("data/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run `make model`",
        dir.display()
    );
    dir
}

/// A running server; killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .arg("--model")
            .arg(model_dir())
            .args(["--addr", "127.0.0.1:0", "--threads", "2"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("qa-serve: listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no listening line: {}", log.lock().unwrap()));
        let server = Server { child, url, log };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if get(&format!("{}/health", self.url)).0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("never healthy: {}", self.log());
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn answer(&self, body: &Value) -> (u16, Value) {
        let (status, text, _) = send(&format!("{}/", self.url), &body.to_string(), None);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
}

fn reply(result: Result<ureq::Response, ureq::Error>) -> (u16, String, Option<String>) {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let retry = response.header("Retry-After").map(str::to_string);
    (response.status(), response.into_string().unwrap(), retry)
}

fn get(url: &str) -> (u16, String, Option<String>) {
    match agent().get(url).call() {
        Err(ureq::Error::Transport(_)) => (0, String::new(), None),
        other => reply(other),
    }
}

fn send(url: &str, body: &str, key: Option<&str>) -> (u16, String, Option<String>) {
    let mut request = agent().post(url).set("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.set("Authorization", &format!("Bearer {key}"));
    }
    reply(request.send_string(body))
}

fn query(question: &str, context: &str) -> Value {
    json!({"inputs": {"question": question, "context": context}})
}

/// The first `n` dev-v1.1 questions of the mirror (`SQUAD_MIRROR`, set by `.ci/run`), or
/// None, saying so.
fn dev_questions(n: usize) -> Option<Vec<(String, String)>> {
    let Some(dir) = std::env::var_os("SQUAD_MIRROR") else {
        eprintln!("SQUAD_MIRROR is not set: skipping the 100 dev questions against qa-infer");
        return None;
    };
    let path = root().join(dir).join("dev-v1.1.json.gz");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let squad: Value = serde_json::from_reader(flate2::read::GzDecoder::new(file)).unwrap();
    let mut out = Vec::new();
    for article in squad["data"].as_array().unwrap() {
        for paragraph in article["paragraphs"].as_array().unwrap() {
            for qa in paragraph["qas"].as_array().unwrap() {
                let context = paragraph["context"].as_str().unwrap();
                out.push((qa["question"].as_str().unwrap().into(), context.into()));
                if out.len() == n {
                    return Some(out);
                }
            }
        }
    }
    Some(out)
}

/// qa-infer's answers (`--jsonl`), from the binary beside ours.
fn qa_infer_answers(questions: &[(String, String)]) -> Vec<Value> {
    let bin = Path::new(BIN).with_file_name("qa-infer");
    assert!(
        bin.exists(),
        "{} is missing (cargo test --workspace builds it)",
        bin.display()
    );
    let mut child = Command::new(bin)
        .arg("--model")
        .arg(model_dir())
        .args(["--jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for (q, c) in questions {
        writeln!(stdin, "{}", json!({"question": q, "context": c})).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// How many answers differ from qa-infer's; each must still score within `tolerance`.
fn differences(ours: &[Value], theirs: &[Value], tolerance: f64) -> usize {
    let mut differ = 0;
    for (k, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let (sa, sb) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
        assert!(
            (sa - sb).abs() <= tolerance,
            "question {k}: score {sa} vs qa-infer {sb}"
        );
        if (&a["answer"], &a["start"], &a["end"]) != (&b["answer"], &b["start"], &b["end"]) {
            eprintln!("question {k}: {a} vs qa-infer {b}");
            differ += 1;
        }
    }
    differ
}

#[test]
fn answers_equal_qa_infer_sent_one_at_a_time_and_concurrently() {
    let Some(questions) = dev_questions(100) else {
        return;
    };
    let expected = qa_infer_answers(&questions);
    assert_eq!(expected.len(), 100);
    let server = Server::start(&["--max-wait-ms", "5"]);
    let one_by_one: Vec<Value> = questions
        .iter()
        .map(|(q, c)| {
            let (status, v) = server.answer(&query(q, c));
            assert_eq!(status, 200, "{v}");
            v
        })
        .collect();
    assert_eq!(differences(&one_by_one, &expected, 1e-6), 0);
    // Eight clients at once: each gets the answers to its own questions.
    let questions = Arc::new(questions);
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (questions, url) = (questions.clone(), server.url.clone());
            std::thread::spawn(move || {
                (c..questions.len())
                    .step_by(8)
                    .map(|k| {
                        let (q, ctx) = &questions[k];
                        let (status, text, _) = send(&url, &query(q, ctx).to_string(), None);
                        assert_eq!(status, 200, "{text}");
                        (k, serde_json::from_str::<Value>(&text).unwrap())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut together = vec![Value::Null; questions.len()];
    for client in clients {
        for (k, v) in client.join().unwrap() {
            together[k] = v;
        }
    }
    assert!(differences(&together, &expected, 1e-4) <= 1);
    let metrics = get(&format!("{}/metrics", server.url)).1;
    let batched = metrics
        .lines()
        .find_map(|l| l.strip_prefix("qa_serve_batch_windows_count "))
        .unwrap();
    // Fewer forward passes than requests: concurrent windows shared them.
    assert!(batched.parse::<f64>().unwrap() < 200.0, "{metrics}");
}

#[test]
fn a_list_of_inputs_gets_a_list_of_answers_and_top_k_lists() {
    let server = Server::start(&[]);
    let one = server
        .answer(&query("Who won Super Bowl 50?", SUPER_BOWL))
        .1;
    let list = json!({"inputs": [
        {"question": "Who won Super Bowl 50?", "context": SUPER_BOWL},
        {"question": "Where was the game played?", "context": SUPER_BOWL},
    ]});
    let (status, answers) = server.answer(&list);
    assert_eq!(status, 200, "{answers}");
    assert_eq!(answers.as_array().unwrap().len(), 2);
    // Batched with another window, a logit may move in its last bits.
    assert_eq!(
        differences(
            &answers.as_array().unwrap()[..1],
            std::slice::from_ref(&one),
            1e-5
        ),
        0
    );
    let mut top3 = query("Who won Super Bowl 50?", SUPER_BOWL);
    top3["parameters"] = json!({"top_k": 3, "align_to_words": true});
    let (status, top) = server.answer(&top3);
    assert_eq!(status, 200);
    assert_eq!(top.as_array().unwrap().len(), 3);
    assert_eq!(differences(&top.as_array().unwrap()[..1], &[one], 1e-5), 0);
    let chars: Vec<char> = SUPER_BOWL.chars().collect();
    for a in top.as_array().unwrap() {
        let (s, e) = (
            a["start"].as_u64().unwrap() as usize,
            a["end"].as_u64().unwrap() as usize,
        );
        assert_eq!(
            chars[s..e].iter().collect::<String>(),
            a["answer"].as_str().unwrap()
        );
    }
}

/// Sends raw bytes and reads until the server closes or `wait` passes.
fn raw(url: &str, bytes: &[u8], wait: Duration) -> String {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A server with small limits and the API key `s3cret` (the key file lives in the tempdir).
fn limited_server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "s3cret\n").unwrap();
    let server = Server::start(&[
        "--max-body-bytes",
        "4000",
        "--max-windows",
        "1",
        "--header-timeout-ms",
        "500",
        "--body-timeout-ms",
        "500",
        "--api-key-file",
        key_file.to_str().unwrap(),
    ]);
    (server, dir)
}

/// The status and the `error` of a JSON error response.
fn error((status, text, _): (u16, String, Option<String>)) -> (u16, String) {
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, v["error"].as_str().unwrap().to_string())
}

#[test]
fn bad_requests_get_their_4xx_and_the_server_keeps_serving() {
    let (server, _dir) = limited_server();
    let url = format!("{}/", server.url);
    let post = |body: &str| send(&url, body, Some("s3cret"));
    let good = query("Who won?", SUPER_BOWL).to_string();
    assert_eq!(post(&good).0, 200);
    assert_eq!(error(send(&url, &good, None)).0, 401);
    assert_eq!(error(send(&url, &good, Some("s3creT"))).0, 401);
    assert_eq!(get(&format!("{}/health", server.url)).0, 200);
    let (status, message) = error(post("{\"inputs\": "));
    assert!(
        status == 400 && message.starts_with("invalid JSON"),
        "{message}"
    );
    let empty = error(post(&query("Who won?", "  ").to_string()));
    assert_eq!(empty, (400, "inputs.context: is empty".into()));
    let bad_item =
        json!({"inputs": [{"question": "a", "context": "b"}, {"question": 1, "context": "b"}]});
    let bad_item = error(post(&bad_item.to_string()));
    assert_eq!(
        bad_item,
        (400, "inputs[1].question: must be a string".into())
    );
    let mut unknown = query("Who won?", SUPER_BOWL);
    unknown["parameters"] = json!({"temperature": 0.5});
    let unknown = error(post(&unknown.to_string()));
    assert_eq!(unknown, (400, "unknown parameter \"temperature\"".into()));
    let (status, message) = error(post(&query("Who won?", &"word ".repeat(900)).to_string()));
    assert!(
        status == 413 && message.contains("body is larger than 4000"),
        "{message}"
    );
    let (status, message) = error(post(&query("Who won?", &"wörd ".repeat(600)).to_string()));
    assert!(
        status == 413 && message.contains("the limit is 1"),
        "{status} {message}"
    );
    assert_eq!(error(get(&format!("{}/nowhere", server.url))).0, 404);
    assert_eq!(error(get(&url)).0, 405);
    assert_eq!(post(&good).0, 200);
    assert_eq!(
        get(&format!("{}/metrics", server.url)).0,
        401,
        "metrics need the key too"
    );
    let metrics = agent()
        .get(&format!("{}/metrics", server.url))
        .set("Authorization", "Bearer s3cret")
        .call();
    let (status, metrics, _) = reply(metrics);
    assert_eq!(status, 200);
    for name in [
        "qa_serve_requests_total{status=\"413\"} 2",
        "qa_serve_requests_total{status=\"401\"} 3",
        "qa_serve_request_duration_seconds_bucket",
        "qa_serve_queue_windows",
        "qa_serve_request_windows_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
}

#[test]
fn slow_and_idle_clients_are_cut_off_and_the_server_keeps_serving() {
    let (server, _dir) = limited_server();
    // A body that stops half way: 408.
    let head =
        "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 100\r\n\r\n";
    let slow = raw(
        &server.url,
        format!("{head}{{\"inp").as_bytes(),
        Duration::from_secs(5),
    );
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    // A client that sends nothing is dropped after the header timeout.
    let started = Instant::now();
    let idle = raw(&server.url, b"", Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(5), "{idle}");
    let good = query("Who won?", SUPER_BOWL).to_string();
    assert_eq!(
        send(&format!("{}/", server.url), &good, Some("s3cret")).0,
        200
    );
}

#[test]
fn a_full_queue_says_503_and_a_spent_budget_504() {
    // The first request waits 1.5 s for company, longer than its 400 ms budget; a second one
    // meanwhile finds the one-window queue full.
    let server = Server::start(&[
        "--max-wait-ms",
        "1500",
        "--queue-windows",
        "1",
        "--timeout-ms",
        "400",
        "--max-batch",
        "4",
    ]);
    let url = format!("{}/", server.url);
    let first = {
        let url = url.clone();
        std::thread::spawn(move || send(&url, &query("Who won?", SUPER_BOWL).to_string(), None))
    };
    std::thread::sleep(Duration::from_millis(150));
    let (status, text, retry) = send(&url, &query("Who lost?", SUPER_BOWL).to_string(), None);
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{text}");
    let (status, text, _) = first.join().unwrap();
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("time budget"), "{text}");
    // The expired job leaves the queue unrun, and the server goes on.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(&format!("{}/health", server.url)).0, 200);
}

#[test]
fn sigterm_finishes_the_requests_in_flight_and_exits_0() {
    let mut server = Server::start(&["--max-wait-ms", "400", "--max-batch", "64"]);
    let url = format!("{}/", server.url);
    let clients: Vec<_> = (0..4)
        .map(|k| {
            let url = url.clone();
            std::thread::spawn(move || {
                send(
                    &url,
                    &query(&format!("Who won game {k}?"), SUPER_BOWL).to_string(),
                    None,
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    server.terminate();
    for client in clients {
        let (status, text, _) = client.join().unwrap();
        assert_eq!(status, 200, "{text}");
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still running: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", server.log());
    assert!(
        server.log().contains("qa-serve: stopped"),
        "{}",
        server.log()
    );
}

#[test]
fn a_model_that_does_not_load_exits_1_with_one_line() {
    let out = Command::new(BIN)
        .args(["--model", "/nonexistent/model", "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("qa-serve: error:") && l.contains("/nonexistent/model")),
        "{stderr}"
    );
}

#[test]
fn huggingface_hub_client_and_curl_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "hf-token").unwrap();
    let server = Server::start(&["--api-key-file", key_file.to_str().unwrap()]);
    let question = "Which NFL team represented the AFC at Super Bowl 50?";
    let (_, ours, _) = send(
        &format!("{}/", server.url),
        &query(question, SUPER_BOWL).to_string(),
        Some("hf-token"),
    );
    let ours: Value = serde_json::from_str(&ours).unwrap();
    if which("curl") {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-X",
                "POST",
                &format!("{}/v1/answer", server.url),
                "-H",
                "Authorization: Bearer hf-token",
                "-H",
                "Content-Type: application/json",
                "-d",
            ])
            .arg(query(question, SUPER_BOWL).to_string())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), ours);
    } else {
        eprintln!("curl not found: skipping the curl round trip");
    }
    let venv = std::env::var_os("REF_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/squad-qa-ref/venv")
        });
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("{} is missing (../shared/ref/setup.sh): skipping the huggingface_hub client round trip", python.display());
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_client.py");
    let out = Command::new(python)
        .arg(script)
        .args([&server.url, "hf-token", question, SUPER_BOWL])
        .env("HF_HUB_OFFLINE", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs["best"]["answer"], ours["answer"]);
    assert_eq!(theirs["best"]["start"], ours["start"]);
    assert!(
        (theirs["best"]["score"].as_f64().unwrap() - ours["score"].as_f64().unwrap()).abs() < 1e-9
    );
    assert_eq!(theirs["top2"].as_array().unwrap().len(), 2);
}

fn which(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok()
}
