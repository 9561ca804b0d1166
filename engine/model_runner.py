"""Runs the model over the state pool: prefill pieces, and the batched decode step padded to a
bucket (a CUDA graph per bucket, or one compiled graph, when enabled)."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from engine.model import RetNet
from engine.state_pool import StatePool


class ModelRunner:
    """Runs the model on the pool: prefill pieces, and the decode step padded to a bucket (one
    CUDA graph per bucket when enabled) over staging buffers allocated once."""

    def __init__(self, model: RetNet, pool: StatePool, buckets: tuple[int, ...],
                 use_cuda_graphs: bool, compile_decode: bool = False):
        self.model, self.pool, self.buckets = model, pool, buckets
        self.device = pool.kv.device
        is_cuda = self.device.type == "cuda"
        # rows: input ids, slots, steps (tokens generated so far, keys the sampling noise)
        self.host = torch.zeros(3, buckets[-1], dtype=torch.long, pin_memory=is_cuda)
        self.host_np = self.host.numpy()
        self.inputs = self.host.to(self.device) if is_cuda else self.host
        self.bucket_of = [next(b for b in buckets if b >= n) for n in range(buckets[-1] + 1)]
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.graph_logits: dict[int, Tensor] = {}
        self.decode_step = model.decode_step
        self.compile_seconds = 0.0
        if compile_decode:
            self.decode_step = self.compile_decode_step()
        if use_cuda_graphs:
            self.capture_cuda_graphs()

    def prefill(self, slot: int, token_ids: list[int]) -> None:
        ids = torch.tensor([token_ids], device=self.device)
        _, state = self.model.prefill(ids, self.pool.state(slot), return_logits=False)
        self.pool.write(slot, state)

    def decode(self, seqs: list) -> tuple[Tensor, Tensor, Tensor]:
        """One token per sequence (pool rows 0..n-1) -> logits [n, V], slots [n], steps [n]."""
        n = len(seqs)
        size = self.bucket_of[n]
        self.host_np[0, :n] = [seq.next_input for seq in seqs]
        self.host_np[0, n:size] = 0
        self.host_np[1, :n] = [seq.slot for seq in seqs]
        self.host_np[2, :n] = [len(seq.output_ids) for seq in seqs]
        if self.inputs is not self.host:
            self.inputs[:, :size].copy_(self.host[:, :size], non_blocking=True)
        if size in self.graphs:
            self.graphs[size].replay()
            logits = self.graph_logits[size]
        else:
            rows = self.pool.decode_batch(size)
            logits = self.decode_step(self.inputs[0, :size], rows.kv, rows.num_tokens, rows.conv)
        return logits[:n], self.inputs[1, :n], self.inputs[2, :n]

    @torch.inference_mode()
    def compile_decode_step(self):
        """The decode step through inductor, compiled now on the pool's first rows (free at
        start-up) for any batch size; weights frozen as constants (oneDNN packs them)."""
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(self.model.decode_step, dynamic=True)
        start = time.perf_counter()
        for size in sorted({self.buckets[0], self.buckets[-1]}):
            rows = self.pool.decode_batch(size)
            compiled(self.inputs[0, :size], rows.kv, rows.num_tokens, rows.conv)
        self.compile_seconds = time.perf_counter() - start
        return compiled

    @torch.inference_mode()
    def capture_cuda_graphs(self) -> None:
        """One graph per bucket over the pool's first rows (all free at start-up), sharing one
        memory pool; largest first so the smaller ones reuse its blocks."""
        memory_pool = None
        for size in reversed(self.buckets):
            rows = self.pool.decode_batch(size)
            args = (self.inputs[0, :size], rows.kv, rows.num_tokens, rows.conv)
            self.decode_step(*args)  # warm-up: kernels, cuBLAS workspaces
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=memory_pool):
                self.graph_logits[size] = self.decode_step(*args)
            memory_pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()
