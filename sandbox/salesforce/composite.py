"""``POST /composite``: up to 25 subrequests in one API call, with ``@{ref.path}`` references.

Subrequests run in order inside the caller's transaction. With ``allOrNone`` a failing
subrequest rolls back everything (the others answer ``PROCESSING_HALTED``); without it,
successful subrequests are committed and failures reported in place. Limitation: a
``query`` subrequest does not see records staged by earlier subrequests of the same call.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .core import Sandbox
from .errors import SfError
from .store import Tx

_REF = re.compile(r"@\{([A-Za-z0-9_]+)((?:\.[A-Za-z0-9_]+|\[\d+\])*)\}")
_HALTED = SfError("PROCESSING_HALTED", "The transaction was rolled back since another "
                  "operation in the same transaction failed.").rest_body()


def _resolve(value: Any, results: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, results) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match[str]) -> str:
        node: Any = results.get(match.group(1))
        if node is None:
            raise SfError("INVALID_REFERENCE", f"reference {match.group(1)} not found")
        try:
            for step in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", match.group(2)):
                node = node[int(step[1])] if step[1] else node[step[0]]
        except (IndexError, KeyError, TypeError, AttributeError):
            # past the end of a list, a missing key, a step into a value that has none
            raise SfError("INVALID_REFERENCE", f"Invalid reference specified. No value for "
                          f"{match.group(1)}{match.group(2)} found in {match.group(1)}"
                          ) from None
        return str(node)

    return _REF.sub(lookup, value)


def composite(sb: Sandbox, user: dict, version: str, body: Any, tx: Tx,
              headers: dict[str, str]) -> tuple[int, Any]:
    from .rest import call

    sb.counters.count("composite")
    requests = body.get("compositeRequest") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise SfError("JSON_PARSER_ERROR", "compositeRequest: a list of subrequests is required")
    if len(requests) > 25:
        raise SfError("INVALID_COMPOSITE_REQUEST", "Composite request may only contain up to 25 "
                      "subrequests")
    if not all(isinstance(sub, dict) for sub in requests):
        raise SfError("JSON_PARSER_ERROR", "compositeRequest: each subrequest must be an object")
    all_or_none = bool(body.get("allOrNone", False))
    start = tx.savepoint()
    results: dict[str, Any] = {}
    out: list[dict] = []
    failed = False
    for sub in requests:
        ref = str(sub.get("referenceId", ""))
        before = tx.savepoint()
        try:
            url = urlsplit(_resolve(str(sub.get("url", "")), results))
            match = re.match(r"^/services/data/v(\d+\.\d)/?(.*)$", url.path)
            if not match:
                raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
            params = dict(parse_qsl(url.query))
            status, payload = call(sb, user, match.group(1), str(sub.get("method", "GET")),
                                   match.group(2), params, _resolve(sub.get("body"), results),
                                   tx, headers)
        except SfError as exc:
            failed = True
            tx.rollback_to(before)
            status, payload = exc.status, exc.rest_body()
        results[ref] = payload
        out.append({"body": payload, "httpHeaders": {}, "httpStatusCode": status,
                    "referenceId": ref})
        if failed and all_or_none:
            break
    if failed and all_or_none:
        done = len(out)
        for entry in out[:-1]:
            entry.update(body=_HALTED, httpStatusCode=400)
        for sub in requests[done:]:
            out.append({"body": _HALTED, "httpHeaders": {}, "httpStatusCode": 400,
                        "referenceId": str(sub.get("referenceId", ""))})
        tx.rollback_to(start)
    return 200, {"compositeResponse": out}
