"""`bloodwork serve`: a local model behind an OpenAI-compatible API."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="A local spec: local:smollm2[+constrained][+lora=PATH].")]
    = "local:smollm2",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    max_new_tokens: Annotated[int | None, typer.Option(help="Cap on every request's max_tokens (default 192).")]
    = None,
) -> None:
    """Serve a local model as an OpenAI-compatible API (/v1/chat/completions, /v1/models, streaming, tool
    calls, JSON answers by constrained decoding; what it cannot honour is a 400).

    Example: bloodwork serve --model local:smollm2 --port 8765   # then OPENAI_BASE_URL=http://127.0.0.1:8765/v1
    """
    from bloodwork.oracles.serve import serve as run_server

    run_server(model, host=host, port=port, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}))
