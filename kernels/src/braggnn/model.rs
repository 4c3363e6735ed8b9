//! The BraggNN network (Liu et al., IUCrJ 2022) in libtorch, layer for
//! layer as the reference implementation's current forward pass, with
//! PyTorch's parameter names so that weights move between the two:
//!
//! ```text
//! x [B,1,p,p] → conv 3×3 (1→64, no activation) → non-local block → LeakyReLU
//!   → conv 3×3 (64→32) → LeakyReLU → conv 3×3 (32→8) → LeakyReLU
//!   → flatten (c,h,w) → Linear+LeakyReLU ×4 (fcsz, default 16,8,4,2) → Linear(2→2)
//!   → (x, y) = (column, row)/p
//! ```
//!
//! The non-local block uses three distinct 1×1 convolutions θ, φ, g (the
//! first upstream version reused θ for all three; weights trained since
//! only work with distinct ones), a softmax over the last axis of θᵀφ with
//! no 1/√d scaling, and a residual 1×1 convolution back to 64 channels.

use tch::nn::{self, Module};
use tch::Tensor;

/// The shape of a BraggNN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Patch side, px (odd; 11 or 15 upstream).
    pub psz: i64,
    /// Widths of the hidden dense layers (each with a LeakyReLU); a last
    /// linear layer maps the final width to (x, y).
    pub fcsz: Vec<i64>,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            psz: 11,
            fcsz: vec![16, 8, 4, 2],
        }
    }
}

/// A patch side BraggNN takes: odd (the peak's pixel at the centre) and at
/// least 7 (three 3×3 convolutions leave a 1×1 map).
pub fn check_psz(psz: usize) -> Result<(), String> {
    if psz < 7 || psz.is_multiple_of(2) {
        return Err(format!("patch size {psz} must be odd and at least 7"));
    }
    Ok(())
}

impl Shape {
    /// Number of trainable parameters.
    pub fn parameters(&self) -> i64 {
        let conv = |i: i64, o: i64, k: i64| o * i * k * k + o;
        let side = self.psz - 6;
        let mut n = conv(1, 64, 3) + 3 * conv(64, 32, 1) + conv(32, 64, 1);
        n += conv(64, 32, 3) + conv(32, 8, 3);
        let mut width = 8 * side * side;
        for &w in self.fcsz.iter().chain(std::iter::once(&2)) {
            n += width * w + w;
            width = w;
        }
        n
    }
}

/// The non-local (self-attention) block over the 64 feature maps.
#[derive(Debug)]
struct NonLocal {
    theta: nn::Conv2D,
    phi: nn::Conv2D,
    g: nn::Conv2D,
    out: nn::Conv2D,
}

impl NonLocal {
    fn new(p: &nn::Path) -> NonLocal {
        NonLocal {
            theta: conv(p / "theta_layer", 64, 32, 1),
            phi: conv(p / "phi_layer", 64, 32, 1),
            g: conv(p / "g_layer", 64, 32, 1),
            out: conv(p / "out_cnn", 32, 64, 1),
        }
    }
}

impl Module for NonLocal {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, _, h, w) = x.size4().expect("BraggNN feature maps are 4-D");
        let hw = h * w;
        // θᵀ: [B, HW, 32]; φ: [B, 32, HW]; g as θ.
        let theta = self.theta.forward(x).view([b, 32, hw]).permute([0, 2, 1]);
        let phi = self.phi.forward(x).view([b, 32, hw]);
        let g = self.g.forward(x).view([b, 32, hw]).permute([0, 2, 1]);
        let a = theta.matmul(&phi).softmax(-1, tch::Kind::Float);
        let y = a
            .matmul(&g)
            .permute([0, 2, 1])
            .contiguous()
            .view([b, 32, h, w]);
        self.out.forward(&y) + x
    }
}

/// BraggNN with its parameters in a [`nn::VarStore`].
#[derive(Debug)]
pub struct BraggNN {
    pub shape: Shape,
    conv1: nn::Conv2D,
    nlb: NonLocal,
    conv2: nn::Conv2D,
    conv3: nn::Conv2D,
    dense: Vec<nn::Linear>,
}

impl BraggNN {
    /// A network under `root` (parameter names as PyTorch's `state_dict`:
    /// `nlb.theta_layer.weight`, `cnn_layers.0.weight`,
    /// `dense_layers.8.bias`, …), initialised as upstream trains it:
    /// Xavier-uniform weights, zero biases.
    pub fn new(root: &nn::Path, shape: Shape) -> Result<BraggNN, String> {
        check_psz(usize::try_from(shape.psz).unwrap_or(0))?;
        if shape.fcsz.is_empty() || shape.fcsz.iter().any(|&w| w < 1) {
            return Err(format!("dense widths {:?} must be positive", shape.fcsz));
        }
        let cnn = root / "cnn_layers";
        let dense_path = root / "dense_layers";
        let side = shape.psz - 6;
        let mut dense = Vec::new();
        let mut width = 8 * side * side;
        for (k, &w) in shape.fcsz.iter().chain(std::iter::once(&2)).enumerate() {
            dense.push(linear(&dense_path / (2 * k).to_string(), width, w));
            width = w;
        }
        Ok(BraggNN {
            conv1: conv(&cnn / "0", 1, 64, 3),
            nlb: NonLocal::new(&(root / "nlb")),
            conv2: conv(&cnn / "2", 64, 32, 3),
            conv3: conv(&cnn / "4", 32, 8, 3),
            dense,
            shape,
        })
    }

    /// `[B, 1, p, p]` min–max normalised patches → `[B, 2]` (x = column,
    /// y = row) / p. (libtorch's `leaky_relu` slope, 0.01, is BraggNN's.)
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.nlb.forward(&self.conv1.forward(x)).leaky_relu();
        let y = self.conv2.forward(&y).leaky_relu();
        let mut y = self.conv3.forward(&y).leaky_relu().flatten(1, -1);
        let last = self.dense.len() - 1;
        for (k, l) in self.dense.iter().enumerate() {
            y = l.forward(&y);
            if k < last {
                y = y.leaky_relu();
            }
        }
        y
    }

    /// `x` (`n` normalised patches, row-major) → `n` (x, y)/psz, run on
    /// `device` in one call without gradients.
    pub fn predict(&self, x: &[f32], device: tch::Device) -> Result<Vec<[f32; 2]>, String> {
        let p = self.shape.psz;
        let n = x.len() as i64 / (p * p);
        let t = Tensor::from_slice(x).view([n, 1, p, p]).to_device(device);
        let y = tch::no_grad(|| self.forward(&t))
            .to_device(tch::Device::Cpu)
            .to_kind(tch::Kind::Float)
            .flatten(0, -1);
        let y = Vec::<f32>::try_from(y).map_err(|e| format!("network output: {e}"))?;
        Ok(y.chunks_exact(2).map(|c| [c[0], c[1]]).collect())
    }
}

/// Xavier-uniform weights (bound √(6/(fan_in + fan_out))), zero biases.
fn xavier(fan_in: i64, fan_out: i64) -> nn::Init {
    let b = (6.0 / (fan_in + fan_out) as f64).sqrt();
    nn::Init::Uniform { lo: -b, up: b }
}

fn conv(p: nn::Path, i: i64, o: i64, k: i64) -> nn::Conv2D {
    let c = nn::ConvConfig {
        ws_init: xavier(i * k * k, o * k * k),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(p, i, o, k, c)
}

fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let c = nn::LinearConfig {
        ws_init: xavier(i, o),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, i, o, c)
}
