"""Which conversation each transcript is filed under, and the ones waiting for its id.

Without a relay the device names its conversations itself (a UUID; a long press makes
another). Behind a relay with ``realtime.relay.conversation_id: null`` the relay names
them: the device sends no id, and the relay announces the one it made with
``conversation_created`` (``voiced relay`` right after ``session.created``, the seed's
edge function only at the first ``response.done``). Until then the device's transcripts
are held here (bounded) and filed under the announced id when it comes, so every record
of the conversation carries the relay's id; reconnects send that id.

A conversation that ends without a name (a long press, the daemon stopping, or more than
:data:`MAX_HELD` transcripts waiting: a relay that never announces) has its transcripts
filed under an id the device makes itself. That id is never sent to the relay (which
does not know it and would refuse it, or lose rows against it); it only keeps the
device's own sinks whole: they create the conversation row for the records they write.

A relay is the authority on its conversations: an announcement that names another id
than the one in use (a relay that replaced a conversation it could not continue) is
adopted for what follows; nothing already filed is filed again. An id that is not a
short run of letters, digits and ``-._:`` is refused (it goes into URLs, logs and rows).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from voiced import guard
from voiced.core.effects import Draft, Record
from voiced.core.emitter import Emitter
from voiced.transcripts import Transcript

logger = logging.getLogger("voiced.core")

MAX_HELD: Final = 64
"""Transcripts held for a conversation the relay has not named yet (the seed names it
after the first reply: one or two are usual)."""
_KNOWN: Final = 8  # earlier conversations whose id items still open may need
CONVERSATION_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class Filing:
    """The conversations' ids and the transcripts waiting for one.

    Args:
        out: where Record and Draft effects go.
        conversation_id: the first conversation's id; None lets the relay name it.
        new_id: makes an id of the device's own.
        relay_names: a long press starts a conversation the relay names (sends no id).
    """

    def __init__(self, out: Emitter, conversation_id: str | None,
                 new_id: Callable[[], str], *, relay_names: bool) -> None:
        self.out = out
        self._new_id = new_id
        self.relay_names = relay_names
        self.number = 0
        """Which conversation of this process is current (items remember theirs)."""
        self.current = conversation_id
        """The current conversation's id as the relay knows it (sent on reconnects);
        None while the relay has not named it."""
        self._local: str | None = None  # the device's own id for it, once one was needed
        self._ids: OrderedDict[int, str] = OrderedDict()  # earlier conversations' ids
        self._held: list[Record | Draft] = []  # the current conversation's, in order

    @property
    def held(self) -> int:
        """Transcripts waiting for the relay to name the conversation."""
        return len(self._held)

    def file(self, number: int, effect: Record | Draft) -> None:
        """Emit ``effect`` under conversation ``number``'s id, or hold it until it has one.

        The transcript's own ``conversation_id`` is replaced here.
        """
        if number == self.number:
            cid = self.current or self._local
        else:
            cid = self._ids.get(number)
            if cid is None:  # older than the ids kept: items are closed long before
                cid = self._ids[number] = self._new_id()
        if cid is not None:
            self.out.emit(_under(effect, cid))
            return
        if isinstance(effect, Record):  # the record replaces the item's draft
            self._held = [e for e in self._held if not (
                isinstance(e, Draft) and e.transcript.item_id == effect.transcript.item_id)]
        self._held.append(effect)
        if len(self._held) > MAX_HELD:
            logger.warning("the relay has not named this conversation after %d transcripts",
                           MAX_HELD)
            self._file_locally()

    def adopt(self, cid: str) -> bool:
        """The relay announced the conversation ``cid``; False if it is refused."""
        if not CONVERSATION_ID_RE.fullmatch(cid):
            if guard.should_log("core:bad-conversation-id") is not None:
                logger.warning("refusing the relay's conversation id %s: not 1-128 letters, "
                               "digits or -._:", guard.printable(cid, 140))
            return False
        if cid == self.current:
            return True  # announced again: nothing changes
        if self.current is not None and guard.should_log("core:renamed") is not None:
            logger.warning("the relay names conversation %s, not %s: later transcripts and "
                           "reconnects use its id", cid, self.current)
        else:
            logger.info("the relay named the conversation %s", cid)
        self.current = cid
        held, self._held = self._held, []
        for effect in held:
            self.out.emit(_under(effect, cid))
        return True

    def next_conversation(self) -> None:
        """A long press: the current conversation ends, a new one begins."""
        if self.current is None:
            self._file_locally()
        ended = self.current or self._local
        assert ended is not None
        self._ids[self.number] = ended  # its items still playing are filed under it
        while len(self._ids) > _KNOWN:
            self._ids.popitem(last=False)
        self.number += 1
        self._local = None
        self.current = None if self.relay_names else self._new_id()

    def release(self) -> None:
        """The daemon stops: held transcripts are filed under an id of the device's own."""
        if self._held:
            self._file_locally()

    def _file_locally(self) -> None:
        """File what is held (and what follows, until a name comes) under a local id."""
        if self._local is None:
            self._local = self._new_id()
        if self._held:
            logger.warning("%d transcript(s) of a conversation the relay has not named are "
                           "filed under the device's own id %s (never sent to the relay)",
                           len(self._held), self._local)
        held, self._held = self._held, []
        for effect in held:
            self.out.emit(_under(effect, self._local))


def _under(effect: Record | Draft, cid: str) -> Record | Draft:
    t: Transcript = replace(effect.transcript, conversation_id=cid)
    return Record(t) if isinstance(effect, Record) else Draft(t)
