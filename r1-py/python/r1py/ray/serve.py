"""r1 on Ray Serve: an OpenAI-compatible chat endpoint, replicas and autoscaling from Serve.

    serve run r1py.ray.serve:build_app model=/models/model.gguf num_replicas=2

or from Python: ``serve.run(build_app({"model": "/models/model.gguf"}))``. Routes:

- ``POST /v1/chat/completions``: ``messages``, ``max_tokens`` (or ``max_completion_tokens``),
  ``temperature`` (0 means greedy; unset means DeepSeek-R1's preset), ``top_p``, ``seed``,
  ``stop``, ``presence_penalty``, ``frequency_penalty``, and r1's ``top_k``, ``min_p``,
  ``max_reasoning_tokens``; ``stream: true`` answers with server-sent events, the reasoning in
  ``delta.reasoning_content`` and the answer in ``delta.content`` (DeepSeek's API form).
- ``GET /v1/models``: the one model served. ``GET /health``: 200 once the model is loaded.

Generation runs on worker threads, off the replica's event loop, so one replica serves several
requests at once and their decode steps batch together in r1's scheduler. A client that leaves a
stream cancels its generation. ``build_app``'s arguments: ``model`` (the path, the same on every
node), ``sha256`` (default: computed from the files where ``build_app`` runs), ``model_id``
(default: the file name), ``threads`` (default: the replica's CPUs), ``num_replicas`` and
``num_cpus`` (per replica). Other Serve options (autoscaling) come from Serve's config file.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from typing import Any, AsyncIterator, Dict, Optional

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import InvalidArgument, ModelSpec, R1Error
from . import assigned_cpus, messages_of

__all__ = ["ChatServer", "build_app", "openai_params"]

#: OpenAI request fields that map one to one onto r1's generation arguments.
_SAME = ("top_p", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p", "max_reasoning_tokens")


def openai_params(body: Dict[str, Any]) -> Dict[str, Any]:
    """r1's generation arguments from an OpenAI chat request body (fields it does not know, like
    ``user`` or ``logit_bias``, are ignored; ``n`` above 1 is refused)."""
    gen: Dict[str, Any] = {}
    if body.get("n", 1) not in (1, None):
        raise InvalidArgument("n: one choice per request")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        gen["max_tokens"] = int(max_tokens)
    temperature = body.get("temperature")
    if temperature is not None:
        if float(temperature) == 0.0:
            gen["greedy"] = True
        else:
            gen["temperature"] = float(temperature)
    for key in _SAME:
        if body.get(key) is not None:
            gen[key] = body[key]
    stop = body.get("stop")
    if stop is not None:
        gen["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return gen


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


@serve.deployment
class ChatServer:
    """One replica: a model loaded from its spec, answering OpenAI chat requests. The routes
    are dispatched here (three of them), with Starlette's request and responses as Serve hands
    them, so no web framework is shipped to the replicas."""

    def __init__(self, spec: ModelSpec, model_id: str, threads: Optional[int] = None):
        self._model = spec.load(threads=threads or assigned_cpus())
        self._id = model_id
        self._created = int(time.time())

    async def __call__(self, request: Request) -> Response:
        route = (request.method, request.url.path.rstrip("/"))
        if route == ("GET", "/health"):
            return JSONResponse({"status": "ok"})
        if route == ("GET", "/v1/models"):
            return JSONResponse(self.models())
        if route == ("POST", "/v1/chat/completions"):
            return await self.chat(request)
        return _error(404, f"no route {request.method} {request.url.path}", "not_found_error")

    def models(self) -> Dict[str, Any]:
        """The ``/v1/models`` list: the one model this replica serves."""
        return {
            "object": "list",
            "data": [{"id": self._id, "object": "model", "created": self._created, "owned_by": "r1"}],
        }

    async def chat(self, request: Request) -> Response:
        """``/v1/chat/completions``: one reply, or its server-sent events with ``stream``."""
        try:
            body = await request.json()
            if not isinstance(body, dict) or "messages" not in body:
                raise InvalidArgument("the body must be a JSON object with messages")
            messages = messages_of(body["messages"])
            gen = openai_params(body)
        except (ValueError, TypeError, R1Error) as e:
            return _error(400, str(e), "invalid_request_error")
        if body.get("stream"):
            return StreamingResponse(self._events(messages, gen), media_type="text/event-stream")
        try:
            completion = await asyncio.to_thread(self._model.chat, messages, **gen)
        except InvalidArgument as e:
            return _error(400, str(e), "invalid_request_error")
        except R1Error as e:
            return _error(500, str(e), "server_error")
        reply = completion.to_openai()
        reply.update(id=f"chatcmpl-{uuid.uuid4().hex}", model=self._id)
        return JSONResponse(reply)

    async def _events(self, messages: Any, gen: Dict[str, Any]) -> AsyncIterator[str]:
        """Server-sent events of one streamed reply: chunks from a worker thread through a queue."""
        loop = asyncio.get_running_loop()
        queue: "asyncio.Queue[Optional[str]]" = asyncio.Queue()
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        streams: list = []

        def produce() -> None:
            try:
                stream = self._model.chat(messages, stream=True, **gen)
                streams.append(stream)
                for chunk in stream.iter_openai():
                    chunk.update(id=ident, model=self._id)
                    loop.call_soon_threadsafe(queue.put_nowait, f"data: {json.dumps(chunk)}\n\n")
            except R1Error as e:
                error = {"error": {"message": str(e), "type": "server_error"}}
                loop.call_soon_threadsafe(queue.put_nowait, f"data: {json.dumps(error)}\n\n")
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = threading.Thread(target=produce, name="r1-stream", daemon=True)
        worker.start()
        try:
            while (item := await queue.get()) is not None:
                yield item
            yield "data: [DONE]\n\n"
        finally:
            # The client left (or the reply ended): stop the generation at its next token.
            for s in streams:
                s.cancel()


def build_app(args: Dict[str, str]) -> Any:
    """The Serve application for ``serve run r1py.ray.serve:build_app model=PATH [...]``."""
    if "model" not in args:
        raise InvalidArgument("build_app needs model=PATH")
    path = os.fspath(args["model"])
    spec = ModelSpec(path=path, sha256=args.get("sha256")) if args.get("sha256") else ModelSpec.of(path)
    model_id = args.get("model_id") or os.path.basename(path.rstrip("/"))
    threads = int(args["threads"]) if args.get("threads") else None
    options: Dict[str, Any] = {}
    if args.get("num_replicas"):
        options["num_replicas"] = int(args["num_replicas"])
    if args.get("num_cpus"):
        options["ray_actor_options"] = {"num_cpus": float(args["num_cpus"])}
    return ChatServer.options(**options).bind(spec, model_id, threads)
