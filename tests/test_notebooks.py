"""Every notebook in notebooks/ is committed executed at full size (its outputs and plots
visible where the repository is browsed), and runs top to bottom at tiny sizes."""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb", "02_reproduction.ipynb", "03_export_and_serving.ipynb"]


PLOTS = {"01_quickstart": 2, "02_reproduction": 1, "03_export_and_serving": 0}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_executed_with_its_outputs(path):
    """Run top to bottom in one kernel (execution counts 1, 2, ...), no error, outputs to the
    last cell, the plots as images, no terminal colour codes in the text."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), (
        f"{path.name}: commit it executed top to bottom (see notebooks/README.md)")
    outputs = [output for cell in code for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert code[-1].outputs and sum(bool(cell.outputs) for cell in code) >= len(code) // 2
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == PLOTS[path.stem]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for o in outputs)
    assert "\x1b[" not in text and "TF_GRU4REC_NB_SMALL" not in text
    assert "WARNING:tensorflow" not in text and "oneDNN" not in text  # no noise to read past


# The reproduction notebook's run is `slow` (default suite time, README: Tests); it is still
# checked by the structure test above, and `reproduce` by its own slow test.
RUN_PARAMS = [pytest.param(p, marks=pytest.mark.slow) if p.stem == "02_reproduction" else p
              for p in NOTEBOOKS]


@pytest.mark.parametrize("path", RUN_PARAMS, ids=lambda p: p.stem)
def test_notebook_runs_at_tiny_sizes(path, monkeypatch, tmp_path):
    monkeypatch.setenv("TF_GRU4REC_NB_SMALL", "1")
    monkeypatch.setenv("TF_GRU4REC_DATA", str(tmp_path / "no-data"))  # bundled data only
    for name in ("TF_GRU4REC_CLICKS", "TF_GRU4REC_TRAIN", "TF_GRU4REC_TEST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
