"""Phone-photo benchmark: how well the recognizer reads handwritten digits and numbers photographed on paper.

Each photo comes from benchmarks/photo_synth.py: a handwritten digit (MNIST test,
UCI 8x8 or a handwriting font, redrawn with a ballpoint, gel pen or pencil) or a
number of 2-5 separate digits, on plain, lined or squared paper, photographed with
a phone (tilt, desk around the sheet, uneven light, soft and hard shadows, white
balance, blur, noise, sharpening, JPEG at quality 60-95, 0.5-2 MP). The recognizer
gets each photo as a decoded JPEG, like a file a person hands it, and either answers
(status "ok") or declines ("unsure", "empty", ...). Printed as Markdown tables:
  single digits: read right, wrong, declined, confidently wrong (wrong with p >= 0.9);
  numbers: exact number right, wrong, declined, right count of digits;
overall and per condition (paper, ink, light, desk, tilt, source, blur, glare, curl, size),
then the time per image of preprocessing plus prediction on one CPU thread.

    .venv/bin/python benchmarks/photos.py            # 600 digits and 200 numbers
    .venv/bin/python benchmarks/photos.py --quick    # 60 digits and 20 numbers
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from mnist_cnn import precision

import photo_synth

CONFIDENT = 0.9  # a wrong answer at least this sure is "confidently wrong"
FACTORS = (  # (row label, how to read it from a photo's conditions)
    ("paper", lambda c: c["paper"]),
    ("ink", lambda c: c["ink"]),
    ("ink contrast", lambda c: "< 0.3 (faint)" if c["ink_contrast"] < 0.3 else
     "0.3-0.6" if c["ink_contrast"] < 0.6 else ">= 0.6"),
    ("light", lambda c: c["light"]),
    ("desk shown", lambda c: c["desk_shown"]),
    ("tilt", lambda c: c["tilt"]),
    ("source", lambda c: c["source"]),
    ("blur", lambda c: "no" if c["blur"] == "none" else "yes"),
    ("glare", lambda c: "yes" if c["glare"] else "no"),
    ("sheet curled", lambda c: "yes" if c["curl"] else "no"),
    ("digit height / shorter side", lambda c: "< 20%" if c["digit_frac"] < 0.2 else
     "20-35%" if c["digit_frac"] < 0.35 else ">= 35%"),
)


def photo(rng, kind: str, sources, size) -> tuple[bytes, Image.Image, str, dict]:
    """One photo as its JPEG file's bytes and as the decoded image the recognizer gets."""
    rgb, label, cond = photo_synth.render(rng, kind, sources=sources, size=size)
    raw = photo_synth.jpeg(rgb, cond["jpeg_quality"])
    return raw, Image.open(io.BytesIO(raw)).convert("RGB"), label, cond


def ask(fn, img):
    """The recognizer's answer and the seconds it took; an exception counts as a decline named after it."""
    t0 = time.perf_counter()
    try:
        answer = fn(img)
    except Exception as exc:  # noqa: BLE001 - one bad photo must not end the benchmark
        answer = exc
    return answer, time.perf_counter() - t0


def digit_outcome(pred, label: str) -> dict:
    if isinstance(pred, Exception):
        return {"outcome": "declined", "status": f"error {type(pred).__name__}", "answer": "error", "p": 0.0}
    if pred.status != "ok":
        return {"outcome": "declined", "status": pred.status, "answer": pred.status.replace(" ", "-"),
                "p": float(pred.probability)}
    right = pred.digit == int(label)
    return {"outcome": "right" if right else "wrong", "status": "ok", "answer": str(pred.digit),
            "p": float(pred.probability), "confident": not right and pred.probability >= CONFIDENT}


def number_outcome(num, label: str) -> dict:
    if isinstance(num, Exception):
        return {"outcome": "declined", "status": f"error {type(num).__name__}", "answer": "error", "length": False}
    outcome = "declined" if num.status != "ok" else "right" if num.text == label else "wrong"
    return {"outcome": outcome, "status": num.status, "answer": num.text.replace("?", "q") or num.status,
            "length": len(num.text) == len(label)}


def pct(rows: list[dict], test) -> str:
    return f"{100 * sum(map(test, rows)) / max(1, len(rows)):.1f}%"


def table(rows: list[dict], columns: list[tuple[str, callable]]) -> list[str]:
    """Markdown: one row for all photos, then one per value of each factor."""
    out = ["| photos | n | " + " | ".join(name for name, _ in columns) + " |",
           "|---|---:|" + "---:|" * len(columns)]

    def line(name, group):
        return f"| {name} | {len(group)} | " + " | ".join(pct(group, test) for _, test in columns) + " |"

    out.append(line("**all**", rows))
    for factor, value_of in FACTORS:
        for value in sorted({value_of(r["cond"]) for r in rows}):
            out.append(line(f"{factor}: {value}", [r for r in rows if value_of(r["cond"]) == value]))
    return out


