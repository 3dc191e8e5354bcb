"""The agent's request/response protocol: one JSON line each way per request.

A request is ``{"op": NAME, ...arguments}``; the answer is ``{"result": ...}`` or
``{"error": message, "type": VmkitErrorClass, "hint": ..., "args": {...}}``. Errors cross the
process boundary as their own ``VmkitError`` class, rebuilt from their constructor arguments
with the attributes JSON can carry (``ToolMissing.program``, ``GuestCommandFailed.argv``, ...).
Anything malformed is answered as an ``InvalidInput`` error; it never ends the agent.
"""

from __future__ import annotations

import json
from typing import Any

from vmkit import errors

__all__ = ["MAX_LINE", "decode_answer", "encode_error", "parse_request"]

# A request is a few hundred bytes; a client that sends more is not vmkit.
MAX_LINE = 1 << 20


def parse_request(line: bytes) -> dict[str, Any]:
    """The request in ``line``; ``InvalidInput`` if it is not one."""
    try:
        req = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise errors.InvalidInput(f"the agent got a request that is not JSON: {e}") from None
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise errors.InvalidInput('the agent got a request without an "op"')
    return req


def encode_error(e: Exception) -> dict[str, Any]:
    """The answer for a failed request: a ``VmkitError`` keeps its class, anything else is a
    ``ProviderError`` naming the agent (an agent bug, said as such)."""
    if isinstance(e, errors.VmkitError):
        return {
            "error": e.message,
            "type": type(e).__name__,
            "hint": e.hint,
            "args": _ctor_args(e),
        }
    return {
        "error": f"vmkit's agent failed: {type(e).__name__}: {e}",
        "type": "ProviderError",
        "hint": "this is a bug in vmkit; the agent log has the details",
    }


def _ctor_args(e: errors.VmkitError) -> dict[str, Any]:
    """The error's own attributes that JSON can carry (``argv``, ``exit_code``, ``program``)."""
    out = {}
    for k, v in vars(e).items():
        if k in ("message", "hint") or k.startswith("_"):
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out


def decode_answer(data: bytes, *, where: str, log: str) -> Any:
    """The result in the agent's answer ``data``, or its error raised as its own class."""
    try:
        answer = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise errors.ProviderError(f"{where} answered garbage", hint=f"see {log}") from e
    if not isinstance(answer, dict):
        raise errors.ProviderError(f"{where} answered garbage", hint=f"see {log}")
    if "error" not in answer:
        return answer.get("result")
    message = str(answer["error"])
    hint = answer.get("hint") or None
    cls = getattr(errors, str(answer.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.VmkitError)):
        raise errors.ProviderError(message, hint=hint)
    # Rebuilt without calling the class's constructor (they differ: ToolMissing takes a
    # program, GuestCommandFailed an argv and outputs): the message is the one sent, the
    # attributes are restored, and ``except ToolMissing`` works across the process boundary.
    err = cls.__new__(cls)
    errors.VmkitError.__init__(err, message, hint=hint)
    args = answer.get("args")
    if isinstance(args, dict):
        for k, v in args.items():
            if isinstance(k, str) and not k.startswith("_") and k not in ("message", "hint"):
                setattr(err, k, v)
    raise err
