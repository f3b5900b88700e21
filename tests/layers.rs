//! Root integration tests: Lambda layers through the real `lambdalet serve`.
//! Layers are published, named by functions, merged under /opt in order and
//! read-only there; a deleted version stays with the functions that use it.

mod common;

use base64::Engine as _;
use common::{require_root, zip_b64, Checks, Supervisor};
use serde_json::{json, Value};

/// Reports what the function sees of /opt and of its layers.
const APP: &str = r#"
import errno, importlib.util, os, sys

def handler(event, context):
    out = {"path": sys.path, "PATH": os.environ.get("PATH"),
           "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH")}
    try:
        import mylib
        out["who"] = mylib.WHO
    except Exception as e:
        out["who"] = "import failed: %r" % e
    out["only_a"] = importlib.util.find_spec("only_a") is not None
    try:
        import sitepkg
        out["sitepkg"] = sitepkg.__file__
    except Exception as e:
        out["sitepkg"] = "import failed: %r" % e
    out["tool"] = os.path.exists("/opt/bin/tool")
    out["opt"] = sorted(os.listdir("/opt"))
    out["can_read"] = os.access("/opt/python/mylib.py", os.R_OK)
    for what, attempt in [
        ("write_new", lambda: open("/opt/python/new.py", "w")),
        ("overwrite", lambda: open("/opt/python/mylib.py", "a")),
        ("mkdir", lambda: os.mkdir("/opt/new")),
        ("chmod", lambda: os.chmod("/opt/python/mylib.py", 0o777)),
    ]:
        try:
            attempt()
            out[what] = "allowed"
        except OSError as e:
            out[what] = errno.errorcode.get(e.errno, str(e.errno))
    return out
"#;

fn publish(sup: &Supervisor, name: &str, entries: &[(&str, &str)]) -> Value {
    sup.request(
        "PublishLayerVersion",
        json!({"LayerName": name, "Content": {"ZipFile": zip_b64(entries)}}),
    )
    .unwrap_or_else(|e| panic!("PublishLayerVersion {name}: {e:?}"))
}

fn arn(layer: &Value) -> String {
    layer["LayerVersionArn"].as_str().unwrap().to_owned()
}

