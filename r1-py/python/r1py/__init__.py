"""r1py: embeddable inference for DeepSeek-R1-family reasoning models.

Load a Hugging Face checkpoint (folder or ``.safetensors`` beside its ``config.json``) or a GGUF
file, chat with it (streamed or not), keep a conversation's cache in a :class:`Session`, get
logits as numpy arrays, and parse reasoning traces::

    import r1py
    with r1py.Model("model.gguf") as m:
        c = m.chat([{"role": "user", "content": "What is 7 * 6?"}], max_tokens=512)
        print(c.reasoning, c.answer, c.usage)
        for chunk in m.chat([{"role": "user", "content": "And 8 * 9?"}], stream=True):
            print(chunk.text, end="")

Compute runs with the GIL released; Ctrl-C stops a generation within a token and raises
``KeyboardInterrupt``, and the model stays usable.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from . import _r1
from ._errors import (
    Cancelled,
    ContextFull,
    FormatError,
    InternalError,
    InvalidArgument,
    InvalidUtf8,
    ModelNotFound,
    R1Error,
    TemplateError,
    Unsupported,
)

__version__ = _r1.__version__

__all__ = [
    "Model",
    "ModelSpec",
    "Session",
    "Completion",
    "Consensus",
    "DistillWriter",
    "Stream",
    "Chunk",
    "Trace",
    "parse_trace",
    "presets",
    "R1Error",
    "InvalidArgument",
    "InvalidUtf8",
    "FormatError",
    "ModelNotFound",
    "Unsupported",
    "ContextFull",
    "Cancelled",
    "TemplateError",
    "InternalError",
]

#: Generation presets: ``r1py.presets["deepseek_r1"]`` (the default: DeepSeek's recommendation
#: for R1, temperature 0.6 and top-p 0.95) and ``r1py.presets["greedy"]`` (argmax).
presets: Dict[str, Dict[str, Any]] = {
    "deepseek_r1": {"temperature": 0.6, "top_p": 0.95},
    "greedy": {"greedy": True},
}

_GEN_KEYS = {
    "max_tokens",
    "greedy",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "max_reasoning_tokens",
    "top_logprobs",
    "starts_in_reasoning",
    "verifier",
    "max_step_retries",
    "step_separators",
}

_OPENAI_FINISH = {
    "end_token": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "context_full": "length",
    "reasoning_budget": "length",
    "cancelled": "stop",
}


def _messages(messages: Any) -> List[tuple]:
    """OpenAI-style messages as (role, content) pairs, checked."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidArgument("messages must be a list of {'role', 'content'} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidArgument(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if content is None and m.get("tool_calls"):
            content = ""
        if not isinstance(role, str) or not isinstance(content, str):
            raise InvalidArgument(f"messages[{i}] needs string 'role' and 'content'")
        out.append((role, content))
    return out


def _gen_args(gen: Dict[str, Any]) -> tuple:
    """Keyword arguments of a generation, split into the settings dict and the tools."""
    tools = gen.pop("tools", None)
    unknown = set(gen) - _GEN_KEYS
    if unknown:
        raise TypeError(f"unknown generation argument(s): {', '.join(sorted(unknown))}")
    tool_texts = []
    for i, t in enumerate(tools or []):
        tool_texts.append(t if isinstance(t, str) else json.dumps(t))
    stop = gen.get("stop")
    if isinstance(stop, str):
        gen["stop"] = [stop]
    return gen, tool_texts


class Trace:
    """A parsed reasoning trace: ``reasoning``, ``answer``, ``truncated``, ``steps``,
    ``final_answer``, ``tool_calls`` (``[{"name", "arguments"}]``, arguments parsed) and ``errors``."""

    __slots__ = ("reasoning", "answer", "truncated", "steps", "final_answer", "tool_calls", "errors")

    def __init__(self, d: Dict[str, Any]):
        self.reasoning: str = d["reasoning"]
        self.answer: str = d["answer"]
        self.truncated: bool = d["truncated"]
        self.steps: List[str] = list(d["steps"])
        self.final_answer: Optional[str] = d["final_answer"]
        self.tool_calls: List[Dict[str, Any]] = [
            {"name": name, "arguments": json.loads(args) if valid else args} for name, args, valid in d["tool_calls"]
        ]
        self.errors: List[str] = list(d["errors"])

    def __repr__(self) -> str:
        return (
            f"Trace(reasoning={_short(self.reasoning)}, answer={_short(self.answer)}, "
            f"steps={len(self.steps)}, final_answer={self.final_answer!r}, tool_calls={len(self.tool_calls)})"
        )


def _short(s: str, n: int = 40) -> str:
    return repr(s if len(s) <= n else s[: n - 3] + "...")


def parse_trace(text: str, *, starts_in_reasoning: bool = False) -> Trace:
    """Splits recorded model output into reasoning and answer, steps, final answer, tool calls."""
    if not isinstance(text, str):
        raise TypeError("text must be a str")
    return Trace(_r1.parse_trace(text, bool(starts_in_reasoning)))


class Completion:
    """A finished generation: ``reasoning``, ``answer``, ``steps``, ``final_answer``,
    ``tool_calls``, ``finish_reason``, ``usage`` (dict), ``prompt_ids``, ``token_ids``,
    ``logprobs`` (``None`` unless ``top_logprobs`` was asked) and ``verified_steps`` (with a
    ``verifier``: ``[{"text", "tries", "verdicts", "retries_exhausted", "first_token"}]``)."""

    def __init__(self, result: Dict[str, Any], record: Any = None):
        self._record = record
        self.verified_steps: List[Dict[str, Any]] = list(result.get("verified_steps") or [])
        trace = Trace(result["trace"]) if result.get("trace") else parse_trace(result.get("text", ""))
        self.trace = trace
        self.reasoning: str = trace.reasoning
        self.answer: str = trace.answer
        self.steps: List[str] = trace.steps
        self.final_answer: Optional[str] = trace.final_answer
        self.tool_calls: List[Dict[str, Any]] = trace.tool_calls
        self.finish_reason: Optional[str] = result["finish_reason"]
        usage = dict(result["usage"])
        usage.pop("reasoning_budget_hit", None)
        self.reasoning_budget_hit: bool = bool(result["usage"].get("reasoning_budget_hit"))
        self.usage: Dict[str, Any] = usage
        self.prompt_ids: List[int] = list(result["prompt_ids"])
        self.token_ids: List[int] = list(result["token_ids"])
        lp = result.get("logprobs")
        self.logprobs: Optional[List[Dict[str, Any]]] = (
            None
            if lp is None
            else [{"token": e["token"], "logprob": e["logprob"], "top": [tuple(t) for t in e["top"]]} for e in lp]
        )

    def to_openai(self) -> Dict[str, Any]:
        """The completion as an OpenAI ``chat.completion`` dict, DeepSeek-style
        (``message.reasoning_content`` beside ``message.content``)."""
        message: Dict[str, Any] = {"role": "assistant", "content": self.answer, "reasoning_content": self.reasoning}
        finish = _OPENAI_FINISH.get(self.finish_reason or "", "stop")
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {
                        "name": c["name"],
                        "arguments": c["arguments"] if isinstance(c["arguments"], str) else json.dumps(c["arguments"]),
                    },
                }
                for i, c in enumerate(self.tool_calls)
            ]
            finish = "tool_calls"
        completion_tokens = len(self.token_ids)
        return {
            "object": "chat.completion",
            "created": int(time.time()),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": self.usage["prompt_tokens"],
                "completion_tokens": completion_tokens,
                "total_tokens": self.usage["prompt_tokens"] + completion_tokens,
                "completion_tokens_details": {"reasoning_tokens": self.usage["reasoning_tokens"]},
            },
        }

    def __repr__(self) -> str:
        return (
            f"Completion(answer={_short(self.answer)}, reasoning={_short(self.reasoning)}, "
            f"finish_reason={self.finish_reason!r}, tokens={len(self.token_ids)})"
        )


