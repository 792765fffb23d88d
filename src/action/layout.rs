//! Disk layouts: diskimage-builder's block-device YAML (the subset images use: one
//! `local_loop`, a GPT `partitioning` with `mkfs` and `mount` nodes) turned into exact
//! partitions, and the sizes that follow from the root tree.
//!
//! Everything is computed here, in bytes and sectors, so the disk action only writes what
//! this module decided: no tool picks an offset or a GUID by itself, and the same inputs give
//! the same disk.

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

pub const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;
/// Partitions start on 1 MiB boundaries, as every modern partitioner does.
pub const ALIGN: u64 = MIB;

#[derive(Debug, thiserror::Error)]
#[error("block-device layout `{file}`: {message}")]
pub struct LayoutError {
    pub file: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Ext4,
    Xfs,
    Vfat,
}

impl FsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Vfat => "vfat",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub point: String,
    pub options: String,
    pub passno: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    pub kind: FsKind,
    pub label: String,
    pub mount: Option<Mount>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartSize {
    Bytes(u64),
    /// The rest of the disk (`100%`); only one partition, the last, may have it.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub name: String,
    /// The GPT type GUID, canonical text form.
    pub type_guid: String,
    pub size: PartSize,
    pub fs: Option<Filesystem>,
}

/// A disk layout, sizes not yet fixed for the partition that takes the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub partitions: Vec<Partition>,
}

/// The layout of an image with no block-device element. DIB's fallback is one filesystem on
/// the whole loop device (`mkfs_root` at `/`, fsck pass 1); ccb writes GPT disks, so its
/// fallback is that filesystem in the disk's only partition, with DIB's root defaults
/// (FS_TYPE, the root label). Without a bootloader element nothing is made bootable, as in
/// DIB.
pub const DEFAULT_LAYOUT: &str = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: root
        type: '8300'
        size: 100%
        mkfs:
          name: mkfs_root
          mount:
            mount_point: /
            fstab:
              options: defaults
              fsck-passno: 1
";

/// The root filesystem defaults DIB applies to the node named `mkfs_root`.
pub struct RootDefaults {
    pub fs: FsKind,
    pub label: String,
}

impl RootDefaults {
    /// From the environment: `FS_TYPE` (default ext4) and `DIB_ROOT_LABEL`/`ROOT_LABEL`
    /// (default `cloudimg-rootfs`, `img-rootfs` for xfs whose labels hold 12 characters).
    pub fn from_env(env: &std::collections::BTreeMap<String, String>) -> Result<Self, String> {
        let fs = match env.get("FS_TYPE").map(String::as_str).unwrap_or("ext4") {
            "" | "ext4" => FsKind::Ext4,
            "xfs" => FsKind::Xfs,
            other => return Err(format!("FS_TYPE `{other}` is not supported (ext4 or xfs)")),
        };
        let label = env
            .get("DIB_ROOT_LABEL")
            .or_else(|| env.get("ROOT_LABEL"))
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| match fs {
                FsKind::Xfs => "img-rootfs".into(),
                _ => "cloudimg-rootfs".into(),
            });
        Ok(Self { fs, label })
    }
}

fn type_guid(code: &str) -> Option<&'static str> {
    Some(match code.to_ascii_uppercase().as_str() {
        "EF00" => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        "EF02" => "21686148-6449-6E6F-744E-656564454649",
        "8300" => "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        "8200" => "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
        "8E00" => "E6D6D379-F507-44C2-A23C-238F2A3DF928",
        _ => return None,
    })
}