#[test]
fn layers_are_merged_under_opt_in_order_and_read_only() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("layers under /opt");
    let a = publish(
        &sup,
        "liba",
        &[
            ("python/mylib.py", "WHO = 'a'\n"),
            ("python/only_a.py", "\n"),
            ("bin/tool", "#!/bin/sh\n"),
        ],
    );
    // From a directory on the host (Content.Path, this client is root).
    // Lambda's site-packages form, for whichever Python 3 the host has.
    let site: Vec<String> = (6..=20)
        .map(|minor| format!("python/lib/python3.{minor}/site-packages/sitepkg.py"))
        .collect();
    let mut b_files: Vec<(&str, &str)> = site.iter().map(|p| (p.as_str(), "\n")).collect();
    b_files.push(("python/mylib.py", "WHO = 'b'\n"));
    let b_dir = sup.write_code("libb", &b_files);
    let b = sup
        .request(
            "PublishLayerVersion",
            json!({"LayerName": "libb", "Content": {"Path": b_dir.to_str().unwrap()}}),
        )
        .expect("publish libb from a directory");
    let created = sup.create_python(
        "uses-layers",
        &[("app.py", APP)],
        "app.handler",
        json!({"Layers": [arn(&a), arn(&b)]}),
    );
    c.eq(
        "CreateFunction shows the layers",
        created["Layers"].clone(),
        json!([
            {"Arn": arn(&a), "CodeSize": a["Content"]["CodeSize"]},
            {"Arn": arn(&b), "CodeSize": b["Content"]["CodeSize"]},
        ]),
    );
    let got = sup
        .request("GetFunction", json!({"FunctionName": "uses-layers"}))
        .unwrap();
    c.eq(
        "GetFunction shows them too",
        &got["Layers"],
        &created["Layers"],
    );

    let r = sup.invoke_ok("uses-layers", json!({}));
    c.eq("the later layer's mylib wins", r["who"].as_str(), Some("b"));
    c.eq(
        "the earlier layer's other files stay",
        &r["only_a"],
        &json!(true),
    );
    c.check(
        r["sitepkg"].as_str().is_some_and(|f| {
            f.starts_with("/opt/python/lib/python3.") && f.ends_with("/site-packages/sitepkg.py")
        }),
        format_args!(
            "a module in the layer's site-packages is imported: {}",
            r["sitepkg"]
        ),
    );
    c.eq("/opt/bin/tool is there", &r["tool"], &json!(true));
    c.eq(
        "/opt holds the merged trees",
        &r["opt"],
        &json!(["bin", "python"]),
    );
    c.eq("the function can read /opt", &r["can_read"], &json!(true));
    for what in ["write_new", "mkdir"] {
        c.eq(
            format_args!("/opt is read-only: {what}"),
            r[what].as_str(),
            Some("EROFS"),
        );
    }
    // On a root-owned file the permission check may answer first.
    for what in ["overwrite", "chmod"] {
        c.check(
            ["EROFS", "EACCES", "EPERM"].contains(&r[what].as_str().unwrap_or("")),
            format_args!("/opt is read-only: {what}: {}", r[what]),
        );
    }
    let path: Vec<&str> = r["path"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = |p: &str| path.iter().position(|x| *x == p);
    let site = path
        .iter()
        .position(|p| p.starts_with("/opt/python/lib/python3.") && p.ends_with("/site-packages"));
    c.check(
        at("/var/task") == Some(0) && site == Some(1) && at("/opt/python") == Some(2),
        format_args!("sys.path: /var/task, the layers' site-packages, /opt/python: {path:?}"),
    );
    c.check(
        r["PATH"]
            .as_str()
            .is_some_and(|p| p.split(':').any(|d| d == "/opt/bin")),
        format_args!("/opt/bin on PATH: {}", r["PATH"]),
    );
    c.check(
        r["LD_LIBRARY_PATH"]
            .as_str()
            .is_some_and(|p| p.split(':').any(|d| d == "/opt/lib")),
        format_args!("/opt/lib on LD_LIBRARY_PATH: {}", r["LD_LIBRARY_PATH"]),
    );

    // The other order: the other layer wins, in a new environment.
    let up = sup.request(
        "UpdateFunctionConfiguration",
        json!({"FunctionName": "uses-layers", "Layers": [arn(&b), arn(&a)]}),
    );
    c.check(up.is_ok(), format_args!("reorder the layers: {up:?}"));
    let r = sup.invoke_ok("uses-layers", json!({}));
    c.eq("now liba's mylib wins", r["who"].as_str(), Some("a"));
    // No layers: /opt is empty again.
    let up = sup.request(
        "UpdateFunctionConfiguration",
        json!({"FunctionName": "uses-layers", "Layers": []}),
    );
    c.check(
        up.as_ref().is_ok_and(|v| v.get("Layers").is_none()),
        format_args!("remove the layers: {up:?}"),
    );
    let r = sup.invoke_ok("uses-layers", json!({}));
    c.eq("without layers /opt is empty", &r["opt"], &json!([]));
    c.check(
        r["who"]
            .as_str()
            .is_some_and(|w| w.starts_with("import failed")),
        format_args!("and mylib is gone: {}", r["who"]),
    );
    c.finish();
}

