//! Running an engine for a number of iterations, with the per-iteration
//! history a user watches: the data loss, and the object error when the
//! truth is known.

use std::borrow::Cow;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::dm::{Dm, DmOptions};
use super::lsqml::{Lsqml, LsqmlOptions};
use super::metrics::{object_error, Error};
use super::model::{Data, Field, Probe};
use super::pie::{Pie, PieOptions};
use super::position::{PositionOptions, Positions};

/// The reconstruction algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// ePIE: rPIE with α = β = 1.
    Epie,
    Rpie,
    Dm,
    Lsqml,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Engine, String> {
        match s {
            "epie" => Ok(Engine::Epie),
            "rpie" => Ok(Engine::Rpie),
            "dm" => Ok(Engine::Dm),
            "lsqml" => Ok(Engine::Lsqml),
            other => Err(format!("unknown engine {other:?} (epie, rpie, dm, lsqml)")),
        }
    }
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Epie => "epie",
            Engine::Rpie => "rpie",
            Engine::Dm => "dm",
            Engine::Lsqml => "lsqml",
        }
    }

    /// What the engine's loss is.
    pub fn loss_name(self) -> &'static str {
        match self {
            Engine::Dm => "exit-wave change sqrt(Σ‖Δψ‖²)",
            _ => "mean (sqrt(I_pred) − sqrt(I_meas))²",
        }
    }
}

/// How to reconstruct (flags of `beamflow kernel ptycho reconstruct` and
/// parameters of a `ptycho.reconstruct` step alike).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct Options {
    /// epie, rpie, dm or lsqml.
    #[arg(long, default_value = "rpie")]
    pub engine: Engine,
    #[arg(long, default_value_t = 100)]
    pub iterations: usize,
    /// rPIE's α (object weight).
    #[arg(long, default_value_t = 0.1)]
    pub alpha: f32,
    /// rPIE's β (probe weight).
    #[arg(long, default_value_t = 0.1)]
    pub beta: f32,
    /// Step size γ_O of the PIE engines' object update.
    #[arg(long, default_value_t = 1.0)]
    pub object_step: f32,
    /// Step size γ_P of the PIE engines' probe update.
    #[arg(long, default_value_t = 1.0)]
    pub probe_step: f32,
    /// Retrieve the probe as well as the object.
    #[arg(long)]
    pub update_probe: bool,
    /// First iteration (0-based) at which the probe is updated: a few
    /// object-only iterations first keep a poor initial probe from
    /// absorbing the object.
    #[arg(long, default_value_t = 5)]
    pub probe_start: usize,
    /// Random position order each epoch (PIE engines); `--shuffle false`:
    /// a fixed order.
    #[arg(long, visible_alias = "random-order", default_value_t = true, action = clap::ArgAction::Set)]
    pub shuffle: bool,
    /// Seed of the position order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// DM: exit-wave relaxation β.
    #[arg(long, default_value_t = 1.0)]
    pub dm_beta: f32,
    /// DM: probe/object alternations per iteration.
    #[arg(long, default_value_t = 1)]
    pub dm_inner: usize,
    /// DM's Fourier relaxation (PtyPy's `fourier_relax_factor`): with the
    /// exact projection (0) DM chases the Poisson noise and drifts away
    /// after ~30 iterations; 0.05 converges.
    #[arg(long, default_value_t = 0.05)]
    pub dm_relax: f32,
    /// LSQ-ML: positions per minibatch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// cpu, or torch[:DEVICE] (LSQ-ML on libtorch: torch:cuda, torch:cuda:N,
    /// torch:cpu; falls back to the CPU with a message where there is no GPU).
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Refine the scan positions (ePIE, rPIE, LSQ-ML; see
    /// [`super::position`]): the refined corners go to the result file's
    /// /positions/px_corner_yx.
    #[arg(long)]
    pub correct_positions: bool,
    /// First iteration (0-based) of position correction.
    #[arg(long, default_value_t = PositionOptions::default().start)]
    pub position_start: usize,
    /// Fraction of each position's least-squares shift applied per iteration.
    #[arg(long, default_value_t = PositionOptions::default().step)]
    pub position_step: f64,
    /// Largest move of a position per iteration, px.
    #[arg(long, default_value_t = PositionOptions::default().limit)]
    pub position_limit: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            engine: Engine::Rpie,
            iterations: 100,
            alpha: 0.1,
            beta: 0.1,
            object_step: 1.0,
            probe_step: 1.0,
            update_probe: false,
            probe_start: 5,
            shuffle: true,
            seed: 0,
            dm_beta: 1.0,
            dm_inner: 1,
            dm_relax: 0.05,
            batch: 100,
            backend: "cpu".into(),
            correct_positions: false,
            position_start: PositionOptions::default().start,
            position_step: PositionOptions::default().step,
            position_limit: PositionOptions::default().limit,
        }
    }
}

/// Per-iteration history.
#[derive(Clone, Debug, Default, Serialize)]
pub struct History {
    pub loss: Vec<f64>,
    /// Object error against the truth, when known.
    pub error: Vec<Error>,
    pub seconds: Vec<f64>,
}

/// What a reconstruction produced.
pub struct Outcome {
    pub object: Field,
    pub probe: Probe,
    pub history: History,
    /// Where it ran (`cpu`, `torch:cuda:0`, …).
    pub device: String,
    /// Why that is not the device asked for, when it is not.
    pub device_note: Option<String>,
    /// The refined top-left corners (row, col), px, when positions were
    /// corrected.
    pub positions: Option<Vec<[f64; 2]>>,
}

/// The truth, for the error history.
pub struct Truth<'a> {
    pub object: &'a Field,
    pub mask: &'a [bool],
}

