"""Write the golden prior-coded .dfz file the tests decode (run only when the format changes on purpose).

    python tests/data/make_golden_prior.py

A tiny tokenizer (seeded, its codebook set from data) and a tiny raster
prior trained for a few steps on its tokens of the analytic dummy flow
(golden_prior_tokenizer.pt, golden_prior.pt); two 32 x 48 snapshots of u
(within 1e-2) and the scalar (token-only) coded with them under the prior
(golden_prior.dfz); and the tokens every later release must decode from it,
on any machine (golden_prior_tokens.npz).
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from dynfield.checkpoint import save_checkpoint, tokenizer_entry
from dynfield.codec import compress_file
from dynfield.codec.chunks import Layout
from dynfield.codec.container import ContainerReader
from dynfield.codec.field import tokenize
from dynfield.codec.prior_coding import prior_for
from dynfield.data import field_stats
from dynfield.data.dummy import dummy_dataset
from dynfield.models import DQVAE, ARPrior
from dynfield.models.tokens import Tokens

HERE = Path(__file__).parent
SHAPE = (32, 48)
NAMES = ["golden_prior_tokenizer.pt", "golden_prior.pt", "golden_prior_source.nc", "golden_prior.dfz",
         "golden_prior_tokens.npz"]


def fields(n, seed):
    ds = dummy_dataset(n_sample=n, ny=SHAPE[0], nx=SHAPE[1], sample_offset=10 * seed)
    x = np.concatenate([ds[v].values.reshape(-1, *SHAPE) for v in ("u", "v", "scalar")])
    return torch.from_numpy(np.stack([(f - m) / s for f, (m, s) in zip(x, map(field_stats, x))])[:, None]).float()


def main():
    # made in a scratch folder and copied here: the files remember no path of the machine that made them
    with tempfile.TemporaryDirectory() as scratch:
        make(Path(scratch))
        for name in NAMES:
            shutil.copyfile(Path(scratch) / name, HERE / name)


def make(out):
    torch.manual_seed(0)
    tokenizer = DQVAE(in_channels=1, factors=(2, 4), hidden=8, code_dim=8, codebook_size=32, periodic=False)
    tokenizer.train()
    tokenizer(fields(4, seed=1))  # the codebook starts from the data's own vectors
    tokenizer.eval()
    save_checkpoint(out / "golden_prior_tokenizer.pt", tokenizer, kind="tokenizer", stats={}, variables=["field"],
                    periodic=False)
    entry, tokenizer = tokenizer_entry(out / "golden_prior_tokenizer.pt")
    entry["path"] = "golden_prior_tokenizer.pt"
    with torch.no_grad():
        tokens = tokenize(tokenizer, fields(8, seed=2))
    prior = ARPrior(order="raster", factors=[2, 4], shape=list(SHAPE), codebook_size=32, dim=16, depth=2, heads=2)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(60):
        loss = prior(Tokens(tokens.grain, tokens.codes, tokens.factors, SHAPE, 32)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(out / "golden_prior.pt", prior.eval(), kind="prior", stats={}, variables=["field"],
                    periodic=False, extra={"tokenizer": entry})
    source = dummy_dataset(n_sample=2, ny=SHAPE[0], nx=SHAPE[1])[["u", "scalar"]]
    source.to_netcdf(out / "golden_prior_source.nc")
    compress_file(out / "golden_prior_source.nc", out / "golden_prior.dfz", out / "golden_prior_tokenizer.pt",
                  max_abs_error={"u": 0.01}, prior=out / "golden_prior.pt", progress=False)
    with ContainerReader(out / "golden_prior.dfz") as reader:
        layout = Layout(reader.header)
        layout.prior_coder = prior_for(reader.header, out / "golden_prior.pt", "golden")
        decoded = {}
        for payload in reader.chunks():
            g, i, streams, _ = layout.parse(payload)
            for unit, t in zip(layout.units(g), layout.tokens(g, streams)):
                if t is not None:
                    decoded[f"{unit[0]}_{i}_grain"] = t.grain
                    decoded.update({f"{unit[0]}_{i}_codes{k}": c for k, c in enumerate(t.codes)})
    np.savez_compressed(out / "golden_prior_tokens.npz", **decoded)


if __name__ == "__main__":
    main()
