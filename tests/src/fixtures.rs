//! Checkpoints for tests and benchmarks, written to disk as a real model's
//! would be: shards named `model-0000k-of-0000n.safetensors` and a
//! `model.safetensors.index.json`.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use weightlift_format::{Dtype, Metadata, TensorSpec, encode_header};

/// The shape of a Llama-style decoder: embedding, per-layer attention and
/// MLP matrices with their norms, final norm and output head, all in bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaConfig {
    /// Decoder layers.
    pub layers: u64,
    /// Hidden size.
    pub hidden: u64,
    /// MLP inner size.
    pub intermediate: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: u64,
}

impl LlamaConfig {
    /// Widths of real models, largest first: (hidden, intermediate, vocab, heads, kv heads).
    const PRESETS: [(u64, u64, u64, u64, u64); 4] = [
        (4096, 11008, 32000, 32, 8),
        (2048, 5632, 32000, 32, 4),
        (1024, 2816, 16000, 16, 4),
        (256, 704, 4000, 8, 2),
    ];

    /// The widest preset whose embedding, head and one layer fit in
    /// `bytes`, with as many layers as fit (at least one).
    pub fn for_size(bytes: u64) -> Self {
        let mut cfg = Self::preset(Self::PRESETS[Self::PRESETS.len() - 1], 1);
        for p in Self::PRESETS {
            let one = Self::preset(p, 1);
            if one.total_bytes() <= bytes {
                cfg = one;
                break;
            }
        }
        let fixed = cfg.total_bytes() - cfg.layer_bytes();
        cfg.layers = (bytes.saturating_sub(fixed) / cfg.layer_bytes()).max(1);
        cfg
    }

    fn preset(
        (hidden, intermediate, vocab, heads, kv_heads): (u64, u64, u64, u64, u64),
        layers: u64,
    ) -> Self {
        Self {
            layers,
            hidden,
            intermediate,
            vocab,
            heads,
            kv_heads,
        }
    }

    fn layer_bytes(&self) -> u64 {
        let per_layer: u64 = self.layer_specs(0).iter().map(spec_bytes).sum();
        per_layer
    }

    /// Total bytes of all tensors.
    pub fn total_bytes(&self) -> u64 {
        self.specs().iter().map(spec_bytes).sum()
    }

    fn layer_specs(&self, i: u64) -> Vec<TensorSpec> {
        let (h, m) = (self.hidden, self.intermediate);
        let kv = self.kv_heads * (h / self.heads);
        let p = format!("model.layers.{i}.");
        let t = |n: &str, shape: &[u64]| TensorSpec::new(format!("{p}{n}"), Dtype::BF16, shape);
        vec![
            t("input_layernorm.weight", &[h]),
            t("self_attn.q_proj.weight", &[h, h]),
            t("self_attn.k_proj.weight", &[kv, h]),
            t("self_attn.v_proj.weight", &[kv, h]),
            t("self_attn.o_proj.weight", &[h, h]),
            t("post_attention_layernorm.weight", &[h]),
            t("mlp.gate_proj.weight", &[m, h]),
            t("mlp.up_proj.weight", &[m, h]),
            t("mlp.down_proj.weight", &[h, m]),
        ]
    }

    /// Every tensor, in the order a Hugging Face export writes them.
    pub fn specs(&self) -> Vec<TensorSpec> {
        let mut out = vec![TensorSpec::new(
            "model.embed_tokens.weight",
            Dtype::BF16,
            [self.vocab, self.hidden],
        )];
        for i in 0..self.layers {
            out.extend(self.layer_specs(i));
        }
        out.push(TensorSpec::new(
            "model.norm.weight",
            Dtype::BF16,
            [self.hidden],
        ));
        out.push(TensorSpec::new(
            "lm_head.weight",
            Dtype::BF16,
            [self.vocab, self.hidden],
        ));
        out
    }
}

