"""Credentials in a storage URI are for pyarrow alone: what shows or stores a URI shows `redact_uri(uri)`.

A sweep's `output` may carry them (`s3://KEY:SECRET@bucket/prefix`, `abfs://...?client_secret=...`, or a mistaken
`?secret_key=...`); the terminal, report.html / report.md (uploaded beside the results), sweep.json, W&B and
Tune's experiment state must never hold them. pyarrow's own error messages may quote the URI or its parts, so a
message about a URI goes through `redact(text, uri)`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

HIDDEN = "***"
# query parameters that carry a credential (pyarrow's abfs client_secret; access_key, secret_key, session_token,
# sas_token, account_key, ... written by habit from other tools; sig= of an Azure SAS)
_SECRET_PARAM = re.compile(r"key|secret|token|passw|pwd|credential|signature|^sig$", re.IGNORECASE)
# scheme://[userinfo@]rest: userinfo runs to the last "@" before the query (a secret may hold an unescaped "/")
_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:(?P<userinfo>[^?#]*)@)?(?P<rest>[^?#]*)(?P<tail>.*)$")


def redact_uri(uri: str) -> str:
    """`uri` with its userinfo and the values of credential query parameters replaced by ***; a local path as is."""
    match = _URI.match(str(uri))
    if not match:
        return str(uri)
    userinfo = f"{HIDDEN}@" if match["userinfo"] is not None else ""
    query, sep, fragment = match["tail"].partition("#")
    params = [_redact_param(p) for p in query[1:].split("&")] if query else []
    return f"{match['scheme']}{userinfo}{match['rest']}{'?' if query else ''}{'&'.join(params)}{sep}{fragment}"


def redact(text: str, uri: str) -> str:
    """`text` (a message that may quote `uri`, e.g. pyarrow's) with every credential of `uri` replaced by ***."""
    text = str(text).replace(str(uri), redact_uri(uri))
    for secret in _secrets(str(uri)):
        for form in {secret, unquote(secret)}:
            text = text.replace(form, HIDDEN)
    return text


def _redact_param(param: str) -> str:
    name, sep, value = param.partition("=")
    return f"{name}{sep}{HIDDEN}" if sep and value and _SECRET_PARAM.search(unquote(name)) else param


def _secrets(uri: str) -> list[str]:
    """The credential values `uri` holds: both halves of its userinfo, then credential query parameter values."""
    match = _URI.match(uri)
    if not match:
        return []
    found = [s for s in (match["userinfo"] or "").split(":", 1) if s]
    query = match["tail"].partition("#")[0][1:]
    for param in query.split("&") if query else []:
        name, _, value = param.partition("=")
        if value and _SECRET_PARAM.search(unquote(name)):
            found.append(value)
    return sorted(found, key=len, reverse=True)  # longest first: a secret that contains another is replaced whole
