//! Reading and unpacking OCI image layouts, without root: layouts built here
//! from tar entries, with real digests.

use super::*;
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Fifo(&'a str),
    /// A name written raw into the header (tar::Builder refuses `..`).
    Raw(&'a str, &'a [u8]),
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o700);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Link(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Hard(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::Raw(p, data) => {
                h.set_size(data.len() as u64);
                h.as_old_mut().name[..p.len()].copy_from_slice(p.as_bytes());
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

struct L {
    dir: PathBuf,
}

impl L {
    fn new(dir: PathBuf) -> L {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        L { dir }
    }
    fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let hex = format!("{:x}", Sha256::digest(bytes));
        fs::write(self.dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
    }
    fn layer(&self, entries: &[E]) -> Value {
        self.blob(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &gzip(&tar_of(entries)),
        )
    }
    fn manifest(&self, layers: Vec<Value>, arch: &str) -> Value {
        let config = json!({
            "architecture": arch, "os": "linux",
            "config": {"Entrypoint": ["/app"], "Cmd": ["x"], "Env": ["A=1"], "WorkingDir": "/w", "User": "nobody"},
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": config, "layers": layers});
        self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            m.to_string().as_bytes(),
        )
    }
    fn index(&self, manifests: Vec<Value>) {
        let i = json!({"schemaVersion": 2, "manifests": manifests});
        fs::write(self.dir.join("index.json"), i.to_string()).unwrap();
    }
    fn uri(&self) -> String {
        self.dir.to_str().unwrap().to_owned()
    }
}

fn install_at(tmp: &Path, uri: &str, limits: &ImageLimits) -> Result<InstalledImage, ImageError> {
    install(uri, &tmp.join("out"), limits)
}

fn one_layer_image(tmp: &Path, entries: &[E]) -> L {
    let l = L::new(tmp.join("layout"));
    let layer = l.layer(entries);
    let m = l.manifest(vec![layer], host_arch());
    l.index(vec![m]);
    l
}

fn entry_error(r: Result<InstalledImage, ImageError>) -> String {
    match r {
        Err(e @ ImageError::Entry { .. }) => e.to_string(),
        other => panic!("expected an entry refusal, got {other:?}"),
    }
}

#[test]
fn uris_name_a_layout_and_an_optional_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("with:colon");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("oci-layout"), "{}").unwrap();
    let plain = ImageRef::parse(dir.to_str().unwrap()).unwrap();
    assert_eq!((plain.layout, plain.tag), (dir.clone(), None));
    let tagged = ImageRef::parse("/images/app:v1.2").unwrap();
    assert_eq!(tagged.layout, Path::new("/images/app"));
    assert_eq!(tagged.tag.as_deref(), Some("v1.2"));
    assert!(ImageRef::parse("images/app").is_err());
    assert!(ImageRef::parse("/images/app:bad tag").is_err());
    assert_eq!(ImageRef::parse("/a:b/c").unwrap().tag, None);
}

#[test]
fn layers_apply_in_order_with_whiteouts_and_links() {
    let tmp = tempfile::tempdir().unwrap();
    let l = L::new(tmp.path().join("layout"));
    let lower = l.layer(&[
        E::Dir("etc"),
        E::File("etc/gone", b"x", 0o644),
        E::File("etc/kept", b"lower", 0o644),
        E::Dir("opq"),
        E::File("opq/old", b"old", 0o644),
        E::Dir("opq/sub"),
        E::File("opq/sub/old", b"old", 0o644),
        E::Dir("becomes-file"),
        E::File("becomes-file/x", b"x", 0o644),
        E::Dir("app"),
        E::File("app/tool", b"#!", 0o4755),
        E::Link("bin", "/app"),
        E::Fifo("dev-fifo"),
    ]);
    let upper = l.blob(
        "application/vnd.oci.image.layer.v1.tar",
        &tar_of(&[
            E::File("etc/.wh.gone", b"", 0o644),
            E::File("etc/kept", b"upper", 0o600),
            E::File("opq/.wh..wh..opq", b"", 0o644),
            E::File("opq/sub/new", b"new", 0o644),
            E::File("becomes-file", b"now a file", 0o644),
            // Through the absolute link bin -> /app: lands in app/.
            E::File("bin/via-link", b"v", 0o644),
            E::Hard("app/hard", "etc/kept"),
            E::File("nodir/.wh.ghost", b"", 0o644),
        ]),
    );
    let m = l.manifest(vec![lower, upper], host_arch());
    l.index(vec![m.clone()]);
    let installed = install_at(tmp.path(), &l.uri(), &ImageLimits::LAMBDA).unwrap();
    let root = tmp.path().join("out").join(ROOTFS_DIR);
    let read = |p: &str| fs::read_to_string(root.join(p)).ok();
    assert!(!root.join("etc/gone").exists());
    assert_eq!(read("etc/kept").as_deref(), Some("upper"));
    assert!(!root.join("opq/old").exists() && !root.join("opq/sub/old").exists());
    assert_eq!(read("opq/sub/new").as_deref(), Some("new"));
    assert_eq!(read("becomes-file").as_deref(), Some("now a file"));
    assert_eq!(read("app/via-link").as_deref(), Some("v"));
    assert_eq!(fs::read_link(root.join("bin")).unwrap(), Path::new("/app"));
    assert_eq!(
        fs::metadata(root.join("app/hard")).unwrap().ino(),
        fs::metadata(root.join("etc/kept")).unwrap().ino()
    );
    assert!(!root.join("dev-fifo").exists(), "fifos are skipped");
    assert!(
        !root.join("nodir").exists(),
        "a whiteout makes no directory"
    );
    let mode = |p: &str| fs::metadata(root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("app/tool"), 0o755, "setuid dropped");
    assert_eq!(mode("etc/kept"), 0o644, "readable by the function");
    assert_eq!(mode("etc"), 0o755);
    for point in MOUNT_POINTS {
        assert!(root.join(point).is_dir(), "{point} made");
    }
    assert!(
        root.join("w").is_dir(),
        "the WorkingDir the layers lack is made"
    );
    let run = load_run(&tmp.path().join("out")).unwrap();
    assert_eq!(run, installed.run);
    assert_eq!(
        (run.entrypoint, run.cmd),
        (vec!["/app".to_string()], vec!["x".to_string()])
    );
    assert_eq!(
        (run.env, run.working_dir),
        (vec!["A=1".to_string()], "/w".to_string())
    );
    assert_eq!(
        installed.code_sha256,
        m["digest"].as_str().unwrap().trim_start_matches("sha256:")
    );
}

#[test]
fn escaping_entries_are_refused() {
    for (what, entries, needle) in [
        ("dotdot", vec![E::Raw("a/../../x", b"x")], "'..'"),
        ("absolute", vec![E::Raw("/etc/x", b"x")], "absolute"),
        (
            "through a link",
            vec![E::Link("up", "../.."), E::File("up/x", b"x", 0o644)],
            "above the image's root",
        ),
        (
            "hard link out",
            vec![E::Raw("h", b""), E::Hard("x", "../../etc/passwd")],
            "'..'",
        ),
        (
            "hard link to a directory",
            vec![E::Dir("d"), E::Hard("x", "d")],
            "not a regular file",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let l = one_layer_image(tmp.path(), &entries);
        let msg = entry_error(install_at(tmp.path(), &l.uri(), &ImageLimits::LAMBDA));
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(
            !tmp.path().join("out").exists(),
            "{what}: nothing installed"
        );
        let left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["layout"], "{what}: no staging left");
    }
}

#[test]
fn a_tar_bomb_stops_at_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 4 << 20];
    let l = one_layer_image(
        tmp.path(),
        &[E::File("a", &zeros, 0o644), E::File("b", &zeros, 0o644)],
    );
    let limits = ImageLimits {
        bytes: 6 << 20,
        entries: 100,
    };
    match install_at(tmp.path(), &l.uri(), &limits) {
        Err(ImageError::TooLarge { entry, limit, .. }) => {
            assert_eq!((entry.as_str(), limit), ("b", 6 << 20));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn blobs_are_checked_against_their_descriptors() {
    let tmp = tempfile::tempdir().unwrap();
    let l = L::new(tmp.path().join("layout"));
    let mut layer = l.layer(&[E::File("a", b"a", 0o644)]);
    layer["size"] = json!(layer["size"].as_u64().unwrap() + 1);
    let m = l.manifest(vec![layer], host_arch());
    l.index(vec![m]);
    let e = install_at(tmp.path(), &l.uri(), &ImageLimits::LAMBDA).unwrap_err();
    assert!(e.to_string().contains("its descriptor says"), "{e}");

    let tmp = tempfile::tempdir().unwrap();
    let l = L::new(tmp.path().join("layout"));
    let layer = l.blob("application/vnd.oci.image.layer.v1.tar+zstd", b"zstd");
    let m = l.manifest(vec![layer], host_arch());
    l.index(vec![m]);
    let e = install_at(tmp.path(), &l.uri(), &ImageLimits::LAMBDA).unwrap_err();
    assert!(
        e.to_string().contains("zstd layers are not supported"),
        "{e}"
    );
}

#[test]
fn the_manifest_is_chosen_by_tag_or_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let l = L::new(tmp.path().join("layout"));
    let layer = l.layer(&[E::File("a", b"a", 0o644)]);
    let mut here = l.manifest(vec![layer.clone()], host_arch());
    here["platform"] = json!({"architecture": host_arch(), "os": "linux"});
    let mut other = l.manifest(vec![layer.clone()], "riscv64");
    other["platform"] = json!({"architecture": "riscv64", "os": "linux"});
    // A nested index holding both, tagged in the top one.
    let nested = json!({"schemaVersion": 2, "manifests": [other.clone(), here.clone()]});
    let mut nested_desc = l.blob(
        "application/vnd.oci.image.index.v1+json",
        nested.to_string().as_bytes(),
    );
    nested_desc["annotations"] = json!({REF_NAME_ANNOTATION: "multi"});
    let mut tagged_other = other.clone();
    tagged_other["annotations"] = json!({REF_NAME_ANNOTATION: "riscv"});
    l.index(vec![nested_desc, tagged_other]);

    let got = install(
        &format!("{}:multi", l.uri()),
        &tmp.path().join("a"),
        &ImageLimits::LAMBDA,
    )
    .unwrap();
    assert_eq!(got.run.manifest_digest, here["digest"].as_str().unwrap());
    let e = install(
        &format!("{}:riscv", l.uri()),
        &tmp.path().join("b"),
        &ImageLimits::LAMBDA,
    )
    .unwrap_err();
    assert!(matches!(e, ImageError::Platform { .. }), "{e}");
    // Untagged: of the three manifests, the one for this host.
    let got = install(&l.uri(), &tmp.path().join("c"), &ImageLimits::LAMBDA).unwrap();
    assert_eq!(got.run.manifest_digest, here["digest"].as_str().unwrap());
    let e = install(
        &format!("{}:nope", l.uri()),
        &tmp.path().join("d"),
        &ImageLimits::LAMBDA,
    )
    .unwrap_err();
    assert!(e.to_string().contains("its tags: [multi, riscv]"), "{e}");
}

#[test]
fn two_manifests_for_this_host_need_a_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let l = L::new(tmp.path().join("layout"));
    let mut manifests = Vec::new();
    for content in [&b"one"[..], b"two"] {
        let layer = l.layer(&[E::File("a", content, 0o644)]);
        let mut m = l.manifest(vec![layer], host_arch());
        m["platform"] = json!({"architecture": host_arch(), "os": "linux"});
        manifests.push(m);
    }
    l.index(manifests);
    let e = install(&l.uri(), &tmp.path().join("out"), &ImageLimits::LAMBDA).unwrap_err();
    assert!(
        e.to_string().contains("name one with ImageUri PATH:TAG"),
        "{e}"
    );
}

#[test]
fn a_directory_that_is_not_a_layout_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = install(
        tmp.path().to_str().unwrap(),
        &tmp.path().join("out"),
        &ImageLimits::LAMBDA,
    )
    .unwrap_err();
    assert!(matches!(e, ImageError::NotALayout { .. }), "{e}");
    assert!(e.to_string().contains("no readable oci-layout file"), "{e}");
}
