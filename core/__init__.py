"""The neutral core of matloop: record types, goals, the registry and the contracts.

Every other package imports from here and this package imports none of them:
``loop -> agents -> core`` and ``loop -> oracles -> core``.
"""
