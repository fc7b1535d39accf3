"""ONNX export: parity with eager PyTorch, dynamic batch, the int8 bound, the metadata contract, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch

from mnist_cnn import checkpoint, cli, data, export, models
from mnist_cnn.augment import to_float
from mnist_cnn.evaluation import evaluate

SHIPPED = None  # the model shipped in the package


@pytest.fixture(scope="module")
def shipped():
    return checkpoint.load_model(SHIPPED)


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory, mnist_dir):
    """The shipped model exported through the CLI, as a user would."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    model_args = ["--model", str(SHIPPED)] if SHIPPED else []
    assert cli.main(["export", *model_args, "--data-dir", str(mnist_dir), "--format", "onnx", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("onnx") / "model.int8.onnx"
    return out, export.export_checkpoint(SHIPPED, out, int8=True, data_dir=mnist_dir)


def tiny_checkpoint(path, arch="bnnet", **arch_args):
    """A small random-weight checkpoint: exports fast, so the failure paths stay cheap."""
    torch.manual_seed(0)
    model = models.build_model(arch, **arch_args).eval()
    meta = checkpoint.make_metadata(arch, arch_args, data.MNIST_MEAN, data.MNIST_STD, config={"recipe": "test"})
    checkpoint.save_model(path, model, meta)
    return path


def test_parity_at_batch_1_7_1024(shipped, fp32_file, test_split):
    model, meta = shipped
    onnx_model, onnx_meta = export.load_onnx(fp32_file)
    x = to_float(test_split[0][:1032], meta["mean"], meta["std"])
    with torch.inference_mode():
        for start, size in ((0, 1), (1, 7), (8, 1024)):
            batch = x[start:start + size]
            want, got = model(batch), onnx_model(batch)
            assert got.shape == (size, 10) and got.dtype == torch.float32
            assert (want - got).abs().max() <= export.PARITY_MAX_ABS_LOGIT
            assert torch.equal(want.argmax(1), got.argmax(1))


def test_int8_accuracy_drop_within_bound(shipped, int8_export, fp32_file, test_split):
    model, meta = shipped
    path, report = int8_export
    int8_model, int8_meta = export.load_onnx(path)
    x, y = test_split
    tta = meta["config"]["tta"]  # measured with the forward it is served with (the shipped recipe's: TTA)
    fp32 = evaluate(model, x, y, meta["mean"], meta["std"], tta=tta).accuracy
    int8 = evaluate(int8_model, x, y, meta["mean"], meta["std"], tta=tta).accuracy
    assert fp32 - int8 <= export.INT8_MAX_DROP
    assert int8_meta["metrics"]["test_accuracy"] == pytest.approx(int8)
    assert int8_meta["metrics"]["test_forward"] == report["int8"]["forward"] == "with TTA (5 shifts)"
    assert report["int8"]["fp32_accuracy"] == pytest.approx(fp32)
    assert report["int8"]["test_images"] == len(y) == 10000
    # It really is quantized: int8 weights, and a smaller file than fp32.
    assert path.stat().st_size < fp32_file.stat().st_size
    graph = onnx.load(str(path)).graph
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    assert "DequantizeLinear" in {n.op_type for n in graph.node}


def test_metadata_carries_the_contract(shipped, fp32_file):
    _, meta = shipped
    _, onnx_meta = export.load_onnx(fp32_file)
    for key in ("arch", "arch_args", "mean", "std", "classes", "config", "metrics", "format_version", "data_sha256"):
        assert onnx_meta[key] == meta[key], key
    assert onnx_meta["export"]["parity"]["same_predictions"] is True
    props = {p.key: p.value for p in onnx.load(str(fp32_file)).metadata_props}
    assert float(props["mean"]) == meta["mean"] and float(props["std"]) == meta["std"]
    assert props["classes"] == '["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]'
    assert props["input_layout"].startswith("NCHW") and props["precision"] == "fp32"


FOREIGN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxruntime as ort
    path, images = sys.argv[1], np.load(sys.argv[2])
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    props = sess.get_modelmeta().custom_metadata_map
    mean, std = float(props["mean"]), float(props["std"])
    x = ((images.astype(np.float32) / 255 - mean) / std)[:, None]
    preds = []
    for size in (1, 3, 64, 1000):  # any batch size
        start = len(preds)
        out = sess.run(None, {props["input_name"]: x[start:start + size]})[0]
        assert out.shape == (min(size, len(x) - start), 10), out.shape
        preds += out.argmax(1).tolist()
    assert not {"torch", "mnist_cnn"} & set(sys.modules), "the foreign program must not use our stack"
    print(json.dumps([json.loads(props["classes"])[p] for p in preds]))
""")


def test_a_foreign_onnxruntime_program_runs_it(shipped, fp32_file, test_split, tmp_path):
    model, meta = shipped
    images = test_split[0][:1068]
    np.save(tmp_path / "images.npy", images.numpy())
    out = subprocess.run([sys.executable, "-c", FOREIGN, str(fp32_file), str(tmp_path / "images.npy")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with torch.inference_mode():
        want = model(to_float(images, meta["mean"], meta["std"])).argmax(1)
    assert [int(c) for c in json.loads(out.stdout)] == want.tolist()


def test_torch_and_onnx_backends_give_the_same_answers(fp32_file, test_split):
    from mnist_cnn.predict import Predictor

    x = test_split[0][:300]
    torch_preds = Predictor.from_path(SHIPPED, backend="torch").predict_arrays(x)
    onnx_preds = Predictor.from_path(fp32_file, backend="onnx").predict_arrays(x)
    assert [p.digit for p in onnx_preds] == [p.digit for p in torch_preds]
    assert np.allclose([p.probabilities for p in onnx_preds], [p.probabilities for p in torch_preds], atol=1e-5)
    with pytest.raises(checkpoint.CheckpointError, match="needs an .onnx file"):
        Predictor.from_path(None, backend="onnx")


def test_a_foreign_onnx_file_is_refused(tmp_path):
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 1, 28, 28])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 1, 28, 28])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["input"], ["logits"])], "foreign", [x], [y])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "foreign.onnx")
    with pytest.raises(checkpoint.CheckpointError, match="no 'mnist_cnn' metadata"):
        export.load_onnx(tmp_path / "foreign.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(checkpoint.CheckpointError, match="not a valid ONNX model"):
        export.load_onnx(tmp_path / "junk.onnx")
    with pytest.raises(checkpoint.CheckpointError, match="no such ONNX file"):
        export.load_onnx(tmp_path / "missing.onnx")


@pytest.mark.parametrize("bound, message", [("PARITY_MAX_ABS_LOGIT", "differs from PyTorch"),
                                            ("INT8_MAX_DROP", "int8 loses")])
def test_a_failed_check_writes_nothing(bound, message, monkeypatch, tmp_path, mnist_dir):
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors", widths=(4, 8), depth=1)
    monkeypatch.setattr(export, bound, -100.0)  # an impossible bound: the check must fail
    with pytest.raises(export.ExportError, match=f"{message}.*nothing written"):
        export.export_checkpoint(ckpt, tmp_path / "out.onnx", int8=True, data_dir=mnist_dir, calibration_images=200)
    assert not (tmp_path / "out.onnx").exists()


def test_missing_extra_says_how_to_install(monkeypatch, tmp_path, capsys, fp32_file):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(export.ExportError, match=r"pip install 'mnist-cnn\[export\]'"):
        export.load_onnx(fp32_file)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert cli.main(["export", "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install 'mnist-cnn[export]'" in err
    assert not (tmp_path / "m.onnx").exists()
