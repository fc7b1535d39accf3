"""Export a checkpoint to ONNX (fp32, or int8 by ONNX Runtime static quantization) and run it.

The exported file is self-describing like our checkpoints: its `metadata_props`
hold the preprocessing contract (input layout, mean, std, class names) and the
checkpoint's full metadata as JSON, so `load_onnx` (and any other program) can
use it without this package's training code. The batch dimension is dynamic and
the output is logits. Export checks itself before writing anything: parity with
eager PyTorch on test images and, for int8, the accuracy drop on the test set.

onnx, onnxscript and onnxruntime are the optional extra `mnist-cnn[export]`;
they are imported only when used.

    mnist-cnn export --format onnx --int8 --out model.int8.onnx
"""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, data, models, validate
from .augment import to_float
from .evaluation import forward_label, predict_logits, uses_tta
from .files import atomic_write

INSTALL_HINT = "pip install 'mnist-cnn[export]'"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
META_KEY = checkpoint.META_KEY  # the checkpoint's metadata JSON, as in our safetensors files
PARITY_IMAGES = 1000  # test images compared against eager PyTorch
PARITY_MAX_ABS_LOGIT = 1e-4
INT8_MAX_DROP = 0.1  # accuracy points lost to int8 that we accept (on the whole test set)
CALIBRATION_IMAGES = 2000  # training images that set the int8 activation ranges
CALIBRATION_SEED = 0


class ExportError(checkpoint.CheckpointError):
    """ONNX export or loading failed (missing extra, foreign file, failed check), phrased for a person."""


