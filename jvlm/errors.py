"""The error every config check raises. Its own module so that the config loader (jvlm.config) and the
modules whose checks it calls (jvlm.sharding) both import it without importing each other."""


class ConfigError(ValueError):
    """A config problem found before compilation; the message names the key and the fix."""
