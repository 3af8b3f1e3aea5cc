//! The distributions dual regression needs to turn t statistics into z statistics, as FSL's
//! `fsl_glm --out_z` / `ttoz` do: z is the standard normal quantile with the same one-sided
//! tail probability as t under Student's t with the regression's degrees of freedom.
//!
//! Written here rather than taken from `statrs`: network peaks reach t ~ 100 and more, whose
//! tail probabilities (1e-130 at 137 degrees of freedom, below f64's range past t ~ 2,000)
//! must stay in log space end to end: the log of the regularised incomplete beta function
//! from its continued fraction, and the normal quantile of a log probability (Wichura's
//! AS 241, whose tail branch reads `sqrt(-ln p)` directly). `statrs` takes and returns plain
//! probabilities. Checked against SciPy (`-special.ndtri_exp(stats.t.logsf(t, dof))`) in the
//! tests below.

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; ~1e-15 relative).
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let a = C[0] + (1..9).map(|i| C[i] / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz), converging fast
/// for `x < (a + 1) / (a + b + 2)`.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let fix = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / fix(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / fix(1.0 + aa * d);
        c = fix(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / fix(1.0 + aa * d);
        c = fix(1.0 + aa / c);
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// ln I_x(a, b), the log of the regularised incomplete beta function, given `x` and `1 - x`
/// separately (so that `1 - x` keeps its precision when `x` is close to 1).
/// `ln_b` is ln B(a, b).
fn ln_beta_reg(a: f64, b: f64, ln_b: f64, x: f64, one_minus_x: f64) -> f64 {
    if x <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if one_minus_x <= 0.0 {
        return 0.0;
    }
    if x < (a + 1.0) / (a + b + 2.0) {
        a * x.ln() + b * one_minus_x.ln() - ln_b + beta_cf(a, b, x).ln() - a.ln()
    } else {
        // I_x(a, b) = 1 - I_{1-x}(b, a)
        let other =
            b * one_minus_x.ln() + a * x.ln() - ln_b + beta_cf(b, a, one_minus_x).ln() - b.ln();
        (-other.exp()).ln_1p()
    }
}

/// Student's t with fixed degrees of freedom, its tail and its t -> z map (the beta function
/// of the tail computed once).
#[derive(Clone, Copy, Debug)]
pub struct StudentT {
    dof: f64,
    ln_b: f64,
}

impl StudentT {
    /// Student's t with `dof` (> 0) degrees of freedom.
    pub fn new(dof: f64) -> StudentT {
        let a = dof / 2.0;
        StudentT {
            dof,
            ln_b: ln_gamma(a) + ln_gamma(0.5) - ln_gamma(a + 0.5),
        }
    }

    /// ln P(T > t), t >= 0.
    pub fn ln_sf(&self, t: f64) -> f64 {
        let (dof, t2) = (self.dof, t * t);
        // P(T > t) = I_x(dof / 2, 1 / 2) / 2 with x = dof / (dof + t^2)
        let x = dof / (dof + t2);
        let one_minus_x = t2 / (dof + t2);
        ln_beta_reg(dof / 2.0, 0.5, self.ln_b, x, one_minus_x) - std::f64::consts::LN_2
    }

    /// The z statistic with the same one-sided tail probability as `t` (sign kept; FSL's
    /// `ttoz`).
    pub fn z(&self, t: f64) -> f64 {
        if t == 0.0 || !t.is_finite() {
            return if t.is_nan() { 0.0 } else { t };
        }
        let z = -norm_quantile_ln(self.ln_sf(t.abs()));
        z.copysign(t)
    }
}

/// ln P(T > t) for Student's t with `dof` degrees of freedom, t >= 0.
pub fn t_ln_sf(t: f64, dof: f64) -> f64 {
    StudentT::new(dof).ln_sf(t)
}

/// The standard normal quantile x with ln Φ(x) = `ln_p` (ln_p <= 0): Wichura's AS 241
/// (PPND16, ~1e-16 relative), whose tail branch takes `sqrt(-ln p)` so that probabilities far
/// below f64's range still have their quantile.
pub fn norm_quantile_ln(ln_p: f64) -> f64 {
    if ln_p >= 0.0 {
        return f64::INFINITY;
    }
    let p = ln_p.exp();
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        let num = ((((((2.509_080_928_730_122_7e3 * r + 3.343_057_558_358_813e4) * r
            + 6.726_577_092_700_87e4)
            * r
            + 4.592_195_393_154_987e4)
            * r
            + 1.373_169_376_550_946e4)
            * r
            + 1.971_590_950_306_551_3e3)
            * r
            + 1.331_416_678_917_843_8e2)
            * r
            + 3.387_132_872_796_366_5;
        let den = ((((((5.226_495_278_852_545e3 * r + 2.872_908_573_572_194_3e4) * r
            + 3.930_789_580_009_271e4)
            * r
            + 2.121_379_430_158_659_7e4)
            * r
            + 5.394_196_021_424_751e3)
            * r
            + 6.871_870_074_920_579e2)
            * r
            + 4.231_333_070_160_091e1)
            * r
            + 1.0;
        return q * num / den;
    }
    // Tail: r = sqrt(-ln min(p, 1 - p)).
    let (ln_tail, sign) = if q < 0.0 {
        (ln_p, -1.0)
    } else {
        ((-p).ln_1p(), 1.0)
    };
    let mut r = (-ln_tail).sqrt();
    let x = if r <= 5.0 {
        r -= 1.6;
        let num = ((((((7.745_450_142_783_414e-4 * r + 2.272_384_498_926_918_4e-2) * r
            + 2.417_807_251_774_506e-1)
            * r
            + 1.270_458_252_452_368_4)
            * r
            + 3.647_848_324_763_204_5)
            * r
            + 5.769_497_221_460_691)
            * r
            + 4.630_337_846_156_546)
            * r
            + 1.423_437_110_749_683_6;
        let den = ((((((1.050_750_071_644_416_8e-9 * r + 5.475_938_084_995_345e-4) * r
            + 1.519_866_656_361_645_7e-2)
            * r
            + 1.481_039_764_274_800_8e-1)
            * r
            + 6.897_673_349_851e-1)
            * r
            + 1.676_384_830_183_803_8)
            * r
            + 2.053_191_626_637_759)
            * r
            + 1.0;
        num / den
    } else {
        r -= 5.0;
        let num = ((((((2.010_334_399_292_288_1e-7 * r + 2.711_555_568_743_487_6e-5) * r
            + 1.242_660_947_388_078_4e-3)
            * r
            + 2.653_218_952_657_612_3e-2)
            * r
            + 2.965_605_718_285_048_7e-1)
            * r
            + 1.784_826_539_917_291_3)
            * r
            + 5.463_784_911_164_114)
            * r
            + 6.657_904_643_501_103;
        let den = ((((((2.044_263_103_389_939_7e-15 * r + 1.421_511_758_316_446e-7) * r
            + 1.846_318_317_510_054_8e-5)
            * r
            + 7.868_691_311_456_133e-4)
            * r
            + 1.487_536_129_085_061_5e-2)
            * r
            + 1.369_298_809_227_358e-1)
            * r
            + 5.998_322_065_558_88e-1)
            * r
            + 1.0;
        num / den
    };
    sign * x
}

