"""Handwriting-font digits: training digits in other hands than MNIST's.

MNIST's writers were American students and clerks: few of their 1s have a flag, few 4s are open,
few 7s have a bar, and the phone photos of other people's digits fail on just these (a flagged 1
read as 7, a font's 4 as 9, an 8 with a small upper loop as 0). Forty handwriting families of
Google Fonts, as npm's fontsource packages publish them (pinned, each tarball checked by SHA-256),
add their hands. None of them is among the Debian fonts that `benchmarks/photos.py` draws its
test photos with, so the benchmark still measures writers the model never saw.

Each digit is drawn large, its strokes thickened or thinned and bent by a smooth random field, and
read back through the preprocessing a person's image goes through (`preprocess.to_mnist`), so it
reaches training in MNIST's form. `train` mixes them in at `font_share` of each epoch.

    mnist-cnn data     # fetches the fonts beside MNIST (31 MB, once)
"""

from __future__ import annotations

import io
import tarfile
import urllib.request
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .data import DataError, FileLock, default_data_dir, sha256
from .files import atomic_write
from .preprocess import to_mnist

VERSION = "5.3.0"  # every family's fontsource release
URL = "https://registry.npmjs.org/@fontsource/{name}/-/{name}-{version}.tgz"
TIMEOUT_S = 60  # per tarball (the largest is 3 MB)
FAMILIES = {  # family: the SHA-256 of its tarball
    "annie-use-your-telescope": "ed1cea10322cff6e760b1c1d2cb3be8b5a3b08ddea41feae31f9f938f39fe1ab",
    "architects-daughter": "791d2009fbdc46ca3eb942c27c62c0ee353668cd290dfad17f401b8488c727a1",
    "caveat": "ebf746fc0667b9d10fcac7c8604e2ba40a264da85a1c9b48bd679c0af3221293",
    "cedarville-cursive": "dd07000aae10231af25d83ab5ea2c53a22a8c20d8eccc137d6e5798a55edc80e",
    "coming-soon": "aac84961066a709d468766331ec2dcbe9c45bbf5260537ca859e411703d20395",
    "covered-by-your-grace": "1bd27256356f90c7bc7b463d36c05565ef4b3d655bc56d0dd7b7387114b1308d",
    "dawning-of-a-new-day": "90b517633db0d0b77ccbd6ba10c9befaaefd3aa0d964957fc7af064ce377037a",
    "delius": "d11ac0b0039cc03d141d2dc65ee3472a8bd77300ff2dc16ed24c83544097ecb0",
    "edu-nsw-act-foundation": "ca91298947e4e95be9595a7e234a81e494f4bbcd57a2b6006c74cf1809fa3db0",
    "edu-qld-beginner": "567433d322935ceae5f449b73a5dd5fc9dbabd6fa06e4e3326fbe6ec7aff1f95",
    "edu-sa-beginner": "a91f987d2a9e11937fac52c9adc0eaecd2e7ad69f4532152680c84717b202def",
    "edu-tas-beginner": "253bcf05d60701109332c3d7c1acaaced5f54f7fbf94a2d92fa4045d1869ebe8",
    "edu-vic-wa-nt-beginner": "a53e487636db6815d568bdb73225b5cd2f7ec45f1cd17656b6682dca82645c06",
    "gaegu": "a288e8e1d8ba3b288bee36088ad49f3e393797b96c2cca489efcbce47d918f6f",
    "gloria-hallelujah": "8755cc046e06286eeebee193f9f753bd0f03eec44c7bf188fc883db66e7a9d91",
    "gochi-hand": "6e206b6139093775d8762503196d6d991408bd5f8393ea0357f4f89b75b195a3",
    "handlee": "e1fbeba16906d4807b42add8ab85dec533c3e667575be00ba96f050b5fc452ce",
    "homemade-apple": "0ad668da20f63bd47bb32c86e160a7cae8ef0f2e1844c405bc40e278c86b91d0",
    "indie-flower": "be380503f1e2c5ef08b8399a28f8cb2f1725527db2cb6aacec3037c2bd1b9083",
    "itim": "2b6f41d05eae237d51e51e69099993e2864d9c61a0015cb908b73850000f1e2e",
    "just-another-hand": "58754de1b8784c97defb535f0c7e5d683ace09c17533e20c0c8c627da8239d2f",
    "kalam": "0aaf22523f3c57ae19f32c4f4df0d43d6efd01b7563a19cf4ed818cd5601426d",
    "la-belle-aurore": "48be5aefc80ad78aa9b2b1c992dd65678235c2496ae2a88f694e594ab9d7abed",
    "mali": "391b86c08e567a8537c0cf6aad7298f5e4c54e0ab7652d046b44678f01f7fbd0",
    "nanum-pen-script": "91c7118b1d68e8ab576addbae76351857cf5c3656b7ee496c51fe16f01258a44",
    "neucha": "8f2718549556a0c406a766edc9689801a950dc79a71cbb646fc5e2d67c49cca0",
    "nothing-you-could-do": "dac48ef024df5e754bf8586157d73d0dba139d6353f28b9ec6de77b0dadf0add",
    "over-the-rainbow": "5f231cee244b4c3a734da05bf23d4e07fec1062ffa1824358e933f59fc94e313",
    "pangolin": "0b7bd4f9ad33a18fc9de29e28dfb23fc4281635cc153df856443106c94f0e0b3",
    "patrick-hand": "c3428d02610c7b8fa92b044cf766f8c30b88bb32a47460b4ac42fa14e0bcdcc0",
    "playpen-sans": "cc638f6c358ee318701ff65788540db3019aab408267b5b5d81c2a84226e4706",
    "reenie-beanie": "8a2406f9b3c0b76199dcd87288ea40480fcd8547ba1af2f9f3156205f1688be9",
    "schoolbell": "08901884344f129587928d2260a84e6d8cc7baae54ecdce19ff225694314b704",
    "sedgwick-ave": "0531aaf259af059ed01c20108b5c4a7e80b5868e4e2095910e3ceaf06c597dc1",
    "shadows-into-light": "0885aefd34c65bd79207cffff0771ae0527f227a202bc850f8cf9a12257fc7f1",
    "sriracha": "934c3629d255c4f86f66b218cdefef90d6328727be5036fc28f953ac53a7b6f4",
    "sue-ellen-francisco": "93c9f047a1709b2879db10b52058ffba7c1642f0acbec422eb358433c937ee00",
    "the-girl-next-door": "d4ac864cbcda87dffe808b5366045e8d75c149fd2a00d081cc8343ab36699545",
    "walter-turncoat": "d9f63db4a95c587d988e1c1ba6eed706a2d134f60aab91bba0d5d2e47fae3d51",
    "zeyada": "bf6eb4164a796a1b91405188b95455aa7e1fad447f37195e9f767efee21e336a",
}
PX = 160  # the glyphs' size as drawn
VARIANTS = 6  # drawings of each digit of each font file
THICKEN = (-4, 4)  # stroke change, pixels at PX (MNIST's strokes are 2-3 px at 28: a tenth of a digit)
BEND = 6.0  # the smooth random field's largest strength
RENDER_VERSION = 1  # bump when draw() changes, so that cached digits are drawn again


