"""Decompress a ``.dfz`` file to netCDF.

    python -m dynfield.decompress run.dfz restored.nc [--checkpoint C]

The checkpoint must hold the model the file was made with (its SHA-256 is
checked); by default the bundled tokenizer.
"""

import argparse
import sys

from dynfield.cli import run_command


def parser():
    p = argparse.ArgumentParser(prog="python -m dynfield.decompress", description="Decompress a .dfz file to netCDF.")
    p.add_argument("input", help="the .dfz file")
    p.add_argument("output", help="the netCDF file to write")
    p.add_argument("--checkpoint", help="tokenizer checkpoint the file was made with (default: the bundled one)")
    p.add_argument("--prior", help="the prior that coded the file's tokens, where one did "
                   "(default: the one at the path it was compressed with)")
    p.add_argument("--device", default="cpu", help="torch device that decodes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    args = parser().parse_args(argv)

    def action():
        from dynfield.codec import decompress_file  # torch and the codec: not for --help

        decompress_file(args.input, args.output, checkpoint=args.checkpoint, progress=not args.quiet,
                        device=args.device, prior=args.prior)
        print(f"wrote {args.output}")

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
