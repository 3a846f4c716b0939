"""The proxy's depot, in the parts a request or a background job goes through.

- :mod:`deposito.depot.depot`: :class:`Depot`, what the gateways call
  (IDepot); it composes the parts below and wires them to the roster, the
  connection pool and the reconciler;
- :mod:`deposito.depot.writes`: PUT and its commit point; one more copy of
  a file (the reconciler's ICopier);
- :mod:`deposito.depot.reads`: records, healthy copies, and the one read
  path (whole files and byte ranges) every gateway uses;
- :mod:`deposito.depot.collector`: garbage copies deleted from the servers;
- :mod:`deposito.depot.rebuilder`: the catalog rebuilt from the servers;
- :mod:`deposito.depot.inventories`: servers' listings checked against the catalog.
"""

from deposito.depot.depot import Depot

__all__ = ["Depot"]