def acquire(data_dir: Path | None = None, fetch: Callable[[str], bytes] | None = None,
            log: Callable[[str], None] = lambda m: None) -> list[Path]:
    """Ensure every family's verified tarball is in `data_dir`/fonts; return their paths (FAMILIES' order)."""
    folder = (Path(data_dir) if data_dir else default_data_dir()) / "fonts"
    folder.mkdir(parents=True, exist_ok=True)
    fetch = fetch or _download
    paths = []
    with FileLock(folder / ".lock"):
        for name, digest in FAMILIES.items():
            path = folder / f"{name}-{VERSION}.tgz"
            if not (path.exists() and sha256(path.read_bytes()) == digest):
                url = URL.format(name=name, version=VERSION)
                try:
                    raw = fetch(url)
                except Exception as exc:
                    raise DataError(f"could not fetch the handwriting font {name} ({url}: {exc}). The default recipe "
                                    "trains on these fonts' digits beside MNIST's: fetch them where the npm registry "
                                    "is reachable (mnist-cnn data), or train with --font-share 0") from exc
                if sha256(raw) != digest:
                    raise DataError(f"{url}: SHA-256 mismatch (got {sha256(raw)}, expected {digest})")
                atomic_write(path, raw)
                log(f"fonts: fetched {name}")
            paths.append(path)
    return paths


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return response.read()