def save(folder: Path, name: str, raw: bytes, record: dict, index: dict) -> None:
    (folder / name).write_bytes(raw)
    index[name] = {k: record[k] for k in ("label", "answer", "status", "cond")}


def run(kind: str, count: int, seed: int, predictor, sources, size, failures: Path | None, index: dict):
    """Photos of `kind`, each from its own seed (so a longer run starts with the shorter one's photos)."""
    rows, ask_s, make_s = [], [], 0.0
    fn, judge = ((predictor.predict_image, digit_outcome) if kind == "digit"
                 else (predictor.predict_number, number_outcome))
    for i in range(count):
        t0 = time.perf_counter()
        raw, img, label, cond = photo(np.random.default_rng([seed, kind == "number", i]), kind, sources, size)
        make_s += time.perf_counter() - t0
        answer, seconds = ask(fn, img)
        ask_s.append(seconds)
        record = dict(judge(answer, label), label=label, cond=cond)
        rows.append(record)
        if failures and record["outcome"] != "right":
            save(failures, f"{kind}_{i:04d}_label{label}_got-{record['answer']}.jpg", raw, record, index)
        if (i + 1) % 50 == 0:
            print(f"  {kind}s: {i + 1}/{count}", file=sys.stderr, flush=True)
    return rows, ask_s, make_s


def main(argv=None) -> None:
    from mnist_cnn.predict import Predictor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=600, help="photos of single digits")
    p.add_argument("--numbers", type=int, default=200, help="photos of numbers of 2-5 digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="checkpoint or run folder (default: the shipped model)")
    p.add_argument("--reader", default="shipped", help="how numbers are read: a reader checkpoint, or segment "
                   "(default: the shipped reader)")
    p.add_argument("--size", type=float, default=None, help="megapixels of every photo (default: 0.5-2 at random)")
    p.add_argument("--quick", action="store_true", help="a small run: 60 digits and 20 numbers")
    p.add_argument("--save-failures", metavar="DIR", help="write the wrong and declined photos here")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.numbers = 60, 20
    torch.set_num_threads(1)  # timings per core; this is a script, so setting it globally is fine
    cv2.setNumThreads(1)  # OpenCV runs a pool of one thread per core otherwise, whatever OMP_NUM_THREADS says
    failures = Path(args.save_failures) if args.save_failures else None
    if failures:
        failures.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_path(args.model, reader=args.reader)
    sources = photo_synth.load_sources()
    index: dict = {}
    start = time.perf_counter()
    digits, digit_s, make_d = run("digit", args.n, args.seed, predictor, sources, args.size, failures, index)
    numbers, number_s, make_n = run("number", args.numbers, args.seed, predictor, sources, args.size, failures, index)
    total = time.perf_counter() - start
    if failures:
        (failures / "failures.json").write_text(json.dumps(index, indent=1) + "\n")

    size = f"{args.size:g} MP" if args.size else "0.5-2 MP"
    print(f"### Phone photos of single digits ({args.n} photos, {size}, seed {args.seed})\n")
    if digits:
        print("\n".join(table(digits, [
            ("read right", lambda r: r["outcome"] == "right"), ("wrong", lambda r: r["outcome"] == "wrong"),
            ("declined", lambda r: r["outcome"] == "declined"),
            (f"confidently wrong (p >= {CONFIDENT})", lambda r: r.get("confident", False))])))
        declined = Counter(r["status"] for r in digits if r["outcome"] == "declined")
        print("\nDeclined, by status: " + (", ".join(f"{s} {n}" for s, n in declined.most_common()) or "none"))
    print(f"\n### Phone photos of numbers of 2-5 digits ({args.numbers} photos, {size}, seed {args.seed})\n")
    if numbers:
        print("\n".join(table(numbers, [
            ("number right", lambda r: r["outcome"] == "right"), ("wrong", lambda r: r["outcome"] == "wrong"),
            ("declined", lambda r: r["outcome"] == "declined"), ("right count of digits", lambda r: r["length"])])))
        declined = Counter(r["status"] for r in numbers if r["outcome"] == "declined")
        print("\nDeclined, by status: " + (", ".join(f"{s} {n}" for s, n in declined.most_common()) or "none"))
    print(f"\nPreprocessing + prediction per photo: single digit {1000 * np.mean(digit_s or [0]):.0f} ms "
          f"(median {1000 * np.median(digit_s or [0]):.0f}), number {1000 * np.mean(number_s or [0]):.0f} ms "
          f"(median {1000 * np.median(number_s or [0]):.0f}); CPU {precision.cpu_model()}, "
          f"torch threads {torch.get_num_threads()}.")
    print(f"Generating the photos took {make_d + make_n:.0f} s; the whole run {total:.0f} s.")
    if failures:
        print(f"Wrong and declined photos: {len(index)} in {failures} (answers in the names, failures.json)")


if __name__ == "__main__":
    main()
