"""Field level, in CompressAI's style: normalised fields <-> token strings.

``compress_field(model, x)`` gives ``{"strings", "shape"}`` and
``decompress_field(model, strings, shape)`` the reconstruction. The helpers
here (tokens to and from numpy, padding small fields, normalisation, the
prediction in physical units, the model's identity) are shared by the file
codec (``codec``) and the chunk codec for zarr (``numcodecs_codec``).
"""

import numpy as np
import torch
import torch.nn.functional as F

from dynfield import paths
from dynfield.models import Tokens
from dynfield.models.allocation import rd_allocate
from dynfield.models.precision import autocast

from .container import CodecError
from .entropy import FieldTokens, TokenModel, decode_tokens, encode_tokens

CLIP = 1e4  # normalised values are clipped here before the tokenizer; the residual carries the rest


def default_checkpoint():
    """Path of the bundled default tokenizer, ``dynfield/pretrained/tokenizer.pt``."""
    path = paths.BUNDLED_TOKENIZER
    if not path.is_file():
        raise CodecError(f"no checkpoint given and the bundled default tokenizer is not installed ({path}); "
                         f"pass a tokenizer checkpoint")
    return path


def token_shape(shape, factors):
    """Shape the tokenizer sees for an (H, W) field: at least two coarsest regions each way.

    One region would do for the padding, but then the coarsest feature map is
    1 x 1, where a group norm with one channel per group has a single value.
    """
    return max(shape[0], 2 * factors[-1]), max(shape[1], 2 * factors[-1])


def token_grid(shape, factors):
    """(Hc, Wc): the coarsest grid of an (H, W) field."""
    H, W = token_shape(shape, factors)
    return -(-H // factors[-1]), -(-W // factors[-1])


@torch.no_grad()
def tokenize(model, x_BCHW, fine_ratio=None, bits_per_value=None, psnr=None, depth=None):
    """Tokens of normalised fields (B, C, H, W); fields under two coarsest regions are padded by replication.

    The router chooses the grains (at `fine_ratio` if given) and every region
    gets `depth` stages (default: all), unless `bits_per_value` or `psnr`
    asks for the rate-distortion allocation of grains and depths
    (``rd_allocate``). On a CPU with bfloat16 the model runs in it
    (``dynfield.models.precision``).
    """
    H, W = x_BCHW.shape[-2:]
    Ht, Wt = token_shape((H, W), model.factors)
    if (Ht, Wt) != (H, W):
        x_BCHW = F.pad(x_BCHW, (0, Wt - W, 0, Ht - H), mode="replicate")
    with autocast(model):
        if bits_per_value is not None or psnr is not None:
            return rd_allocate(model, x_BCHW, bits_per_value=bits_per_value, psnr=psnr)
        return model.encode(x_BCHW, fine_ratio=fine_ratio, depth=depth)


def tokens_to_numpy(tokens):
    """One ``FieldTokens`` (int64 numpy) per sample of a batch of ``Tokens``."""
    grain, depth = tokens.grain.cpu().numpy(), tokens.depth.cpu().numpy()
    codes = [c.cpu().numpy() for c in tokens.stage_codes()]  # (B, S, Hk, Wk) per level
    return [FieldTokens(grain[b], depth[b], [c[b] for c in codes], tokens.nested) for b in range(len(grain))]


def tokens_from_numpy(fields, factors, shape, codebook_size, device="cpu"):
    """``Tokens`` of a batch of ``FieldTokens`` of (H, W) fields (the inverse of ``tokens_to_numpy``)."""
    def stack(arrays):
        return torch.from_numpy(np.stack(arrays)).to(device)

    codes = [stack([f.codes[k] for f in fields]) for k in range(len(factors))]  # (B, S, Hk, Wk)
    residual = [c[:, 1:] for c in codes] if codes[0].shape[1] > 1 else ()
    return Tokens(stack([f.grain for f in fields]), [c[:, 0] for c in codes], factors, shape, codebook_size,
                  depth=stack([f.depth for f in fields]), residual=residual, nested=fields[0].nested)


@torch.no_grad()
def reconstruct(model, fields, shape):
    """Decode ``FieldTokens`` of (H, W) fields with `model` (on its device and dtype; a float32 model on a CPU
    with bfloat16 in that): (B, C, H, W) in the model's dtype."""
    weight = next(model.decoder.parameters())
    tokens = tokens_from_numpy(fields, model.factors, token_shape(shape, model.factors),
                                model.quantizer.codebook_size, weight.device)
    with autocast(model):
        recon = model.decode(tokens)
    return recon.to(weight.dtype)[..., : shape[0], : shape[1]]


def compress_field(model, x_BCHW, fine_ratio=None, entropy=None):
    """Compress normalised fields to token strings.

    Parameters
    ----------
    model : DQVAE in eval mode.
    x_BCHW : (B, C, H, W) float tensor, normalised as the model expects.
    fine_ratio : exact fraction of fine regions (see ``DQVAE.encode``).
    entropy : ``TokenModel``; default ``TokenModel.from_quantizer(model)``.

    Returns
    -------
    {"strings": [[bytes per sample]], "shape": (H, W)}
    """
    entropy = entropy or TokenModel.from_quantizer(model)
    tokens = tokenize(model, x_BCHW, fine_ratio)
    strings = [encode_tokens(t, model.factors, entropy) for t in tokens_to_numpy(tokens)]
    return {"strings": [strings], "shape": tuple(int(s) for s in x_BCHW.shape[-2:])}


def decompress_field(model, strings, shape, entropy=None):
    """Reconstruction (B, C, H, W) from ``compress_field``'s strings and shape (same model and entropy)."""
    entropy = entropy or TokenModel.from_quantizer(model)
    grid = token_grid(shape, model.factors)
    fields = [decode_tokens(s, grid, model.factors, entropy, model.nested) for s in strings[0]]
    return reconstruct(model, fields, shape)


def normalise(x, mean, std):
    """float32 model input: (x - mean) / std, clipped, with non-finite values at 0 (the mean)."""
    x = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.clip((x - mean) / std, -CLIP, CLIP)
    return np.where(np.isfinite(x), z, 0.0).astype(np.float32)


def prediction(recon, mean, std):
    """Reconstruction in physical units, float64; anything non-finite becomes the mean."""
    with np.errstate(over="ignore", invalid="ignore"):
        p = recon.astype(np.float64) * std + mean
    return np.where(np.isfinite(p), p, mean)


