"""dynfield.fit: one command from a user's file to a checkpoint that compress takes."""

import json

import numpy as np
import pytest
import xarray as xr

from dynfield import compress, fit

TINY = ["model.hidden=8", "model.code_dim=8", "model.codebook_size=16", "trainer.batch_size=4", "trainer.log_every=1",
        "trainer.warmup_steps=1", "trainer.threads=1"]


def user_file(path, periodic=True, n_time=12):
    """(time, lat, lon) fields: a travelling wave that wraps around, or one plus a ramp that does not."""
    t = np.arange(n_time)[:, None, None]
    lat, lon = np.linspace(0, 2 * np.pi, 32, endpoint=False), np.linspace(0, 2 * np.pi, 32, endpoint=False)
    wave = np.sin(lon[None, None, :] + 0.3 * t) * np.cos(2 * lat[None, :, None])
    field = wave if periodic else wave + np.linspace(0, 5, 32)[None, None, :]
    ds = xr.Dataset({"z500": (("time", "lat", "lon"), field.astype(np.float32))}, coords={"lat": lat, "lon": lon})
    ds.to_netcdf(path)
    return path


@pytest.mark.parametrize("periodic", [True, False])
def test_periodicity_is_detected(tmp_path, periodic):
    from dynfield.data import open_fields

    with open_fields(user_file(tmp_path / "run.nc", periodic)) as ds:
        assert fit.wraps(ds, ["z500"]) is periodic


@pytest.mark.parametrize("grains, levels, stages", [(None, 1, 8), ("dynamic", 2, 4)])
def test_fit_writes_a_checkpoint_compress_takes(tmp_path, capsys, grains, levels, stages):
    from dynfield.checkpoint import load_model

    src = user_file(tmp_path / "run.nc")
    out = tmp_path / "model.pt"
    choice = [] if grains is None else ["--grains", grains]
    assert fit.main([str(src), "--out", str(out), "--minutes", "0.03", *choice, "--set", *TINY]) == 0
    model, _ = load_model(out)
    assert (model.num_levels, model.quantizer.num_stages) == (levels, stages)
    assert "periodic" in capsys.readouterr().out
    provenance = json.loads((tmp_path / "model.pt.json").read_text())
    assert provenance["variables"] == ["z500"] and provenance["periodic"] is True
    assert provenance["training"]["steps"] > 0 and provenance["command"][:3] == ["python", "-m", "dynfield.fit"]
    assert compress.main([str(src), str(tmp_path / "run.dfz"), "--checkpoint", str(out), "--max-abs-error", "0.01",
                          "--quiet"]) == 0


def test_fit_refuses_what_it_cannot_use(tmp_path, capsys):
    src = user_file(tmp_path / "run.nc")
    assert fit.main([str(src), "--out", str(tmp_path / "m.pt"), "--variables", "t2m"]) == 1
    assert "t2m" in capsys.readouterr().err
    assert fit.main([str(src), "--out", str(tmp_path / "m.pt"), "--minutes", "0"]) == 1
    assert not (tmp_path / "m.pt").exists()