#[test]
fn versions_deletion_and_refusals() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("layer versions");
    let v1 = publish(&sup, "shared", &[("python/mylib.py", "WHO = 'v1'\n")]);
    let v2 = publish(&sup, "shared", &[("python/mylib.py", "WHO = 'v2'\n")]);
    c.eq("first version", &v1["Version"], &json!(1));
    c.eq("second version", &v2["Version"], &json!(2));
    c.eq(
        "the version ARN",
        arn(&v1),
        "arn:aws:lambda:us-east-1:000000000000:layer:shared:1".to_owned(),
    );
    let got = sup.request(
        "GetLayerVersion",
        json!({"LayerName": "shared", "VersionNumber": 1}),
    );
    c.eq("GetLayerVersion", got.as_ref().ok(), Some(&v1));
    let listed = sup.request("ListLayers", json!({})).unwrap();
    c.eq(
        "ListLayers shows the latest version",
        &listed["Layers"][0]["LatestMatchingVersion"]["Version"],
        &json!(2),
    );
    let versions = sup
        .request("ListLayerVersions", json!({"LayerName": "shared"}))
        .unwrap();
    c.eq(
        "ListLayerVersions, newest first",
        versions["LayerVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 1],
    );

    sup.create_python(
        "pinned",
        &[("app.py", APP)],
        "app.handler",
        json!({"Layers": [arn(&v1)]}),
    );
    c.eq(
        "v1 before the delete",
        sup.invoke_ok("pinned", json!({}))["who"].as_str(),
        Some("v1"),
    );
    let del = sup.request(
        "DeleteLayerVersion",
        json!({"LayerName": "shared", "VersionNumber": 1}),
    );
    c.eq("DeleteLayerVersion answers {}", del.ok(), Some(json!({})));
    let gone = sup.request(
        "GetLayerVersion",
        json!({"LayerName": "shared", "VersionNumber": 1}),
    );
    c.check(
        matches!(&gone, Err((kind, msg)) if kind == "ResourceNotFoundException" && msg.contains(":layer:shared:1")),
        format_args!("a deleted version is not found: {gone:?}"),
    );
    // As on Lambda, the function keeps it: a fresh environment (the memory
    // change retires the warm one) still imports it.
    let up = sup.request(
        "UpdateFunctionConfiguration",
        json!({"FunctionName": "pinned", "MemorySize": 256}),
    );
    c.check(up.is_ok(), format_args!("update memory: {up:?}"));
    c.eq(
        "a deleted version stays with the function",
        sup.invoke_ok("pinned", json!({}))["who"].as_str(),
        Some("v1"),
    );
    // After a restart as well.
    let mut sup = sup;
    sup.restart();
    c.eq(
        "and after a restart",
        sup.invoke_ok("pinned", json!({}))["who"].as_str(),
        Some("v1"),
    );
    // But no function can take it anew, and its number is not reused.
    let refused = sup.request(
        "CreateFunction",
        json!({"FunctionName": "late", "Runtime": "python3", "Handler": "app.handler",
               "Code": {"ZipFile": zip_b64(&[("app.py", APP)])}, "Layers": [arn(&v1)]}),
    );
    c.check(
        matches!(&refused, Err((kind, msg)) if kind == "InvalidParameterValueException" && msg.contains(&arn(&v1))),
        format_args!("a deleted version is refused, named: {refused:?}"),
    );
    let v3 = publish(&sup, "shared", &[("python/mylib.py", "WHO = 'v3'\n")]);
    c.eq("the next version is 3", &v3["Version"], &json!(3));

    // Unknown versions, too many layers, bad ARNs.
    let create = |layers: Value| {
        sup.request(
            "CreateFunction",
            json!({"FunctionName": "refused", "Runtime": "python3", "Handler": "app.handler",
                   "Code": {"ZipFile": zip_b64(&[("app.py", APP)])}, "Layers": layers}),
        )
    };
    let unknown = "arn:aws:lambda:us-east-1:000000000000:layer:nope:4";
    let r = create(json!([unknown]));
    c.check(
        matches!(&r, Err((kind, msg)) if kind == "InvalidParameterValueException" && msg.contains(unknown)),
        format_args!("an unknown layer version is refused, named: {r:?}"),
    );
    let six: Vec<String> = (0..6)
        .map(|i| arn(&publish(&sup, &format!("l{i}"), &[("f", "")])))
        .collect();
    let r = create(json!(six));
    c.check(
        matches!(&r, Err((kind, msg)) if kind == "InvalidParameterValueException" && msg.contains("at most 5 layers")),
        format_args!("six layers are refused: {r:?}"),
    );
    let r = create(json!([
        "arn:aws:lambda:us-east-1:000000000000:function:pinned"
    ]));
    c.check(
        matches!(&r, Err((kind, _)) if kind == "InvalidParameterValueException"),
        format_args!("a function ARN is not a layer: {r:?}"),
    );
    c.check(
        sup.request("GetFunction", json!({"FunctionName": "refused"}))
            .is_err(),
        "no refused function exists",
    );

    // A layer whose zip escapes its directory.
    let evil = sup.request(
        "PublishLayerVersion",
        json!({"LayerName": "evil", "Content": {"ZipFile": zip_b64(&[("../evil", "x")])}}),
    );
    c.check(
        matches!(&evil, Err((kind, msg)) if kind == "InvalidParameterValueException" && msg.contains("../evil")),
        format_args!("a zip slip is refused: {evil:?}"),
    );
    c.check(
        !sup.state_dir.join("layers/evil").exists(),
        "nothing of the refused layer is in the state dir",
    );
    c.check(
        !sup.state_dir.parent().unwrap().join("evil").exists()
            && !sup.state_dir.join("layers/evil").exists(),
        "nor outside it",
    );
    c.finish();
}

