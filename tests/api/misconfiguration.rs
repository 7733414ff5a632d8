//! The mistakes a new user makes, one row each: every one ends with exit code 2 and at most two
//! lines on stderr that say the cause in words and what to do, without a password or personal
//! data. docs/troubleshooting.md lists the same messages.

use std::time::Duration;

use crate::helpers::{event, socket_addr_of, TestApp};

/// Values that must never reach stderr: what the rows pass as masks is personal data.
const PERSONAL_DATA: [&str; 2] = ["10.20.30.40", "555-12-3456"];

struct Row {
    case: &'static str,
    args: Vec<String>,
    /// Variables set over the app's (`DATABASE_URL`, `ETL_QUEUE_URL`); `None` unsets one.
    env: Vec<(&'static str, Option<String>)>,
    /// Each must appear on stderr.
    words: Vec<String>,
    /// A password the row's URL holds, which must not appear.
    password: Option<&'static str>,
}

fn row(case: &'static str, args: &[&str], words: &[&str]) -> Row {
    Row {
        case,
        args: args.iter().map(|arg| arg.to_string()).collect(),
        env: Vec::new(),
        words: words.iter().map(|word| word.to_string()).collect(),
        password: None,
    }
}

impl Row {
    fn env(mut self, name: &'static str, value: Option<String>) -> Self {
        self.env.push((name, value));
        self
    }

    fn password(mut self, password: &'static str) -> Self {
        self.password = Some(password);
        self
    }
}

/// `url` with its user and password, or its database, replaced.
fn url_with(url: &str, credentials: Option<&str>, database: Option<&str>) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user_info, host_and_db) = rest.split_once('@').unwrap();
    let (server, db) = host_and_db.split_once('/').unwrap();
    format!(
        "{scheme}://{}@{server}/{}",
        credentials.unwrap_or(user_info),
        database.unwrap_or(db)
    )
}

