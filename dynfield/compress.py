"""Compress field files to ``.dfz``, or to a zarr store with the dynfield codec.

    python -m dynfield.compress run.nc run.dfz [--checkpoint C] [--variables u,v]
        [--fine-ratio R | --bits-per-value B | --psnr P] [--max-abs-error E | --rel-error E] [--workers N]
        [--prior P]
    python -m dynfield.compress big.nc big.zarr --rel-error 0.01 [--dask-workers N | --scheduler ADDRESS]

An output ending in ``.zarr`` is a zarr store (format 2) whose variables are
compressed chunk by chunk by the ``dynfield`` numcodecs codec. Either output
can be compressed on a dask.distributed cluster: a local one of
``--dask-workers`` processes, or the scheduler at ``--scheduler`` (``pip
install dynfield[distributed]``); without either, in this process (or, for
``.dfz``, in ``--workers`` processes of its own). ``--prior`` codes a
``.dfz`` file's tokens with a stage-2 autoregressive prior instead of the
file's own histograms (reproducibly on any machine: ``codec.prior_coding``).

``--bits-per-value`` and ``--psnr`` choose grains and depths per region by
rate-distortion allocation: a token budget per value (before entropy coding)
or the fewest tokens that reach the PSNR, field by field.

An error bound is one number for every variable, or ``name=value`` pairs
(``--max-abs-error u=0.01,v=0.02``); a relative bound is a fraction of each
variable's range in the file.
"""

import argparse
import sys

from dynfield.cli import run_command, variable_list


def error_bound(text):
    """'0.01' -> 0.01; 'u=0.01,v=0.02' -> {'u': 0.01, 'v': 0.02}."""
    try:
        if "=" not in text:
            return float(text)
        return {name.strip(): float(value) for name, value in (pair.split("=", 1) for pair in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or name=number pairs, got {text!r}") from None


def parser():
    p = argparse.ArgumentParser(prog="python -m dynfield.compress", description="Compress a field file to .dfz.")
    p.add_argument("input", help="netCDF, HDF5 (generic, The Well, PDEBench) or zarr")
    p.add_argument("output", help="the .dfz file or the .zarr store to write")
    p.add_argument("--checkpoint", help="tokenizer checkpoint (default: the bundled one)")
    p.add_argument("--variables", type=variable_list, help="comma-separated variables (default: all)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--fine-ratio", type=float, help="exact fraction of fine regions per field")
    rate.add_argument("--bits-per-value", type=float, help="token budget per value, allocated for the least error")
    rate.add_argument("--psnr", type=float, help="the fewest tokens that reach this PSNR (dB) in each field")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--max-abs-error", type=error_bound, help="guaranteed maximum absolute error")
    bound.add_argument("--rel-error", type=error_bound, help="maximum error as a fraction of each variable's range")
    p.add_argument("--prior", help="stage-2 autoregressive prior that codes a .dfz file's tokens "
                   "(trained on this tokenizer's tokens; decompress needs it too)")
    p.add_argument("--workers", type=int, default=1, help="processes encoding a .dfz file in parallel")
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument("--dask-workers", type=int, help="compress on a local dask cluster of N processes")
    cluster.add_argument("--scheduler", help="compress on the dask.distributed scheduler at this address")
    p.add_argument("--device", default="cpu", help="torch device of the tokenizer")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _client(args):
    """A dask.distributed client for --dask-workers or --scheduler, else None."""
    if args.dask_workers is None and args.scheduler is None:
        return None
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("--dask-workers and --scheduler need dask.distributed: pip install dynfield[distributed]")
    if args.scheduler is not None:
        return Client(args.scheduler)
    if args.dask_workers < 1:
        raise ValueError(f"--dask-workers must be at least 1, got {args.dask_workers}")
    # one thread a worker: torch and the compressors use the cores the workers do not
    return Client(LocalCluster(n_workers=args.dask_workers, threads_per_worker=1, processes=True))


def _close(client, args):
    if client is not None:
        client.close()
        if args.scheduler is None:
            client.cluster.close()


def main(argv=None):
    args = parser().parse_args(argv)
    rate = {"fine_ratio": args.fine_ratio, "bits_per_value": args.bits_per_value, "psnr": args.psnr}
    bound = {"max_abs_error": args.max_abs_error, "rel_error": args.rel_error}

    def to_zarr():
        from dynfield.codec.to_zarr import compress_to_zarr  # torch and the codec: not for --help

        client = _client(args)
        try:
            return compress_to_zarr(args.input, args.output, checkpoint=args.checkpoint, variables=args.variables,
                                    client=client, progress=not args.quiet, **bound, **rate)
        finally:
            _close(client, args)

    def to_dfz():
        from dynfield.codec import compress_file

        client = _client(args)
        try:
            return compress_file(args.input, args.output, checkpoint=args.checkpoint, variables=args.variables,
                                 workers=args.workers, progress=not args.quiet, device=args.device, client=client,
                                 prior=args.prior, **bound, **rate)
        finally:
            _close(client, args)

    def action():
        if args.workers > 1 and (args.dask_workers is not None or args.scheduler is not None):
            raise ValueError("--workers starts processes of its own: give it or a dask cluster, not both")
        zarr = args.output.rstrip("/").endswith(".zarr")
        if zarr and args.prior is not None:
            raise ValueError("--prior codes the tokens of a .dfz file; a zarr store's chunks are coded one by one")
        s = to_zarr() if zarr else to_dfz()
        print(f"{args.output}: {s['bytes']} bytes, {s['bits_per_value']:.3f} bits per value, "
              f"ratio {s['compression_ratio']:.1f}, {s['seconds']:.1f} s ({s['input_mb_per_s']:.2f} MB/s)")
        if s.get("prior_declined"):
            print(f"{args.prior} coded the first snapshots' tokens in more bytes than per-file histograms: "
                  f"the tokens are coded with the histograms, and decoding needs no prior")

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
