//! Running the filter under Istio: the manifests in `envoy/istio/` and `scripts/package-oci`.
//!
//! - `envoy/istio/wasmplugin.yaml` validates against the `openAPIV3Schema` of Istio's
//!   `WasmPlugin` CRD (`integration/fixtures/istio/`, vendored from istio/api), read as the API
//!   server reads it under strict field validation (`kubectl apply`'s default), with the CRD's
//!   CEL rules (`x-kubernetes-validations`) mirrored here; broken copies are rejected, so the
//!   validation bites.
//! - Its `pluginConfig`, turned into JSON the way Istio turns it (a `google.protobuf.Struct`),
//!   with the VM environment Istio builds from `vmConfig.env`, is accepted by the filter's
//!   parser, and every route it names is a route Istio builds from
//!   `envoy/istio/virtualservice.yaml`.
//! - The stats settings (`proxy-config.yaml`, `stats-bootstrap.yaml`) let the filter's stats
//!   through and tag them as `envoy/envoy.yaml` does.
//! - `scripts/package-oci` writes an OCI image layout and tarball in the form Istio's image
//!   fetcher accepts (istio/istio `pkg/wasm/imagefetcher.go`, `extractOCIArtifactImage`).
//!
//! The last test runs the script on the built module (`./scripts/build`, or `$MARTY_WASM`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use jsonschema::Validator;
use marty_integration::{workspace_root, EnvoyConfig};
use marty_resilience_core::config::{Environment, Settings};
use regex::Regex;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

const PLUGIN: &str = "envoy/istio/wasmplugin.yaml";
const VIRTUAL_SERVICE: &str = "envoy/istio/virtualservice.yaml";
const PROXY_CONFIG: &str = "envoy/istio/proxy-config.yaml";
const STATS_BOOTSTRAP: &str = "envoy/istio/stats-bootstrap.yaml";
const CRD: &str = "integration/fixtures/istio/wasmplugin-crd.yaml";

const TOKEN_VAR: &str = "MARTY_RESILIENCE_FAILURE_INJECTION_HEADER_TRIGGER_TOKEN";

/// The CRD's `x-kubernetes-validations` rules that [`cel_errors`] mirrors, by message.
const MIRRORED_RULES: &[&str] = &[
    "wildcard not allowed in label value match",
    "wildcard not allowed in label key match",
    "key must not be empty",
    "cross namespace referencing is not currently supported",
    "url must have schema one of [http, https, file, oci]",
    "value may only be set when valueFrom is INLINE",
    "only one of targetRefs or selector can be set",
];

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const WASM_CONFIG_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
const WASM_LAYER_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

fn read_yaml(relative: &str) -> Value {
    let path = workspace_root().join(relative);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"))
}

fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{pointer} missing in {value:#}"))
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    at(value, pointer)
        .as_str()
        .unwrap_or_else(|| panic!("{pointer} is not a string"))
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The CRD as a JSON Schema

/// The served version of the CRD (`v1alpha1`) and its `openAPIV3Schema`.
fn crd_version() -> (String, Value) {
    let crd = read_yaml(CRD);
    assert_eq!(text(&crd, "/kind"), "CustomResourceDefinition");
    assert_eq!(text(&crd, "/spec/names/kind"), "WasmPlugin");
    let versions = at(&crd, "/spec/versions").as_array().expect("versions");
    let version = versions
        .iter()
        .find(|v| v["served"] == true && v["storage"] == true)
        .expect("a served storage version");
    (
        format!("{}/{}", text(&crd, "/spec/group"), text(version, "/name")),
        at(version, "/schema/openAPIV3Schema").clone(),
    )
}

/// A structural OpenAPI v3 schema of a CRD as a draft 2020-12 JSON Schema, with the API
/// server's reading of it: `nullable` admits null, `format: int32` bounds the integer, and an
/// object with `properties` rejects other fields unless it says
/// `x-kubernetes-preserve-unknown-fields` (strict field validation; the server would otherwise
/// drop them silently). The other `x-kubernetes-*` keywords are left out: the CEL rules are
/// checked by [`cel_errors`], the list-map keys do not apply to a single object.
fn to_json_schema(schema: &Value) -> Value {
    let Some(object) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in object {
        match key.as_str() {
            k if k.starts_with("x-kubernetes-") => {}
            "nullable" | "format" => {}
            "properties" => {
                let properties = value
                    .as_object()
                    .expect("properties is an object")
                    .iter()
                    .map(|(name, s)| (name.clone(), to_json_schema(s)))
                    .collect();
                out.insert(key.clone(), Value::Object(properties));
            }
            "items" | "additionalProperties" | "not" => {
                out.insert(key.clone(), to_json_schema(value));
            }
            "anyOf" | "allOf" | "oneOf" => {
                let list = value.as_array().expect("a list of schemas");
                out.insert(key.clone(), list.iter().map(to_json_schema).collect());
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    if object.get("nullable") == Some(&json!(true)) {
        if let Some(t) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
        }
    }
    if object.get("format") == Some(&json!("int32")) {
        out.entry("minimum").or_insert(json!(i32::MIN));
        out.entry("maximum").or_insert(json!(i32::MAX));
    }
    let preserve = object.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if object.contains_key("properties")
        && !preserve
        && !object.contains_key("additionalProperties")
    {
        out.insert("additionalProperties".into(), json!(false));
    }
    Value::Object(out)
}

/// The validator of a whole `WasmPlugin` document: the CRD schema, plus the fields every
/// Kubernetes object has (`apiVersion`, `kind`, `metadata`), which a CRD schema leaves implicit.
fn plugin_validator() -> Validator {
    let (api_version, schema) = crd_version();
    let mut root = to_json_schema(&schema);
    let properties = root["properties"].as_object_mut().expect("root properties");
    properties.insert("apiVersion".into(), json!({ "const": api_version }));
    properties.insert("kind".into(), json!({ "const": "WasmPlugin" }));
    properties.insert(
        "metadata".into(),
        json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": { "type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" },
                "namespace": { "type": "string" }
            }
        }),
    );
    root["required"] = json!(["apiVersion", "kind", "metadata", "spec"]);
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    jsonschema::meta::validate(&root).unwrap_or_else(|e| panic!("not a JSON Schema: {e}"));
    jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

/// The messages of every `x-kubernetes-validations` rule in a schema.
fn cel_rule_messages(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(rules) = map
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
            {
                out.extend(rules.iter().map(|r| text(r, "/message").to_string()));
            }
            map.values().for_each(|v| cel_rule_messages(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| cel_rule_messages(v, out)),
        _ => {}
    }
}

/// The CRD's CEL rules (`x-kubernetes-validations`), checked by hand on a `WasmPlugin`.
fn cel_errors(doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(spec) = doc.get("spec") else {
        return errors;
    };
    if let Some(labels) = spec
        .pointer("/selector/matchLabels")
        .and_then(Value::as_object)
    {
        for (key, value) in labels {
            if key.contains('*') {
                errors.push("wildcard not allowed in label key match".into());
            }
            if key.is_empty() {
                errors.push("key must not be empty".into());
            }
            if value.as_str().is_some_and(|v| v.contains('*')) {
                errors.push("wildcard not allowed in label value match".into());
            }
        }
    }
    let refs = spec.get("targetRef").into_iter().chain(
        spec.get("targetRefs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten(),
    );
    for target in refs {
        if target["namespace"].as_str().is_some_and(|n| !n.is_empty()) {
            errors.push("cross namespace referencing is not currently supported".into());
        }
    }
    if let Some((scheme, _)) = spec["url"].as_str().and_then(|u| u.split_once("://")) {
        if !["http", "https", "oci", "file"].contains(&scheme.to_ascii_lowercase().as_str()) {
            errors.push("url must have schema one of [http, https, file, oci]".into());
        }
    }
    for env in spec
        .pointer("/vmConfig/env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if env["valueFrom"] == "HOST" && env.get("value").is_some() {
            errors.push("value may only be set when valueFrom is INLINE".into());
        }
    }
    let targets = ["selector", "targetRef", "targetRefs"]
        .iter()
        .filter(|k| spec.get(**k).is_some())
        .count();
    if targets > 1 {
        errors.push("only one of targetRefs or selector can be set".into());
    }
    errors
}

/// Everything wrong with a `WasmPlugin` document: schema errors (`<path>: <message>`), then
/// CEL rule messages.
fn plugin_errors(validator: &Validator, doc: &Value) -> Vec<String> {
    let mut errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    errors.extend(cel_errors(doc));
    errors
}

#[test]
fn the_vendored_crd_has_no_rule_left_unchecked() {
    let (api_version, schema) = crd_version();
    assert_eq!(api_version, "extensions.istio.io/v1alpha1");
    let mut messages = BTreeSet::new();
    cel_rule_messages(&schema, &mut messages);
    let unchecked: Vec<_> = messages
        .iter()
        .filter(|m| !MIRRORED_RULES.contains(&m.as_str()))
        .collect();
    assert!(
        unchecked.is_empty(),
        "{CRD} has CEL rules this test does not mirror in cel_errors: {unchecked:?}"
    );
    assert!(
        messages.len() == MIRRORED_RULES.len(),
        "mirrored rules no longer in {CRD}: {:?}",
        MIRRORED_RULES
            .iter()
            .filter(|m| !messages.contains(**m))
            .collect::<Vec<_>>()
    );
}

#[test]
fn wasmplugin_validates_against_the_crd() {
    let validator = plugin_validator();
    let plugin = read_yaml(PLUGIN);
    let errors = plugin_errors(&validator, &plugin);
    assert!(errors.is_empty(), "{PLUGIN} is invalid: {errors:#?}");
    // What the comments in the file promise.
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_OPEN");
    assert_eq!(plugin["spec"]["phase"], "UNSPECIFIED_PHASE");
    assert!(text(&plugin, "/spec/url").starts_with("oci://"));

    // `priority` is nullable in the CRD.
    let mut null_priority = plugin.clone();
    null_priority["spec"]["priority"] = Value::Null;
    let errors = plugin_errors(&validator, &null_priority);
    assert!(errors.is_empty(), "priority: null rejected: {errors:?}");
}

#[test]
fn broken_wasmplugins_are_rejected() {
    let validator = plugin_validator();
    let plugin = read_yaml(PLUGIN);
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "unknown failStrategy",
            |d| d["spec"]["failStrategy"] = json!("BOGUS"),
            "/spec/failStrategy",
        ),
        (
            "priority of the wrong type",
            |d| d["spec"]["priority"] = json!("high"),
            "/spec/priority",
        ),
        (
            "priority beyond int32",
            |d| d["spec"]["priority"] = json!(2_147_483_648_i64),
            "/spec/priority",
        ),
        (
            "misspelt field",
            |d| {
                let spec = d["spec"].as_object_mut().expect("spec");
                let config = spec.remove("pluginConfig").expect("pluginConfig");
                spec.insert("pluginConfg".into(), config);
            },
            "pluginConfg",
        ),
        (
            "unknown field in vmConfig",
            |d| d["spec"]["vmConfig"]["environment"] = json!({}),
            "environment",
        ),
        (
            "unknown env source",
            |d| d["spec"]["vmConfig"]["env"][1]["valueFrom"] = json!("SECRET"),
            "/spec/vmConfig/env/1/valueFrom",
        ),
        (
            "sha256 not hex",
            |d| d["spec"]["sha256"] = json!("not-a-digest"),
            "/spec/sha256",
        ),
        (
            "no url",
            |d| {
                d["spec"].as_object_mut().expect("spec").remove("url");
            },
            "\"url\" is a required property",
        ),
        (
            "port 0",
            |d| d["spec"]["match"][0]["ports"][0]["number"] = json!(0),
            "/spec/match/0/ports/0/number",
        ),
        (
            "unknown traffic mode",
            |d| d["spec"]["match"][0]["mode"] = json!("OUTBOUND"),
            "/spec/match/0/mode",
        ),
        (
            "wrong apiVersion",
            |d| d["apiVersion"] = json!("extensions.istio.io/v1"),
            "/apiVersion",
        ),
        (
            "value with valueFrom HOST",
            |d| d["spec"]["vmConfig"]["env"][1]["value"] = json!("inline-secret"),
            "value may only be set when valueFrom is INLINE",
        ),
        (
            "selector and targetRefs",
            |d| d["spec"]["targetRefs"] = json!([{ "kind": "Service", "name": "storefront" }]),
            "only one of targetRefs or selector can be set",
        ),
        (
            "ftp url",
            |d| d["spec"]["url"] = json!("ftp://example.com/marty_resilience.wasm"),
            "url must have schema one of",
        ),
        (
            "wildcard label",
            |d| d["spec"]["selector"]["matchLabels"]["app"] = json!("store*"),
            "wildcard not allowed in label value match",
        ),
    ];
    for (name, edit, expected) in cases {
        let mut doc = plugin.clone();
        edit(&mut doc);
        let errors = plugin_errors(&validator, &doc);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{name}: expected an error mentioning {expected:?}, got {errors:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// pluginConfig, vmConfig and the VirtualService

/// A JSON value after a trip through `google.protobuf.Struct` and Go's protojson, which is how
/// Istio hands `pluginConfig` to the filter: every number is a double, written without a
/// fraction when it is whole (`3`, `0.5`).
fn through_struct(value: &Value) -> Value {
    match value {
        Value::Number(n) => {
            let f = n.as_f64().expect("a finite number");
            if f.fract() == 0.0 && f.abs() < 1e15 {
                json!(f as i64)
            } else {
                json!(f)
            }
        }
        Value::Array(items) => items.iter().map(through_struct).collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), through_struct(v)))
            .collect(),
        other => other.clone(),
    }
}