#[tokio::test]
async fn each_misconfiguration_gets_one_clear_line_and_exit_code_2() {
    let app = TestApp::spawn().await;
    let unmigrated = TestApp::spawn_bare().await;
    let keyless = TestApp::spawn_bare().await;
    keyless.etl_ok(&["migrate"]).await;

    let server = socket_addr_of(&app.database_url);
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let missing_database = format!("etl_missing_{}", uuid::Uuid::new_v4().simple());
    let missing_queue = format!("etl-missing-{}", uuid::Uuid::new_v4().simple());
    let missing_queue_url = format!(
        "{}/{missing_queue}",
        app.queue_url.rsplit_once('/').unwrap().0
    );
    let missing_alias = format!("alias/etl-missing-{}", uuid::Uuid::new_v4().simple());
    let (analyst, _) = app.login_user("etl_analyst").await;
    sqlx::query(&format!(
        "ALTER ROLE {analyst} PASSWORD 'analyst-secret-7f3a'"
    ))
    .execute(&app.pool)
    .await
    .unwrap();
    let mask_file = std::env::temp_dir().join(format!("etl-masks-{}", uuid::Uuid::new_v4()));
    std::fs::write(&mask_file, format!("{}\n555-12-3456\n", "ab".repeat(32))).unwrap();
    let mask_file = mask_file.display().to_string();

    let rows = vec![
        row(
            "missing variable",
            &["migrate"],
            &["--database-url / DATABASE_URL is required and not set"],
        )
        .env("DATABASE_URL", None),
        row(
            "invalid database URL",
            &["migrate"],
            &["--database-url / DATABASE_URL is not a valid PostgreSQL URL"],
        )
        .env(
            "DATABASE_URL",
            Some("mysql://etl:mysql-secret-91c2@db.example.com/etl".into()),
        )
        .password("mysql-secret-91c2"),
        row(
            "invalid queue URL",
            &["ingest", "--drain"],
            &["--queue-url / ETL_QUEUE_URL must be an http(s) URL of an SQS queue"],
        )
        .env("ETL_QUEUE_URL", Some("login-queue".into())),
        row(
            "unreachable database",
            &["migrate"],
            &[
                &format!("cannot connect to 127.0.0.1:{closed_port}: connection refused"),
                "check the host and port in DATABASE_URL",
            ],
        )
        .env(
            "DATABASE_URL",
            Some(format!(
                "postgres://etl:closed-secret-4b1d@127.0.0.1:{closed_port}/etl"
            )),
        )
        .password("closed-secret-4b1d"),
        row(
            "wrong database name",
            &["migrate"],
            &[&format!(
                "database \"{missing_database}\" on {server} does not exist: create it"
            )],
        )
        .env(
            "DATABASE_URL",
            Some(url_with(&app.database_url, None, Some(&missing_database))),
        ),
        row(
            "wrong password",
            &["migrate"],
            &[
                "authentication failed for user \"postgres\"",
                "check the user name and password in DATABASE_URL",
            ],
        )
        .env(
            "DATABASE_URL",
            Some(url_with(
                &app.database_url,
                Some("postgres:wrong-secret-d2e8"),
                None,
            )),
        )
        .password("wrong-secret-d2e8"),
        row(
            "missing queue",
            &["ingest", "--drain"],
            &[&format!(
                "the queue {missing_queue} does not exist: create it"
            )],
        )
        .env("ETL_QUEUE_URL", Some(missing_queue_url)),
        row(
            "unmigrated database",
            &["ingest", "--drain"],
            &["is not migrated", "run `etl migrate`"],
        )
        .env("DATABASE_URL", Some(unmigrated.database_url.clone())),
        row(
            "missing data keys",
            &["ingest", "--drain"],
            &["no quarantine data key exists yet", "etl keys init"],
        )
        .env("DATABASE_URL", Some(keyless.database_url.clone())),
        row(
            "missing KMS alias",
            &["keys", "init", "--kms-key-id", &missing_alias],
            &[
                &format!("KMS key or alias {missing_alias} not found"),
                "aws kms list-aliases",
            ],
        )
        .env("DATABASE_URL", Some(keyless.database_url.clone())),
        row(
            "wrong role",
            &["ingest", "--drain"],
            &[
                "permission denied for schema keyring",
                &format!("the database user \"{analyst}\" lacks the role this command needs"),
            ],
        )
        .env(
            "DATABASE_URL",
            Some(url_with(
                &app.database_url,
                Some(&format!("{analyst}:analyst-secret-7f3a")),
                None,
            )),
        )
        .password("analyst-secret-7f3a"),
        row(
            "bad mask on the command line",
            &["recover", "--masked-ip", "10.20.30.40", "--reason", "r"],
            &["the value of --masked-ip is not a mask"],
        ),
        row(
            "bad mask in the file",
            &[
                "recover",
                "--masked-device-id",
                "--from-file",
                &mask_file,
                "--reason",
                "r",
            ],
            &["line 2 of the mask file is not a mask"],
        ),
    ];

    for row in rows {
        let args: Vec<&str> = row.args.iter().map(String::as_str).collect();
        let mut command = app.command(&args);
        for (name, value) in &row.env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let output = command.output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let case = row.case;
        assert_eq!(output.status.code(), Some(2), "{case}: {stderr}");
        assert!(
            stderr.lines().count() <= 2,
            "{case}: more than two lines:\n{stderr}"
        );
        // Details (the service's own words, the whole chain) are at --log-level debug.
        assert!(
            stderr.lines().all(|line| line.chars().count() <= 200),
            "{case}: a line longer than 200 characters:\n{stderr}"
        );
        for word in &row.words {
            assert!(
                stderr.contains(word.as_str()),
                "{case}: no {word:?} in:\n{stderr}"
            );
        }
        // No URL with its credentials (`user:password@host`).
        assert!(!stderr.contains('@'), "{case}: credentials in:\n{stderr}");
        if let Some(password) = row.password {
            assert!(
                !stderr.contains(password),
                "{case}: the password in:\n{stderr}"
            );
        }
        for value in PERSONAL_DATA {
            assert!(!stderr.contains(value), "{case}: {value} in:\n{stderr}");
        }
    }
    std::fs::remove_file(&mask_file).unwrap();
}

