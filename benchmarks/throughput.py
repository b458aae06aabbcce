"""Codec throughput: MB/s of input (the file's own dtype) for compress and decompress.

Token-only compression at one fine ratio, with 1..N worker processes, then
decompression of the result; the best of ``--repeat`` runs of each. Writes
``throughput.json`` into ``--out``.

    python benchmarks/throughput.py --data run.nc [--checkpoint C] [--workers 1,2] --out benchmarks/results
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from provenance import machine  # benchmarks/provenance.py

from dynfield.checkpoint import load_model
from dynfield.codec import compress_file, decompress_file, default_checkpoint, weights_hash


def best_seconds(run, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a field file open_fields reads")
    p.add_argument("--checkpoint", help="tokenizer checkpoint (default: the one bundled with dynfield)")
    p.add_argument("--fine-ratio", type=float, default=0.5)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    checkpoint = args.checkpoint or default_checkpoint()
    result = {"machine": machine(), "data": str(args.data), "checkpoint": args.checkpoint or "bundled",
              "model_hash": weights_hash(load_model(checkpoint)[0]), "fine_ratio": args.fine_ratio}
    with tempfile.TemporaryDirectory() as tmp:
        dfz, restored = Path(tmp) / "data.dfz", Path(tmp) / "restored.nc"
        info = {}
        for workers in (int(w) for w in args.workers.split(",")):
            seconds = best_seconds(lambda: info.update(compress_file(
                args.data, dfz, checkpoint=checkpoint, fine_ratio=args.fine_ratio, workers=workers,
                progress=False)), args.repeat)
            result[f"compress_mb_per_s_workers_{workers}"] = info["input_bytes"] / 1e6 / seconds
        seconds = best_seconds(lambda: decompress_file(dfz, restored, checkpoint=checkpoint, progress=False),
                               args.repeat)
        result["decompress_mb_per_s"] = info["input_bytes"] / 1e6 / seconds
        result.update(input_mb=info["input_bytes"] / 1e6, bits_per_value=info["bits_per_value"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