#[test]
fn the_cli_publishes_lists_and_deletes_layers() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let mut c = Checks::new("layers CLI");
    let dir = sup.write_code("cli-layer", &[("python/mylib.py", "WHO = 'cli'\n")]);
    let zip = sup.dir.path().join("layer.zip");
    std::fs::write(
        &zip,
        base64::engine::general_purpose::STANDARD
            .decode(zip_b64(&[("python/mylib.py", "WHO = 'zip'\n")]))
            .unwrap(),
    )
    .unwrap();
    let run = |args: &[&str]| common::cli(&sup.socket, args);
    let p1 = run(&[
        "publish-layer-version",
        "tools",
        "--content",
        dir.to_str().unwrap(),
    ]);
    c.eq("publish --content exit", p1.code, Some(0));
    c.eq("version 1", &p1.json()["Version"], &json!(1));
    let p2 = run(&[
        "publish-layer-version",
        "tools",
        "--zip",
        zip.to_str().unwrap(),
        "--description",
        "zipped",
    ]);
    c.eq("publish --zip exit", p2.code, Some(0));
    c.eq("version 2", &p2.json()["Version"], &json!(2));
    let list = run(&["list-layers"]);
    c.eq(
        "list-layers",
        &list.json()["Layers"][0]["LatestMatchingVersion"]["Description"],
        &json!("zipped"),
    );
    let versions = run(&["list-layer-versions", "tools"]);
    c.eq(
        "list-layer-versions",
        versions.json()["LayerVersions"].as_array().map(Vec::len),
        Some(2),
    );
    let more = run(&[
        "publish-layer-version",
        "more",
        "--zip",
        zip.to_str().unwrap(),
    ]);
    c.eq("publish another layer", more.code, Some(0));
    let get = run(&["get-layer-version", "tools", "1"]);
    c.eq("get-layer-version", &get.json()["Version"], &json!(1));
    let code = sup.write_code("cli-fn", &[("app.py", APP)]);
    let create = run(&[
        "create-function",
        "cli-fn",
        "--runtime",
        "python3",
        "--handler",
        "app.handler",
        "--code",
        code.to_str().unwrap(),
        "--layers",
        &arn(&p1.json()),
        &arn(&more.json()),
    ]);
    c.eq("create-function --layers exit", create.code, Some(0));
    c.eq(
        "with two layers",
        create.json()["Layers"].as_array().map(Vec::len),
        Some(2),
    );
    c.eq(
        "the zip layer wins",
        sup.invoke_ok("cli-fn", json!({}))["who"].as_str(),
        Some("zip"),
    );
    let del = run(&["delete-layer-version", "tools", "2"]);
    c.eq("delete-layer-version exit", del.code, Some(0));
    c.eq("prints nothing", del.stdout.as_str(), "");
    let gone = run(&["get-layer-version", "tools", "2"]);
    c.eq("a deleted version: exit 255", gone.code, Some(255));
    c.check(
        gone.stderr.contains("ResourceNotFoundException"),
        format_args!("stderr names the error: {}", gone.stderr),
    );
    let up = run(&["update-function-configuration", "cli-fn", "--clear-layers"]);
    c.eq("--clear-layers exit", up.code, Some(0));
    c.check(
        up.json().get("Layers").is_none(),
        format_args!("no layers left: {}", up.stdout),
    );
    c.finish();
}

#[test]
fn only_root_clients_may_publish_from_a_host_path() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let sup = Supervisor::start_with(&["--socket-mode", "0666"]);
    let mut c = Checks::new("Content.Path from a non-root client");
    // The client, its zip and the socket, where nobody can reach them.
    std::fs::set_permissions(sup.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = sup.dir.path().join("lambdalet-client");
    std::fs::copy(common::BIN, &bin).unwrap();
    let zip = sup.dir.path().join("layer.zip");
    std::fs::write(
        &zip,
        base64::engine::general_purpose::STANDARD
            .decode(zip_b64(&[("python/mylib.py", "WHO = 'nobody'\n")]))
            .unwrap(),
    )
    .unwrap();
    std::fs::set_permissions(&zip, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .uid(NOBODY)
            .gid(NOBODY)
            .arg("--socket")
            .arg(&sup.socket)
            .args(args)
            .output()
            .expect("run the CLI as nobody");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["publish-layer-version", "peek", "--content", "/"]);
    c.eq("a host path from nobody: exit 255", code, Some(255));
    c.check(
        stderr.contains("InvalidParameterValueException")
            && stderr.contains("Content.Path")
            && stderr.contains("root clients only"),
        format_args!("the refusal says why: {stderr}"),
    );
    c.check(
        !sup.state_dir.join("layers/peek").exists(),
        "nothing was published",
    );
    let (code, stderr) = run(&[
        "publish-layer-version",
        "peek",
        "--zip",
        zip.to_str().unwrap(),
    ]);
    c.eq(
        format_args!("an inline zip from nobody is fine: {stderr}"),
        code,
        Some(0),
    );
    c.finish();
}
