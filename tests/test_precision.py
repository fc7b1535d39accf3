"""Mixed precision (precision.py): what `auto` chooses from the hardware's flags, and bf16 training on a CPU.

The choice is a pure function of the CPU flags (and oneDNN, and CUDA's bf16), so it is tested
for machines we do not have; the training tests run a few bf16 steps here, whatever the CPU.
"""

from __future__ import annotations

import json

import pytest
import torch

from mnist_cnn import checkpoint, cli, models, precision, training
from mnist_cnn.errors import ConfigError
from mnist_cnn.recipes import get_config

AMD_EPYC_ZEN3 = {"fpu", "sse4_2", "avx", "avx2", "fma"}  # this project's machine: no bf16 arithmetic
ZEN4 = AMD_EPYC_ZEN3 | {"avx512f", "avx512_bf16"}
SAPPHIRE_RAPIDS = AMD_EPYC_ZEN3 | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize("flags, expected", [
    (AMD_EPYC_ZEN3, "fp32"), (AMD_EPYC_ZEN3 | {"avx512f"}, "fp32"), (set(), "fp32"),
    (ZEN4, "bf16"), (SAPPHIRE_RAPIDS, "bf16")])
def test_auto_on_a_cpu_picks_bf16_only_where_the_flags_say_it_is_native(flags, expected):
    chosen = precision.choose("auto", "cpu", flags)
    assert chosen.name == expected
    assert chosen.reason.startswith("auto: ")


def test_auto_says_why():
    assert "amx_bf16" in precision.choose("auto", "cpu", SAPPHIRE_RAPIDS).reason
    assert "neither AMX nor AVX-512 BF16" in precision.choose("auto", "cpu", AMD_EPYC_ZEN3).reason
    assert precision.choose("auto", "cpu", SAPPHIRE_RAPIDS, onednn=False).name == "fp32"  # nothing would use AMX


def test_auto_on_cuda_picks_bf16_else_fp16_and_elsewhere_fp32():
    assert precision.choose("auto", "cuda", cuda_bf16=True).name == "bf16"
    assert precision.choose("auto", "cuda", cuda_bf16=False).name == "fp16"
    assert precision.choose("auto", "mps").name == "fp32"


def test_an_explicit_precision_is_taken_as_asked():
    assert precision.choose("bf16", "cpu", AMD_EPYC_ZEN3) == precision.Precision("bf16", "requested")
    assert precision.choose("fp32", "cpu", SAPPHIRE_RAPIDS).name == "fp32"
    assert precision.choose("fp16", "cuda").name == "fp16"