/// The VM environment Istio builds for the plugin (istio/istio `pilot/pkg/model/extensions.go`,
/// `buildVMConfig`): its own `ISTIO_META_WASM_*` keys, the INLINE entries, and each HOST entry
/// the proxy's environment (`proxy_env`) has; Envoy skips the missing ones.
fn vm_env(spec: &Value, proxy_env: &BTreeMap<&str, &str>) -> Vec<(String, String)> {
    let mut env = vec![(
        "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION".to_string(),
        "1".to_string(),
    )];
    if let Some(policy) = spec["imagePullPolicy"].as_str() {
        env.push(("ISTIO_META_WASM_IMAGE_PULL_POLICY".into(), policy.into()));
    }
    if let Some(secret) = spec["imagePullSecret"].as_str() {
        env.push(("ISTIO_META_WASM_IMAGE_PULL_SECRET".into(), secret.into()));
    }
    for entry in spec["vmConfig"]["env"].as_array().expect("vmConfig.env") {
        let name = text(entry, "/name");
        match entry["valueFrom"].as_str().unwrap_or("INLINE") {
            "INLINE" => env.push((name.into(), entry["value"].as_str().unwrap_or("").into())),
            "HOST" => {
                if let Some(value) = proxy_env.get(name) {
                    env.push((name.into(), (*value).into()));
                }
            }
            other => panic!("valueFrom {other}"),
        }
    }
    env
}

