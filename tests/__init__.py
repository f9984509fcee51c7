"""EdgeAIForge's tests; shared helpers and fixtures live in ``tests.support``."""
