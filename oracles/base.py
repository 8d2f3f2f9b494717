"""The oracle contract, where plug-ins written before ``matloop.core`` existed import it from.

The contract itself lives in ``matloop.core.oracle``.
"""

from matloop.core.oracle import Oracle, OracleSettings, OracleTimeout, SiteSettings

__all__ = ["Oracle", "OracleSettings", "OracleTimeout", "SiteSettings"]
