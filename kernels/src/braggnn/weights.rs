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

/// Reads `path` (`.npz` or `.safetensors`) into the variables of `vs`.
pub fn load(vs: &mut VarStore, path: &Path) -> Result<(), String> {
    let p = path.display();
    let named = match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => Tensor::read_npz(path),
        Some("safetensors") => Tensor::read_safetensors(path),
        _ => return Err(format!("{p}: weights must be .npz or .safetensors")),
    }
    .map_err(|e| format!("{p}: {e}"))?;
    let mut file: HashMap<String, Tensor> = named.into_iter().collect();
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
