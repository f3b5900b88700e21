//! Root integration tests: container image functions (`PackageType: Image`)
//! through the real `lambdalet serve`. Each test builds an OCI image layout
//! from scratch: a static C program (tests/fixtures/image_bootstrap.c,
//! compiled with `gcc -static`) that speaks the Runtime API, in a rootfs of
//! two layers, with a config, a manifest and an index whose digests it
//! computes. The image has no libc, no shell and no Python: what runs is the
//! image's own.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{cli, require_root, Checks, Supervisor};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One entry of a layer.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    /// A name written raw into the header, unchecked (for escapes).
    RawFile(&'a str, &'a [u8]),
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        match e {
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            Entry::File(path, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
            Entry::HardLink(path, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
            Entry::RawFile(path, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let name = &mut h.as_old_mut().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(bytes).unwrap();
    g.finish().unwrap()
}

/// An OCI image layout being written: blobs by digest.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: PathBuf) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir }
    }

    /// Stores `bytes`; returns its descriptor.
    fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let hex = format!("{:x}", Sha256::digest(bytes));
        fs::write(self.dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
    }

    fn blob_path(&self, desc: &Value) -> PathBuf {
        let digest = desc["digest"].as_str().unwrap();
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// A manifest of `layers` and `config`, listed in index.json (tagged).
    fn finish(&self, layers: Vec<Value>, config: Value, tag: &str) -> Value {
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        });
        let mut desc = self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        desc["platform"] = json!({"architecture": "amd64", "os": "linux"});
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [desc],
        });
        fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
        desc
    }
}

fn config(entrypoint: &[&str], cmd: &[&str], env: &[&str], workdir: &str) -> Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": env, "WorkingDir": workdir, "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": []},
    })
}

/// `gcc -static` of the fixture, once per test process.
fn bootstrap_binary(dir: &Path) -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/image_bootstrap.c");
    let out = dir.join("bootstrap");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc: the test builds the image's program with it");
    assert!(
        status.success(),
        "gcc -static failed: a static C library is needed (Debian: apt-get install libc6-dev)"
    );
    fs::read(&out).unwrap()
}

/// The test image: layer 1 (gzip) is the program and files; layer 2 (tar)
/// whites one out, replaces another and makes a directory opaque.
fn good_image(dir: &Path, binary: &[u8]) -> (Layout, Vec<Value>) {
    let layout = Layout::new(dir.to_owned());
    let lower = tar_of(&[
        Entry::Dir("app"),
        Entry::File("app/bootstrap", binary, 0o4755),
        Entry::Dir("app/data"),
        Entry::File("app/data/keep", b"kept", 0o600),
        Entry::HardLink("app/hardlink", "app/data/keep"),
        Entry::Dir("etc"),
        Entry::File("etc/gone", b"to be whited out", 0o644),
        Entry::File("etc/overlay", b"lower", 0o644),
        Entry::File(
            "etc/passwd",
            b"app:x:1000:1000::/app:/sbin/nologin\n",
            0o644,
        ),
        Entry::Symlink("bin", "/app"),
        Entry::Dir("opq"),
        Entry::File("opq/old", b"old", 0o644),
    ]);
    let upper = tar_of(&[
        Entry::File("etc/.wh.gone", b"", 0o644),
        Entry::File("etc/overlay", b"upper", 0o644),
        Entry::File("opq/.wh..wh..opq", b"", 0o644),
        Entry::File("opq/new", b"new", 0o644),
    ]);
    let layers = vec![
        layout.blob(LAYER_GZIP, &gzip(&lower)),
        layout.blob(LAYER_TAR, &upper),
    ];
    (layout, layers)
}

/// Invoke; a function error fails the test with the function's log.
fn invoke_ok(sup: &Supervisor, name: &str, payload: Value) -> Value {
    let r = sup.invoke(name, payload);
    assert!(
        r.get("FunctionError").is_none(),
        "invoke of {name} failed: {r}\nits log:\n{}",
        sup.logs(name).join("\n")
    );
    r["Payload"].clone()
}

