"""Reference runtimes for `lookalike bench embed`; prints one JSON object per line.

- onnxruntime: the Python API on the very ONNX graph lookalike runs.
- pytorch: eager PyTorch on an independent implementation of EfficientNet-Lite0
  (block table written out here, TF "same" padding, BatchNorm eps 1e-3, ReLU6),
  loading the original .pth with torch.load. Its output is checked against
  ONNX Runtime's so the speed comparison is between equal computations.
"""
import argparse
import json
import math
import statistics
import time

import numpy as np

# (kernel, stride) of the 16 MBConv blocks of EfficientNet-Lite0.
LITE0_BLOCKS = [(3, 1), (3, 2), (3, 1), (5, 2), (5, 1), (3, 2), (3, 1), (3, 1),
                (5, 1), (5, 1), (5, 1), (5, 2), (5, 1), (5, 1), (5, 1), (3, 1)]


def emit(**fields):
    print(json.dumps(fields), flush=True)


def timed(run, batch, seconds):
    run()
    rates, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(rates) < 3:
        t = time.perf_counter()
        run()
        rates.append(batch / (time.perf_counter() - t))
    return statistics.median(rates)


SIZE = 224  # the backbone's input side, set from --size


def inputs(batch):
    n = batch * 3 * SIZE * SIZE
    return (((np.arange(n, dtype=np.int64) * 7919 % 2001).astype(np.float32) / 1000.0) - 1.0).reshape(batch, 3, SIZE, SIZE)


def bench_onnxruntime(args, batches):
    try:
        import onnxruntime as ort
    except ImportError as e:
        emit(runtime="ONNX Runtime (Python)", error=f"not installed: {e}")
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.onnx, opts, providers=["CPUExecutionProvider"])
    for b in batches:
        x = inputs(b)
        rate = timed(lambda: session.run(["features"], {"input": x}), b, args.seconds)
        emit(runtime=f"ONNX Runtime {ort.__version__} (Python)", batch=b, images_per_second=rate)
    return session


def torch_network(weights):
    import torch
    import torch.nn.functional as F

    sd = torch.load(weights, map_location="cpu")

    def same(x, k, s):
        size = x.shape[-1]
        out = math.ceil(size / s)
        pad = max((out - 1) * s + k - size, 0)
        return F.pad(x, [pad // 2, pad - pad // 2, pad // 2, pad - pad // 2])

    def conv_bn(x, conv, bn, stride=1, groups=1, act=True):
        w = sd[conv + ".weight"]
        x = F.conv2d(same(x, w.shape[-1], stride), w, None, stride, 0, 1, groups)
        x = F.batch_norm(x, sd[bn + ".running_mean"], sd[bn + ".running_var"], sd[bn + ".weight"], sd[bn + ".bias"],
                         False, 0.0, 1e-3)
        return F.relu6(x) if act else x

    def forward(x):
        x = conv_bn(x, "_conv_stem", "_bn0", 2)
        for i, (k, s) in enumerate(LITE0_BLOCKS):
            p = f"_blocks.{i}"
            inp = x
            if p + "._expand_conv.weight" in sd:
                x = conv_bn(x, p + "._expand_conv", p + "._bn0")
            x = conv_bn(x, p + "._depthwise_conv", p + "._bn1", s, groups=x.shape[1])
            x = conv_bn(x, p + "._project_conv", p + "._bn2", act=False)
            if s == 1 and inp.shape == x.shape:
                x = x + inp
        x = conv_bn(x, "_conv_head", "_bn1")
        return x.mean(dim=(2, 3))

    return forward


def bench_pytorch(args, batches, ort_session):
    try:
        import torch
    except ImportError as e:
        emit(runtime="PyTorch eager", error=f"not installed: {e}")
        return
    if SIZE != 224:
        emit(runtime="PyTorch eager", error="the PyTorch reference implements Lite0 only")
        return
    torch.set_num_threads(args.threads)
    forward = torch_network(args.weights)
    with torch.inference_mode():
        if ort_session is not None:
            x = inputs(2)
            diff = float(np.abs(forward(torch.from_numpy(x)).numpy() - ort_session.run(["features"], {"input": x})[0]).max())
            if diff > 1e-3:
                emit(runtime="PyTorch eager", error=f"disagrees with ONNX Runtime by {diff}")
                return
        for b in batches:
            x = torch.from_numpy(inputs(b))
            rate = timed(lambda: forward(x), b, args.seconds)
            emit(runtime=f"PyTorch {torch.__version__} eager", batch=b, images_per_second=rate)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    global SIZE
    SIZE = args.size
    batches = [int(b) for b in args.batches.split(",")]
    session = bench_onnxruntime(args, batches)
    bench_pytorch(args, batches, session)


if __name__ == "__main__":
    main()
