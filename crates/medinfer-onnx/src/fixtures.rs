//! Small models and inputs for tests of models the zoo does not cover, shared by the engine
//! and CLI test suites: a text-detector-shaped network at opset 12 with dynamic batch, height
//! and width, and synthetic "pages" for it; a classifier with two inputs (an image and a
//! clinical vector) and samples for it.

use crate::builder::{f32_tensor, f32_value_info, Attr, DimSpec, GraphBuilder};
use crate::proto::ModelProto;
use medinfer_core::SeededRng;

/// Input / output dims `[n, c, h, w]` with `n`, `h`, `w` dynamic.
pub fn dyn_dims(c: usize) -> Vec<DimSpec> {
    vec![
        DimSpec::Named("n".into()),
        DimSpec::Fixed(c),
        DimSpec::Named("h".into()),
        DimSpec::Named("w".into()),
    ]
}

/// A small text-detector-shaped network at opset 12 (as PaddlePaddle exports are): every input
/// dimension but the channels dynamic, a stride-2 encoder, a transposed-convolution decoder, a
/// sigmoid probability map, and Squeeze / Unsqueeze with their opset-12 `axes` attributes.
/// Its weights are seeded, not trained, so a hand-set brightness branch (a 3x3 box filter of
/// the input, added to the decoder's logits) makes the map mark the bright bars as a trained
/// detector marks text: foreground where the page is bright, with a seeded-network texture.
pub fn detector() -> ModelProto {
    let mut g = GraphBuilder::new(5);
    let box_w = g.initializer(f32_tensor("box.weight", &[1, 3, 3, 3], &[4.0 / 27.0; 27]));
    let bright = g.node(
        "Conv",
        "box",
        &["x", &box_w],
        &[("pads", Attr::Ints(vec![1, 1, 1, 1]))],
    );
    let c1 = g.conv("c1", "x", 3, 8, 3, 1, 1, true);
    let r1 = g.relu("r1", &c1);
    let c2 = g.conv("c2", &r1, 8, 16, 3, 2, 1, true);
    let r2 = g.relu("r2", &c2);
    let up = g.conv_transpose("up", &r2, 16, 8, 2);
    let r3 = g.relu("r3", &up);
    let c3 = g.conv("c3", &r3, 8, 1, 3, 1, 1, true);
    let k = g.initializer(f32_tensor("texture", &[1], &[0.05]));
    let tex = g.node("Mul", "tex", &[&c3, &k], &[]);
    let logit = g.node("Add", "logit", &[&bright, &tex], &[]);
    let p = g.node("Sigmoid", "prob", &[&logit], &[]);
    let sq = g.node("Squeeze", "sq", &[&p], &[("axes", Attr::Ints(vec![1]))]);
    g.node("Unsqueeze", "y", &[&sq], &[("axes", Attr::Ints(vec![1]))]);
    let mut m = g.finish(
        "detector",
        vec![f32_value_info("x", &dyn_dims(3))],
        vec![f32_value_info("y", &dyn_dims(1))],
        &[],
    );
    m.opset_import[0].version = Some(12);
    m
}

/// A "page" for [`detector`]: bright bars (text lines) on a darker noisy background, as
/// 3 x `h` x `w` values in CHW order (`h` and `w` even, at least 8).
pub fn page_pixels(h: usize, w: usize, seed: u64) -> Vec<f32> {
    let mut r = SeededRng::new(seed);
    let mut v = vec![0f32; 3 * h * w];
    for x in v.iter_mut() {
        *x = -0.6 + 0.1 * r.normal() as f32;
    }
    let mut y = 2 + (r.uniform() * 4.0) as usize;
    while y + 3 < h {
        let len = (w as f64 * (0.3 + 0.6 * r.uniform())) as usize;
        let x0 = (r.uniform() * (w - len) as f64) as usize;
        let thick = 2 + (r.uniform() * 3.0) as usize;
        for c in 0..3 {
            for yy in y..(y + thick).min(h) {
                for xx in x0..x0 + len {
                    v[(c * h + yy) * w + xx] = 0.8 + 0.1 * r.normal() as f32;
                }
            }
        }
        y += thick + 3 + (r.uniform() * 6.0) as usize;
    }
    v
}

