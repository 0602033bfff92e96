"""Container networking through the standard CNI plugins (/usr/lib/cni).

    netns       network namespaces as files under layout.netns_dir
    networks    NetworkStore: definitions under layout.networks_dir, CNI conflists
    cni         attach / detach (ADD/DEL with a persistent result cache), setup_loopback
    settings    per-daemon bridge, bip and address pools (two daemons on one host)
    isolation   the daemon's ENGINE-ISO-<bridge>-1/2 iptables chains between its bridges
    ports       docker -p / -P parsing into CNI portMappings
    etc_files   /etc/hosts, /etc/hostname, /etc/resolv.conf per container
    reconcile   undo the networking of containers that should have none (after a crash)

Typical container start (bridge network)::

    ns = await netns.create(layout.netns_dir, cid)
    res = await cni.attach(store, net, cid, ns, port_mappings=ports.parse_all(specs),
                           name=name, aliases=aliases, etc_dir=etc_dir)
    files = await etc_files.write_etc_files(etc_dir, hostname=..., name=name, ips=[res.ip])
    await etc_files.refresh_network(store, net)

and at stop: ``cni.detach_all(store, cid)``, ``refresh_network`` for each of its networks,
then ``netns.delete(layout.netns_dir, cid)``.
"""
