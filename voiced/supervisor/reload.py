"""SIGHUP: re-read the config; apply what can be applied live, keep the rest.

What applies live is declared on the settings (``config.LIVE``); every other key keeps
its running value, everywhere, until a restart, and is logged as such. The realtime keys
are read where they are used: the URL, model, key and timeouts from the next
connection, the session's (voice, instructions, turn detection, transcription) from the
next session. An invalid new config is rejected with the usual error lines and the
running one stays in force.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from voiced import config, guard
from voiced.core.conversation import Conversation
from voiced.errors import ConfigError
from voiced.live.core import LiveConversation
from voiced.supervisor.builders import build_live_settings, build_policy, build_vad

if TYPE_CHECKING:
    from voiced.supervisor.daemon import Supervisor

logger = logging.getLogger("voiced.supervisor")  # the package logs as one


def reload(sup: Supervisor) -> None:
    """Reload the config file into the running daemon (RELOADING=1 ... READY=1)."""
    sup.notifier.reloading()
    status = "reload failed (logged)"
    try:
        with guard.contain("reload", logger):
            status = _reload(sup)
    finally:  # systemd waits for READY=1 after RELOADING=1, whatever happened
        sup.notifier.status(f"{status}; {sup.session.state}")
        sup.notifier.ready()


def _reload(sup: Supervisor) -> str:
    """Apply the config file again; return what STATUS= says about it."""
    path = sup.settings.source_path
    try:
        if path is None:
            raise ConfigError([("config", "these settings did not come from a file")])
        new = config.load(path)
    except ConfigError as e:
        for line in e.lines():
            logger.error("%s", line)
        logger.error("reload rejected: the running configuration stays in force")
        return f"reload rejected ({len(e.problems)} problem(s))"
    for key, message in new.warnings:
        logger.warning("%s: %s", key, message)
    plan = config.reload_split(sup.settings, new)
    sup.settings = plan.settings
    tools = sup.toolbox.declarations()
    if isinstance(sup.session, LiveConversation):  # from its next session
        sup.session.set_settings(build_live_settings(sup.settings, tools))
    elif isinstance(sup.session, Conversation):
        sup.session.set_policy(build_policy(sup.settings, tools))
        sup.vad = build_vad(sup.settings, sup.session.policy)
    sup._apply(sup.session.take_effects())
    sup.orb.set_patterns(sup.settings.leds.patterns)
    logging.getLogger().setLevel(sup.settings.log_level.upper())
    if plan.live:
        logger.info("reloaded: %s (the connection's settings apply from the next "
                    "connection, the session's from the next session)",
                    ", ".join(plan.live))
    if plan.restart:
        logger.warning("changed but only applied after a restart (the running values "
                       "stay until then): %s", ", ".join(plan.restart))
    if not plan.live and not plan.restart:
        logger.info("reloaded: nothing changed")
    return "reloaded"
