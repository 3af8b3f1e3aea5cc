//! Reference architectures with seeded (untrained) weights, for speed work and engine tests.
//!
//! Each model is built in Rust, byte-identical on every build, with a dynamic batch dimension
//! named `batch` (the nominal batch from the published system is recorded in the model's
//! metadata as `medinfer.default_batch`). The weights are random: outputs mean nothing clinically.
//!
//! | name | architecture | input | outputs | trainable parameters |
//! |---|---|---|---|---|
//! | `densenet121-cxr` | DenseNet-121, 1 input channel | (batch,1,224,224), nominal 1 | 18 | 6,966,034 |
//! | `resnet50-fmri` | ResNet-50 (v1.5) | (batch,3,45,45), nominal 8 | 10 | 23,528,522 |
//! | `resnet18-ct` | ResNet-18, 1 input channel | (batch,1,128,128), nominal 1 | 6 | 11,173,318 |
//! | `unet-cardiac` | 2-D U-Net, 4 levels, 16 base channels, BN+ReLU, nearest up-sampling | (batch,1,128,128), nominal 1 | (batch,4,128,128) | 2,160,180 |
//! | `unet-convt` | 2-D U-Net, 4 levels, 16 base channels, BN+ReLU, transposed-convolution up-sampling (the original U-Net's and nnU-Net's decoder) | (batch,1,128,128), nominal 1 | (batch,4,128,128) | 1,942,340 |
//! | `fmri-resnet50` | ResNet-50 (v1.5), 13 outputs (the trained fMRI classifier's graph) | (batch,3,45,45), nominal 8 | 13 | 23,534,669 |
//! | `cardiac-unet` | 2-D U-Net, 3 levels, 16 base channels (the trained cardiac model's graph) | (batch,1,96,96), nominal 1 | (batch,4,96,96) | 536,372 |
//!
//! [`build_trained`] assembles an architecture with trained parameters instead (that is how the
//! shipped cardiac model is made from the weights its training script finds).

use crate::builder::{f32_value_info, DimSpec, GraphBuilder};
use crate::proto::ModelProto;
use crate::OnnxError;

/// A zoo entry.
#[derive(Clone, Copy, Debug)]
pub struct ZooEntry {
    /// Name used on the command line.
    pub name: &'static str,
    /// What it is.
    pub description: &'static str,
    /// The published system it stands in for.
    pub stands_for: &'static str,
    /// Input shape with the nominal batch.
    pub input_shape: [usize; 4],
    /// The seed of its weights.
    pub seed: u64,
}

/// Every zoo model.
pub const ENTRIES: &[ZooEntry] = &[
    ZooEntry {
        name: "densenet121-cxr",
        description: "DenseNet-121, 1 input channel, 18 outputs (chest X-ray findings)",
        stands_for: "chest X-ray multi-label classification (PadChest)",
        input_shape: [1, 1, 224, 224],
        seed: 121,
    },
    ZooEntry {
        name: "resnet50-fmri",
        description: "ResNet-50 v1.5, 3 channels, 10 outputs (brain networks)",
        stands_for: "resting-state fMRI network labelling",
        input_shape: [8, 3, 45, 45],
        seed: 50,
    },
    ZooEntry {
        name: "resnet18-ct",
        description: "ResNet-18, 1 input channel, 6 outputs (body regions)",
        stands_for: "CT slice anatomy classification",
        input_shape: [1, 1, 128, 128],
        seed: 18,
    },
    ZooEntry {
        name: "unet-cardiac",
        description:
            "2-D U-Net, 4 down-sampling levels, 16 base channels, BatchNorm+ReLU, 4 classes",
        stands_for: "cardiac cine-MRI chamber segmentation",
        input_shape: [1, 1, 128, 128],
        seed: 2,
    },
    ZooEntry {
        name: "unet-convt",
        description:
            "2-D U-Net, 4 down-sampling levels, 16 base channels, BatchNorm+ReLU, 2x2 stride-2 \
             transposed-convolution up-sampling (the decoder of the original U-Net and of \
             nnU-Net), 4 classes",
        stands_for: "cardiac cine-MRI chamber segmentation, decoder as nnU-Net builds it",
        input_shape: [1, 1, 128, 128],
        seed: 4,
    },
    ZooEntry {
        name: "fmri-resnet50",
        description: "ResNet-50 v1.5, 3 channels, 13 outputs: ten resting-state networks and \
             three noise kinds (the architecture of medinfer's trained fMRI classifier)",
        stands_for: "resting-state fMRI network labelling (trained: models/fmri)",
        input_shape: [8, 3, 45, 45],
        seed: 51,
    },
    ZooEntry {
        name: "cardiac-unet",
        description:
            "2-D U-Net, 3 down-sampling levels, 16 base channels, BatchNorm+ReLU, 4 classes, \
             96x96 patches at 1.6 mm (the architecture of medinfer's trained cardiac model)",
        stands_for: "cardiac cine-MRI chamber segmentation (trained: models/cardiac)",
        input_shape: [1, 1, 96, 96],
        seed: 3,
    },
];

