"""The notebook's functions: load a model, predict digits and numbers, train, evaluate, save.

A thin layer over the modules that the command line uses too (checkpoint, predict, pipeline,
evaluation), so a notebook and `mnist-cnn` give the same answers. Functions return values and
print nothing; training shows progress only when asked (`progress=True`).

    import mnist_cnn
    model = mnist_cnn.load()                  # the shipped model; or a run folder, a .safetensors, a .onnx, "latest"
    model.predict("seven.jpg").digit          # paths, bytes, PIL images, arrays, tensors, or lists of them
    run = mnist_cnn.train("fast", epochs=1, limit_train=5000, out="runs/try")
    mnist_cnn.evaluate(run.model).accuracy
    mine = mnist_cnn.finetune(None, "my-digits/", out="runs/mine")   # a labelled folder, or a samples.db
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint, data, distributed, predict, runs
from .errors import ConfigError, InputError, UserError
from .evaluation import Metrics, evaluate as _evaluate
from .files import read_json
from .inputs import as_pixels, to_image
from .predict import MIN_CONFIDENCE, NumberPrediction, Prediction, Predictor
from .recipes import TrainConfig, config_from_dict, get_config, run_config

__all__ = ["Metrics", "Model", "NumberPrediction", "Prediction", "Run", "UserError", "evaluate", "finetune", "load",
           "train"]


class Model:
    """A loaded model with its metadata and answer policy: predict digits and numbers, evaluate, save.

    `net` is the torch module (or the ONNX session's callable), `meta` the checkpoint's metadata,
    `source` where it was loaded from. Every prediction goes through `predict.Predictor`, the
    command line's and the server's path.
    """

    def __init__(self, predictor: Predictor, source: str):
        self.predictor, self.source = predictor, source

    @property
    def net(self):
        return self.predictor.model

    @property
    def meta(self) -> dict:
        return self.predictor.meta

    @property
    def metrics(self) -> dict:
        """The metrics measured when it was trained (test accuracy and how: `test_forward`)."""
        return self.meta.get("metrics", {})

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def __repr__(self) -> str:
        acc = self.metrics.get("test_accuracy")
        return (f"Model({self.source!r}, arch={self.meta.get('arch')!r}"
                + (f", test_accuracy={acc:.2f}" if acc is not None else "") + ")")

    def predict(self, x, *, preprocess: bool = True) -> Prediction | list[Prediction]:
        """One digit per image -> a Prediction (.digit .probability .probabilities .status .processed).

        `x` is a picture of a digit: a path, raw bytes, a PIL image, a numpy array (H, W) or (H, W, C),
        or a torch tensor (H, W) or (C, H, W); pixels are uint8 or float in [0, 1]. It is brought into
        MNIST's form first, as on the command line. With `preprocess=False`, `x` is already in MNIST's
        form (28, 28), or a batch (N, 28, 28), white ink on black, and is used as it is. A list (or a
        batch) gives a list.
        """
        if not preprocess:
            return self._predict_mnist(x)
        if isinstance(x, (list, tuple)):
            return self._predict_digits([_to_mnist(item) for item in x])
        return self._predict_digits([_to_mnist(x)])[0]

    def _predict_digits(self, digits: list[torch.Tensor | None]) -> list[Prediction]:
        found = [d for d in digits if d is not None]
        preds = iter(self.predictor.predict_arrays(torch.stack(found)) if found else [])
        return [predict.empty() if d is None else next(preds) for d in digits]  # no ink: "empty", not a guess

    def _predict_mnist(self, x) -> Prediction | list[Prediction]:
        if isinstance(x, (list, tuple)):
            return self.predictor.predict_arrays(torch.stack([_mnist_form(item) for item in x])) if x else []
        pixels = as_pixels(x, "MNIST-form image")
        if pixels.dim() == 3:
            return self.predictor.predict_arrays(pixels)
        return self.predictor.predict_arrays(_mnist_form(pixels)[None])[0]

    def explain(self, x, *, method: str = "integrated-gradients", preprocess: bool = True):
        """Why the model answers what it does for one picture of a digit (anything `predict` takes):
        an explain.Explanation with the 28x28 attribution for the digit (and a close runner-up), each
        convolution's strongest feature maps, the first layer's filters and a sentence. Needs captum
        (the extra "explain"); None when the picture has no ink."""
        digit = _mnist_form(x) if not preprocess else _to_mnist(x)
        return None if digit is None else self.predictor.explain(digit, method)

    def read_number(self, x) -> NumberPrediction | list[NumberPrediction]:
        """A written number (any picture `predict` takes) -> its digits left to right: `.text`, `.digits` (each
        with its confidence and 28x28), `.boxes` and `.status` ("unsure" when a digit or the count is in doubt).
        Read by the shipped sequence reader unless `load(reader=...)` chose another."""
        if isinstance(x, (list, tuple)):
            return [self.read_number(item) for item in x]
        return self.predictor.predict_number(to_image(x))

    def save(self, path) -> Path:
        """Write a self-describing safetensors checkpoint that `load(path)` reads back, predicting the same."""
        if not isinstance(self.net, torch.nn.Module):
            raise UserError(f"{self.source}: an ONNX model cannot be saved as a checkpoint; save the torch model "
                            "it was exported from")
        path = Path(path)
        if path.is_dir():
            raise UserError(f"{path} is a folder; save takes the .safetensors file to write")
        checkpoint.save_model(path, self.net, self.meta)
        return path


def _to_mnist(x) -> torch.Tensor | None:
    from . import preprocess  # OpenCV and the photo steps: only when an image is read

    return preprocess.to_mnist(to_image(x))


def _mnist_form(x) -> torch.Tensor:
    pixels = as_pixels(x, "MNIST-form image")
    if tuple(pixels.shape) not in ((28, 28), (1, 28, 28)):
        raise InputError(f"with preprocess=False an image is in MNIST's form, (28, 28), not {tuple(pixels.shape)}")
    return pixels.reshape(28, 28)


def load(source=None, *, device="cpu", min_confidence: float = MIN_CONFIDENCE, topk: int = 3,
         reader="shipped") -> Model:
    """A model: None is the shipped one; else a run folder, a .safetensors or .onnx file, or "latest".

    "latest" is the newest finished run under runs/ (a UserError when there is none). An .onnx
    file runs on ONNX Runtime (the optional extra `mnist-cnn[export]`), on the CPU. `reader` reads
    written numbers (`read_number`): the shipped sequence reader, a `train-reader` checkpoint, or
    "segment" (the ink cut into digits for the classifier).
    """
    path = runs.resolve(source) if source is not None else None
    if path is not None and path.suffix == ".onnx":
        from .export import load_onnx  # onnxruntime is an optional extra

        predictor = Predictor(*load_onnx(path), min_confidence=min_confidence, topk=topk, reader=reader)
    else:
        predictor = Predictor.from_path(path, device=device, min_confidence=min_confidence, topk=topk, reader=reader)
    return Model(predictor, str(path or checkpoint.default_model_path()))


def evaluate(model, *, data_dir=None) -> Metrics:
    """Metrics of `model` (a Model, or anything `load` takes) on the 10,000 MNIST test images.

    Measured with the forward the model is served with (`Metrics.forward` says which).
    """
    model = model if isinstance(model, Model) else load(model)
    x, y = data.read_split(data.acquire(data_dir), "test")
    p = model.predictor
    return _evaluate(p.model, x.to(p.device), y.to(p.device), p.meta["mean"], p.meta["std"], tta=p.tta)


class RunMetrics(dict):
    """A run's metrics.json; "test_acc" and "val_acc" read "test_accuracy" and "val_accuracy"."""

    SHORT = {"test_acc": "test_accuracy", "val_acc": "val_accuracy"}

    def __missing__(self, key):
        if key in self.SHORT:
            return self[self.SHORT[key]]
        raise KeyError(key)

    def get(self, key, default=None):
        return super().get(self.SHORT.get(key, key), default)

    def __contains__(self, key) -> bool:
        return super().__contains__(self.SHORT.get(key, key))


@dataclass
class Run:
    """A finished training run: its folder, resolved config, metrics, history, and its model, loaded."""

    path: Path
    config: TrainConfig  # a FinetuneConfig for a fine-tuning run
    metrics: RunMetrics
    history: dict
    model: Model

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, recipe={self.config.recipe!r}, test_accuracy={self.metrics.get('test_accuracy')})"


