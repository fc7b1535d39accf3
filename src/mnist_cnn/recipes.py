"""Training recipes: one flat config dataclass each, chosen by name with `--recipe`.

A recipe's docstring states what it measured, and where. The resolved config is
written into every run folder and checkpoint.

    mnist-cnn train --recipe fast
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError

OPTIMIZERS = ("sgd", "adadelta", "adamw")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # precision.py says what each means
SCHEDULES = ("constant", "step", "onecycle", "cosine")


@dataclass
class TrainConfig:
    """Fields shared by every recipe; each recipe overrides the defaults it needs."""

    recipe: str = "custom"
    model: str = "bnnet"  # a name in models.REGISTRY
    model_args: dict = field(default_factory=dict)  # keyword arguments for that model
    epochs: int = 3
    batch_size: int = 50  # global batch, split across torchrun ranks
    optimizer: str = "sgd"  # sgd | adadelta | adamw
    lr: float = 0.01  # peak learning rate for the whole global batch
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0  # decoupled for adamw, L2 for sgd
    schedule: str = "constant"  # constant | step | onecycle | cosine
    step_gamma: float = 0.7  # `step`: lr multiplier after each epoch
    warmup: float = 0.0  # onecycle/cosine: fraction of all steps spent warming up
    label_smoothing: float = 0.0  # cross-entropy target smoothing
    ema_decay: float = 0.0  # per-step EMA of the weights; 0 disables it
    normalize: bool = True  # inputs (x - MNIST_MEAN) / MNIST_STD; False keeps [0, 1]
    translate: float = 0.0  # augmentation: max shift, pixels
    rotate: float = 0.0  # augmentation: max rotation, degrees
    scale: float = 0.0  # augmentation: max relative zoom, e.g. 0.1 = +-10%
    shear: float = 0.0  # augmentation: max shear, degrees
    tta: bool = False  # test-time augmentation when evaluating
    channels_last: bool = False  # NHWC memory layout (faster convs on some CPUs/GPUs)
    compile: bool = False  # torch.compile the model (opt-in: compiling costs time up front)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16: the training step's autocast (precision.py)
    val_size: int = 5000  # images carved from train for validation; 0 trains on all 60,000
    limit_train: int | None = None  # train on the first N images only (quick runs)
    log_every: int = 1000  # steps between logged lines
    seed: int = 0  # seeds every generator
    ensemble: int = 1  # members trained with seeds seed, seed+1, ...; their probabilities are averaged
    samples_share: float = 0.05  # with --samples: the person's digits' share of each epoch (they are repeated)
    font_share: float = 0.0  # handwriting-font digits (fonts.py) mixed in, as this share of each epoch at most

    def __post_init__(self):
        # Checked here, so a bad flag fails before MNIST is loaded, and with the rule it broke,
        # not as a tensor-shape error deep inside training.
        checks = {  # field: (holds, what it must be)
            "epochs": (self.epochs >= 1, ">= 1"), "batch_size": (self.batch_size >= 1, ">= 1"),
            "lr": (self.lr > 0, "> 0"), "momentum": (0 <= self.momentum < 1, "in [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "optimizer": (self.optimizer in OPTIMIZERS, " or ".join(OPTIMIZERS)),
            "schedule": (self.schedule in SCHEDULES, " or ".join(SCHEDULES)),
            "step_gamma": (self.step_gamma > 0, "> 0"), "warmup": (0 <= self.warmup < 1, "in [0, 1)"),
            "label_smoothing": (0 <= self.label_smoothing < 1, "in [0, 1)"),
            "ema_decay": (0 <= self.ema_decay < 1, "in [0, 1)"),
            "font_share": (0 <= self.font_share < 1, "in [0, 1)"),
            "translate": (self.translate >= 0, ">= 0"), "rotate": (self.rotate >= 0, ">= 0"),
            "scale": (0 <= self.scale < 1, "in [0, 1)"), "shear": (self.shear >= 0, ">= 0"),
            "val_size": (0 <= self.val_size < 60000, "in [0, 60000)"),  # MNIST has 60,000 training images
            "limit_train": (self.limit_train is None or self.limit_train >= 1, ">= 1"),
            "log_every": (self.log_every >= 1, ">= 1"), "ensemble": (self.ensemble >= 1, ">= 1"),
            "samples_share": (0 < self.samples_share < 1, "in (0, 1)"),
            "precision": (self.precision in PRECISIONS, " or ".join(PRECISIONS)),
        }
        bad = [f"{name} = {getattr(self, name)!r} (must be {rule})" for name, (ok, rule) in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid {self.recipe} config: {'; '.join(bad)}")

    @property
    def augments(self) -> bool:
        return any((self.translate, self.rotate, self.scale, self.shear))


@dataclass
class SeedConfig(TrainConfig):
    """The notebook's recipe, exactly: pixels in [0, 1], batch 50, SGD 0.01/0.95, 3 epochs.

    Trains on all 60,000 images, reshuffled each epoch, as the notebook's DataLoader did.
    Measured (2-core AMD EPYC CPU, torch 2.13 CPU): 98.99% test accuracy in 449 s (seed 0,
    2 threads, quiet machine) and 99.01% in 802 s (seed 1, 1 thread, shared machine).
    """

    recipe: str = "seed"
    model: str = "seed"
    epochs: int = 3
    batch_size: int = 50
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.95
    normalize: bool = False  # the notebook used ToTensor() alone
    val_size: int = 0
    precision: str = "fp32"  # the notebook's arithmetic, even where `auto` would pick bf16 (--precision bf16 may)


@dataclass
class ReferenceConfig(TrainConfig):
    """The PyTorch example's recipe (pytorch/examples mnist): Adadelta 1.0, StepLR 0.7, 14 epochs.

    Measured (2-core AMD EPYC CPU, 2 threads): 99.21% test accuracy in 573 s.
    """

    recipe: str = "reference"
    model: str = "reference"
    epochs: int = 14
    batch_size: int = 64
    optimizer: str = "adadelta"
    lr: float = 1.0
    schedule: str = "step"
    step_gamma: float = 0.7
    val_size: int = 0


@dataclass
class FastConfig(TrainConfig):
    """Seconds to 99%: one epoch of a narrow three-stage BN network, one-cycle SGD.

    Pooling before batch norm (`pool_early`) and narrow early stages keep the
    memory-bound work on 28x28 maps small. No augmentation or label smoothing: in so
    short a run they slow convergence more than they help generalization.
    Measured (2-core AMD EPYC CPU, 2 threads, one benchmark run): 99.18% mean test
    accuracy over 5 seeds (99.11-99.29) in 4.9 s of training each, 0.011x the seed
    recipe's 449 s.
    """

    recipe: str = "fast"
    model: str = "bnnet"
    model_args: dict = field(default_factory=lambda: {"widths": [16, 32, 64], "depth": 1, "head": "flatten",
                                                      "pool_early": True})
    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.2
    channels_last: bool = True


@dataclass
class FastestConfig(FastConfig):
    """The CPU time-to-99% record: `fast`'s one epoch on a network that never computes a 28x28 map.

    A step of `fast` on a CPU goes mostly to the convolutions and, on the first stage's 28x28
    maps, to max-pooling and its backward pass (benchmarks/step_profile.py). Here the borders
    are cropped (2 pixels a side: MNIST's digits sit in the middle 20x20), the first stage is
    one stride-2 conv rather than conv and pool, and the peak lr is 0.2, for the same 54,912
    images (429 steps of 128).
    Chosen on the validation split (5,000 images, one epoch). First on a 2-core AMD EPYC (fp32;
    seeds 0 and 1; `fast` scored 98.82%): this recipe with an 8-channel stem 98.90%; at lr 0.15,
    98.82%; cropping 3 pixels, 98.55%; 4 pixels, 98.49%; uncropped, 98.81%; [8, 32, 48], 98.76%;
    33,000 or 45,000 images instead of an epoch, 98.43-98.67%. Then on a 2-core Xeon with AMX
    (bf16, seeds 0-3, seconds per epoch in one run): the 8-channel stem 98.82% in 2.58 s; the
    16-channel stem (this recipe) 98.82% in 1.94 s, and at lr 0.15 or 0.25, 98.83 or 98.78%;
    batch 192 or 256, 98.74-98.77% in 1.56-1.70 s. oneDNN's kernels run 16 channels faster than
    8 (they block channels by 16), in fp32 too (2.69 against 2.95 s there), so the wider stem
    costs nothing. torch.compile did not make a CPU step faster.
    Measured (2-core Xeon with AMX, 2 threads, one quiet benchmark run): 99.108% mean test accuracy
    over 5 seeds (99.05-99.15) in 2.2 s of training in bf16, 1/167 of the seed recipe's 367.0 s in
    fp32; 99.086% in 3.0 s in fp32.
    """

    recipe: str = "fastest"
    model_args: dict = field(default_factory=lambda: {"widths": [16, 32, 64], "depth": 1, "head": "flatten",
                                                      "pool_early": True, "stride_stem": True, "crop": 2})
    lr: float = 0.2


@dataclass
class DefaultConfig(TrainConfig):
    """What a bare `mnist-cnn train` runs: a three-stage BN network, augmentation, EMA, TTA.

    Measured (2-core AMD EPYC CPU, 2 threads, one benchmark run): 99.67%, 99.63% and
    99.64% test accuracy for seeds 0-2 (mean 99.647%) in 145-150 s of training. With the
    handwriting fonts' digits (`font_share`, added since; a 2-core AMD EPYC with avx512_bf16,
    bf16): 99.69%, 99.58% and 99.64% (mean 99.637%), seed 0 in 116 s. Seed 0 is the shipped model.
    """

    recipe: str = "default"
    model: str = "bnnet"
    model_args: dict = field(default_factory=lambda: {"widths": [32, 64, 128], "depth": 1, "head": "flatten",
                                                      "pool_early": True})
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.2
    label_smoothing: float = 0.1
    ema_decay: float = 0.999  # per step, warmed up from 0 (see training.update_ema)
    translate: float = 2.0
    rotate: float = 10.0
    scale: float = 0.1
    shear: float = 5.0
    tta: bool = True  # +0.02-0.04 points for 5x the (small) evaluation cost
    channels_last: bool = True
    font_share: float = 0.08  # 4,440 digits of 40 handwriting fonts: other hands than MNIST's (fonts.py)


@dataclass
class BestConfig(DefaultConfig):
    """Accuracy first: `default` with a fourth stage and stronger augmentation, on all 60,000 images.

    The fourth stage (256 channels on 3x3 maps) quadruples the parameters for about 30%
    more time per image (211 s for 10 epochs of 60,000 images, against 148 s for 55,000).
    Final weights, no selection on the test set. `--ensemble N` trains N of these (seeds
    S..S+N-1) and averages their probabilities.
    Chosen on the validation split (5,000 images; errors summed over seeds 0 and 1, 10
    epochs unless stated): this recipe 33 errors; the default network 41, with the fourth
    stage 38, and with dropout 0.2 there as well 35. Tried and dropped: this recipe for 30
    epochs (39 errors), with two convs per stage (`depth` 2: 41 errors, 3.3x the time per
    epoch) or 5x5 kernels (40 errors, 1.8x), and earlier, for the default network, 60
    epochs rather than 30, a wider [48, 96, 192] network, and elastic distortions. In
    ensembles, neither a depth-2 nor a 5x5 member beat a second seed of this recipe: all of
    them share about 13 of their 16-22 validation errors, mostly digits a person could
    read either way.
    Measured (2-core AMD EPYC CPU, 2 threads, one benchmark run, `--recipes best:10`):
    99.673% mean test accuracy over seeds 0-9 (99.63-99.72; seeds 0-2: 99.650%, short of
    our 99.70% aim) in 204-216 s each; the ten as an ensemble: 99.70% (short of 99.75%).
    The 30-epoch default network it replaced scored 99.660% over five seeds in 503 s each.
    """

    recipe: str = "best"
    model_args: dict = field(default_factory=lambda: {"widths": [32, 64, 128, 256], "depth": 1, "head": "flatten",
                                                      "pool_early": True})
    translate: float = 3.0
    rotate: float = 12.0
    scale: float = 0.12
    shear: float = 8.0
    val_size: int = 0  # hyperparameters were fixed on the validation split; the final fit uses all 60,000
    font_share: float = 0.0  # MNIST's accuracy first: measured as above, on MNIST alone


@dataclass
class FinetuneConfig:
    """How `mnist-cnn finetune` adapts a trained model to a person's digits (finetuning.py); the CLI overrides
    fields, and the fine-tuned checkpoint keeps them all.

    Measured on the shipped model (2-core AMD EPYC, benchmarks/finetune.py): 300 steps take 21 s; after
    20/50/100/200 UCI digits it reads 98.2/98.9/99.3/99.3% of the held-out writers (97.0% before),
    with MNIST test accuracy 0.02-0.04 points lower on average.
    """

    recipe: str = "finetune"
    steps: int = 300  # optimizer steps (about 10 s on a 2-core CPU for the shipped network)
    batch_size: int = 128  # images per step: the person's samples and MNIST replay together
    person_share: float = 0.25  # of each batch, drawn (with replacement) from the person's samples
    lr: float = 0.01  # peak, SGD with Nesterov momentum, cosine to 0 (the base recipe's peak was 0.1)
    momentum: float = 0.9
    weight_decay: float = 5e-4  # L2, as the default recipe
    label_smoothing: float = 0.1  # as the default recipe
    translate: float = 2.0  # augmentation of every image, as the default recipe: pixels
    rotate: float = 10.0  # degrees
    scale: float = 0.1  # relative zoom
    shear: float = 5.0  # degrees
    holdout: float = 0.2  # the samples held out for measurement, stratified by label (0: none)
    val_size: int = 5000  # MNIST validation images: the temperature is re-fitted on them (and never trained on)
    seed: int = 0  # the holdout, the batches, the augmentation, dropout
    precision: str = "auto"  # the tuning step's autocast, as in training (precision.py); the weights stay fp32

    def __post_init__(self):
        checks = {"steps": self.steps >= 1, "batch_size": self.batch_size >= 2, "lr": self.lr > 0,
                  "precision": self.precision in PRECISIONS, "person_share": 0 < self.person_share <= 1,
                  "momentum": 0 <= self.momentum < 1,
                  "weight_decay": self.weight_decay >= 0, "label_smoothing": 0 <= self.label_smoothing < 1,
                  "holdout": 0 <= self.holdout < 1, "val_size": 0 <= self.val_size < 60000}
        bad = [f"{k} = {getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid finetune config: {'; '.join(bad)}")


RECIPES: dict[str, type[TrainConfig]] = {
    c.recipe: c for c in (SeedConfig, ReferenceConfig, FastestConfig, FastConfig, DefaultConfig, BestConfig)
}


def get_config(recipe: str, **overrides) -> TrainConfig:
    """The named recipe's config, with any non-None overrides applied (from the CLI)."""
    try:
        cls = RECIPES[recipe]
    except KeyError:
        raise ConfigError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}") from None
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
    return cls(**{k: v for k, v in overrides.items() if v is not None})


