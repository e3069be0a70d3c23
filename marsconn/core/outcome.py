"""A transport's verdict on one attempt, and what the engine does next."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Action", "Outcome", "ServerLost"]


class Action(StrEnum):
    """What the executor does after an attempt."""

    SUCCESS = "success"
    NEXT_SERVER = "next_server"
    SAME_SERVER = "same_server"
    FINAL = "final"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A transport's verdict on one attempt.

    ``error_class`` is a stable short name (``connect_refused``,
    ``mars_rejected``, ...; see docs/executor.md); ``eject`` marks a server
    that refused or timed out, to be tried last for a while; ``bytes`` is the
    size of the output on success. ``next_allowed`` false (with
    ``SAME_SERVER``) means the server asked for retries on itself only: when
    they are used up, the failure is final.
    """

    action: Action
    error: BaseException | None = None
    error_class: str | None = None
    eject: bool = False
    bytes: int = 0
    job_id: str | None = None
    next_allowed: bool = True

    @classmethod
    def success(cls, nbytes: int, job_id: str | None = None) -> Outcome:
        """A completed attempt that produced ``nbytes`` of output."""
        return cls(Action.SUCCESS, bytes=nbytes, job_id=job_id)

    @classmethod
    def failed(
        cls,
        action: Action,
        error_class: str,
        error: BaseException,
        *,
        eject: bool = False,
        job_id: str | None = None,
        next_allowed: bool = True,
    ) -> Outcome:
        """A failed attempt, classified."""
        return cls(action, error, error_class, eject, job_id=job_id, next_allowed=next_allowed)


class ServerLost(Exception):
    """The server went away or fell silent; another server may run the job."""
