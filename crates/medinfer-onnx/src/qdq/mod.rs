//! INT8 post-training quantization, the graph side (`qdq`: QuantizeLinear / DequantizeLinear): which tensors to quantize ([`plan`]), the activation
//! statistics gathered on calibration data ([`Calibration`]), and the rewrite of the FP32 graph
//! into standard QDQ ONNX ([`quantize`]) that ONNX Runtime and OpenVINO both run with integer
//! kernels.
//!
//! Running the FP32 model on calibration data needs an engine, so it lives in
//! `medinfer-engine` (`medinfer_engine::calibrate`); everything here is pure graph and
//! arithmetic, testable without an engine.
//!
//! ## Placement
//! - Weights of `Conv`, `Gemm` and `MatMul` (constant, 2-D for the latter two): signed INT8,
//!   symmetric, one scale per output channel (`[-127, 127]`, so u8 x s8 products never saturate
//!   on CPUs without VNNI either). Biases become INT32 with scale = input scale x weight scale,
//!   which is what ONNX Runtime's QLinearConv expects.
//! - Activations: unsigned INT8 with a zero point (asymmetric), one scale per tensor. Quantized
//!   are the activation inputs of those layers and of residual `Add`s, and the output of every
//!   quantized layer (after its `Relu` when the `Relu` is its only consumer: a Q with zero point 0
//!   makes the `Relu` redundant, and ONNX Runtime removes it), so that each layer sits between a
//!   DequantizeLinear and a QuantizeLinear and the engines fuse it into an integer kernel.
//!   With [`Target::OpenVino`], activations with negative values are symmetric INT8 instead
//!   (NNCF's scheme; OpenVINO folds zero-point-free dequantization into the next op, and ONNX
//!   Runtime leaves a UINT8-input Conv with an INT8 output in float).
//! - Data-movement ops (`MaxPool`, `Resize`, `Reshape`, `Flatten`, `Transpose`, `Squeeze`,
//!   `Unsqueeze`, average pooling) whose input is quantized pass the input's scale and zero
//!   point on to their output, so the engines drop the Q/DQ pair around them and run them on
//!   INT8 data (pooling and resampling in INT8, as in the published cardiac model).
//! - `Concat` runs on INT8 data with one scale shared by its inputs and output when every reader
//!   of its output is integer-capable (U-Net skips feeding a Conv) and its inputs agree in sign;
//!   otherwise each producer's output is quantized on its own: a DenseNet concatenation feeds
//!   BatchNormalizations that stay float, and a U-Net concatenation of a ReLU output with a
//!   transposed convolution's signed output is requantized by the engines. (OpenVINO was seen to
//!   crash on onnxruntime.quantization's DenseNet, which quantizes those BatchNormalizations;
//!   medinfer's graphs never have that shape.)
//! - `ConvTranspose` (one group) is quantized like `Conv`, its weights per output channel
//!   (axis 1): OpenVINO then runs an INT8 deconvolution (the 4 up-sampling layers of a U-Net
//!   decoder: 0.28 instead of 0.52 ms plus 0.06 ms of requantization). ONNX Runtime's CPU
//!   provider has no integer kernel for it and computes it in float between the Q/DQ nodes.

//!
//! | file | what |
//! |---|---|
//! | `plan.rs` | which layers and tensors to quantize ([`plan`]), the calibration graph |
//! | `stats.rs` | activation statistics over calibration data ([`Calibration`]) |
//! | `rewrite.rs` | the FP32 graph rewritten into QDQ ONNX ([`quantize`]) |
//!
//! The runtime side (running the model on calibration and validation data, accuracy control)
//! is `medinfer_engine::calibrate`.

mod plan;
mod rewrite;
mod split;
mod stats;

pub use plan::{calibration_model, plan};
pub use rewrite::quantize;
pub use split::{split_concat_convs, SplitConv};
pub use stats::{Calibration, TensorStats};

use crate::proto::NodeProto;
use serde::Serialize;
use std::collections::HashSet;