/// Looks a zoo entry up by name.
pub fn entry(name: &str) -> Result<&'static ZooEntry, OnnxError> {
    ENTRIES
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| OnnxError::UnknownZooModel(name.to_string()))
}

/// Builds a zoo model by name.
pub fn build(name: &str) -> Result<ModelProto, OnnxError> {
    let e = entry(name)?;
    build_with(
        e,
        GraphBuilder::new(e.seed),
        format!("seeded, untrained (seed {})", e.seed),
    )
}

/// Builds zoo architecture `name` with trained parameters: `weights` maps every initializer
/// name of the graph (e.g. `enc1.0.conv.weight`, `enc1.0.bn.running_var`, `head.bias`; PyTorch
/// `state_dict` names when the network is written to mirror the graph) to its values.
/// `description` goes into the model's `medinfer.weights` metadata. Missing, extra or
/// wrongly sized parameters are an error that lists them.
pub fn build_trained(
    name: &str,
    weights: std::collections::HashMap<String, Vec<f32>>,
    description: &str,
) -> Result<ModelProto, OnnxError> {
    let e = entry(name)?;
    let mut problems = Vec::new();
    let model = build_with_check(
        e,
        GraphBuilder::with_weights(weights),
        description,
        &mut problems,
    );
    if !problems.is_empty() {
        return Err(OnnxError::Invalid {
            path: format!("weights for {name}"),
            reason: format!("{} problem(s): {}", problems.len(), problems.join("; ")),
        });
    }
    Ok(model)
}

fn build_with(e: &ZooEntry, b: GraphBuilder, weights: String) -> Result<ModelProto, OnnxError> {
    Ok(build_with_check(e, b, &weights, &mut Vec::new()))
}

fn build_with_check(
    e: &ZooEntry,
    mut b: GraphBuilder,
    weights: &str,
    problems: &mut Vec<String>,
) -> ModelProto {
    let (out, out_dims) = match e.name {
        "densenet121-cxr" => (densenet121(&mut b, 1, 18), vec![18]),
        "resnet50-fmri" => (
            resnet(&mut b, Block::Bottleneck, [3, 4, 6, 3], 3, 10),
            vec![10],
        ),
        "fmri-resnet50" => (
            resnet(&mut b, Block::Bottleneck, [3, 4, 6, 3], 3, 13),
            vec![13],
        ),
        "resnet18-ct" => (resnet(&mut b, Block::Basic, [2, 2, 2, 2], 1, 6), vec![6]),
        "unet-cardiac" => (unet(&mut b, 1, 4, 16, 4, Up::Resize), vec![4, 128, 128]),
        "unet-convt" => (
            unet(&mut b, 1, 4, 16, 4, Up::ConvTranspose),
            vec![4, 128, 128],
        ),
        "cardiac-unet" => (unet(&mut b, 1, 4, 16, 3, Up::Resize), vec![4, 96, 96]),
        _ => unreachable!("every entry has a builder"),
    };
    problems.extend(b.weight_problems());
    let [n, c, h, w] = e.input_shape;
    let batch = || DimSpec::Named("batch".into());
    let input = f32_value_info(
        "input",
        &[
            batch(),
            DimSpec::Fixed(c),
            DimSpec::Fixed(h),
            DimSpec::Fixed(w),
        ],
    );
    let mut od = vec![batch()];
    od.extend(out_dims.into_iter().map(DimSpec::Fixed));
    let mut b2 = b;
    let out = b2.node("Identity", "output", &[&out], &[]);
    let output = f32_value_info(&out, &od);
    b2.finish(
        e.name,
        vec![input],
        vec![output],
        &[
            ("medinfer.zoo", e.name.to_string()),
            ("medinfer.default_batch", n.to_string()),
            ("medinfer.weights", weights.to_string()),
        ],
    )
}

