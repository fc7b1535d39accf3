"""mnist-cnn: handwritten-digit recognition with convolutional networks in PyTorch.

The front door for a notebook (from `api.py`, imported on first use, so `import mnist_cnn`
loads neither torch nor anything else):

    import mnist_cnn
    model = mnist_cnn.load()                       # the shipped model; or "runs/x", "model.onnx", "latest"
    model.predict("seven.jpg").digit
    run = mnist_cnn.train("fast", epochs=1, limit_train=5000, out="runs/try")
    mnist_cnn.evaluate(run.model).accuracy
    mine = mnist_cnn.finetune(model, "~/.cache/mnist-cnn/samples.db")   # or a labelled folder

Everything else is importable by module (`mnist_cnn.checkpoint`, `mnist_cnn.training`, ...).
The stages' modules are named `training`, `evaluation` and `finetuning`, so that `mnist_cnn.train`,
`mnist_cnn.evaluate` and `mnist_cnn.finetune` are always these functions, whatever has been imported.
"""

__version__ = "0.1.0"

_API = ("load", "train", "evaluate", "finetune", "Model", "Run", "Prediction", "NumberPrediction", "Metrics",
        "UserError")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        from . import api

        value = getattr(api, name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'mnist_cnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