def test_fp16_on_a_cpu_is_refused_with_one_clear_error(capsys):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        precision.choose("fp16", "cpu", SAPPHIRE_RAPIDS)
    with pytest.raises(ConfigError, match="precision"):
        get_config("fast", precision="fp8")
    # Through the CLI: refused before MNIST is loaded or anything trained, in one line.
    assert cli.main(["train", "--recipe", "fast", "--precision", "fp16", "--device", "cpu",
                     "--data-dir", "/nonexistent"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fp16 needs a CUDA GPU" in err and err.count("\n") == 1


def test_the_gradient_scaler_is_on_for_fp16_only():
    assert not precision.Precision("bf16", "").scaler("cpu").is_enabled()
    assert not precision.Precision("fp32", "").scaler("cpu").is_enabled()


def _train_steps(cfg, mnist):
    model = training.build(cfg, "cpu")
    optimizer = training.make_optimizer(model, cfg)
    steps = len(mnist.train_x) // cfg.batch_size
    training.train_one_epoch(model, optimizer, mnist, cfg, 0, 0, steps, steps)
    return model


def test_bf16_training_runs_in_bf16_and_keeps_fp32_weights():
    from conftest import tiny_mnist

    mnist = tiny_mnist(n_train=128)  # two steps: bf16 convolutions are slow on a CPU without bf16 arithmetic
    bf16 = _train_steps(get_config("fast", batch_size=64, precision="bf16"), mnist)
    fp32 = _train_steps(get_config("fast", batch_size=64, precision="fp32"), mnist)
    assert all(t.dtype == torch.float32 for t in bf16.state_dict().values() if t.is_floating_point())
    # The same seed and batches: only the arithmetic differs, so bf16 really ran (by bf16's rounding) ...
    diff = max((a - b).abs().max().item() for a, b in zip(bf16.parameters(), fp32.parameters()))
    assert diff > 1e-4
    # ... and two steps of it stay close to fp32 (bf16 keeps about 3 significant digits).
    assert diff < 0.05


def test_precision_is_in_the_config_the_checkpoint_and_metrics(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "--recipe", "fast", "--precision", "bf16", "--device", "cpu", "--limit-train", "128",
                     "--batch-size", "64", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["precision"], metrics["precision_reason"]) == ("bf16", "requested")
    assert json.loads((run / "config.json").read_text())["precision"] == "bf16"
    _, meta = checkpoint.load_model(run)
    assert meta["config"]["precision"] == "bf16" and meta["metrics"]["precision"] == "bf16"
    model, _ = checkpoint.load_model(run)
    assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())


def test_auto_is_resolved_and_recorded(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--recipe", "fast", "--device", "cpu", "--out", str(run)]) == 0
    expected = precision.resolve("auto", "cpu")
    assert f"precision {expected.name}: {expected.reason}" in capsys.readouterr().out  # the run says what it chose
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["precision"], metrics["precision_reason"]) == (expected.name, expected.reason)
    assert json.loads((run / "config.json").read_text())["precision"] == "auto"


def test_the_ema_update_is_the_lerp_it_replaced():
    """`update_ema` moved to one fused `_foreach_lerp_`; the oracle is the per-tensor loop it replaced."""
    cfg = get_config("fast")
    model, ema = training.build(cfg, "cpu"), training.build(get_config("fast", seed=1), "cpu")
    with torch.no_grad():
        model.features[0][2].num_batches_tracked.fill_(7)
    expected = {k: v.clone() for k, v in ema.state_dict().items()}
    for k, p in model.state_dict().items():
        expected[k] = torch.lerp(expected[k], p, 1 - 0.9) if p.is_floating_point() else p.clone()
    training.update_ema(training.ema_pairs(ema, model), 0.9, step=10_000)  # past the warm-up: the decay is 0.9
    for k, v in ema.state_dict().items():
        assert torch.allclose(v, expected[k]), k


@pytest.mark.slow  # torch.compile takes tens of seconds on a CPU
def test_the_compiled_step_trains_and_saves_the_plain_network(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "--recipe", "fastest", "--compile", "--device", "cpu", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 50  # tiny_mnist's bars are learnable in one epoch (chance: 10%)
    model, meta = checkpoint.load_model(run)
    assert meta["config"]["compile"] is True
    plain = training.build(get_config("fastest"), "cpu")
    network, _ = models.unwrap(model)  # inside its calibration
    assert network.state_dict().keys() == plain.state_dict().keys()  # no `_orig_mod.` prefix: the network itself


def test_finetuning_tunes_in_the_precision_asked_records_it_and_keeps_fp32_weights(tiny_data, tmp_path):
    import mnist_cnn
    from conftest import tiny_mnist

    d = tiny_mnist(n_train=40, n_val=0, n_test=0, seed=1)
    base = mnist_cnn.load()
    runs = {p: mnist_cnn.finetune(base, (d.train_x, d.train_y), steps=2, batch_size=16, holdout=0, device="cpu",
                                  precision=p, out=tmp_path / p) for p in ("bf16", "fp32")}
    assert (runs["bf16"].metrics["precision"], runs["fp32"].metrics["precision"]) == ("bf16", "fp32")
    assert runs["bf16"].config.precision == "bf16"
    nets = {p: checkpoint.load_model(run.path)[0] for p, run in runs.items()}
    bf16, fp32 = (models.unwrap(nets[p])[0].state_dict() for p in ("bf16", "fp32"))
    assert all(t.dtype == torch.float32 for t in bf16.values() if t.is_floating_point())
    diff = max((bf16[k] - fp32[k]).abs().max().item() for k in bf16 if bf16[k].is_floating_point())
    assert 1e-5 < diff < 0.05  # the same batches: only bf16's rounding tells the two apart


def test_fp16_finetuning_on_a_cpu_is_refused_before_it_starts(tiny_data, tmp_path):
    import mnist_cnn
    from conftest import tiny_mnist

    d = tiny_mnist(n_train=20, n_val=0, n_test=0, seed=1)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        mnist_cnn.finetune(None, (d.train_x, d.train_y), steps=1, device="cpu", precision="fp16", out=tmp_path / "r")
    assert not (tmp_path / "r" / "metrics.json").exists()
