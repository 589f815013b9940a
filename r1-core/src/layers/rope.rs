//! Rotary position embeddings: frequencies (plain, linear, llama3, YaRN) and their application to
//! query/key heads, in either pair layout.

use crate::config::{RopeConfig, RopeScaling};
use crate::error::Result;
use candle_core::{Device, Tensor};
use std::f64::consts::PI;

/// The rotary embedding of one attention flavour: `dim` rotated dims per head.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
    /// cos/sin multiplier (YaRN's attention factor; 1 otherwise).
    attention_factor: f64,
    interleaved: bool,
}

impl Rope {
    /// Frequencies for heads of `dim` rotated dims.
    pub fn new(cfg: &RopeConfig, dim: usize) -> Self {
        let base: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / cfg.theta.powf((2 * i) as f64 / dim as f64))
            .collect();
        let (inv_freq, attention_factor) = match &cfg.scaling {
            RopeScaling::None => (base, 1.0),
            RopeScaling::Linear { factor } => (base.iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let f = llama3_frequencies(
                    &base,
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_max_position_embeddings,
                );
                (f, 1.0)
            }
            RopeScaling::Factors(factors) => (
                base.iter()
                    .zip(factors.iter().chain(std::iter::repeat(&1.0)))
                    .map(|(f, d)| f / d)
                    .collect(),
                1.0,
            ),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            } => {
                let f = yarn_frequencies(
                    &base,
                    dim,
                    cfg.theta,
                    *factor,
                    *original_max_position_embeddings,
                    *beta_fast,
                    *beta_slow,
                );
                (f, *attention_factor)
            }
        };
        Rope {
            inv_freq,
            attention_factor,
            interleaved: cfg.interleaved,
        }
    }

    /// `(cos, sin)`, each `[len, dim/2]`, for the first `len` of `positions`.
    fn cos_sin(&self, positions: impl Iterator<Item = usize>, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in positions.take(len) {
            for f in &self.inv_freq {
                let angle = p as f64 * f;
                cos.push((angle.cos() * self.attention_factor) as f32);
                sin.push((angle.sin() * self.attention_factor) as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (len, half), device)?,
            Tensor::from_vec(sin, (len, half), device)?,
        ))
    }

    /// Rotates `x [heads, len, dim]` whose rows are positions `offset..offset+len`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, len, _) = x.dims3()?;
        self.apply_at(x, offset..offset + len)
    }

    /// Rotates `x [heads, len, dim]` whose row `i` is at position `positions[i]` (the rows of
    /// several sequences packed in one batch).
    pub fn apply_at(&self, x: &Tensor, positions: impl Iterator<Item = usize>) -> Result<Tensor> {
        let (_, len, _) = x.dims3()?;
        let (cos, sin) = self.cos_sin(positions, len, x.device())?;
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        let x4 = x.unsqueeze(0)?.contiguous()?;
        let y = if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x4, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope(&x4, &cos, &sin)?
        };
        Ok(y.squeeze(0)?)
    }
}

/// Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend in between.
fn llama3_frequencies(base: &[f64], factor: f64, low: f64, high: f64, original: f64) -> Vec<f64> {
    let low_freq_wavelen = original / low;
    let high_freq_wavelen = original / high;
    base.iter()
        .map(|&f| {
            let wavelen = 2.0 * PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// YaRN: dimensions that rotate fewer than `beta_slow` times over the original context are
/// interpolated (divided by `factor`), those above `beta_fast` kept, with a linear ramp between.
fn yarn_frequencies(
    base: &[f64],
    dim: usize,
    theta: f64,
    factor: f64,
    original: f64,
    beta_fast: f64,
    beta_slow: f64,
) -> Vec<f64> {
    // The dimension index at which a frequency makes `rotations` turns over `original` positions.
    let correction_dim = |rotations: f64| dim as f64 * (original / (rotations * 2.0 * PI)).ln() / (2.0 * theta.ln());
    let low = correction_dim(beta_fast).floor().max(0.0);
    let high = correction_dim(beta_slow).ceil().min(dim as f64 - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    base.iter()
        .enumerate()
        .map(|(i, &f)| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            f / factor * ramp + f * (1.0 - ramp)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: RopeScaling, interleaved: bool) -> RopeConfig {
        RopeConfig {
            theta: 10000.0,
            scaling,
            interleaved,
        }
    }

    #[test]
    fn rotates_the_right_pairs() -> Result<()> {
        // dim 4, one head, position 1: frequencies 1 and 0.01.
        let x = Tensor::new(&[[[1f32, 2.0, 3.0, 4.0]]], &Device::Cpu)?;
        let (c0, s0, c1, s1) = (1f64.cos(), 1f64.sin(), 0.01f64.cos(), 0.01f64.sin());
        // Halves: pairs (x0, x2) at freq 1 and (x1, x3) at freq 0.01.
        let y: Vec<f32> = Rope::new(&cfg(RopeScaling::None, false), 4)
            .apply(&x, 1)?
            .flatten_all()?
            .to_vec1()?;
        let want = [
            1.0 * c0 - 3.0 * s0,
            2.0 * c1 - 4.0 * s1,
            3.0 * c0 + 1.0 * s0,
            4.0 * c1 + 2.0 * s1,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
        // Interleaved: pairs (x0, x1) at freq 1 and (x2, x3) at freq 0.01.
        let y: Vec<f32> = Rope::new(&cfg(RopeScaling::None, true), 4)
            .apply(&x, 1)?
            .flatten_all()?
            .to_vec1()?;
        let want = [
            1.0 * c0 - 2.0 * s0,
            2.0 * c0 + 1.0 * s0,
            3.0 * c1 - 4.0 * s1,
            4.0 * c1 + 3.0 * s1,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
        Ok(())
    }

    #[test]
    fn yarn_keeps_fast_and_interpolates_slow_dims() {
        let r = Rope::new(
            &cfg(
                RopeScaling::Yarn {
                    factor: 4.0,
                    original_max_position_embeddings: 4096.0,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    attention_factor: 1.0,
                    mscale_all_dim: None,
                },
                true,
            ),
            64,
        );
        let base = |i: usize| 1.0 / 10000f64.powf(2.0 * i as f64 / 64.0);
        assert_eq!(r.inv_freq[0], base(0));
        assert!((r.inv_freq[31] - base(31) / 4.0).abs() < 1e-15);
    }
}
