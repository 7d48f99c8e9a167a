"""JSON for published data: what trading code holds, made JSON or refused.

datetimes and dates (pandas Timestamps included) become ISO 8601 strings;
Decimal becomes a JSON number (a double in every browser, so exact only to
about 15 digits); numpy scalars and arrays become numbers and lists; sets
and tuples become lists. NaN and infinity are refused: browsers' JSON.parse
rejects them.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any


class NotJSONError(TypeError):
    """The data cannot be sent as JSON."""


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise NotJSONError(f"{value} is not a finite number")
        return float(value)
    if isinstance(value, set | frozenset):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    # numpy scalars and arrays, pandas objects, without importing them.
    for method in ("tolist", "item", "isoformat", "to_dict"):
        convert = getattr(value, method, None)
        if callable(convert):
            return convert()
    raise NotJSONError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    """``value`` as compact JSON, or NotJSONError naming what is wrong."""
    try:
        return json.dumps(value, default=_default, allow_nan=False, separators=(",", ":"))
    except ValueError as error:  # NaN / infinity
        raise NotJSONError(f"data is not JSON: {error}") from None
    except RecursionError:
        raise NotJSONError("data is not JSON: nested too deeply or circular") from None
