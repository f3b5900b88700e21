//! Tests of the registry against a temporary state dir.

use std::io::{Cursor, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use zip::write::SimpleFileOptions;

use super::*;
use crate::protocol::{Environment, ErrorKind};

fn zip_b64(files: &[(&str, &str)]) -> String {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in files {
        w.start_file(*name, SimpleFileOptions::default()).unwrap();
        w.write_all(content.as_bytes()).unwrap();
    }
    base64::engine::general_purpose::STANDARD.encode(w.finish().unwrap().into_inner())
}

fn zip_code(content: &str) -> FunctionCode {
    FunctionCode {
        image_uri: None,
        zip_file: Some(zip_b64(&[("app.py", content)])),
        path: None,
    }
}

fn create_req(name: &str) -> CreateFunction {
    CreateFunction {
        package_type: None,
        image_config: None,
        function_name: name.to_owned(),
        runtime: "python3".to_owned(),
        handler: "app.handler".to_owned(),
        code: zip_code("def handler(e, c):\n    return 1\n"),
        memory_size: None,
        timeout: None,
        environment: None,
        ephemeral_storage: None,
        description: None,
        layers: None,
    }
}

fn update_code_req(name: &str, content: &str) -> UpdateFunctionCode {
    UpdateFunctionCode {
        function_name: name.to_owned(),
        code: zip_code(content),
    }
}

fn revisions(function_dir: &Path) -> Vec<u64> {
    let mut revs: Vec<u64> = match fs::read_dir(function_dir.join(CODE_DIR)) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    revs.sort();
    revs
}

struct State {
    tmp: tempfile::TempDir,
}

impl State {
    fn new() -> Self {
        State {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn dir(&self) -> &Path {
        self.tmp.path()
    }
    fn open(&self) -> Registry {
        Registry::open(self.dir()).unwrap()
    }
    fn function_dir(&self, name: &str) -> PathBuf {
        self.dir().join(FUNCTIONS_DIR).join(name)
    }
    fn function_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir().join(FUNCTIONS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

#[test]
fn create_get_and_configuration() {
    let state = State::new();
    let mut reg = state.open();
    let mut req = create_req("hello");
    req.memory_size = Some(256);
    req.environment = Some(Environment {
        variables: [("A".to_owned(), "1".to_owned())].into(),
    });
    let f = reg.create(&req).unwrap().clone();
    assert_eq!(f.spec.name, "hello");
    assert_eq!(f.code_revision, 1);
    assert!(f.code_dir.is_absolute());
    assert_eq!(
        f.code_dir,
        state
            .function_dir("hello")
            .join("code/1")
            .canonicalize()
            .unwrap()
    );
    assert_eq!(
        fs::read_to_string(f.code_dir.join("app.py")).unwrap(),
        "def handler(e, c):\n    return 1\n"
    );
    assert_eq!(f.uid, 11000);
    assert_eq!(f.gid(), 11000);
    assert_eq!(
        uuid::Uuid::parse_str(&f.revision_id)
            .unwrap()
            .get_version_num(),
        4
    );

    let c = f.configuration();
    assert_eq!(c.function_name, "hello");
    assert_eq!(
        c.function_arn,
        "arn:aws:lambda:us-east-1:000000000000:function:hello"
    );
    assert_eq!(c.runtime, "python3");
    assert_eq!(c.handler, "app.handler");
    assert_eq!(c.memory_size, 256);
    assert_eq!(c.timeout, 3);
    assert_eq!(c.ephemeral_storage.size, 512);
    assert_eq!(c.environment.variables["A"], "1");
    assert_eq!(c.version, "$LATEST");
    assert_eq!(c.state, "Active");
    assert_eq!(c.code_size, f.code_size);
    assert_eq!(c.code_sha256.len(), 44);
    // 2026-11-27T19:07:42.000+0000
    assert_eq!(c.last_modified.len(), 28, "{}", c.last_modified);
    assert!(c.last_modified.ends_with("+0000"));

    assert_eq!(reg.get("hello"), Some(&f));
    assert_eq!(reg.get(&c.function_arn), Some(&f));
    assert_eq!(reg.get("other"), None);
    assert_eq!(reg.get("../hello"), None);

    // The record holds the environment: root only.
    let record = state.function_dir("hello").join(RECORD_FILE);
    assert_eq!(
        fs::metadata(record).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn create_twice_conflicts() {
    let state = State::new();
    let mut reg = state.open();
    reg.create(&create_req("f")).unwrap();
    let err = reg.create(&create_req("f")).unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyExists { .. }));
    let wire = WireError::from(err);
    assert_eq!(wire.kind, ErrorKind::ResourceConflictException);
    assert_eq!(wire.message, "Function already exist: f");
    // Through the ARN too.
    let err = reg
        .create(&create_req(
            "arn:aws:lambda:us-east-1:000000000000:function:f",
        ))
        .unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyExists { .. }));
}

#[test]
fn invalid_requests_leave_nothing() {
    let state = State::new();
    let mut reg = state.open();

    let mut req = create_req("f");
    req.memory_size = Some(64);
    let wire = WireError::from(reg.create(&req).unwrap_err());
    assert_eq!(wire.kind, ErrorKind::InvalidParameterValueException);
    assert_eq!(
        wire.message,
        "MemorySize 64 is out of range: it must be 128–10240 MB"
    );

    let mut req = create_req("f");
    req.code = FunctionCode {
        image_uri: None,
        zip_file: None,
        path: None,
    };
    let wire = WireError::from(reg.create(&req).unwrap_err());
    assert_eq!(wire.kind, ErrorKind::InvalidParameterValueException);
    assert!(wire.message.contains("send ZipFile"), "{}", wire.message);

    let mut req = create_req("f");
    req.code.path = Some("/tmp".to_owned());
    let wire = WireError::from(reg.create(&req).unwrap_err());
    assert_eq!(wire.kind, ErrorKind::InvalidParameterValueException);
    assert!(
        wire.message.contains("send exactly one"),
        "{}",
        wire.message
    );

    let mut req = create_req("f");
    req.code = FunctionCode {
        image_uri: None,
        zip_file: Some(zip_b64(&[("../evil.py", "x")])),
        path: None,
    };
    let wire = WireError::from(reg.create(&req).unwrap_err());
    assert_eq!(wire.kind, ErrorKind::InvalidParameterValueException);
    assert!(wire.message.contains("../evil.py"), "{}", wire.message);

    let mut req = create_req("f");
    req.code = FunctionCode {
        image_uri: None,
        zip_file: None,
        path: Some("relative/dir".to_owned()),
    };
    let wire = WireError::from(reg.create(&req).unwrap_err());
    assert_eq!(wire.kind, ErrorKind::InvalidParameterValueException);
    assert!(wire.message.contains("absolute"), "{}", wire.message);

    assert!(
        state.function_dirs().is_empty(),
        "{:?}",
        state.function_dirs()
    );
    assert_eq!(reg.list().count(), 0);
}

#[test]
fn create_from_a_directory_path() {
    let state = State::new();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("app.py"), "def handler(e, c): pass\n").unwrap();
    let mut reg = state.open();
    let mut req = create_req("d");
    req.code = FunctionCode {
        image_uri: None,
        zip_file: None,
        path: Some(src.path().to_str().unwrap().to_owned()),
    };
    let f = reg.create(&req).unwrap();
    assert_eq!(f.code_size, 24);
    assert!(f.code_dir.join("app.py").is_file());
}

#[test]
fn not_found_uses_lambdas_wording() {
    let state = State::new();
    let mut reg = state.open();
    let expect = "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope";
    let errors = [
        reg.update_code(&update_code_req("nope", "x")).unwrap_err(),
        reg.update_configuration(&UpdateFunctionConfiguration {
            function_name: "nope".into(),
            ..Default::default()
        })
        .unwrap_err(),
        reg.delete("nope").unwrap_err(),
    ];
    for err in errors {
        let wire = WireError::from(err);
        assert_eq!(wire.kind, ErrorKind::ResourceNotFoundException);
        assert_eq!(wire.message, expect);
    }
    // An invalid name is a parameter error, not a lookup.
    let wire = WireError::from(reg.delete("a/b").unwrap_err());
    assert_eq!(wire.kind, ErrorKind::InvalidParameterValueException);
}

#[test]
fn update_code_adds_a_revision_and_keeps_the_old_one() {
    let state = State::new();
    let mut reg = state.open();
    let first = reg.create(&create_req("f")).unwrap().clone();
    let second = reg
        .update_code(&update_code_req("f", "def handler(e, c): return 2\n"))
        .unwrap()
        .clone();
    assert_eq!(second.code_revision, 2);
    assert_ne!(second.revision_id, first.revision_id);
    assert_ne!(second.code_sha256, first.code_sha256);
    assert_eq!(second.uid, first.uid);
    assert_eq!(second.spec, first.spec);
    assert_eq!(
        fs::read_to_string(second.code_dir.join("app.py")).unwrap(),
        "def handler(e, c): return 2\n"
    );
    assert!(
        first.code_dir.join("app.py").is_file(),
        "old revision stays"
    );
    assert_eq!(reg.get("f"), Some(&second));

    // A refused package changes nothing.
    let bad = UpdateFunctionCode {
        function_name: "f".into(),
        code: FunctionCode {
            image_uri: None,
            zip_file: Some("!!!".into()),
            path: None,
        },
    };
    assert!(reg.update_code(&bad).is_err());
    assert_eq!(reg.get("f"), Some(&second));
    assert_eq!(revisions(&state.function_dir("f")), vec![1, 2]);
}

#[test]
fn update_configuration_keeps_the_code_revision() {
    let state = State::new();
    let mut reg = state.open();
    let first = reg.create(&create_req("f")).unwrap().clone();
    let next = reg
        .update_configuration(&UpdateFunctionConfiguration {
            function_name: "f".into(),
            timeout: Some(60),
            ..Default::default()
        })
        .unwrap()
        .clone();
    assert_eq!(next.spec.timeout_s, 60);
    assert_eq!(next.code_revision, first.code_revision);
    assert_eq!(next.code_dir, first.code_dir);
    assert_ne!(next.revision_id, first.revision_id);

    let err = reg
        .update_configuration(&UpdateFunctionConfiguration {
            function_name: "f".into(),
            timeout: Some(901),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        WireError::from(err).message,
        "Timeout 901 is out of range: it must be 1–900 seconds"
    );
    assert_eq!(reg.get("f"), Some(&next));
    assert_eq!(
        state.open().get("f"),
        Some(&next),
        "the refused update is not on disk"
    );
}

#[test]
fn state_persists_across_open() {
    let state = State::new();
    let mut reg = state.open();
    reg.create(&create_req("b")).unwrap();
    reg.create(&create_req("a")).unwrap();
    reg.update_code(&update_code_req("a", "v2")).unwrap();
    reg.update_configuration(&UpdateFunctionConfiguration {
        function_name: "b".into(),
        description: Some("described".into()),
        memory_size: Some(1769),
        ..Default::default()
    })
    .unwrap();
    let before: Vec<Function> = reg.list().cloned().collect();
    assert_eq!(
        before
            .iter()
            .map(|f| f.spec.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"],
        "listed by name"
    );
    drop(reg);
    let reopened = state.open();
    let after: Vec<Function> = reopened.list().cloned().collect();
    assert_eq!(after, before);
}

#[test]
fn uids_are_distinct_and_reused_only_after_prune() {
    let state = State::new();
    let mut reg = state.open();
    let uids: Vec<u32> = ["a", "b", "c"]
        .iter()
        .map(|n| reg.create(&create_req(n)).unwrap().uid)
        .collect();
    assert_eq!(uids, [11000, 11001, 11002]);

    reg.delete("b").unwrap();
    // b's environments may still run as 11001: not handed out yet, not even
    // after a restart.
    assert_eq!(reg.create(&create_req("d")).unwrap().uid, 11003);
    let mut reg = state.open();
    assert_eq!(reg.create(&create_req("e")).unwrap().uid, 11004);

    reg.prune_code("b", &BTreeSet::new()).unwrap();
    assert!(!state.function_dir("b").exists());
    assert_eq!(reg.create(&create_req("f")).unwrap().uid, 11001);

    let all: BTreeSet<u32> = reg.list().map(|f| f.uid).collect();
    assert_eq!(all.len(), reg.list().count());
}

#[test]
fn delete_then_prune() {
    let state = State::new();
    let mut reg = state.open();
    reg.create(&create_req("f")).unwrap();
    reg.update_code(&update_code_req("f", "v2")).unwrap();
    let deleted = reg.delete("f").unwrap();
    assert_eq!(deleted.code_revision, 2);
    assert_eq!(reg.get("f"), None);
    assert!(!state.function_dir("f").join(RECORD_FILE).exists());
    assert!(
        deleted.code_dir.is_dir(),
        "code stays while it may be mounted"
    );
    assert!(state.open().get("f").is_none(), "deleted for good");
    assert_eq!(state.open().deleted_with_code().unwrap(), ["f"]);

    // Revision 2 is still mounted by an environment.
    reg.prune_code("f", &BTreeSet::from([2])).unwrap();
    assert_eq!(revisions(&state.function_dir("f")), vec![2]);
    reg.prune_code("f", &BTreeSet::new()).unwrap();
    assert!(!state.function_dir("f").exists());
    assert!(reg.deleted_with_code().unwrap().is_empty());
    // Nothing to prune: fine.
    reg.prune_code("f", &BTreeSet::new()).unwrap();
    reg.prune_code("../../etc", &BTreeSet::new()).unwrap();
}

#[test]
fn prune_keeps_current_and_in_use() {
    let state = State::new();
    let mut reg = state.open();
    reg.create(&create_req("f")).unwrap();
    for v in ["v2", "v3", "v4"] {
        reg.update_code(&update_code_req("f", v)).unwrap();
    }
    reg.prune_code("f", &BTreeSet::from([2])).unwrap();
    assert_eq!(revisions(&state.function_dir("f")), vec![2, 4]);
    reg.prune_code("f", &BTreeSet::new()).unwrap();
    assert_eq!(revisions(&state.function_dir("f")), vec![4]);
    assert!(reg.get("f").unwrap().code_dir.join("app.py").is_file());
}

#[test]
fn recreate_after_delete_continues_revisions_and_keeps_the_uid() {
    let state = State::new();
    let mut reg = state.open();
    reg.create(&create_req("x")).unwrap();
    let old = reg.create(&create_req("f")).unwrap().clone();
    reg.delete("f").unwrap();
    let new = reg.create(&create_req("f")).unwrap().clone();
    assert_eq!(new.uid, old.uid);
    assert_eq!(new.code_revision, 2, "revision 1 may still be mounted");
    assert!(!state.function_dir("f").join(TOMBSTONE_FILE).exists());
    reg.prune_code("f", &BTreeSet::new()).unwrap();
    assert_eq!(revisions(&state.function_dir("f")), vec![2]);
    assert_eq!(state.open().get("f"), Some(&new));
}

#[test]
fn open_removes_leftovers_of_interrupted_writes() {
    let state = State::new();
    let mut reg = state.open();
    reg.create(&create_req("f")).unwrap();
    let dir = state.function_dir("f");
    fs::create_dir(
        dir.join("code")
            .join(format!("{}abc", package::STAGING_PREFIX)),
    )
    .unwrap();
    fs::write(dir.join(format!("{RECORD_TEMP_PREFIX}tmp")), "{").unwrap();
    // A create that installed code but died before writing its record.
    let orphan = state.function_dir("orphan");
    fs::create_dir_all(orphan.join("code/1")).unwrap();
    // Not a function name: left alone.
    fs::create_dir(state.dir().join(FUNCTIONS_DIR).join(".keep")).unwrap();

    let reg = state.open();
    assert_eq!(reg.list().count(), 1);
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        2,
        "function.json and code/"
    );
    assert_eq!(revisions(&dir), vec![1]);
    assert!(!orphan.exists());
    assert!(state.dir().join(FUNCTIONS_DIR).join(".keep").exists());
}

#[test]
fn open_refuses_a_corrupt_record_and_names_it() {
    let state = State::new();
    let mut reg = state.open();
    reg.create(&create_req("f")).unwrap();
    let record = state.function_dir("f").join(RECORD_FILE);
    fs::write(&record, "{\"format\": 1}").unwrap();
    let err = Registry::open(state.dir()).unwrap_err();
    assert!(
        matches!(&err, RegistryError::ParseRecord { path, .. } if *path == record),
        "{err}"
    );
    assert_eq!(WireError::from(err).kind, ErrorKind::ServiceException);

    // A record whose values are out of range is refused the same way.
    let state = State::new();
    state.open().create(&create_req("g")).unwrap();
    let path = state.function_dir("g").join(RECORD_FILE);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        text.replace("\"memory_mb\": 128", "\"memory_mb\": 1"),
    )
    .unwrap();
    let err = Registry::open(state.dir()).unwrap_err();
    assert!(err.to_string().contains("MemorySize 1"), "{err}");
}

#[test]
fn timestamps_in_lambdas_format() {
    let at = |secs: u64, millis: u64| {
        lambda_timestamp(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000+0000");
    assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000+0000");
    assert_eq!(at(1_795_806_462, 123), "2026-11-27T19:07:42.123+0000");
    assert_eq!(at(4_102_444_800, 999), "2100-01-01T00:00:00.999+0000");
}

#[test]
fn civil_dates_are_proleptic_gregorian() {
    use super::civil_from_days;
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(civil_from_days(20_784), (2026, 11, 27));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
}
