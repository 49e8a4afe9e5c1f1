//! EfficientNet-Lite as an ONNX graph, built from a PyTorch state dict.
//!
//! The layer layout (channels, kernel sizes, which blocks expand) is read from the
//! weights themselves; only what weights cannot tell is fixed here: the stage
//! strides of the EfficientNet family and the conventions of the TF-ported Lite
//! weights — static TF "same" padding (asymmetric on stride 2), BatchNorm
//! epsilon 1e-3 and ReLU6. BatchNorm is folded into the convolutions.

use anyhow::{bail, ensure, Result};
use prost::Message;

use super::onnx_proto::*;
use super::quantize::{Calibration, Int8Weights};
use super::weights::Checkpoint;
use crate::learn::head::Dense;
use crate::learn::trunk::{BlockShape, Trunk};

const BATCH_NORM_EPSILON: f32 = 1e-3;
/// Stride of the first block of each of the seven EfficientNet stages.
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];
const ONNX_OPSET: i64 = 13;
const ONNX_IR_VERSION: i64 = 8;
pub const INPUT_NAME: &str = "input";
pub const FEATURES_NAME: &str = "features";
pub const LOGITS_NAME: &str = "logits";
/// The activation entering a chosen block (NCHW), output when the graph is built with a tap.
pub const BLOCK_INPUT_NAME: &str = "block_input";
/// Int8 graphs keep the stem and the first block in float: their activations (few channels with
/// wide, uneven ranges) caused most of the int8 features' error — on 200 clothing test photos
/// (Lite1, ONNX Runtime's own quantizer) the worst cosine to fp32 rose from 0.926 to 0.990 with
/// them in float — for ~4 % of the multiply-adds.
pub const FIRST_INT8_BLOCK: usize = 1;

/// A convolution with BatchNorm folded in.
struct Conv {
    weight: Vec<f32>,
    shape: [usize; 4],
    bias: Vec<f32>,
    stride: usize,
    groups: usize,
    /// ONNX order: top, left, bottom, right.
    pads: [usize; 4],
}

struct Block {
    expand: Option<Conv>,
    depthwise: Conv,
    project: Conv,
    residual: bool,
    input_side: usize,
    output_side: usize,
}

/// The network as read from a checkpoint, ready to be written as ONNX.
pub struct EfficientNetLite {
    input_size: usize,
    stem: Conv,
    blocks: Vec<Block>,
    head: Conv,
    classifier: Option<(Vec<f32>, Vec<f32>)>,
    pub feature_dim: usize,
    pub num_classes: usize,
}

/// TF "same" padding for a fixed input size: returns (before, after, output size).
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
    let output = input.div_ceil(stride);
    let total = ((output - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2, output)
}

fn folded_conv(
    ckpt: &Checkpoint,
    conv: &str,
    bn: &str,
    stride: usize,
    depthwise: bool,
    input_size: usize,
) -> Result<(Conv, usize)> {
    let w = ckpt.get(&format!("{conv}.weight"))?;
    ensure!(w.shape.len() == 4, "{conv}.weight is not 4-d: {:?}", w.shape);
    let shape = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
    let gamma = &ckpt.get(&format!("{bn}.weight"))?.data;
    let beta = &ckpt.get(&format!("{bn}.bias"))?.data;
    let mean = &ckpt.get(&format!("{bn}.running_mean"))?.data;
    let var = &ckpt.get(&format!("{bn}.running_var"))?.data;
    let out_channels = shape[0];
    ensure!(
        gamma.len() == out_channels,
        "{bn} has {} channels, {conv} has {out_channels}",
        gamma.len()
    );
    let per_channel = w.data.len() / out_channels;
    let mut weight = w.data.clone();
    let mut bias = vec![0.0; out_channels];
    for c in 0..out_channels {
        let scale = gamma[c] / (var[c] + BATCH_NORM_EPSILON).sqrt();
        weight[c * per_channel..(c + 1) * per_channel]
            .iter_mut()
            .for_each(|x| *x *= scale);
        bias[c] = beta[c] - mean[c] * scale;
    }
    let (before, after, output) = same_padding(input_size, shape[2], stride);
    let (left, right, _) = same_padding(input_size, shape[3], stride);
    let groups = if depthwise { out_channels } else { 1 };
    Ok((
        Conv {
            weight,
            shape,
            bias,
            stride,
            groups,
            pads: [before, left, after, right],
        },
        output,
    ))
}

