"""Why written numbers are misread: each wrong or unsure number of benchmarks/number_reading.py, bucketed by cause.

The numbers are composed exactly as number_reading.py composes them, but on DEV seeds (seed 0 is the
benchmark's and is refused), and each digit's place on the page is kept, so every piece of ink the
reader route reads (`Predictor.number_parts`) is matched with the digits it really holds. A number
that is not read exactly gets one bucket per piece that went wrong:

- "piece without a digit": a stray mark, or a digit in two pieces;
- "touching digits read as one": a piece of two or more digits read whole by the classifier (the
  reader found one digit there, or the narrow-piece rule overruled its count);
- "classifier misread" / "classifier unsure": a piece of one digit read whole;
- "reader split one digit", "reader miscount", "reader misread", "reader unsure": a piece the reader read.

Each piece's classifier probabilities (single pass and with TTA) and the reader's are kept (--out, one
JSON line per number), so that other policies can be scored from them without reading the pages again.

    OMP_NUM_THREADS=1 python benchmarks/number_failures.py --seeds 1,2 --per-length 20 --out /tmp/f.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch

from number_reading import SETS, compose


def trace(predictor, img, spans: list[tuple[float, float]]) -> dict:
    """What the reader route made of one number's pieces, next to the digits each piece really holds."""
    from mnist_cnn import preprocess, segment
    from mnist_cnn.evaluation import predict_logits
    from mnist_cnn.imageops import bbox

    page = segment.number_page(img)
    reading, items = predictor.number_parts(page)
    blobs = [m for m, _ in segment.digit_blobs(page.labels, page.count)]
    edges = [bbox(m)[2:] for m in blobs]
    centres = [(a + b) / 2 / page.factor for a, b in spans]  # each true digit's centre, working-copy columns
    home = [min(range(len(edges)), key=lambda k: max(edges[k][0] - c, c - edges[k][1], 0)) for c in centres]
    crops = torch.stack([preprocess.render(page, part.ink) for part in items])
    kw = dict(mean=predictor.meta["mean"], std=predictor.meta["std"])
    plain = predict_logits(predictor.model, crops, tta=False, **kw).float().softmax(1)
    tta = predict_logits(predictor.model, crops, tta=True, **kw).float().softmax(1)
    out = []
    for k, item in enumerate(items):
        peak, part, alone = item.peak, item.ink, item.alone
        blob = next(b for b, m in enumerate(blobs) if (m & part).any())
        r = None if peak is None else (reading.probs[peak.frame, :10] / reading.probs[peak.frame, :10].sum())
        out.append({"blob": blob, "alone": alone, "doubt": None if peak is None else peak.doubt,
                    "doubt_reason": preprocess.doubt(crops[k]),
                    "plain": plain[k].tolist(), "tta": tta[k].tolist(), "reader": None if r is None else r.tolist()})
    return {"items": out, "home": home, "blobs": len(blobs),
            "peaks_per_blob": [sum(1 for c in reading.centres if edges[b][0] <= c < edges[b][1])
                               for b in range(len(blobs))]}


def buckets(rec: dict) -> list[str]:
    """The causes of one number's misreading (an empty list when it was read exactly)."""
    if rec["got"] == rec["truth"] and rec["status"] == "ok":
        return []
    truth, items, causes = rec["truth"], rec["items"], []
    read = iter(rec["got"])
    for b in range(rec["blobs"]):
        mine = [it for it in items if it["blob"] == b]
        said = [next(read, "") for _ in mine]
        holds = [truth[i] for i, h in enumerate(rec["home"]) if h == b]
        if not holds:
            causes.append("piece without a digit")
        elif len(mine) == 1 and mine[0]["alone"]:
            if len(holds) > 1:
                narrow = rec["peaks_per_blob"][b] > 1
                causes.append("touching digits read as one" + (" (narrow rule)" if narrow else ""))
            elif said[0] == "?":
                best = int(np.argmax(mine[0]["tta"]))
                causes.append(f"classifier unsure ({'right' if str(best) == holds[0] else 'wrong'} best guess)")
            elif said[0] != holds[0]:
                causes.append("classifier misread")
        elif len(holds) == 1:
            causes.append("reader split one digit")
        elif len(mine) != len(holds):
            causes.append("reader miscount")
        elif any(s != "?" and s != h for s, h in zip(said, holds)):
            causes.append("reader misread")
        elif "?" in said:
            causes.append("reader unsure")
    return causes or ["other"]


def collect(predictor, x, y, seeds, per_length: int, lengths) -> list[dict]:
    from mnist_cnn.images import decode

    records = []
    for seed in seeds:
        for s, kind in enumerate(SETS):
            rng = np.random.default_rng([seed, s])  # number_reading.run's draws, in its order
            for n in lengths:
                for _ in range(per_length):
                    idx = rng.choice(len(x), size=n, replace=False)
                    spans: list = []
                    img = decode(compose([x[i] for i in idx], kind, rng, spans))
                    got = predictor.predict_number(img)
                    rec = {"seed": seed, "kind": kind, "n": n, "truth": "".join(str(int(y[i])) for i in idx),
                           "got": got.text, "status": got.status, **trace(predictor, img, spans)}
                    rec["causes"] = buckets(rec)
                    records.append(rec)
    return records


def summary(records: list[dict]) -> str:
    lines = ["| set | numbers | exact | unsure | sure but wrong |", "|---|---:|---:|---:|---:|"]
    for kind in SETS + ("ten digits",):
        rs = [r for r in records if r["kind"] == kind or (kind == "ten digits" and r["n"] == 10)]
        if rs:
            ok = sum(r["got"] == r["truth"] and r["status"] == "ok" for r in rs)
            unsure = sum(r["status"] == "unsure" for r in rs)
            lines.append(f"| {kind} | {len(rs)} | {100 * ok / len(rs):.1f}% | {100 * unsure / len(rs):.1f}% | "
                         f"{100 * (len(rs) - ok - unsure) / len(rs):.1f}% |")
    lines += ["", "| cause (numbers with it) | " + " | ".join(SETS) + " |", "|---|" + "---:|" * len(SETS)]
    counts = {kind: Counter(c for r in records if r["kind"] == kind for c in set(r["causes"])) for kind in SETS}
    for cause in sorted(set().union(*counts.values()), key=lambda c: -sum(v[c] for v in counts.values())):
        lines.append(f"| {cause} | " + " | ".join(str(counts[k][cause]) for k in SETS) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from mnist_cnn import data
    from mnist_cnn.predict import Predictor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="1,2", help="dev seeds, comma-separated (never 0: the benchmark's)")
    p.add_argument("--per-length", type=int, default=20)
    p.add_argument("--lengths", default="2-10")
    p.add_argument("--reader", default="shipped")
    p.add_argument("--out", help="write every number's record here (JSON lines)")
    p.add_argument("--records", help="summarize these records instead of reading pages")
    args = p.parse_args(argv)
    if args.records:
        records = [json.loads(line) for line in open(args.records)]
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        if 0 in seeds:
            p.error("seed 0 is the benchmark's: choose on other seeds")
        torch.set_num_threads(1)
        lo, _, hi = args.lengths.partition("-")
        lengths = list(range(int(lo), int(hi) + 1)) if hi else [int(v) for v in args.lengths.split(",")]
        x, y = data.read_split(data.acquire(), "test")
        records = collect(Predictor.from_path(reader=args.reader), x, y, seeds, args.per_length, lengths)
        if args.out:
            with open(args.out, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
    print(summary(records))


if __name__ == "__main__":
    main()