class Chunk:
    """One piece of a stream: ``channel`` ("reasoning" or "answer"), ``text``, ``token_id``
    (``None`` for text released at the end)."""

    __slots__ = ("channel", "text", "token_id")

    def __init__(self, channel: str, text: str, token_id: Optional[int]):
        self.channel = channel
        self.text = text
        self.token_id = token_id

    def __repr__(self) -> str:
        return f"Chunk(channel={self.channel!r}, text={self.text!r}, token_id={self.token_id})"


class Stream:
    """An iterator of :class:`Chunk`. ``cancel()`` stops it from any thread; ``completion`` is the
    :class:`Completion` once exhausted; ``iter_openai()`` yields ``chat.completion.chunk`` dicts."""

    def __init__(self, generation: Any):
        self._g = generation
        self._completion: Optional[Completion] = None

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Chunk:
        if self._g is None:
            raise StopIteration
        ev = self._g.next_event()
        if ev is None:
            self._finish()
            raise StopIteration
        return Chunk(*ev)

    def _finish(self) -> None:
        if self._g is not None:
            self._completion = Completion(self._g.result(), self._g.record())
            self._g = None  # gives a session its cache back

    def cancel(self) -> None:
        """Stops the generation at its next step; the stream then ends (finish reason "cancelled")."""
        g = self._g
        if g is not None:
            g.cancel()

    @property
    def completion(self) -> Optional[Completion]:
        """The completion, once the stream is exhausted (``None`` before)."""
        return self._completion

    def iter_openai(self) -> Iterator[Dict[str, Any]]:
        """The stream as OpenAI ``chat.completion.chunk`` dicts: ``delta.reasoning_content`` for
        the reasoning, ``delta.content`` for the answer, then a last chunk with ``finish_reason``."""
        created = int(time.time())
        first = True
        for chunk in self:
            if not chunk.text and not first:
                continue
            delta: Dict[str, Any] = {"role": "assistant"} if first else {}
            first = False
            key = "reasoning_content" if chunk.channel == "reasoning" else "content"
            delta[key] = chunk.text
            yield {
                "object": "chat.completion.chunk",
                "created": created,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
        c = self._completion
        finish = "stop"
        if c is not None:
            finish = "tool_calls" if c.tool_calls else _OPENAI_FINISH.get(c.finish_reason or "", "stop")
        yield {
            "object": "chat.completion.chunk",
            "created": created,
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
        }


def _run(generation: Any, stream: bool) -> Union[Completion, Stream]:
    if stream:
        return Stream(generation)
    generation.run()
    return Completion(generation.result(), generation.record())


class Model:
    """A loaded model: ``Model(path, *, dtype=None, threads=None, quantize=None, cache=None)``.

    ``path`` is a checkpoint folder, a ``.safetensors`` file beside its ``config.json``, or a
    GGUF file (told apart by content). ``dtype`` is "f32", "f16" or "bf16" (a checkpoint's weight
    storage), ``quantize`` "q8_0" or "q4_k", ``threads`` the compute threads (process-wide: the
    first load that sets it fixes it), ``cache`` the KV cache's precision: "auto" (the default:
    f16 for GGUF files and quantized checkpoints, f32 for checkpoints kept as stored), "f32" or
    "f16" (half the memory, keys and values rounded). One model serves several Python threads at
    once. Use it as a context manager, or ``close()`` it, to free the weights at once.
    """

    def __init__(self, path: Any, *, dtype: Optional[str] = None, threads: Optional[int] = None,
                 quantize: Optional[str] = None, cache: Optional[str] = None):
        path = str(path) if hasattr(path, "__fspath__") else path
        if not isinstance(path, str):
            raise TypeError("path must be a str or os.PathLike")
        self._path = path
        self._m = _r1.Model(path, dtype, threads, quantize, cache)

    # -- lifecycle --
    def close(self) -> None:
        """Frees the weights (sessions opened from the model keep their own reference until
        they are closed); later use raises :class:`R1Error`."""
        self._m.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "r1py.Model cannot be pickled: its weights live in native memory. "
            "Send an r1py.ModelSpec to the worker instead (r1py.ModelSpec.of(path)) and load "
            "the model there with spec.load(); r1py.ray does this for Ray Data and Ray Serve."
        )

    def __repr__(self) -> str:
        if self._m.closed:
            return f"r1py.Model({self._path!r}, closed)"
        return (
            f"r1py.Model({self._path!r}, architecture={self._m.architecture!r}, "
            f"vocab_size={self._m.vocab_size}, context_length={self._m.context_length})"
        )

    # -- facts --
    @property
    def vocab_size(self) -> int:
        """Vocabulary size (the width of a logits row)."""
        return self._m.vocab_size

    @property
    def context_length(self) -> int:
        """The most positions a sequence may have."""
        return self._m.context_length

    @property
    def architecture(self) -> str:
        """"llama", "qwen2", "deepseek_v2" or "deepseek_v3"."""
        return self._m.architecture

    # -- text --
    def tokenize(self, text: str, *, add_special: bool = True) -> List[int]:
        """Token ids of ``text``; ``add_special`` adds BOS where the model's files say so."""
        if not isinstance(text, str):
            raise TypeError("text must be a str")
        return self._m.tokenize(text, bool(add_special))

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids."""
        return self._m.detokenize(list(ids))

    def apply_chat_template(self, messages: Sequence[Dict[str, Any]], *, add_generation_prompt: bool = True,
                            tools: Optional[Sequence[Any]] = None) -> str:
        """The prompt text the model's chat template makes of ``messages``."""
        _, tool_texts = _gen_args({"tools": tools})
        return self._m.apply_chat_template(_messages(messages), bool(add_generation_prompt), tool_texts)

    def logits(self, ids: Sequence[int]) -> Any:
        """Logits of every position of ``ids`` from a fresh cache: float32 numpy array
        ``(len(ids), vocab_size)``."""
        return self._m.logits(list(ids))

    # -- generation --
    def chat(self, messages: Sequence[Dict[str, Any]], *, stream: bool = False, **gen: Any) -> Union[Completion, Stream]:
        """Generates the reply to ``messages`` (OpenAI-style dicts) on a fresh cache.

        Keyword arguments: ``max_tokens``, ``greedy``, ``temperature``, ``top_p``, ``top_k``,
        ``min_p``, ``repetition_penalty``, ``presence_penalty``, ``frequency_penalty``, ``seed``,
        ``stop`` (list of str), ``max_reasoning_tokens``, ``top_logprobs`` (0-20), ``tools``
        (JSON schemas), ``verifier`` (a step verifier: ``verifier(step, reasoning_so_far)``
        returns True/"accept", False/"reject" to sample the step again, or "stop" to close the
        reasoning), ``max_step_retries`` (default 3) and ``step_separators`` (strings that end a
        step; default a blank line). Defaults: DeepSeek-R1's preset. Returns a
        :class:`Completion`, or with ``stream=True`` a :class:`Stream`."""
        args, tools = _gen_args(dict(gen))
        return _run(self._m.generate("chat", _messages(messages), "", tools, args), stream)

    def chat_batch(self, conversations: Sequence[Sequence[Dict[str, Any]]], **gen: Any) -> List[Completion]:
        """Replies to several conversations generated together: one forward pass per step for
        all of them (each weight read once), a finished one leaving and the next joining. Each
        completion equals what :meth:`chat` gives alone with the same arguments (a seed is
        each conversation's own). Keyword arguments as :meth:`chat` (no ``tools``)."""
        args, tools = _gen_args(dict(gen))
        if tools:
            raise InvalidArgument("chat_batch takes no tools")
        if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence):
            raise InvalidArgument("conversations must be a list of message lists")
        convs = [_messages(c) for c in conversations]
        return [Completion(r, rec) for r, rec in self._m.generate_batch("chat", convs, [], args)]

    def complete_batch(self, prompts: Sequence[str], **gen: Any) -> List[Completion]:
        """Like :meth:`chat_batch` for raw texts (no template)."""
        args, _ = _gen_args(dict(gen))
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a list of str")
        return [Completion(r, rec) for r, rec in self._m.generate_batch("complete", [], list(prompts), args)]

    def self_consistency(self, messages: Sequence[Dict[str, Any]], n: int, **gen: Any) -> "Consensus":
        """``n`` sampled replies to ``messages`` and a majority vote over their final answers:
        the prompt is prefilled once, sample ``i`` is seeded ``seed + i`` (a random base without
        ``seed``), the samples decode together (batched). Keyword arguments as :meth:`chat`."""
        args, tools = _gen_args(dict(gen))
        args["n"] = int(n)
        return Consensus(self._m.self_consistency("chat", _messages(messages), "", tools, args))

    def complete(self, prompt: str, *, stream: bool = False, **gen: Any) -> Union[Completion, Stream]:
        """Like :meth:`chat` for raw text (no template)."""
        if not isinstance(prompt, str):
            raise TypeError("prompt must be a str")
        args, tools = _gen_args(dict(gen))
        return _run(self._m.generate("complete", [], prompt, tools, args), stream)

    def session(self) -> "Session":
        """A conversation that keeps its cache between calls."""
        return Session(self._m.session())


