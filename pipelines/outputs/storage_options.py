"""Storage options as the pipeline uses them: every request bounded in time, listings always fresh.

fsspec's S3 client (s3fs over botocore) waits 60 s for a connection and retries a request that never
answers only in some cases: a stalled PUT could hang a run forever. :func:`with_storage_defaults`
adds, for object storage (``s3://``), settings the user has not set:

=================================  ==========  =============================================================
``config_kwargs.connect_timeout``  10 s        to open a connection
``config_kwargs.read_timeout``     20 s        between bytes of an answer (a request that hangs is retried)
``config_kwargs.retries``          4 attempts  botocore's ``standard`` retry mode (backoff, throttling)
``use_listings_cache``             False       a listing is asked of the server every time, never a cache
=================================  ==========  =============================================================

s3fs retries timeouts 5 times around botocore's attempts (its own setting, not a storage option),
so a request to an endpoint that stopped answering fails after at most 5 x 4 x 20 s, about
7 minutes; a stalled request that a retry gets through costs 20 s. Nothing hangs.

The last matters for correctness: the run's progress markers are listed at submission and again at
the end; with s3fs's listing cache the second listing missed the markers written in between.
A user's own ``storage_options`` win (e.g. a longer ``read_timeout`` for a slow gateway).
"""

from __future__ import annotations

from typing import Any

__all__ = ["S3_DEFAULTS", "protocol_of", "with_storage_defaults"]

#: botocore settings opso adds for ``s3://`` when the user has not set them
S3_DEFAULTS = {"connect_timeout": 10, "read_timeout": 20, "retries": {"max_attempts": 4, "mode": "standard"}}

_OBJECT_STORES = {"s3", "s3a"}


def protocol_of(url: str) -> str:
    """The fsspec protocol of ``url`` (``file`` for plain paths), lower case."""
    head, sep, _ = str(url).partition("://")
    return head.lower() if sep else "file"


def with_storage_defaults(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` for ``url`` with opso's time limits and fresh listings added (see above).

    Parameters
    ----------
    url : str
        Path or fsspec URL the options are for.
    storage_options : dict, optional
        The user's options; never modified, and their values win over the defaults.

    Returns
    -------
    dict
        A new dict; the same content for protocols other than ``s3``.
    """
    options = dict(storage_options or {})
    if protocol_of(url) not in _OBJECT_STORES:
        return options
    config = dict(options.get("config_kwargs") or {})
    for key, value in S3_DEFAULTS.items():
        config.setdefault(key, value)
    options["config_kwargs"] = config
    options.setdefault("use_listings_cache", False)
    return options