/// Page sizes (height, width) the tests mix.
pub const PAGE_SIZES: [(usize, usize); 4] = [(32, 48), (48, 64), (64, 64), (40, 56)];

/// The names of [`two_input_classifier`]'s inputs: an image and a clinical vector (the colon
/// is deliberate: exported models name inputs so, and files must still find them).
pub const TWO_INPUTS: [&str; 2] = ["image", "clinical:0"];

/// A classifier with two inputs, as multimodal medical models are: an image (n x 1 x 32 x 32)
/// through two convolutions and global pooling, a clinical vector (n x 3: age in decades, sex,
/// a lab value) through a linear layer, concatenated into a linear head of 4 logits. Seeded
/// weights; batch dynamic.
pub fn two_input_classifier() -> ModelProto {
    let mut g = GraphBuilder::new(11);
    let c1 = g.conv("c1", TWO_INPUTS[0], 1, 8, 3, 1, 1, true);
    let r1 = g.relu("r1", &c1);
    let c2 = g.conv("c2", &r1, 8, 16, 3, 2, 1, true);
    let r2 = g.relu("r2", &c2);
    let img = g.global_pool_flatten("gp", &r2);
    let m1 = g.linear("clin", TWO_INPUTS[1], 3, 8);
    let m2 = g.relu("clin_relu", &m1);
    let cat = g.node("Concat", "cat", &[&img, &m2], &[("axis", Attr::Int(1))]);
    g.linear("head", &cat, 24, 4);
    let n = || DimSpec::Named("n".into());
    g.finish(
        "two_input_classifier",
        vec![
            f32_value_info(
                TWO_INPUTS[0],
                &[
                    n(),
                    DimSpec::Fixed(1),
                    DimSpec::Fixed(32),
                    DimSpec::Fixed(32),
                ],
            ),
            f32_value_info(TWO_INPUTS[1], &[n(), DimSpec::Fixed(3)]),
        ],
        vec![f32_value_info("head", &[n(), DimSpec::Fixed(4)])],
        &[],
    )
}

/// One sample for [`two_input_classifier`]: a 32 x 32 image (a bright disc of random size and
/// place on noise) and a clinical vector (age 2-9 decades, sex 0 / 1, a lab value ~ N(1, 0.3)).
pub fn two_input_sample(seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut r = SeededRng::new(seed);
    let (cy, cx) = (8.0 + 16.0 * r.uniform(), 8.0 + 16.0 * r.uniform());
    let rad = 3.0 + 6.0 * r.uniform();
    let mut img = vec![0f32; 32 * 32];
    for (i, v) in img.iter_mut().enumerate() {
        let (y, x) = ((i / 32) as f64, (i % 32) as f64);
        let inside = (y - cy).hypot(x - cx) < rad;
        *v = (if inside { 1.0 } else { 0.0 } + 0.1 * r.normal()) as f32;
    }
    let clinical = vec![
        (2.0 + 7.0 * r.uniform()) as f32,
        if r.uniform() < 0.5 { 0.0 } else { 1.0 },
        (1.0 + 0.3 * r.normal()) as f32,
    ];
    (img, clinical)
}

/// A small 3-D U-Net laid out channels-last as TensorFlow exports are: input and output
/// `n x 16 x 16 x 16 x 1` (NDHWC), a Transpose to channels-first, two 3-D convolutions, 3-D max
/// pooling, a 3-D transposed convolution (no activation after it, as in deepbrain's model),
/// a skip Concat, a 1x1x1 head with a sigmoid and a Transpose back. Seeded weights.
pub fn unet3d_channels_last() -> ModelProto {
    unet3d(Layout3d::ChannelsLast)
}

/// [`unet3d_channels_last`] without its outer Transposes, as PyTorch / MONAI models are: input
/// and output `n x 1 x 16 x 16 x 16` (NCDHW). Same weights.
pub fn unet3d_channels_first() -> ModelProto {
    unet3d(Layout3d::ChannelsFirst)
}

