//! Reading Hugging Face safetensors checkpoints (single file or sharded with an index) into
//! host `f32` buffers, whatever the dtype on disk (f32, bf16, f16), and writing them back.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::config::read_json;
use crate::error::{ModelError, Result};

/// One tensor read from disk, converted to `f32`.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// All tensors of a checkpoint, by Hugging Face name, with the file each came from.
#[derive(Debug, Default)]
pub struct WeightStore {
    tensors: HashMap<String, (HostTensor, PathBuf)>,
}

impl WeightStore {
    /// Reads `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_files(&index)?
        } else {
            return Err(ModelError::weights(
                &single,
                "not found (and no model.safetensors.index.json either)",
            ));
        };
        let mut store = WeightStore::default();
        for file in files {
            store.read_file(&file)?;
        }
        Ok(store)
    }

    /// Reads tensors from in-memory safetensors bytes; `origin` names them in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        let mut store = WeightStore::default();
        store.read_bytes(bytes, origin)?;
        Ok(store)
    }

    fn read_file(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        self.read_bytes(&bytes, path)
    }

    fn read_bytes(&mut self, bytes: &[u8], path: &Path) -> Result<()> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            ModelError::weights(
                path,
                format!("not a valid safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        for (name, view) in st.tensors() {
            let data = to_f32(view.dtype(), view.data())
                .map_err(|m| ModelError::weights(path, format!("tensor `{name}`: {m}")))?;
            let shape = view.shape().to_vec();
            self.tensors
                .insert(name, (HostTensor { shape, data }, path.to_path_buf()));
        }
        Ok(())
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|(t, _)| t.shape.as_slice())
    }

    /// Removes and returns a tensor, checking its shape.
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let (tensor, path) = self.tensors.remove(name).ok_or_else(|| {
            ModelError::weights(self.describe_files(), format!("missing tensor `{name}`"))
        })?;
        if tensor.shape != expected {
            return Err(ModelError::Shape {
                path,
                name: name.to_string(),
                found: tensor.shape,
                expected: expected.to_vec(),
            });
        }
        Ok(tensor)
    }

    /// Names that were never taken (unexpected tensors), sorted.
    pub fn remaining(&self) -> Vec<String> {
        let mut names: Vec<_> = self.tensors.keys().cloned().collect();
        names.sort();
        names
    }

    fn describe_files(&self) -> PathBuf {
        let mut files: Vec<_> = self.tensors.values().map(|(_, p)| p.clone()).collect();
        files.sort();
        files.dedup();
        match files.as_slice() {
            [one] => one.clone(),
            [] => PathBuf::from("<no weights>"),
            [first, ..] => first
                .parent()
                .unwrap_or(Path::new("."))
                .join("model-*.safetensors"),
        }
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let v = read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| ModelError::config(index, "weight_map", "missing or not an object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            ModelError::config(index, format!("weight_map.{name}"), "expected a file name")
        })?;
        let path = dir.join(file);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let chunks = |n: usize| {
        if !bytes.len().is_multiple_of(n) {
            Err(format!("{} bytes is not a multiple of {n}", bytes.len()))
        } else {
            Ok(bytes.chunks_exact(n))
        }
    };
    Ok(match dtype {
        Dtype::F32 => chunks(4)?
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => chunks(2)?
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => chunks(2)?
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => chunks(8)?
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        other => {
            return Err(format!(
                "unsupported dtype {other:?} (supported: F32, BF16, F16, F64)"
            ));
        }
    })
}

/// Writes tensors to a safetensors file in `f32`, atomically (temporary file, then rename).
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
    let serialized = serialize_safetensors(tensors, path, Dtype::F32)?;
    write_atomic(path, &serialized)
}

/// Serializes tensors to safetensors bytes in `dtype` (`F32`, or `BF16` rounded to nearest
/// even); `origin` names them in errors.
pub fn serialize_safetensors(
    tensors: &BTreeMap<String, HostTensor>,
    origin: &Path,
    dtype: Dtype,
) -> Result<Vec<u8>> {
    let path = origin;
    // Sized once and filled in place (a `flat_map` collect grew the buffer byte by byte: 10 s
    // for Qwen2.5-0.5B's 2 GB).
    let encode: fn(&[f32]) -> Vec<u8> = match dtype {
        Dtype::F32 => |v| {
            let mut out = vec![0u8; v.len() * 4];
            for (c, x) in out.chunks_exact_mut(4).zip(v) {
                c.copy_from_slice(&x.to_le_bytes());
            }
            out
        },
        Dtype::BF16 => |v| {
            let mut out = vec![0u8; v.len() * 2];
            for (c, x) in out.chunks_exact_mut(2).zip(v) {
                c.copy_from_slice(&half::bf16::from_f32(*x).to_le_bytes());
            }
            out
        },
        other => {
            return Err(ModelError::weights(
                path,
                format!("cannot write dtype {other:?} (supported: F32, BF16)"),
            ));
        }
    };
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.shape.clone(), encode(&t.data)))
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, raw)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), raw)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::weights(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| ModelError::weights(path, e.to_string()))
}

/// Writes a file atomically: a temporary file in the same folder, fsync, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| ModelError::io(&tmp, e))?;
    file.sync_all().map_err(|e| ModelError::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_half_precision() {
        let one_bf16 = half::bf16::from_f32(1.5).to_le_bytes();
        let one_f16 = half::f16::from_f32(-2.25).to_le_bytes();
        assert_eq!(to_f32(Dtype::BF16, &one_bf16), Ok(vec![1.5]));
        assert_eq!(to_f32(Dtype::F16, &one_f16), Ok(vec![-2.25]));
        assert!(to_f32(Dtype::I8, &[1]).is_err());
        assert!(to_f32(Dtype::F32, &[1, 2, 3]).is_err());
    }
}