/// How activation ranges are chosen from the calibration statistics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibMethod {
    /// The smallest and largest value seen.
    MinMax,
    /// The mean over calibration runs of each run's smallest and largest value (NNCF's default
    /// for activations): one unusual sample does not widen the range for all.
    MeanMinMax,
    /// The given percentile of |values| on each side (e.g. 99.99), which ignores rare outliers.
    Percentile(f64),
    /// The clipping threshold that minimises the KL divergence between the FP32 histogram and
    /// its 8-bit version (the TensorRT method).
    Entropy,
}

impl CalibMethod {
    /// Parses `minmax`, `mean-minmax`, `percentile`, `percentile:99.9` or `entropy`.
    pub fn parse(s: &str) -> Option<CalibMethod> {
        let s = s.to_ascii_lowercase();
        match s.as_str() {
            "minmax" | "min-max" => Some(CalibMethod::MinMax),
            "mean-minmax" | "mean_minmax" | "meanminmax" => Some(CalibMethod::MeanMinMax),
            "percentile" => Some(CalibMethod::Percentile(99.99)),
            "entropy" | "kl" => Some(CalibMethod::Entropy),
            _ => {
                let p: f64 = s.strip_prefix("percentile:")?.parse().ok()?;
                (p > 50.0 && p <= 100.0).then_some(CalibMethod::Percentile(p))
            }
        }
    }
    fn needs_histogram(self) -> bool {
        !matches!(self, CalibMethod::MinMax | CalibMethod::MeanMinMax)
    }
}

/// Options of [`plan`] and [`quantize`].
#[derive(Clone, Debug)]
pub struct QuantConfig {
    /// Range method.
    pub method: CalibMethod,
    /// Layers never to quantize: a node name, an op type, or a regular expression matched
    /// against node names.
    pub exclude: Vec<String>,
    /// Correct each layer's bias for the mean shift its weight rounding causes.
    pub bias_correction: bool,
    /// The engines the QDQ model is laid out for (see [`Target`]).
    pub target: Target,
    /// Whether [`Target::OpenVino`] writes negative-valued activations as symmetric INT8:
    /// `None` (the default) when the CPU running the quantizer has AMX INT8 tiles
    /// ([`cpu_has_amx_int8`]), else UINT8 with a zero point as the portable layout does.
    /// Measured with OpenVINO 2026.4.1: on a 2-core AVX2 Zen 3 (no VNNI) and on an AVX-512
    /// VNNI Zen 4 (no AMX) it ran the ConvTranspose U-Net's INT8-input decoder Convs with
    /// large errors (cosine 0.85-0.86 against FP32, 0.997 with UINT8 inputs; 7-bit weights,
    /// NNCF's overflow fix, did not help; ONNX Runtime runs the same file at 0.997), while the
    /// same model was accurate on the Xeon with AMX.
    pub signed_activations: Option<bool>,
    /// Which layers get 7-bit weights so that engines without VNNI cannot saturate (see
    /// [`OverflowFix`]).
    pub overflow_fix: OverflowFix,
}

/// 7-bit weights against the 16-bit saturation of INT8 kernels on CPUs without VNNI (NNCF's
/// `overflow_fix`). Without VNNI (AVX2, AVX-512 without VNNI), ONNX Runtime and OpenVINO
/// multiply UINT8 activations by INT8 weights with `vpmaddubsw`, which adds two products into
/// a saturating 16-bit lane: 2 x 255 x 127 = 64,770 does not fit, 2 x 255 x 63 = 32,130 does.
/// Measured on an AVX2 Zen 3: a detector whose first convolution reads bright image pixels
/// with a smooth (all-positive) kernel agreed with FP32 at IoU 0.31 on ONNX Runtime and 0.94 on
/// OpenVINO with 8-bit weights, 0.999 on both with 7-bit ones. VNNI CPUs accumulate in 32 bits
/// and never saturate; a quantized model is portable, so the fix is on by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowFix {
    /// 8-bit weights everywhere (for VNNI-only deployments).
    None,
    /// 7-bit weights for the weighted layers that read the model's inputs directly (image
    /// pixels: the activations most often near the top of their range everywhere at once);
    /// NNCF's default.
    #[default]
    FirstLayer,
    /// 7-bit weights for every layer (no saturation anywhere, at some accuracy cost).
    All,
}

