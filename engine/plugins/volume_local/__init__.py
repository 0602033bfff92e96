"""The built-in ``local`` volume driver (docker's): a directory under the root, or a
filesystem mounted there (``--opt type=tmpfs --opt o=size=64m``, ``--opt type=none --opt
o=bind --opt device=/srv/data``)."""
