"""How much memory one training trial needs, from its config alone, before it is started.

Why: a config that cannot fit its device share would otherwise be launched, allocate for a while
and die with an out-of-memory error (or, several trials sharing a GPU, take its neighbours down
with it). The search marks such a config INFEASIBLE instead, with the estimate and the limit in
the reason, exactly as it does for ``max_params``.

The estimate is deliberately simple, and calibrated against measured peaks of live memory on CPU
(``tests/search/test_memory.py`` checks three shapes within 30%; the calibration set of 17 came
within 12%). For a Transformer:

- fp32 weights, their gradients and AdamW's two moments: 16 bytes per parameter;
- activations kept for the backward pass: ``tokens x d_model x layers x factor`` plus the
  feed-forward's ``tokens x d_ff x layers x factor`` (the factors count the tensors each layer
  saves), with ``tokens = batch x longest sequence``;
- attention scores ``batch x heads x T^2`` (one block's worth: fused attention kernels keep no
  T x T tensor for the backward pass);
- the output logits with their log-softmax and gradients, ``tokens x target vocabulary x 4``.

Activations are 2 bytes under bf16 autocast on a GPU, 4 otherwise; a GPU trial adds the CUDA
context and library workspaces, a CPU trial what torch's first training step allocates for itself.
The rnn and mlp families (``model.family``) have their own activation terms (``rnn_activations``,
``mlp_activations``); weights, logits and overheads are counted alike. Only the standard library is
imported at module level, so the driver can plan trials without touching a GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from attntune.model.config import ModelConfig, TrainConfig, load_dataclass
from attntune.model.cost import n_params

GiB = 1024**3
MiB = 1024**2

# Floats saved per token and per layer for the backward pass, fitted (non-negative least squares)
# to the live peaks of 17 configs on CPU, spanning vocabulary-, weight-, activation- and
# attention-dominated shapes: every one within 12% (docs/scale-out.md has the table).
ENC_PER_D = 7.5  # LN in/out, Q/K/V, attention out, out-proj input, residuals
DEC_PER_D = 12.0  # the same plus cross-attention (query, memory keys/values, out-proj, LN3)
EMB_PER_D = 4.5  # both embeddings, scaled, plus positions, dropout, final norms
FF_PER_F = 1.5  # linear1 output kept by the ReLU, and half the time the ReLU's own output
FF_DROPOUT_PER_F = 0.5  # the dropout mask after the ReLU
# Fused attention kernels keep no T x T tensor for the backward pass; what peaks is one attention
# block's padding-mask bias and score tile at a time: batch x heads x T^2, once, not per layer.
ATTN_FACTOR = 0.25
LOGITS_FACTOR = 4.0  # logits, log-softmax, the loss's gradient paths and the logits' gradient
# The other families (``model.family``), fitted the same way to the live CPU peaks of 10 rnn and 8 mlp
# configs (GRU/LSTM, bidirectional, additive/dot; mixing widths 64-512): every one within 6%.
RNN_EMB_PER_D = 6.0  # both embeddings, scaled, dropout, and the attentional vector's inputs
RNN_PER_GATE = 3.0  # per gate unit of each RNN layer and direction: gates, states, layer outputs
RNN_OUT_PER_D = 1.0  # per unit of context, decoder state and attentional vector
ADDITIVE_PER_H = 2.5  # additive attention: the (B, T, S, H) sum and its tanh
SCORES_FACTOR = 30.0  # per (B, T, S) pair: scores, mask, softmax and their gradients
MLP_PER_D = 2.0  # per sublayer: LayerNorm input and output at model width
MLP_PER_E = 6.0  # per mixing: u, v, LN(v), the mix, gelu(u) and the gated product
MLP_PER_F = 2.5  # the channel MLP's hidden layer, its GELU and (with dropout) masks
BYTES_PER_PARAM = 16.0  # fp32 weight, gradient and AdamW's two moments (the fused step adds none)
CPU_OVERHEAD = 90 * MiB  # what the first training step adds on CPU: autograd engine, thread pools
CUDA_OVERHEAD = 600 * MiB  # CUDA context, cuBLAS/cuDNN workspaces and allocator slack


def estimate_bytes(
    model_cfg: Any,
    train_cfg: Any,
    src_vocab: int,
    tgt_vocab: int,
    max_tokens: int,
    *,
    cuda: bool = False,
) -> int:
    """Peak bytes one training step of this config needs (weights, optimizer, activations).

    ``max_tokens`` is the longest sequence (source or target, in tokens) a batch can hold.
    ``cuda`` selects bf16 activations (when ``train_cfg.bf16``) and adds the CUDA overhead.
    The activations are the family's (``model.family``; a config without one is a Transformer).
    """
    m = model_cfg
    p = n_params(m, src_vocab, tgt_vocab)
    t = max(1, int(max_tokens))
    if getattr(train_cfg, "batch_unit", "sentences") == "tokens":
        batch = max(1, int(train_cfg.batch_size) // t)
    else:
        batch = max(1, int(train_cfg.batch_size))
    family = getattr(m, "family", "transformer")
    activations = {"transformer": transformer_activations, "rnn": rnn_activations, "mlp": mlp_activations}[family]
    logits = batch * t * tgt_vocab * LOGITS_FACTOR
    act_bytes = 2 if (cuda and getattr(train_cfg, "bf16", False)) else 4
    total = p * BYTES_PER_PARAM + act_bytes * activations(m, batch, t) + 4 * logits
    return int(total + (CUDA_OVERHEAD if cuda else CPU_OVERHEAD))


def transformer_activations(m: Any, batch: int, t: int) -> float:
    """Values a Transformer saves for the backward pass (the factors above)."""
    n_enc, n_dec = m.n_encoder_layers, m.n_decoder_layers
    ff_per_f = FF_PER_F + (FF_DROPOUT_PER_F if m.dropout > 0 else 0.0)
    per_token = m.d_model * (ENC_PER_D * n_enc + DEC_PER_D * n_dec + EMB_PER_D) + m.d_ff * ff_per_f * (n_enc + n_dec)
    return batch * t * per_token + batch * m.n_heads * t * t * ATTN_FACTOR


def rnn_activations(m: Any, batch: int, t: int) -> float:
    """Values an RNN with attention saves: per gate unit of every layer and direction, the output
    side (context, state, attentional vector) and the attention over (T, S) pairs."""
    h = m.hidden if m.hidden is not None else m.d_model
    dirs = 2 if m.bidirectional else 1
    gates = (4 if m.rnn_cell == "lstm" else 3) * h * (dirs * m.n_encoder_layers + m.n_decoder_layers)
    per_token = m.d_model * RNN_EMB_PER_D + gates * RNN_PER_GATE + (dirs * h + h + m.d_model) * RNN_OUT_PER_D
    pairs = batch * t * t
    attention = pairs * (ADDITIVE_PER_H * h if m.attention == "additive" else 0.0) + pairs * SCORES_FACTOR
    return batch * t * per_token + attention


def mlp_activations(m: Any, batch: int, t: int) -> float:
    """Values the all-MLP model saves: per sublayer, model-width (norms, residuals), mixing-width
    (u, v, the mix, the gate) and d_ff-width values (the channel MLP)."""
    e = m.token_mixing_dim if m.token_mixing_dim is not None else m.d_model
    n_enc, n_dec = m.n_encoder_layers, m.n_decoder_layers
    sublayers = 2 * n_enc + 3 * n_dec  # token mixing + channel MLP, plus cross mixing in the decoder
    mixings = n_enc + 2 * n_dec
    per_token = m.d_model * (MLP_PER_D * sublayers + EMB_PER_D) + e * MLP_PER_E * mixings + m.d_ff * MLP_PER_F * (n_enc + n_dec)
    return batch * t * per_token


def longest_sequence(data: Any) -> int:
    """The longest training sequence in tokens (source, or target without its first token)."""
    longest = 0
    for s, t in data.train:
        longest = max(longest, len(s), len(t) - 1)
    return max(1, longest)


# --------------------------------------------------------------------------- limits


def gpu_memory_bytes() -> list[int]:
    """Total memory of each visible GPU, read with ``nvidia-smi`` so the driver never creates a
    CUDA context (which would take memory on device 0). Empty without NVIDIA GPUs."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    sizes = {}
    for line in out.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            sizes[parts[0]] = int(float(parts[1]) * MiB)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [x.strip() for x in visible.split(",") if x.strip()]
        return [sizes[i] for i in ids if i in sizes]
    return [sizes[k] for k in sorted(sizes, key=int)]


