"""The training entry point: config composition, a smoke run, resume, DDP, wheel install."""

import csv
import json
import subprocess
import sys

import pytest
import torch
import xarray as xr
from conftest import compose_config, read_steps, train

from dynfield import checkpoint
from dynfield.codec import compress_file, decompress_file
from dynfield.data.dummy import dummy_dataset


def test_default_config_is_the_turbulence_tokenizer():
    cfg = compose_config()
    assert cfg.dataset.name == "turbulence" and cfg.stage == "tokenizer"
    assert cfg.model._target_ == "dynfield.models.DQVAE"
    assert list(cfg.dataset.variables) == ["u", "v", "vorticity", "scalar"]


def test_smoke_experiment_overrides_sizes():
    cfg = compose_config(["experiment=smoke"])
    assert cfg.dataset.generator.resolution == 64 and cfg.trainer.epochs == 2
    assert compose_config(["model=vqvae"]).model.factor == 8


def test_the_256_ladder_experiment_is_the_ladder_recipe_on_256_fields():
    ladder, ladder_256 = compose_config(["experiment=ladder"]), compose_config(["experiment=ladder_256"])
    assert ladder_256.model == ladder.model and ladder_256.trainer.lr == ladder.trainer.lr
    gen = ladder_256.dataset.generator
    assert (gen.resolution, gen.spinup_resolution, ladder_256.trainer.batch_size) == (256, 128, 4)


def test_the_bundled_tokenizer_is_the_ladder_with_two_grains_on_one_channel_of_the_256_data():
    ladder, bundled = compose_config(["experiment=ladder"]), compose_config(["experiment=pretrained"])
    assert list(bundled.model.factors) == [8, 16] and bundled.model.stages == 8
    assert bundled.model.train_fine_ratio == ladder.model.train_fine_ratio
    assert bundled.dataset.generator == compose_config(["experiment=ladder_256"]).dataset.generator
    data = bundled.dataset
    assert (data.crop, data.periodic, data.channel_agnostic, data.train.n_samples) == (128, False, True, 128)
    # the wider candidate differs in its trunk and codes alone
    wide = compose_config(["experiment=pretrained_ladder"])
    assert (wide.model.hidden, wide.model.code_dim) == (32, 64) and wide.dataset == bundled.dataset
    assert {k: v for k, v in wide.model.items() if k not in ("hidden", "channel_mult", "code_dim")} == {
        k: v for k, v in bundled.model.items() if k not in ("hidden", "channel_mult", "code_dim")}


def test_smoke_run_writes_results_and_nothing_in_cwd(smoke_run):
    run_dir, proc, cwd = smoke_run
    assert list(cwd.iterdir()) == []
    for name in ["tokenizer.pt", "last.pt", "metrics.json", "metrics.csv", "stats.json"]:
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tb").iterdir())
    summary = json.loads((run_dir / "metrics.json").read_text())
    val = summary["val"]
    for key in ["rel_l2/u", "rel_l2/vorticity", "psnr", "spectrum_error", "fine_ratio", "codebook_usage", "perplexity"]:
        assert key in val, key
    # 32 fields / batch 8 = 4 steps an epoch, 2 epochs, validated after each.
    assert summary["steps"] == 8 and read_steps(run_dir, "val") == [4, 8]
    assert summary["samples_per_s"] > 0
    # two epochs already learn something: the validation error falls from the first epoch to the second
    with open(run_dir / "metrics.csv") as f:
        rel = [float(r["value"]) for r in csv.DictReader(f) if r["split"] == "val" and r["name"] == "rel_l2"]
    assert len(rel) == 2 and rel[1] < rel[0] and 0 < val["rel_l2"] == pytest.approx(rel[1], rel=1e-4)
    assert str(run_dir) in proc.stdout


def test_checkpoint_alone_encodes_and_decodes(smoke_run):
    run_dir, _, _ = smoke_run
    model, state = checkpoint.load_model(run_dir / "tokenizer.pt")
    assert state["variables"] == ["u", "v", "vorticity", "scalar"]
    assert set(state["stats"]) == set(state["variables"])
    x = torch.randn(2, 4, 64, 64)
    tokens = model.encode(x)
    assert model.decode(tokens).shape == x.shape
    again, _ = checkpoint.load_model(run_dir / "tokenizer.pt")
    assert all(torch.equal(a, b) for a, b in zip(again.encode(x).codes, tokens.codes))


def test_resume_continues_from_saved_step(tmp_path, env, smoke_run):
    run_dir = tmp_path / "run"
    train(run_dir, env, "trainer.epochs=1", cwd=tmp_path)
    assert checkpoint.read_checkpoint(run_dir / "last.pt")["train_state"]["step"] == 4
    proc = train(run_dir, env, f"resume={run_dir}", "trainer.epochs=2", cwd=tmp_path)
    assert "resuming" in proc.stdout and "at step 4/8" in proc.stdout
    assert read_steps(run_dir, "val") == [4, 8]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 8
    # the second run logged only the steps it trained
    train_steps = read_steps(run_dir, "train")
    assert train_steps == sorted(set(train_steps)) and max(train_steps) == 8


