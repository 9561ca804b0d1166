"""The synchronous engine: add_request / step.

One step = schedule -> chunkwise prefill pieces -> one batched recurrent decode step, in place on
the pool's rows -> sampling -> outputs.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.constraints import Constraints
from engine.cpu_linear import packed_copy, resolve_kernels
from engine.engine_config import EngineConfig
from engine.engine_info import EngineInfo
from engine.engine_stats import EngineStats
from engine.errors import InvalidRequestError
from engine.model import RetNet
from engine.model_runner import ModelRunner
from engine.sampling import Sampler, SamplingParams, TokenLogprob
from engine.scheduler import Scheduler, prefill_piece_size
from engine.sequence import Request, RequestOutput, Sequence
from engine.state import RetentionState, state_shapes
from engine.state_pool import StatePool


class LLMEngine:
    """Synchronous core: add requests, call `step()` until `has_unfinished_requests()` is False.
    Deterministic (no threads): tests and benchmarks drive it directly, on torch's threads as
    their caller set them (`config.num_threads` is for `AsyncEngine`'s own thread)."""

    def __init__(self, model: RetNet, config: EngineConfig | None = None, tokenizer=None):
        self.config = config = config or EngineConfig()
        device, dtype = config.torch_device, config.torch_dtype
        if model.device != device or model.dtype != dtype:
            model = model.to(device=device, dtype=dtype)
        self.model = model.eval().requires_grad_(False)
        # read before packing: the packed copy's linears are not in its state_dict
        self.model_fingerprint = self.model.fingerprint
        # CPU: retserve's kernels (or oneDNN's packed weights) run the decode step's matmuls
        # 1.2-3x faster than MKL sgemm; a copy, so that the caller's model stays trainable
        self.cpu_kernels = "torch" if config.compile_decode else \
            resolve_kernels(config.cpu_kernels, device, dtype)
        self.packed_linears = 0
        if self.cpu_kernels != "torch":
            self.model, self.packed_linears = packed_copy(self.model, self.cpu_kernels)
        self.tokenizer = tokenizer
        mc = model.config
        if tokenizer is not None:
            self.default_stop_ids = frozenset(tokenizer.stop_token_ids)
        else:
            self.default_stop_ids = frozenset({mc.eos_token_id} - {None})
        top = next(b for b in config.resolved_buckets() if b >= config.max_num_seqs)
        buckets = tuple(b for b in config.resolved_buckets() if b <= top)
        # free rows above the decoding ones, for a batch padded up to its bucket
        padding = max(b - a - 1 for a, b in zip((0, *buckets), buckets, strict=False))
        state_dtype = model.empty_state(0).kv.dtype
        num_slots = config.max_slots or self._num_slots_for_memory(padding, state_dtype)
        self.pool = StatePool(mc, num_slots, padding, device, state_dtype)
        self.scheduler = Scheduler(config, self.pool, mc.chunk_size)
        self.sampler = Sampler(num_slots, mc.vocab_size, device)
        top = next(b for b in buckets if b >= self.scheduler.max_num_seqs)  # fewer slots: less
        self.runner = ModelRunner(self.model, self.pool, tuple(b for b in buckets if b <= top),
                                  config.use_cuda_graphs, config.compile_decode)
        self._constraints: Constraints | None = None  # built on the first grammar
        self._seqs: dict[str, Sequence] = {}
        self._num_steps = self._num_prefill_tokens = self._num_decode_tokens = 0
        self._num_forced_tokens = 0
        self._last_batch_size, self._last_step_seconds, self._total_step_seconds = 0, 0.0, 0.0
        self._decode_batch_sizes = [0] * (self.scheduler.max_num_seqs + 1)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, config: EngineConfig | None = None,
                        tokenizer=None) -> LLMEngine:
        from engine.checkpoint import load_model

        config = config or EngineConfig()
        return cls(load_model(path, config.torch_device, config.torch_dtype), config, tokenizer)

    def _num_slots_for_memory(self, padding: int, state_dtype: torch.dtype) -> int:
        """max_num_seqs on CPU; on CUDA as many as fit the free memory left after a warm-up
        prefill piece (its activations are the step's peak), capped at max_num_seqs."""
        config = self.config
        if config.torch_device.type != "cuda":
            return config.max_num_seqs
        piece = prefill_piece_size(config, self.model.config.chunk_size)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            ids = torch.zeros(1, piece, dtype=torch.long, device=config.torch_device)
            self.model.prefill(ids, self.model.empty_state(1))
        activations = torch.cuda.max_memory_allocated() - before
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
        usable = free * config.gpu_memory_utilization - 2 * activations
        row = StatePool.row_nbytes(self.model.config, state_dtype)
        num_slots = min(config.max_num_seqs, int(usable // row) - padding)
        if num_slots < 1:
            raise RuntimeError(f"no room for a single state slot ({row} bytes) on the device")
        return num_slots

    # requests ----------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(model_config=self.model.config,
                          model_fingerprint=self.model_fingerprint,
                          state_dtype=self.pool.kv.dtype, num_slots=self.pool.num_slots,
                          config=self.config)

    def make_sequence(self, request: Request, is_checked: bool = False) -> Sequence:
        """Validates a request (InvalidRequestError; `is_checked`: `check_request` passed it
        already) and wraps it; nothing is queued yet."""
        if not is_checked:
            check_request(request, self.model.config, self.config)
        stop_ids = frozenset(request.params.stop_token_ids)
        if not request.params.ignore_eos:
            stop_ids |= self.default_stop_ids
        detokenizer = (self.tokenizer.detokenizer(context_ids=request.prompt_ids)
                       if self.tokenizer is not None else None)
        constraint = None
        if request.params.grammar is not None:
            constraint = self.constraints.compile(request.params.grammar)  # GrammarError
        return Sequence(request, stop_ids, detokenizer, constraint)

    @property
    def constraints(self) -> Constraints:
        """Grammar machinery over this engine's tokenizer (built on first use, ~50 ms)."""
        if self._constraints is None:
            if self.tokenizer is None:
                raise InvalidRequestError("grammars need an engine built with a tokenizer")
            self._constraints = Constraints(
                self.tokenizer.to_json(), self.model.config.vocab_size,
                self.tokenizer.stop_token_ids, self.pool.num_slots, self.config.torch_device)
        return self._constraints

    def add_request(self, request: Request) -> None:
        self.add_sequence(self.make_sequence(request))

    def add_sequence(self, seq: Sequence) -> None:
        if seq.request_id in self._seqs:
            raise InvalidRequestError(f"request id {seq.request_id!r} is already running")
        self.scheduler.add(seq)  # EngineOverloaded when the waiting queue is full
        self._seqs[seq.request_id] = seq

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Ends a request now (its slot is free on return); None if it is not known."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.finish(seq, "abort")
        return self._output(seq, [], "", None)

    def abort_all(self) -> list[RequestOutput]:
        """Ends every request (waiting or running); their final outputs."""
        return [self.abort_request(request_id) for request_id in list(self._seqs)]

    @property
    def num_waiting(self) -> int:
        """Requests queued for a slot."""
        return self.scheduler.num_waiting

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # the step -------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        start = time.perf_counter()
        batch = self.scheduler.schedule()
        with torch.inference_mode():
            for seq in batch.admitted:
                self.sampler.set_params(seq.slot, seq.params)
            self._start_masks(batch.admitted)
            outputs = []
            for seq, num_tokens in batch.prefill:
                begin = seq.num_prompt_fed
                self.runner.prefill(seq.slot, seq.prompt_ids[begin : begin + num_tokens])
                seq.num_prompt_fed += num_tokens
                if seq.is_prefill_only and not seq.num_prompt_left:
                    seq.finish_reason = "length"
                    outputs.append(self._finish(seq, [], "", None))
            if batch.decode:
                if self.config.forced_tokens == "prefill":
                    self._feed_forced(batch.decode)
                logits, slots, steps = self.runner.decode(batch.decode)
                sampled = self.sampler.sample(logits, slots, steps,
                                              [seq.params for seq in batch.decode],
                                              self._mask(batch.decode))
                for seq, token, logprob in zip(batch.decode, sampled.token_ids,
                                               sampled.logprobs, strict=True):
                    output = self._postprocess(seq, token, logprob)
                    if output is not None:
                        outputs.append(output)
                self._start_masks(batch.decode)
        elapsed = time.perf_counter() - start
        self._num_steps += 1
        self._num_prefill_tokens += sum(n for _, n in batch.prefill)
        self._num_decode_tokens += len(batch.decode)
        self._last_batch_size, self._last_step_seconds = len(batch.decode), elapsed
        self._decode_batch_sizes[len(batch.decode)] += 1
        self._total_step_seconds += elapsed
        return outputs

    # grammars ------------------------------------------------------------------------------

    def _start_masks(self, seqs: list[Sequence]) -> None:
        """Next masks of the constrained sequences among `seqs`, computed in the background."""
        items = [(seq.constraint, seq.slot) for seq in seqs if seq.constraint is not None
                 and seq.constraint.needs_mask and seq.finish_reason is None]
        for constraint, _ in items:
            constraint.needs_mask = False
        if items:
            self.constraints.start_masks(items)

    def _mask(self, seqs: list[Sequence]):
        """The sampler's mask hook for this batch; None (no cost) without constrained rows."""
        rows = [i for i, seq in enumerate(seqs) if seq.constraint is not None]
        if not rows:
            return None
        slots = [seqs[i].slot for i in rows]
        return lambda logits: self.constraints.apply(logits, rows, slots)

    def _feed_forced(self, seqs: list[Sequence]) -> None:
        """Forced tokens, fed chunkwise like prompt tokens before the decode step feeds the
        last of them (forced_tokens="prefill")."""
        for seq in seqs:
            if seq.unfed and seq.tail is None:
                self.runner.prefill(seq.slot, list(seq.unfed))
                self._num_prefill_tokens += len(seq.unfed)
                seq.unfed.clear()

    def _advance_grammar(self, seq: Sequence, token: int) -> tuple[list[int], bool]:
        """The sampled token consumed by the sequence's grammar; the tokens it forces next
        (within max_tokens), appended to the output; whether the grammar is complete with
        them (nothing cut)."""
        forced = seq.constraint.advance(token)
        kept = forced[:seq.params.max_tokens - len(seq.output_ids)]
        kept = list(itertools.takewhile(lambda t: t not in seq.stop_token_ids, kept))
        seq.output_ids += kept
        self._num_forced_tokens += len(kept)
        return kept, len(kept) == len(forced) and seq.constraint.is_done

    # outputs -------------------------------------------------------------------------------

    def _postprocess(self, seq: Sequence, token: int, logprob: TokenLogprob | None
                     ) -> RequestOutput | None:
        if seq.is_finishing:  # the decode step fed the next tail token; its sample is unused
            seq.tail.popleft()
            return None if seq.tail else self._finish(seq, [], "", None)
        if seq.unfed:  # the decode step fed a forced token (forced_tokens="decode")
            seq.unfed.popleft()
            return None
        if seq.num_prompt_left:
            seq.num_prompt_fed += 1  # the last prompt token went through this step
        seq.output_ids.append(token)
        if seq.first_token_time is None:
            seq.first_token_time = time.monotonic()
            if seq.return_prompt_state:  # the step fed the prompt's last token, nothing more
                seq.prompt_state = self.pool.export(seq.slot)
        is_stop = token in seq.stop_token_ids
        new, is_done = [token], False
        if seq.constraint is not None and not is_stop:
            forced, is_done = self._advance_grammar(seq, token)
            new += forced
        text = ""
        if seq.detokenizer is not None and not is_stop:
            text = "".join(seq.detokenizer.step(t) for t in new)
        reason = ("stop" if is_stop or is_done else
                  "length" if len(seq.output_ids) >= seq.params.max_tokens else None)
        logprobs = None
        if logprob is not None:  # a forced token is certain under its grammar: log 1
            logprobs = [logprob] + [TokenLogprob(t, 0.0, [(t, 0.0)][:seq.params.logprobs])
                                    for t in new[1:]]
        if reason is None:
            seq.unfed.extend(new[:-1])
            return self._output(seq, new, text, logprobs)
        if seq.detokenizer is not None:
            text += seq.detokenizer.flush()
        seq.finish_reason = reason
        tail = ([] if is_stop else new) + list(seq.trailing_ids) if seq.return_state else []
        if tail:  # stream the tokens now, finish once the tail is in the state
            seq.tail = deque(tail)
            return self._output(seq, new, text, logprobs)
        return self._finish(seq, new, text, logprobs)

    def _finish(self, seq: Sequence, token_ids: list[int], text: str,
                logprobs: list[TokenLogprob] | None) -> RequestOutput:
        state = self.pool.export(seq.slot) if seq.return_state else None
        self.scheduler.finish(seq, seq.finish_reason)
        del self._seqs[seq.request_id]
        return self._output(seq, token_ids, text, logprobs, state)

    @staticmethod
    def _output(seq: Sequence, token_ids: list[int], text: str,
                logprobs: list[TokenLogprob] | None,
                state: RetentionState | None = None) -> RequestOutput:
        finished = seq.finish_reason is not None and seq.tail is None
        prompt_state, seq.prompt_state = seq.prompt_state, None
        return RequestOutput(
            request_id=seq.request_id, token_ids=token_ids, text=text,
            finish_reason=seq.finish_reason if finished else None,
            num_prompt_tokens=len(seq.prompt_ids), num_cached_tokens=seq.num_cached_tokens,
            num_generated_tokens=len(seq.output_ids), logprobs=logprobs, state=state,
            timings=seq.timings() if finished else None, prompt_state=prompt_state)

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=self.scheduler.num_running, num_waiting=self.scheduler.num_waiting,
            num_slots_used=self.pool.num_slots - self.pool.num_free,
            num_slots_total=self.pool.num_slots, pool_bytes=self.pool.nbytes,
            num_steps=self._num_steps, num_prefill_tokens=self._num_prefill_tokens,
            num_decode_tokens=self._num_decode_tokens, last_batch_size=self._last_batch_size,
            last_step_seconds=self._last_step_seconds,
            total_step_seconds=self._total_step_seconds,
            decode_batch_sizes=tuple(self._decode_batch_sizes),
            num_forced_tokens=self._num_forced_tokens)

    def close(self) -> None:
        """Releases the grammar worker threads, if any; call once no request is running."""
        if self._constraints is not None:
            self._constraints.close()
            self._constraints = None

    def generate(self, requests: list[Request]) -> dict[str, list[RequestOutput]]:
        """Runs requests to completion: every output of each, by request id."""
        results: dict[str, list[RequestOutput]] = {r.request_id: [] for r in requests}
        for request in requests:
            self.add_request(request)
        while self.has_unfinished_requests():
            for output in self.step():
                results[output.request_id].append(output)
        return results