/// [`unet3d_channels_last`] as a converter that keeps TensorFlow's layout op by op writes it:
/// every convolution and pooling wrapped in its own pair of Transposes (to channels-first and
/// back), the activations, the skip Concat (axis 4) and the sigmoid computed channels-last.
/// Same weights, so the same outputs; `optimize` should remove all but the outer Transposes.
pub fn unet3d_transpose_wrapped() -> ModelProto {
    unet3d(Layout3d::Wrapped)
}

#[derive(Clone, Copy, PartialEq)]
enum Layout3d {
    ChannelsFirst,
    ChannelsLast,
    Wrapped,
}

fn unet3d(layout: Layout3d) -> ModelProto {
    let wrapped = layout == Layout3d::Wrapped;
    let mut g = GraphBuilder::new(23);
    let mut r = SeededRng::new(29);
    let mut count = 0;
    // Runs `op` channels-first: when `wrapped`, its input comes channels-last and its output
    // goes back to channels-last.
    let mut cf =
        |g: &mut GraphBuilder, x: &str, op: &mut dyn FnMut(&mut GraphBuilder, &str) -> String| {
            if !wrapped {
                return op(g, x);
            }
            count += 1;
            let t = g.node(
                "Transpose",
                &format!("t_in{count}"),
                &[x],
                &[("perm", Attr::Ints(vec![0, 4, 1, 2, 3]))],
            );
            let y = op(g, &t);
            g.node(
                "Transpose",
                &format!("t_out{count}"),
                &[&y],
                &[("perm", Attr::Ints(vec![0, 2, 3, 4, 1]))],
            )
        };
    let mut conv3d =
        |g: &mut GraphBuilder, name: &str, x: &str, cin: usize, cout: usize, k: usize| {
            let std = (2.0 / (cin * k * k * k) as f64).sqrt();
            let w: Vec<f32> = (0..cout * cin * k * k * k)
                .map(|_| (r.normal() * std) as f32)
                .collect();
            let b: Vec<f32> = (0..cout).map(|_| (0.05 * r.normal()) as f32).collect();
            let wn = g.initializer(f32_tensor(
                &format!("{name}.weight"),
                &[cout, cin, k, k, k],
                &w,
            ));
            let bn = g.initializer(f32_tensor(&format!("{name}.bias"), &[cout], &b));
            let p = (k / 2) as i64;
            g.node(
                "Conv",
                name,
                &[x, &wn, &bn],
                &[
                    ("kernel_shape", Attr::Ints(vec![k as i64; 3])),
                    ("pads", Attr::Ints(vec![p; 6])),
                ],
            )
        };
    let x = if layout == Layout3d::ChannelsLast {
        g.node(
            "Transpose",
            "to_ncdhw",
            &["x"],
            &[("perm", Attr::Ints(vec![0, 4, 1, 2, 3]))],
        )
    } else {
        "x".to_string()
    };
    let c1 = cf(&mut g, &x, &mut |g, x| conv3d(g, "c1", x, 1, 4, 3));
    let r1 = g.relu("r1", &c1);
    let p1 = cf(&mut g, &r1, &mut |g, x| {
        g.node(
            "MaxPool",
            "p1",
            &[x],
            &[
                ("kernel_shape", Attr::Ints(vec![2, 2, 2])),
                ("strides", Attr::Ints(vec![2, 2, 2])),
            ],
        )
    });
    let c2 = cf(&mut g, &p1, &mut |g, x| conv3d(g, "c2", x, 4, 8, 3));
    let r2 = g.relu("r2", &c2);
    let mut rt = SeededRng::new(31);
    let wt: Vec<f32> = (0..8 * 4 * 8)
        .map(|_| (0.25 * rt.normal()) as f32)
        .collect();
    let wtn = g.initializer(f32_tensor("up.weight", &[8, 4, 2, 2, 2], &wt));
    let btn = g.initializer(f32_tensor("up.bias", &[4], &[0.0; 4]));
    let up = cf(&mut g, &r2, &mut |g, x| {
        g.node(
            "ConvTranspose",
            "up",
            &[x, &wtn, &btn],
            &[
                ("kernel_shape", Attr::Ints(vec![2, 2, 2])),
                ("strides", Attr::Ints(vec![2, 2, 2])),
            ],
        )
    });
    let axis = if wrapped { 4 } else { 1 };
    let cat = g.node("Concat", "cat", &[&up, &r1], &[("axis", Attr::Int(axis))]);
    let c3 = cf(&mut g, &cat, &mut |g, x| conv3d(g, "c3", x, 8, 4, 3));
    let r3 = g.relu("r3", &c3);
    let head = cf(&mut g, &r3, &mut |g, x| conv3d(g, "head", x, 4, 1, 1));
    if layout == Layout3d::ChannelsLast {
        let prob = g.node("Sigmoid", "prob", &[&head], &[]);
        g.node(
            "Transpose",
            "y",
            &[&prob],
            &[("perm", Attr::Ints(vec![0, 2, 3, 4, 1]))],
        );
    } else {
        g.node("Sigmoid", "y", &[&head], &[]);
    }
    let dims = || {
        let mut d = vec![DimSpec::Named("n".into())];
        if layout == Layout3d::ChannelsFirst {
            d.push(DimSpec::Fixed(1));
        }
        d.extend([DimSpec::Fixed(16), DimSpec::Fixed(16), DimSpec::Fixed(16)]);
        if layout != Layout3d::ChannelsFirst {
            d.push(DimSpec::Fixed(1));
        }
        d
    };
    g.finish(
        "unet3d_channels_last",
        vec![f32_value_info("x", &dims())],
        vec![f32_value_info("y", &dims())],
        &[],
    )
}

