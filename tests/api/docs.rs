//! The documentation's shape: README.md stays a short front door, and every relative link in
//! README.md, SECURITY.md, BENCHMARKS.md and docs/*.md leads to a file that exists and, with a
//! `#anchor`, to one of that file's headings, as GitHub names them. Reads files only.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

const README_MAX_LINES: usize = 250;
const EXTERNAL: [&str; 3] = ["http://", "https://", "mailto:"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

#[test]
fn readme_is_a_front_door() {
    let lines = read(&root().join("README.md")).lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move the detail to docs/"
    );
}

#[test]
fn relative_links_lead_to_a_file_and_a_heading() {
    let mut files: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/ is readable")
        .map(|entry| entry.expect("an entry of docs/ is readable").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "md"))
        .collect();
    files.sort();
    for top in ["README.md", "SECURITY.md", "BENCHMARKS.md"] {
        files.push(root().join(top));
    }

    let mut broken = Vec::new();
    for file in &files {
        let name = file
            .strip_prefix(root())
            .unwrap_or(file.as_path())
            .display();
        for target in link_targets(&read(file)) {
            if EXTERNAL.iter().any(|scheme| target.starts_with(scheme)) {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let linked = match path {
                "" => file.clone(),
                path => file.parent().expect("a file is in a folder").join(path),
            };
            let shown = linked.display();
            if !linked.is_file() {
                broken.push(format!("{name}: link to {target}: no file {shown}"));
            } else if !anchor.is_empty() && !heading_anchors(&read(&linked)).contains(anchor) {
                broken.push(format!(
                    "{name}: link to {target}: no heading #{anchor} in {shown}"
                ));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_are_named_as_github_names_them() {
    let markdown = "# etl\n## Data lifecycle\n### 10. `etl lambda` on AWS\n\
                    ```sh\n# a comment, not a heading\n```\n## Data lifecycle\n";
    let expected = [
        "etl",
        "data-lifecycle",
        "10-etl-lambda-on-aws",
        "data-lifecycle-1",
    ];
    assert_eq!(
        heading_anchors(markdown),
        HashSet::from(expected.map(String::from))
    );
}

/// The targets of the inline links and images outside code: `[text](target)`, or
/// `[text](target "title")`.
fn link_targets(markdown: &str) -> Vec<String> {
    let text = without_code_spans(&prose(markdown));
    let insides = text
        .split("](")
        .skip(1)
        .filter_map(|after| after.split_once(')'));
    let targets = insides.filter_map(|(inside, _)| inside.split_whitespace().next());
    targets.map(String::from).collect()
}

/// GitHub's anchors of the headings: lower case, each space a '-', punctuation other than '-' and
/// '_' dropped; a repeated anchor gets "-1", "-2", ...
fn heading_anchors(markdown: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = HashSet::new();
    for line in prose(markdown).lines() {
        let level = line.len() - line.trim_start_matches('#').len();
        let Some(title) = line[level..]
            .strip_prefix(' ')
            .filter(|_| (1..=6).contains(&level))
        else {
            continue;
        };
        let anchor: String = title
            .trim()
            .chars()
            .filter(|&c| c == ' ' || c == '-' || c == '_' || c.is_alphanumeric())
            .map(|c| if c == ' ' { '-' } else { c })
            .flat_map(char::to_lowercase)
            .collect();
        let count = seen.entry(anchor.clone()).or_insert(0);
        anchors.insert(match *count {
            0 => anchor,
            n => format!("{anchor}-{n}"),
        });
        *count += 1;
    }
    anchors
}

/// The text with the lines of fenced code blocks (``` or ~~~) left blank.
fn prose(markdown: &str) -> String {
    let mut fence: Option<&str> = None;
    let mut kept = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some(marker) = fence {
            if trimmed.starts_with(marker) {
                fence = None;
            }
        } else if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(&trimmed[..3]);
        } else {
            kept.push_str(line);
        }
        kept.push('\n');
    }
    kept
}

/// The text without its code spans, each a run of backticks up to the next run of as many; an
/// unmatched run is literal text.
fn without_code_spans(text: &str) -> String {
    let backticks_at = |text: &str| text.len() - text.trim_start_matches('`').len();
    let mut kept = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('`') {
        kept.push_str(&rest[..start]);
        let ticks = backticks_at(&rest[start..]);
        let mut end = start + ticks;
        rest = loop {
            let Some(found) = rest[end..].find('`').map(|found| end + found) else {
                kept.push_str(&rest[start..start + ticks]);
                break &rest[start + ticks..];
            };
            match backticks_at(&rest[found..]) {
                run if run == ticks => break &rest[found + ticks..],
                run => end = found + run,
            }
        };
    }
    kept.push_str(rest);
    kept
}

/// The commands that exit 1 when they find nothing or have nothing to do, written out here by
/// hand from what each one's code returns, so that the table in `etl::commands` is checked
/// against it rather than against itself.
const EXIT_ONE: [&str; 10] = [
    "recover",
    "recover collect",
    "audit verify",
    "doctor",
    "privacy check",
    "quarantine show",
    "quarantine replay",
    "quarantine purge",
    "forget",
    "export",
];

/// Every command that runs ends its `--help` with its exit-status line, taken from the one table
/// (`etl::commands::exit_status`); top-level `--help` and README state the table, and README names
/// every command that exits 1.
#[test]
fn every_command_states_its_exit_status_from_the_one_table() {
    fn runnable(command: &clap::Command, path: &[String], found: &mut Vec<Vec<String>>) {
        if !path.is_empty() && !command.is_subcommand_required_set() {
            found.push(path.to_vec());
        }
        for sub in command.get_subcommands() {
            let mut sub_path = path.to_vec();
            sub_path.push(sub.get_name().to_owned());
            runnable(sub, &sub_path, found);
        }
    }
    let mut paths = Vec::new();
    runnable(&etl::cli::command(), &[], &mut paths);
    assert!(paths.len() > 30, "{paths:?}");
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    for path in &paths {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_etl"))
            .args(path)
            .arg("--help")
            .output()
            .unwrap();
        assert!(output.status.success(), "{path:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        let Some((_, status)) = help.split_once("Exit status:") else {
            panic!("`etl {}` --help has no exit status", path.join(" "));
        };
        let status = format!("Exit status: {}", words(status));
        let command = path.join(" ");
        assert_eq!(status, etl::commands::exit_status(&command), "{path:?}");
        assert!(
            status.starts_with("Exit status: 0 done; ") && status.ends_with("2 error or refused."),
            "{status}"
        );
        assert_eq!(
            status.contains("; 1 "),
            EXIT_ONE.contains(&command.as_str()),
            "`etl {command}`: {status}"
        );
    }
    let top = std::process::Command::new(env!("CARGO_BIN_EXE_etl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        words(&String::from_utf8_lossy(&top.stdout)).contains(&words(etl::commands::EXIT_CODES)),
        "top-level --help states the table"
    );
    let readme = read(&root().join("README.md"));
    let (_, section) = readme
        .split_once("## Exit codes")
        .expect("README has an exit-code section");
    let table = section.split("\n## ").next().unwrap_or(section);
    for command in EXIT_ONE {
        assert!(
            table.contains(&format!("`{command}`")),
            "README's exit codes do not name `{command}`"
        );
    }
}
