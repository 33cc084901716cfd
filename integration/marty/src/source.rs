//! Finds the filter's configuration in the files people actually have: a plugin JSON, an
//! Envoy bootstrap (the Wasm filter's `configuration`), or Kubernetes YAML with Istio
//! `WasmPlugin`s (`pluginConfig`). Each configuration found is a [`PluginSource`]: the bytes
//! the filter would receive, the VM variables the file sets, and the route metadata next to it.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

/// The key under which route metadata carries the filter's per-route entry.
pub const METADATA_NAMESPACE: &str = "marty.resilience";
/// The filter's `root_id` in every shipped bootstrap and manifest.
const ROOT_ID: &str = "marty_resilience";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// Where in a file a configuration was found, for messages.
#[derive(Clone, Debug)]
pub struct Location {
    pub file: PathBuf,
    /// `None` for a plain plugin JSON; else "document 2, WasmPlugin shop/marty-resilience" or
    /// the bootstrap path of the filter.
    pub within: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.within {
            None => write!(f, "{}", self.file.display()),
            Some(w) => write!(f, "{} [{w}]", self.file.display()),
        }
    }
}

/// One plugin configuration as the filter would receive it.
#[derive(Clone, Debug)]
pub struct PluginSource {
    pub location: Location,
    /// The `configuration` bytes (Envoy passes a StringValue's string verbatim; Istio passes
    /// `pluginConfig` as JSON).
    pub config: Vec<u8>,
    /// VM variables the file sets inline (`key_values`, `vmConfig.env` with a value).
    pub env: Vec<(String, String)>,
    /// Variables the VM takes from the proxy's environment (`host_env_keys`, `valueFrom:
    /// HOST`): unknown here unless given with `--env`.
    pub host_env: Vec<String>,
    /// Routes in the same document whose metadata carries a `marty.resilience` entry.
    pub route_metadata: Vec<(String, Value)>,
    /// Why the configuration could not be read at all (not the filter's verdict).
    pub unreadable: Option<String>,
    /// For a rejection case, the error it documents.
    pub documented_error: Option<String>,
}

/// What a file held.
pub struct FileContents {
    pub sources: Vec<PluginSource>,
    /// Documents with nothing for the filter, described for the `--verbose` listing.
    pub skipped: Vec<String>,
}

/// Reads `path` and finds every configuration of the filter in it.
pub fn read(path: &Path) -> Result<FileContents> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        // A bootstrap in JSON is searched like YAML; anything else is a plugin JSON and goes
        // to the filter's parser byte for byte, so its own JSON errors are the ones reported.
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if let Some(case) = parsed.as_ref().and_then(invalid_case) {
            return Ok(FileContents {
                sources: vec![case_source(path, case)],
                skipped: Vec::new(),
            });
        }
        let is_bootstrap = parsed
            .as_ref()
            .is_some_and(|v| v.get("static_resources").is_some() || v.get("kind").is_some());
        if !is_bootstrap {
            return Ok(FileContents {
                sources: vec![PluginSource {
                    location: Location {
                        file: path.to_path_buf(),
                        within: None,
                    },
                    config: bytes,
                    env: Vec::new(),
                    host_env: Vec::new(),
                    route_metadata: Vec::new(),
                    unreadable: None,
                    documented_error: None,
                }],
                skipped: Vec::new(),
            });
        }
    }
    let text =
        String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
    let mut contents = FileContents {
        sources: Vec::new(),
        skipped: Vec::new(),
    };
    let documents = yaml_documents(&text).with_context(|| format!("parse {}", path.display()))?;
    let many = documents.len() > 1;
    for (index, doc) in documents.iter().enumerate() {
        let number = index + 1;
        let label = document_label(doc, number, many);
        let before = contents.sources.len();
        if doc.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
            if let Some(source) = wasm_plugin(path, doc, &label) {
                contents.sources.push(source);
            }
        } else {
            let metadata = route_metadata(doc);
            let mut found = Vec::new();
            find_wasm_configs(doc, "", &mut found);
            for (json_path, config) in found {
                let within = match &label {
                    Some(l) => format!("{l}, {json_path}"),
                    None => json_path,
                };
                let mut source = envoy_wasm_config(path, config, within);
                source.route_metadata = metadata.clone();
                contents.sources.push(source);
            }
        }
        if contents.sources.len() == before {
            contents
                .skipped
                .push(label.unwrap_or_else(|| format!("document {number}")));
        }
    }
    Ok(contents)
}

/// The repository's rejection cases (`config/invalid/*.json`): `{"config": <configuration>,
/// "error": "<what the filter says>"}`. Their `config` is the configuration.
fn invalid_case(value: &Value) -> Option<(&Value, &str)> {
    let map = value.as_object()?;
    let known = ["config", "error", "schema_accepts"];
    if !map.keys().all(|k| known.contains(&k.as_str())) {
        return None;
    }
    Some((map.get("config")?, map.get("error")?.as_str()?))
}

fn case_source(path: &Path, (config, error): (&Value, &str)) -> PluginSource {
    PluginSource {
        location: Location {
            file: path.to_path_buf(),
            within: Some("its \"config\"".to_string()),
        },
        // Compact JSON, as the core's own test of these files and the Envoy comparison pass it.
        config: config.to_string().into_bytes(),
        env: Vec::new(),
        host_env: Vec::new(),
        route_metadata: Vec::new(),
        unreadable: None,
        documented_error: Some(error.to_string()),
    }
}

fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// "document 2, WasmPlugin shop/marty-resilience" (only the kind and name when one document).
fn document_label(doc: &Value, number: usize, many: bool) -> Option<String> {
    let kind = doc.get("kind").and_then(Value::as_str);
    let name = doc.pointer("/metadata/name").and_then(Value::as_str);
    let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str);
    let what = match (kind, name, namespace) {
        (Some(k), Some(n), Some(ns)) => Some(format!("{k} {ns}/{n}")),
        (Some(k), Some(n), None) => Some(format!("{k} {n}")),
        (Some(k), None, _) => Some(k.to_string()),
        _ => None,
    };
    match (many, what) {
        (true, Some(w)) => Some(format!("document {number}, {w}")),
        (true, None) => Some(format!("document {number}")),
        (false, w) => w,
    }
}

/// An Istio `WasmPlugin`, when it is this filter's (by `pluginName` or module URL).
fn wasm_plugin(path: &Path, doc: &Value, label: &Option<String>) -> Option<PluginSource> {
    let spec = doc.get("spec")?;
    let plugin_name = spec.get("pluginName").and_then(Value::as_str).unwrap_or("");
    let url = spec.get("url").and_then(Value::as_str).unwrap_or("");
    if plugin_name != ROOT_ID && !url.contains("marty") {
        return None;
    }
    let mut env = Vec::new();
    let mut host_env = Vec::new();
    for var in spec
        .pointer("/vmConfig/env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = var.get("name").and_then(Value::as_str) else {
            continue;
        };
        match var.get("valueFrom").and_then(Value::as_str) {
            Some("HOST") => host_env.push(name.to_string()),
            _ => env.push((
                name.to_string(),
                var.get("value")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )),
        }
    }
    // Istio hands `pluginConfig` to the VM as JSON text; no pluginConfig means no configuration.
    let config = spec
        .get("pluginConfig")
        .map(|c| c.to_string().into_bytes())
        .unwrap_or_default();
    Some(PluginSource {
        location: Location {
            file: path.to_path_buf(),
            within: label.clone(),
        },
        config,
        env,
        host_env,
        route_metadata: Vec::new(),
        unreadable: None,
        documented_error: None,
    })
}

/// Every Wasm `PluginConfig` of this filter (an object with `vm_config` and a `root_id` or
/// module that names it), anywhere in an Envoy bootstrap or an `EnvoyFilter` patch.
fn find_wasm_configs<'a>(value: &'a Value, at: &str, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            if map.contains_key("vm_config") && is_ours(value) {
                out.push((at.to_string(), value));
                return;
            }
            for (key, child) in map {
                let here = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                // Name listeners and filters by their names: shorter than indices.
                let named = match child.get("name").and_then(Value::as_str) {
                    Some(name) if !child.is_array() => format!("{here}({name})"),
                    _ => here,
                };
                find_wasm_configs(child, &named, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let here = match child.get("name").and_then(Value::as_str) {
                    Some(name) => format!("{at}[{name}]"),
                    None => format!("{at}[{i}]"),
                };
                find_wasm_configs(child, &here, out);
            }
        }
        _ => {}
    }
}

fn is_ours(config: &Value) -> bool {
    let root_id = config.get("root_id").and_then(Value::as_str);
    let code = config
        .pointer("/vm_config/code")
        .map(Value::to_string)
        .unwrap_or_default();
    root_id == Some(ROOT_ID) || code.contains("marty_resilience")
}

fn envoy_wasm_config(path: &Path, config: &Value, within: String) -> PluginSource {
    let mut env = Vec::new();
    let vars = config.pointer("/vm_config/environment_variables");
    if let Some(map) = vars
        .and_then(|v| v.get("key_values"))
        .and_then(Value::as_object)
    {
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            env.push((k.clone(), text));
        }
    }
    let host_env = vars
        .and_then(|v| v.get("host_env_keys"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let (bytes, unreadable) = match config.get("configuration") {
        None => (Vec::new(), None),
        Some(any) => {
            let ty = any.get("@type").and_then(Value::as_str).unwrap_or("");
            match any.get("value") {
                Some(Value::String(s)) if ty == STRING_VALUE => (s.clone().into_bytes(), None),
                _ => (
                    Vec::new(),
                    Some(format!(
                        "configuration is a {ty:?} with no string value; the filter reads a \
                         {STRING_VALUE} holding JSON"
                    )),
                ),
            }
        }
    };
    PluginSource {
        location: Location {
            file: path.to_path_buf(),
            within: Some(within),
        },
        config: bytes,
        env,
        host_env,
        route_metadata: Vec::new(),
        unreadable,
        documented_error: None,
    }
}

/// Routes (objects with a `match` and a `metadata.filter_metadata["marty.resilience"]`) by
/// name; unnamed routes are listed under "".
fn route_metadata(doc: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    collect_route_metadata(doc, &mut out);
    out
}

fn collect_route_metadata(value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            if map.contains_key("match") {
                if let Some(entry) = value
                    .get("metadata")
                    .and_then(|m| m.get("filter_metadata"))
                    .and_then(|m| m.get(METADATA_NAMESPACE))
                {
                    let name = value.get("name").and_then(Value::as_str).unwrap_or("");
                    out.push((name.to_string(), entry.clone()));
                }
            }
            map.values().for_each(|v| collect_route_metadata(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_route_metadata(v, out)),
        _ => {}
    }
}

/// `KEY=VALUE` from the command line.
pub fn parse_env(pair: &str) -> Result<(String, String), String> {
    pair.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {pair:?}"))
}

/// The file's inline variables, then the command line's (which win, as a later `--env`
/// would in the proxy's environment).
pub fn merged_env(source: &PluginSource, cli: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = source
        .env
        .iter()
        .filter(|(k, _)| !cli.iter().any(|(c, _)| c == k))
        .cloned()
        .collect();
    env.extend(cli.iter().cloned());
    env
}
