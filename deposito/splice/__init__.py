"""The kernel paths of the proxy's data path: relay (relay.py), fan-out
(fanout.py) and hand-off (handoff.py), on the socket helpers in sockets.py."""