def _require(*modules: str) -> None:
    """Import the optional extra's modules, or say how to install them."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ExportError(f"ONNX support needs the optional 'export' extra ({name} is missing); "
                              f"install it with: {INSTALL_HINT}") from None


# ------------------------------------------------------------------ export


def to_onnx(model: torch.nn.Module, path: Path) -> None:
    """Write `model` as fp32 ONNX with a dynamic batch dimension: input (B, 1, 28, 28) -> logits (B, 10)."""
    _require("onnx", "onnxscript")
    net, temperature = models.unwrap(model)  # no compile or DDP wrapper; the calibration is part of the graph
    model = models.with_temperature(net, temperature).cpu().eval()
    example = torch.zeros(2, 1, 28, 28)  # batch 2, not 1: a size-1 dim would be specialized away
    batch = torch.export.Dim("batch", min=1)
    # The exporter logs about optional torchvision ops and warns about its own internals;
    # neither concerns our models, and the CLI should print only our results.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                                        optimize=True, verbose=False)
    except Exception as exc:  # the exporter raises many types; all mean the same to a user
        raise ExportError(f"torch.onnx could not export this model: {str(exc).splitlines()[0]}") from None
    finally:
        quiet.setLevel(level)
    program.save(str(path), external_data=False)


def quantize_int8(fp32_path: Path, out_path: Path, calibration: torch.Tensor) -> None:
    """Static int8 quantization (QDQ, per-channel int8 weights, uint8 activations) calibrated on `calibration`.

    `calibration` is a normalized float batch (N, 1, 28, 28) of training images.
    """
    _require("onnx", "onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        """Feeds the calibration images to the quantizer's range observers, 100 at a time."""

        def __init__(self, x: np.ndarray):
            self.batches = iter([{INPUT_NAME: x[i:i + 100]} for i in range(0, len(x), 100)])

        def get_next(self):
            return next(self.batches, None)

    prepared = Path(out_path).with_suffix(".pre.onnx")
    # Shape inference and graph fusion first, as ONNX Runtime recommends, so that
    # quantization sees the same fused Conv/Relu graph the runtime will execute.
    quant_pre_process(str(fp32_path), str(prepared))
    reader = Calibration(calibration.numpy().astype(np.float32))
    # Only the layers with weights worth quantizing: a batch norm that follows a
    # max-pool (`pool_early`) cannot be folded into its conv, and per-channel
    # quantization of its 1-D weight only draws warnings (same accuracy and speed).
    quantize_static(str(prepared), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"])


def contract(meta: dict) -> dict[str, str]:
    """The metadata_props written into the ONNX file: what a foreign program needs, plus our metadata."""
    return {
        "input_name": INPUT_NAME,
        "input_layout": "NCHW float32 (batch, 1, 28, 28)",
        "preprocessing": meta.get("input", "uint8 / 255, then (x - mean) / std"),
        "mean": repr(float(meta["mean"])),
        "std": repr(float(meta["std"])),
        "classes": json.dumps(list(meta["classes"])),
        "output_name": OUTPUT_NAME,
        "output": "logits (batch, 10) float32, already divided by the temperature; softmax gives class "
                  "probabilities",
        "temperature": repr(float(meta.get("temperature", 1.0))),
        "precision": meta.get("export", {}).get("precision", "fp32"),
        META_KEY: json.dumps(meta),
    }


def write_with_contract(onnx_path: Path, out: Path, meta: dict) -> None:
    """Copy an ONNX file to `out` (atomically) with our contract in its metadata_props."""
    import onnx

    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    for key, value in contract(meta).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"mnist-cnn {meta['arch']} digit classifier; see metadata_props for the input contract"
    atomic_write(Path(out), proto.SerializeToString())


def export_checkpoint(model_path: Path | str | None, out: Path, int8: bool = False, data_dir: Path | None = None,
                      calibration_images: int = CALIBRATION_IMAGES) -> dict:
    """Export a checkpoint (None: the shipped model) to ONNX at `out`, verified, and return a report.

    Nothing is written unless parity holds (max |logit difference| <= 1e-4 and the same
    predictions on 1,000 test images) and, with `int8`, the test accuracy drops by at
    most INT8_MAX_DROP points against eager fp32.
    """
    _require("onnx", "onnxscript", "onnxruntime")
    import onnx
    import onnxruntime

    if Path(out).is_dir():
        raise ExportError(f"{out} is a folder; --out takes the .onnx file to write")
    model, meta = checkpoint.load_model(model_path)
    mean, std = meta["mean"], meta["std"]
    folder = data.acquire(data_dir)
    test_x, test_y = data.read_split(folder, "test")
    report = {"precision": "int8" if int8 else "fp32",
              "source": str(model_path or checkpoint.default_model_path()),
              "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                           "onnxruntime": onnxruntime.__version__}}
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-export-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        to_onnx(model, fp32_path)
        n = min(PARITY_IMAGES, len(test_x))
        eager = predict_logits(model, test_x[:n], mean, std)
        exported = predict_logits(OnnxModel(session(fp32_path)), test_x[:n], mean, std)
        max_diff = float((eager - exported).abs().max())
        same = bool((eager.argmax(1) == exported.argmax(1)).all())
        report["parity"] = {"images": n, "max_abs_logit_diff": max_diff, "same_predictions": same}
        if max_diff > PARITY_MAX_ABS_LOGIT or not same:
            raise ExportError(f"ONNX output differs from PyTorch on {n} test images (max |logit diff| "
                              f"{max_diff:.2e}, same predictions: {same}); nothing written")
        final = fp32_path
        if int8:
            final = Path(tmp) / "int8.onnx"
            train_x, _ = data.read_split(folder, "train")
            pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(CALIBRATION_SEED))
            quantize_int8(fp32_path, final, to_float(train_x[pick[:calibration_images]], mean, std))
            tta = uses_tta(meta)  # the forward the file will be served with (predict.Predictor)
            fp32_acc = accuracy(model, test_x, test_y, mean, std, tta)
            int8_acc = accuracy(OnnxModel(session(final)), test_x, test_y, mean, std, tta)
            report["int8"] = {"calibration_images": calibration_images, "test_images": len(test_y),
                              "fp32_accuracy": fp32_acc, "int8_accuracy": int8_acc, "drop": fp32_acc - int8_acc,
                              "forward": forward_label(tta)}
            if fp32_acc - int8_acc > INT8_MAX_DROP:
                raise ExportError(f"int8 loses {fp32_acc - int8_acc:.2f} accuracy points on the test set "
                                  f"({fp32_acc:.2f}% -> {int8_acc:.2f}%), more than {INT8_MAX_DROP}; nothing written")
            # The file's own accuracy is the int8 model's, measured with the forward it is served with.
            meta = {**meta, "metrics": {**meta.get("metrics", {}), "test_accuracy": int8_acc,
                                        "test_accuracy_fp32": fp32_acc, "test_forward": forward_label(tta)}}
        write_with_contract(final, out, {**meta, "export": report})
    report["out"] = str(out)
    report["bytes"] = Path(out).stat().st_size
    return report


def accuracy(model, x: torch.Tensor, y: torch.Tensor, mean: float, std: float, tta: bool = False) -> float:
    """Percent of uint8 images (N, 28, 28) that `model` classifies as `y` (with TTA: `evaluation.predict_logits`)."""
    return float((predict_logits(model, x, mean, std, tta=tta).argmax(1) == y).double().mean() * 100)


# -------------------------------------------------------------------- load


def session(path: Path | str, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimization on.

    `threads` sets intra-op threads (None: ONNX Runtime's default, one per core);
    1 is often fastest for single images, where thread hand-offs cost more than they save.
    """
    _require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = threads
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise ExportError(f"{path}: not a valid ONNX model: {str(exc).splitlines()[0]}") from None


class OnnxModel:
    """A callable like our torch models: float (B, 1, 28, 28) tensor -> logits (B, 10) tensor."""

    def __init__(self, sess):
        self.session = sess
        self.input_name = sess.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            return torch.empty(0, 10, device=x.device)
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        logits = self.session.run(None, {self.input_name: batch})[0]
        return torch.from_numpy(logits).to(x.device)

    def eval(self) -> "OnnxModel":  # so evaluate() and predict_logits() accept it like a torch model
        return self


def read_metadata(sess, path: Path | str = "model") -> dict:
    """Our checkpoint metadata from a session's metadata_props, or a clear error."""
    props = sess.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise ExportError(f"{path}: this ONNX file has no {META_KEY!r} metadata, so its preprocessing is "
                          f"unknown; export it with `mnist-cnn export --format onnx`")
    try:
        meta = json.loads(props[META_KEY])
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: {META_KEY!r} metadata is not valid JSON: {exc}") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != checkpoint.FORMAT_VERSION:
        raise ExportError(f"{path}: metadata format version {version!r}, "
                          f"this mnist-cnn reads version {checkpoint.FORMAT_VERSION}")
    missing = [k for k in ("arch", "mean", "std", "classes") if k not in meta]
    if missing:
        raise ExportError(f"{path}: metadata lacks {', '.join(missing)}")
    try:  # the checks load_model makes, so that serve refuses a broken .onnx before it listens too
        validate.check_metadata(meta, checkpoint.FORMAT_VERSION)
    except ValueError as exc:
        raise ExportError(f"{path}: {exc}") from None
    return meta


def load_onnx(path: Path | str | None, threads: int | None = None) -> tuple[OnnxModel, dict]:
    """(callable backed by an ONNX Runtime session, metadata shaped like `checkpoint.load_model`'s)."""
    if path is None:  # no ONNX model ships with the package; the torch backend's default has no twin here
        raise ExportError("the onnx backend needs an .onnx file: make one with "
                          "`mnist-cnn export --format onnx --out model.onnx` and pass its path")
    sess = session(path, threads)
    model, meta = OnnxModel(sess), read_metadata(sess, path)
    try:
        validate.check_works(model, meta)
    except ValueError as exc:
        raise ExportError(f"{path}: {exc}") from None
    return model, meta
