"""Image builds from a Dockerfile, the way dockerd's classic builder does them.

``dockerfile`` parses (no I/O), ``context`` unpacks a build context safely, ``builder``
runs the steps: each RUN in a real container of the engine, committed as a layer.
"""