impl Block {
    fn input_channels(&self) -> usize {
        self.expand.as_ref().map_or(self.depthwise.shape[0], |e| e.shape[1])
    }
}

impl EfficientNetLite {
    /// Reads the lukemelas/`efficientnet_lite_pytorch` naming (`_conv_stem`, `_blocks.N`, `_conv_head`, `_fc`).
    pub fn from_checkpoint(ckpt: &Checkpoint, input_size: usize) -> Result<Self> {
        let (stem, mut size) = folded_conv(ckpt, "_conv_stem", "_bn0", 2, false, input_size)?;
        let mut blocks = Vec::new();
        let mut stage = 0usize;
        let mut in_channels = stem.shape[0];
        while ckpt.contains(&format!("_blocks.{}._depthwise_conv.weight", blocks.len())) {
            let p = format!("_blocks.{}", blocks.len());
            let out_channels = ckpt.get(&format!("{p}._project_conv.weight"))?.shape[0];
            // Within a stage channels stay the same; every stage starts by changing them.
            let stride = if in_channels != out_channels || blocks.is_empty() {
                let Some(&s) = STAGE_STRIDES.get(stage) else {
                    bail!("checkpoint has more than {} stages", STAGE_STRIDES.len());
                };
                stage += 1;
                s
            } else {
                1
            };
            let expand = if ckpt.contains(&format!("{p}._expand_conv.weight")) {
                Some(folded_conv(ckpt, &format!("{p}._expand_conv"), &format!("{p}._bn0"), 1, false, size)?.0)
            } else {
                None
            };
            let (depthwise, out_size) = folded_conv(
                ckpt,
                &format!("{p}._depthwise_conv"),
                &format!("{p}._bn1"),
                stride,
                true,
                size,
            )?;
            let (project, _) = folded_conv(
                ckpt,
                &format!("{p}._project_conv"),
                &format!("{p}._bn2"),
                1,
                false,
                out_size,
            )?;
            ensure!(
                project.shape[1] == depthwise.shape[0],
                "{p}: projection expects {} channels, depthwise gives {}",
                project.shape[1],
                depthwise.shape[0]
            );
            blocks.push(Block {
                expand,
                depthwise,
                project,
                residual: stride == 1 && in_channels == out_channels,
                input_side: size,
                output_side: out_size,
            });
            in_channels = out_channels;
            size = out_size;
        }
        ensure!(
            stage == STAGE_STRIDES.len(),
            "checkpoint has {stage} stages, EfficientNet has {}",
            STAGE_STRIDES.len()
        );
        let (head, _) = folded_conv(ckpt, "_conv_head", "_bn1", 1, false, size)?;
        let feature_dim = head.shape[0];
        let classifier = if ckpt.contains("_fc.weight") {
            let w = ckpt.get("_fc.weight")?;
            ensure!(
                w.shape.len() == 2 && w.shape[1] == feature_dim,
                "_fc.weight has shape {:?}",
                w.shape
            );
            Some((w.data.clone(), ckpt.get("_fc.bias")?.data.clone()))
        } else {
            None
        };
        let num_classes = classifier.as_ref().map_or(0, |(_, b)| b.len());
        Ok(Self {
            input_size,
            stem,
            blocks,
            head,
            classifier,
            feature_dim,
            num_classes,
        })
    }

    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// The last `blocks` blocks and the head convolution with their pretrained (folded) weights,
    /// for fine-tuning in Rust; the graph built with `to_onnx(Some(trunk.first_block))` feeds it.
    pub fn trunk(&self, blocks: usize) -> Result<Trunk> {
        ensure!(
            (1..=self.blocks.len()).contains(&blocks),
            "the backbone has {} blocks; fine-tune between 1 and {} of them",
            self.blocks.len(),
            self.blocks.len()
        );
        let first_block = self.blocks.len() - blocks;
        let tail = &self.blocks[first_block..];
        let mut layers = Vec::new();
        let mut shapes = Vec::new();
        for block in tail {
            if let Some(expand) = &block.expand {
                layers.push(pointwise_as_dense(expand));
            }
            let dw = &block.depthwise;
            let (channels, taps) = (dw.shape[0], dw.shape[2] * dw.shape[3]);
            // [C,1,k,k] -> one row of C weights per tap.
            let weight = (0..taps * channels)
                .map(|i| dw.weight[(i % channels) * taps + i / channels])
                .collect();
            layers.push(Dense {
                input: taps,
                output: channels,
                weight,
                bias: dw.bias.clone(),
            });
            layers.push(pointwise_as_dense(&block.project));
            shapes.push(BlockShape {
                expand: block.expand.is_some(),
                kernel: dw.shape[2],
                stride: dw.stride,
                pads: dw.pads,
                residual: block.residual,
                input_side: block.input_side,
                output_side: block.output_side,
            });
        }
        layers.push(pointwise_as_dense(&self.head));
        let input_channels = tail[0].input_channels();
        let trunk = Trunk {
            first_block,
            input_channels,
            blocks: shapes,
            layers,
        };
        trunk.check()?;
        Ok(trunk)
    }