def test_refuses_unknown_stage(tmp_path, env):
    proc = subprocess.run(
        [sys.executable, "-m", "dynfield.train", "experiment=smoke", "stage=nope", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "unknown stage 'nope'" in proc.stderr


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path, env, smoke_run):
    run_dir = tmp_path / "ddp"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m")
    train(run_dir, env, "trainer.epochs=1", "trainer.batch_size=4", cwd=tmp_path, launcher=launcher)
    summary = json.loads((run_dir / "metrics.json").read_text())
    # 32 fields over 2 processes of batch 4: 4 steps, 32 samples seen
    assert summary["world_size"] == 2 and summary["steps"] == 4
    # one run directory, written by rank 0 only
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]
    model, _ = checkpoint.load_model(run_dir / "tokenizer.pt")
    assert model.decode(model.encode(torch.randn(1, 4, 64, 64))).shape == (1, 4, 64, 64)


def test_trains_on_user_files_with_renamed_dims(tmp_path, env):
    from dynfield.data.dummy import write_dummy_netcdf

    # Two files of a user's run with lat/lon dims; the last 20 % of samples are held out.
    for i in range(2):
        write_dummy_netcdf(tmp_path / f"run_{i}.nc", n_sample=10, ny=32, nx=40, sample_offset=10 * i,
                           dim_names={"y": "lat", "x": "lon"})
    run_dir = tmp_path / "files_run"
    cmd = [sys.executable, "-m", "dynfield.train", "dataset=files", f"dataset.paths={tmp_path}/run_*.nc",
           "dataset.variables=[u,v]", "dataset.val_fraction=0.2", "model.hidden=16", "model.code_dim=16",
           "model.codebook_size=32", "trainer.epochs=1", "trainer.batch_size=4", "trainer.warmup_steps=1",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["steps"] == 4  # 16 training fields / batch 4
    model, state = checkpoint.load_model(run_dir / "tokenizer.pt")
    assert state["variables"] == ["u", "v"] and not state["periodic"]
    assert model.decode(model.encode(torch.zeros(1, 2, 32, 40))).shape == (1, 2, 32, 40)


def test_missing_variable_in_user_files_names_the_available_ones(tmp_path, env):
    from dynfield.data.dummy import write_dummy_netcdf

    write_dummy_netcdf(tmp_path / "run.nc", n_sample=4)
    cmd = [sys.executable, "-m", "dynfield.train", "dataset=files", f"dataset.paths={tmp_path}/run.nc",
           "dataset.variables=[u,temperature]", f"hydra.run.dir={tmp_path / 'r'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "temperature" in proc.stderr and "vorticity" in proc.stderr


def test_channel_agnostic_tokenizer_codes_variables_it_never_saw(tmp_path, env):
    """One-channel training (each variable a field of its own); the codec then takes any variable name."""
    run_dir = tmp_path / "agnostic"
    train(run_dir, env, "dataset.channel_agnostic=true", "dataset.periodic=false", cwd=tmp_path)
    model, state = checkpoint.load_model(run_dir / "tokenizer.pt")
    assert state["model_config"]["in_channels"] == 1 and state["variables"] == ["field"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val"]["rel_l2"] < 1.0  # better than coding every field by its mean
    ds = dummy_dataset(n_sample=2, ny=64, nx=64).rename({"u": "geopotential", "scalar": "temperature"})
    ds.to_netcdf(tmp_path / "other.nc")
    compress_file(tmp_path / "other.nc", tmp_path / "other.dfz", checkpoint=run_dir / "tokenizer.pt", progress=False)
    decompress_file(tmp_path / "other.dfz", tmp_path / "back.nc", checkpoint=run_dir / "tokenizer.pt", progress=False)
    with xr.open_dataset(tmp_path / "back.nc") as back:
        assert set(back.data_vars) == set(ds.data_vars)
        assert back["temperature"].shape == ds["temperature"].shape


def test_resume_refuses_a_run_of_another_model_and_names_what_differs(tmp_path):
    from dynfield.models import DQVAE
    from dynfield.training import resume

    def small(hidden):
        return DQVAE(in_channels=2, hidden=hidden, code_dim=8, codebook_size=16)

    saved = small(16)
    opt = torch.optim.AdamW(saved.parameters())
    checkpoint.save_checkpoint(tmp_path / "last.pt", saved, kind="tokenizer", stats={}, variables=["a", "b"],
                               periodic=True, train_state={"optimizer": opt.state_dict(), "step": 3,
                                                           "train_time": 1.0, "samples_seen": 6})
    other = small(32)
    with pytest.raises(ValueError, match=r"hidden=16 \(now 32\).*overrides.yaml"):
        resume(tmp_path / "last.pt", other, torch.optim.AdamW(other.parameters()), torch.device("cpu"), 10)
    same = small(16)
    assert resume(tmp_path / "last.pt", same, torch.optim.AdamW(same.parameters()), torch.device("cpu"), 10,
                  verbose=False) == (3, 1.0, 6)
