"""The dynamic-grain VQ-VAE for fields (DQ-VAE), and its fixed-grain baseline.

Pipeline: pad -> encoder (one map per grain level, plus a linear block
transform with ``linear_patches``) -> router (one level per coarsest-grid
region) -> quantize each level's vectors against one codebook, counting only
the vectors of the chosen level -> copy the chosen codes onto the finest token
grid -> decoder (plus the inverse block transform) -> crop.

With ``nested`` the levels refine instead of replacing: the coarsest level is
coded in every region, and each finer level, where the grain map reaches it,
codes what the coarser ones left (its encoder map minus their codes) with a
ladder of its own; the decoder gets the sum.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoder import Decoder
from .encoder import Encoder
from .patches import LinearPatches
from .residual_vq import ResidualVQ
from .router import ROUTERS, Router, budget_loss, budget_ratios, check_ratios, level_counts
from .routing import GrainRouting
from .tokens import Tokens, check_factors, repeat_cells, stage_masks


@dataclass
class DQVAEOutput:
    """What one forward pass returns.

    recon : (B, C, H, W) reconstruction.
    tokens : the grain map and codes used.
    losses : {"vq": commitment loss, "budget": grain budget loss} (scalars).
    stats : floats for logging: fine_fraction, tokens (per field), usage, perplexity.
    probs : (B, K, Hc, Wc) gate probabilities of the learned router, else None.
    """

    recon: torch.Tensor
    tokens: Tokens
    losses: dict
    stats: dict
    probs: torch.Tensor | None


class DQVAE(GrainRouting, nn.Module):
    """Dynamic-grain VQ-VAE; with one factor, the plain fixed-grain VQ-VAE.

    Parameters
    ----------
    in_channels : channels of the (normalised) field.
    factors : ascending powers of two, one per grain level (0 = finest).
    hidden, channel_mult, num_res_blocks : encoder/decoder size, see ``Encoder``.
    attention : a self-attention block at the coarsest encoder level.
    linear_patches : a learned linear block transform per level beside the
        encoder and decoder (``LinearPatches``): the codes are its output plus
        the encoder's, the field its inverse plus the decoder's.
    code_dim, codebook_size : the shared codebook (of every residual stage).
    nested : every region carries the coarsest level's codes, and a finer
        grain adds refinements (``Tokens.nested``); each finer level gets
        codebooks of its own.
    stages : residual quantization stages (see ``ResidualVQ``); a region's
        depth is how many of them code it. Training draws every region's depth
        uniformly from 1..stages, so the decoder serves every depth map.
    train_fine_ratio : optional (low, high): training draws one fine ratio per
        batch from this range and assigns it exactly by rank, instead of the
        Gumbel gate and the budget loss, so one model serves every budget.
        The learned router's scores are ranked with Gumbel noise and get the
        straight-through gradient of their probabilities.
    router : grain router used in training and by default at inference,
        one of ``ROUTERS``.
    target_ratios : fraction of regions per level (default: uniform); the
        budget loss target of the learned router and the ratios of the
        random and enstrophy routers.
    budget_mode : "batch" or "sample", see ``budget_loss``.
    periodic : the fields are periodic: circular padding everywhere.
    commitment, ema_decay, dead_code_threshold : see ``VectorQuantizer``.
    fixed_level : level of the "fixed" router.
    vorticity_channel : channel the enstrophy router squares; None uses the
        gradient energy of all channels.
    seed : seed of the random router.

    The constructor arguments are kept in ``self.config`` (JSON-serialisable),
    so ``DQVAE(**model.config)`` rebuilds the architecture.
    """

    def __init__(
        self,
        in_channels=4,
        factors=(4, 8),
        hidden=64,
        channel_mult=None,
        num_res_blocks=1,
        code_dim=64,
        codebook_size=1024,
        stages=1,
        nested=False,
        train_fine_ratio=None,
        router="learned",
        target_ratios=None,
        budget_mode="batch",
        periodic=True,
        attention=False,
        linear_patches=False,
        commitment=0.25,
        ema_decay=0.99,
        dead_code_threshold=0.5,
        fixed_level=0,
        vorticity_channel=None,
        seed=0,
    ):
        super().__init__()
        factors = check_factors(factors)
        K = len(factors)
        if router not in ROUTERS or router == "rd":
            raise ValueError(f"router must be one of {ROUTERS[:-1]} (rd chooses at encode time only), got {router!r}")
        if budget_mode not in ("batch", "sample"):
            raise ValueError(f"budget_mode must be 'batch' or 'sample', got {budget_mode!r}")
        if not 0 <= fixed_level < K:
            raise ValueError(f"fixed_level must index one of the {K} levels, got {fixed_level}")
        if vorticity_channel is not None and not 0 <= vorticity_channel < in_channels:
            raise ValueError(f"vorticity_channel {vorticity_channel} is not one of the {in_channels} input channels")
        if train_fine_ratio is not None:
            lo, hi = (float(r) for r in train_fine_ratio)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"train_fine_ratio must be (low, high) with 0 <= low <= high <= 1, got {train_fine_ratio}")
            train_fine_ratio = (lo, hi)
        target_ratios = check_ratios(target_ratios if target_ratios is not None else [1.0 / K] * K, K)
        self.config = dict(
            in_channels=in_channels, factors=list(factors), hidden=hidden,
            channel_mult=list(channel_mult) if channel_mult is not None else None,
            num_res_blocks=num_res_blocks, code_dim=code_dim, codebook_size=codebook_size, stages=stages,
            nested=bool(nested), train_fine_ratio=list(train_fine_ratio) if train_fine_ratio is not None else None, router=router,
            target_ratios=list(target_ratios), budget_mode=budget_mode, periodic=periodic, attention=attention,
            linear_patches=bool(linear_patches), commitment=commitment, ema_decay=ema_decay,
            dead_code_threshold=dead_code_threshold, fixed_level=fixed_level, vorticity_channel=vorticity_channel,
            seed=seed,
        )
        self.in_channels, self.factors, self.code_dim = in_channels, factors, code_dim
        self.router_mode, self.target_ratios, self.budget_mode = router, target_ratios, budget_mode
        self.periodic, self.fixed_level, self.seed = periodic, fixed_level, seed
        self.vorticity_channel = vorticity_channel
        self.train_fine_ratio = train_fine_ratio
        self.nested = bool(nested) and K > 1
        arch = dict(factors=factors, hidden=hidden, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
                    code_dim=code_dim, periodic=periodic)
        self.encoder = Encoder(in_channels, **arch, attention=attention)
        self.decoder = Decoder(in_channels, **arch)
        self.patches = LinearPatches(in_channels, factors, code_dim) if linear_patches else None
        # only the learned router has parameters; the others are rules applied on the fly
        self.router = Router(factors, code_dim) if router == "learned" and K > 1 else None
        ladder = dict(stages=stages, codebook_size=codebook_size, dim=code_dim, commitment=commitment,
                      decay=ema_decay, dead_code_threshold=dead_code_threshold)
        self.quantizer = ResidualVQ(**ladder)  # every level's, or the coarsest level's when nested
        self.refiners = nn.ModuleList(ResidualVQ(**ladder) for _ in range(K - 1)) if self.nested else None
        self._train_generator = torch.Generator().manual_seed(seed)

    @property
    def num_levels(self):
        return len(self.factors)

    def _pad(self, x):
        """Pad (B, C, H, W) at the bottom/right to multiples of the coarsest factor."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a (B, {self.in_channels}, H, W) field, got shape {tuple(x.shape)}")
        f = self.factors[-1]
        H, W = x.shape[-2:]
        if H < f or W < f:
            raise ValueError(f"a {H}x{W} field is smaller than one coarsest region ({f}x{f})")
        pad_h, pad_w = -H % f, -W % f
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular" if self.periodic else "replicate")
        return x

    def features(self, x_pad):
        """The unquantized codes of padded fields: one (B, D, Hp / f_k, Wp / f_k) map per level."""
        feats = self.encoder(x_pad)
        if self.patches is not None:
            feats = [f + p for f, p in zip(feats, self.patches.encode(x_pad))]
        return feats

    def level_quantizer(self, k):
        """The ResidualVQ that codes level k."""
        return self.refiners[k] if self.nested and k < self.num_levels - 1 else self.quantizer

    def _synthesize(self, gate_BKHW, q_levels, grain, shape):
        """The field (B, C, H, W) of per-level quantized codes, each region at its gated level (and coarser ones when nested)."""
        if self.nested:
            gate_BKHW = gate_BKHW.cumsum(1)  # a region at level g uses every level k >= g
        recon = self.decoder(self._merge(gate_BKHW, q_levels), grain)
        if self.patches is not None:
            recon = recon + self.patches.decode(gate_BKHW, q_levels)
        return recon[..., : shape[0], : shape[1]]

    def _merge(self, gate_BKHW, q_levels):
        """Sum over levels of gate * codes, all copied onto the finest token grid: (B, D, H1, W1)."""
        f_1, f_K = self.factors[0], self.factors[-1]
        return sum(
            repeat_cells(gate_BKHW[:, k : k + 1], f_K // f_1) * repeat_cells(q, f // f_1)
            for k, (q, f) in enumerate(zip(q_levels, self.factors))
        )

    def _level_masks(self, grain):
        """Per level k, (B, Hp / f_k, Wp / f_k) bool: where the grain map chooses level k."""
        return [repeat_cells(grain == k, self.factors[-1] // f) for k, f in enumerate(self.factors)]

    def _tokens(self, grain, depth, idx_levels, shape):
        """Tokens from per-level (B, Hk, Wk, stages) indices, masked by the grain and depth maps."""
        S = self.quantizer.num_stages
        codes, residual = [], []
        for used, idx in zip(stage_masks(grain, depth, self.factors, S, self.nested), idx_levels):
            idx = torch.where(used, idx.permute(0, 3, 1, 2), -1)  # (B, S, Hk, Wk)
            codes.append(idx[:, 0])
            residual.append(idx[:, 1:])
        return Tokens(grain, codes, self.factors, tuple(shape), self.quantizer.codebook_size,
                      depth=depth, residual=residual if S > 1 else (), nested=self.nested)

    def _depth_map(self, grain, depth):
        """(B, Hc, Wc) long depth per region from None (every stage), an int or a map."""
        S = self.quantizer.num_stages
        if depth is None:
            return torch.full_like(grain, S)
        depth = torch.as_tensor(depth, dtype=torch.long, device=grain.device).expand_as(grain).clone()
        if depth.numel() and (depth.min() < 1 or depth.max() > S):
            raise ValueError(f"depth must lie in [1, {S}] for a {S}-stage model, got [{depth.min()}, {depth.max()}]")
        return depth

    def _train_draws(self, shape, device):
        """Training's random fine ratio (or None) and (B, Hc, Wc) depth map, from the model's seeded generator."""
        g = self._train_generator
        ratio = None
        if self.train_fine_ratio is not None and self.num_levels > 1:
            lo, hi = self.train_fine_ratio
            ratio = lo + (hi - lo) * torch.rand((), generator=g).item()
        depth = torch.randint(1, self.quantizer.num_stages + 1, shape, generator=g).to(device)
        return ratio, depth

    def _quantize(self, feats, grain, depth):
        """Quantize every level's vectors to their region's depth: (q_levels (B, D, Hk, Wk), idx_levels, loss).

        One call for all levels (one EMA step per stage); only the vectors of
        the chosen level count, so a coarse vector is one code however many
        cells it covers.
        """
        if self.nested:
            return self._quantize_nested(feats, grain, depth)
        f_K = self.factors[-1]
        z_ND = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, self.code_dim) for f in feats])
        chosen_N = torch.cat([mask.flatten() for mask in self._level_masks(grain)])
        depth_N = torch.cat([repeat_cells(depth, f_K // f).flatten() for f in self.factors])
        q_ND, idx_NS, loss = self.quantizer(z_ND, chosen_N, depth_N)
        sizes = [f[:, 0].numel() for f in feats]
        q_levels = [q.view(f.shape[0], *f.shape[2:], -1).permute(0, 3, 1, 2) for q, f in zip(q_ND.split(sizes), feats)]
        idx_levels = [i.view(f.shape[0], *f.shape[2:], -1) for i, f in zip(idx_NS.split(sizes), feats)]
        return q_levels, idx_levels, loss

    def _quantize_nested(self, feats, grain, depth):
        """``_quantize`` for nested levels, coarsest first: each finer level codes its map minus the codes above it.

        A level's vectors count where the grain map reaches it; they are coded
        to the region's depth at the region's own level and to the full depth
        under a finer region. The residual a finer level codes is taken from
        the coarser codes without gradient, so the coarser encoder maps learn
        from every region that uses them.
        """
        f_K, S = self.factors[-1], self.quantizer.num_stages
        q_levels, idx_levels, loss, above = [None] * self.num_levels, [None] * self.num_levels, 0.0, None
        for k in reversed(range(self.num_levels)):
            z = feats[k] if above is None else feats[k] - above.detach()
            scale = f_K // self.factors[k]
            used = repeat_cells(grain <= k, scale).flatten()
            depth_N = torch.where(repeat_cells(grain == k, scale), repeat_cells(depth, scale), S).flatten()
            z_ND = z.permute(0, 2, 3, 1).reshape(-1, self.code_dim)
            q_ND, idx_NS, level_loss = self.level_quantizer(k)(z_ND, used, depth_N)
            q_levels[k] = q_ND.view(z.shape[0], *z.shape[2:], -1).permute(0, 3, 1, 2)
            idx_levels[k] = idx_NS.view(z.shape[0], *z.shape[2:], -1)
            loss = loss + level_loss
            if k:
                coded = q_levels[k] if above is None else q_levels[k] + above
                above = repeat_cells(coded, self.factors[k] // self.factors[k - 1])
        return q_levels, idx_levels, loss

    def forward(self, x, temperature=1.0):
        """Encode, quantize and decode a batch (B, C, H, W); see ``DQVAEOutput``.

        In training mode the learned router samples with Gumbel temperature
        `temperature` (at a random exact budget with ``train_fine_ratio``),
        every region gets a random depth and the codebooks are updated; in
        eval mode the configured router chooses as in ``encode`` (argmax for
        the learned one) and every region is coded to the full depth.
        """
        H, W = x.shape[-2:]
        x_pad = self._pad(x)
        feats = self.features(x_pad)  # K x (B, D, Hp / f_k, Wp / f_k)
        coarse_shape = (feats[-1].shape[0], *feats[-1].shape[2:])
        fine_ratio, depth = self._train_draws(coarse_shape, x.device) if self.training else (None, None)
        sample_temperature = temperature if self.training else None
        grain, gate, logits = self._route(x_pad, feats, self.router_mode, fine_ratio=fine_ratio,
                                          temperature=sample_temperature)
        depth = self._depth_map(grain, depth)
        q_levels, idx_levels, vq_loss = self._quantize(feats, grain, depth)
        recon = self._synthesize(gate, q_levels, grain, (H, W))
        tokens = self._tokens(grain, depth, idx_levels, (H, W))
        learned = logits is not None
        budgeted = learned and fine_ratio is None
        budget = budget_loss(gate, self.target_ratios, self.budget_mode) if budgeted else vq_loss.new_zeros(())
        codebook = self.quantizer.codebook_stats()
        stats = {
            "fine_fraction": tokens.fine_fraction().mean().item(),
            "tokens": tokens.count().float().mean().item(),
            "usage": codebook["usage"],
            "perplexity": codebook["perplexity"],
        }
        probs = logits.detach().softmax(1) if learned else None
        return DQVAEOutput(recon, tokens, {"vq": vq_loss, "budget": budget}, stats, probs)

    @torch.no_grad()
    def encode(self, x, fine_ratio=None, router=None, level=None, depth=None):
        """Tokens of a batch of fields (B, C, H, W), without touching the codebook.

        Parameters
        ----------
        fine_ratio : exact per-sample fraction of regions finer than the coarsest
            level (see ``dynfield.models.router``); None: argmax of the learned
            router (the lowest ratio of ``train_fine_ratio`` where training
            set the ratio), or the target ratios for the random/enstrophy routers.
        router : overrides the configured router, one of ``ROUTERS``, so one
            trained model can be evaluated with several routing rules.
        level : level of the "fixed" router (default: ``fixed_level``).
        depth : residual stages per region: an int, a (B, Hc, Wc) map, or None
            for every stage.
        """
        x_pad = self._pad(x)
        feats = self.features(x_pad)
        grain, _, _ = self._route(x_pad, feats, router or self.router_mode, fine_ratio=fine_ratio, level=level)
        depth = self._depth_map(grain, depth)
        deepest = int(depth.max()) if depth.numel() else 1
        return self._tokens(grain, depth, self.stage_indices(feats, grain, deepest), x.shape[-2:])

    @torch.no_grad()
    def stage_indices(self, feats, grain=None, depth=None):
        """Per level, the (B, Hk, Wk, stages) code indices of every vector of encoder features `feats`.

        Nested levels code their map minus the coarser levels' codes at full
        depth. Given the `grain` map, alternative levels search the codebook
        only where the grain chooses them, and given `depth` only in its
        first stages (elsewhere the indices are 0: the tokens mask them).
        """
        if not self.nested:
            if grain is None:
                return [self.quantizer.encode(f.permute(0, 2, 3, 1), depth) for f in feats]
            out = []
            for f, used in zip(feats, self._level_masks(grain)):
                z = f.permute(0, 2, 3, 1)
                idx = z.new_zeros(*z.shape[:-1], self.quantizer.num_stages, dtype=torch.long)
                idx[used] = self.quantizer.encode(z[used], depth)
                out.append(idx)
            return out
        indices, above = [None] * self.num_levels, None
        for k in reversed(range(self.num_levels)):
            z = (feats[k] if above is None else feats[k] - above).permute(0, 2, 3, 1)
            vq = self.level_quantizer(k)
            indices[k] = vq.encode(z)
            if k:
                coded = vq.lookup(indices[k]).permute(0, 3, 1, 2) + (0 if above is None else above)
                above = repeat_cells(coded, self.factors[k] // self.factors[k - 1])
        return indices

    @torch.no_grad()
    def decode(self, tokens):
        """Field (B, C, H, W) from tokens; deterministic for given tokens in eval mode."""
        if (tokens.factors != self.factors or tokens.codebook_size != self.quantizer.codebook_size
                or tokens.stages > self.quantizer.num_stages or tokens.nested != self.nested):
            kind = {True: "nested", False: "alternative"}
            raise ValueError(
                f"tokens were made with factors {tokens.factors}, {tokens.codebook_size} codes, "
                f"{tokens.stages} stages and {kind[tokens.nested]} levels; this model has factors {self.factors}, "
                f"{self.quantizer.codebook_size} codes, {self.quantizer.num_stages} stages and "
                f"{kind[self.nested]} levels"
            )
        tokens.validate()
        H, W = tokens.shape
        q_levels = [self.level_quantizer(k).lookup(c.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                    for k, c in enumerate(tokens.stage_codes())]
        gate = F.one_hot(tokens.grain, self.num_levels).permute(0, 3, 1, 2).to(q_levels[0].dtype)
        return self._synthesize(gate, q_levels, tokens.grain, (H, W))

    def tokens_per_field(self, shape, fine_ratio=None, router=None, level=None, depth=None):
        """Number of codes ``encode`` gives a field of `shape` (H, W), same arguments (`depth` an int).

        Exact for every router except the learned one choosing by argmax (no
        `fine_ratio`, trained with the budget loss): for it, the count at the
        target ratios, which training aims at.
        """
        f_K, K = self.factors[-1], self.num_levels
        regions = -(-shape[0] // f_K) * -(-shape[1] // f_K)
        fine_ratio = self.inference_fine_ratio(router or self.router_mode, fine_ratio)
        if (router or self.router_mode) == "fixed":
            level = self.fixed_level if level is None else level
            ratios = [float(k == level) for k in range(K)]
        else:
            ratios = self.target_ratios if fine_ratio is None else budget_ratios(fine_ratio, self.target_ratios)
        depth = self.quantizer.num_stages if depth is None else int(depth)
        return sum(n * self.region_codes(k, depth) for k, n in enumerate(level_counts(regions, ratios)))

    def region_codes(self, level, depth):
        """Codes one region carries at grain `level` and `depth` (with nested levels, the coarser ones' too)."""
        f_K, S = self.factors[-1], self.quantizer.num_stages
        above = sum((f_K // f) ** 2 for f in self.factors[level + 1 :]) * S if self.nested else 0
        return (f_K // self.factors[level]) ** 2 * depth + above


def vqvae(factor=8, **kwargs):
    """The fixed-grain VQ-VAE baseline: one level, every region one code per f x f cells."""
    return DQVAE(factors=(factor,), router="fixed", **kwargs)