#[allow(clippy::too_many_arguments)]
fn conv_bn_relu(
    b: &mut GraphBuilder,
    name: &str,
    x: &str,
    cin: usize,
    cout: usize,
    k: usize,
    s: usize,
    p: usize,
) -> String {
    let c = b.conv(&format!("{name}.conv"), x, cin, cout, k, s, p, false);
    let n = b.batch_norm(&format!("{name}.bn"), &c, cout, (0.8, 1.2));
    b.relu(&format!("{name}.relu"), &n)
}

/// DenseNet-121 (growth 32, bn_size 4, blocks 6/12/24/16, 64 initial features), as torchvision.
fn densenet121(b: &mut GraphBuilder, in_ch: usize, classes: usize) -> String {
    let growth = 32;
    let bn_size = 4;
    let c0 = b.conv("features.conv0", "input", in_ch, 64, 7, 2, 3, false);
    let n0 = b.batch_norm("features.norm0", &c0, 64, (0.8, 1.2));
    let r0 = b.relu("features.relu0", &n0);
    let mut x = b.max_pool("features.pool0", &r0, 3, 2, 1);
    let mut c = 64;
    for (bi, &layers) in [6usize, 12, 24, 16].iter().enumerate() {
        let block = format!("features.denseblock{}", bi + 1);
        let mut feats = vec![x.clone()];
        for li in 0..layers {
            let l = format!("{block}.denselayer{}", li + 1);
            let cat = if feats.len() == 1 {
                feats[0].clone()
            } else {
                let refs: Vec<&str> = feats.iter().map(|s| s.as_str()).collect();
                b.node(
                    "Concat",
                    &format!("{l}.concat"),
                    &refs,
                    &[("axis", crate::builder::Attr::Int(1))],
                )
            };
            let cin = c + li * growth;
            let n1 = b.batch_norm(&format!("{l}.norm1"), &cat, cin, (0.8, 1.2));
            let r1 = b.relu(&format!("{l}.relu1"), &n1);
            let c1 = b.conv(
                &format!("{l}.conv1"),
                &r1,
                cin,
                bn_size * growth,
                1,
                1,
                0,
                false,
            );
            let n2 = b.batch_norm(&format!("{l}.norm2"), &c1, bn_size * growth, (0.8, 1.2));
            let r2 = b.relu(&format!("{l}.relu2"), &n2);
            let c2 = b.conv(
                &format!("{l}.conv2"),
                &r2,
                bn_size * growth,
                growth,
                3,
                1,
                1,
                false,
            );
            feats.push(c2);
        }
        let refs: Vec<&str> = feats.iter().map(|s| s.as_str()).collect();
        x = b.node(
            "Concat",
            &format!("{block}.concat"),
            &refs,
            &[("axis", crate::builder::Attr::Int(1))],
        );
        c += layers * growth;
        if bi < 3 {
            let t = format!("features.transition{}", bi + 1);
            let n = b.batch_norm(&format!("{t}.norm"), &x, c, (0.8, 1.2));
            let r = b.relu(&format!("{t}.relu"), &n);
            let cv = b.conv(&format!("{t}.conv"), &r, c, c / 2, 1, 1, 0, false);
            c /= 2;
            x = b.avg_pool(&format!("{t}.pool"), &cv, 2, 2);
        }
    }
    let n5 = b.batch_norm("features.norm5", &x, c, (0.8, 1.2));
    let r5 = b.relu("features.relu5", &n5);
    let g = b.global_pool_flatten("avgpool", &r5);
    b.linear("classifier", &g, c, classes)
}

#[derive(Clone, Copy, PartialEq)]
enum Block {
    Basic,
    Bottleneck,
}