/// The z statistic with the same one-sided tail probability as `t` under Student's t with
/// `dof` degrees of freedom (sign kept; FSL's `ttoz`).
pub fn t_to_z(t: f64, dof: f64) -> f64 {
    StudentT::new(dof).z(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from SciPy 1.17.1 (`benchmarks/peers/fmri_peers.py ttoz`:
    /// `stats.t.logsf(t, dof)` and `-special.ndtri_exp(stats.t.logsf(t, dof))`).
    #[rustfmt::skip]
    const SCIPY: &[(f64, f64, f64, f64)] = &[
    (0.01, 3.0, -0.7005252200660179, 0.009213102923083536),
    (0.5, 3.0, -1.1217049359318676, 0.4517515666164371),
    (1.0, 3.0, -1.632189224494123, 0.8578012508409573),
    (1.96, 3.0, -2.6251884881881895, 1.4579576790404274),
    (3.0, 3.0, -3.546184675450908, 1.8982064945739632),
    (7.5, 3.0, -6.009429978181515, 2.8128159635507126),
    (20.0, 3.0, -8.89844171394626, 3.6394667120172834),
    (107.0, 3.0, -13.921077463447624, 4.774713967140553),
    (3000.0, 3.0, -23.921379663906077, 6.49747672815998),
    (0.01, 10.0, -0.7009596435411354, 0.009753476600420254),
    (0.5, 10.0, -1.1585317250333984, 0.48469374274612254),
    (1.0, 10.0, -1.7693334263856657, 0.9524020261358521),
    (1.96, 10.0, -3.238616390932047, 1.7598323266228117),
    (3.0, 10.0, -5.0098614668850585, 2.4744632448419357),
    (7.5, 10.0, -11.482009770074436, 4.257982914994148),
    (20.0, 10.0, -20.65277833494768, 5.986347030011042),
    (107.0, 10.0, -37.31455431264803, 8.27862850812855),
    (3000.0, 10.0, -70.64594520277001, 11.599033180390444),
    (0.01, 137.0, -0.7011432292919203, 0.009981766805847432),
    (0.5, 137.0, -1.1746126722777424, 0.49886110857034377),
    (1.0, 137.0, -1.8354810052123403, 0.9963636444948096),
    (1.96, 137.0, -3.6491722978891556, 1.9429243348697787),
    (3.0, 137.0, -6.435205150667304, 2.9470552104024748),
    (7.5, 137.0, -26.344746254902297, 6.852864624324335),
    (20.0, 137.0, -96.80811235977828, 13.657932679172724),
    (107.0, 137.0, -307.3485623942377, 24.6261719267129),
    (0.01, 290.0, -0.7011509624869146, 0.009991382181083006),
    (0.5, 290.0, -1.175297474338445, 0.4994615675599554),
    (1.0, 290.0, -1.8383978148342992, 0.9982788304598412),
    (1.96, 290.0, -3.669994780445209, 1.9518736630602762),
    (3.0, 290.0, -6.524467730608516, 2.974548605928986),
    (7.5, 290.0, -28.568625317070158, 7.164075976917495),
    (20.0, 290.0, -129.1721431274114, 15.842132811696972),
    (107.0, 290.0, -540.3570139131616, 32.73983970469594),
    ];

    #[test]
    fn t_to_z_matches_scipy() {
        assert!(!SCIPY.is_empty());
        for &(t, dof, ln_sf, z) in SCIPY {
            let got_sf = t_ln_sf(t, dof);
            assert!(
                (got_sf - ln_sf).abs() <= 1e-10 * ln_sf.abs().max(1.0),
                "ln sf t={t} dof={dof}: {got_sf} vs {ln_sf}"
            );
            let got = t_to_z(t, dof);
            assert!(
                (got - z).abs() <= 1e-9 * z.abs().max(1.0),
                "z t={t} dof={dof}: {got} vs {z}"
            );
            assert_eq!(t_to_z(-t, dof), -got);
        }
    }

    /// Past SciPy's range (its logsf underflows below ln 1e-308) the tail stays finite, keeps
    /// growing and follows the t tail's asymptote: ln sf ~ ln c + dof ln(sqrt(dof) / t).
    #[test]
    fn far_tails_stay_finite_and_ordered() {
        let dof = 137.0;
        let mut last = 0.0;
        for t in [107.0, 500.0, 3000.0, 1e5, 1e8] {
            let z = t_to_z(t, dof);
            assert!(z.is_finite() && z > last, "t={t}: z={z} after {last}");
            last = z;
        }
        // The difference of ln sf at two far t is dof ln(t1 / t2) (the constant cancels).
        let d = t_ln_sf(1e7, dof) - t_ln_sf(1e6, dof);
        assert!((d + dof * 10f64.ln()).abs() < 1e-6, "{d}");
    }

    #[test]
    fn the_normal_quantile_inverts_known_points() {
        // Φ(1.959963984540054) = 0.975; Φ(-1.6448536269514722) = 0.05
        assert!((norm_quantile_ln(0.975f64.ln()) - 1.959_963_984_540_054).abs() < 1e-14);
        assert!((norm_quantile_ln(0.05f64.ln()) + 1.644_853_626_951_472_2).abs() < 1e-14);
        assert_eq!(norm_quantile_ln(0.5f64.ln()), 0.0);
    }
}