class Consensus:
    """Self-consistency results: ``samples`` (a :class:`Completion` each, with ``seed`` and
    ``voted_answer``, the normalised final answer it voted for), ``answer`` (the winner, ``None``
    when no sample has a final answer) and ``counts`` (answer -> votes, in order of appearance)."""

    def __init__(self, c: Any):
        self._c = c
        result = c.result()
        self.prompt_ids: List[int] = list(result["prompt_ids"])
        self.samples: List[Completion] = []
        for i, s in enumerate(result["samples"]):
            completion = Completion(s, c.record(i))
            completion.seed = s["seed"]  # type: ignore[attr-defined]
            completion.voted_answer = s["voted_answer"]  # type: ignore[attr-defined]
            self.samples.append(completion)
        self.answer: Optional[str] = result["vote"]["answer"]
        self.counts: Dict[str, int] = {a: n for a, n in result["vote"]["counts"]}

    def __repr__(self) -> str:
        return f"Consensus(answer={self.answer!r}, counts={self.counts!r}, samples={len(self.samples)})"


class DistillWriter:
    """A distillation dataset: ``DistillWriter(path, top_k)``, ``path`` ending in ``.jsonl`` or
    ``.safetensors`` (resumed when it exists). ``write(x)`` appends a :class:`Completion` (or every
    sample of a :class:`Consensus`) generated with ``top_logprobs=top_k``; ``prompt in writer`` tells
    whether a prompt's text (:meth:`Model.apply_chat_template`) is already there; ``len(writer)``
    counts the generations. Close it (or use ``with``) to write the last safetensors shard."""

    def __init__(self, path: Any, top_k: int):
        path = str(path) if hasattr(path, "__fspath__") else path
        if not isinstance(path, str):
            raise TypeError("path must be a str or os.PathLike")
        self._w = _r1.DistillWriter(path, int(top_k))

    def write(self, x: Union[Completion, Consensus]) -> None:
        """Appends a completion, or every sample of a self-consistency result."""
        items = x.samples if isinstance(x, Consensus) else [x]
        for c in items:
            if not isinstance(c, Completion):
                raise TypeError(f"write takes a Completion or a Consensus, not {type(c).__name__}")
            if c._record is None:
                raise InvalidArgument("the completion was generated without top_logprobs")
            self._w.write(c._record)

    def __contains__(self, prompt_text: str) -> bool:
        return self._w.contains(prompt_text)

    def __len__(self) -> int:
        return len(self._w)

    def close(self) -> None:
        """Writes what is buffered (the last safetensors shard) and closes the dataset."""
        self._w.close()

    def __enter__(self) -> "DistillWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Session:
    """A conversation whose cache outlives each call: ``chat(messages)`` with the whole
    conversation so far reuses the prefix already cached (``usage["cached_prompt_tokens"]``).
    ``reset()`` forgets it; ``close()`` (or ``with``) frees it. One call at a time."""

    def __init__(self, s: Any):
        self._s = s

    def chat(self, messages: Sequence[Dict[str, Any]], *, stream: bool = False, **gen: Any) -> Union[Completion, Stream]:
        """Like :meth:`Model.chat`, reusing this session's cache."""
        args, tools = _gen_args(dict(gen))
        return _run(self._s.generate("chat", _messages(messages), "", tools, args), stream)

    def complete(self, prompt: str, *, stream: bool = False, **gen: Any) -> Union[Completion, Stream]:
        """Like :meth:`Model.complete`, reusing this session's cache."""
        if not isinstance(prompt, str):
            raise TypeError("prompt must be a str")
        args, tools = _gen_args(dict(gen))
        return _run(self._s.generate("complete", [], prompt, tools, args), stream)

    def reset(self) -> None:
        """Forgets the conversation."""
        self._s.reset()

    @property
    def cached_tokens(self) -> int:
        """How many tokens the cache holds."""
        return len(self._s.cached_ids())

    def close(self) -> None:
        """Frees the cache; later use raises :class:`R1Error`."""
        self._s.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError("r1py.Session cannot be pickled")

    def __repr__(self) -> str:
        return "r1py.Session(closed)" if self._s.closed else f"r1py.Session(cached_tokens={self.cached_tokens})"


from .spec import ModelSpec, file_digest  # noqa: E402  (it loads Model, defined above)