/// The names Istio gives the Envoy routes it builds from a VirtualService (istio/istio
/// `pilot/pkg/networking/core/route/route.go`): `http[].name`, joined with the match's `name`
/// by a dot when the match has one; one route per match.
fn istio_route_names(virtual_service: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for http in at(virtual_service, "/spec/http").as_array().expect("http") {
        let name = http["name"].as_str().unwrap_or("");
        let matches = http["match"].as_array().cloned().unwrap_or_default();
        if matches.is_empty() {
            names.insert(name.to_string());
        }
        for m in matches {
            match m["name"].as_str().filter(|n| !n.is_empty()) {
                Some(match_name) => names.insert(format!("{name}.{match_name}")),
                None => names.insert(name.to_string()),
            };
        }
    }
    names
}

fn plugin_json(plugin: &Value) -> String {
    through_struct(at(plugin, "/spec/pluginConfig")).to_string()
}

#[test]
fn plugin_config_is_accepted_by_the_filter() {
    let plugin = read_yaml(PLUGIN);
    let spec = &plugin["spec"];
    let config = plugin_json(&plugin);
    let proxy_env = BTreeMap::from([(TOKEN_VAR, "s3cr3t-from-a-secret")]);
    let env = vm_env(spec, &proxy_env);
    let settings = Settings::parse(config.as_bytes(), &env)
        .unwrap_or_else(|e| panic!("the filter rejects {PLUGIN}: {e}\nJSON: {config}"));

    let configured: BTreeSet<&String> = at(spec, "/pluginConfig/routes")
        .as_object()
        .expect("pluginConfig.routes")
        .keys()
        .collect();
    assert_eq!(settings.routes.keys().collect::<BTreeSet<_>>(), configured);
    assert_eq!(settings.environment, Environment::Production);

    // The default bucket (every other outbound call) has no breaker; each route has its own.
    assert_eq!(
        settings.defaults.to_json()["circuit_breaker"]["enabled"],
        false
    );
    for (name, policy) in &settings.routes {
        let policy = policy.to_json();
        assert_eq!(policy["circuit_breaker"]["enabled"], true, "route {name}");
    }
    // The token comes from the proxy's environment; without it the header trigger takes none.
    let trigger = |settings: &Settings| {
        settings.routes.get("user-service.rest").unwrap().to_json()["failure_injection"]
            ["header_trigger"]
            .clone()
    };
    assert_eq!(trigger(&settings)["enabled"], true);
    assert_eq!(trigger(&settings)["token"], "(set)");
    let without = Settings::parse(config.as_bytes(), &vm_env(spec, &BTreeMap::new()))
        .unwrap_or_else(|e| panic!("rejected without the HOST variable: {e}"));
    assert_eq!(trigger(&without)["token"], Value::Null);
}

