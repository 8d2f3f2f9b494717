"""Where ``Campaign`` used to live: the loop is now ``matloop.loop.campaign`` (this name stays importable)."""

from .campaign import ArmResult, Campaign

__all__ = ["ArmResult", "Campaign"]