def trial_memory_limit(job: Any, gpu_sizes: list[int] | None = None) -> tuple[int, str] | None:
    """(bytes, where the limit comes from) for one trial of ``job``, or None for no limit.

    ``resources.memory_gb`` wins. Otherwise a GPU job (``resources.gpus > 0`` and GPUs visible
    to the driver) gets its share of the smallest device: memory x min(gpus, 1), since a trial
    trains on one device. A CPU job without ``memory_gb`` has no limit.
    """
    res = job.resources
    memory_gb = getattr(res, "memory_gb", None)
    if memory_gb:
        return int(float(memory_gb) * GiB), f"resources.memory_gb={memory_gb:g}"
    if res.gpus <= 0 or getattr(job.base.train, "device", "auto") == "cpu":
        return None
    sizes = gpu_sizes if gpu_sizes is not None else gpu_memory_bytes()
    if not sizes:
        return None
    share = min(float(res.gpus), 1.0)
    return int(min(sizes) * share), f"{min(sizes) / GiB:.1f} GiB GPU x resources.gpus={res.gpus:g}"


def trial_on_gpu(job: Any) -> bool:
    """Whether trials of ``job`` train on a GPU that the driver can see (bf16 activations, CUDA
    overhead in the estimate)."""
    if job.resources.gpus <= 0 or getattr(job.base.train, "device", "auto") == "cpu":
        return False
    return bool(gpu_memory_bytes())


