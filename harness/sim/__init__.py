"""A deterministic simulation of the pure membership logic (SWIM and all-to-all) at up to thousands of
nodes: a simulated clock and network (delay, loss, partitions), a seeded RNG, no sockets and no sleeps.

The node never imports this package. `python -m harness.sim --help` runs it from the command line.
"""