    /// Serialised ONNX model with a dynamic batch: `input` [N,3,S,S] -> `features` [N,D] (+ `logits` [N,C]);
    /// see [`GraphOptions`] for what else it can output and how it can be quantized.
    pub fn to_onnx(&self, options: &GraphOptions) -> Result<Vec<u8>> {
        let mut g = GraphBuilder {
            calibration: options.int8,
            int8_weights: options.int8_weights,
            expose_activations: options.expose_activations,
            ..GraphBuilder::default()
        };
        g.scalar("relu6_min", 0.0);
        g.scalar("relu6_max", 6.0);
        let input = Activation::float(INPUT_NAME);
        let mut x = Activation::float(&g.conv("stem", &input, &self.stem, true)?);
        let mut tap_output = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let block_input = x.clone();
            if options.tap == Some(i) {
                let c = block.input_channels() as i64;
                let side = block.input_side as i64;
                g.node_named("Identity", "tap", &[&x.name], BLOCK_INPUT_NAME, vec![]);
                tap_output = Some(value_info(BLOCK_INPUT_NAME, &[None, Some(c), Some(side), Some(side)]));
            }
            let int8 = i >= FIRST_INT8_BLOCK;
            if let Some(expand) = &block.expand {
                let out = g.conv(&format!("b{i}_expand"), &x, expand, true)?;
                x = g.activation(&out, int8)?;
            }
            let out = g.conv(&format!("b{i}_dw"), &x, &block.depthwise, true)?;
            x = g.activation(&out, int8)?;
            let out = g.conv(&format!("b{i}_project"), &x, &block.project, false)?;
            // The first quantized block reads the output of the last float one.
            x = g.activation(&out, i + 1 >= FIRST_INT8_BLOCK)?;
            if block.residual {
                let sum = g.node("Add", &format!("b{i}_add"), &[&block_input.name, &x.name], vec![]);
                x = g.activation(&sum, int8)?;
            }
        }
        let head = g.conv("head", &x, &self.head, true)?;
        let head = g.activation(&head, true)?.name;
        if options.tap == Some(self.blocks.len()) {
            g.node_named("Identity", "tap", &[&head], BLOCK_INPUT_NAME, vec![]);
            let channels = Some(self.feature_dim as i64);
            tap_output = Some(value_info(BLOCK_INPUT_NAME, &[None, channels, None, None]));
        }
        let pooled = g.node("GlobalAveragePool", "pool", &[&head], vec![]);
        g.node_named(
            "Flatten",
            "flatten",
            &[&pooled],
            FEATURES_NAME,
            vec![int_attr("axis", 1)],
        );
        let s = self.input_size as i64;
        let mut outputs = vec![value_info(FEATURES_NAME, &[None, Some(self.feature_dim as i64)])];
        if let Some((w, b)) = &self.classifier {
            g.initializer("fc_w", &[self.num_classes, self.feature_dim], w);
            g.initializer("fc_b", &[self.num_classes], b);
            g.node_named(
                "Gemm",
                "fc",
                &[FEATURES_NAME, "fc_w", "fc_b"],
                LOGITS_NAME,
                vec![int_attr("transB", 1)],
            );
            outputs.push(value_info(LOGITS_NAME, &[None, Some(self.num_classes as i64)]));
        }
        outputs.extend(tap_output);
        outputs.extend(g.exposed.iter().map(|name| unshaped_value_info(name)));
        let doc = match options.int8 {
            Some(c) => format!(
                "EfficientNet-Lite, BatchNorm folded, TF same padding, int8 QDQ ({})",
                c.id()
            ),
            None => "EfficientNet-Lite, BatchNorm folded, TF same padding".into(),
        };
        let model = ModelProto {
            ir_version: ONNX_IR_VERSION,
            producer_name: "lookalike".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc,
            graph: Some(GraphProto {
                node: g.nodes,
                name: "efficientnet_lite".into(),
                initializer: g.initializers,
                input: vec![value_info(INPUT_NAME, &[None, Some(3), Some(s), Some(s)])],
                output: outputs,
            }),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: ONNX_OPSET,
            }],
        };
        Ok(model.encode_to_vec())
    }
}

