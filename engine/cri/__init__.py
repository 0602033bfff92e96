"""The Kubernetes Container Runtime Interface (CRI ``runtime.v1``) over engine's own parts.

``engined --cri-socket unix:///run/engine/cri.sock`` serves the CRI RuntimeService and
ImageService with grpcio (``server``), on the same image store, container actors, storage
and CNI plugins that engctl uses. grpcio's asyncio server runs in one thread of its own;
every call crosses into trio at one place (``bridge.TrioPortal``) and is handled there:

- ``images``: ImageService over the engine's image store and registry clients;
- ``pods``: pod sandboxes (namespaces held by an infra container, CNI networking, /etc files)
  and the containers in them, which are engine containers driven through their actors;
- ``records``: what the CRI keeps beside the engine's containers (metadata, labels,
  annotations, log paths) under ``<root>/cri``.

The CRI's Python stubs (``gen``) are generated from the vendored proto
(``proto/runtime/v1/api.proto``, Apache-2.0, The Kubernetes Authors) by
``scripts/gen_cri_stubs.sh`` and checked in.
"""
