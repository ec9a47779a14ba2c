"""The composition root of `voiced run`: the only package that sees core and adapters.

``daemon`` (the :class:`~voiced.supervisor.daemon.Supervisor`: wiring, the task group,
applying effects), ``builders`` (everything built from the settings), ``connection``
(the live and standby Realtime links), ``audio_keeper`` (the mic pump, device fault
recovery), ``tool_runner`` (tool calls, the built-in tools' device), ``reload``
(SIGHUP) and ``answers`` (the control socket). Its modules log as ``voiced.supervisor``.
"""