/// What a graph holds beside the features and logits.
#[derive(Default, Clone, Copy)]
pub struct GraphOptions<'a> {
    /// Also output the input of this block as `block_input`; the block count: the last feature
    /// map (the head's activation, before pooling).
    pub tap: Option<usize>,
    /// Int8 weights (per output channel) and activations quantized to the ranges measured here.
    pub int8: Option<&'a Calibration>,
    /// How many bits the int8 weights use.
    pub int8_weights: Int8Weights,
    /// Also output every activation an int8 graph quantizes, under its own name (to measure them).
    pub expose_activations: bool,
}

/// A tensor in the graph and, once quantized, the scale its values were rounded to.
#[derive(Clone)]
struct Activation {
    name: String,
    scale: Option<f32>,
}

impl Activation {
    fn float(name: &str) -> Self {
        Self {
            name: name.into(),
            scale: None,
        }
    }
}

/// A 1×1 convolution [out,in,1,1] as a dense layer over NHWC rows (input-major weight).
fn pointwise_as_dense(conv: &Conv) -> Dense {
    let (out, input) = (conv.shape[0], conv.shape[1]);
    Dense {
        input,
        output: out,
        weight: (0..input * out)
            .map(|i| conv.weight[(i % out) * input + i / out])
            .collect(),
        bias: conv.bias.clone(),
    }
}

#[derive(Default)]
struct GraphBuilder<'a> {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    calibration: Option<&'a Calibration>,
    int8_weights: Int8Weights,
    expose_activations: bool,
    exposed: Vec<String>,
}

