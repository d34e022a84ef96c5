//! The `oidc-authz` binary: parse the command line, load the config (exit 64 when it is bad), serve.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use oidc_authz::config::{CONFIG_ENV, Config};
use oidc_authz::envoy_config;
use oidc_authz::server::{Server, shutdown_signal};
use oidc_authz::telemetry::init_logging;

/// Exit status for a bad configuration (EX_CONFIG is 78; 64 is EX_USAGE, the contract's choice).
const EXIT_BAD_CONFIG: u8 = 64;
/// `import-kong`: a security-relevant Kong parameter could not be mapped (EX_DATAERR).
const EXIT_IMPORT_UNSAFE: u8 = 65;

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
    /// Print the Envoy side of a config: the ext_authz filter (only the headers the policies read) and the
    /// per-route snippets; with --offload-bearer, jwt_authn + RBAC for bearer-only policies Envoy can express.
    EnvoyConfig {
        /// Config file (TOML, or YAML by extension).
        #[arg(long, short, env = CONFIG_ENV)]
        config: PathBuf,
        /// Verify bearer tokens in Envoy (jwt_authn + RBAC) where every rule of the policy can be expressed there.
        #[arg(long)]
        offload_bearer: bool,
        /// Envoy's cluster of the oidc-authz replicas.
        #[arg(long, default_value = "oidc_authz")]
        cluster: String,
        /// The ext_authz gRPC timeout in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Output format.
        #[arg(long, value_enum, default_value = "yaml")]
        format: Format,
    },
    /// Import a Kong declarative config (decK YAML or JSON) with openid-connect plugins: writes the oidc-authz
    /// config and Envoy's routes, lists every parameter not carried over on stderr. Exit 0 when everything that
    /// restricts access was mapped, 65 when not (the outputs are still written), 64 when FILE cannot be read.
    ImportKong {
        /// The decK file (YAML or JSON).
        file: PathBuf,
        /// Write `oidc-authz.toml` and `envoy-routes.yaml` into this directory (default: both to stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `import-kong FILE [--out DIR]`.
fn import_kong(file: &std::path::Path, out: Option<&std::path::Path>) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let import = match oidc_authz::kong::import(&text) {
        Ok(i) => i,
        // Not the input's fault: nothing is written, like a failure to write into --out.
        Err(e @ oidc_authz::kong::ImportError::Output(_)) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    for n in &import.notes {
        eprintln!("{}: {n}", file.display());
    }
    match out {
        Some(dir) => {
            // Owner-only: the config holds the client secret and fresh session secrets.
            let write = |name: &str, text: &str| {
                use std::io::Write;
                let path = dir.join(name);
                let mut options = std::fs::OpenOptions::new();
                // Not truncated on open: an existing file (mode 0644, say) is made 0600 before it is emptied and
                // gets the secrets (`mode` applies only to a file the open creates).
                options.write(true).create(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut f = options.open(&path)?;
                #[cfg(unix)]
                f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                f.set_len(0)?;
                f.write_all(text.as_bytes())?;
                Ok::<_, std::io::Error>(path)
            };
            for (name, text) in [
                ("oidc-authz.toml", &import.config_toml),
                ("envoy-routes.yaml", &import.envoy_yaml),
            ] {
                match write(name, text) {
                    Ok(path) => eprintln!("wrote {}", path.display()),
                    Err(e) => {
                        eprintln!("{}: {e}", dir.join(name).display());
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
        None => {
            println!("# ===== oidc-authz.toml =====");
            println!("{}", import.config_toml);
            println!("# ===== envoy-routes.yaml =====");
            println!("{}", import.envoy_yaml);
        }
    }
    if import.has_errors() {
        eprintln!(
            "{}: security-relevant Kong settings were not imported (ERROR lines above): exit {EXIT_IMPORT_UNSAFE}",
            file.display()
        );
        return ExitCode::from(EXIT_IMPORT_UNSAFE);
    }
    ExitCode::SUCCESS
}

/// The output format of `envoy-config`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    /// Block YAML to paste into an Envoy config.
    Yaml,
    /// JSON (for scripts).
    Json,
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
        Command::ImportKong { file, out } => import_kong(&file, out.as_deref()),
        Command::EnvoyConfig {
            config,
            offload_bearer,
            cluster,
            timeout_ms,
            format,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = envoy_config::Options {
                cluster,
                timeout_ms,
                offload_bearer,
                ..Default::default()
            };
            let out = envoy_config::generate(&cfg, &opts);
            for note in &out.notes {
                eprintln!("{}: {note}", config.display());
            }
            match format {
                Format::Yaml => {
                    println!(
                        "# generated by `oidc-authz envoy-config` from {}: paste http_filters into the\n\
                         # http_connection_manager, each per_route entry into the typed_per_filter_config of the routes\n\
                         # of that policy, and routes (paths that need settings of their own) before them",
                        envoy_config::comment(&config.display().to_string())
                    );
                    for note in &out.notes {
                        println!("# {}", envoy_config::comment(note));
                    }
                    print!("{}", envoy_config::to_yaml(&out.doc));
                }
                Format::Json => println!("{:#}", out.doc),
            }
            ExitCode::SUCCESS
        }
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
