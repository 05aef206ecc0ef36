//! Where a program built beside this one is: `ferry-demo` starts the agent and the gateway, and
//! `ferry-bench` the binaries it measures, from the same `target/` folder as themselves.

use std::path::PathBuf;

/// The path of the program `name` in this program's folder, or a one-line error that ends with
/// `how_to_build` (what to run so that it is there).
pub fn sibling(name: &str, how_to_build: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot locate this program: {e}"))?;
    let path = me.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} not found: {how_to_build}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_beside_this_one_is_found_and_a_missing_one_named() {
        let me = std::env::current_exe().unwrap();
        let name = me.file_name().unwrap().to_str().unwrap();
        assert_eq!(sibling(name, "build it").unwrap(), me);
        let missing = sibling("no-such-ferry-program", "build it").unwrap_err();
        assert!(
            missing.ends_with("no-such-ferry-program not found: build it"),
            "{missing}"
        );
    }
}
