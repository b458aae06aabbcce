"""Codec throughput: MB/s of input (the file's own dtype) for compress and decompress.

Token-only compression at the codec's default rate or at one fine ratio
(or, with ``--rel-error``, error-bounded compression), with 1..N worker
processes, then decompression of the result; the best of ``--repeat`` runs
of each. Writes ``throughput.json`` into ``--out``.

    python benchmarks/throughput.py --data run.nc [--checkpoint C] [--workers 1,2] [--rel-error 1e-2] \
        --out benchmarks/results
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from provenance import machine  # benchmarks/provenance.py

from dynfield.codec import compress_file, decompress_file


def best_seconds(run, repeat):
    """The shortest of `repeat` runs of `run()`, which returns its own seconds or None to be timed whole."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        seconds = run()
        times.append(time.perf_counter() - start if seconds is None else seconds)
    return min(times)


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a field file open_fields reads")
    p.add_argument("--checkpoint", help="tokenizer checkpoint (default: the one bundled with dynfield)")
    p.add_argument("--fine-ratio", type=float, help="exact fraction of fine regions (default: the codec's default)")
    p.add_argument("--rel-error", type=float, help="bound every value within this fraction of its variable's range")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    result = {"machine": machine(), "data": str(args.data), "checkpoint": args.checkpoint or "bundled",
              "fine_ratio": args.fine_ratio, "rel_error": args.rel_error}
    with tempfile.TemporaryDirectory() as tmp:
        dfz, restored = Path(tmp) / "data.dfz", Path(tmp) / "restored.nc"
        info = {}

        def compress(workers):
            info.update(compress_file(args.data, dfz, checkpoint=args.checkpoint, fine_ratio=args.fine_ratio,
                                      rel_error=args.rel_error, workers=workers, progress=False))
            return info["seconds"]  # the compression itself, not the summary read back after it

        for workers in (int(w) for w in args.workers.split(",")):
            seconds = best_seconds(lambda: compress(workers), args.repeat)
            result[f"compress_mb_per_s_workers_{workers}"] = info["input_bytes"] / 1e6 / seconds
        def decompress():
            decompress_file(dfz, restored, checkpoint=args.checkpoint, progress=False)

        seconds = best_seconds(decompress, args.repeat)
        result["decompress_mb_per_s"] = info["input_bytes"] / 1e6 / seconds
        result.update(model_hash=info["model"]["sha256"], input_mb=info["input_bytes"] / 1e6,
                      bits_per_value=info["bits_per_value"], compression_ratio=info["compression_ratio"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