/// ResNet-18/34 (basic blocks) or ResNet-50 (bottlenecks, stride on the 3x3: v1.5), as torchvision.
/// The last BatchNorm of each residual branch is scaled down (gamma 0.1-0.3) so that the
/// variance does not double at every block of a randomly initialised network.
fn resnet(
    b: &mut GraphBuilder,
    block: Block,
    layers: [usize; 4],
    in_ch: usize,
    classes: usize,
) -> String {
    let expansion = if block == Block::Bottleneck { 4 } else { 1 };
    let x0 = conv_bn_relu(b, "stem", "input", in_ch, 64, 7, 2, 3);
    let mut x = b.max_pool("maxpool", &x0, 3, 2, 1);
    let mut cin = 64;
    for (li, &n) in layers.iter().enumerate() {
        let planes = 64 << li;
        for bi in 0..n {
            let stride = if bi == 0 && li > 0 { 2 } else { 1 };
            let p = format!("layer{}.{}", li + 1, bi);
            let out_c = planes * expansion;
            let branch = match block {
                Block::Basic => {
                    let a = conv_bn_relu(b, &format!("{p}.1"), &x, cin, planes, 3, stride, 1);
                    let c2 = b.conv(&format!("{p}.conv2"), &a, planes, planes, 3, 1, 1, false);
                    b.batch_norm(&format!("{p}.bn2"), &c2, planes, (0.1, 0.3))
                }
                Block::Bottleneck => {
                    let a = conv_bn_relu(b, &format!("{p}.1"), &x, cin, planes, 1, 1, 0);
                    let a2 = conv_bn_relu(b, &format!("{p}.2"), &a, planes, planes, 3, stride, 1);
                    let c3 = b.conv(&format!("{p}.conv3"), &a2, planes, out_c, 1, 1, 0, false);
                    b.batch_norm(&format!("{p}.bn3"), &c3, out_c, (0.1, 0.3))
                }
            };
            let shortcut = if stride != 1 || cin != out_c {
                let d = b.conv(
                    &format!("{p}.downsample.conv"),
                    &x,
                    cin,
                    out_c,
                    1,
                    stride,
                    0,
                    false,
                );
                b.batch_norm(&format!("{p}.downsample.bn"), &d, out_c, (0.8, 1.2))
            } else {
                x.clone()
            };
            let s = b.node("Add", &format!("{p}.add"), &[&branch, &shortcut], &[]);
            x = b.relu(&format!("{p}.relu"), &s);
            cin = out_c;
        }
    }
    let g = b.global_pool_flatten("avgpool", &x);
    b.linear("fc", &g, cin, classes)
}

/// How a U-Net decoder doubles the resolution.
#[derive(Clone, Copy)]
enum Up {
    /// Nearest 2x resize, then a 3x3 conv + BN + ReLU that halves the channels.
    Resize,
    /// A 2x2 stride-2 transposed convolution (with bias, no activation) that halves the
    /// channels, as in the original U-Net and nnU-Net.
    ConvTranspose,
}

/// 2-D U-Net: `levels` down-sampling levels (max pool), double 3x3 conv + BN + ReLU at each
/// level, 2x up-sampling that halves the channels (`up`), skip concatenation, and a final 1x1
/// conv to the class logits.
fn unet(
    b: &mut GraphBuilder,
    in_ch: usize,
    classes: usize,
    base: usize,
    levels: usize,
    up: Up,
) -> String {
    let double = |b: &mut GraphBuilder, name: &str, x: &str, cin: usize, cout: usize| {
        let a = conv_bn_relu(b, &format!("{name}.0"), x, cin, cout, 3, 1, 1);
        conv_bn_relu(b, &format!("{name}.1"), &a, cout, cout, 3, 1, 1)
    };
    let mut skips = Vec::new();
    let mut x = "input".to_string();
    let mut c = in_ch;
    for level in 0..levels {
        let out = base << level;
        let e = double(b, &format!("enc{}", level + 1), &x, c, out);
        skips.push((e.clone(), out));
        x = b.max_pool(&format!("pool{}", level + 1), &e, 2, 2, 0);
        c = out;
    }
    x = double(b, "bottleneck", &x, c, base << levels);
    c = base << levels;
    for level in (0..levels).rev() {
        let (skip, sc) = skips[level].clone();
        let uc = match up {
            Up::Resize => {
                let u = b.upsample2x(&format!("up{}.resize", level + 1), &x);
                conv_bn_relu(b, &format!("up{}.conv", level + 1), &u, c, sc, 3, 1, 1)
            }
            Up::ConvTranspose => b.conv_transpose(&format!("up{}.convt", level + 1), &x, c, sc, 2),
        };
        let cat = b.node(
            "Concat",
            &format!("up{}.concat", level + 1),
            &[&uc, &skip],
            &[("axis", crate::builder::Attr::Int(1))],
        );
        x = double(b, &format!("dec{}", level + 1), &cat, 2 * sc, sc);
        c = sc;
    }
    b.conv("head", &x, c, classes, 1, 1, 0, true)
}

