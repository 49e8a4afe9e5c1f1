"""An independent EfficientNet-Lite forward pass in numpy, to pin lookalike's Lite1 and Lite2
features (tests/reference.rs) as PyTorch pins Lite0's. Shares no code with lookalike: it reads the
legacy PyTorch pickle itself (strided views gathered with numpy), finds each block's kernel from its
weights and its stride from where the channel count changes, and computes in float64.

    python3 -m venv .venv-ref && .venv-ref/bin/pip install numpy
    .venv-ref/bin/python scripts/numpy_reference.py models/efficientnet-lite2-9656183e.pth 260 OUT_PREFIX

writes OUT_PREFIX-features.npy [2, 1280] and OUT_PREFIX-logits.npy [2, 1000] for two deterministic
inputs (`inputs()` below; the Rust test builds the same ones).
"""
import collections
import pickle
import struct
import sys

import numpy as np

DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
          "LongStorage": np.int64, "IntStorage": np.int32}


class Storage:
    def __init__(self, dtype):
        self.dtype, self.data = dtype, None


class Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)

    def array(self):
        base = self.storage.data
        size = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=self.shape, strides=tuple(s * size for s in self.stride))
        return np.array(view, dtype=np.float64)


class Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda storage, offset, shape, stride, *rest: Tensor(storage, offset, shape, stride)
        if module == "torch" and name in DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key = pid[0], pid[1], pid[2]
        assert kind == "storage", pid
        if key not in self.storages:
            self.storages[key] = Storage(DTYPES[storage_type])
        return self.storages[key]


def load_legacy(path):
    storages = {}
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(f)
        state = Unpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            storage = storages[key]
            storage.data = np.frombuffer(f.read(count * np.dtype(storage.dtype).itemsize), dtype=storage.dtype)
    return {name: t.array() for name, t in state.items() if isinstance(t, Tensor) and t.storage.dtype != np.int64}


def same_pad(x, kernel, stride):
    size = x.shape[-1]
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    return np.pad(x, ((0, 0), (0, 0), (before, total - before), (before, total - before))), out


def conv(x, w, stride=1, depthwise=False):
    k = w.shape[-1]
    if k == 1 and stride == 1:
        return np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0])
    padded, out = same_pad(x, k, stride)
    result = np.zeros((x.shape[0], w.shape[0], out, out))
    for dy in range(k):
        for dx in range(k):
            window = padded[:, :, dy:dy + stride * out:stride, dx:dx + stride * out:stride]
            if depthwise:
                result += window * w[None, :, 0, dy, dx, None, None]
            else:
                result += np.einsum("nchw,oc->nohw", window, w[:, :, dy, dx])
    return result


def bn(x, s, prefix, relu6=True):
    scale = s[prefix + ".weight"] / np.sqrt(s[prefix + ".running_var"] + 1e-3)
    y = (x - s[prefix + ".running_mean"][None, :, None, None]) * scale[None, :, None, None] \
        + s[prefix + ".bias"][None, :, None, None]
    return np.clip(y, 0, 6) if relu6 else y


def forward(s, x):
    x = bn(conv(x, s["_conv_stem.weight"], 2), s, "_bn0")
    blocks = sorted({int(k.split(".")[1]) for k in s if k.startswith("_blocks.")})
    stage = -1
    for i in blocks:
        p = f"_blocks.{i}"
        project = s[p + "._project_conv.weight"]
        channels_in = s[p + "._depthwise_conv.weight"].shape[0]
        if p + "._expand_conv.weight" in s:
            channels_in = s[p + "._expand_conv.weight"].shape[1]
        first_of_stage = channels_in != project.shape[0]
        stage += first_of_stage
        # EfficientNet halves the resolution entering stages 1, 2, 3 and 5.
        stride = 2 if first_of_stage and stage in (1, 2, 3, 5) else 1
        h = x
        if p + "._expand_conv.weight" in s:
            h = bn(conv(h, s[p + "._expand_conv.weight"]), s, p + "._bn0")
        h = bn(conv(h, s[p + "._depthwise_conv.weight"], stride, depthwise=True), s, p + "._bn1")
        h = bn(conv(h, project), s, p + "._bn2", relu6=False)
        x = x + h if not first_of_stage and stride == 1 else h
    x = bn(conv(x, s["_conv_head.weight"]), s, "_bn1")
    features = x.mean(axis=(2, 3))
    logits = features @ s["_fc.weight"].T + s["_fc.bias"]
    return features, logits


def inputs(batch, size):
    n = batch * 3 * size * size
    return (((np.arange(n, dtype=np.int64) * 7919 % 2001) / 1000.0) - 1.0).reshape(batch, 3, size, size)


def main():
    weights, size, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    state = load_legacy(weights)
    features, logits = forward(state, inputs(2, size))
    np.save(prefix + "-features.npy", features.astype(np.float32))
    np.save(prefix + "-logits.npy", logits.astype(np.float32))
    print(f"{len(state)} tensors; features {features.shape}, mean {features.mean():.5f}")


if __name__ == "__main__":
    main()
