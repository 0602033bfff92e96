"""The Docker Engine API, served from the engine's own services (opt-in: ``--docker-host``).

``server``: listeners, routing, versions, errors; ``http``: HTTP/1.1 on trio (h11);
``routes``: one module per noun; ``shapes``: docker's JSON shapes; ``execs``: exec instances.
"""