impl GraphBuilder<'_> {
    fn initializer(&mut self, name: &str, dims: &[usize], data: &[f32]) {
        self.raw_initializer(
            name,
            dims,
            DATA_TYPE_FLOAT,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
    }

    fn raw_initializer(&mut self, name: &str, dims: &[usize], data_type: i32, raw_data: Vec<u8>) {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.into(),
            raw_data,
        });
    }

    fn scalar(&mut self, name: &str, value: f32) {
        self.initializer(name, &[], &[value]);
    }

    fn node_named(&mut self, op: &str, name: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: name.into(),
            op_type: op.into(),
            attribute,
        });
    }

    fn node(&mut self, op: &str, name: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        self.node_named(op, name, inputs, name, attribute);
        name.to_string()
    }

    /// `tensor` as the next layers read it: rounded to uint8 by a QuantizeLinear/DequantizeLinear
    /// pair when the graph is int8 and `quantize` holds (ONNX Runtime fuses such pairs around a
    /// convolution or addition into one integer kernel), else as it is.
    fn activation(&mut self, tensor: &str, quantize: bool) -> Result<Activation> {
        if self.expose_activations && quantize {
            self.exposed.push(tensor.into());
        }
        let Some(calibration) = self.calibration.filter(|_| quantize) else {
            return Ok(Activation::float(tensor));
        };
        let Some(&(low, high)) = calibration.ranges.get(tensor) else {
            bail!("the int8 calibration has no range for {tensor}");
        };
        let (scale, zero_point) = uint8_quantization(low, high);
        let (s, z) = (format!("{tensor}_scale"), format!("{tensor}_zero_point"));
        self.scalar(&s, scale);
        self.raw_initializer(&z, &[], DATA_TYPE_UINT8, vec![zero_point]);
        let q = self.node("QuantizeLinear", &format!("{tensor}_q"), &[tensor, &s, &z], vec![]);
        let dq = self.node("DequantizeLinear", &format!("{tensor}_dq"), &[&q, &s, &z], vec![]);
        Ok(Activation {
            name: dq,
            scale: Some(scale),
        })
    }

    /// A convolution (+ ReLU6); with int8 weights and an int32 bias when its input is quantized.
    fn conv(&mut self, name: &str, input: &Activation, conv: &Conv, relu6: bool) -> Result<String> {
        let (w, b) = (format!("{name}_w"), format!("{name}_b"));
        match input.scale {
            None => {
                self.initializer(&w, &conv.shape, &conv.weight);
                self.initializer(&b, &[conv.shape[0]], &conv.bias);
            }
            Some(input_scale) => {
                let channels = conv.shape[0];
                // Without VNNI, ONNX Runtime multiplies a dense convolution's uint8 activations by
                // int8 weights with AVX2's `pmaddubsw`, whose int16 sum of two products saturates
                // beyond ±32,767: full-range weights put the reference photos' features at cosine
                // 0.96 of fp32 there. Seven-bit weights cannot saturate (2 × 255 × 63); eight-bit
                // ones stay exact without VNNI only as uint8 around zero point 128, which ONNX
                // Runtime widens before multiplying (a third slower). Depthwise convolutions sum
                // in int32 and keep their eight bits as int8 everywhere.
                let dense = conv.groups == 1;
                let largest = match self.int8_weights {
                    Int8Weights::DenseSevenBit if dense => 63,
                    _ => 127,
                };
                let (weights, scales) = int8_per_channel(&conv.weight, channels, largest);
                let wq = format!("{w}_int8");
                let (data_type, codes, zero_point) = if dense && largest > 63 && !vnni() {
                    (
                        DATA_TYPE_UINT8,
                        weights.iter().map(|&v| (v as i16 + 128) as u8).collect(),
                        128,
                    )
                } else {
                    (DATA_TYPE_INT8, weights.iter().map(|&v| v as u8).collect(), 0)
                };
                self.raw_initializer(&wq, &conv.shape, data_type, codes);
                self.initializer(&format!("{w}_scale"), &[channels], &scales);
                self.raw_initializer(
                    &format!("{w}_zero_point"),
                    &[channels],
                    data_type,
                    vec![zero_point; channels],
                );
                self.dequantize_per_channel(&wq, &w);
                // ONNX Runtime's integer convolution takes the bias in int32 at input × weight scale.
                let bias_scales: Vec<f32> = scales.iter().map(|s| s * input_scale).collect();
                let bias: Vec<u8> = conv
                    .bias
                    .iter()
                    .zip(&bias_scales)
                    .flat_map(|(v, s)| ((v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32).to_le_bytes())
                    .collect();
                let bq = format!("{b}_int32");
                self.raw_initializer(&bq, &[channels], DATA_TYPE_INT32, bias);
                self.initializer(&format!("{b}_scale"), &[channels], &bias_scales);
                self.raw_initializer(
                    &format!("{b}_zero_point"),
                    &[channels],
                    DATA_TYPE_INT32,
                    vec![0; 4 * channels],
                );
                self.dequantize_per_channel(&bq, &b);
            }
        }
        let attrs = vec![
            ints_attr("kernel_shape", &[conv.shape[2], conv.shape[3]]),
            ints_attr("strides", &[conv.stride, conv.stride]),
            ints_attr("pads", &conv.pads),
            int_attr("group", conv.groups as i64),
        ];
        let out = self.node("Conv", name, &[&input.name, &w, &b], attrs);
        Ok(if relu6 {
            self.node(
                "Clip",
                &format!("{name}_relu6"),
                &[&out, "relu6_min", "relu6_max"],
                vec![],
            )
        } else {
            out
        })
    }

    /// `{quantized}` with its `_scale` and `_zero_point` per output channel, dequantized as `output`.
    fn dequantize_per_channel(&mut self, quantized: &str, output: &str) {
        let base = output.to_string();
        self.node_named(
            "DequantizeLinear",
            &format!("{base}_dq"),
            &[quantized, &format!("{base}_scale"), &format!("{base}_zero_point")],
            output,
            vec![int_attr("axis", 0)],
        );
    }
}

