//! `commerce token`: mints an HS256 token for local use, with the secret the server
//! verifies with: `--jwt-secret` / `COMMERCE_JWT_SECRET`, else the secret file in
//! the data directory (which `serve` and `token` create on first use).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::http::auth::{
    mint_hs256_with_kid, Claims, Role, DEFAULT_AUDIENCE, DEFAULT_ISSUER, HS256_SECRET_MIN_BYTES,
};
use crate::managed_pg::default_data_dir;

/// Name of the generated secret inside the data directory.
const SECRET_FILE: &str = "jwt-secret";
/// Longest token lifetime `token` mints: a year, in seconds.
const TTL_MAX_SECS: u64 = 366 * 24 * 60 * 60;

#[derive(Debug, Clone, Args)]
pub struct DataDirArg {
    /// Folder for the managed PostgreSQL cluster and the generated JWT secret
    /// [default: /var/lib/commerce as root, else ~/.local/share/commerce]
    #[arg(long, env = "COMMERCE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArg {
    pub fn resolve(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

#[derive(Debug, Clone, Args)]
pub struct SecretArg {
    /// HS256 secret that signs and verifies tokens, at least 32 bytes [default: the
    /// secret in DATA_DIR/jwt-secret, generated on first use]
    #[arg(
        long,
        env = "COMMERCE_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub jwt_secret: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The role the token grants.
    #[arg(long, value_enum)]
    pub role: Role,
    /// The subject: a customer's id (any stable string; `guest:<uuid>` for a guest),
    /// or a staff member's name.
    #[arg(long)]
    pub sub: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
    /// The key id to put in the token's header, when the server selects keys by kid
    /// (`serve --jwt-key KID=hs256:FILE`); sign with that key's secret.
    #[arg(long)]
    pub kid: Option<String>,
    /// The issuer (`iss`) the server requires (`serve --jwt-issuer`).
    #[arg(long, env = "COMMERCE_JWT_ISSUER", default_value = DEFAULT_ISSUER)]
    pub iss: String,
    /// The audience (`aud`) the server requires (`serve --jwt-audience`).
    #[arg(long, env = "COMMERCE_JWT_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub aud: String,
    #[command(flatten)]
    pub secret: SecretArg,
    #[command(flatten)]
    pub data_dir: DataDirArg,
}

pub fn run(args: TokenArgs) -> Result<()> {
    if args.ttl_secs == 0 || args.ttl_secs > TTL_MAX_SECS {
        bail!("--ttl-secs must be between 1 and {TTL_MAX_SECS}");
    }
    let secret = hs256_secret(args.secret.jwt_secret.as_deref(), &args.data_dir.resolve())?;
    let claims = Claims {
        iss: args.iss,
        aud: args.aud,
        ..claims_for(args.role, args.sub, args.ttl_secs)
    };
    println!(
        "{}",
        mint_hs256_with_kid(&secret, args.kid.as_deref(), &claims)?
    );
    Ok(())
}

fn claims_for(role: Role, sub: String, ttl_secs: u64) -> Claims {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    Claims::new(sub, role, now + ttl_secs)
}

/// An HS256 token for `sub` in `role`, valid from now for `ttl_secs`: what
/// `commerce token` prints and what the demo's shoppers and staff carry.
pub fn mint(secret: &[u8], role: Role, sub: String, ttl_secs: u64) -> Result<String> {
    Ok(mint_hs256_with_kid(
        secret,
        None,
        &claims_for(role, sub, ttl_secs),
    )?)
}

/// The HS256 secret: `explicit` if given, else the one in `data_dir`'s secret file,
/// generated (256 random bits, hex, mode 0600) if there is none.
pub fn hs256_secret(explicit: Option<&str>, data_dir: &Path) -> Result<Vec<u8>> {
    if let Some(secret) = explicit {
        if secret.len() < HS256_SECRET_MIN_BYTES {
            bail!("the JWT secret must be at least {HS256_SECRET_MIN_BYTES} bytes long");
        }
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim().as_bytes().to_vec();
            if secret.len() < HS256_SECRET_MIN_BYTES {
                bail!(
                    "{} holds a secret shorter than {HS256_SECRET_MIN_BYTES} bytes",
                    path.display()
                );
            }
            return Ok(secret);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    // Two v4 UUIDs: 244 bits from the operating system's random source.
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    match created {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("commerce: generated a JWT secret in {}", path.display());
            Ok(secret.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => hs256_secret(None, data_dir),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}
