//! The three messages of the Remote Execution API (`build.bazel.remote.execution.v2`) an
//! action-cache entry needs, so that a stock bazel-remote accepts ccb's `/ac/` entries: it
//! parses every `ActionResult` PUT under `/ac/` and checks that the blobs it names are in its
//! CAS (unless started with `--disable_http_ac_validation`). Field numbers are REAPI's; the
//! fields ccb does not use are left out (protobuf skips unknown fields on decode, so an entry
//! written by another client decodes as far as ccb needs).

use prost::Message;

/// `Digest`: a blob's SHA-256 (lowercase hex) and size.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Digest {
    #[prost(string, tag = "1")]
    pub hash: String,
    #[prost(int64, tag = "2")]
    pub size_bytes: i64,
}

/// `OutputFile`: a named output and the CAS blob holding it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutputFile {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(message, optional, tag = "2")]
    pub digest: Option<Digest>,
    #[prost(bool, tag = "4")]
    pub is_executable: bool,
}

/// `ActionResult`: what an action left.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActionResult {
    #[prost(message, repeated, tag = "2")]
    pub output_files: Vec<OutputFile>,
    #[prost(int32, tag = "4")]
    pub exit_code: i32,
}

impl ActionResult {
    pub fn encode_vec(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// `None` for bytes that are not an `ActionResult` (a foreign or corrupt entry).
    pub fn decode_bytes(bytes: &[u8]) -> Option<Self> {
        Self::decode(bytes).ok()
    }

    /// The digest of the output named `path`.
    pub fn output(&self, path: &str) -> Option<&Digest> {
        self.output_files
            .iter()
            .find(|f| f.path == path)
            .and_then(|f| f.digest.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_result_reads_back_with_its_outputs() {
        let r = ActionResult {
            output_files: vec![OutputFile {
                path: "ccb/record.json".into(),
                digest: Some(Digest {
                    hash: "ab".repeat(32),
                    size_bytes: 42,
                }),
                is_executable: false,
            }],
            exit_code: 0,
        };
        let bytes = r.encode_vec();
        let back = ActionResult::decode_bytes(&bytes).unwrap();
        assert_eq!(back.output("ccb/record.json").unwrap().size_bytes, 42);
        assert!(back.output("other").is_none());
    }

    #[test]
    fn the_encoding_is_reapis_wire_format() {
        // output_files (field 2, length-delimited) holding path (1) and digest (2 → hash 1,
        // size 2): the bytes a protoc-generated REAPI client writes for the same message.
        let r = ActionResult {
            output_files: vec![OutputFile {
                path: "p".into(),
                digest: Some(Digest {
                    hash: "h".into(),
                    size_bytes: 3,
                }),
                is_executable: false,
            }],
            exit_code: 0,
        };
        assert_eq!(
            r.encode_vec(),
            [
                0x12, 0x0a, 0x0a, 0x01, b'p', 0x12, 0x05, 0x0a, 0x01, b'h', 0x10, 0x03
            ]
        );
    }

    #[test]
    fn garbage_is_not_an_action_result() {
        assert!(ActionResult::decode_bytes(&[0xff, 0xff, 0xff]).is_none());
    }
}
