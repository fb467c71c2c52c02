"""jvlm: a JAX/Flax training framework for vision-language and generative image models.

Importing it changes nothing in the process: the XLA:CPU flag the `experiments` commands set is one call
away, `jvlm.cpu_flags.apply()` (see jvlm/cpu_flags.py).
"""
