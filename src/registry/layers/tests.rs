//! Layers and functions that use them, against a temporary state dir.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Cursor, Write as _};
use std::path::Path;

use base64::Engine as _;
use zip::write::SimpleFileOptions;

use crate::config::layer_version_arn;
use crate::protocol::{
    CreateFunction, ErrorKind, FunctionCode, PublishLayerVersion, UpdateFunctionCode,
    UpdateFunctionConfiguration, WireError,
};
use crate::registry::{Registry, RegistryError};

fn zip_b64(files: &[(&str, &str)]) -> String {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in files {
        w.start_file(*name, SimpleFileOptions::default()).unwrap();
        w.write_all(content.as_bytes()).unwrap();
    }
    base64::engine::general_purpose::STANDARD.encode(w.finish().unwrap().into_inner())
}

fn publish_req(name: &str, files: &[(&str, &str)]) -> PublishLayerVersion {
    PublishLayerVersion {
        layer_name: name.to_owned(),
        description: Some(format!("{name} layer")),
        content: FunctionCode {
            image_uri: None,
            zip_file: Some(zip_b64(files)),
            path: None,
        },
        compatible_runtimes: Some(vec!["python3".to_owned()]),
    }
}

fn create_req(name: &str, layers: &[String]) -> CreateFunction {
    CreateFunction {
        package_type: None,
        image_config: None,
        function_name: name.to_owned(),
        runtime: "python3".to_owned(),
        handler: "app.handler".to_owned(),
        code: FunctionCode {
            image_uri: None,
            zip_file: Some(zip_b64(&[("app.py", "def handler(e, c):\n    return 1\n")])),
            path: None,
        },
        memory_size: None,
        timeout: None,
        environment: None,
        ephemeral_storage: None,
        description: None,
        layers: Some(layers.to_vec()),
    }
}

fn layers_update(name: &str, layers: &[String]) -> UpdateFunctionConfiguration {
    UpdateFunctionConfiguration {
        function_name: name.to_owned(),
        layers: Some(layers.to_vec()),
        ..Default::default()
    }
}

fn read(dir: &Path, rel: &str) -> String {
    fs::read_to_string(dir.join(rel)).unwrap()
}

fn wire(e: RegistryError) -> WireError {
    e.into()
}

#[test]
fn versions_number_from_one_and_are_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(tmp.path()).unwrap();
    let v1 = reg
        .publish_layer_version(&publish_req("lib", &[("python/lib.py", "V = 1")]))
        .unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(v1.layer_version_arn, layer_version_arn("lib", 1));
    assert_eq!(
        v1.layer_arn,
        "arn:aws:lambda:us-east-1:000000000000:layer:lib"
    );
    assert_eq!(v1.description, "lib layer");
    assert_eq!(v1.compatible_runtimes, vec!["python3"]);
    assert!(v1.content.code_size > 0);
    assert_eq!(v1.content.code_sha256.len(), 44);
    let v2 = reg
        .publish_layer_version(&publish_req("lib", &[("python/lib.py", "V = 2")]))
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(reg.get_layer_version("lib", 1).unwrap(), v1);

    let listed = reg.list_layers(None);
    assert_eq!(listed.layers.len(), 1);
    assert_eq!(listed.layers[0].latest_matching_version.version, 2);
    let versions = reg.list_layer_versions("lib", None).unwrap().layer_versions;
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 1]
    );

    // CompatibleRuntime filters, as on Lambda.
    let mut other = publish_req("other", &[("x", "")]);
    other.compatible_runtimes = Some(vec!["nodejs".into()]);
    reg.publish_layer_version(&other).unwrap();
    let names = |list: crate::protocol::LayerList| {
        list.layers
            .into_iter()
            .map(|l| l.layer_name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(reg.list_layers(None)), ["lib", "other"]);
    assert_eq!(names(reg.list_layers(Some("python3"))), ["lib"]);
    assert_eq!(names(reg.list_layers(Some("nodejs"))), ["other"]);
    assert!(names(reg.list_layers(Some("java21"))).is_empty());
    assert_eq!(
        reg.list_layer_versions("lib", Some("nodejs"))
            .unwrap()
            .layer_versions,
        []
    );
    reg.delete_layer_version("other", 1).unwrap();

    reg.delete_layer_version("lib", 2).unwrap();
    let err = wire(reg.get_layer_version("lib", 2).unwrap_err());
    assert_eq!(err.kind, ErrorKind::ResourceNotFoundException);
    assert!(
        err.message.contains(&layer_version_arn("lib", 2)),
        "{err:?}"
    );
    // Deleting what is not there succeeds, as on Lambda.
    reg.delete_layer_version("lib", 2).unwrap();
    reg.delete_layer_version("nothing", 1).unwrap();
    assert!(!tmp.path().join("layers/lib/2").exists());

    // After a restart too, the next version is 3: 2 is never given again.
    drop(reg);
    let mut reg = Registry::open(tmp.path()).unwrap();
    let v3 = reg
        .publish_layer_version(&publish_req("lib", &[("x", "")]))
        .unwrap();
    assert_eq!(v3.version, 3);
    // A layer whose versions are all deleted is not listed.
    for v in [1, 3] {
        reg.delete_layer_version("lib", v).unwrap();
    }
    assert!(reg.list_layers(None).layers.is_empty());
    assert!(reg
        .list_layer_versions("lib", None)
        .unwrap()
        .layer_versions
        .is_empty());
}