fn create_image(
    sup: &Supervisor,
    name: &str,
    uri: &str,
    extra: Value,
) -> Result<Value, (String, String)> {
    let mut req = json!({
        "FunctionName": name,
        "PackageType": "Image",
        "Code": {"ImageUri": uri},
        "Environment": {"Variables": {"STAGE": "function"}},
    });
    common::merge(&mut req, extra);
    sup.request("CreateFunction", req)
}

#[test]
fn an_image_function_serves_invokes_from_its_own_root() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let work = sup.dir.path().join("image-build");
    fs::create_dir_all(&work).unwrap();
    let binary = bootstrap_binary(&work);
    let (layout, layers) = good_image(&work.join("layout"), &binary);
    layout.finish(
        layers,
        config(
            &["/app/bootstrap", "from-entrypoint"],
            &["from-cmd"],
            &[
                "PATH=/bin:/app",
                "GREETING=hello from the image",
                "STAGE=image-default",
            ],
            "/app/data",
        ),
        "v1",
    );
    let uri = layout.dir.to_str().unwrap().to_owned();

    let mut c = Checks::new("image: invokes from the image's root");
    let created = create_image(&sup, "img", &uri, json!({}))
        .unwrap_or_else(|e| panic!("CreateFunction: {e:?}\n{}", sup.stderr()));
    c.eq(
        "PackageType",
        created["PackageType"].as_str(),
        Some("Image"),
    );
    c.check(
        created.get("Runtime").is_none(),
        format!("no Runtime: {created}"),
    );
    c.check(
        created["CodeSha256"]
            .as_str()
            .is_some_and(|s| s.len() == 64),
        format!(
            "CodeSha256 is the manifest digest: {}",
            created["CodeSha256"]
        ),
    );

    let r = sup.invoke("img", json!({"hello": "image"}));
    c.check(
        r.get("FunctionError").is_none(),
        format!("no error: {r}\nlogs:\n{}", sup.logs("img").join("\n")),
    );
    let p = &r["Payload"];
    c.eq("event", &p["event"], &json!({"hello": "image"}));
    c.eq(
        "argv (Entrypoint + Cmd)",
        &p["argv"],
        &json!(["/app/bootstrap", "from-entrypoint", "from-cmd"]),
    );
    c.eq("cwd (WorkingDir)", p["cwd"].as_str(), Some("/app/data"));
    let env = &p["env"];
    c.eq(
        "the image's Env",
        env["GREETING"].as_str(),
        Some("hello from the image"),
    );
    c.eq("the image's PATH", env["PATH"].as_str(), Some("/bin:/app"));
    c.eq(
        "the function's Environment wins over the image's",
        env["STAGE"].as_str(),
        Some("function"),
    );
    c.eq(
        "_HANDLER is the Cmd",
        env["_HANDLER"].as_str(),
        Some("from-cmd"),
    );
    c.eq(
        "Runtime API",
        env["AWS_LAMBDA_RUNTIME_API"].as_str(),
        Some("127.0.0.1:9001"),
    );
    c.eq(
        "function name",
        env["AWS_LAMBDA_FUNCTION_NAME"].as_str(),
        Some("img"),
    );
    c.check(
        p["uid"].as_u64().is_some_and(|u| u >= 11000),
        format!(
            "runs as the function's uid, not the image's User 1000: {}",
            p["uid"]
        ),
    );
    let files = &p["files"];
    c.eq(
        "the upper layer's file",
        files["/etc/overlay"].as_str(),
        Some("upper"),
    );
    c.eq(
        "the image's /etc/passwd, not the host's",
        files["/etc/passwd"].as_str(),
        Some("app:x:1000:1000::/app:/sbin/nologin\n"),
    );
    c.eq(
        "a hard link in the image",
        files["/app/hardlink"].as_str(),
        Some("kept"),
    );
    c.eq(
        "a file the opaque layer added",
        files["/opq/new"].as_str(),
        Some("new"),
    );
    let exists = &p["exists"];
    for (path, want) in [
        ("/etc/gone", false),
        ("/opq/old", false),
        ("/usr/bin/python3", false),
        ("/var/task", false),
        ("/var/lang", false),
        ("/bin/sh", false),
    ] {
        c.eq(format!("{path} exists"), exists[path].as_bool(), Some(want));
    }
    c.eq("/tmp is writable", p["tmp_writable"].as_bool(), Some(true));
    c.eq("/ is read-only", p["root_writable"].as_bool(), Some(false));
    // The rootfs on the host: setuid dropped, modes normalised.
    let revisions = sup.code_revisions_dir("img");
    let rootfs = revisions.join("1/rootfs");
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        fs::symlink_metadata(rootfs.join(p))
            .map(|m| m.permissions().mode() & 0o7777)
            .ok()
    };
    c.eq(
        "app/bootstrap's mode (setuid dropped)",
        mode("app/bootstrap"),
        Some(0o755),
    );
    c.eq(
        "app/data/keep's mode (readable)",
        mode("app/data/keep"),
        Some(0o644),
    );

    // A warm invoke is served by the same environment.
    let again = sup.invoke("img", json!(2));
    c.eq(
        "second invoke's event",
        &again["Payload"]["event"],
        &json!(2),
    );
    let logs = sup.logs("img").join("\n");
    c.check(
        logs.contains("image bootstrap starting: /app/bootstrap"),
        format!("the program's output is in the function's log:\n{logs}"),
    );

    // The CLI, a tag, and ImageConfig overriding the image's Cmd and WorkingDir.
    let run = cli(
        &sup.socket,
        &[
            "create-function",
            "img-cli",
            "--image",
            &format!("{uri}:v1"),
            "--image-config",
            r#"{"Command":["from-override"],"WorkingDirectory":"/app"}"#,
        ],
    );
    let created = run.json();
    c.eq(
        "CLI PackageType",
        created["PackageType"].as_str(),
        Some("Image"),
    );
    c.eq(
        "ImageConfigResponse",
        &created["ImageConfigResponse"]["ImageConfig"]["Command"],
        &json!(["from-override"]),
    );
    let p = invoke_ok(&sup, "img-cli", json!({}));
    c.eq(
        "argv with Command overridden",
        &p["argv"],
        &json!(["/app/bootstrap", "from-entrypoint", "from-override"]),
    );
    c.eq("cwd overridden", p["cwd"].as_str(), Some("/app"));
    c.eq(
        "_HANDLER is the overriding Command",
        p["env"]["_HANDLER"].as_str(),
        Some("from-override"),
    );
    // UpdateFunctionConfiguration replaces the ImageConfig (the CLI's too).
    let run = cli(
        &sup.socket,
        &[
            "update-function-configuration",
            "img-cli",
            "--image-config",
            r#"{"EntryPoint":["/app/bootstrap","new-entrypoint"]}"#,
        ],
    );
    c.eq("update-function-configuration exit", run.code, Some(0));
    let p = invoke_ok(&sup, "img-cli", json!({}));
    c.eq(
        "argv with EntryPoint overridden (and so no Cmd)",
        &p["argv"],
        &json!(["/app/bootstrap", "new-entrypoint"]),
    );
    c.eq(
        "cwd back to the image's",
        p["cwd"].as_str(),
        Some("/app/data"),
    );
    match sup.request(
        "UpdateFunctionConfiguration",
        json!({"FunctionName": "img-cli", "Handler": "x.y"}),
    ) {
        Ok(v) => c.fail(format!("a Handler for an image was accepted: {v}")),
        Err((_, msg)) => {
            c.check(
                msg.contains("do not apply to a function of PackageType Image"),
                format!("Handler refused for an image: {msg}"),
            );
        }
    }

    // UpdateFunctionCode with a new image: its config takes over.
    let layout2 = Layout::new(work.join("layout2"));
    let layer = layout2.blob(
        LAYER_GZIP,
        &gzip(&tar_of(&[
            Entry::File("srv/app", &binary, 0o755),
            Entry::File("etc/overlay", b"second image", 0o644),
        ])),
    );
    layout2.finish(
        vec![layer],
        config(&["/srv/app"], &[], &[], "/srv"),
        "latest",
    );
    let updated = sup
        .request(
            "UpdateFunctionCode",
            json!({"FunctionName": "img", "ImageUri": layout2.dir.to_str().unwrap()}),
        )
        .unwrap_or_else(|e| panic!("UpdateFunctionCode: {e:?}"));
    c.check(
        updated["CodeSha256"] != created["CodeSha256"],
        "a new image has a new CodeSha256",
    );
    let p = invoke_ok(&sup, "img", json!("after update"));
    c.eq("argv of the new image", &p["argv"], &json!(["/srv/app"]));
    c.eq(
        "its file",
        p["files"]["/etc/overlay"].as_str(),
        Some("second image"),
    );
    c.eq("its cwd", p["cwd"].as_str(), Some("/srv"));

    // A restarted supervisor reads the image's settings back from the state dir.
    let mut sup = sup;
    sup.restart();
    let p = invoke_ok(&sup, "img", json!("after restart"));
    c.eq("argv after a restart", &p["argv"], &json!(["/srv/app"]));
    let got = sup
        .request("GetFunction", json!({"FunctionName": "img-cli"}))
        .unwrap_or_else(|e| panic!("GetFunction: {e:?}"));
    c.eq(
        "GetFunction's PackageType",
        got["Configuration"]["PackageType"]
            .as_str()
            .or(got["PackageType"].as_str()),
        Some("Image"),
    );
    // Deleting the function removes its unpacked images.
    sup.request("DeleteFunction", json!({"FunctionName": "img"}))
        .unwrap_or_else(|e| panic!("DeleteFunction: {e:?}"));
    c.check(
        !sup.code_revisions_dir("img").exists(),
        "the deleted function's rootfs revisions are gone",
    );
    c.finish();
}

