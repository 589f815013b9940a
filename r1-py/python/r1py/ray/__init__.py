"""r1 on Ray Data: batch inference over a Dataset with a pool of actors, each holding one model.

    import ray, r1py
    from r1py.ray import generate

    spec = r1py.ModelSpec.of("model.gguf")            # path + SHA-256, checked on every node
    ds = ray.data.from_items([{"id": i, "prompt": p} for i, p in enumerate(prompts)])
    out = generate(ds, spec, num_actors=2, cpus_per_actor=1, batch_size=16, max_tokens=256)
    for row in out.iter_rows():
        print(row["id"], row["output"]["answer"])

Each actor loads the model from the spec (models are never pickled) with as many compute
threads as Ray gave it CPUs, and answers a batch of rows with :meth:`r1py.Model.chat_batch`: the
rows' sequences decode together, one forward pass per step. Needs ``pip install r1py[ray]``.
Ray Serve (an OpenAI-compatible endpoint) is in :mod:`r1py.ray.serve`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .. import Completion, InvalidArgument, ModelSpec

__all__ = ["Predictor", "generate", "messages_of", "OUTPUT_FIELDS"]

#: The fields of the output column's dict (plus ``logprobs`` when ``top_logprobs`` is asked).
OUTPUT_FIELDS = ("reasoning", "answer", "final_answer", "finish_reason", "prompt_tokens", "completion_tokens")


def assigned_cpus() -> Optional[int]:
    """The CPUs Ray gave the calling actor or task (``None`` outside Ray)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # outside a worker, or an older Ray without the call
        return None
    return max(1, int(cpus)) if cpus else None


def messages_of(value: Any) -> List[Dict[str, str]]:
    """A prompt cell as chat messages: a string is one user message; a list of messages
    (``{"role", "content"}`` mappings) is sent as it is."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, (bytes, dict)):
        raise InvalidArgument(f"a prompt must be a str or a list of messages, not {type(value).__name__}")
    try:
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    except (TypeError, KeyError, IndexError):
        shown = repr(value)
        raise InvalidArgument(
            "a prompt must be a str or a list of {'role', 'content'} messages, got "
            + (shown if len(shown) <= 80 else shown[:77] + "...")
        ) from None


def output_of(c: Completion, *, logprobs: bool) -> Dict[str, Any]:
    """One row's output dict (:data:`OUTPUT_FIELDS`, and ``logprobs`` when asked)."""
    out: Dict[str, Any] = {
        "reasoning": c.reasoning,
        "answer": c.answer,
        "final_answer": c.final_answer,
        "finish_reason": c.finish_reason,
        "prompt_tokens": int(c.usage["prompt_tokens"]),
        "completion_tokens": len(c.token_ids),
    }
    if logprobs:
        # Columns of fixed types (Arrow wants them): ids and log-probabilities apart.
        out["logprobs"] = [
            {
                "token": int(e["token"]),
                "logprob": float(e["logprob"]),
                "top_tokens": [int(t) for t, _ in e["top"]],
                "top_logprobs": [float(p) for _, p in e["top"]],
            }
            for e in (c.logprobs or [])
        ]
    return out


class Predictor:
    """A callable class for ``Dataset.map_batches(Predictor, fn_constructor_kwargs=...,
    compute=ActorPoolStrategy(...))``: reads ``prompt_col`` (strings, or lists of messages),
    keeps every input column, and adds ``output_col``, a dict per row (:data:`OUTPUT_FIELDS`).

    ``spec`` is an :class:`r1py.ModelSpec`; ``threads`` defaults to the CPUs Ray gave the actor;
    the other keyword arguments are those of :meth:`r1py.Model.chat` (``max_tokens``,
    ``temperature``, ``greedy``, ``seed``, ``top_logprobs``, ...). The rows of one batch are
    generated together (:meth:`r1py.Model.chat_batch`)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        prompt_col: str = "prompt",
        output_col: str = "output",
        threads: Optional[int] = None,
        **gen: Any,
    ):
        if not isinstance(spec, ModelSpec):
            raise TypeError("spec must be an r1py.ModelSpec (models are loaded in each worker, not pickled)")
        if "stream" in gen or "tools" in gen:
            raise InvalidArgument("Predictor takes neither stream nor tools")
        self._model = spec.load(threads=threads or assigned_cpus())
        self._prompt_col = prompt_col
        self._output_col = output_col
        self._gen = gen
        self._logprobs = bool(gen.get("top_logprobs"))

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        if self._prompt_col not in batch:
            raise InvalidArgument(f"the batch has no column {self._prompt_col!r} (it has {sorted(batch)})")
        conversations = [messages_of(p) for p in batch[self._prompt_col]]
        done = self._model.chat_batch(conversations, **self._gen)
        out = dict(batch)
        out[self._output_col] = [output_of(c, logprobs=self._logprobs) for c in done]
        return out


def generate(
    ds: Any,
    spec: ModelSpec,
    *,
    num_actors: int = 1,
    cpus_per_actor: float = 1,
    batch_size: int = 16,
    prompt_col: str = "prompt",
    output_col: str = "output",
    **gen: Any,
) -> Any:
    """``ds`` with ``output_col`` added to every row (see :class:`Predictor`), computed by
    ``num_actors`` actors of ``cpus_per_actor`` CPUs, ``batch_size`` rows a call. A crashed
    actor is restarted and its batch run again; an exception raised for a row fails the job.
    Lazy, like every Dataset transform: iterate, write or ``materialize()`` the result."""
    from ray.data import ActorPoolStrategy

    if num_actors < 1 or batch_size < 1:
        raise InvalidArgument(f"num_actors {num_actors} and batch_size {batch_size}: both at least 1")
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs=dict(spec=spec, prompt_col=prompt_col, output_col=output_col, **gen),
        compute=ActorPoolStrategy(size=num_actors),
        num_cpus=cpus_per_actor,
        batch_size=batch_size,
        batch_format="numpy",
        # A dead actor comes back and its tasks run again; an exception in a task is not retried.
        max_restarts=-1,
        max_task_retries=-1,
    )
