"""switchyard: publish to and subscribe from a switchyard gateway.

- :class:`Publisher` / :class:`AsyncPublisher`: the engine's side.
- :class:`Subscriber`: the dashboard's side, a live copy of the state.
- :func:`mint_token`: access tokens for a gateway with AUTH_SECRET.
- :mod:`switchyard.streamlit`: ``live()`` for Streamlit fragments.
- :func:`find_switchyard_bin`: the gateway binary installed with this package
  (``python -m switchyard ARGS`` runs it).
"""

from ._find_bin import SwitchyardNotFoundError, find_switchyard_bin
from ._json import NotJSONError
from ._publish import AsyncPublisher, Publisher, PublishError, Receipt
from ._subscribe import Event, Subscriber, matches
from ._token import mint_token

__all__ = [
    "AsyncPublisher",
    "Event",
    "NotJSONError",
    "PublishError",
    "Publisher",
    "Receipt",
    "Subscriber",
    "SwitchyardNotFoundError",
    "find_switchyard_bin",
    "matches",
    "mint_token",
]
