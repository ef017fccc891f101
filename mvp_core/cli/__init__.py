"""``ketter``: the operator's command for the Ketter service (portals, jobs, health) and
the engine's own transfer command (``ketter transfer``)."""
