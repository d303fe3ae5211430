//! Builds the protobuf descriptor set that gRPC reflection serves.
//!
//! envoy-types ships every Envoy proto as one encoded `FileDescriptorSet`
//! (`src/generated/types.bin`, ~3 MB) but does not export it. We locate the
//! envoy-types package with `cargo metadata` (so no third-party file is copied
//! into this repository), keep only the files needed to describe the xDS
//! services we serve and the resource/extension types they carry in `Any`
//! (plus everything those files import, transitively, down to
//! `google/protobuf/*.proto`), and write the result to
//! `$OUT_DIR/xds_descriptor_set.bin`.
//!
//! Files are copied byte for byte (only `source_code_info`, i.e. comments, is
//! dropped): decoding into `prost_types` and re-encoding would silently drop
//! custom options such as `(validate.rules)` that reflection clients show.
//! Any problem fails the build with a message: an empty or partial set would
//! only show up later as a reflection client that cannot decode a response.

use std::collections::{HashMap, VecDeque};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};
use prost_types::{DescriptorProto, FileDescriptorProto};
use serde_json::Value;

#[allow(dead_code)]
#[path = "src/service_name.rs"]
mod service_name;
#[allow(dead_code)]
#[path = "src/type_url.rs"]
mod type_url;

type BoxError = Box<dyn Error>;

/// Output file name inside `OUT_DIR`; `src/descriptor.rs` includes it.
const OUT_FILE: &str = "xds_descriptor_set.bin";
/// `FileDescriptorSet.file`.
const SET_FILE_TAG: u32 = 1;
/// `FileDescriptorProto.source_code_info`: comments and spans. Reflection
/// clients do not need them and they are ~80% of envoy-types' `types.bin`.
const SOURCE_CODE_INFO_TAG: u32 = 9;

fn main() {
    // Display, not the Debug form `main() -> Result` would print: the
    // messages span lines (they quote cargo's stderr).
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), BoxError> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/service_name.rs");
    println!("cargo:rerun-if-changed=src/type_url.rs");

    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);

    let metadata = cargo_metadata(&manifest_dir)?;
    // A different envoy-types version resolved in Cargo.lock must rebuild the
    // set; `types.bin` of the old version does not change, so watch the lock.
    if let Some(root) = metadata["workspace_root"].as_str() {
        let lock = Path::new(root).join("Cargo.lock");
        if lock.exists() {
            println!("cargo:rerun-if-changed={}", lock.display());
        }
    }
    let envoy_dir = envoy_types_dir(&metadata, &manifest_dir)?;
    let types_bin = envoy_dir.join("src").join("generated").join("types.bin");
    println!("cargo:rerun-if-changed={}", types_bin.display());

    let encoded = fs::read(&types_bin).map_err(|e| {
        format!(
            "cannot read {} ({e}); envoy-types no longer ships its descriptor set there, \
             update xds-proto/build.rs",
            types_bin.display()
        )
    })?;
    let trimmed = trim(&encoded).map_err(|e| format!("{}: {e}", types_bin.display()))?;
    let out = out_dir.join(OUT_FILE);
    fs::write(&out, trimmed).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(())
}

fn env_var(name: &str) -> Result<String, BoxError> {
    env::var(name).map_err(|e| format!("environment variable {name}: {e}").into())
}

/// Runs `$CARGO metadata --format-version 1 --offline --filter-platform
/// $TARGET` in this crate's directory.
///
/// `cargo metadata` wants the source of every package in the resolve, but a
/// build only downloads what it compiles: without `--filter-platform` it
/// fails on a fresh machine over Windows-only crates, and after
/// `cargo build -p switchboard-xds-proto` alone it still lacks the packages of
/// the other workspace members. In that case we retry once without
/// `--offline`, which fetches exactly what `cargo fetch` would, before giving
/// up with both errors.
fn cargo_metadata(manifest_dir: &Path) -> Result<Value, BoxError> {
    let cargo = env_var("CARGO")?;
    let target = env_var("TARGET")?;
    let base = [
        "metadata",
        "--format-version",
        "1",
        "--filter-platform",
        target.as_str(),
    ];
    let run = |extra: &[&str]| -> Result<Vec<u8>, String> {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let output = Command::new(&cargo)
            .args(&args)
            .current_dir(manifest_dir)
            .output()
            .map_err(|e| format!("cannot run `{cargo} metadata`: {e}"))?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(format!(
                "`{cargo} {}` failed ({}):\n{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            ))
        }
    };
    let stdout = match run(&["--offline"]) {
        Ok(stdout) => stdout,
        Err(offline) => match run(&[]) {
            Ok(stdout) => {
                println!(
                    "cargo:warning=cargo metadata --offline failed, fetched the missing packages"
                );
                stdout
            }
            Err(online) => {
                return Err(format!(
                    "cannot locate the envoy-types package (needed for its descriptor set); \
                     try `cargo fetch`.\n{offline}\n{online}"
                )
                .into());
            }
        },
    };
    serde_json::from_slice(&stdout)
        .map_err(|e| format!("cannot parse `cargo metadata` output: {e}").into())
}

/// The directory of the envoy-types package this crate depends on. Follows
/// the resolve graph from our own package, so a second envoy-types version
/// elsewhere in the workspace cannot be picked by mistake.
fn envoy_types_dir(metadata: &Value, manifest_dir: &Path) -> Result<PathBuf, BoxError> {
    let packages = metadata["packages"]
        .as_array()
        .ok_or("`cargo metadata` output has no `packages`")?;
    let candidates: Vec<&Value> = packages
        .iter()
        .filter(|p| p["name"] == "envoy-types")
        .collect();
    let our_manifest = manifest_dir.join("Cargo.toml");
    let our_id = packages
        .iter()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(our_manifest.as_path()))
        .and_then(|p| p["id"].as_str());
    let our_deps: Vec<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["id"].as_str().is_some() && n["id"].as_str() == our_id)
        .flat_map(|n| n["dependencies"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let chosen = match candidates
        .iter()
        .find(|p| p["id"].as_str().is_some_and(|id| our_deps.contains(&id)))
    {
        Some(p) => *p,
        None if candidates.len() == 1 => candidates[0],
        None => {
            return Err(format!(
                "`cargo metadata` lists {} envoy-types packages and none is a resolved \
                 dependency of {}",
                candidates.len(),
                our_manifest.display()
            )
            .into());
        }
    };
    let manifest = chosen["manifest_path"]
        .as_str()
        .ok_or("envoy-types package has no manifest_path in `cargo metadata` output")?;
    Path::new(manifest)
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("envoy-types manifest path {manifest} has no parent").into())
}