def train(recipe: str | TrainConfig | dict | None = None, *, out=None, resume: bool = False, data_dir=None,
          device="auto", progress: bool = False, **overrides) -> Run:
    """Train a recipe (a name, a TrainConfig or its dict; default "default") into a run folder: a Run.

    The same job as `mnist-cnn train` (pipeline.train_run): train, calibrate, test, save, report.
    `overrides` are config fields (epochs=1, limit_train=5000, ...). `out` defaults to
    runs/RECIPE-TIME; `resume=True` continues the run in `out` with its own config (overrides may
    change its epochs or lr). `device` "auto" picks CUDA, then MPS, then CPU. Prints nothing unless
    `progress`; the caller's random generators are left as they were.
    """
    from .pipeline import train_run  # the training stack, only when training

    if resume:
        if out is None or recipe is not None:
            raise ConfigError("resume=True continues the run in `out` with its own config: pass out=RUN_DIR "
                              "and, if you like, overrides such as epochs=..., but no recipe")
        cfg = dataclasses.replace(run_config(runs.read_config(out)), **overrides)
    else:
        cfg = _config(recipe, overrides)
    device = distributed.pick_device(str(device))
    run_dir = Path(out) if out is not None else runs.new_run_dir(cfg.recipe)
    metrics = train_run(cfg, run_dir, device, data_dir, resume=resume, progress=progress)
    return Run(run_dir, cfg, RunMetrics(metrics), read_json(run_dir / checkpoint.HISTORY_NAME, {}),
               load(run_dir, device=device))


