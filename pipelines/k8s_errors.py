"""Why the Kubernetes API server refused a request, read from the `Status` body of a kubernetes.client ApiException.

The HTTP code alone misleads: an admission webhook's denial comes back as 403 Forbidden, the same code as an RBAC
refusal, so "check the RBAC" sent people after the wrong cause. The Status message tells them apart:
kube-apiserver prefixes a webhook's answer with `admission webhook "<name>" denied the request:`, reports a field
the CRD lacks under strict field validation as `unknown field "<path>"` (400), a schema or CEL failure as 422
Invalid, and a webhook it cannot reach as `failed calling webhook "<name>"`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

WEBHOOK_DENIED = re.compile(r'admission webhook "(?P<name>[^"]+)" denied the request:?\s*(?P<detail>.*)', re.S)
WEBHOOK_UNREACHABLE = re.compile(r'failed calling webhook "(?P<name>[^"]+)"')
UNKNOWN_FIELD = re.compile(r'unknown field "(?P<path>[^"]+)"')


@dataclass
class Refusal:
    cause: str  # webhook-denied | webhook-unreachable | unknown-field | forbidden | invalid | not-found | other
    status: int
    reason: str
    detail: str  # the API server's message on one line (a webhook's own message without the prefix)
    webhook: str | None = None
    fields: list[str] = field(default_factory=list)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def classify(exc) -> Refusal:
    """The cause of an ApiException (anything with .status, .reason and .body)."""
    status = int(getattr(exc, "status", 0) or 0)
    try:
        body = json.loads(exc.body) if getattr(exc, "body", None) else {}
    except (TypeError, ValueError):
        body = {"message": exc.body}  # a proxy's HTML page or plain text: keep it as the detail
    body = body if isinstance(body, dict) else {"message": str(body)}
    message = _one_line(body.get("message") or getattr(exc, "reason", "") or "")
    reason = body.get("reason") or getattr(exc, "reason", "") or ""
    if m := WEBHOOK_DENIED.search(message):
        return Refusal("webhook-denied", status, reason, _one_line(m["detail"]), webhook=m["name"])
    if m := WEBHOOK_UNREACHABLE.search(message):
        return Refusal("webhook-unreachable", status, reason, message, webhook=m["name"])
    unknown = UNKNOWN_FIELD.findall(message)
    if unknown:
        return Refusal("unknown-field", status, reason, message, fields=unknown)
    cause = {403: "forbidden", 422: "invalid", 404: "not-found"}.get(status, "other")
    return Refusal(cause, status, reason, message)