impl OverflowFix {
    /// Parses `none`, `first-layer` or `all`.
    pub fn parse(s: &str) -> Option<OverflowFix> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "off" => Some(OverflowFix::None),
            "first-layer" | "first_layer" | "first" => Some(OverflowFix::FirstLayer),
            "all" => Some(OverflowFix::All),
            _ => None,
        }
    }
}

/// Whether this CPU has VNNI INT8 dot products (AVX-512 VNNI or AVX-VNNI).
pub fn cpu_has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512vnni") || std::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// Whether this CPU has AMX INT8 tile instructions (CPUID leaf 7, EDX bit 25): where
/// OpenVINO runs convolutions on INT8 (signed) activations accurately.
pub fn cpu_has_amx_int8() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (std::arch::x86_64::__cpuid_count(7, 0).edx >> 25) & 1 == 1
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The engines a quantized model is laid out for. Both layouts are standard QDQ ONNX that every
/// engine runs correctly; they differ in speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Fast on ONNX Runtime and OpenVINO alike: activations with negative values are UINT8
    /// with a zero point, because ONNX Runtime fuses a Conv into QLinearConv only when its
    /// input and output have one type, and UINT8 is its fast path on x86.
    #[default]
    Portable,
    /// Fastest on OpenVINO (NNCF's scheme): activations with negative values are INT8,
    /// symmetric (zero point 0), so OpenVINO folds their dequantization into the ops that read
    /// them; and a pooling / data-movement output that feeds a Concat is quantized too, so a
    /// DenseNet block concatenates INT8 data only (measured in docs/benchmarks.md). Still
    /// correct on ONNX Runtime, but possibly slower there: DenseNet-121 runs 2x slower (54 of
    /// its Convs, UINT8 in and INT8 out, stay float), ResNets and U-Nets as fast.
    OpenVino,
}

impl Target {
    /// Parses `portable` or `openvino`.
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "portable" => Some(Target::Portable),
            "openvino" => Some(Target::OpenVino),
            _ => None,
        }
    }
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            method: CalibMethod::Percentile(99.99),
            exclude: vec![],
            bias_correction: true,
            target: Target::Portable,
            signed_activations: None,
            overflow_fix: OverflowFix::default(),
        }
    }
}

/// A quantizable layer found by [`plan`].
#[derive(Clone, Debug, Serialize)]
pub struct Layer {
    /// Node name (a name is made up as `<op>_<index>` when the node has none).
    pub name: String,
    /// Op type.
    pub op: String,
    /// Index of the node in the graph.
    #[serde(skip)]
    pub index: usize,
    /// Activation inputs that get quantized.
    pub inputs: Vec<String>,
    /// Weight initializer, for Conv / Gemm / MatMul.
    pub weight: Option<String>,
    /// Axis of the weight's output channels.
    #[serde(skip)]
    pub weight_axis: usize,
}

/// What to quantize in a model, and which tensors calibration must observe.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Quantizable layers in graph order.
    pub layers: Vec<Layer>,
    /// Layers left in floating point by `exclude`, by name.
    pub excluded: Vec<String>,
    /// Layers left in floating point because the target's engines have no fast integer
    /// kernel for them, by name: with [`Target::Portable`], 3-D `Conv` and `ConvTranspose`
    /// (ONNX Runtime's QLinearConv runs 3-D convolutions slower than its float kernels, and it
    /// has no integer ConvTranspose), so that INT8 is never slower than FP32 on either engine.
    pub kept_float_for_target: Vec<String>,
    /// Every tensor whose range calibration must measure.
    pub tensors: Vec<String>,
    /// Tensors whose per-channel mean is needed (inputs of weighted layers, for bias
    /// correction).
    pub channel_mean_tensors: Vec<String>,
    /// Warnings about ops medinfer does not know (custom domains, op types outside its tables):
    /// they stay in floating point between dequantized inputs and quantized outputs.
    pub warnings: Vec<String>,
}