def memory_problem(
    cfg: Any, vocab: tuple[int, int], max_tokens: int, limit: tuple[int, str] | None, *, cuda: bool = False
) -> str | None:
    """The INFEASIBLE reason when ``cfg`` cannot fit ``limit``, else None."""
    if limit is None:
        return None
    need = estimate_bytes(cfg.model, cfg.train, vocab[0], vocab[1], max_tokens, cuda=cuda)
    if need <= limit[0]:
        return None
    return (
        f"memory estimate {need / GiB:.2f} GiB exceeds the limit {limit[0] / GiB:.2f} GiB ({limit[1]}); "
        "lower batch_size, d_model or layers, or raise the limit"
    )


# --------------------------------------------------------------------------- measuring


def measure_peak_bytes(
    model_cfg: Any, train_cfg: Any, src_vocab: int, tgt_vocab: int, max_tokens: int, steps: int = 2
) -> int:
    """Measured peak bytes of ``steps`` training steps on a full random batch.

    On CUDA: ``torch.cuda.max_memory_allocated``. On CPU: the growth of the process's peak resident
    set (``ru_maxrss``) over what it held before the model was built, so call it in a fresh
    process started with ``MALLOC_MMAP_THRESHOLD_=131072`` (``python -m attntune.search.memory``
    does both): the peak of live memory, identical from run to run. Checks ``estimate_bytes``.
    """

    import torch
    import torch.nn.functional as F

    from attntune.model.families import build_model  # torch: measuring only
    from attntune.model.train import autocast_for, make_optimizer, resolve_device  # torch: measuring only

    device = resolve_device(train_cfg.device)
    t = max(2, int(max_tokens))
    batch = (
        max(1, train_cfg.batch_size // t) if train_cfg.batch_unit == "tokens" else max(1, train_cfg.batch_size)
    )
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, src_vocab, (batch, t), generator=g).to(device)
    tgt = torch.randint(4, tgt_vocab, (batch, t + 1), generator=g).to(device)
    src[:, -1] = 0  # some padding, so the key-padding mask path runs as in real batches
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _reset_peak_rss()  # the peak so far (imports) must not count
        base = _rss_bytes()
    model = build_model(model_cfg, src_vocab, tgt_vocab, pad_id=0).to(device)
    opt = make_optimizer(model, train_cfg)
    model.train()
    for _ in range(steps):
        with autocast_for(device, train_cfg.bf16):
            logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(  # as attntune.model.train computes it: (B*T, V) rows
            logits.float().flatten(0, 1),
            tgt[:, 1:].flatten(),
            ignore_index=0,
            label_smoothing=train_cfg.label_smoothing,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    peak = _peak_rss_bytes()
    return int(peak - base)


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process's peak resident set (VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    """Peak resident set since the last reset (VmHWM), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rss_bytes() -> int:
    """Current resident set size (Linux ``/proc``; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _main(argv: list[str] | None = None) -> None:
    """``python -m attntune.search.memory '{"model": {...}, "train": {...}, "src_vocab": V, ...}'``:
    print the estimate and the measured peak (bytes) of that config as JSON, in this fresh process."""
    import json
    import sys

    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and argv is None:
        # A fixed mmap threshold makes glibc return freed large blocks at once, so the peak
        # resident set is the peak of live memory (run to run identical), not heap retention.
        os.execve(sys.executable, [sys.executable, "-m", "attntune.search.memory", *sys.argv[1:]],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})  # fmt: skip
    spec = json.loads((argv or sys.argv[1:])[0])
    model_cfg = load_dataclass(ModelConfig, spec.get("model", {}))
    train_cfg = load_dataclass(TrainConfig, spec.get("train", {}))
    threads = int(spec.get("threads", 1))
    import torch

    torch.set_num_threads(threads)
    args = (model_cfg, train_cfg, int(spec["src_vocab"]), int(spec["tgt_vocab"]), int(spec["max_tokens"]))
    measured = measure_peak_bytes(*args, steps=int(spec.get("steps", 2)))
    cuda = train_cfg.device != "cpu" and torch.cuda.is_available()
    print(json.dumps({"estimate": estimate_bytes(*args, cuda=cuda), "measured": measured}))


if __name__ == "__main__":
    _main()
