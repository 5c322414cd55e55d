#!/usr/bin/env python3
"""Lays out the labelled photos behind the measured defaults (`gallery.match_threshold`, the
`[gbds]` quality bars), one folder per person, for `camgate gallery calibrate --pairs DIR` and
`camgate bench quality --pairs DIR`. Not used by CI.

Sources (registries only): the test photos of PyPI `face-recognition==1.3.0` (six of Obama, one
of Biden), `Tom_Hanks_54745.png` and the group photo `t1.jpg` of PyPI `insightface==0.7.3`, and
the six `demo/sample*.jpg` of npm `@vladmandic/face-api@1.7.15`. Every face of at least 40 px of
the group photos is cropped (its box plus 60 % on each side) into a file of its own; the crops
are labelled by joining any two whose embeddings score at least 0.52. That reproduces the labels
checked by eye when the threshold was measured (same-person pairs scored 0.562 and up, different
people at most 0.482), and no cluster may join two named people.

Needs a release build, Pillow and numpy (`pip install pillow numpy`), and network access to PyPI
and npm. Usage: python3 models/study_photos.py OUT_DIR [target/release/camgate]
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THRESHOLD = 0.52
MIN_FACE = 40


def sdist(work, name, filename):
    index = f"https://pypi.org/simple/{name}/"
    html = urllib.request.urlopen(index).read().decode()
    href = re.search(r'href="([^"]*' + re.escape(filename) + r'[^"]*)"', html).group(1)
    path = os.path.join(work, filename)
    urllib.request.urlretrieve(urllib.parse.urljoin(index, href), path)
    with tarfile.open(path) as t:
        t.extractall(work, filter="data")


def npm(work, spec):
    out = subprocess.run(["npm", "pack", spec], cwd=work, check=True, capture_output=True, text=True)
    with tarfile.open(os.path.join(work, out.stdout.strip().splitlines()[-1])) as t:
        t.extractall(work, filter="data")


def face(binary, verb, path):
    out = subprocess.run(
        [binary, "face", verb, "--models", os.path.join(ROOT, "models"), "--variant", "f16", path],
        capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def main():
    out, binary = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "target/release/camgate"))
    work = tempfile.mkdtemp()
    sdist(work, "face-recognition", "face_recognition-1.3.0.tar.gz")
    sdist(work, "insightface", "insightface-0.7.3.tar.gz")
    npm(work, "@vladmandic/face-api@1.7.15")
    fr = os.path.join(work, "face_recognition-1.3.0/tests/test_images")
    named = {os.path.join(fr, n): "obama" for n in [
        "obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg", "32bit.png"]}
    named[os.path.join(fr, "biden.jpg")] = "biden"
    images = os.path.join(work, "insightface-0.7.3/insightface/data/images")
    named[os.path.join(images, "Tom_Hanks_54745.png")] = "tom_hanks"
    groups = [os.path.join(images, "t1.jpg")] + [os.path.join(work, f"package/demo/sample{i}.jpg") for i in range(1, 7)]
    crops = os.path.join(work, "crops")
    os.makedirs(crops)
    items = list(named.items())
    for g in groups:
        im = Image.open(g).convert("RGB")
        stem = os.path.splitext(os.path.basename(g))[0]
        for k, f in enumerate(face(binary, "detect", g)[0]["faces"]):
            x1, y1, x2, y2 = f["bbox"]
            if min(x2 - x1, y2 - y1) < MIN_FACE:
                continue
            m = 0.6 * max(x2 - x1, y2 - y1)
            box = (max(0, int(x1 - m)), max(0, int(y1 - m)), min(im.width, int(x2 + m)), min(im.height, int(y2 + m)))
            path = os.path.join(crops, f"{stem}_{k}.png")
            im.crop(box).save(path)
            items.append((path, None))
    kept, embs = [], []
    for path, who in items:
        e = face(binary, "embed", path)
        if not e or not e["faces"]:
            print(f"{os.path.basename(path)}: no face in the crop; left out")
            continue
        kept.append((path, who))
        embs.append(np.array(e["faces"][0]["embedding"], dtype=np.float32))
    parent = list(range(len(kept)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            if float(embs[i] @ embs[j]) >= THRESHOLD:
                parent[root(i)] = root(j)
    clusters = {}
    for i in range(len(kept)):
        clusters.setdefault(root(i), []).append(i)
    shutil.rmtree(out, ignore_errors=True)
    for n, members in enumerate(sorted(clusters.values())):
        names = {kept[i][1] for i in members if kept[i][1]}
        if len(names) > 1:
            sys.exit(f"a cluster joins {sorted(names)}: the labels cannot be trusted")
        person = names.pop() if names else f"person{n:02d}"
        os.makedirs(os.path.join(out, person), exist_ok=True)
        for i in members:
            shutil.copy(kept[i][0], os.path.join(out, person))
    print(f"{len(kept)} faces of {len(clusters)} people in {out}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