/// Float ops medinfer knows and leaves in floating point on purpose (cheap element-wise or
/// shape work, or not worth INT8); anything else not quantized draws a warning.
const KNOWN_FLOAT: &[&str] = &[
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "LogSoftmax",
    "HardSigmoid",
    "HardSwish",
    "Gelu",
    "Erf",
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "Mul",
    "Sub",
    "Div",
    "Add",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Identity",
    "Dropout",
    "Constant",
    "Shape",
    "Gather",
    "Slice",
    "Split",
    "Pad",
    "Cast",
    "Expand",
    "Tile",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ArgMax",
    "Concat",
    "ConvTranspose",
    "Conv",
    "Gemm",
    "MatMul",
];

/// Ops that only move or select values: their output may reuse their input's quantization.
const PASS_THROUGH: &[&str] = &[
    "MaxPool",
    "Resize",
    "Upsample",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
];

/// Per-layer outcome in a [`QuantReport`].
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Node name.
    pub name: String,
    /// Op type.
    pub op: String,
    /// Whether it runs in INT8 (false: kept in floating point).
    pub quantized: bool,
    /// Why it was kept in floating point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_float_because: Option<String>,
    /// Scale and zero point of each quantized activation input.
    pub input_scales: Vec<QParams>,
    /// Smallest and largest per-channel weight scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_scale_range: Option<(f32, f32)>,
    /// Relative L2 error of the INT8 weights, ||Wq - W|| / ||W||.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_error: Option<f32>,
    /// Estimated signal-to-quantization-noise ratio of the worst activation input, in dB
    /// (rounding noise scale^2/12 against the calibration signal power; clipping not counted).
    pub activation_sqnr_db: f32,
    /// Largest bias change made by bias correction, relative to the bias' own scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias_correction: Option<f32>,
    /// A sensitivity score (higher = more error expected), used to rank layers for accuracy
    /// control.
    pub sensitivity: f32,
    /// Whether its weights are 7-bit (the overflow fix, [`OverflowFix`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub seven_bit_weights: bool,
}

/// What [`quantize`] did.
#[derive(Clone, Debug, Serialize)]
pub struct QuantReport {
    /// Range method.
    pub method: CalibMethod,
    /// The engines the model is laid out for.
    pub target: Target,
    /// Whether negative-valued activations were written as symmetric INT8 (the `openvino`
    /// layout on a CPU with VNNI) rather than UINT8 with a zero point.
    pub signed_activations: bool,
    /// Which layers got 7-bit weights.
    pub overflow_fix: OverflowFix,
    /// Calibration samples.
    pub samples: usize,
    /// Per layer, in graph order.
    pub layers: Vec<LayerReport>,
    /// Activation tensors quantized.
    pub activations_quantized: usize,
    /// QuantizeLinear nodes written.
    pub quantize_nodes: usize,
    /// DequantizeLinear nodes written.
    pub dequantize_nodes: usize,
}

/// Scale and zero point of one activation tensor; `signed`: INT8 (symmetric, zero point 0)
/// instead of UINT8.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct QParams {
    /// Scale.
    pub scale: f32,
    /// Zero point.
    pub zero_point: i32,
    /// INT8 rather than UINT8.
    pub signed: bool,
}

#[cfg(test)]
mod tests {
    use super::plan::*;
    use super::rewrite::*;
    use super::stats::*;
    use super::*;

    #[test]
    fn activation_parameters_represent_zero_exactly() {
        let p = act_params(0.0, 6.0, true);
        assert_eq!((p.zero_point, p.signed), (0, false));
        assert!((p.scale - 6.0 / 255.0).abs() < 1e-9);
        let p = act_params(-1.0, 3.0, false);
        assert_eq!(p.zero_point, 64);
        assert!((p.scale * 255.0 - 4.0).abs() < 1e-6);
        let p = act_params(-1.0, 3.0, true);
        assert_eq!((p.zero_point, p.signed), (0, true));
        assert!((p.scale * 127.0 - 3.0).abs() < 1e-6);
        // A range that excludes zero is widened to include it.
        assert_eq!(act_params(2.0, 4.0, false).zero_point, 0);
        assert_eq!(act_params(0.0, 0.0, false).scale, 1.0);
    }