def check_request(request: Request, mc: ModelConfig, config: EngineConfig) -> None:
    """What an engine of this model and these settings refuses (InvalidRequestError); needs
    neither the model's weights nor its device, so a caller may check before it submits."""
    vocab = mc.vocab_size
    if not isinstance(request.params, SamplingParams):
        raise InvalidRequestError("params must be SamplingParams")
    if not request.prompt_ids:
        raise InvalidRequestError("the prompt is empty: at least one new token is needed")
    for what, ids in (("prompt_ids", request.prompt_ids),
                      ("trailing_ids", request.trailing_ids),
                      ("sampling token ids", request.params.token_ids())):
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
            raise InvalidRequestError(f"{what}: token ids must be integers in [0, {vocab})")
    if (request.params.logprobs or 0) > config.max_logprobs:
        raise InvalidRequestError(f"logprobs must be <= {config.max_logprobs}")
    state = request.initial_state
    if state is None:
        return
    if not isinstance(state, RetentionState):
        raise InvalidRequestError("initial_state must be a RetentionState")
    rows = [shape for shape in state_shapes(mc) if shape is not None]
    given = [tuple(t.shape) for t in state.tensors]
    if given != rows or tuple(state.num_tokens.shape) != (1,):
        raise InvalidRequestError(f"initial state must be one row of shapes {rows}, "
                                  f"got {given}")
    if int(state.num_tokens[0]) < 0:
        raise InvalidRequestError("initial state: token count must be >= 0")
