"""Where the shipped segmenter's mask and the former one's (cv2.grabCut at 384 px) disagree, and
how far the former itself moves with its iteration count.

Issue 12 compares the block cut's masks with the former segmenter at 5 iterations. On a photo
where that reference still changes between its 4th and 5th iteration, the comparison measures
the reference's motion as much as ours; this prints, per photo, the shipped mask's IoU with the
former at 3-10 iterations, the pixels only one of the two keeps, and saves an image of the
pixels only the shipped mask keeps (green) and only the former keeps (magenta), against the
former at 5 iterations (bench/results/mask_agreement_<photo>.jpg).

    python -m bench.bench_mask_agreement [--out bench/results/mask_agreement.txt]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.bench_embedded_stages import PROMPTS  # noqa: E402
from deployments.segmenter.grabcut import GrabCutSegmenter  # noqa: E402
from tests.photos import photo_array  # noqa: E402
from tests.support.grabcut_reference import former_grabcut, iou  # noqa: E402

ITERATIONS = (3, 4, 5, 6, 8, 10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/mask_agreement.txt")
    a = ap.parse_args()
    seg = GrabCutSegmenter()
    lines = ["# the shipped segmenter's mask against the former (cv2.grabCut at 384 px) at k iterations; "
             "pixels only ours keeps / only the former keeps are against k = 5", ""]
    for name, prompt in PROMPTS.items():
        img = photo_array(name)
        ours = seg.segment(img, prompt).mask
        former = {k: former_grabcut(img, prompt, iterations=k) for k in ITERATIONS}
        ref = former[5]
        lines.append(f"{name:<10} IoU with the former at k iterations: " + ", ".join(
            f"k={k} {iou(ours, m):.3f}" for k, m in former.items()) +
            "; the former at k vs k=5: " + ", ".join(f"k={k} {iou(m, ref):.3f}" for k, m in former.items() if k != 5) +
            f"; only ours {int((ours & ~ref).sum())} px, only the former {int((ref & ~ours).sum())} px, "
            f"mask {int(ours.sum())} px")
        print(lines[-1], flush=True)
        picture = img.copy()
        picture[~ours] = (picture[~ours] * 0.3).astype(np.uint8)
        picture[ours & ~ref] = (0, 255, 0)
        picture[ref & ~ours] = (255, 0, 255)
        Image.fromarray(picture).save(a.out.parent / f"mask_agreement_{name}.jpg", quality=85)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