#[test]
fn every_configured_route_is_a_virtualservice_route() {
    let plugin = read_yaml(PLUGIN);
    let virtual_service = read_yaml(VIRTUAL_SERVICE);
    assert_eq!(text(&virtual_service, "/kind"), "VirtualService");
    assert_eq!(
        text(&virtual_service, "/metadata/namespace"),
        text(&plugin, "/metadata/namespace")
    );
    let routes = istio_route_names(&virtual_service);
    for name in at(&plugin, "/spec/pluginConfig/routes")
        .as_object()
        .expect("routes")
        .keys()
    {
        assert!(
            routes.contains(name),
            "pluginConfig.routes.{name} is no route of {VIRTUAL_SERVICE}, which has {routes:?}"
        );
    }
    // The match name is joined to the route name, as Istio does.
    assert!(routes.contains("user-service.grpc"), "{routes:?}");
    assert!(
        !routes.contains("default"),
        "a route named default: {routes:?}"
    );

    // The VirtualService routes to the port the WasmPlugin matches.
    let ports: BTreeSet<u64> = at(&plugin, "/spec/match")
        .as_array()
        .expect("match")
        .iter()
        .flat_map(|m| m["ports"].as_array().cloned().unwrap_or_default())
        .map(|p| p["number"].as_u64().expect("port number"))
        .collect();
    for http in at(&virtual_service, "/spec/http").as_array().expect("http") {
        for destination in http["route"].as_array().expect("route") {
            let port = at(destination, "/destination/port/number")
                .as_u64()
                .expect("port");
            assert!(ports.contains(&port), "port {port} not in match {ports:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stats

/// The filter's name for a route in its stats (docs/metrics.md).
fn stat_route(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[test]
fn stats_settings_include_and_tag_the_filter_stats() {
    let plugin = read_yaml(PLUGIN);
    let namespace = text(&plugin, "/metadata/namespace");

    // The tag: the same regex as the Envoy bootstraps.
    let bootstrap = read_yaml(STATS_BOOTSTRAP);
    assert_eq!(text(&bootstrap, "/kind"), "ConfigMap");
    assert_eq!(text(&bootstrap, "/metadata/namespace"), namespace);
    let custom: Value = serde_json::from_str(text(&bootstrap, "/data/custom_bootstrap.json"))
        .unwrap_or_else(|e| panic!("custom_bootstrap.json is not JSON: {e}"));
    let tags = at(&custom, "/stats_config/stats_tags")
        .as_array()
        .expect("tags");
    let envoy = read_yaml("envoy/envoy.yaml");
    let envoy_tags = at(&envoy, "/stats_config/stats_tags")
        .as_array()
        .expect("tags");
    assert_eq!(tags.len(), 1, "{tags:?}");
    assert!(
        envoy_tags.contains(&tags[0]),
        "{STATS_BOOTSTRAP} tag {} differs from envoy/envoy.yaml's {envoy_tags:?}",
        tags[0]
    );
    assert_eq!(text(&tags[0], "/tag_name"), "marty_route");
    // Envoy takes the tag value from the second group and drops the first from the name.
    let regex = Regex::new(text(&tags[0], "/regex")).expect("regex");
    let routes = at(&plugin, "/spec/pluginConfig/routes")
        .as_object()
        .expect("routes");
    for route in routes
        .keys()
        .map(|r| stat_route(r))
        .chain(["outbound_8080__reviews_default_svc_cluster_local".into()])
    {
        let name = format!("wasmcustom.marty_resilience.route.{route}.requests_total");
        let caps = regex
            .captures(&name)
            .unwrap_or_else(|| panic!("{name} untagged"));
        assert_eq!(&caps[2], route);
        assert_eq!(
            name.replacen(&caps[1], "", 1),
            "wasmcustom.marty_resilience.route.requests_total"
        );
    }
    assert!(!regex.is_match("wasmcustom.marty_resilience.cas_exhausted_total"));

    // The pod patch: stats matcher, bootstrap override, and the token's variable.
    let patch = read_yaml(PROXY_CONFIG);
    let annotations = at(&patch, "/spec/template/metadata/annotations");
    let proxy_config: Value = serde_norway::from_str(text(annotations, "/proxy.istio.io~1config"))
        .unwrap_or_else(|e| panic!("proxy.istio.io/config is not YAML: {e}"));
    let prefixes: Vec<&str> = at(&proxy_config, "/proxyStatsMatcher/inclusionPrefixes")
        .as_array()
        .expect("inclusionPrefixes")
        .iter()
        .map(|p| p.as_str().expect("prefix"))
        .collect();
    for stat in [
        "wasmcustom.marty_resilience.route.user-service_grpc.circuit_state",
        "wasmcustom.marty_resilience.cas_exhausted_total",
    ] {
        assert!(
            prefixes.iter().any(|p| stat.starts_with(p)),
            "{stat} not included by {prefixes:?}"
        );
    }
    assert_eq!(
        text(annotations, "/sidecar.istio.io~1bootstrapOverride"),
        text(&bootstrap, "/metadata/name")
    );
    let containers = at(&patch, "/spec/template/spec/containers")
        .as_array()
        .expect("containers");
    let proxy = containers
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("an istio-proxy container");
    let host_vars: Vec<&str> = at(&plugin, "/spec/vmConfig/env")
        .as_array()
        .expect("env")
        .iter()
        .filter(|e| e["valueFrom"] == "HOST")
        .map(|e| text(e, "/name"))
        .collect();
    assert_eq!(host_vars, [TOKEN_VAR]);
    let from_secret = proxy["env"]
        .as_array()
        .expect("istio-proxy env")
        .iter()
        .find(|e| e["name"] == TOKEN_VAR)
        .unwrap_or_else(|| panic!("istio-proxy has no {TOKEN_VAR}"));
    assert!(from_secret
        .pointer("/valueFrom/secretKeyRef/name")
        .is_some());
}

// ---------------------------------------------------------------------------------------------
// The OCI image

struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn json(&self, relative: &str) -> Value {
        let data = fs::read(self.dir.join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
        serde_json::from_slice(&data).unwrap_or_else(|e| panic!("{relative} is not JSON: {e}"))
    }

    /// The blob a descriptor points to, checked against the descriptor's digest and size.
    fn blob(&self, descriptor: &Value) -> Vec<u8> {
        let digest = text(descriptor, "/digest");
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        let data = fs::read(self.dir.join("blobs/sha256").join(hex))
            .unwrap_or_else(|e| panic!("blob {digest}: {e}"));
        assert_eq!(sha256_hex(&data), hex, "blob {digest} has other content");
        assert_eq!(
            Some(data.len() as u64),
            descriptor["size"].as_u64(),
            "size of {digest}"
        );
        data
    }

    /// Every file of the layout, by path relative to it.
    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
            for entry in fs::read_dir(dir).expect("read layout") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    walk(base, &path, out);
                } else {
                    let relative = path.strip_prefix(base).expect("under the layout");
                    out.insert(
                        relative.to_string_lossy().into_owned(),
                        fs::read(&path).expect("read"),
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.dir, &self.dir, &mut out);
        out
    }
}

#[test]
fn package_oci_writes_an_image_istio_accepts() {
    let module_path = EnvoyConfig::new(0).resolved_wasm_path();
    let tmp = tempfile::tempdir().expect("tempdir");
    // A copy, so a concurrent rebuild of the module cannot change it under the test.
    let module = fs::read(&module_path).expect("read the module");
    let copy = tmp.path().join("marty_resilience.wasm");
    fs::write(&copy, &module).expect("copy the module");
    let out = tmp.path().join("oci");
    let run = Command::new("bash")
        .arg(workspace_root().join("scripts/package-oci"))
        .arg("--wasm")
        .arg(&copy)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run scripts/package-oci");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "scripts/package-oci failed:\n{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let layout = Layout {
        dir: out.join("marty-resilience"),
    };
    assert_eq!(
        layout.json("oci-layout"),
        json!({ "imageLayoutVersion": "1.0.0" })
    );

    let index = layout.json("index.json");
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], INDEX_TYPE);
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index:#}");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(manifests[0]["mediaType"], MANIFEST_TYPE);
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        version
    );
    let manifest_digest = text(&manifests[0], "/digest");
    assert!(
        stdout.contains(manifest_digest),
        "the script does not print the manifest digest {manifest_digest}:\n{stdout}"
    );

    let manifest: Value = serde_json::from_slice(&layout.blob(&manifests[0])).expect("manifest");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MANIFEST_TYPE);
    assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG_TYPE);
    let config: Value = serde_json::from_slice(&layout.blob(&manifest["config"])).expect("config");
    assert_eq!(config["type"], "envoy_proxy");
    assert!(config["abiVersions"]
        .as_array()
        .expect("abiVersions")
        .contains(&json!("proxy_abi_version_0_2_1")));
    assert_eq!(config["config"]["root_ids"], json!(["marty_resilience"]));
    for key in [
        "org.opencontainers.image.title",
        "org.opencontainers.image.version",
        "org.opencontainers.image.licenses",
    ] {
        assert!(
            manifest["annotations"][key].is_string(),
            "annotation {key} missing"
        );
    }
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.version"],
        version
    );

    // Istio's extractOCIArtifactImage: exactly two layers, the module being the one of type
    // application/vnd.module.wasm.content.layer.v1+wasm, read raw; then isValidWasmBinary.
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 2, "{manifest:#}");
    let wasm_layers: Vec<&Value> = layers
        .iter()
        .filter(|l| l["mediaType"] == WASM_LAYER_TYPE)
        .collect();
    assert_eq!(wasm_layers.len(), 1, "{manifest:#}");
    let wasm_layer = wasm_layers[0];
    assert_eq!(
        text(wasm_layer, "/digest"),
        format!("sha256:{}", sha256_hex(&module))
    );
    assert_eq!(wasm_layer["size"].as_u64(), Some(module.len() as u64));
    assert_eq!(layout.blob(wasm_layer), module);
    assert!(module.len() >= 8 && module.starts_with(b"\0asm"));
    let other = layers
        .iter()
        .find(|l| l["mediaType"] != WASM_LAYER_TYPE)
        .expect("config layer");
    assert_eq!(other["mediaType"], WASM_CONFIG_TYPE);
    layout.blob(other);

    // Every blob is named after its sha256, and every blob is referenced.
    let files = layout.files();
    let mut referenced: BTreeSet<String> = [&manifests[0], &manifest["config"]]
        .into_iter()
        .chain(layers)
        .map(|d| text(d, "/digest").replacen("sha256:", "blobs/sha256/", 1))
        .collect();
    referenced.extend(["oci-layout".to_string(), "index.json".to_string()]);
    assert_eq!(files.keys().cloned().collect::<BTreeSet<_>>(), referenced);
    for (path, data) in &files {
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            assert_eq!(sha256_hex(data), hex, "{path}");
        }
    }

    // The tarball holds the same layout, byte for byte, at its root.
    let tar_path = out.join(format!("marty-resilience-{version}.tar"));
    let tar_file =
        fs::File::open(&tar_path).unwrap_or_else(|e| panic!("{}: {e}", tar_path.display()));
    let mut archive = tar::Archive::new(tar_file);
    let mut in_tar = BTreeMap::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        if entry.header().entry_type().is_file() {
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("read tar entry");
            in_tar.insert(path, data);
        }
    }
    assert_eq!(
        in_tar, files,
        "the tarball differs from the layout directory"
    );
}
