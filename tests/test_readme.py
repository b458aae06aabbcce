"""Every command the README shows is one the project accepts as written.

Each shell line of the README's bash blocks (continuations joined, comments
dropped) is read as a synopsis: the command without its [optional] parts,
and the command with each optional part (the first of its | alternatives).
Every such command must be accepted by what runs it: Hydra composes the
training config from its overrides, a CLI's or benchmark's argument parser
takes its arguments, make knows the target. What the commands then do is
tested where the code is (training, codec, notebook, benchmarks).
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, benchmark_module, compose_config

from dynfield.data.dummy import dummy_dataset

README = REPO / "README.md"


def shell_lines(text):
    """The commands of the ```bash blocks, continuations joined and trailing comments removed."""
    lines, block, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        line = re.sub(r"\s+#\s.*$", "", pending + line.strip())
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line:
            lines.append(line)
    return lines


def variants(synopsis):
    """The command without its [optional] groups, then with each of them (the first of its alternatives)."""
    # an optional group opens after a space; a list value opens after "=" (model.factors=[4,8])
    groups = re.findall(r"(?<=\s)\[([^\[\]]*)\]", synopsis)
    bare = re.sub(r"\s+\[[^\[\]]*\]", "", synopsis)
    out = [bare]
    for g in groups:
        out.append(bare + " " + g.split(" | ")[0].strip())
    return out


COMMANDS = [v for line in shell_lines(README.read_text()) for v in variants(line)]


def test_the_readme_shows_commands():
    assert len(COMMANDS) > 20
    assert any("dataset=files" in c for c in COMMANDS) and any("dynfield.compress" in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_is_accepted(command, tmp_path):
    argv = shlex.split(command)
    if argv[0] == "make":
        run = subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return
    if argv[0] == "torchrun":
        argv = ["python"] + argv[argv.index("-m"):]
    assert argv[0] == "python", command
    if argv[1] == "-m" and argv[2] == "dynfield.train":
        overrides = argv[3:]
        resume = [o for o in overrides if o.startswith("resume=")]
        if resume:  # a run directory that must exist: make one of that name
            (tmp_path / resume[0].split("=", 1)[1]).mkdir(parents=True)
        compose_config(overrides)
        return
    if argv[1] == "-m":
        module = __import__(argv[2], fromlist=["parser"])
        module.parser().parse_args(argv[3:])
        return
    script = Path(argv[1])
    assert script.parts[0] == "benchmarks" and (REPO / script).is_file(), command
    benchmark_module(script.stem).parser().parse_args(argv[2:])


def own_data_file(path, dims):
    """A (time, lat, lon) or (time, y, x) file of u, v and T, as a user's run would be."""
    import numpy as np
    import xarray as xr

    rng = np.random.default_rng(0)
    shape = (12, 32, 48)
    ds = xr.Dataset({k: (dims, rng.standard_normal(shape).astype("f4"), {"units": "1"}) for k in ("u", "v", "T")},
                    coords={dims[0]: np.arange(shape[0])})
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path)


@pytest.mark.slow
@pytest.mark.parametrize("dims", [("time", "lat", "lon"), ("time", "y", "x")])
def test_own_data_training_runs_as_the_readme_shows(tmp_path, env, dims):
    (command,) = [c for c in COMMANDS if "dataset=files" in c and "dataset.dims" in c]
    argv = shlex.split(command)
    if dims[1] == "y":  # a file already named as dynfield names its dimensions needs no mapping
        argv = [a for a in argv if not a.startswith("dataset.dims=")]
    own_data_file(tmp_path / "runs" / "a.nc", dims)
    run = subprocess.run([sys.executable, *argv[1:], "experiment=smoke", "hydra.run.dir=run"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run" / "tokenizer.pt").is_file()


def python_block(heading):
    """The first ```python block after `heading` in the README."""
    text = README.read_text()
    after = text[text.index(heading):]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_zarr_and_xarray_example_runs_as_written(tmp_path, monkeypatch):
    dummy_dataset(n_sample=2, ny=32, nx=48)[["u", "v"]].to_netcdf(tmp_path / "run.nc")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(python_block("### zarr, xarray and dask"), "README.md", "exec"), namespace)
    ds, back, lazy = namespace["ds"], namespace["back"], namespace["lazy"]
    for v in ("u", "v"):
        assert float(np.abs(back[v] - ds[v]).max()) <= 1e-2
        assert float(np.abs(lazy[v] - ds[v]).max()) <= 1e-2 * float(ds[v].max() - ds[v].min())
