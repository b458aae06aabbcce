"""The grain-allocation notebook: paired with its script, stored without outputs, and runs top to bottom."""

from pathlib import Path

import jupytext
import nbformat
import torch
from ipykernel.kernelspec import install as install_kernel
from nbclient import NotebookClient

from dynfield.checkpoint import save_checkpoint
from dynfield.data import FieldDataset, compute_stats, ensure_dataset, open_fields
from dynfield.models import DQVAE, total_loss

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "grain_allocation.ipynb"
SCRIPT = NOTEBOOK.with_suffix(".py")


def test_script_and_notebook_hold_the_same_cells():
    nb, script = jupytext.read(NOTEBOOK), jupytext.read(SCRIPT)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in script.cells]
    assert nb.metadata["jupytext"]["formats"] == script.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert [c.metadata.get("tags") for c in nb.cells] == [c.metadata.get("tags") for c in script.cells]


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def parameters_cell(nb):
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    return tagged[0]


def train_tiny_tokenizer(path, data, steps=4):
    """A few optimiser steps of a very small DQ-VAE on the fields in `data`, saved as a checkpoint."""
    variables = ["u", "v", "vorticity", "scalar"]
    ds = open_fields(data, variables)
    stats = compute_stats(ds, variables)
    fields = FieldDataset(ds, variables, stats=stats)
    x = torch.stack([fields[i] for i in range(len(fields))])
    torch.manual_seed(0)
    model = DQVAE(in_channels=4, factors=(4, 8), hidden=8, code_dim=8, codebook_size=16, vorticity_channel=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss, _ = total_loss(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(path, model.eval(), kind="tokenizer", stats=stats, variables=variables, periodic=True)


def test_notebook_runs_on_tiny_data(tmp_path, monkeypatch):
    n_fields, resolution, seed = 3, 32, 2
    monkeypatch.setenv("DYNFIELD_DATA_DIR", str(tmp_path / "data"))  # the kernel inherits the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # what the notebook's "builtin" asks for, made here first (the same parameters give the same cached file)
    data = ensure_dataset(tmp_path / "data" / "turbulence", n_samples=n_fields, seed=seed, resolution=resolution,
                          progress=False)
    ckpt = tmp_path / "tokenizer.pt"
    train_tiny_tokenizer(ckpt, data)

    # a kernel spec for this interpreter, whatever kernels the machine has installed
    install_kernel(kernel_name="dynfield-test", prefix=str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters_cell(nb).source = "\n".join([
        f"checkpoint = {str(ckpt)!r}",
        'data = "builtin"',
        f"n_fields = {n_fields}",
        f"resolution = {resolution}",
        f"seed = {seed}",
        "budgets = [0.25, 0.5]",
        "sample = 1",
    ])
    client = NotebookClient(nb, timeout=120, kernel_name="dynfield-test", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "3 snapshots of 32 x 32" in text and "AUC" in text and "background" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 5  # grain maps, Okubo-Weiss, scores, ROC, errors

