"""Vector quantization with one shared codebook, EMA updates and dead-code restart."""

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def perplexity(counts):
    """exp(entropy) of a histogram of code uses: the number of equally used codes it is worth."""
    p = counts / counts.sum().clamp(min=1e-12)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum()).item()


class VectorQuantizer(nn.Module):
    """Nearest-code quantization of vectors of size `dim`.

    The codebook is not trained by gradient: it follows an exponential moving
    average of the vectors assigned to each code (with Laplace smoothing of
    the counts), and a code whose average usage falls below
    `dead_code_threshold` times the mean usage is moved onto a random vector
    of the batch. The codebook is initialised from the first training batch.
    The encoder is pulled to its codes by the commitment loss
    `commitment * |z - sg(q)|^2`; the output passes gradients straight through.

    Parameters
    ----------
    codebook_size, dim : number and size of the codes.
    commitment : weight of the commitment loss (beta).
    decay : EMA decay of the code counts and sums.
    eps : Laplace smoothing of the counts.
    dead_code_threshold : usage, relative to the mean usage, below which a code
        is restarted (0 disables restarts). At 0.5 and decay 0.99 a code that
        stops being used is restarted after about 70 steps; early in training,
        when the encoder drifts away from the initial codebook, that is how
        most of the codebook comes back into use.
    """

    def __init__(self, codebook_size=1024, dim=64, commitment=0.25, decay=0.99, eps=1e-5, dead_code_threshold=0.5):
        super().__init__()
        if not 0.0 <= dead_code_threshold < 1.0:
            raise ValueError(
                f"dead_code_threshold is relative to the mean usage and must lie in [0, 1), got {dead_code_threshold}"
            )
        self.codebook_size, self.dim = codebook_size, dim
        self.commitment, self.decay, self.eps = commitment, decay, eps
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("embed", torch.randn(codebook_size, dim))
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # EMA count per code
        self.register_buffer("embed_sum", self.embed.clone())  # EMA sum of the vectors per code
        self.register_buffer("initialised", torch.tensor(False))
        self.last_counts = torch.zeros(codebook_size)  # assignments in the last batch, for the stats

    @torch.no_grad()
    def nearest(self, z_ND, chunk=None):
        """(N,) index of the nearest code (squared Euclidean distance) for each row of z_ND.

        Rows go `chunk` at a time; on the CPU by default 512, so that their
        distances to the codebook stay in the processor's cache (3x faster on 2
        cores than chunks of 8192), on a GPU 65536.
        """
        chunk = chunk or (512 if z_ND.device.type == "cpu" else 65536)
        # float32 even under autocast: bf16 distances cannot tell nearby codes apart
        with torch.autocast(z_ND.device.type, enabled=False):
            e_sq = self.embed.square().sum(1)
            out = []
            for z in z_ND.detach().float().split(chunk):
                # |z|^2 is the same for every code, so it does not change the argmin; min's
                # indices (the first minimum, as argmin's) come 3x faster than argmin on a CPU
                out.append(torch.addmm(e_sq, z, self.embed.T, alpha=-2).min(1).indices)
        return torch.cat(out) if out else z_ND.new_zeros(0, dtype=torch.long)

    def lookup(self, indices):
        """Code vectors for an index tensor of any shape: (..., dim)."""
        return F.embedding(indices, self.embed)

    def forward(self, z, mask=None):
        """Quantize z (..., dim).

        Parameters
        ----------
        z : (..., dim) vectors.
        mask : optional (...) bool; only the rows where it is True count in the
            loss, the EMA statistics and the usage stats. The others are still
            quantized (their codes are returned) but leave the codebook alone.

        Returns
        -------
        (quantized, indices, loss) : (..., dim) with straight-through gradient,
            (...) long code indices, scalar commitment loss.
        """
        if z.shape[-1] != self.dim:
            raise ValueError(f"expected vectors of size {self.dim}, got shape {tuple(z.shape)}")
        z_ND = z.reshape(-1, self.dim).float()  # the codebook and its statistics stay float32
        mask_N = None if mask is None else mask.reshape(-1)
        idx = self.assign(z_ND, mask_N)
        q_ND = self.lookup(idx)
        counted, q_counted = (z_ND, q_ND) if mask_N is None else (z_ND[mask_N], q_ND[mask_N])
        loss = self.commitment * F.mse_loss(counted, q_counted.detach()) if len(counted) else z_ND.new_zeros(())
        q_ND = z_ND + (q_ND - z_ND).detach()
        return q_ND.view(z.shape), idx.view(z.shape[:-1]), loss

    def assign(self, z_ND, mask_N=None):
        """(N,) nearest-code indices of rows z_ND; in training also the codebook update.

        Only the rows where `mask_N` is True (all without one) count in the
        EMA statistics, the restarts and the usage stats.
        """
        counted = z_ND.detach() if mask_N is None else z_ND.detach()[mask_N]
        if self.training and not self.initialised and len(counted):
            self._init_codebook(counted)
        idx = self.nearest(z_ND)
        idx_counted = idx if mask_N is None else idx[mask_N]
        self.last_counts = torch.bincount(idx_counted, minlength=self.codebook_size).float()
        if self.training:
            self._ema_update(counted.float(), idx_counted)
        return idx

    @torch.no_grad()
    def _init_codebook(self, z_ND):
        n = len(z_ND)
        pick = torch.randperm(n)[: self.codebook_size] if n >= self.codebook_size else torch.randint(n, (self.codebook_size,))
        self.embed.copy_(z_ND[pick.to(z_ND.device)])
        # every code starts as if it had had its fair share of the batch
        self.cluster_size.fill_(len(z_ND) / self.codebook_size)
        self.embed_sum.copy_(self.embed * self.cluster_size[:, None])
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z_ND, idx):
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, z_ND)
        counts = self.last_counts.to(self.cluster_size)
        if dist.is_available() and dist.is_initialized():
            # Pool every process's assignments so the codebook follows all the data.
            # DistributedDataParallel broadcasts rank 0's buffers before each forward,
            # so rank 0's restarts (drawn from its own batch) are the ones kept.
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.lerp_(counts, 1 - self.decay)
        self.embed_sum.lerp_(sums, 1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        self._restart_dead_codes(z_ND)

    @torch.no_grad()
    def _restart_dead_codes(self, z_ND):
        mean_usage = self.cluster_size.mean()
        dead = self.cluster_size < self.dead_code_threshold * mean_usage
        n_dead = int(dead.sum())
        if n_dead == 0 or len(z_ND) == 0:
            return
        fresh = z_ND[torch.randint(len(z_ND), (n_dead,), device=z_ND.device)]
        self.embed[dead] = fresh
        self.cluster_size[dead] = mean_usage
        self.embed_sum[dead] = fresh * mean_usage

    def codebook_stats(self):
        """Usage (fraction of codes used) and perplexity, for the last batch and for the EMA counts."""
        alive = self.cluster_size >= self.dead_code_threshold * self.cluster_size.mean()
        return {
            "usage": (self.last_counts > 0).float().mean().item(),
            "perplexity": perplexity(self.last_counts),
            "ema_usage": alive.float().mean().item(),
            "ema_perplexity": perplexity(self.cluster_size),
        }