/// `550MiB`, `8MiB`, `1GiB`, `100%`.
fn parse_size(s: &str) -> Option<PartSize> {
    let s = s.trim();
    if s == "100%" {
        return Some(PartSize::Rest);
    }
    crate::units::parse_size(s).map(PartSize::Bytes)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses a block-device YAML document (`file` names it in errors).
pub fn parse(file: &str, yaml: &str, root: &RootDefaults) -> Result<Layout, LayoutError> {
    let err = |message: String| LayoutError {
        file: file.to_string(),
        message,
    };
    let doc: Value = serde_yaml::from_str(yaml).map_err(|e| err(e.to_string()))?;
    let nodes = doc
        .as_sequence()
        .ok_or_else(|| err("the document must be a list of plugin nodes".into()))?;
    let mut partitions = Vec::new();
    let mut seen_loop = false;
    for node in nodes {
        let map = node
            .as_mapping()
            .filter(|m| m.len() == 1)
            .ok_or_else(|| err("each node must be a map with exactly one plugin".into()))?;
        let (plugin, body) = map.iter().next().expect("one entry");
        let plugin = text(plugin).unwrap_or_default();
        match plugin.as_str() {
            "local_loop" => seen_loop = true,
            "partitioning" => {
                let label = body.get("label").and_then(text).unwrap_or_default();
                if label != "gpt" {
                    return Err(err(format!(
                        "partitioning label `{label}` is not supported (ccb writes GPT disks)"
                    )));
                }
                let parts = body
                    .get("partitions")
                    .and_then(Value::as_sequence)
                    .ok_or_else(|| err("`partitioning` needs a `partitions` list".into()))?;
                for p in parts {
                    partitions.push(partition(p, root).map_err(&err)?);
                }
            }
            other => {
                return Err(err(format!(
                    "plugin `{other}` is not supported (local_loop and gpt partitioning are)"
                )));
            }
        }
    }
    if !seen_loop {
        return Err(err("no `local_loop` node".into()));
    }
    if partitions.is_empty() {
        return Err(err("no partitions".into()));
    }
    let rest: Vec<usize> = partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.size == PartSize::Rest)
        .map(|(i, _)| i)
        .collect();
    if rest.len() > 1 || rest.first().is_some_and(|&i| i != partitions.len() - 1) {
        return Err(err(
            "only the last partition may take the rest (`100%`)".into()
        ));
    }
    let roots = partitions
        .iter()
        .filter(|p| {
            p.fs.as_ref()
                .and_then(|f| f.mount.as_ref())
                .is_some_and(|m| m.point == "/")
        })
        .count();
    if roots != 1 {
        return Err(err(format!(
            "exactly one filesystem must be mounted at `/` ({roots} are)"
        )));
    }
    Ok(Layout { partitions })
}

fn partition(p: &Value, root: &RootDefaults) -> Result<Partition, String> {
    let name = p
        .get("name")
        .and_then(text)
        .ok_or("a partition needs a `name`")?;
    let code = p
        .get("type")
        .and_then(text)
        .unwrap_or_else(|| "8300".into());
    let type_guid = type_guid(&code)
        .map(str::to_string)
        .or_else(|| (code.len() == 36).then(|| code.to_ascii_uppercase()))
        .ok_or(format!("partition `{name}`: unknown type `{code}`"))?;
    let size_text = p
        .get("size")
        .and_then(text)
        .unwrap_or_else(|| "100%".into());
    let size = parse_size(&size_text).ok_or(format!(
        "partition `{name}`: size `{size_text}` (e.g. 550MiB, 1GiB, 100%)"
    ))?;
    let fs = match p.get("mkfs") {
        None => None,
        Some(m) => {
            let node_name = m.get("name").and_then(text).unwrap_or_default();
            let is_root = node_name == "mkfs_root";
            let kind = match m.get("type").and_then(text) {
                None if is_root => root.fs,
                None => return Err(format!("partition `{name}`: mkfs needs a `type`")),
                Some(t) => match t.as_str() {
                    "ext4" => FsKind::Ext4,
                    "xfs" => FsKind::Xfs,
                    "vfat" => FsKind::Vfat,
                    other => {
                        return Err(format!(
                            "partition `{name}`: filesystem `{other}` is not supported (ext4, xfs, vfat)"
                        ));
                    }
                },
            };
            let label = match m.get("label").and_then(text) {
                Some(l) => l,
                None if is_root => root.label.clone(),
                None => name.clone(),
            };
            let mount = m.get("mount").map(|mt| {
                let fstab = mt.get("fstab");
                Mount {
                    point: mt.get("mount_point").and_then(text).unwrap_or_default(),
                    options: fstab
                        .and_then(|f| f.get("options"))
                        .and_then(text)
                        .unwrap_or_else(|| "defaults".into()),
                    passno: fstab
                        .and_then(|f| f.get("fsck-passno"))
                        .and_then(text)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(2),
                }
            });
            Some(Filesystem { kind, label, mount })
        }
    };
    Ok(Partition {
        name,
        type_guid,
        size,
        fs,
    })
}