    #[test]
    fn openvino_target_quantizes_pool_outputs_that_feed_a_concat() {
        let mut m = crate::zoo::build("densenet121-cxr").unwrap();
        crate::optimize::optimize(&mut m).unwrap();
        let g = m.graph.as_ref().unwrap();
        let pools: Vec<&str> = g
            .node
            .iter()
            .filter(|n| {
                matches!(n.op_type.as_deref(), Some("AveragePool" | "MaxPool"))
                    && g.node.iter().any(|c| {
                        c.op_type.as_deref() == Some("Concat") && c.input.contains(&n.output[0])
                    })
            })
            .map(|n| n.output[0].as_str())
            .collect();
        // pool0 (MaxPool) and the three transition AveragePools open the four dense blocks.
        assert_eq!(pools.len(), 4, "{pools:?}");
        let portable = plan(&m, &QuantConfig::default()).unwrap();
        let ov = plan(
            &m,
            &QuantConfig {
                target: Target::OpenVino,
                ..QuantConfig::default()
            },
        )
        .unwrap();
        for p in &pools {
            assert!(!portable.tensors.iter().any(|t| t == p), "{p}");
            assert!(ov.tensors.iter().any(|t| t == p), "{p}");
        }
        assert_eq!(ov.tensors.len(), portable.tensors.len() + pools.len());
        assert_eq!(Target::parse("openvino"), Some(Target::OpenVino));
        assert_eq!(Target::parse("portable"), Some(Target::Portable));
        assert_eq!(Target::parse("tensorrt"), None);
    }

    #[test]
    fn weights_quantize_per_output_channel() {
        // 2 output channels with very different magnitudes: each keeps full resolution.
        let w = [1.0, -0.5, 0.25, 0.001, -0.002, 0.0005];
        let (q, s) = quantize_weight(&[2, 3], &w, 0, 127.0);
        assert_eq!(q[0], 127);
        assert_eq!(q[4], -127);
        assert!((s[0] - 1.0 / 127.0).abs() < 1e-9 && (s[1] - 0.002 / 127.0).abs() < 1e-9);
        // Axis 1 (Gemm without transB): channels are columns.
        let (_, s) = quantize_weight(&[3, 2], &w, 1, 127.0);
        assert!((s[0] - 1.0 / 127.0).abs() < 1e-9 && (s[1] - 0.5 / 127.0).abs() < 1e-9);
    }

    #[test]
    fn histogram_percentiles_and_growth() {
        let mut st = TensorStats::default();
        let v: Vec<f32> = (0..10000).map(|i| i as f32 / 10000.0).collect();
        st.update(&[10000], &v, true, false);
        // A later batch with a larger range doubles the histogram without losing counts.
        st.update(&[1], &[3.5], true, false);
        assert_eq!(st.hist.iter().sum::<u64>(), 10001);
        assert!(st.hist_range >= 3.5);
        let (lo, hi) = st.range(CalibMethod::Percentile(99.0));
        assert_eq!(lo, 0.0);
        assert!((hi - 0.99).abs() < 0.01, "{hi}");
        assert_eq!(st.range(CalibMethod::MinMax), (0.0, 3.5));
        // Entropy clips the lone outlier.
        let (_, e) = st.range(CalibMethod::Entropy);
        assert!(e < 3.5 && e > 0.5, "{e}");
    }

    #[test]
    fn channel_means_are_per_axis_1() {
        let mut st = TensorStats::default();
        // (N=2, C=2, 2) : channel 0 = 1,2 and 5,6 ; channel 1 = 3,4 and 7,8
        st.update(&[2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.], false, true);
        assert_eq!(st.channel_means(), vec![3.5, 5.5]);
    }

    #[test]
    fn bias_correction_cancels_the_mean_shift_of_rounding() {
        // One 1x1 conv, 1 output, 2 inputs with means 2 and -1.
        let w = [0.3, 0.7];
        let deq = [0.31, 0.69];
        let conv = NodeProto {
            op_type: Some("Conv".into()),
            ..Default::default()
        };
        let d = weight_mean_shift(&conv, &[1, 2, 1, 1], &w, &deq, &[2.0, -1.0], 0).unwrap();
        assert!((d[0] - (0.01 * 2.0 + (-0.01) * -1.0)).abs() < 1e-6);
    }