/// Asymmetric uint8 quantization of values in [low, high]: (scale, zero point). The range always
/// holds 0, so that zero padding and ReLU's zeros stay exact.
pub fn uint8_quantization(low: f32, high: f32) -> (f32, u8) {
    let (low, high) = (low.min(0.0), high.max(0.0));
    let scale = ((high - low) / 255.0).max(f32::MIN_POSITIVE);
    let zero_point = (-low / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zero_point)
}

/// Whether ONNX Runtime multiplies uint8 by int8 with VNNI (no int16 saturation).
pub(super) fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni") || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Symmetric int8 weights per output channel (range ±`largest`, at most 127): the weights and
/// each channel's scale.
pub fn int8_per_channel(weights: &[f32], channels: usize, largest: i8) -> (Vec<i8>, Vec<f32>) {
    let per_channel = weights.len() / channels;
    let top = f32::from(largest);
    let mut quantized = Vec::with_capacity(weights.len());
    let mut scales = Vec::with_capacity(channels);
    for channel in weights.chunks(per_channel) {
        let biggest = channel.iter().fold(0f32, |m, w| m.max(w.abs()));
        let scale = if biggest > 0.0 { biggest / top } else { 1.0 };
        quantized.extend(channel.iter().map(|w| (w / scale).round().clamp(-top, top) as i8));
        scales.push(scale);
    }
    (quantized, scales)
}

fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i: value,
        r#type: ATTRIBUTE_INT,
        ..Default::default()
    }
}

fn ints_attr(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.iter().map(|&v| v as i64).collect(),
        r#type: ATTRIBUTE_INTS,
        ..Default::default()
    }
}

/// A float output whose shape the runtime infers.
fn unshaped_value_info(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: DATA_TYPE_FLOAT,
                shape: None,
            }),
        }),
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => DimensionValue::DimValue(*v),
                None => DimensionValue::DimParam("batch".into()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: DATA_TYPE_FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::same_padding;

    #[test]
    fn tf_same_padding_is_asymmetric_on_stride_two() {
        assert_eq!(same_padding(224, 3, 2), (0, 1, 112));
        assert_eq!(same_padding(56, 5, 2), (1, 2, 28));
        assert_eq!(same_padding(14, 5, 1), (2, 2, 14));
        assert_eq!(same_padding(7, 1, 1), (0, 0, 7));
    }
}
