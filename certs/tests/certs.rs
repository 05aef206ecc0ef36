//! The development set verifies as Ferry will use it, and the tool writes it safely.

use std::process::Command;

use ferry_certs::{file_names, generate, Options};
use ferry_protocol::crypto::rustls;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn roots(pem: &str) -> std::sync::Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(pem)).unwrap();
    std::sync::Arc::new(roots)
}

#[test]
fn the_gateway_certificate_verifies_for_its_names_and_agents_as_clients() {
    let options = Options {
        names: vec!["gw.example.net".into(), "127.0.0.1".into()],
        agents: 2,
        ..Options::default()
    };
    let set = generate(&options).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(&set.ca.cert),
        provider.clone(),
    )
    .build()
    .unwrap();
    let now = UnixTime::now();
    for name in ["gw.example.net", "127.0.0.1"] {
        let name = rustls::pki_types::ServerName::try_from(name).unwrap();
        server
            .verify_server_cert(&der(&set.gateway.cert), &[], &name, &[], now)
            .unwrap();
    }
    let other = rustls::pki_types::ServerName::try_from("other.example.net").unwrap();
    assert!(server
        .verify_server_cert(&der(&set.gateway.cert), &[], &other, &[], now)
        .is_err());
    let client =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&set.ca.cert), provider)
            .build()
            .unwrap();
    for agent in &set.agents {
        client
            .verify_client_cert(&der(&agent.cert), &[], now)
            .unwrap();
    }
    // Another run's CA does not vouch for this one's certificates.
    let stranger = generate(&options).unwrap();
    let foreign = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(&stranger.ca.cert),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    assert!(foreign
        .verify_server_cert(&der(&set.gateway.cert), &[], &name, &[], now)
        .is_err());
}

#[test]
fn bad_options_are_refused_clearly() {
    let none = Options {
        names: vec![],
        ..Options::default()
    };
    assert!(generate(&none).unwrap_err().to_string().contains("--name"));
    let zero = Options {
        agents: 0,
        ..Options::default()
    };
    assert!(generate(&zero)
        .unwrap_err()
        .to_string()
        .contains("--agents"));
}

#[test]
fn the_tool_writes_every_file_keeps_keys_private_and_never_overwrites_silently() {
    let dir = std::env::temp_dir().join(format!("ferry-certs-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry-certs"))
            .args(["--out", dir.to_str().unwrap(), "--agents", "3"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in file_names(3) {
        let path = dir.join(&name);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN"), "{name}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            let want = if name.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode, want, "{name}");
        }
    }
    assert!(dir.join("agent-3.pem").exists() && dir.join("agent.key").exists());
    let before = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let again = run(&[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("ca.pem")).unwrap(), before);
    assert!(run(&["--force"]).status.success());
    assert_ne!(std::fs::read_to_string(dir.join("ca.pem")).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}