def finetune(model=None, samples=None, *, out=None, data_dir=None, device="auto", progress: bool = False,
             eval_samples=None, **overrides) -> Run:
    """Adapt a model to a person's labelled digits (`finetuning.py`'s job, as `mnist-cnn finetune`): a Run.

    `model` is a Model or anything `load` takes (None: the shipped model); it is left as it was.
    `samples` is a samples.db, a labelled folder (DIR/<digit>/<name>.png), or MNIST-form images and
    their labels as a pair (x (N, 28, 28), y (N,)). `overrides` are FinetuneConfig fields (steps=300,
    holdout=0.2, lr=0.01, ...). `eval_samples`, a pair (x, y) like `samples`, is measured before and
    after too ("extra" in the metrics). `out` defaults to runs/finetune-TIME. Prints nothing unless `progress`.
    """
    from .finetuning import finetune_run  # the training stack, only when training
    from .recipes import FinetuneConfig
    from .imagefolder import Labelled, load_labelled

    if samples is None:
        raise InputError("finetune needs samples: a samples.db, a labelled folder, or a pair (x, y)")
    if isinstance(samples, (tuple, list)):
        samples = Labelled(*_labelled_pair(samples, "samples"), source="arrays")
    elif not isinstance(samples, Labelled):
        samples = load_labelled(samples)
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    if set(overrides) - fields:
        raise ConfigError(f"unknown finetune field(s): {', '.join(sorted(set(overrides) - fields))}")
    cfg = FinetuneConfig(**overrides)
    base = model if isinstance(model, Model) else load(model)
    if not isinstance(base.net, torch.nn.Module):
        raise UserError(f"{base.source}: fine-tuning needs a torch checkpoint, not an ONNX model")
    device = distributed.pick_device(str(device))
    run_dir = Path(out) if out is not None else runs.new_run_dir(cfg.recipe)
    extra = _labelled_pair(eval_samples, "eval_samples") if eval_samples is not None else None
    on_step = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc="fine-tuning", unit="step")
        on_step = lambda row: bar.update(1)  # noqa: E731
    try:
        metrics = finetune_run((base.net, base.meta), samples, cfg, run_dir, device, data_dir,
                               base_name=base.source, eval_samples=extra, on_step=on_step)
    finally:
        if progress:
            bar.close()
    return Run(run_dir, cfg, RunMetrics(metrics), read_json(run_dir / checkpoint.HISTORY_NAME, {}),
               load(run_dir, device=device))


def _labelled_pair(pair, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 (N, 28, 28), int64 (N,)) from a pair of MNIST-form images and labels 0..9."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise InputError(f"{what} as arrays is a pair (x (N, 28, 28), y (N,))")
    x = as_pixels(pair[0], f"{what} image batch")
    y = torch.as_tensor(pair[1]).long().flatten()
    if x.dim() != 3 or tuple(x.shape[1:]) != (28, 28) or len(x) != len(y) or not len(y):
        raise InputError(f"{what}: x is MNIST-form images (N, 28, 28) and y their N labels; got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if y.min() < 0 or y.max() > 9:
        raise InputError(f"{what}: labels are digits 0 to 9")
    return x, y


def _config(recipe, overrides: dict) -> TrainConfig:
    if recipe is None or isinstance(recipe, str):
        return get_config(recipe or "default", **overrides)
    if isinstance(recipe, dict):
        recipe = config_from_dict(recipe)
    if not isinstance(recipe, TrainConfig):
        raise ConfigError(f"a recipe is a name, a TrainConfig or its dict, not a {type(recipe).__name__}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(recipe)}
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(recipe, **overrides)