#[test]
fn refused_content_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(tmp.path()).unwrap();
    let err = wire(
        reg.publish_layer_version(&publish_req("evil", &[("../evil", "x")]))
            .unwrap_err(),
    );
    assert_eq!(err.kind, ErrorKind::InvalidParameterValueException);
    assert!(err.message.contains("../evil"), "{err:?}");
    let mut req = publish_req("bad name", &[("a", "")]);
    assert!(reg.publish_layer_version(&req).is_err());
    req.layer_name = "ok".into();
    req.description = Some("d".repeat(257));
    assert!(reg.publish_layer_version(&req).is_err());
    assert_eq!(fs::read_dir(tmp.path().join("layers")).unwrap().count(), 0);
    // The first good publish of that name is still version 1.
    let v = reg
        .publish_layer_version(&publish_req("evil", &[("fine", "")]))
        .unwrap();
    assert_eq!(v.version, 1);
}

#[test]
fn a_function_merges_its_layers_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(tmp.path()).unwrap();
    let a = reg
        .publish_layer_version(&publish_req(
            "a",
            &[("python/shared.py", "WHO = 'a'"), ("python/only_a.py", "")],
        ))
        .unwrap();
    let b = reg
        .publish_layer_version(&publish_req("b", &[("python/shared.py", "WHO = 'b'")]))
        .unwrap();
    let arns = [a.layer_version_arn.clone(), b.layer_version_arn.clone()];
    let f = reg.create(&create_req("f", &arns)).unwrap().clone();
    let opt = f.opt_dir.clone().unwrap();
    assert!(opt.starts_with(reg.functions_dir()));
    assert_eq!(read(&opt, "python/shared.py"), "WHO = 'b'");
    assert!(opt.join("python/only_a.py").is_file());
    let shown = f.configuration();
    assert_eq!(
        shown
            .layers
            .iter()
            .map(|l| l.arn.as_str())
            .collect::<Vec<_>>(),
        arns.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(shown.layers[0].code_size, a.content.code_size);
    let json = serde_json::to_value(&shown).unwrap();
    assert_eq!(json["Layers"][1]["Arn"], b.layer_version_arn);
    // Without layers, no Layers field (as on Lambda) and no /opt tree.
    let g = reg.create(&create_req("g", &[])).unwrap();
    assert!(g.opt_dir.is_none());
    assert!(serde_json::to_value(g.configuration())
        .unwrap()
        .get("Layers")
        .is_none());

    // A deleted version stays with the function, across a restart too.
    reg.delete_layer_version("a", 1).unwrap();
    drop(reg);
    let mut reg = Registry::open(tmp.path()).unwrap();
    let f = reg.get("f").unwrap().clone();
    assert_eq!(f.opt_dir.as_deref(), Some(opt.as_path()));
    assert!(opt.join("python/only_a.py").is_file());
    // New code keeps the layers, even the deleted one.
    let f2 = reg
        .update_code(&UpdateFunctionCode {
            function_name: "f".into(),
            code: FunctionCode {
                image_uri: None,
                zip_file: Some(zip_b64(&[("app.py", "v2")])),
                path: None,
            },
        })
        .unwrap()
        .clone();
    let opt2 = f2.opt_dir.clone().unwrap();
    assert_ne!(opt2, opt);
    assert_eq!(read(&opt2, "python/shared.py"), "WHO = 'b'");
    assert!(opt2.join("python/only_a.py").is_file());
    assert_eq!(f2.layers, f.layers);
    // An update that does not name Layers, or names the same ones, keeps
    // the revision; but a deleted version cannot be taken anew.
    let same = reg
        .update_configuration(&layers_update("f", &arns))
        .unwrap();
    assert_eq!(same.code_revision, f2.code_revision);
    let err = reg
        .update_configuration(&layers_update("f", &arns[..1]))
        .unwrap_err();
    assert!(matches!(err, RegistryError::UnknownLayer { .. }), "{err}");

    // Changing the layers makes a revision with the same code and the new /opt.
    let f3 = reg
        .update_configuration(&layers_update(
            "f",
            std::slice::from_ref(&b.layer_version_arn),
        ))
        .unwrap()
        .clone();
    assert_eq!(f3.code_revision, f2.code_revision + 1);
    assert_eq!(read(&f3.code_dir, "app.py"), "v2");
    assert_eq!(f3.code_sha256, f2.code_sha256);
    let opt3 = f3.opt_dir.clone().unwrap();
    assert!(!opt3.join("python/only_a.py").exists());
    // Pruning takes the old revisions' code and /opt together.
    reg.prune_code("f", &BTreeSet::from([f2.code_revision]))
        .unwrap();
    assert!(!opt.exists());
    assert!(opt2.exists());
    reg.prune_code("f", &BTreeSet::new()).unwrap();
    assert!(!opt2.exists() && !f2.code_dir.exists());
    assert!(opt3.exists());
    // Removing every layer: /opt is empty again.
    let f4 = reg
        .update_configuration(&layers_update("f", &[]))
        .unwrap()
        .clone();
    assert!(f4.opt_dir.is_none() && f4.layers.is_empty());
    assert_eq!(read(&f4.code_dir, "app.py"), "v2");
}

