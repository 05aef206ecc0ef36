//! nginx with its stream module, found on this machine: the fleet test's UDP load balancer
//! and the benchmark's plain TCP relay. `.ci/run` installs it (Debian: `nginx-light` and
//! `libnginx-mod-stream`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// An nginx binary with the stream module: built in, or the dynamic module to load.
pub struct Install {
    /// The `nginx` program.
    pub bin: PathBuf,
    /// The stream module to `load_module`, when it is not built in.
    pub module: Option<PathBuf>,
}

/// Finds nginx and its stream module, or says what to install.
pub fn find() -> Result<Install, String> {
    let bin = [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/bin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or("nginx is not installed (Debian: apt-get install nginx-light libnginx-mod-stream)")?;
    let version = Command::new(&bin)
        .arg("-V")
        .output()
        .map_err(|e| format!("{} does not run: {e}", bin.display()))?;
    let build = String::from_utf8_lossy(&version.stderr).into_owned();
    if build.split_whitespace().any(|arg| arg == "--with-stream") {
        return Ok(Install { bin, module: None });
    }
    let module = stream_module().ok_or_else(|| {
        format!(
            "{} has no stream module built in and ngx_stream_module.so is not installed \
             (Debian: apt-get install libnginx-mod-stream)",
            bin.display()
        )
    })?;
    Ok(Install {
        bin,
        module: Some(module),
    })
}

/// The dynamic stream module: where Debian's package put it (`dpkg -L`), or a usual place.
fn stream_module() -> Option<PathBuf> {
    let listed = Command::new("dpkg")
        .args(["-L", "libnginx-mod-stream"])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    listed
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with("/ngx_stream_module.so"))
        .map(PathBuf::from)
        .chain(
            [
                "/usr/lib/nginx/modules/ngx_stream_module.so",
                "/usr/lib64/nginx/modules/ngx_stream_module.so",
                "/usr/local/nginx/modules/ngx_stream_module.so",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
}
