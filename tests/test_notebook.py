"""The tutorial notebook: committed without outputs, and it runs top to bottom.

The run executes every cell with nbclient in a `python3` kernel of this same interpreter
(ipykernel's own kernel spec, whose `python` jupyter_client replaces with sys.executable), in a
scratch folder laid out like the repository, so its `runs/` land there. It trains on small
subsets (the notebook's `FULL = False`): a few minutes on 2 CPU cores.

    pytest tests/test_notebook.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "tutorial.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    assert code
    for i, cell in enumerate(code):
        assert cell["outputs"] == [] and cell["execution_count"] is None, \
            f"code cell {i} has outputs; strip them: jupyter nbconvert --clear-output --inplace {NOTEBOOK.name}"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "FULL = False" in "".join(code[0]["source"]), "the notebook runs on small subsets by default"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(mnist_dir, tmp_path):
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "tests").symlink_to(ROOT / "tests")  # the notebook shows ../tests/data/photos when it is there
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(tmp_path / "notebooks")}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert Path(text.split()[-1]).resolve() == Path(sys.executable).resolve(), "the kernel ran another Python"
    assert "GroundTruth:" in text and "Predicted:" in text
    assert "'2026'" in text  # read_number on the drawn number
    assert any(o.output_type == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    assert (tmp_path / "notebooks" / "runs" / "tutorial" / "fast" / "model.safetensors").is_file()