def font_files(tarball: Path) -> list[bytes]:
    """The Latin regular-style font files in one fontsource tarball, each weight once, in name order."""
    with tarfile.open(tarball) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/files/")
                          and m.name.endswith("-normal.woff") and "-latin-" in m.name and "-ext-" not in m.name),
                         key=lambda m: m.name)
        return [tar.extractfile(m).read() for m in members]


def draw(fonts: list[bytes], variants: int = VARIANTS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each font's digits 0-9, `variants` times over: ((N, 28, 28) uint8 in MNIST's form, (N,) int64 labels).

    Each drawing gets its own stroke width (THICKEN) and a smooth random bend (BEND), and is read back
    by `preprocess.to_mnist`, as a person's image would be. A font without a digit's glyph is skipped.
    """
    rng = np.random.default_rng(seed)
    grid = np.mgrid[0:2 * PX, 0:2 * PX].astype(np.float32)
    xs, ys = [], []
    for raw in fonts:
        font = ImageFont.truetype(io.BytesIO(raw), PX)
        for digit in range(10):
            canvas = Image.new("L", (2 * PX, 2 * PX), 0)
            ImageDraw.Draw(canvas).text((PX // 2, PX // 4), str(digit), font=font, fill=255)
            glyph = np.asarray(canvas)
            if not glyph.any():
                continue
            for _ in range(variants):
                strokes = _thicken(glyph, int(rng.integers(THICKEN[0], THICKEN[1] + 1)))
                x = to_mnist(Image.fromarray(255 - _bend(strokes, rng, grid)))  # dark ink on white, as scanned
                if x is not None:
                    xs.append(x)
                    ys.append(digit)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def _thicken(glyph: np.ndarray, t: int) -> np.ndarray:
    """Strokes `t` pixels bolder (or, t < 0, thinner, unless that would wipe out most of the glyph)."""
    if t == 0:
        return glyph
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(t) + 1,) * 2)
    if t > 0:
        return cv2.dilate(glyph, disk)
    thin = cv2.erode(glyph, disk)
    return thin if thin.sum() > 0.4 * glyph.sum() else glyph


def _bend(glyph: np.ndarray, rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
    """The glyph displaced by a smooth random field (a hand's wobble), up to BEND times its smoothness."""
    strength, smooth = rng.uniform(0, BEND), 14.0
    dx, dy = (cv2.GaussianBlur(rng.uniform(-1, 1, glyph.shape).astype(np.float32), (0, 0), smooth) * strength * smooth
              for _ in range(2))
    return cv2.remap(glyph, grid[1] + dx, grid[0] + dy, cv2.INTER_LINEAR)


def font_digits(data_dir: Path | None = None, variants: int = VARIANTS, seed: int = 0,
                log: Callable[[str], None] = lambda m: None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every family's digits (`draw`), drawn once and cached beside the tarballs."""
    tarballs = acquire(data_dir, log=log)
    pins = sha256("".join(FAMILIES.values()).encode())[:12]  # another set of fonts is drawn anew
    cache = tarballs[0].parent / f"digits-r{RENDER_VERSION}-v{variants}-s{seed}-{pins}.npz"
    if cache.exists():
        with np.load(cache) as saved:
            return torch.from_numpy(saved["x"]), torch.from_numpy(saved["y"])
    log(f"fonts: drawing the digits of {len(tarballs)} handwriting families (once, about half a minute)")
    x, y = draw([f for t in tarballs for f in font_files(t)], variants, seed)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x.numpy(), y=y.numpy())
    atomic_write(cache, buffer.getvalue())
    return x, y
