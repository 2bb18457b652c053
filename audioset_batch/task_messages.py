"""The task messages producers send and workers accept: one versioned schema, checked at both ends.

Anyone holding the broker's password can put any JSON on a queue. A worker validates every message against this
schema before acting on it, so a malformed one is refused with a log line instead of reaching the task's code
(a number where a URL goes, an unknown argument, a 10 MB job id). New fields go here, with a version bump when an
old worker could not honour them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from audioset_batch.errors import AudiosetError

SCHEMA_VERSION = 1


class MalformedMessageError(AudiosetError):
    """A task message does not follow the schema; the message says which field."""


class ScoreMessage(BaseModel):
    """``score_object(url, job=…, item=…, force=…, v=1)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: StrictStr = Field(min_length=1, max_length=4096)
    job: StrictStr | None = Field(None, max_length=200)
    item: StrictStr | None = Field(None, max_length=8192)
    force: StrictBool = False
    generation: StrictInt = Field(
        default=0, ge=0
    )  # raised by `jobs retry`; sent only when not 0 (older workers refuse it)
    v: Literal[1] = 1  # SCHEMA_VERSION; messages from before the field existed are version 1

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments a producer sends (the URL goes as the one positional argument)."""
        sent = {"job": self.job, "item": self.item, "force": self.force, "v": self.v}
        return {**sent, "generation": self.generation} if self.generation else sent

    @classmethod
    def parse(cls, args: Any, kwargs: Any) -> ScoreMessage:
        """Validate a received message's arguments, raising :class:`MalformedMessageError`."""
        if not isinstance(args, list | tuple) or len(args) > 1 or not isinstance(kwargs, dict):
            raise MalformedMessageError("expected one positional argument (the URL) and keyword arguments")
        fields = dict(kwargs)
        if args:
            if "url" in fields:
                raise MalformedMessageError("the URL is given twice")
            fields["url"] = args[0]
        try:
            return cls(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "message"
            raise MalformedMessageError(f"{where}: {first['msg']}") from None
