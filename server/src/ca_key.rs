//! The key-encryption key (KEK) of the mesh CAs' private keys: configured (`ca_key_file` or
//! `ca_key`, i.e. `SWITCHBOARD_CA_KEY`), or generated into `data_dir/ca-key` for the
//! single-node SQLite default only (replicas on PostgreSQL must share one key, so there it
//! must be configured). Before serving, the key is checked against the store: every stored
//! CA must have been sealed with it, and one must open.

use crate::settings::Settings;
use anyhow::{Context, Result, bail};
use switchboard_pki::{Kek, MeshCa};
use switchboard_store::Store;

/// The KEK to serve with, checked against the CAs in `store`.
pub async fn load(s: &Settings, store: &Store) -> Result<Kek> {
    let (ids, sample) = store
        .ca_key_check()
        .await
        .context("cannot read the mesh CAs from the store")?;
    let kek = match configured(s)? {
        Some(k) => k,
        None => default_key(s, !ids.is_empty())?,
    };
    if let Some(other) = ids.iter().find(|id| *id != kek.id()) {
        bail!(
            "the store holds mesh CA keys sealed with key-encryption key {other}, but the \
             configured key (ca_key_file or SWITCHBOARD_CA_KEY) is {}: configure the key the CAs \
             were created with",
            kek.id()
        );
    }
    if let Some(ca) = sample {
        MeshCa::unseal(ca.sealed(), &kek).with_context(|| {
            format!(
                "the configured CA key (ca_key_file or SWITCHBOARD_CA_KEY) does not open the CA \
                 of mesh {}/{}",
                ca.tenant, ca.mesh
            )
        })?;
    }
    Ok(kek)
}

fn configured(s: &Settings) -> Result<Option<Kek>> {
    match (s.ca_key_file.is_empty(), s.ca_key.is_empty()) {
        (false, false) => bail!("set one of ca_key_file and ca_key (SWITCHBOARD_CA_KEY), not both"),
        (false, true) => {
            let text = std::fs::read_to_string(&s.ca_key_file)
                .with_context(|| format!("ca_key_file: cannot read {}", s.ca_key_file))?;
            let kek =
                Kek::parse(&text).with_context(|| format!("ca_key_file {}", s.ca_key_file))?;
            Ok(Some(kek))
        }
        (true, false) => Ok(Some(
            Kek::parse(&s.ca_key).context("ca_key (SWITCHBOARD_CA_KEY)")?,
        )),
        (true, true) => Ok(None),
    }
}

/// The SQLite default's key file: read, or generated when the store has no CA yet.
fn default_key(s: &Settings, cas_exist: bool) -> Result<Kek> {
    if !s.database_url.is_empty() {
        bail!(
            "ca_key_file or SWITCHBOARD_CA_KEY is required with database_url set: replicas \
             sharing a database must share the key that encrypts the mesh CAs' keys \
             (create one with `openssl rand -hex 32`)"
        );
    }
    let path = s.data_dir.join("ca-key");
    match std::fs::read_to_string(&path) {
        Ok(text) => return Kek::parse(&text).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    if cas_exist {
        bail!(
            "the store holds mesh CAs but {} is missing and neither ca_key_file nor \
             SWITCHBOARD_CA_KEY is set: restore the key the CAs were created with",
            path.display()
        );
    }
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("cannot create data_dir {}", s.data_dir.display()))?;
    let (kek, text) = Kek::generate().context("cannot generate the CA key")?;
    crate::write_private(&path, &text)?;
    println!(
        "switchboard: generated the key that encrypts the mesh CAs' keys into {} (back it up; \
         without it the CAs cannot be used)",
        path.display()
    );
    Ok(kek)
}
