//! `ferry-certs`: makes a development CA, a gateway certificate and agent certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferry_certs::{generate, Options};

/// Makes a development CA and the certificates a Ferry gateway and its agents need for TLS
/// (and mutual TLS). For production, any PEM certificate chain and key work instead.
#[derive(Debug, Parser)]
#[command(name = "ferry-certs", version, about)]
struct Args {
    /// Directory to write the files into (created if needed).
    #[arg(long, env = "FERRY_CERTS_OUT", value_name = "DIR")]
    out: PathBuf,

    /// DNS names and IP addresses agents use to reach the gateway (comma-separated or
    /// repeated); the gateway certificate is valid for exactly these.
    #[arg(
        long = "name",
        env = "FERRY_CERTS_NAME",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,::1"
    )]
    names: Vec<String>,

    /// Agent certificates to make (agent.pem, then agent-2.pem ...).
    #[arg(long, env = "FERRY_CERTS_AGENTS", default_value_t = 1)]
    agents: usize,

    /// Days the gateway and agent certificates stay valid.
    #[arg(long, env = "FERRY_CERTS_DAYS", default_value_t = 825)]
    days: u32,

    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = Options {
        names: args.names.iter().map(|n| n.trim().to_owned()).collect(),
        agents: args.agents,
        days: args.days,
    };
    let written = generate(&options).and_then(|set| set.write(&args.out, args.force));
    match written {
        Ok(paths) => {
            for p in &paths {
                println!("wrote {}", p.display());
            }
            let dir = args.out.display();
            println!();
            println!("gateway: ferry-gateway --tls-cert {dir}/gateway.pem --tls-key {dir}/gateway.key [--tls-client-ca {dir}/ca.pem]");
            println!("agent:   ferry-agent --tls-ca {dir}/ca.pem [--tls-cert {dir}/agent.pem --tls-key {dir}/agent.key]");
            println!(
                "The gateway certificate is valid for: {}",
                options.names.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-certs: error: {e}");
            ExitCode::FAILURE
        }
    }
}