/// `n` tensors shaped like a large mixture-of-experts checkpoint: per layer
/// many small expert matrices with norms and scales, in mixed dtypes.
pub fn moe_specs(n: usize) -> Vec<TensorSpec> {
    let kinds: [(&str, Dtype, &[u64]); 5] = [
        ("gate_proj.weight", Dtype::F8E4M3, &[64, 128]),
        ("up_proj.weight", Dtype::F8E4M3, &[64, 128]),
        ("down_proj.weight", Dtype::F8E4M3, &[128, 64]),
        ("gate_proj.weight_scale_inv", Dtype::F32, &[1, 1]),
        ("norm.weight", Dtype::BF16, &[128]),
    ];
    (0..n)
        .map(|i| {
            let (kind, dtype, shape) = kinds[i % kinds.len()];
            let expert = i / kinds.len();
            TensorSpec::new(
                format!(
                    "model.layers.{}.mlp.experts.{}.{kind}",
                    expert / 256,
                    expert % 256
                ),
                dtype,
                shape,
            )
        })
        .collect()
}

/// Bytes of one tensor spec. Panics on a spec whose size does not fit
/// (fixtures are made by code, not read from files).
pub fn spec_bytes(s: &TensorSpec) -> u64 {
    s.dtype
        .bytes_for(s.shape.iter().product())
        .expect("fixture specs have whole-byte sizes")
}

/// Split `specs` in order into `shards` runs of about equal bytes, none
/// empty (fewer runs when there are fewer tensors than shards).
pub fn shard_specs(specs: &[TensorSpec], shards: usize) -> Vec<Vec<TensorSpec>> {
    let total: u64 = specs.iter().map(spec_bytes).sum();
    let shards = shards.clamp(1, specs.len().max(1));
    let mut out: Vec<Vec<TensorSpec>> = vec![Vec::new(); shards];
    let mut done = 0u64;
    let mut prev = 0;
    for (i, s) in specs.iter().enumerate() {
        // The shard whose share of the bytes this tensor's start falls in...
        let by_bytes = if total == 0 {
            0
        } else {
            (u128::from(done) * shards as u128 / u128::from(total)) as usize
        };
        // ...moving on by at most one shard per tensor, and early enough
        // that the tensors left can fill the shards left.
        let lo = (shards + i).saturating_sub(specs.len()).max(prev);
        let hi = if i == 0 { 0 } else { prev + 1 };
        // (Zero-byte tensors after the last byte would point past the end.)
        let k = by_bytes.clamp(lo, hi.max(lo)).min(shards - 1);
        out[k].push(s.clone());
        prev = k;
        done += spec_bytes(s);
    }
    out
}

