"""The engine: a synchronous core (`LLMEngine`: add_request / step) and an asyncio facade
(`AsyncEngine`: generate / abort) whose single background thread owns the device.

One step = schedule -> chunkwise prefill pieces -> one batched recurrent decode step, in place on
the pool's rows -> sampling -> outputs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from engine.constraints import Constraints
from engine.cpu_linear import can_pack, packed_copy
from engine.engine_config import EngineConfig
from engine.errors import EngineOverloaded, InvalidRequestError
from engine.model import RetNet
from engine.sampling import Sampler, SamplingParams, TokenLogprob
from engine.scheduler import Scheduler, prefill_piece_size
from engine.sequence import Request, RequestOutput, Sequence
from engine.state import RetentionState, state_shapes
from engine.state_pool import StatePool

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_slots_used: int
    num_slots_total: int
    pool_bytes: int
    num_steps: int
    num_prefill_tokens: int  # fed chunkwise
    num_decode_tokens: int  # fed through the batched recurrent step
    last_batch_size: int  # decode rows in the last step
    last_step_seconds: float
    total_step_seconds: float
    # decode steps by batch size: decode_batch_sizes[b] steps ran b rows (b = 0: prefill only)
    decode_batch_sizes: tuple[int, ...] = ()
    num_forced_tokens: int = 0  # emitted because a grammar forced them (not sampled)


class LLMEngine:
    """Synchronous core: add requests, call `step()` until `has_unfinished_requests()` is False.
    Deterministic (no threads): tests and benchmarks drive it directly."""

    def __init__(self, model: RetNet, config: EngineConfig | None = None, tokenizer=None):
        self.config = config = config or EngineConfig()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        device, dtype = config.torch_device, config.torch_dtype
        if model.device != device or model.dtype != dtype:
            model = model.to(device=device, dtype=dtype)
        self.model = model.eval().requires_grad_(False)
        # read before packing: the packed copy's linears are not in its state_dict
        self.model_fingerprint = self.model.fingerprint
        # CPU: oneDNN prepacked weights run the decode step's matmuls ~2x faster than MKL sgemm;
        # a packed copy, so that the caller's model stays trainable and saveable
        self.packed_linears = 0
        if config.cpu_packed_linear and can_pack(device, dtype) and not config.compile_decode:
            self.model, self.packed_linears = packed_copy(self.model)
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

    def make_sequence(self, request: Request) -> Sequence:
        """Validates a request (InvalidRequestError) and wraps it; nothing is queued yet."""
        vocab = self.model.config.vocab_size
        if not isinstance(request.params, SamplingParams):
            raise InvalidRequestError("params must be SamplingParams")
        if not request.prompt_ids:
            raise InvalidRequestError("the prompt is empty: at least one new token is needed")
        for what, ids in (("prompt_ids", request.prompt_ids),
                          ("trailing_ids", request.trailing_ids),
                          ("sampling token ids", request.params.token_ids())):
            if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
                raise InvalidRequestError(f"{what}: token ids must be integers in [0, {vocab})")
        if (request.params.logprobs or 0) > self.config.max_logprobs:
            raise InvalidRequestError(f"logprobs must be <= {self.config.max_logprobs}")
        self._check_initial_state(request)
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

    def _check_initial_state(self, request: Request) -> None:
        state, mc = request.initial_state, self.model.config
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
        return RequestOutput(
            seq.request_id, token_ids, text, seq.finish_reason if finished else None,
            len(seq.prompt_ids), seq.num_cached_tokens, len(seq.output_ids), logprobs, state,
            seq.timings() if finished else None)

    def stats(self) -> EngineStats:
        return EngineStats(
            self.scheduler.num_running, self.scheduler.num_waiting,
            self.pool.num_slots - self.pool.num_free, self.pool.num_slots, self.pool.nbytes,
            self._num_steps, self._num_prefill_tokens, self._num_decode_tokens,
            self._last_batch_size, self._last_step_seconds, self._total_step_seconds,
            tuple(self._decode_batch_sizes), self._num_forced_tokens)

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


class AsyncEngine:
    """asyncio facade: `generate()` streams a request's outputs; a background thread runs
    `LLMEngine.step()` and hands each step's outputs to the event loop in one callback."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("add", Sequence) | ("abort", id)
        self._wakeup = threading.Event()
        self._streams: dict[str, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._is_stopped = False

    @classmethod
    def from_model(cls, model: RetNet, config: EngineConfig | None = None,
                   tokenizer=None) -> AsyncEngine:
        return cls(LLMEngine(model, config, tokenizer))

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    def generate(self, request: Request) -> AsyncIterator[RequestOutput]:
        """Validates now (InvalidRequestError, EngineOverloaded); the request is queued when the
        iterator is first awaited and aborted if the iterator is closed before it finishes."""
        if request.request_id in self._streams:
            raise InvalidRequestError(f"request id {request.request_id!r} is already running")
        if not request.admitted and self.engine.num_waiting + self._inbox.qsize() \
                >= self.engine.config.max_waiting:
            raise EngineOverloaded("the waiting queue is full")
        return self._stream(self.engine.make_sequence(request))

    async def _stream(self, seq: Sequence) -> AsyncIterator[RequestOutput]:
        self._ensure_started()
        request_id = seq.request_id
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = stream
        self._submit(("add", seq))
        is_finished = False
        error = None
        try:
            while True:
                item = error or await stream.get()
                if isinstance(item, BaseException):
                    is_finished = True
                    raise item
                # a consumer that fell behind takes what piled up as one output: per-output
                # work (an SSE event, a socket write) then stops competing with the engine
                while not item.finished and not stream.empty():
                    later = stream.get_nowait()
                    if isinstance(later, BaseException):
                        error = later
                        break
                    item = item.merged(later)
                is_finished = item.finished
                yield item
                if is_finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not is_finished:
                self._submit(("abort", request_id))

    def abort(self, request_id: str) -> None:
        """Ends a request; its stream receives a final output with finish_reason "abort"."""
        self._submit(("abort", request_id))

    def _submit(self, command: tuple) -> None:
        self._inbox.put(command)
        self._wakeup.set()

    def _ensure_started(self) -> None:
        if self._is_stopped:
            raise RuntimeError("the engine is shut down")
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, name="retserve-engine", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        """Stops the engine thread; open streams end with an error. Call from the event loop."""
        self._is_stopped = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.engine.close()
        for stream in self._streams.values():
            stream.put_nowait(RuntimeError("the engine is shut down"))

    def _run(self) -> None:
        if self.engine.config.num_threads:
            torch.set_num_threads(self.engine.config.num_threads)
        while not self._is_stopped:
            self._wakeup.clear()
            delivered = self._drain_inbox()
            if not self.engine.has_unfinished_requests():
                if delivered:
                    self._deliver(delivered)
                self._wakeup.wait()
                continue
            try:
                delivered += self.engine.step()
            except Exception as e:  # a bug or device error: fail what is running, keep serving
                logger.exception("engine step failed")
                delivered += [(output.request_id, e) for output in self.engine.abort_all()]
            if delivered:
                self._deliver(delivered)

    def _drain_inbox(self) -> list:
        delivered = []
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return delivered
            if kind == "add":
                try:
                    self.engine.add_sequence(payload)
                except (EngineOverloaded, InvalidRequestError) as e:
                    delivered.append((payload.request_id, e))
            else:
                output = self.engine.abort_request(payload)
                if output is not None:
                    delivered.append(output)

    def _deliver(self, items: list) -> None:
        try:
            self._loop.call_soon_threadsafe(self._dispatch, items)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def _dispatch(self, items: list) -> None:
        for item in items:
            if isinstance(item, RequestOutput):
                stream = self._streams.get(item.request_id)
                if stream is not None:
                    stream.put_nowait(item)
            else:
                request_id, error = item
                stream = self._streams.get(request_id)
                if stream is not None:
                    stream.put_nowait(error)
