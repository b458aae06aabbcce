"""Write the golden .dfz file the tests decode (run only when the format changes on purpose).

    python tests/data/make_golden.py

Two 2D fields of the analytic dummy flow, 32 x 48, with a NaN patch: u and v
within 1e-2 of their range, the scalar token-only, coded with the bundled
tokenizer; beside it the source data (golden_source.nc) and the decoded
values (golden_decoded.nc) that every later release must reproduce.
"""

from pathlib import Path

import numpy as np

from dynfield.codec import compress_file, decompress_file
from dynfield.data.dummy import dummy_dataset

HERE = Path(__file__).parent


def main():
    ds = dummy_dataset(n_sample=2, ny=32, nx=48)[["u", "v", "scalar"]]
    ds["u"][0, 3:6, 5:9] = np.nan
    ds.to_netcdf(HERE / "golden_source.nc")
    compress_file(HERE / "golden_source.nc", HERE / "golden.dfz", max_abs_error={"u": 0.01, "v": 0.01},
                  progress=False)
    decompress_file(HERE / "golden.dfz", HERE / "golden_decoded.nc", progress=False)


if __name__ == "__main__":
    main()