/// Write `specs` as a checkpoint of `shards` files plus an index into `dir`
/// (created if needed), the tensors' bytes pseudo-random from `seed`.
/// Returns the index's path.
pub fn write_checkpoint(
    dir: &Path,
    specs: &[TensorSpec],
    shards: usize,
    seed: u64,
) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let parts = shard_specs(specs, shards);
    let n = parts.len();
    let mut weight_map: Vec<(String, String)> = Vec::new();
    let mut total = 0u64;
    for (k, part) in parts.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", k + 1, n);
        let meta = Metadata::from([("format".to_owned(), "pt".to_owned())]);
        let enc = encode_header(part, Some(&meta)).map_err(io::Error::other)?;
        let mut w = BufWriter::with_capacity(8 << 20, File::create(dir.join(&name))?);
        w.write_all(&enc.bytes)?;
        write_noise(&mut w, enc.data_len, seed.wrapping_add(k as u64))?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        total += enc.data_len;
        for s in part {
            weight_map.push((s.name.clone(), name.clone()));
        }
    }
    let index = dir.join("model.safetensors.index.json");
    let mut json = format!("{{\"metadata\":{{\"total_size\":{total}}},\"weight_map\":{{");
    for (i, (t, f)) in weight_map.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!("{}:{}", quote(t), quote(f)));
    }
    json.push_str("}}");
    std::fs::write(&index, json)?;
    Ok(index)
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// Write `len` pseudo-random bytes (xorshift64*), fast enough for
/// multi-GiB fixtures.
pub fn write_noise(w: &mut impl Write, len: u64, seed: u64) -> io::Result<()> {
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_close_to_what_was_asked() {
        for target in [8u64 << 20, 256 << 20, 2 << 30, 8 << 30] {
            let cfg = LlamaConfig::for_size(target);
            let got = cfg.total_bytes();
            assert!(
                got <= target && got * 10 >= target * 8,
                "{target}: {got} ({cfg:?})"
            );
        }
    }

    #[test]
    fn shards_keep_order_and_balance() {
        let specs = LlamaConfig::for_size(64 << 20).specs();
        for (specs, n) in [
            (specs.clone(), 3),
            (LlamaConfig::for_size(4 << 20).specs(), 7),
            (moe_specs(5), 9),
        ] {
            let parts = shard_specs(&specs, n);
            let flat: Vec<_> = parts.iter().flatten().cloned().collect();
            assert_eq!(flat, specs);
            assert_eq!(parts.len(), n.min(specs.len()));
            assert!(
                parts.iter().all(|p| !p.is_empty()),
                "{n} shards of {}",
                specs.len()
            );
        }
    }

    #[test]
    fn moe_names_are_unique() {
        let specs = moe_specs(100_000);
        let names: std::collections::HashSet<_> = specs.iter().map(|s| &s.name).collect();
        assert_eq!(names.len(), 100_000);
    }
}

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when dropped. Its path is the field.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Create `weightlift-<label>-<pid>-<nanos>`.
    pub fn new(label: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("weightlift-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Assert that, for each of `ids`, `ours` gives the bytes the reference
/// `safetensors` crate reads for that tensor from `ckpt`'s files (`None`
/// counts as no bytes).
pub fn assert_same_as_reference<'a>(
    ckpt: &weightlift_format::Checkpoint,
    ids: impl IntoIterator<Item = weightlift_format::TensorId>,
    ours: impl Fn(weightlift_format::TensorId) -> Option<&'a [u8]>,
) {
    let files: Vec<Vec<u8>> = ckpt
        .shards()
        .iter()
        .map(|s| std::fs::read(s.path()).expect("read a shard"))
        .collect();
    let refs: Vec<safetensors::SafeTensors<'_>> = files
        .iter()
        .map(|f| safetensors::SafeTensors::deserialize(f).expect("the reference reads it"))
        .collect();
    for id in ids {
        let t = ckpt.tensor(id);
        let r = refs[t.file.index()]
            .tensor(&t.name)
            .expect("the reference has the tensor");
        let got = ours(id).unwrap_or(&[]);
        assert_eq!(got.len(), r.data().len(), "{}: length", t.name);
        assert!(
            got == r.data(),
            "{}: bytes differ from the reference",
            t.name
        );
    }
}

/// A directory for one test's files under `base`, removed with everything
/// in it when dropped: `base/<tag>-<pid>-<n>`. Tests of direct I/O put it
/// under cargo's `CARGO_TARGET_TMPDIR` (a real disk) rather than the
/// system's temporary directory, which may be tmpfs, where `O_DIRECT` is
/// refused. Its path is the field.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Create a fresh directory under `base`.
    pub fn new(base: &Path, tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = base.join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write a shard holding `U8` tensors `<prefix><i>` of these sizes (so
/// offsets and sizes are arbitrary, not aligned), filled with bytes derived
/// from `seed`; returns the file's bytes.
pub fn write_u8_shard(path: &Path, prefix: &str, sizes: &[u64], seed: u64) -> Vec<u8> {
    let specs: Vec<TensorSpec> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("{prefix}{i}"), Dtype::U8, [n]))
        .collect();
    let enc = encode_header(&specs, None).expect("encode a header");
    let mut bytes = enc.bytes;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..enc.data_len {
        // xorshift: cheap, deterministic, no runs of equal bytes.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.push(x as u8);
    }
    std::fs::write(path, &bytes).expect("write a shard");
    bytes
}

/// Tensor name -> bytes of every tensor of `ckpt`, read with plain
/// `std::fs::read`.
pub fn plain_bytes(
    ckpt: &weightlift_format::Checkpoint,
) -> std::collections::HashMap<String, Vec<u8>> {
    let mut out = std::collections::HashMap::new();
    for shard in ckpt.shards() {
        let file = std::fs::read(shard.path()).expect("read a shard");
        for id in shard.tensor_ids() {
            let t = ckpt.tensor(id);
            out.insert(
                t.name.clone(),
                file[t.range.start as usize..t.range.end as usize].to_vec(),
            );
        }
    }
    out
}
