"""The Dagster side of a vendor client: a resource holding its settings, building the client on first use."""

from __future__ import annotations

import threading
from typing import Any

import dagster as dg
from pydantic import PrivateAttr


class ClientResource(dg.ConfigurableResource):
    """Settings of one vendor account; ``client()`` is the client ``_build`` makes of them, shared by a run's
    threads."""

    _client: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def _build(self) -> Any:
        raise NotImplementedError