/// Runs `o.iterations` iterations of `o.engine` from `object`, `probe`.
/// `progress(iteration, loss, error)` after each; returning `false` stops
/// (cancellation) with what was reached.
pub fn reconstruct(
    data: &Data,
    mut object: Field,
    mut probe: Probe,
    o: &Options,
    truth: Option<Truth>,
    progress: &mut dyn FnMut(usize, f64, Option<Error>) -> bool,
) -> Result<Outcome, String> {
    if probe.n != data.n {
        return Err(format!(
            "the probe is {}×{} but the patterns are {}×{}",
            probe.n, probe.n, data.n, data.n
        ));
    }
    if (object.rows, object.cols) != data.shape {
        return Err(format!(
            "the object is {}×{} but the positions need {}×{}",
            object.rows, object.cols, data.shape.0, data.shape.1
        ));
    }
    let popts = PositionOptions {
        start: o.position_start,
        step: o.position_step,
        limit: o.position_limit,
    };
    if o.correct_positions {
        if !(popts.step > 0.0 && popts.limit > 0.0) {
            return Err(format!(
                "position correction needs position_step > 0 and position_limit > 0 (got {} and {})",
                popts.step, popts.limit
            ));
        }
        if o.engine == Engine::Dm || o.backend != "cpu" {
            return Err(format!(
                "position correction runs with epie, rpie or lsqml on the cpu backend, not {} on {}",
                o.engine.name(),
                o.backend
            ));
        }
    }
    let mut positions = o.correct_positions.then(|| Positions::new(&data.corners));
    let mut history = History::default();
    let pie_opts = |engine| PieOptions {
        alpha: if engine == Engine::Epie { 1.0 } else { o.alpha },
        beta: if engine == Engine::Epie { 1.0 } else { o.beta },
        object_step: o.object_step,
        probe_step: o.probe_step,
    };
    enum State {
        Pie(Box<Pie>, PieOptions),
        Dm(Dm, DmOptions),
        Lsqml(Box<Lsqml>, LsqmlOptions),
        #[cfg(feature = "torch")]
        Torch(Box<super::torch::TorchLsqml>, LsqmlOptions),
    }
    let (mut device, mut device_note) = ("cpu".to_string(), None);
    let backend = crate::backend::Backend::parse(&o.backend)?;
    let mut state = match (o.engine, backend) {
        (Engine::Lsqml, crate::backend::Backend::Torch { device: want }) => {
            #[cfg(feature = "torch")]
            {
                let (d, why) = crate::backend::device(&want)?;
                device = crate::backend::device_name(d);
                device_note = why;
                State::Torch(
                    Box::new(super::torch::TorchLsqml::new(data, o.seed, d)),
                    LsqmlOptions { batch: o.batch },
                )
            }
            #[cfg(not(feature = "torch"))]
            {
                let _ = want;
                return Err("this build has no torch backend (feature `torch`)".into());
            }
        }
        (engine, crate::backend::Backend::Torch { .. }) => {
            return Err(format!(
                "the torch backend runs lsqml (the batched engine); {} runs on the cpu backend",
                engine.name()
            ))
        }
        (engine, crate::backend::Backend::Cpu) => match engine {
            Engine::Epie | Engine::Rpie => {
                State::Pie(Box::new(Pie::new(data, &probe, o.seed)), pie_opts(o.engine))
            }
            Engine::Lsqml => State::Lsqml(
                Box::new(Lsqml::new(data, &probe, o.seed)),
                LsqmlOptions { batch: o.batch },
            ),
            Engine::Dm => State::Dm(
                Dm::new(data, &object, &probe),
                DmOptions {
                    beta: o.dm_beta,
                    inner: o.dm_inner,
                    relax: o.dm_relax,
                },
            ),
        },
    };
    // The patch corners change as positions are refined: the data are
    // copied (once) when that first happens.
    let mut data = Cow::Borrowed(data);
    for it in 0..o.iterations {
        let t = Instant::now();
        let update_probe = o.update_probe && it >= o.probe_start;
        let shifts = match &mut positions {
            Some(p) if it >= popts.start => Some(&mut p.proposed[..]),
            _ => None,
        };
        let correcting = shifts.is_some();
        let d = &*data;
        let loss = match &mut state {
            State::Pie(pie, po) => pie.epoch(
                d,
                &mut object,
                &mut probe,
                po,
                update_probe,
                o.shuffle,
                shifts,
            ),
            State::Dm(dm, dopt) => dm.iterate(d, &mut object, &mut probe, dopt, update_probe),
            State::Lsqml(l, lo) => l.epoch(
                d,
                &mut object,
                &mut probe,
                lo,
                update_probe,
                o.shuffle,
                shifts,
            ),
            #[cfg(feature = "torch")]
            State::Torch(t, lo) => {
                t.epoch(d, &mut object, &mut probe, lo, update_probe, o.shuffle)?
            }
        };
        if let (true, Some(p)) = (correcting, &mut positions) {
            let (n, shape) = (data.n, data.shape);
            p.apply(&popts, n, shape, &mut data.to_mut().corners);
        }
        if update_probe && probe.modes > 1 {
            probe.orthogonalise();
        }
        history.seconds.push(t.elapsed().as_secs_f64());
        if !loss.is_finite() {
            return Err(format!(
                "{} diverged at iteration {}: the loss is {loss}",
                o.engine.name(),
                it + 1
            ));
        }
        history.loss.push(loss);
        let err = match &truth {
            Some(t) => Some(object_error(&object, t.object, t.mask)?),
            None => None,
        };
        if let Some(e) = err {
            history.error.push(e);
        }
        if !progress(it + 1, loss, err) {
            break;
        }
    }
    Ok(Outcome {
        object,
        probe,
        history,
        device,
        device_note,
        positions: positions.map(|p| p.corners),
    })
}
