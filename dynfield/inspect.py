"""Describe a ``.dfz`` file without decoding it.

    python -m dynfield.inspect run.dfz [--json] [--prior RUN/prior.pt]

Variables, shapes, the model's SHA-256, bits per value overall and per
variable, the fraction of fine regions, token bits against their ideal
length, and the error bound. With ``--prior``, also the ideal code length
of the tokens under that stage-2 prior.
"""

import argparse
import json
import sys

from dynfield.cli import run_command


def report(info):
    """Human-readable lines of an ``inspect_file`` dict."""
    model, tokens, settings = info["model"], info["tokens"], info["settings"]
    bound = (f"max abs error {settings['max_abs_error']}" if settings["max_abs_error"] is not None
             else f"relative error {settings['rel_error']}" if settings["rel_error"] is not None else "none")
    lines = [
        f"{info['path']}: .dfz format {info['format_version']}, {info['bytes']} bytes, {info['values']} values, "
        f"{info['chunks']} chunks",
        f"bits per value: {info['bits_per_value']:.4f} (compression ratio {info['compression_ratio']:.1f})",
        f"model: {model['class']} sha256 {model['sha256']}",
        f"       {model['in_channels']} channel(s), factors {model['factors']}, {model['codebook_size']} codes, "
        f"{info['mode']} coding",
        f"fine ratio setting: {settings['fine_ratio']}; fraction of fine regions: {info['fine_fraction']:.3f}; "
        f"mean depth {info['mean_depth']:.2f} of {info['stages']} stages",
        f"error bound: {bound}",
        (f"tokens: {tokens['bits']:.0f} bits, range coded under the {info['token_prior']['order']} prior "
         f"{info['token_prior']['sha256'][:12]}...; " if info["token_prior"] else
         f"tokens: {tokens['codes']} codes in {tokens['bits']:.0f} bits (ideal under the stored model "
         f"{tokens['ideal_bits']:.0f}, empirical entropy {tokens['entropy_bits']:.0f}); ")
        + f"{tokens['units_without']} field(s) coded without tokens",
        f"{'variable':<16} {'dims':<28} {'shape':<22} {'dtype':<8} {'bits/value':>10} {'max_abs_error':>13} "
        f"{'nonfinite':>9} {'escapes':>8}  residual coders (fields)",
    ]
    for name, v in info["variables"].items():
        error = "-" if v["max_abs_error"] is None else f"{v['max_abs_error']:.4g}"
        coders = ", ".join(f"{k} {n}" for k, n in sorted(v["residual_coders"].items())) or "-"
        lines.append(f"{name:<16} {','.join(v['dims']):<28} {'x'.join(map(str, v['shape'])):<22} {v['dtype']:<8} "
                     f"{v['bits_per_value']:>10.4f} {error:>13} {v['nonfinite']:>9} {v['escapes']:>8}  {coders}")
    if "prior" in info:
        p = info["prior"]
        lines.append(f"under the prior {p['checkpoint']}: tokens would take {p['prior_bits']:.0f} bits "
                     f"({p['prior_bits_per_value']:.4f} per value) against {p['token_bits']:.0f} in this file")
    return "\n".join(lines)


def parser():
    p = argparse.ArgumentParser(prog="python -m dynfield.inspect", description="Describe a .dfz file.")
    p.add_argument("input", help="the .dfz file")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--prior", help="a stage-2 prior over this tokenizer's tokens: report their code length under it")
    return p


def main(argv=None):
    args = parser().parse_args(argv)

    def action():
        from dynfield.codec import inspect_file, prior_code_length  # torch: not for --help

        info = inspect_file(args.input)
        if args.prior:
            info["prior"] = dict(prior_code_length(args.input, args.prior), checkpoint=args.prior)
        print(json.dumps(info, indent=2) if args.json else report(info))

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