#[test]
fn bad_layer_lists_are_refused_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(tmp.path()).unwrap();
    let missing = layer_version_arn("nope", 7);
    let err = wire(
        reg.create(&create_req("f", std::slice::from_ref(&missing)))
            .unwrap_err(),
    );
    assert_eq!(err.kind, ErrorKind::InvalidParameterValueException);
    assert!(err.message.contains(&missing), "{err:?}");
    let six: Vec<String> = (1..=6)
        .map(|i| {
            reg.publish_layer_version(&publish_req(&format!("l{i}"), &[("f", "")]))
                .unwrap()
                .layer_version_arn
        })
        .collect();
    let err = wire(reg.create(&create_req("f", &six)).unwrap_err());
    assert_eq!(err.kind, ErrorKind::InvalidParameterValueException);
    assert!(err.message.contains("at most 5 layers"), "{err:?}");
    assert!(reg.create(&create_req("f", &six[..5])).is_ok());
    // Nothing of the refused creates stayed.
    assert_eq!(
        fs::read_dir(reg.functions_dir()).unwrap().count(),
        1,
        "only f"
    );
}

#[test]
fn code_and_layers_together_must_fit_the_unzipped_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(tmp.path()).unwrap();
    let big = "x".repeat(600);
    let layer = reg
        .publish_layer_version(&publish_req("big", &[("blob", big.as_str())]))
        .unwrap();
    // Each fits alone; together they do not.
    reg.limits.unzipped_bytes = 620;
    let err = wire(
        reg.create(&create_req("f", &[layer.layer_version_arn]))
            .unwrap_err(),
    );
    assert_eq!(err.kind, ErrorKind::InvalidParameterValueException);
    assert!(
        err.message
            .contains("Unzipped size must be smaller than 620 bytes"),
        "{err:?}"
    );
    assert!(reg.get("f").is_none());
    assert_eq!(fs::read_dir(reg.functions_dir()).unwrap().count(), 0);
}

#[test]
fn open_removes_leftovers_of_interrupted_publishes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(tmp.path()).unwrap();
    reg.publish_layer_version(&publish_req("lib", &[("a", "1")]))
        .unwrap();
    drop(reg);
    let layers = tmp.path().join("layers");
    // A version installed but never recorded, a staging dir, a temp record,
    // and a layer whose first publish never wrote its record.
    fs::create_dir_all(layers.join("lib/2")).unwrap();
    fs::create_dir_all(layers.join("lib/.staging-x")).unwrap();
    fs::write(layers.join("lib/.layer.json.tmp"), "{").unwrap();
    fs::create_dir_all(layers.join("orphan/1")).unwrap();
    let mut reg = Registry::open(tmp.path()).unwrap();
    let mut left: Vec<String> = fs::read_dir(layers.join("lib"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["1", "layer.json"]);
    assert!(!layers.join("orphan").exists());
    // The unrecorded 2 was never given: the next version is 2.
    let v = reg
        .publish_layer_version(&publish_req("lib", &[("b", "2")]))
        .unwrap();
    assert_eq!(v.version, 2);
    // A record naming a version whose content is gone is an error that
    // names it, not a layer silently dropped.
    drop(reg);
    fs::remove_dir_all(layers.join("lib/1")).unwrap();
    let err = Registry::open(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("layer.json") && err.contains("version 1"),
        "{err}"
    );
}
