//! Release hygiene (#27): one version across the crate, the OpenAPI document, `--version` and
//! CHANGELOG.md's latest release; the licence the manifest names is the one the repository
//! ships; the contract tag policy CONTRIBUTING.md states is the one `scripts/test` runs.
use std::process::Command;

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[test]
fn one_version_across_crate_openapi_binary_and_changelog() {
    let openapi: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string("docs/openapi.yaml").unwrap()).unwrap();
    assert_eq!(openapi["info"]["version"].as_str(), Some(VERSION));

    let out = Command::new(env!("CARGO_BIN_EXE_event-gateway"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("event-gateway {VERSION}")
    );

    // The image the Kubernetes manifests run is this version's.
    let statefulset = std::fs::read_to_string("deploy/kubernetes/base/statefulset.yaml").unwrap();
    assert!(statefulset.contains(&format!("image: event-gateway:{VERSION}")));

    // Keep a Changelog: an [Unreleased] section, then releases newest first.
    let changelog = std::fs::read_to_string("CHANGELOG.md").unwrap();
    let releases: Vec<&str> = changelog
        .lines()
        .filter_map(|l| l.strip_prefix("## ["))
        .collect();
    assert!(releases[0].starts_with("Unreleased]"), "{releases:?}");
    let latest = releases[1].split(']').next().unwrap();
    assert_eq!(latest, VERSION, "CHANGELOG.md's latest release");
}

#[test]
fn the_licence_file_is_the_one_the_manifest_names() {
    let manifest = std::fs::read_to_string("Cargo.toml").unwrap();
    assert!(manifest.contains("license = \"Apache-2.0\""));
    let licence = std::fs::read_to_string("LICENSE").unwrap();
    assert!(licence.contains("Apache License") && licence.contains("Version 2.0, January 2004"));
    assert!(
        licence.contains("END OF TERMS AND CONDITIONS"),
        "the full text"
    );
}

#[test]
fn the_contract_tag_policy_is_the_one_the_test_script_runs() {
    let script = std::fs::read_to_string("scripts/test").unwrap();
    assert!(script.contains("git tag --list 'contract/v*' --sort=-v:refname"));
    assert!(script.contains("breaking --against \".git#tag=$last_contract\""));
    let policy = std::fs::read_to_string("CONTRIBUTING.md").unwrap();
    assert!(policy.contains("contract/v1.0.0") && policy.contains("buf breaking"));
}