#[test]
fn bad_images_are_refused_with_clear_errors_and_the_supervisor_keeps_serving() {
    if !require_root() {
        return;
    }
    let sup = Supervisor::start();
    let work = sup.dir.path().join("image-build");
    fs::create_dir_all(&work).unwrap();
    let binary = bootstrap_binary(&work);
    let mut c = Checks::new("image: refusals");
    let cfg = || config(&["/app/bootstrap"], &[], &[], "/");

    let expect_refusal =
        |c: &mut Checks, what: &str, name: &str, uri: &str, extra: Value, needle: &str| {
            match create_image(&sup, name, uri, extra) {
                Ok(v) => c.fail(format!("{what}: created, should be refused: {v}")),
                Err((kind, msg)) => {
                    c.eq(
                        format!("{what}: error kind"),
                        kind.as_str(),
                        "InvalidParameterValueException",
                    );
                    c.check(
                        msg.contains(needle),
                        format!("{what}: message {msg:?} mentions {needle:?}"),
                    );
                }
            }
        };

    // A layer blob whose content is not what its digest says.
    let (layout, layers) = good_image(&work.join("bad-digest"), &binary);
    let blob = layout.blob_path(&layers[1]);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[1024] ^= 0xff; // etc/overlay's content, after two 512-byte headers
    fs::write(&blob, bytes).unwrap();
    layout.finish(layers, cfg(), "v1");
    expect_refusal(
        &mut c,
        "bad digest",
        "bad1",
        layout.dir.to_str().unwrap(),
        json!({}),
        "content's sha256",
    );

    // A layer writing outside the root.
    let layout = Layout::new(work.join("escape"));
    let layer = layout.blob(
        LAYER_TAR,
        &tar_of(&[Entry::RawFile("app/../../escaped", b"out")]),
    );
    layout.finish(vec![layer], cfg(), "v1");
    expect_refusal(
        &mut c,
        "../ escape",
        "bad2",
        layout.dir.to_str().unwrap(),
        json!({}),
        "'..'",
    );
    c.check(
        !work.join("escaped").exists() && !sup.state_dir.join("escaped").exists(),
        "nothing was written outside",
    );

    // A symlink leading above the root, then a file through it.
    let layout = Layout::new(work.join("link-escape"));
    let layer = layout.blob(
        LAYER_TAR,
        &tar_of(&[
            Entry::Symlink("up", "../../.."),
            Entry::File("up/x", b"x", 0o644),
        ]),
    );
    layout.finish(vec![layer], cfg(), "v1");
    expect_refusal(
        &mut c,
        "symlink escape",
        "bad3",
        layout.dir.to_str().unwrap(),
        json!({}),
        "above the image's root",
    );

    // A blob listed but missing.
    let (layout, layers) = good_image(&work.join("missing"), &binary);
    fs::remove_file(layout.blob_path(&layers[0])).unwrap();
    layout.finish(layers, cfg(), "v1");
    expect_refusal(
        &mut c,
        "missing blob",
        "bad4",
        layout.dir.to_str().unwrap(),
        json!({}),
        "missing from the layout",
    );

    // A directory that is not a layout.
    let not_layout = work.join("not-a-layout");
    fs::create_dir_all(&not_layout).unwrap();
    fs::write(not_layout.join("index.json"), "{}").unwrap();
    expect_refusal(
        &mut c,
        "not a layout",
        "bad5",
        not_layout.to_str().unwrap(),
        json!({}),
        "not an OCI image layout",
    );

    // An unknown tag.
    let (layout, layers) = good_image(&work.join("good"), &binary);
    layout.finish(layers, cfg(), "v1");
    let good = layout.dir.to_str().unwrap().to_owned();
    expect_refusal(
        &mut c,
        "unknown tag",
        "bad6",
        &format!("{good}:v2"),
        json!({}),
        "no manifest in index.json is tagged \"v2\"",
    );
    // Runtime and Handler do not apply to images.
    expect_refusal(
        &mut c,
        "image with a Runtime",
        "bad7",
        &good,
        json!({"Runtime": "provided", "Handler": "x"}),
        "Runtime and Handler do not apply",
    );
    // An image that would run nothing.
    let layout = Layout::new(work.join("no-command"));
    let layer = layout.blob(LAYER_TAR, &tar_of(&[Entry::File("x", b"x", 0o644)]));
    layout.finish(vec![layer], config(&[], &[], &[], "/"), "v1");
    expect_refusal(
        &mut c,
        "no Entrypoint nor Cmd",
        "bad8",
        layout.dir.to_str().unwrap(),
        json!({}),
        "neither Entrypoint nor Cmd",
    );
    c.check(
        sup.request("GetFunction", json!({"FunctionName": "bad1"}))
            .is_err(),
        "a refused function does not exist",
    );
    let dirs: Vec<String> = fs::read_dir(sup.state_dir.join("functions"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    c.check(
        dirs.iter().all(|d| !d.starts_with("bad")),
        format!("nothing of a refused function stays: {dirs:?}"),
    );

    // What cannot start fails its init as on Lambda.
    for (name, image_config, error_type) in [
        (
            "no-such-entrypoint",
            json!({"EntryPoint": ["/nope"]}),
            "Runtime.InvalidEntrypoint",
        ),
        (
            "no-such-dir",
            json!({"WorkingDirectory": "/missing"}),
            "Runtime.InvalidWorkingDir",
        ),
    ] {
        create_image(&sup, name, &good, json!({"ImageConfig": image_config}))
            .unwrap_or_else(|e| panic!("CreateFunction {name}: {e:?}"));
        let r = sup.invoke(name, json!({}));
        c.eq(
            format!("{name}: errorType"),
            r["Payload"]["errorType"].as_str(),
            Some(error_type),
        );
    }

    // And the supervisor serves the good image.
    create_image(&sup, "good", &good, json!({}))
        .unwrap_or_else(|e| panic!("CreateFunction good: {e:?}\n{}", sup.stderr()));
    let p = invoke_ok(&sup, "good", json!({"still": "serving"}));
    c.eq(
        "the good image answers",
        &p["event"],
        &json!({"still": "serving"}),
    );
    c.finish();
}

#[test]
fn only_root_clients_may_name_an_image_layout() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let sup = Supervisor::start_with(&["--prewarm", "0", "--socket-mode", "0666"]);
    let mut c = Checks::new("ImageUri from a non-root client");
    fs::set_permissions(sup.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = sup.dir.path().join("lambdalet-client");
    fs::copy(common::BIN, &bin).unwrap();
    let layout = Layout::new(sup.dir.path().join("layout"));
    let layer = layout.blob(LAYER_TAR, &tar_of(&[Entry::File("x", b"x", 0o644)]));
    layout.finish(vec![layer], config(&["/x"], &[], &[], "/"), "v1");
    let out = Command::new(&bin)
        .uid(NOBODY)
        .gid(NOBODY)
        .arg("--socket")
        .arg(&sup.socket)
        .args(["create-function", "peek", "--image"])
        .arg(&layout.dir)
        .output()
        .expect("run the CLI as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    c.eq("exit status", out.status.code(), Some(255));
    c.check(
        stderr.contains("InvalidParameterValueException")
            && stderr.contains("Code.ImageUri")
            && stderr.contains("root clients only"),
        format!("the refusal says why: {stderr}"),
    );
    c.check(
        !sup.code_revisions_dir("peek").exists(),
        "nothing was unpacked",
    );
    c.finish();
}

#[test]
fn image_functions_never_take_pooled_blanks_and_can_be_provisioned() {
    if !require_root() {
        return;
    }
    // A pool of generic blanks, ready before the image functions exist.
    let sup = Supervisor::start_with(&["--prewarm", "2"]);
    let work = sup.dir.path().join("image-build");
    fs::create_dir_all(&work).unwrap();
    let binary = bootstrap_binary(&work);
    let (layout, layers) = good_image(&work.join("layout"), &binary);
    layout.finish(layers, config(&["/app/bootstrap"], &[], &[], "/app"), "v1");
    let uri = layout.dir.to_str().unwrap().to_owned();
    let mut c = Checks::new("image: pooled blanks and provisioned environments");
    std::thread::sleep(std::time::Duration::from_millis(500));

    create_image(&sup, "ondemand", &uri, json!({}))
        .unwrap_or_else(|e| panic!("CreateFunction: {e:?}"));
    let p = invoke_ok(&sup, "ondemand", json!(1));
    c.eq(
        "on demand, with blanks pooled: the image's root",
        p["files"]["/etc/overlay"].as_str(),
        Some("upper"),
    );

    create_image(&sup, "warm", &uri, json!({})).unwrap_or_else(|e| panic!("CreateFunction: {e:?}"));
    sup.request(
        "PutProvisionedConcurrencyConfig",
        json!({"FunctionName": "warm", "ProvisionedConcurrentExecutions": 1}),
    )
    .unwrap_or_else(|e| panic!("PutProvisionedConcurrencyConfig: {e:?}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        let status = sup
            .request(
                "GetProvisionedConcurrencyConfig",
                json!({"FunctionName": "warm"}),
            )
            .unwrap_or_else(|e| json!({"error": format!("{e:?}")}));
        if status["Status"] != "IN_PROGRESS" || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    c.eq(
        "provisioned status",
        status["Status"].as_str(),
        Some("READY"),
    );
    let r = sup.invoke("warm", json!(2));
    c.eq(
        "a provisioned image environment answers",
        &r["Payload"]["event"],
        &json!(2),
    );
    c.check(
        r.get("FunctionError").is_none(),
        format!("no error: {r}\n{}", sup.logs("warm").join("\n")),
    );
    c.finish();
}
