//! Pretty-printing of the supervisor's answers.
//!
//! The answer arrives as JSON text. Going through `serde_json::Value` would sort
//! object keys alphabetically (the crate is built without `preserve_order`) and
//! respell numbers; re-indenting the text keeps Lambda's field order
//! (`FunctionName` first) and every value byte for byte.

/// Re-indent valid JSON text with two spaces per level, like
/// `serde_json::to_string_pretty`. The input must be valid JSON (the client only
/// passes text that serde_json has already parsed).
pub fn pretty(json: &str) -> String {
    let bytes = json.as_bytes();
    let mut out = String::with_capacity(json.len() + json.len() / 2);
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' => {
                // Copy the string verbatim, escapes included.
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let end = (i + 1).min(bytes.len());
                out.push_str(&json[start..end]);
            }
            b'{' | b'[' => {
                let close = if c == b'{' { b'}' } else { b']' };
                let next = skip_ws(bytes, i + 1);
                if next < bytes.len() && bytes[next] == close {
                    out.push(c as char);
                    out.push(close as char);
                    i = next;
                } else {
                    depth += 1;
                    out.push(c as char);
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c as char);
            }
            b',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            b':' => out.push_str(": "),
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                // Numbers, true, false, null: ASCII runs up to the next delimiter.
                let start = i;
                while i + 1 < bytes.len()
                    && !matches!(
                        bytes[i + 1],
                        b',' | b'}' | b']' | b':' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    i += 1;
                }
                out.push_str(&json[start..=i]);
            }
        }
        i += 1;
    }
    out
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

#[cfg(test)]
mod tests {
    use super::pretty;

    #[test]
    fn matches_serde_json_pretty_on_sorted_input() {
        let samples = [
            r#"{"a":1,"b":[1,2,{"c":null}],"d":{},"e":[],"f":"x"}"#,
            r#"[]"#,
            r#""plain""#,
            r#"-15"#,
            r#"{"nested":{"deeper":{"list":[true,false]}}}"#,
            r#"{"s":"quote \" brace { bracket ] comma , colon : backslash \\"}"#,
        ];
        for s in samples {
            let v: serde_json::Value = serde_json::from_str(s).unwrap();
            assert_eq!(pretty(s), serde_json::to_string_pretty(&v).unwrap(), "{s}");
        }
    }

    #[test]
    fn keeps_key_order_numbers_and_unicode() {
        let s = "{ \"Z\" : 1.10 , \"E\" : -1.5e10 , \"A\" : [ ] , \"é\" : \"ü\\u00e9\" }";
        assert_eq!(
            pretty(s),
            "{\n  \"Z\": 1.10,\n  \"E\": -1.5e10,\n  \"A\": [],\n  \"é\": \"ü\\u00e9\"\n}"
        );
    }
}