def normalization(cfg: TrainConfig) -> tuple[float, float]:
    """(mean, std) that a recipe's inputs are normalized with: MNIST's, or (0, 1) to keep [0, 1]."""
    from .data import MNIST_MEAN, MNIST_STD  # data imports torch; a recipe is read by --help too

    return (MNIST_MEAN, MNIST_STD) if cfg.normalize else (0.0, 1.0)


def config_from_dict(d: dict) -> TrainConfig:
    """Rebuild a config from its JSON form (as stored in a checkpoint)."""
    if d.get("recipe") == FinetuneConfig.recipe:
        raise ConfigError("that is a fine-tuning run's config, not a training recipe's; fine-tune again with "
                          "`mnist-cnn finetune --model RUN_DIR` (or start from its base model)")
    cls = RECIPES.get(d.get("recipe"), TrainConfig)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in fields})


# Fields added after runs were written, with the value every run written before them trained with: a run's
# config that lacks one is such a run's (a `default` run from before the fonts resumes without them).
BEFORE_THEM = {"font_share": 0.0}


def run_config(d: dict) -> TrainConfig:
    """The config a run folder's config.json records (`config_from_dict`, fields added since at BEFORE_THEM)."""
    return config_from_dict({**BEFORE_THEM, **d})


# The number reader is no digit classifier: `mnist-cnn train-reader` trains it, not `train --recipe`.
@dataclass
class ReaderConfig:
    """How `mnist-cnn train-reader` trains the shipped number reader (`weights/reader.safetensors`, 880 KB).

    Measured (2-core AMD EPYC, 1 thread, the machine shared with another engineer's jobs): 8,000 steps in
    3,060 s; its 500 validation lines (1-10 digits of the held-out training digits, mixed gaps) read exactly
    95.8% (count right 99.4%), from 74.6% at step 1,000, 90.0% at 3,500 and 96.0% at 7,000. The 3,500-step
    recipe before it read 92.8% (its lines were neither blurred nor hardened: `lines.soften`). On 2,000
    other validation lines: 95.2% exact against 93.8%. On numbers of MNIST test digits see
    docs/preprocessing.md. Seed 0 with these defaults is the shipped reader.
    """

    recipe: str = "reader"
    model: str = "line_reader"
    model_args: dict = field(default_factory=lambda: {"widths": [24, 48, 80], "hidden": 128, "context": 2})
    steps: int = 8000  # optimizer steps, each on `batch_size` fresh synthetic lines
    batch_size: int = 32  # lines per step; every line of a step has the same number of digits
    max_digits: int = 10  # lines hold 1..max_digits digits
    lr: float = 3e-3  # AdamW peak, one-cycle (warm-up then cosine to 0)
    warmup: float = 0.1  # fraction of steps warming up
    weight_decay: float = 1e-4
    val_size: int = 5000  # MNIST training images held out: validation lines are made of them only
    val_lines: int = 500  # validation lines (lengths 1..max_digits, mixed gaps), read every `log_every` steps
    log_every: int = 250
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16: the training step's autocast (precision.py); weights stay fp32

    def __post_init__(self):
        checks = {"precision": self.precision in PRECISIONS, "steps": self.steps >= 1,
                  "batch_size": self.batch_size >= 1,
                  "max_digits": 1 <= self.max_digits <= 32, "lr": self.lr > 0, "warmup": 0 <= self.warmup < 1,
                  "weight_decay": self.weight_decay >= 0, "val_size": 0 < self.val_size < 60000,
                  "val_lines": self.val_lines >= 1, "log_every": self.log_every >= 1}
        bad = [f"{k} = {getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid reader config: {'; '.join(bad)}")


def resume_changes(saved: dict, cfg, resumable: tuple[str, ...]) -> dict:
    """{field: [saved value, new value]} between a run's config so far (`saved`, JSON form) and the config it
    resumes with, or ConfigError for a change outside `resumable`: the rest would be another run."""
    changed = {k: [saved[k], v] for k, v in dataclasses.asdict(cfg).items() if k in saved and saved[k] != v}
    refused = [k for k in changed if k not in resumable]
    if refused:
        raise ConfigError("a resumed run continues the same training, so it cannot change "
                          + ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in refused)
                          + f"; it may change {', '.join(resumable)}. Start a new run for the others")
    return changed
