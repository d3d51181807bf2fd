//! The policy file the README shows is a policy brownout loads, and it
//! says what the defaults are.

#[test]
fn the_readme_policy_file_loads_and_is_the_default_policy() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("```toml\n")
        .expect("a TOML block in the README")
        + "```toml\n".len();
    let end = start
        + readme[start..]
            .find("```")
            .expect("the end of the TOML block");
    let policy =
        brownout::Policy::from_toml(&readme[start..end]).expect("the README's policy loads");
    assert_eq!(
        policy,
        brownout::Policy::default(),
        "the README shows the defaults"
    );
}

#[test]
fn the_operations_policy_in_the_crate_docs_loads() {
    let docs: String = include_str!("../src/lib.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let section = &docs[docs.find("# Operations").expect("an operations section")..];
    let start = section.find("```toml\n").expect("a TOML block") + "```toml\n".len();
    let end = start + section[start..].find("```").expect("the end of the block");
    let policy =
        brownout::Policy::from_toml(&section[start..end]).expect("the operations policy loads");
    assert_eq!(policy.maintenance.len(), 1);
    assert_eq!(policy.route("/payments").waiting_room.capacity, 0);
}