/// Under `--log-format json`, the error that ends a command is one JSON object, as log lines are.
#[tokio::test]
async fn a_fatal_error_under_json_logs_is_one_json_object() {
    let app = TestApp::spawn().await;
    let output = app
        .command(&[
            "--log-format",
            "json",
            "ingest",
            "--drain",
            "--queue-url",
            "login-queue",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let [line] = lines.as_slice() else {
        panic!("not one line:\n{stderr}");
    };
    let error: serde_json::Value = serde_json::from_str(line).expect("one JSON object");
    assert_eq!(error["level"], "ERROR", "{line}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("--queue-url / ETL_QUEUE_URL must be an http(s) URL")),
        "{line}"
    );
}

/// A reader that goes away (`| head`) ends the output quietly: no panic, no error line.
#[tokio::test]
async fn a_closed_pipe_ends_output_quietly() {
    use tokio::io::AsyncBufReadExt;
    let app = TestApp::spawn().await;
    // Enough output to fill the pipe: the write after `head` leaves fails.
    for args in [vec!["dev", "generate", "--count", "200000"]] {
        let mut child = app
            .command(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut first = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut first)
            .await
            .unwrap();
        assert!(!first.is_empty(), "{args:?}: no first line");
        // `head -1` exits here, closing the pipe.
        let output = child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_ne!(output.status.code(), Some(101), "{args:?}: {stderr}");
        assert_ne!(output.status.code(), Some(2), "{args:?}: {stderr}");
    }
}

/// Every command that prints on stdout, run with a stdout whose reader is already gone (the
/// worst case of `| head`): exit as if it had finished, with no panic and no error line.
#[tokio::test]
async fn every_command_ends_quietly_when_stdout_is_closed() {
    let app = TestApp::spawn().await;
    app.ingest(&[event("10.0.0.1", "dev-1"), "not json".to_owned()])
        .await;
    let commands: [&[&str]; 12] = [
        &["migrate"],
        &["keys", "list"],
        &["keys", "list", "--format", "json"],
        &["retention", "show"],
        &["audit", "verify"],
        &["audit", "head"],
        &["quarantine", "list"],
        &["recover", "policy", "show"],
        &["ingest", "--drain"],
        &["dev", "generate", "--count", "10"],
        &["doctor"],
        &["retention", "apply", "--dry-run"],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = app.command(args).stdout(writer).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
        assert!(
            matches!(output.status.code(), Some(0 | 1)),
            "{args:?}: {:?} {stderr}",
            output.status
        );
    }
}

/// SIGTERM while ingest waits at start for a database that refuses: the process ends within
/// 5 s (Kubernetes kills 30 s after SIGTERM), exit 2, with the last cause in one line.
#[tokio::test]
async fn a_signal_during_start_up_ends_the_wait() {
    use tokio::io::AsyncBufReadExt;
    let app = TestApp::spawn_bare().await;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut child = app
        .command(&["ingest", "--drain"])
        .env(
            "DATABASE_URL",
            format!("postgres://etl:pw@127.0.0.1:{closed_port}/etl"),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let started = std::time::Instant::now();
    // Waiting has begun once the first refusal is logged; the signal comes 3 s into start-up.
    while let Some(line) = stderr.next_line().await.unwrap() {
        if line.contains("waiting for the database") {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let signalled = std::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("ingest still running 5 s after SIGTERM")
        .unwrap();
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(2));
    let mut last = String::new();
    while let Some(line) = stderr.next_line().await.unwrap() {
        last = line;
    }
    assert!(
        last.starts_with("error: ")
            && last.contains("stopped by a signal while waiting for the database")
            && last.contains("connection refused"),
        "{last}"
    );
}
