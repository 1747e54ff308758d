"""Runners: the commands that turn configs into run folders, above the engine.

``experiment`` (``senolab train`` and ``evaluate``), ``study`` (``senolab study``, the
cross-institution runner), ``ablation`` (``senolab fusion ablate``), ``main_job``
(``senolab run``) and ``report`` (its report). They use the engine (config, data,
trainer, predict) and everything below it; nothing below imports them.
"""