/// A 3-D segmenter with a known answer: one 3 x 3 x 3 convolution (zero padding) giving two
/// logits, background `-20 (m - 0.5)` and foreground `20 (m - 0.5)` with `m` the local mean of
/// the input; after softmax, foreground wherever that mean passes 0.5. Input `(n, 1, d0, d1,
/// d2)` and output `(n, 2, d0, d1, d2)` with every dimension but the channels dynamic, as
/// exported segmentation networks usually are (the sliding window fixes them).
pub fn mean_threshold_segmenter_3d() -> ModelProto {
    let mut g = GraphBuilder::new(17);
    let k = 20.0f32 / 27.0;
    let mut w = vec![-k; 27];
    w.extend(vec![k; 27]);
    let wn = g.initializer(f32_tensor("seg.weight", &[2, 1, 3, 3, 3], &w));
    let bn = g.initializer(f32_tensor("seg.bias", &[2], &[10.0, -10.0]));
    g.node(
        "Conv",
        "y",
        &["x", &wn, &bn],
        &[
            ("kernel_shape", Attr::Ints(vec![3; 3])),
            ("pads", Attr::Ints(vec![1; 6])),
        ],
    );
    let dims = |c: usize| {
        vec![
            DimSpec::Named("n".into()),
            DimSpec::Fixed(c),
            DimSpec::Named("d0".into()),
            DimSpec::Named("d1".into()),
            DimSpec::Named("d2".into()),
        ]
    };
    g.finish(
        "mean_threshold_segmenter_3d",
        vec![f32_value_info("x", &dims(1))],
        vec![f32_value_info("y", &dims(2))],
        &[],
    )
}

/// A head-like volume for [`unet3d_channels_last`]: a bright ellipsoid ("brain") inside a
/// thinner bright shell ("skull") on noise, 16^3 values (NDHWC with C = 1, batch excluded).
pub fn head_volume(seed: u64) -> Vec<f32> {
    let mut r = SeededRng::new(seed);
    let c = [7.5 + r.normal(), 7.5 + r.normal(), 7.5 + r.normal()];
    let rad = [
        4.0 + r.uniform() * 2.0,
        4.0 + r.uniform() * 2.0,
        3.5 + r.uniform() * 2.0,
    ];
    let mut v = vec![0f32; 16 * 16 * 16];
    for (i, x) in v.iter_mut().enumerate() {
        let p = [(i / 256) as f64, (i / 16 % 16) as f64, (i % 16) as f64];
        let d = (0..3)
            .map(|k| ((p[k] - c[k]) / rad[k]).powi(2))
            .sum::<f64>()
            .sqrt();
        let base = if d < 1.0 {
            0.6
        } else if d < 1.35 {
            1.0
        } else {
            0.0
        };
        *x = (base + 0.05 * r.normal()) as f32;
    }
    v
}
