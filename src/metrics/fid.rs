//! FID and KID exactly as clean-fid defines them, in f64.
//!
//! The trace of the matrix square root uses a symmetric eigendecomposition (libtorch's LAPACK
//! `eigh`, already linked, rather than a second linear-algebra library): with Σ1 = V Λ Vᵀ and
//! S = V Λ^½ Vᵀ, tr sqrtm(Σ1Σ2) = Σ √μᵢ over the eigenvalues μ of S Σ2 S (similar matrices).

use anyhow::{bail, Result};
use rand::seq::index::sample;
use rand::SeedableRng;
use tch::{Kind, Tensor};

/// Mean and covariance (N − 1 denominator) of features `[N, D]`, in f64.
pub struct Stats {
    pub mu: Tensor,
    pub sigma: Tensor,
    pub n: usize,
}

pub fn stats(feats: &Tensor) -> Result<Stats> {
    let n = feats.size()[0];
    if n < 2 {
        bail!("FID needs at least 2 images per set, got {n}");
    }
    let f = feats.to_kind(Kind::Double);
    let mu = f.mean_dim([0].as_slice(), false, Kind::Double);
    let c = &f - mu.unsqueeze(0);
    let sigma = c.transpose(0, 1).matmul(&c) / (n - 1) as f64;
    Ok(Stats {
        mu,
        sigma,
        n: n as usize,
    })
}

fn sqrt_psd(m: &Tensor) -> Tensor {
    let (vals, vecs) = m.linalg_eigh("L");
    let s = vals.clamp_min(0.0).sqrt();
    (&vecs * s.unsqueeze(0)).matmul(&vecs.transpose(0, 1))
}

pub fn fid_from_stats(a: &Stats, b: &Stats) -> f64 {
    let diff = &a.mu - &b.mu;
    let s = sqrt_psd(&a.sigma);
    let m = s.matmul(&b.sigma).matmul(&s);
    let m = (&m + m.transpose(0, 1)) / 2.0;
    let tr_covmean = m
        .linalg_eigvalsh("L")
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double);
    let v = diff.dot(&diff) + a.sigma.trace() + b.sigma.trace() - tr_covmean * 2.0;
    f64::try_from(v).unwrap()
}

pub fn fid(f1: &Tensor, f2: &Tensor) -> Result<f64> {
    Ok(fid_from_stats(&stats(f1)?, &stats(f2)?))
}

/// KID (unbiased MMD², kernel (x·y/d + 1)³) over `subsets` subsets of size min(N1, N2, max_size),
/// drawn without replacement, X from `f2` and Y from `f1` as clean-fid does.
pub fn kid(f1: &Tensor, f2: &Tensor, subsets: usize, max_size: usize, seed: u64) -> Result<f64> {
    let (n1, n2) = (f1.size()[0] as usize, f2.size()[0] as usize);
    let d = f1.size()[1] as f64;
    let m = n1.min(n2).min(max_size);
    if m < 2 {
        bail!("KID needs at least 2 images per set");
    }
    let (f1, f2) = (f1.to_kind(Kind::Double), f2.to_kind(Kind::Double));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut t = 0.0;
    for _ in 0..subsets {
        crate::util::stop::check()?;
        let ix: Vec<i64> = sample(&mut rng, n2, m)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        let iy: Vec<i64> = sample(&mut rng, n1, m)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        let x = f2.index_select(0, &Tensor::from_slice(&ix));
        let y = f1.index_select(0, &Tensor::from_slice(&iy));
        let k =
            |a: &Tensor, b: &Tensor| (a.matmul(&b.transpose(0, 1)) / d + 1.0).pow_tensor_scalar(3);
        let a = k(&x, &x) + k(&y, &y);
        let b = k(&x, &y);
        let sa = f64::try_from(a.sum(Kind::Double) - a.trace())?;
        let sb = f64::try_from(b.sum(Kind::Double))?;
        t += sa / (m - 1) as f64 - 2.0 * sb / m as f64;
    }
    Ok(t / (subsets * m) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn fid_of_a_set_with_itself_is_zero_and_kid_is_symmetric() {
        tch::manual_seed(0);
        let a = Tensor::randn([300, 16], (Kind::Float, Device::Cpu)).abs();
        let b = Tensor::randn([300, 16], (Kind::Float, Device::Cpu)).abs() * 1.3 + 0.1;
        assert!(fid(&a, &a).unwrap().abs() < 1e-8);
        assert!(fid(&a, &b).unwrap() > 0.1);
        // N1 = N2 ≤ max_size: every subset is the whole set, so KID is exact and symmetric.
        let k1 = kid(&a, &b, 5, 1000, 0).unwrap();
        let k2 = kid(&b, &a, 5, 1000, 1).unwrap();
        assert!((k1 - k2).abs() < 1e-9 * k1.abs().max(1.0), "{k1} {k2}");
        // MMD² of a set with itself is ~0: far below the distance between different sets.
        let kaa = kid(&a, &a, 3, 1000, 0).unwrap();
        assert!(kaa.abs() < 0.05 * k1.abs(), "{kaa} vs {k1}");
    }
}
