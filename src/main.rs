//! The `oidc-authz` binary: parse the command line, load the config (exit 64 when it is bad), serve.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use oidc_authz::config::{CONFIG_ENV, Config};
use oidc_authz::server::{Server, shutdown_signal};
use oidc_authz::telemetry::init_logging;

/// Exit status for a bad configuration (EX_CONFIG is 78; 64 is EX_USAGE, the contract's choice).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "oidc-authz",
    version,
    about = "OpenID Connect for any Envoy, as an ext_authz gRPC service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ext_authz Check on server.grpc_addr and /healthz, /readyz, /metrics on server.admin_addr.
    Serve {
        /// Config file (TOML, or YAML by extension).
        #[arg(long, short, env = CONFIG_ENV)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 when valid, 64 with every error listed when not.
    CheckConfig {
        /// Config file (TOML, or YAML by extension).
        #[arg(long, short, env = CONFIG_ENV)]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    eprintln!("{}: warning: {w}", config.display());
                }
                println!(
                    "{}: ok ({} provider(s), {} polic(ies), {} route(s))",
                    config.display(),
                    cfg.providers.len(),
                    cfg.policies.len(),
                    cfg.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Held until the server stops: dropping it writes out the lines still queued.
            let _logs = init_logging(cfg.server.log_format);
            for w in &cfg.warnings {
                tracing::warn!(config = %config.display(), "{w}");
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                let server = match Server::bind(cfg).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start");
                        return ExitCode::FAILURE;
                    }
                };
                match server.run(shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = %e, "server failed");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}
