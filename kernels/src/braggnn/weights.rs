//! Network weights in and out of a [`VarStore`], by PyTorch's parameter
//! names: NumPy `.npz` (how PyTorch weights are exchanged without pickle:
//! `np.savez(f, **{k: v.numpy() for k, v in model.state_dict().items()})`)
//! and safetensors (this crate's checkpoints).
//!
//! Loading is strict, as PyTorch's `load_state_dict`: every parameter of
//! the network must be in the file with its shape, and the file may hold
//! nothing else — a wrong `psz`/`fcsz` or a different network fails here,
//! naming the parameter, instead of predicting nonsense.

use std::collections::HashMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::Tensor;

use super::Shape;

/// The named tensors of a `.npz` or `.safetensors` file.
fn read(path: &Path) -> Result<HashMap<String, Tensor>, String> {
    let p = path.display();
    let named = match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => Tensor::read_npz(path),
        Some("safetensors") => Tensor::read_safetensors(path),
        _ => return Err(format!("{p}: weights must be .npz or .safetensors")),
    }
    .map_err(|e| format!("{p}: {e}"))?;
    Ok(named.into_iter().collect())
}

/// The network shape the weights in `path` are for, read from the dense
/// layers' sizes: the first takes 8·(psz − 6)² features, each maps to the
/// next width, the last to 2.
pub fn shape_of(path: &Path) -> Result<Shape, String> {
    let file = read(path)?;
    let p = path.display();
    let size = |k: usize| {
        file.get(&format!("dense_layers.{}.weight", 2 * k))
            .map(|t| t.size())
    };
    let first = size(0).ok_or_else(|| format!("{p}: no parameter dense_layers.0.weight"))?;
    let side = ((first.get(1).copied().unwrap_or(0) / 8) as f64)
        .sqrt()
        .round() as i64;
    if first.len() != 2 || 8 * side * side != first[1] {
        return Err(format!(
            "{p}: dense_layers.0.weight has shape {first:?}, not [width, 8·side²]"
        ));
    }
    let mut widths = Vec::new();
    while let Some(s) = size(widths.len()) {
        widths.push(s[0]);
    }
    if widths.pop() != Some(2) || widths.is_empty() {
        return Err(format!(
            "{p}: the last dense layer must map to 2 outputs (x, y)"
        ));
    }
    Ok(Shape {
        psz: side + 6,
        fcsz: widths,
    })
}

/// Reads `path` (`.npz` or `.safetensors`) into the variables of `vs`.
pub fn load(vs: &mut VarStore, path: &Path) -> Result<(), String> {
    let p = path.display();
    let mut file = read(path)?;
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let mut var = vars[name].shallow_clone();
        let src = file
            .remove(name)
            .ok_or_else(|| format!("{p}: no parameter {name}"))?;
        if src.size() != var.size() {
            return Err(format!(
                "{p}: {name} has shape {:?}, the network needs {:?}",
                src.size(),
                var.size()
            ));
        }
        tch::no_grad(|| {
            var.f_copy_(&src.to_kind(var.kind()).to_device(var.device()))
                .map_err(|e| format!("{p}: {name}: {e}"))
        })?;
    }
    if !file.is_empty() {
        let mut extra: Vec<_> = file.into_keys().collect();
        extra.sort();
        return Err(format!(
            "{p}: parameters the network does not have: {}",
            extra.join(", ")
        ));
    }
    Ok(())
}

/// Writes the variables of `vs` to `path` as safetensors, atomically (a
/// checkpoint is never seen half-written).
pub fn save(vs: &VarStore, path: &Path) -> Result<(), String> {
    let p = path.display();
    if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(format!("{p}: checkpoints are written as .safetensors"));
    }
    let tmp = path.with_extension("safetensors.partial");
    let vars = vs.variables();
    let mut named: Vec<(&str, &Tensor)> = vars.iter().map(|(k, v)| (k.as_str(), v)).collect();
    named.sort_by_key(|(k, _)| *k);
    Tensor::write_safetensors(&named, &tmp).map_err(|e| format!("{p}: {e}"))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{p}: {e}"))
}
