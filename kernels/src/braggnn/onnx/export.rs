//! A trained BraggNN as an ONNX graph (opset 17), node for node the
//! network of [`crate::braggnn::model`], its weights as initialisers named
//! as PyTorch names them. The batch dimension is symbolic (`batch`) unless
//! a fixed batch is asked for (some accelerator compilers want one); the
//! reshapes copy it with a 0 in their target shape, so the graph needs no
//! Shape/Gather arithmetic.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use tch::nn::VarStore;

use super::proto::{
    self, Attribute, Dim, Dimension, Node, Tensor, TensorShape, TensorType, TypeProto, ValueInfo,
};
use super::{INPUT, OUTPUT};
use crate::braggnn::Shape;

/// The operator set the graph is written for.
pub const OPSET: i64 = 17;
/// ONNX IR version 8 (ONNX 1.10+, onnxruntime 1.10+).
pub const IR_VERSION: i64 = 8;

/// Collects nodes and initialisers.
struct Builder {
    weights: HashMap<String, tch::Tensor>,
    nodes: Vec<Node>,
    init: Vec<Tensor>,
}

fn ints(name: &str, v: &[i64]) -> Attribute {
    Attribute {
        name: name.into(),
        ints: v.to_vec(),
        r#type: proto::ATTRIBUTE_INTS,
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> Attribute {
    Attribute {
        name: name.into(),
        i: v,
        r#type: proto::ATTRIBUTE_INT,
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> Attribute {
    Attribute {
        name: name.into(),
        f: v,
        r#type: proto::ATTRIBUTE_FLOAT,
        ..Default::default()
    }
}

impl Builder {
    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<Attribute>,
    ) -> String {
        self.nodes.push(Node {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: format!("{op}_{}", self.nodes.len()),
            op_type: op.into(),
            attribute,
        });
        output.into()
    }

    /// The network's parameter `name` as a float initialiser.
    fn weight(&mut self, name: &str) -> Result<String, String> {
        let t = self
            .weights
            .remove(name)
            .ok_or_else(|| format!("the network has no parameter {name}"))?;
        let t = t
            .to_device(tch::Device::Cpu)
            .to_kind(tch::Kind::Float)
            .contiguous();
        let dims = t.size();
        let values = Vec::<f32>::try_from(t.flatten(0, -1)).map_err(|e| format!("{name}: {e}"))?;
        self.init.push(Tensor {
            dims,
            data_type: proto::FLOAT,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        Ok(name.into())
    }

    /// An int64 constant (a target shape) as an initialiser.
    fn shape_const(&mut self, name: &str, v: &[i64]) -> String {
        self.init.push(Tensor {
            dims: vec![v.len() as i64],
            data_type: proto::INT64,
            name: name.into(),
            raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        });
        name.into()
    }

    /// A k×k convolution (stride 1, no padding) with the parameters at `prefix`.
    fn conv(&mut self, x: &str, prefix: &str, k: i64, out: &str) -> Result<String, String> {
        let w = self.weight(&format!("{prefix}.weight"))?;
        let b = self.weight(&format!("{prefix}.bias"))?;
        Ok(self.node(
            "Conv",
            &[x, &w, &b],
            out,
            vec![ints("kernel_shape", &[k, k])],
        ))
    }

    fn leaky(&mut self, x: &str, out: &str) -> String {
        self.node("LeakyRelu", &[x], out, vec![float("alpha", 0.01)])
    }
}

fn tensor_info(name: &str, dims: &[Dim]) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorType {
                elem_type: proto::FLOAT,
                shape: Some(TensorShape {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(d.clone()),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// The ONNX model of the network whose parameters are in `vs`; `batch`
/// fixes the batch size, `None` leaves it symbolic.
pub fn model(vs: &VarStore, shape: &Shape, batch: Option<i64>) -> Result<proto::Model, String> {
    let weights = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach()))
        .collect();
    let mut g = Builder {
        weights,
        nodes: Vec::new(),
        init: Vec::new(),
    };
    let p = shape.psz;
    let side = p - 2; // after the first 3×3 convolution
    let x = g.conv(INPUT, "cnn_layers.0", 3, "conv1")?;
    // Non-local block: θᵀφ attention over the side² positions, residual.
    let theta = g.conv(&x, "nlb.theta_layer", 1, "theta")?;
    let phi = g.conv(&x, "nlb.phi_layer", 1, "phi")?;
    let gv = g.conv(&x, "nlb.g_layer", 1, "g")?;
    let flat = g.shape_const("shape_b_32_hw", &[0, 32, -1]);
    let theta = g.node("Reshape", &[&theta, &flat], "theta_flat", vec![]);
    let theta_t = g.node(
        "Transpose",
        &[&theta],
        "theta_t",
        vec![ints("perm", &[0, 2, 1])],
    );
    let phi = g.node("Reshape", &[&phi, &flat], "phi_flat", vec![]);
    let gv = g.node("Reshape", &[&gv, &flat], "g_flat", vec![]);
    let g_t = g.node("Transpose", &[&gv], "g_t", vec![ints("perm", &[0, 2, 1])]);
    let a = g.node("MatMul", &[&theta_t, &phi], "affinity", vec![]);
    let a = g.node("Softmax", &[&a], "attention", vec![int("axis", -1)]);
    let y = g.node("MatMul", &[&a, &g_t], "attended", vec![]);
    let y = g.node(
        "Transpose",
        &[&y],
        "attended_t",
        vec![ints("perm", &[0, 2, 1])],
    );
    let maps = g.shape_const("shape_b_32_h_w", &[0, 32, side, side]);
    let y = g.node("Reshape", &[&y, &maps], "attended_maps", vec![]);
    let y = g.conv(&y, "nlb.out_cnn", 1, "nlb_out")?;
    let y = g.node("Add", &[&y, &x], "nlb", vec![]);
    let y = g.leaky(&y, "nlb_act");
    let y = g.conv(&y, "cnn_layers.2", 3, "conv2")?;
    let y = g.leaky(&y, "conv2_act");
    let y = g.conv(&y, "cnn_layers.4", 3, "conv3")?;
    let y = g.leaky(&y, "conv3_act");
    let mut y = g.node("Flatten", &[&y], "features", vec![int("axis", 1)]);
    let layers = shape.fcsz.len() + 1;
    for k in 0..layers {
        let prefix = format!("dense_layers.{}", 2 * k);
        let w = g.weight(&format!("{prefix}.weight"))?;
        let b = g.weight(&format!("{prefix}.bias"))?;
        let last = k + 1 == layers;
        let out = if last {
            OUTPUT.to_string()
        } else {
            format!("dense{k}")
        };
        y = g.node("Gemm", &[&y, &w, &b], &out, vec![int("transB", 1)]);
        if !last {
            y = g.leaky(&y, &format!("dense{k}_act"));
        }
    }
    if !g.weights.is_empty() {
        let mut extra: Vec<_> = g.weights.into_keys().collect();
        extra.sort();
        return Err(format!(
            "parameters not in a BraggNN of this shape: {}",
            extra.join(", ")
        ));
    }
    let b = match batch {
        Some(n) => Dim::Value(n),
        None => Dim::Param("batch".into()),
    };
    let fcsz: Vec<String> = shape.fcsz.iter().map(|w| w.to_string()).collect();
    let meta = [
        ("psz", p.to_string()),
        ("fcsz", fcsz.join(",")),
        (
            "input",
            format!(
                "{INPUT}: float32 [batch, 1, psz, psz], each patch min-max normalised to [0, 1]"
            ),
        ),
        (
            "output",
            format!(
                "{OUTPUT}: float32 [batch, 2], peak centre (column, row) / psz in patch pixels"
            ),
        ),
    ];
    Ok(proto::Model {
        ir_version: IR_VERSION,
        producer_name: "beamflow".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "BraggNN Bragg-peak localisation network".into(),
        graph: Some(proto::Graph {
            node: g.nodes,
            name: "braggnn".into(),
            initializer: g.init,
            doc_string: String::new(),
            input: vec![tensor_info(
                INPUT,
                &[b.clone(), Dim::Value(1), Dim::Value(p), Dim::Value(p)],
            )],
            output: vec![tensor_info(OUTPUT, &[b, Dim::Value(2)])],
        }),
        opset_import: vec![proto::OperatorSetId {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: meta
            .into_iter()
            .map(|(k, v)| proto::StringStringEntry {
                key: k.into(),
                value: v,
            })
            .collect(),
    })
}

/// Writes the ONNX model of the network in `vs` to `path` (through a
/// temporary file renamed into place).
pub fn export(vs: &VarStore, shape: &Shape, batch: Option<i64>, path: &Path) -> Result<(), String> {
    let bytes = model(vs, shape, batch)?.encode_to_vec();
    let tmp = path.with_extension("onnx.partial");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

/// Writes the network whose weights are in `weights` (`.safetensors` or
/// `.npz`, PyTorch names; the shape is read from them) as ONNX to `path`.
pub fn export_weights(weights: &Path, batch: Option<i64>, path: &Path) -> Result<Shape, String> {
    let shape = crate::braggnn::weights::shape_of(weights)?;
    let mut vs = VarStore::new(tch::Device::Cpu);
    let _net = crate::braggnn::BraggNN::new(&vs.root(), shape.clone())?;
    crate::braggnn::weights::load(&mut vs, weights)?;
    export(&vs, &shape, batch, path)?;
    Ok(shape)
}