    #[test]
    fn transposed_conv_bias_correction_averages_over_the_taps_each_pixel_receives() {
        // ConvTranspose 2x2, stride 2, 2 inputs (means 1 and 3) -> 1 output channel: every
        // output pixel gets exactly one of the 4 taps of each input channel.
        let node = NodeProto {
            op_type: Some("ConvTranspose".into()),
            attribute: vec![crate::proto::AttributeProto {
                name: Some("strides".into()),
                r#type: Some(crate::proto::attribute_type::INTS),
                ints: vec![2, 2],
                ..Default::default()
            }],
            ..Default::default()
        };
        let w = [0.0f32; 8];
        let deq = [0.04, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.08];
        let d = weight_mean_shift(&node, &[2, 1, 2, 2], &w, &deq, &[1.0, 3.0], 1).unwrap();
        // Mean over the 4 pixel phases: (0.04 * 1 + (-0.08) * 3) / 4.
        assert!((d[0] - (0.04 - 0.24) / 4.0).abs() < 1e-6, "{d:?}");
    }

    #[test]
    fn method_names_parse() {
        assert_eq!(CalibMethod::parse("minmax"), Some(CalibMethod::MinMax));
        assert_eq!(
            CalibMethod::parse("percentile:99.9"),
            Some(CalibMethod::Percentile(99.9))
        );
        assert_eq!(CalibMethod::parse("entropy"), Some(CalibMethod::Entropy));
        assert_eq!(CalibMethod::parse("percentile:20"), None);
        assert_eq!(CalibMethod::parse("nope"), None);
    }

    #[test]
    fn unknown_ops_stay_float_between_quantized_neighbours_with_a_warning() {
        use crate::builder::{f32_value_info, DimSpec, GraphBuilder};
        let mut b = GraphBuilder::new(3);
        let c1 = b.conv("c1", "input", 1, 4, 3, 1, 1, true);
        let odd = b.node("FancyActivation", "odd", &[&c1], &[]);
        let c2 = b.conv("c2", &odd, 4, 2, 1, 1, 0, true);
        let x = f32_value_info(
            "input",
            &[
                DimSpec::Fixed(1),
                DimSpec::Fixed(1),
                DimSpec::Fixed(8),
                DimSpec::Fixed(8),
            ],
        );
        let mut m = b.finish("t", vec![x], vec![f32_value_info(&c2, &[])], &[]);
        m.graph.as_mut().unwrap().node[1].domain = Some("com.example".into());
        let config = QuantConfig::default();
        let plan = plan(&m, &config).unwrap();
        assert_eq!(plan.layers.len(), 2);
        assert_eq!(plan.warnings.len(), 1);
        assert!(
            plan.warnings[0].contains("com.example::FancyActivation"),
            "{:?}",
            plan.warnings
        );
        let mut calib = Calibration::default();
        let vals: Vec<f32> = (0..64).map(|i| i as f32 / 32.0 - 1.0).collect();
        let values: Vec<(Vec<usize>, &[f32])> = plan
            .tensors
            .iter()
            .map(|_| (vec![1, 1, 8, 8], &vals[..]))
            .collect();
        calib.add(&plan, config.method, &values);
        let (q, _) = quantize(&m, &plan, &calib, &config, &HashSet::new()).unwrap();
        let g = q.graph.unwrap();
        let odd = g
            .node
            .iter()
            .find(|n| n.op_type.as_deref() == Some("FancyActivation"))
            .unwrap();
        let producer = g
            .node
            .iter()
            .find(|n| n.output.contains(&odd.input[0]))
            .unwrap();
        assert_eq!(producer.op_type.as_deref(), Some("DequantizeLinear"));
        let reader = g
            .node
            .iter()
            .find(|n| n.input.contains(&odd.output[0]))
            .unwrap();
        assert_eq!(reader.op_type.as_deref(), Some("QuantizeLinear"));
    }
}