/// A partition with its place on the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub number: u32,
    pub part: Partition,
    /// Byte offset and length.
    pub offset: u64,
    pub length: u64,
}

/// The whole disk: its size and every partition's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    pub size: u64,
    pub partitions: Vec<Placed>,
}

impl DiskPlan {
    pub fn root(&self) -> &Placed {
        self.partitions
            .iter()
            .find(|p| {
                p.part
                    .fs
                    .as_ref()
                    .and_then(|f| f.mount.as_ref())
                    .is_some_and(|m| m.point == "/")
            })
            .expect("parse checked there is one root")
    }
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// The GPT's backup copy takes 33 sectors at the end; keep the last 1 MiB free.
const TAIL: u64 = MIB;

/// Places the partitions. `rest` is the size wanted for the partition that takes the rest
/// (from the tree), `total` a fixed disk size from the manifest (it wins when given).
pub fn place(layout: &Layout, rest: u64, total: Option<u64>) -> Result<DiskPlan, String> {
    let mut offset = ALIGN;
    let mut out = Vec::new();
    let fixed: u64 = layout
        .partitions
        .iter()
        .map(|p| match p.size {
            PartSize::Bytes(b) => align_up(b, ALIGN),
            PartSize::Rest => 0,
        })
        .sum();
    let size = match total {
        Some(t) => {
            let t = align_up(t, ALIGN);
            if t < ALIGN + fixed + TAIL + 64 * MIB {
                return Err(format!(
                    "a disk of {} MiB cannot hold the layout's fixed partitions ({} MiB)",
                    t / MIB,
                    fixed / MIB
                ));
            }
            t
        }
        None => ALIGN + fixed + align_up(rest, ALIGN) + TAIL,
    };
    for (i, p) in layout.partitions.iter().enumerate() {
        let length = match p.size {
            PartSize::Bytes(b) => align_up(b, ALIGN),
            PartSize::Rest => size - TAIL - offset,
        };
        out.push(Placed {
            number: i as u32 + 1,
            part: p.clone(),
            offset,
            length,
        });
        offset += length;
    }
    if offset > size - TAIL {
        return Err("the partitions do not fit on the disk".into());
    }
    if total.is_some() {
        let root = out
            .iter()
            .find(|p| p.part.size == PartSize::Rest)
            .map(|p| p.length)
            .unwrap_or(0);
        if root < rest {
            return Err(format!(
                "the root filesystem needs about {} MiB but the manifest's `size` leaves {} MiB",
                rest / MIB,
                root / MIB
            ));
        }
    }
    Ok(DiskPlan {
        size,
        partitions: out,
    })
}

/// The root filesystem size DIB would pick for a tree of `tree_bytes` (du): du / 0.6, plus the
/// ext4 journal, rounded to 64 KiB; at least 512 MiB.
pub fn root_size(tree_bytes: u64, fs: FsKind) -> u64 {
    let journal = if fs == FsKind::Ext4 { 64 * MIB } else { 0 };
    let sized = tree_bytes.saturating_mul(10) / 6 + journal;
    align_up(sized.max(512 * MIB), 64 * 1024)
}

/// A GUID in GPT's on-disk byte order (the first three fields little-endian).
pub fn guid_bytes(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Some(b)
}

/// A stable GUID (version 4 layout) derived from a seed: the same build gives the same disk.
pub fn derived_guid(seed: &str) -> String {
    let h = blake3::hash(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x: String = b.iter().map(|v| format!("{v:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EFI: &str = include_str!("../../elements/block-device-efi/block-device-default.yaml");

    fn ext4() -> RootDefaults {
        RootDefaults {
            fs: FsKind::Ext4,
            label: "cloudimg-rootfs".into(),
        }
    }

    #[test]
    fn the_efi_layout_has_esp_bios_boot_and_root() {
        let l = parse("block-device-efi", EFI, &ext4()).unwrap();
        let names: Vec<&str> = l.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ESP", "BSP", "root"]);
        let esp = l.partitions[0].fs.as_ref().unwrap();
        assert_eq!((esp.kind, esp.label.as_str()), (FsKind::Vfat, "MKFS_ESP"));
        assert_eq!(esp.mount.as_ref().unwrap().point, "/boot/efi");
        assert!(l.partitions[1].fs.is_none());
        let root = l.partitions[2].fs.as_ref().unwrap();
        assert_eq!(
            (root.kind, root.label.as_str()),
            (FsKind::Ext4, "cloudimg-rootfs")
        );
    }

    #[test]
    fn xfs_roots_take_their_type_and_short_label_from_the_environment() {
        let env = [("FS_TYPE".to_string(), "xfs".to_string())].into();
        let l = parse("efi", EFI, &RootDefaults::from_env(&env).unwrap()).unwrap();
        let root = l.partitions[2].fs.as_ref().unwrap();
        assert_eq!(
            (root.kind, root.label.as_str()),
            (FsKind::Xfs, "img-rootfs")
        );
    }

    #[test]
    fn partitions_are_aligned_and_the_last_takes_the_rest() {
        let l = parse("efi", EFI, &ext4()).unwrap();
        let plan = place(&l, 1000 * MIB, None).unwrap();
        let p = &plan.partitions;
        assert_eq!((p[0].offset, p[0].length), (MIB, 550 * MIB));
        assert_eq!((p[1].offset, p[1].length), (551 * MIB, 8 * MIB));
        assert_eq!(p[2].offset, 559 * MIB);
        assert_eq!(p[2].length, 1000 * MIB);
        assert_eq!(plan.size, 559 * MIB + 1000 * MIB + MIB);
        let fixed = place(&l, 1000 * MIB, Some(4 << 30)).unwrap();
        assert_eq!(fixed.size, 4 << 30);
        assert_eq!(fixed.partitions[2].length, (4 << 30) - 559 * MIB - MIB);
        assert!(
            place(&l, 8000 * MIB, Some(4 << 30)).is_err(),
            "too small for the tree"
        );
    }

    #[test]
    fn unsupported_layouts_are_named() {
        let e = parse(
            "x.yaml",
            "- local_loop: {name: image0}\n- lvm: {}\n",
            &ext4(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("plugin `lvm` is not supported"),
            "{e}"
        );
        let mbr = "- local_loop: {name: image0}\n- partitioning: {base: image0, label: mbr, partitions: []}\n";
        assert!(
            parse("x.yaml", mbr, &ext4())
                .unwrap_err()
                .to_string()
                .contains("GPT")
        );
    }

    #[test]
    fn a_partition_may_take_the_rest_of_the_disk() {
        assert_eq!(parse_size("100%"), Some(PartSize::Rest));
    }

    #[test]
    fn guids_use_gpt_byte_order_and_derive_stably() {
        let b = guid_bytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap();
        assert_eq!(&b[..4], &[0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(&b[8..], &[0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b]);
        assert_eq!(derived_guid("x"), derived_guid("x"));
        assert_ne!(derived_guid("x"), derived_guid("y"));
        assert_eq!(derived_guid("x").len(), 36);
    }

    #[test]
    fn the_default_layout_is_one_root_filesystem_taking_the_disk() {
        let xfs = RootDefaults {
            fs: FsKind::Xfs,
            label: "img-rootfs".into(),
        };
        let l = parse("default", DEFAULT_LAYOUT, &xfs).unwrap();
        assert_eq!(l.partitions.len(), 1);
        let root = &l.partitions[0];
        assert_eq!(root.size, PartSize::Rest);
        let fs = root.fs.as_ref().unwrap();
        assert_eq!((fs.kind, fs.label.as_str()), (FsKind::Xfs, "img-rootfs"));
        let mount = fs.mount.as_ref().unwrap();
        assert_eq!((mount.point.as_str(), mount.passno), ("/", 1));
    }
}
