use super::*;
use crate::commands::keys::KeysCommand;

#[test]
fn every_subcommand_is_well_formed() {
    // clap checks argument names (e.g. `keys retire --version` against the version flag)
    // only when a subcommand is built; this builds them all.
    command().debug_assert();
}

#[test]
fn keys_retire_takes_a_version() {
    let cli = parsed(&[
        "etl",
        "keys",
        "retire",
        "--database-url",
        "postgres://x/y",
        "--purpose",
        "vault",
        "--version",
        "3",
    ]);
    assert!(matches!(
        cli.command,
        Command::Keys(KeysCommand::Retire(keys::RetireArgs { version: 3, .. }))
    ));
}

fn parsed(args: &[&str]) -> Cli {
    Cli::parse_from(with_bootstrap_as_lambda(
        args.iter().map(OsString::from).collect(),
    ))
}

#[test]
fn bootstrap_runs_the_lambda_command() {
    let cli = parsed(&["/var/task/bootstrap", "--database-url", "postgres://h/db"]);
    assert!(matches!(cli.command, Command::Lambda(_)), "{cli:?}");
    let cli = parsed(&[
        "target/release/etl",
        "migrate",
        "--database-url",
        "postgres://h/db",
    ]);
    assert!(matches!(cli.command, Command::Migrate(_)), "{cli:?}");
}

#[test]
fn a_missing_group_is_named_flag_by_flag() {
    let err = parse(
        [
            "etl",
            "recover",
            "--database-url",
            "postgres://h/db",
            "--reason",
            "r",
        ]
        .map(OsString::from)
        .to_vec(),
    )
    .unwrap_err();
    assert_eq!(
        usage_message(&err).unwrap().lines().next(),
        Some("error: one of --masked-ip, --masked-device-id is required and not set")
    );
}

#[test]
fn a_missing_positional_is_named_as_clap_names_it() {
    let err = parse(["etl", "recover", "approve"].map(OsString::from).to_vec()).unwrap_err();
    let message = usage_message(&err).unwrap();
    assert!(!message.contains("one of"), "{message}");
    assert!(message.contains("<ID>"), "{message}");
}