/// Synthetic, image-like inputs for a zoo model, one sample (without the batch axis) per entry,
/// in the model's input convention: smooth anatomy-like structures (random ellipses of
/// different intensity on a gradient background, smoothed edges) plus noise, scaled like the
/// published preprocessing (chest X-ray: TorchXRayVision's [-1024, 1024]; CT: a windowed
/// slice in [0, 1]; cardiac MRI: min-max [0, 1]; fMRI maps: z-scored). They are calibration
/// and validation data for speed work with the untrained zoo weights: what matters is that
/// activation statistics look like those of real images (structured, not white noise).
pub fn sample_inputs(name: &str, count: usize, seed: u64) -> Result<Vec<Vec<f32>>, OnnxError> {
    let e = entry(name)?;
    let [_, c, h, w] = e.input_shape;
    let mut rng = medinfer_core::SeededRng::new(seed ^ 0x5eed_0000 ^ e.seed);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut img = vec![0f32; c * h * w];
        for ch in 0..c {
            let plane = &mut img[ch * h * w..(ch + 1) * h * w];
            let (gx, gy) = (rng.range(-0.3, 0.3), rng.range(-0.3, 0.3));
            let base = rng.range(0.1, 0.4);
            for y in 0..h {
                for x in 0..w {
                    plane[y * w + x] = (base
                        + gx * (x as f64 / w as f64 - 0.5)
                        + gy * (y as f64 / h as f64 - 0.5))
                        as f32;
                }
            }
            let blobs = 3 + (rng.next_u64() % 6) as usize;
            for _ in 0..blobs {
                let (cx, cy) = (
                    rng.range(0.15, 0.85) * w as f64,
                    rng.range(0.15, 0.85) * h as f64,
                );
                let (rx, ry) = (
                    rng.range(0.05, 0.3) * w as f64,
                    rng.range(0.05, 0.3) * h as f64,
                );
                let (ang, amp) = (rng.range(0.0, std::f64::consts::PI), rng.range(-0.4, 0.6));
                let (sa, ca) = ang.sin_cos();
                for y in 0..h {
                    for x in 0..w {
                        let (dx, dy) = (x as f64 - cx, y as f64 - cy);
                        let u = (dx * ca + dy * sa) / rx;
                        let v = (-dx * sa + dy * ca) / ry;
                        let r = (u * u + v * v).sqrt();
                        // Smoothed edge: 1 inside, 0 outside, a soft ramp of ~10% of the radius.
                        let m = ((1.1 - r) / 0.2).clamp(0.0, 1.0);
                        plane[y * w + x] += (amp * m) as f32;
                    }
                }
            }
            for p in plane.iter_mut() {
                *p = (*p + (rng.normal() * 0.02) as f32).clamp(0.0, 1.0);
            }
        }
        match name {
            "densenet121-cxr" => img.iter_mut().for_each(|v| *v = *v * 2048.0 - 1024.0),
            "resnet50-fmri" => {
                let n = img.len() as f32;
                let mean = img.iter().sum::<f32>() / n;
                let sd = (img.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n)
                    .sqrt()
                    .max(1e-6);
                img.iter_mut().for_each(|v| *v = (*v - mean) / sd);
            }
            _ => {}
        }
        out.push(img);
    }
    Ok(out)
}