/// Keeps the files defining our services and `Any` payload types plus their
/// transitive imports, in the original (dependency-first) order.
fn trim(encoded: &[u8]) -> Result<Vec<u8>, BoxError> {
    let raw_files = split_set(encoded)?;
    let mut files = Vec::with_capacity(raw_files.len());
    for raw in &raw_files {
        files.push(FileDescriptorProto::decode(*raw)?);
    }

    let mut by_name = HashMap::new();
    let mut by_symbol = HashMap::new();
    for (i, file) in files.iter().enumerate() {
        by_name.insert(file.name(), i);
        let package = file.package();
        for service in &file.service {
            by_symbol.insert(qualify(package, service.name()), i);
        }
        for message in &file.message_type {
            index_message(
                &qualify(package, message.name()),
                message,
                i,
                &mut by_symbol,
            );
        }
    }

    let roots = service_name::ALL
        .iter()
        .copied()
        .chain(type_url::ALL.iter().map(|url| type_url::message_name(url)));
    let mut keep = vec![false; files.len()];
    let mut queue = VecDeque::new();
    for symbol in roots {
        let i = *by_symbol.get(symbol).ok_or_else(|| {
            format!("no file defines {symbol}; fix src/type_url.rs or src/service_name.rs")
        })?;
        queue.push_back(i);
    }
    while let Some(i) = queue.pop_front() {
        if std::mem::replace(&mut keep[i], true) {
            continue;
        }
        for dep in &files[i].dependency {
            let j = *by_name.get(dep.as_str()).ok_or_else(|| {
                format!(
                    "{} imports {dep}, which the set does not contain",
                    files[i].name()
                )
            })?;
            queue.push_back(j);
        }
    }

    let mut out = Vec::new();
    for (raw, _) in raw_files.iter().zip(&keep).filter(|(_, k)| **k) {
        let file = drop_field(raw, SOURCE_CODE_INFO_TAG)?;
        encode_key(SET_FILE_TAG, WireType::LengthDelimited, &mut out);
        encode_varint(file.len() as u64, &mut out);
        out.extend_from_slice(&file);
    }
    Ok(out)
}

fn qualify(package: &str, name: &str) -> String {
    if package.is_empty() {
        name.to_owned()
    } else {
        format!("{package}.{name}")
    }
}

fn index_message(
    full_name: &str,
    message: &DescriptorProto,
    file: usize,
    by_symbol: &mut HashMap<String, usize>,
) {
    for nested in &message.nested_type {
        index_message(&qualify(full_name, nested.name()), nested, file, by_symbol);
    }
    by_symbol.insert(full_name.to_owned(), file);
}

/// Splits an encoded `FileDescriptorSet` into the encoded bytes of each file,
/// without decoding them, so they can be copied unchanged.
fn split_set(mut buf: &[u8]) -> Result<Vec<&[u8]>, BoxError> {
    let mut files = Vec::new();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag != SET_FILE_TAG || wire_type != WireType::LengthDelimited {
            return Err(format!("unexpected field {tag} in FileDescriptorSet").into());
        }
        let len = usize::try_from(decode_varint(&mut buf)?)?;
        if len > buf.len() {
            return Err("truncated FileDescriptorSet".into());
        }
        let (file, rest) = buf.split_at(len);
        files.push(file);
        buf = rest;
    }
    Ok(files)
}

/// Copies an encoded message without the top-level field `drop_tag`.
fn drop_field(mut buf: &[u8], drop_tag: u32) -> Result<Vec<u8>, BoxError> {
    let mut out = Vec::with_capacity(buf.len());
    while !buf.is_empty() {
        let start = buf;
        let (tag, wire_type) = decode_key(&mut buf)?;
        let skip = match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf)?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => usize::try_from(decode_varint(&mut buf)?)?,
            WireType::StartGroup | WireType::EndGroup => {
                return Err(
                    format!("unexpected group (field {tag}) in FileDescriptorProto").into(),
                );
            }
        };
        if skip > buf.len() {
            return Err("truncated FileDescriptorProto".into());
        }
        buf = &buf[skip..];
        if tag != drop_tag {
            out.extend_from_slice(&start[..start.len() - buf.len()]);
        }
    }
    Ok(out)
}
