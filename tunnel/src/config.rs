//! `--config FILE`: the same settings as the flags, in TOML.
//!
//! Every key is a flag's long name and every value its value: `listen = "0.0.0.0:9000"`,
//! `backend = ["tcp://10.0.0.1:80", "tcp://10.0.0.2:80"]`, `max-connections = 3000`,
//! `proxy-protocol = "v2"`. The file is expanded into flags placed before the command line's
//! own, so one flag, one meaning, one parser: an unknown key is reported exactly as an unknown
//! flag would be, and a single-value flag given on the command line overrides the file (list
//! flags add to it).

use std::ffi::OsString;

/// Why `--config FILE` could not be used: one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// `--config` was the last argument.
    #[error("--config needs a FILE")]
    MissingFile,
    /// The file could not be read.
    #[error("cannot read config {file}: {source}")]
    Read {
        /// The file, as given.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a configuration.
    #[error("invalid config {file}: {source}")]
    Invalid {
        /// The file, as given.
        file: String,
        /// What is wrong in it.
        source: TomlError,
    },
}

/// What is wrong in a configuration's TOML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TomlError {
    /// Not TOML: the first line of the parser's message.
    #[error("{0}")]
    Syntax(String),
    /// A key whose value no flag can take (a table, a date...).
    #[error("key {0:?}: use a string, number, boolean or a list of them")]
    Value(String),
}

/// Inserts the flags that the file named by `--config FILE` (or `--config=FILE`) holds right
/// after the program name; `--config` itself stays for the parser to document and report.
/// Without `--config`, returns `args` unchanged.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
    let mut rest = Vec::with_capacity(args.len());
    let mut file = None;
    let mut it = args.into_iter();
    let program = it.next();
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            let path = it.next().ok_or(ConfigFileError::MissingFile)?;
            file = Some(path.clone());
            rest.extend([arg, path]);
        } else {
            if let Some(path) = text.strip_prefix("--config=") {
                file = Some(OsString::from(path));
            }
            rest.push(arg);
        }
    }
    let mut out: Vec<OsString> = program.into_iter().collect();
    if let Some(path) = file {
        let shown = path.to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
            file: shown.clone(),
            source,
        })?;
        out.extend(
            flags_from_toml(&text).map_err(|source| ConfigFileError::Invalid {
                file: shown,
                source,
            })?,
        );
    }
    out.extend(rest);
    Ok(out)
}

/// The flags a TOML document stands for.
pub fn flags_from_toml(text: &str) -> Result<Vec<OsString>, TomlError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        TomlError::Syntax(
            e.message()
                .lines()
                .next()
                .unwrap_or("syntax error")
                .to_owned(),
        )
    })?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let flag = format!("--{key}");
        let values = match value {
            toml::Value::Array(items) => items,
            other => vec![other],
        };
        for v in values {
            match v {
                toml::Value::String(s) => flags.extend([OsString::from(&flag), OsString::from(s)]),
                toml::Value::Integer(i) => {
                    flags.extend([OsString::from(&flag), OsString::from(i.to_string())])
                }
                toml::Value::Float(f) => {
                    flags.extend([OsString::from(&flag), OsString::from(f.to_string())])
                }
                toml::Value::Boolean(true) => flags.push(OsString::from(&flag)),
                toml::Value::Boolean(false) => {}
                _ => return Err(TomlError::Value(key)),
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn toml_keys_become_flags_before_the_command_line() {
        let dir = std::env::temp_dir().join(format!("ferry-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9000\"\nbackend = [\"tcp://a:1\", \"unix:/b\"]\nmax-connections = 5\n").unwrap();
        let args = expand(os(&[
            "ferry-gateway",
            "--config",
            path.to_str().unwrap(),
            "--max-connections",
            "7",
        ]))
        .unwrap();
        assert_eq!(
            args,
            os(&[
                "ferry-gateway",
                "--backend",
                "tcp://a:1",
                "--backend",
                "unix:/b",
                "--listen",
                "0.0.0.0:9000",
                "--max-connections",
                "5",
                "--config",
                path.to_str().unwrap(),
                "--max-connections",
                "7"
            ])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_name_the_file_in_one_line() {
        let e = expand(os(&["x", "--config=/nonexistent/ferry.toml"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read config /nonexistent/ferry.toml"),
            "{e}"
        );
        let e = flags_from_toml("listen = ").unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(flags_from_toml("x = { a = 1 }")
            .unwrap_err()
            .to_string()
            .contains("key \"x\""));
        assert_eq!(
            expand(os(&["x", "--listen", "a"])).unwrap(),
            os(&["x", "--listen", "a"])
        );
    }
}
