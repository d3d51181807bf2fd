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
