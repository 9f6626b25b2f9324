# Mitogen's linear strategy, taken from the mitogen package of the virtualenv (requirements.txt),
# so that ansible.cfg names it without a path into site-packages. Mitogen keeps one Python
# interpreter per host for the whole run instead of shipping and starting one per task.
# Turn it off for a run with ANSIBLE_STRATEGY=linear.
from __future__ import annotations

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
